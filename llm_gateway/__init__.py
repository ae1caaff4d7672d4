"""Code generated from the gateway's own .proto files (`proto/llm_gateway/`) by `make proto`.

The package name matches the proto package (`llm_gateway.policy.v1`) so the generated imports work
unchanged. Never edit the `*_pb2*` files by hand: change the .proto and run `make proto`.
"""
