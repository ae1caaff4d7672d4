"""End to end: providers that misbehave, for every wire format, streamed and not, real Envoy.

The fake answers garbage, cut or oversized bodies, the wrong content type, slow drips, resets,
invalid UTF-8, broken SSE framing and broken AWS event-stream frames. Whatever it sends, the
client gets one of:
- a clean OpenAI-style 502/504 (a whole answer, or a stream before its first byte);
- a stream that ends cleanly with a final error event and `[DONE]`;
- a reset its HTTP library reports (a stream whose headers had already gone out);
- a complete, well-formed answer, when what the provider sent still was one: a translated
  answer then says all the provider said, an OpenAI-compatible one passes byte for byte (the
  gateway reads it for usage and never rewrites it, README "Provider errors").
Never a 500, a hang, or a short answer that looks complete. After the whole matrix
(`test_after_the_matrix_...`, last in this file) the processor is the same process and healthy,
counted no unexpected exception, its breakers say what the outcomes imply and the tenant's
limits settled every request. Random garbage, cuts and byte flips come from hypothesis, with a
fixed number of derandomized examples.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from extproc.decisions.auth import hash_key
from extproc.dev.fakes.eventstream_encoder import event_message
from tests.e2e.conftest import Stack, make_stack

pytestmark = pytest.mark.e2e

FUZZ_KEY = "sk-fuzz-tenant"
TENANT = "fuzz"
MARK = "MARK"
REPLY = f"alpha beta {MARK} gamma delta"
# The stack's body limit: Envoy buffers at most this plus 1 MiB (extproc/bootstrap/common.py).
MAX_BODY_BYTES = 64 * 1024
OVERSIZED_BYTES = 2 * 1024 * 1024
# Far above what the matrix can fail: no breaker may open (every later answer would be a 503).
BREAKER_THRESHOLD = 1000
DRIP_TIMEOUT_S = "0.5"  # the drips below take seconds: the request timeout always comes first

WIRES = {  # wire → (model, breaker key, answer translated by the gateway)
    "openai": ("chat-openai", "p-openai/gpt-up", False),
    "azure": ("chat-azure", "p-azure/my-deploy", False),
    "anthropic": ("chat-anthropic", "p-anthropic/claude-up", True),
    "google": ("chat-gemini", "p-google/gemini-up", True),
    "bedrock": ("chat-bedrock", "p-bedrock/anthropic.claude-3-haiku-20240307-v1:0", True),
}
MODES = [(wire, stream) for wire in WIRES for stream in (False, True)]
SSE_END = {"openai": b"\n\n", "azure": b"\n\n", "anthropic": b"\n\n", "google": b"\r\n\r\n"}
STREAM_CONTENT_TYPE = {"bedrock": "application/vnd.amazon.eventstream"}


class Outcome(StrEnum):
    ERROR = "clean 502/504"
    STREAM_ERROR = "stream ended by an error event and [DONE]"
    RESET = "reset reported by the HTTP library"
    COMPLETE = "complete, well-formed answer"
    PASSED = "the provider's bytes, untouched"


CLEAN = frozenset(Outcome)
CUT = frozenset({Outcome.ERROR, Outcome.STREAM_ERROR, Outcome.RESET})


@dataclass
class Seen:
    """What one request gave the client."""

    outcome: Outcome | None  # None: not acceptable at all (see `problem`)
    status: int
    problem: str = ""
    code: str | None = None
    text: str = ""


@dataclass
class Ledger:
    """Every request the matrix sent, by wire, and what the client got."""

    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # a 5xx status for the client
    cases: set[tuple[str, bool, str]] = field(default_factory=set)
    outcomes: Counter[Outcome] = field(default_factory=Counter)


LEDGER = Ledger()


def fuzz_config(config: dict[str, Any]) -> None:
    config["limits"]["max_body_bytes"] = MAX_BODY_BYTES
    config["resilience"] |= {
        "max_retries": 0,
        "breaker_consecutive_failures": BREAKER_THRESHOLD,
        "breaker_min_requests": 100000,
        "breaker_window_seconds": 3600,
    }
    config["tenants"].append(
        {
            "name": TENANT,
            "api_key_sha256": [hash_key(FUZZ_KEY)],
            "limits": {"concurrent_requests": 1000, "requests_per_minute": 100000},
        }
    )


@dataclass
class Baseline:
    """The processor as it was before the matrix."""

    pid: int
    exceptions: float
    transitions: float
    breakers: dict[str, Any]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with make_stack(tmp_path_factory.mktemp("fuzz"), customize=fuzz_config) as s:
        yield s


@pytest.fixture(scope="module")
def baseline(fuzz: Stack) -> Baseline:
    assert fuzz.processor is not None
    return Baseline(
        fuzz.processor.pid,
        metric(fuzz, "gateway_processor_exceptions_total"),
        metric(fuzz, "gateway_breaker_transitions_total"),
        breakers(fuzz),
    )


# -- helpers --------------------------------------------------------------------------------


def metric(stack: Stack, name: str, **labels: str) -> float:
    """The sum of the processor's samples `name` whose labels include `labels`."""
    response = httpx.get(f"{stack.admin_url}/metrics", timeout=10)
    assert response.status_code == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def breakers(stack: Stack) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{stack.admin_url}/breakers", timeout=10).json()
    return answer


