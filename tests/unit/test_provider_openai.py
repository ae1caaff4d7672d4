"""OpenAI-compatible adapter: what a pass-through answer says (usage, model), whole or streamed,
and answers it refuses (unparsable bodies, the wrong content type, streams cut before [DONE]).

Fixtures are written in the shapes of OpenAI's chat completion and chunk objects.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from extproc.config.schema import ProviderConfig, ProviderType
from extproc.errors import GatewayError
from extproc.providers.base import Usage
from extproc.providers.openai.adapter import OpenAIAdapter
from extproc.providers.openai.response import OpenAIStreamReader
from tests.unit.adapters import prepare

PROVIDER = ProviderConfig(
    name="oai", type=ProviderType.OPENAI, base_url="https://api.openai.com/v1", api_key_env="K"
)
ANSWERED_BY = "gpt-4o-2024-08-06"  # OpenAI names the dated model that answered


def adapter(stream: bool = False) -> OpenAIAdapter:
    a = OpenAIAdapter(PROVIDER, SecretStr("sk-up"), "gpt-4o", 4096)
    prepare(
        a, {"model": "smart", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    )
    return a


COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": ANSWERED_BY,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 2,
        "total_tokens": 11,
        "prompt_tokens_details": {"cached_tokens": 4},
    },
}


def test_a_whole_answer_passes_unchanged_with_its_usage_and_model() -> None:
    body = orjson.dumps(COMPLETION)
    translated = adapter().response_body(body)
    assert translated.body == body
    assert translated.usage == Usage(9, 2, 11, cached_tokens=4)
    assert translated.model == ANSWERED_BY


def test_embeddings_usage_has_no_completion_tokens() -> None:
    body = orjson.dumps(
        {
            "object": "list",
            "data": [],
            "model": "te-3",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    )
    translated = adapter().response_body(body)
    assert (translated.usage, translated.model) == (Usage(5, 0, 5), "te-3")


@pytest.mark.parametrize("body", [b"", b'{"id": "chatcmpl-1", "choi', b"<html>oops</html>", b"[1]"])
def test_an_unparsable_answer_is_a_502(body: bytes) -> None:
    with pytest.raises(GatewayError) as info:
        adapter().response_body(body)
    assert (info.value.status, info.value.code) == (502, "malformed_provider_response")


def chunk(**fields: Any) -> bytes:
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": ANSWERED_BY}
    return b"data: " + orjson.dumps({**event, **fields}) + b"\n\n"


STREAM = (
    chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}])
    + chunk(choices=[{"index": 0, "delta": {"content": "hi"}}])
    + chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    + chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    + b"data: [DONE]\n\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=10))
def test_a_stream_passes_byte_for_byte_at_any_chunking(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    a = adapter(stream=True)
    pieces = [STREAM[i:j] for i, j in zip([0, *points], [*points, len(STREAM)], strict=True)]
    out = b""
    last = None
    for index, piece in enumerate(pieces):
        last = a.stream_chunk(piece, index == len(pieces) - 1)
        out += last.body
    assert out == STREAM
    assert last is not None and last.usage == Usage(9, 2, 11) and last.model == ANSWERED_BY
    assert last.complete


def test_a_stream_is_complete_at_done_before_its_end() -> None:
    a = adapter(stream=True)
    done = STREAM.index(b"data: [DONE]")
    assert not a.stream_chunk(STREAM[:done], False).complete
    assert a.stream_chunk(STREAM[done:], False).complete  # the usage before it is final


@pytest.mark.parametrize("cut", [0, 40, STREAM.index(b"data: [DONE]")])
def test_a_stream_cut_before_done_ends_with_an_error_event(cut: int) -> None:
    cut_short = adapter(stream=True).stream_chunk(STREAM[:cut], True)
    assert not cut_short.complete  # ended by the gateway's error event, not the provider
    out = cut_short.body
    assert out.startswith(STREAM[:cut])
    events = [e for e in out[cut:].split(b"\n\n") if e]  # a cut event is closed first
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "malformed_provider_response"


def test_content_types_the_client_can_use() -> None:
    whole, streamed = adapter(), adapter(stream=True)
    assert whole.unusable_answer(200, {"content-type": "application/json; charset=utf-8"}) is None
    assert streamed.unusable_answer(200, {"content-type": "text/event-stream"}) is None
    assert whole.unusable_answer(503, {"content-type": "text/html"}) is None  # errors: mapped
    for a, content_type in ((whole, "text/html"), (streamed, "application/json"), (whole, "")):
        error = a.unusable_answer(200, {"content-type": content_type} if content_type else {})
        assert error is not None and (error.status, error.code) == (
            502,
            "malformed_provider_response",
        )


class ParsedOnly(OpenAIStreamReader):
    """The reader with every chunk left to the SSE parser: the reference for its split path."""

    def _plain_events(self, chunk: bytes) -> list[bytes] | None:
        return None


_USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
_EVENT_SHAPES = st.sampled_from(
    [
        lambda n: chunk(choices=[{"index": 0, "delta": {"content": f"t{n}"}}]),
        lambda n: chunk(choices=[{"index": 0, "delta": {"content": f"t{n}"}}], usage=None),
        # vLLM's continuous usage stats: usage in every chunk, the last one counts.
        lambda n: chunk(choices=[], usage={**_USAGE, "completion_tokens": n}),
        lambda n: chunk(choices=[{"index": 0, "delta": {"content": '"usage": 1'}}]),
        lambda n: b'data: {"id": "c", "model": "m2", "usage": null, "choices": []}\n\n',
        lambda n: b": keep-alive\n\n",
        lambda n: b"event: chunk\n" + chunk(choices=[]),
        lambda n: b'data: {"id": "c",\ndata: "model": "m3"}\n\n',
        lambda n: chunk(choices=[]).replace(b"\n\n", b"\r\n\r\n"),
    ]
)


@given(
    st.lists(_EVENT_SHAPES, max_size=8),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
    st.booleans(),
)
def test_the_split_path_reads_a_stream_as_the_parser_does(
    shapes: list[Any], usage_only: bool, done: bool, cuts: list[int], strip: bool
) -> None:
    # Chunks of whole one-line `data:` events skip the SSE parser; any stream, at any
    # chunking, must come out with the same bytes, usage, model and completeness either way.
    stream = b"".join(shape(n) for n, shape in enumerate(shapes))
    if usage_only:
        stream += chunk(choices=[], usage=_USAGE)
    stream += b"data: [DONE]\n\n" if done else b""
    points = sorted({c for c in cuts if c < len(stream)})
    pieces = [stream[i:j] for i, j in zip([0, *points], [*points, len(stream)], strict=True)]
    fast, parsed = OpenAIStreamReader("oai", strip), ParsedOnly("oai", strip)
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        assert fast.feed(piece, last) == parsed.feed(piece, last)


def test_a_null_usage_chunk_is_not_parsed_once_the_model_is_known() -> None:
    reader = OpenAIStreamReader("oai")
    reader.feed(chunk(choices=[], usage=None), False)
    assert reader.model == ANSWERED_BY
    # Another null-usage chunk is skipped, not parsed: its model is not read...
    reader.feed(b'data: {"model": "other", "usage": null, "choices": []}\n\n', False)
    assert reader.model == ANSWERED_BY
    # ...and one whose usage is set is read, spaced or not.
    spaced = b'data: {"id": "c", "choices": [], "usage": ' + orjson.dumps(_USAGE) + b"}\n\n"
    read = reader.feed(spaced + b"data: [DONE]\n\n", True)
    assert (read.usage, read.model, read.complete) == (Usage(9, 2, 11), ANSWERED_BY, True)
