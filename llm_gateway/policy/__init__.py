"""The policy service's generated code, by API version."""
