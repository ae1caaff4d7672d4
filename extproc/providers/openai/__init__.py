"""OpenAI wire API: OpenAI itself, Azure OpenAI and the compatible servers (vLLM, Ollama,
Together). `adapter` (paths, credentials), `response` (what a pass-through answer says),
`errors` (OpenAI-style error bodies)."""
