"""Request-time decisions per ext_proc phase, with no gRPC in sight.

`request.RequestPipeline` holds one HTTP request across its phases (downstream filter);
`attempt` translates one try of it for one target (inline, or on the upstream filter);
`actions` are what a phase decides: go on (with changes) or answer now.
"""
