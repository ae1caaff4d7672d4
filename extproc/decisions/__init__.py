"""Decision modules: plain, synchronous functions and state with no gRPC and no I/O.

Validation, authentication and RBAC, circuit breakers, provider health (and, as they come,
limits, cache and policy). They take data, return data, and are unit tested without a server.
"""
