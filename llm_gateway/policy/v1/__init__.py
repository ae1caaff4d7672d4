"""The policy service, v1: its messages (`policy_pb2`) and gRPC stubs (`policy_pb2_grpc`).

Generated from `proto/llm_gateway/policy/v1/policy.proto` by `make proto`; docs/policy-service.md
explains the service.
"""
