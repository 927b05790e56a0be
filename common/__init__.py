"""The contract the server, the worker and the client tools share: the internal wire format,
work ids, job cost, the settings loader and the HTTP client layer. Imports none of them."""
