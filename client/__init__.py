"""dynwork's client side: the `dynwork` CLI and the Python client it is built on, the load generator and the benchmarks.

Modules: api (DynworkClient: enqueue, get, wait, pull, status over the servers), cli (`dynwork`:
argparse and one function per command), options (server URLs and number types), format (tables,
times, status), progress (the `wait` progress bar), loadgen/ (`dynwork bench`), localcluster
(servers and workers as local subprocesses), benchmark (`python -m client.benchmark`) and
bench_native (`python -m client.bench_native`). HTTP goes through common.http; nothing here is
imported by server/ or worker/.
"""