def request_body(wire: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": WIRES[wire][0],
        "messages": [{"role": "user", "content": "fuzz"}],
        "stream": stream,
    }
    if stream:
        # The client asks for usage itself: the gateway then passes an OpenAI-compatible
        # stream byte for byte (it removes only a usage chunk it asked for on its own).
        body["stream_options"] = {"include_usage": True}
    return body


def classify(wire: str, stream: bool, sent: list[bytes], post: Callable[[], Any]) -> Seen:
    """Send the request (raw HTTP) and say what the client got."""
    received = bytearray()
    status = 0
    try:
        with post() as response:
            status = response.status_code
            for piece in response.iter_raw():
                received += piece
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:
        if status != 200:
            return Seen(None, status, f"a {status} cut short: {error}")
        return Seen(Outcome.RESET, status)
    body = bytes(received)
    content_type = response.headers.get("content-type", "")
    if status != 200:
        return error_seen(status, content_type, body)
    if not WIRES[wire][2] and sent and body.startswith(sent[-1]):
        if body == sent[-1]:
            return Seen(Outcome.PASSED, status)
        # The provider's bytes untouched, then the gateway's final error event (its stream
        # did not end with data: [DONE]).
        tail = stream_seen(body[len(sent[-1]) :].lstrip(b"\n"))
        if tail.outcome is Outcome.STREAM_ERROR:
            return tail
    if stream:
        return stream_seen(body)
    return answer_seen(body)


def error_seen(status: int, content_type: str, body: bytes) -> Seen:
    if status not in (502, 504):
        return Seen(None, status, f"status {status}: {body[:300]!r}")
    try:
        error = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return Seen(None, status, f"a {status} that is not an OpenAI error: {body[:300]!r}")
    if set(error) != {"message", "type", "param", "code"} or content_type != "application/json":
        return Seen(None, status, f"a {status} of another shape: {content_type} {body[:300]!r}")
    return Seen(Outcome.ERROR, status, code=error["code"])


