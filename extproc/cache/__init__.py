"""The response cache: whether a request may be answered from it, its key, and its stores.

`key.py` decides (pure) and names the entry, `store.py` holds the shared types, `memory.py` keeps
one processor's entries and `redis_store.py` every replica's, with single-flight fills. No gRPC
and no request plumbing here: the pipeline calls in.
"""
