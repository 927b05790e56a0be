"""The parts of `make bench` (client.benchmark): the bare baseline server, the load driver, /proc
probes, py-spy profiling, and the rows."""