def answer_seen(body: bytes) -> Seen:
    try:
        answer = orjson.loads(body)
        choice = answer["choices"][0]
        text = choice["message"]["content"]
        finish = choice["finish_reason"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return Seen(None, 200, f"a 200 that is not a chat completion: {body[:300]!r}")
    if not isinstance(text, str) or not finish:
        return Seen(None, 200, f"a 200 without text or finish_reason: {body[:300]!r}")
    return Seen(Outcome.COMPLETE, 200, text=text)


def stream_seen(body: bytes) -> Seen:
    done = b"data: [DONE]\n\n"
    if not body.endswith(done):
        return Seen(None, 200, f"a stream that did not end with [DONE]: ...{body[-300:]!r}")
    events = [e for e in body[: -len(done)].split(b"\n\n") if e.strip()]
    texts: list[str] = []
    finished = False
    for index, event in enumerate(events):
        if not event.startswith(b"data: "):
            return Seen(None, 200, f"a stream event that is not data: {event[:200]!r}")
        try:
            chunk = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return Seen(None, 200, f"a stream event that is not JSON: {event[:200]!r}")
        if "error" in chunk:
            if index != len(events) - 1:
                return Seen(None, 200, "an error event that is not the last")
            return Seen(Outcome.STREAM_ERROR, 200, code=chunk["error"].get("code"))
        for choice in chunk.get("choices") or []:
            texts.append(choice.get("delta", {}).get("content") or "")
            finished = finished or bool(choice.get("finish_reason"))
    if not finished:
        return Seen(None, 200, "a stream that ended with [DONE] but no finish_reason")
    return Seen(Outcome.COMPLETE, 200, text="".join(texts))


def run(
    stack: Stack,
    wire: str,
    stream: bool,
    case: str,
    allowed: frozenset[Outcome],
    transform: Callable[[bytes], bytes] | None = None,
    *,
    full_text_when_complete: bool = True,
    complete_text: str = REPLY,
    record: bool = True,
    cut_stream: bool = False,
    headers: dict[str, str] | None = None,
    **behaviour: Any,
) -> Seen:
    """Make the fake misbehave, send one request, check what the client got is `allowed`."""
    sent: list[bytes] = []
    if transform is not None:

        def mangle(data: bytes) -> bytes:
            out = transform(data)
            sent.append(out)
            return out

        behaviour["mangle"] = mangle
    stack.fake.set_behaviour(reply=REPLY, **behaviour)
    body = request_body(wire, stream)

    def post() -> Any:
        return httpx.stream(
            "POST",
            f"{stack.base_url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {FUZZ_KEY}", **(headers or {})},
            timeout=60,
        )

    seen = classify(wire, stream, sent, post)
    if record:  # the module's stack: counted for the checks after the matrix
        LEDGER.sent[wire] += 1
        LEDGER.cases.add((wire, stream, case))
        # A stream the provider began and then cut (reset, timeout) is not the target's
        # failure (docs/architecture.md), even when Envoy's 5xx reached the client first.
        LEDGER.failed[wire] += seen.status >= 500 and not (stream and cut_stream)
    label = f"{wire} {'stream' if stream else 'whole'} {case}"
    assert seen.outcome is not None, f"{label}: {seen.problem}"
    if record:
        LEDGER.outcomes[seen.outcome] += 1
    assert seen.outcome in allowed, f"{label}: {seen.outcome} ({seen.code}), not {set(allowed)}"
    if seen.outcome is Outcome.COMPLETE and full_text_when_complete:
        assert seen.text == complete_text, f"{label}: a complete-looking answer that lost text"
    return seen


