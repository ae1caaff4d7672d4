"""Anthropic Messages API: `adapter` (wiring), `request` (OpenAI → Messages), `response`
(a whole message → OpenAI), `stream` (the SSE stream → OpenAI chunks), `errors`."""
