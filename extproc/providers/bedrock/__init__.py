"""AWS Bedrock Converse / ConverseStream: `adapter` (wiring, signing), `request` (OpenAI →
Converse), `response` (a whole answer → OpenAI), `stream` (the binary event stream → OpenAI
chunks), `errors`, `sigv4` (AWS Signature Version 4 with botocore)."""
