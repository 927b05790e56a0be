# TEMPORARY local stand-in (not committed): the ec2 helper delivers the real LaunchGuard.
class LaunchGuard:
    def __init__(self, max_per_minute=20, clock=None, rng=None, **kw): self.max_per_minute = max_per_minute
    def allowed(self, n, now): return n
    def launched(self, n, now): pass
    def failed(self, exc, now): pass
    def succeeded(self, now): pass
    def booted(self, now): pass
    def boot_failed(self, now): pass
    def status(self): return {"state": "ok"}
