"""Fault injection for the soak tests: a TCP proxy that partitions and slows the link between the
two servers (proxy), the bookkeeping that proves nothing was lost or forged (checker), client load
(load), and the cluster the faults are done to, with its seeded fault schedule (chaos)."""
