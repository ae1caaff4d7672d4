"""Google Gemini API (Generative Language API, `x-goog-api-key`; not Vertex AI): `adapter`,
`request` (OpenAI → Gemini), `response` (a whole answer → OpenAI), `stream`, `errors`."""