def sdk_agrees(
    stack: Stack, wire: str, stream: bool, seen: Seen, cut_stream: bool = False, **behaviour: Any
) -> None:
    """The same misbehaviour through the openai SDK: an exception for every outcome but a
    complete answer (a pass-through's bytes may be anything: not checked)."""
    if seen.outcome is Outcome.PASSED:
        return
    stack.fake.set_behaviour(reply=REPLY, **behaviour)
    client = stack.client(key=FUZZ_KEY)
    kwargs = request_body(wire, stream)
    LEDGER.sent[wire] += 1
    if seen.outcome is Outcome.COMPLETE:
        if stream:
            chunks = list(client.chat.completions.create(**kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
        assert text == seen.text
        return
    with pytest.raises(openai.APIError) as info:
        answer = client.chat.completions.create(**kwargs)
        if stream:
            list(answer)
    # A reset races the response headers (a 502 when it comes first): either is clean.
    if isinstance(info.value, openai.APIStatusError):
        assert info.value.status_code in (502, 504)
        LEDGER.failed[wire] += not (stream and cut_stream)


# -- byte surgery on the wire formats --------------------------------------------------------


def frames(data: bytes) -> list[bytes]:
    """The AWS event-stream frames of `data` (by their prelude lengths)."""
    out: list[bytes] = []
    start = 0
    while start + 12 <= len(data):
        (total,) = struct.unpack_from("!I", data, start)
        out.append(data[start : start + total])
        start += total
    return out


def with_payload(frame: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """`frame` with its payload changed and its lengths and CRCs made right again."""
    (headers_length,) = struct.unpack_from("!I", frame, 4)
    raw_headers = frame[12 : 12 + headers_length]
    payload = change(frame[12 + headers_length : -4])
    lengths = struct.pack("!II", 16 + headers_length + len(payload), headers_length)
    body = lengths + struct.pack("!I", zlib.crc32(lengths)) + raw_headers + payload
    return body + struct.pack("!I", zlib.crc32(body))


def replace_text(wire: str, old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    """Replace `old` inside the answer's JSON (inside each event-stream payload for Bedrock,
    whose frames stay valid)."""

    def change(data: bytes) -> bytes:
        assert old in data, "the reply is not where the case expects it"
        if wire != "bedrock" or not data.startswith(b"\x00"):
            return data.replace(old, new)
        return b"".join(with_payload(f, lambda p: p.replace(old, new)) for f in frames(data))

    return change


def sse_events(wire: str, data: bytes) -> list[bytes]:
    end = SSE_END[wire]
    return [event + end for event in data.split(end) if event]


def wrong_content_type(wire: str, stream: bool) -> str:
    if stream:
        return "application/json"
    return STREAM_CONTENT_TYPE.get(wire, "text/event-stream")


HTML = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"


# -- the deterministic matrix ----------------------------------------------------------------


@pytest.mark.parametrize(("wire", "stream"), MODES)
def test_wrong_content_types_are_a_clean_502(
    fuzz: Stack, baseline: Baseline, wire: str, stream: bool
) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("html-200", {"content_type": "text/html", "transform": lambda _: HTML}),
        ("text-plain", {"content_type": "text/plain", "transform": lambda d: d}),
        ("wrong-kind", {"content_type": wrong_content_type(wire, stream)}),
    ]
    for case, behaviour in cases:
        seen = run(fuzz, wire, stream, case, frozenset({Outcome.ERROR}), **behaviour)
        assert (seen.status, seen.code) == (502, "malformed_provider_response"), case
        behaviour.pop("transform", None)
        sdk_agrees(fuzz, wire, stream, seen, **behaviour)


@pytest.mark.parametrize(("wire", "stream"), MODES)
def test_a_slow_drip_past_the_timeout_is_a_504_or_a_reset(
    fuzz: Stack, baseline: Baseline, wire: str, stream: bool
) -> None:
    # 16 bytes every 0.1 s: the answer takes seconds, the request 0.5 s at most.
    allowed = frozenset({Outcome.ERROR, Outcome.RESET} if stream else {Outcome.ERROR})
    seen = run(
        fuzz,
        wire,
        stream,
        "drip-timeout",
        allowed,
        lambda d: d,
        headers={"x-gateway-timeout": DRIP_TIMEOUT_S},
        cut_stream=True,
        drip_bytes=16,
        chunk_interval_s=0.1,
    )
    if seen.outcome is Outcome.ERROR:
        assert (seen.status, seen.code) == (504, "provider_timeout")


@pytest.mark.parametrize(("wire", "stream"), MODES)
def test_a_drip_in_time_is_the_whole_answer(
    fuzz: Stack, baseline: Baseline, wire: str, stream: bool
) -> None:
    allowed = frozenset({Outcome.PASSED} if not WIRES[wire][2] else {Outcome.COMPLETE})
    seen = run(fuzz, wire, stream, "drip-ok", allowed, lambda d: d, drip_bytes=5)
    sdk_agrees(fuzz, wire, stream, seen, drip_bytes=5)


@pytest.mark.parametrize(("wire", "stream"), MODES)
def test_a_reset_mid_answer_is_a_502_or_a_reset(
    fuzz: Stack, baseline: Baseline, wire: str, stream: bool
) -> None:
    behaviour: dict[str, Any] = (
        {"stream_drop_after": 2} if stream else {"body_drop_after_bytes": 40}
    )
    # A stream reset before Envoy passed its headers on is Envoy's clean 502.
    allowed = frozenset({Outcome.RESET, Outcome.ERROR} if stream else {Outcome.ERROR})
    seen = run(fuzz, wire, stream, "reset", allowed, cut_stream=True, **behaviour)
    if seen.outcome is Outcome.ERROR:
        assert seen.status == 502
    sdk_agrees(fuzz, wire, stream, seen, cut_stream=True, **behaviour)


@pytest.mark.parametrize(("wire", "stream"), MODES)
def test_invalid_utf8_in_the_text(fuzz: Stack, baseline: Baseline, wire: str, stream: bool) -> None:
    # A JSON string (an SSE event's data, an event-stream payload) with bytes that are not
    # UTF-8: a whole answer cannot be read (502); a translated SSE stream reads them as
    # U+FFFD (the SSE rules) and says all the rest; a pass-through stream passes as it is.
    bad = b"\xff\xfe\xc3("
    if not stream:
        allowed = frozenset({Outcome.ERROR})
    elif WIRES[wire][2]:
        allowed = frozenset({Outcome.STREAM_ERROR, Outcome.COMPLETE})
    else:
        allowed = frozenset({Outcome.PASSED, Outcome.STREAM_ERROR})
    replaced = REPLY.replace(MARK, bad.decode("utf-8", "replace"))
    seen = run(
        fuzz,
        wire,
        stream,
        "invalid-utf8",
        allowed,
        replace_text(wire, MARK.encode(), bad),
        complete_text=replaced,
    )
    if seen.outcome is Outcome.ERROR:
        assert (seen.status, seen.code) == (502, "malformed_provider_response")


@pytest.mark.parametrize("wire", WIRES)
def test_an_oversized_stream(fuzz: Stack, baseline: Baseline, wire: str) -> None:
    # Far beyond what Envoy buffers (the body limit + 1 MiB), in the reply text: a stream goes
    # through piece by piece and says it all, or ends cleanly.
    big = b"x" * OVERSIZED_BYTES
    run(
        fuzz,
        wire,
        True,
        "oversized",
        CLEAN,
        replace_text(wire, MARK.encode(), big),
        complete_text=REPLY.replace(MARK, big.decode()),
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("wire", WIRES)
def test_an_oversized_whole_answer(tmp_path: Path, wire: str, chunked: bool) -> None:
    """A whole answer larger than Envoy's buffer (`limits.buffer_bytes`), sent in 64 KiB
    pieces. With its Content-Length: a translated one is a clean 502
    `provider_response_too_large`, an OpenAI-compatible one passes through unread, byte for
    byte. Chunked (length unknown): that 502 for every wire format. Envoy never stalls or
    crashes while serving (it used to, docs/reliability.md "Provider fuzzing"). Its log is
    read before the stack stops: Envoy 1.40 also crashes now and then at SIGTERM right after
    any answer, small ones too (docs/architecture.md, Envoy 1.40 bugs, 4), not this test's
    subject."""
    # Its own stack: were Envoy to crash, the matrix would not be taken down with it.
    with make_stack(tmp_path, customize=fuzz_config) as stack:
        pid = stack.envoy.pid if stack.envoy is not None else None
        big = b"x" * OVERSIZED_BYTES
        passes = not chunked and not WIRES[wire][2]
        seen = run(
            stack,
            wire,
            False,
            "oversized",
            frozenset({Outcome.PASSED} if passes else {Outcome.ERROR}),
            replace_text(wire, MARK.encode(), big),
            record=False,
            drip_bytes=64 * 1024,
            chunked=chunked,
        )
        if not passes:
            assert (seen.status, seen.code) == (502, "provider_response_too_large")
        assert stack.envoy is not None and stack.envoy.poll() is None and stack.envoy.pid == pid
        assert "Caught Segmentation fault" not in stack.envoy_log.read_text()


SSE_WIRES = [(wire, True) for wire in SSE_END]


@pytest.mark.parametrize(("wire", "stream"), SSE_WIRES)
def test_broken_sse_framing(fuzz: Stack, baseline: Baseline, wire: str, stream: bool) -> None:
    end = SSE_END[wire]
    line_end = end[: len(end) // 2]
    translated = WIRES[wire][2]

    def no_blank_lines(data: bytes) -> bytes:
        return data.replace(end, line_end)

    def data_not_json(data: bytes) -> bytes:
        first, *rest = sse_events(wire, data)
        return first + b"data: {not json" + end + b"".join(rest)

    def last_event_missing(data: bytes) -> bytes:
        return b"".join(sse_events(wire, data)[:-1])

    run(fuzz, wire, stream, "no-blank-lines", frozenset({Outcome.STREAM_ERROR}), no_blank_lines)
    run(
        fuzz,
        wire,
        stream,
        "data-not-json",
        # A translated stream may skip an event it cannot read, if it says all the rest.
        frozenset({Outcome.STREAM_ERROR, Outcome.COMPLETE} if translated else {Outcome.PASSED}),
        data_not_json,
    )
    # [DONE] (OpenAI), message_stop (Anthropic), the chunk with the finishReason (Gemini).
    run(
        fuzz,
        wire,
        stream,
        "last-event-missing",
        frozenset({Outcome.STREAM_ERROR}),
        last_event_missing,
    )


def test_broken_event_stream_frames(fuzz: Stack, baseline: Baseline) -> None:
    def flip(at: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
        def change(data: bytes) -> bytes:
            parts = frames(data)
            third = bytearray(parts[2])
            third[at(parts[2])] ^= 0xFF
            parts[2] = bytes(third)
            return b"".join(parts)

        return change

    def truncated_frame(data: bytes) -> bytes:
        parts = frames(data)
        return b"".join(parts[:2]) + parts[2][: len(parts[2]) // 2]

    def unknown_event(data: bytes) -> bytes:
        parts = frames(data)
        odd = event_message("mysteryEvent", {"p": "abc"})
        return b"".join([*parts[:2], odd, *parts[2:]])

    def no_json_payload(data: bytes) -> bytes:
        parts = frames(data)
        parts[2] = with_payload(parts[2], lambda _: b"{not json")
        return b"".join(parts)

    broken = frozenset({Outcome.STREAM_ERROR})
    run(fuzz, "bedrock", True, "bad-prelude-crc", broken, flip(lambda _: 9))
    run(fuzz, "bedrock", True, "bad-message-crc", broken, flip(lambda frame: len(frame) - 1))
    run(fuzz, "bedrock", True, "truncated-frame", broken, truncated_frame)
    run(fuzz, "bedrock", True, "payload-not-json", broken, no_json_payload)
    # An event type the translator does not know may be skipped, if all the rest is said.
    run(
        fuzz,
        "bedrock",
        True,
        "unknown-event",
        frozenset({Outcome.STREAM_ERROR, Outcome.COMPLETE}),
        unknown_event,
    )


# -- random garbage, cuts and flips (hypothesis) ---------------------------------------------

FUZZ_SETTINGS = settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DRIPS = st.sampled_from([None, 7, 64])


@pytest.mark.parametrize(("wire", "stream"), MODES)
@FUZZ_SETTINGS
@given(garbage=st.binary(max_size=400), drip=DRIPS)
def test_random_garbage(
    fuzz: Stack, baseline: Baseline, wire: str, stream: bool, garbage: bytes, drip: int | None
) -> None:
    run(
        fuzz,
        wire,
        stream,
        "garbage",
        CLEAN,
        lambda _: garbage,
        full_text_when_complete=False,
        drip_bytes=drip,
    )


@pytest.mark.parametrize(("wire", "stream"), MODES)
@FUZZ_SETTINGS
@given(cut=st.floats(min_value=0.0, max_value=0.999), drip=DRIPS)
def test_random_cuts(
    fuzz: Stack, baseline: Baseline, wire: str, stream: bool, cut: float, drip: int | None
) -> None:
    # Cut anywhere, then a clean end: whatever the client gets may not look complete unless
    # it says the whole reply.
    run(fuzz, wire, stream, "cut", CLEAN, lambda d: d[: int(len(d) * cut)], drip_bytes=drip)


@pytest.mark.parametrize(("wire", "stream"), MODES)
@FUZZ_SETTINGS
@given(
    flips=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.999), st.integers(1, 255)),
        min_size=1,
        max_size=3,
    ),
    drip=DRIPS,
)
def test_random_byte_flips(
    fuzz: Stack,
    baseline: Baseline,
    wire: str,
    stream: bool,
    flips: list[tuple[float, int]],
    drip: int | None,
) -> None:
    def flip(data: bytes) -> bytes:
        out = bytearray(data)
        for where, mask in flips:
            out[int(len(out) * where)] ^= mask
        return bytes(out)

    # A flipped answer can still be a valid one that says something else.
    run(fuzz, wire, stream, "flip", CLEAN, flip, full_text_when_complete=False, drip_bytes=drip)


# -- after the matrix ------------------------------------------------------------------------


def test_after_the_matrix_the_processor_breakers_and_limits_are_consistent(
    fuzz: Stack, baseline: Baseline
) -> None:
    # The whole matrix ran before this test (file order): every wire, both modes.
    ran = {(wire, stream) for wire, stream, _ in LEDGER.cases}
    assert ran == set(MODES), "run the whole module: this test checks what the matrix left"
    assert {case for *_, case in LEDGER.cases} >= {"garbage", "cut", "flip", "reset"}
    fuzz.fake.clear()

    # The processor: the same process, alive and healthy, no unexpected exception.
    assert fuzz.processor is not None
    assert fuzz.processor.poll() is None and fuzz.processor.pid == baseline.pid
    assert httpx.get(f"{fuzz.admin_url}/healthz", timeout=10).status_code == 200
    assert metric(fuzz, "gateway_processor_exceptions_total") == baseline.exceptions

    # Breakers: far below the threshold, none moved; each target counted one failure per
    # 5xx its clients got (a stream ended by an error event or cut short is not a failure).
    assert metric(fuzz, "gateway_breaker_transitions_total") == baseline.transitions
    now = breakers(fuzz)
    for wire, (_, key, _) in WIRES.items():
        before, after = baseline.breakers[key], now[key]
        assert after["state"] == "closed", (wire, after)
        assert after["probes_in_flight"] == 0, (wire, after)
        failures = after["window_failures"] - before["window_failures"]
        assert failures == LEDGER.failed[wire], (wire, after, LEDGER.failed[wire])

    # Limits: every request settled, no concurrency lease left.
    total = sum(LEDGER.sent.values())
    entry = settled(fuzz, total)
    [concurrency] = [
        w for w in entry["windows"] if w["limit"] == "concurrency" and w["scope"] == "tenant"
    ]
    assert concurrency["used"] == 0, concurrency

    # And the gateway still answers every wire format, whole and streamed.
    client = fuzz.client(key=FUZZ_KEY)
    fuzz.fake.set_behaviour(reply=REPLY)
    for wire, stream in MODES:
        kwargs = request_body(wire, stream)
        if stream:
            chunks = list(client.chat.completions.create(**kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
        assert text == REPLY, (wire, stream)


def settled(stack: Stack, requests: int, attempts: int = 200) -> dict[str, Any]:
    """The tenant's `/usage` entry once `requests` requests are settled (a request settles
    when its record closes, which may be just after the client has its answer)."""
    entry: dict[str, Any] = {}
    for _ in range(attempts):
        response = httpx.get(f"{stack.admin_url}/usage", params={"tenant": TENANT}, timeout=10)
        assert response.status_code == 200, response.text
        entry = response.json()["tenants"][TENANT]
        if entry["totals"].get("requests", 0) >= requests:
            break
        time.sleep(0.05)
    assert entry["totals"].get("requests", 0) == requests, entry
    return entry
