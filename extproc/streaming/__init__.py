"""Stream framing shared by provider adapters: SSE in and out, AWS event streams."""
