"""What an e2e client got back from the gateway, read whole: `Answer` and its checks, and
`send_chat`, which sends the plain chat request whose answer it is."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.e2e.conftest import FULL_KEY, Stack


class Answer:
    """What a client got: status, headers, body (the whole stream for a stream)."""

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.body = body

    def error(self) -> dict[str, Any]:
        """The OpenAI-style error object; the body must hold that and nothing else."""
        parsed = orjson.loads(self.body)
        assert set(parsed) == {"error"}, self.body
        error: dict[str, Any] = parsed["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return error

    def text(self) -> str:
        """The content of a complete answer (a stream must end with [DONE])."""
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            events = [e for e in self.body.decode().split("\n\n") if e.startswith("data: ")]
            assert events[-1] == "data: [DONE]", events[-3:]
            chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-1]]
            return "".join(
                c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
            )
        return str(orjson.loads(self.body)["choices"][0]["message"]["content"])


def send_chat(stack: Stack, model: str, stream: bool, timeout: float) -> Answer:
    """One chat completion ("hi" to `model`, the full-access key), whole or streamed, read to
    its end within `timeout` seconds."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"authorization": f"Bearer {FULL_KEY}"}
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream(
            "POST", f"{stack.base_url}/v1/chat/completions", json=body, headers=headers
        ) as response,
    ):
        return Answer(response, response.read())
