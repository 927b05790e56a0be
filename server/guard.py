# Placeholder: allows every launch. The EC2 fleet-control work replaces it with the real guard.
class LaunchGuard:
    def __init__(self, max_per_minute=20, clock=None, rng=None, **kw): self.max_per_minute = max_per_minute
    def allowed(self, n, now): return n
    def launched(self, n, now): pass
    def failed(self, exc, now): pass
    def succeeded(self, now): pass
    def booted(self, now): pass
    def boot_failed(self, now): pass
    def status(self): return {"state": "ok"}
