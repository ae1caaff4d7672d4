"""Client fuzzing through the real Envoy listener (issue 15).

Hypothesis builds raw HTTP/1.1 requests — methods, paths of every endpoint and path tricks,
random and broken headers, random JSON, near-valid chat and embeddings bodies with mutated
fields (wrong types, huge numbers, NaN/Infinity, deep nesting, huge strings, invalid UTF-8,
truncated JSON) — and sends them on a raw socket (an HTTP client library refuses to send most
of them). Every request must get an answer: a well-formed success, or an OpenAI-style error
with a JSON content type and never a 5xx (the fake providers always succeed here, so no 502,
503 or 504 has a reason to appear). Afterwards the processor is the same process, alive, and
neither it nor Envoy counted a failure.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import FULL_KEY, LIMITED_KEY, Stack, make_stack

pytestmark = pytest.mark.e2e

MAX_JSON_DEPTH = 16
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is repeatable
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What Envoy counts when the ext_proc exchange itself fails (a processor crash, a timeout, an
# answer Envoy cannot use); none may move during the run.
ENVOY_EXT_PROC_FAILURES = (
    "streams_failed",
    "message_timeouts",
    "spurious_msgs_received",
    "failure_mode_allowed",
    "override_message_timeout_ignored",
)


@dataclass
class Seen:
    """What the run reached, so a fuzzer that never got past the front door fails."""

    statuses: set[int] = field(default_factory=set)
    successes: set[str] = field(default_factory=set)
    errors: dict[tuple[str, int, str], int] = field(default_factory=dict)
    providers: set[str] = field(default_factory=set)


SEEN = Seen()


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private stack (its breakers and counters are this module's alone)."""

    def limits(config: dict[str, Any]) -> None:
        config["limits"]["max_json_depth"] = MAX_JSON_DEPTH

    with make_stack(Path(tmp_path_factory.mktemp("fuzz")), customize=limits) as stack:
        yield stack


# -- sending and checking -----------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP response as read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes


def send(stack: Stack, raw: bytes, method: str) -> Answer:
    """Write `raw` on a fresh connection to the listener and read one response.

    A connection closed without a response raises: that is a failed request, not a skip.
    """
    listener = stack.gateway_config.listener
    with socket.create_connection((listener.address, listener.port), timeout=60) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, headers, body)


def request_bytes(
    method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """An HTTP/1.1 request; the caller's header list is written as given."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def check_answer(answer: Answer, method: str, path: str, stream: bool) -> None:
    """The properties of every answer (see the module docstring)."""
    SEEN.statuses.add(answer.status)
    assert answer.status < 500, (answer.status, answer.body[:500])
    content_type = answer.headers.get("content-type", "")
    if answer.status >= 300:
        assert content_type.startswith("application/json"), (answer.status, content_type)
        if method == "HEAD":
            return
        error = orjson.loads(answer.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        key = (path.split("?", 1)[0][:40], answer.status, str(error["code"]))
        SEEN.errors[key] = SEEN.errors.get(key, 0) + 1
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and error["type"]
        assert error["code"] is None or isinstance(error["code"], str)
        assert error["param"] is None or isinstance(error["param"], str)
        return
    if method == "HEAD":
        return
    if "x-gateway-provider" in answer.headers:
        SEEN.providers.add(answer.headers["x-gateway-provider"])
    bare = path.split("?", 1)[0]
    if stream and bare == "/v1/chat/completions":
        assert content_type.startswith("text/event-stream"), content_type
        check_sse(answer.body)
        SEEN.successes.add("chat-stream")
        return
    assert content_type.startswith("application/json"), content_type
    body = orjson.loads(answer.body)
    if bare in ("/health", "/healthz"):
        assert body == {"status": "ok"}
    elif bare == "/v1/models":
        assert body["object"] == "list" and all(m["object"] == "model" for m in body["data"])
    elif bare.startswith("/v1/models/"):
        assert body["object"] == "model" and isinstance(body["id"], str)
    elif bare == "/v1/chat/completions":
        assert body["object"] == "chat.completion", body
        assert body["choices"] and all("message" in c for c in body["choices"])
    elif bare == "/v1/embeddings":
        assert body["object"] == "list", body
        assert body["data"] and all(isinstance(d["embedding"], (list, str)) for d in body["data"])
    else:
        raise AssertionError(f"a success on an unknown path {path!r}: {body!r}")
    if bare.startswith("/v1/models/"):
        bare = "/v1/models/{id}"
    SEEN.successes.add("/health" if bare == "/healthz" else bare)


def check_sse(body: bytes) -> None:
    """Every event of a stream is JSON (a chunk or an error) or the closing [DONE]."""
    events = [e for e in body.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    assert events, body
    assert events[-1].strip() == b"data: [DONE]", events[-1]
    for event in events[:-1]:
        data = b"".join(
            line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")
        )
        chunk = orjson.loads(data)
        assert chunk.get("object") == "chat.completion.chunk" or "error" in chunk, chunk


# -- strategies ---------------------------------------------------------------------------------

MODELS = [
    "chat-openai",
    "chat-azure",
    "chat-vllm",
    "chat-anthropic",
    "chat-gemini",
    "chat-bedrock",
    "chat-ollama",
    "chat-together",
    "embed-openai",
    "embed-azure",
    "embed-gemini",
    "embed-bedrock",
    "no-such-model",
    "",
]
ENDPOINTS = ["/v1/chat/completions", "/v1/embeddings"]
PATHS = [
    *ENDPOINTS,
    "/v1/models",
    "/v1/models/chat-openai",
    "/v1/models/embed-gemini",
    "/v1/models/no-such-model",
    "/v1/models/",
    "/health",
    "/healthz",
    "/",
    "/v1",
    "/v1/completions",
    "/v1/chat/completions/",
    "//v1/chat/completions",
    "/v1//models",
    "/v1/%2e%2e/v1/models",
    "/v1/../v1/models",
    "/v1/models/%2e%2e%2fadmin",
    "/v1/models/%00",
    "/v1/chat/completions?stream=true&x=%ff",
    "/v1/models?limit=-1",
    "/V1/MODELS",
    "/breakers",
    "/metrics",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_"
# Visible ASCII plus space: what a header value may hold.
VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
# Number literals orjson parses, rejects, or turns into inf; JSON has no NaN or Infinity.
NUMBER_LITERALS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e308",
    b"-1e308",
    b"1e999",
    b"2e-400",
    str(2**70).encode(),
    str(-(2**64)).encode(),
    b"18446744073709551616",
    b"0.0000000000000000001",
    b"-0",
    b"1.0",
    b"01",
    b"1.",
    b".5",
    b"0x10",
]
SPECIAL = b'"__SPECIAL__"'
CHAT_FIELDS = [
    "model",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "seed",
    "stream",
    "stream_options",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "user",
    "timeout",
    "parallel_tool_calls",
    "logprobs",
    "frequency_penalty",
]
EMBEDDING_FIELDS = ["model", "input", "encoding_format", "dimensions", "user", "timeout"]
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "x"])
            | json_values,
            "content": st.sampled_from(["hi", "", "  ", "héllo 👋 مرحبا \u200b"]) | json_values,
        }
    ),
    max_size=3,
)


def encode(value: Any) -> bytes:
    """JSON text of `value`; the standard library writes integers of any size (orjson: 64 bits)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def near_valid_body(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """A chat or embeddings request with some fields mutated; (path, body, stream)."""
    path = draw(st.sampled_from(ENDPOINTS))
    model = draw(st.sampled_from(MODELS))
    body: dict[str, Any]
    if path == ENDPOINTS[0]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        body["stream"] = draw(st.booleans())
        names = CHAT_FIELDS
    else:
        body = {"model": model, "input": draw(st.sampled_from(["x", ["a", "b"], [1, 2]]))}
        names = EMBEDDING_FIELDS
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        how = draw(st.sampled_from(["any", "literal", "messages", "drop"]))
        if how == "any":
            body[name] = draw(json_values)
        elif how == "literal":
            body[name] = "__SPECIAL__"
        elif how == "messages" and name == "messages":
            body[name] = draw(messages)
        else:
            body.pop(name, None)
    raw = encode(body)
    if SPECIAL in raw:
        raw = raw.replace(SPECIAL, draw(st.sampled_from(NUMBER_LITERALS)))
    raw = draw(damaged(raw))
    stream = body.get("stream") is True
    return path, raw, stream


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """Mostly `raw` as it is; else truncated, with invalid UTF-8, or deeply nested."""
    # sampled_from, not integers: Hypothesis draws small integers far more often than others.
    how = draw(st.sampled_from(["as-is"] * 6 + ["truncated", "bad-utf8", "deep", "huge"]))
    if how == "truncated" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "bad-utf8":
        at = draw(st.integers(0, len(raw)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\udc00"]))
        return raw[:at] + bad + raw[at:]
    if how == "deep":
        depth = draw(st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH * 4))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return raw[:-1] + b', "deep": ' + opener * depth + b"1" + closer * depth + b"}"
    if how == "huge":
        size = draw(st.sampled_from([1_000, 100_000, 2_000_000]))
        return raw[:-1] + b', "huge": "' + b"\xf0\x9f\x91\x8b" * (size // 4) + b'"}'
    return raw


random_bodies = st.one_of(
    st.just(b""),
    json_values.map(encode),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"{", b"[", b"null", b'"x"', b"{}", b'{"model": null}', b"\xef\xbb\xbf{}"]),
)
auth_values = st.sampled_from(
    [None] * 3
    + [b"Bearer " + FULL_KEY.encode()] * 10
    + [
        b"Bearer " + LIMITED_KEY.encode(),
        b"bearer " + FULL_KEY.encode(),
        b"Bearer  " + FULL_KEY.encode(),
        b"Bearer",
        b"Bearer ",
        b"Basic dXNlcjpwYXNz",
        b"Bearer sk-wrong",
        b"Bearer " + b"k" * 4000,
        b"Bearer \xff\xfe",
        b"",
    ]
)
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json",
        b"application/json; charset=utf-8",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"",
        b"application/json\xff",
    ]
)
random_headers = st.lists(
    st.tuples(
        st.text(TOKEN_CHARS, min_size=1, max_size=20).map(str.encode),
        st.text(VALUE_CHARS, max_size=100).map(str.encode),
    ),
    max_size=4,
)
gateway_headers = st.lists(
    st.tuples(
        st.sampled_from([b"x-gateway-timeout", b"x-gateway-cache", b"x-request-id"]),
        st.sampled_from([b"30", b"0", b"-1", b"601", b"nan", b"inf", b"1e999", b"abc", b"on", b""]),
    ),
    max_size=2,
)
# Header shapes Envoy's codec refuses: each must get an OpenAI-style 4xx, not a closed socket.
broken_header_lines = st.sampled_from(
    [
        (b"bad header", b"x"),
        (b"x-ctl", b"a\x01b"),
        (b"x-huge", b"h" * 70_000),
        (b"transfer-encoding", b"gzip"),
        (b"", b"no-name"),
    ]
)


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[bytes, str, str, bool]:
    """A raw request: (bytes, method, path, whether a stream was asked for)."""
    stream = False
    if draw(st.booleans()):
        path, body, stream = draw(near_valid_body())
        method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]))
    else:
        method = draw(
            st.sampled_from(METHODS + ["GET"] * 7 + ["BREW", "get", "M-SEARCH", "X" * 100])
        )
        kind = draw(st.sampled_from(["known"] * 7 + ["random"] * 2 + ["long"]))
        if kind == "known":
            path = draw(st.sampled_from(PATHS + ["/v1/models", "/v1/models/chat-gemini"] * 3))
        elif kind == "random":
            path = "/" + draw(st.text(TOKEN_CHARS + "/%.~", max_size=60))
        else:
            path = "/v1/models/" + "m" * draw(st.sampled_from([1_000, 8_000, 20_000]))
        body = draw(random_bodies)
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.sampled_from([True] * 9 + [False])):
        headers.append((b"host", b"gateway.test"))
    auth = draw(auth_values)
    if auth is not None:
        headers.append((b"authorization", auth))
    content_type = draw(content_types)
    if content_type:
        headers.append((b"content-type", content_type))
    headers += draw(gateway_headers) + draw(random_headers)
    if draw(st.sampled_from([False] * 14 + [True])):
        headers.append(draw(broken_header_lines))
    framing = draw(st.sampled_from(["length"] * 12 + ["chunked", "short", "none"]))
    if framing == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    elif framing == "short" and body:
        # The body is cut short of its declared length by a comma: a shorter length.
        headers.append((b"content-length", str(len(body) - 1).encode()))
    elif framing != "none" or method not in ("GET", "HEAD"):
        headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"connection", b"close"))
    return request_bytes(method, path.encode(), headers, body), method, path, stream


# -- the run ------------------------------------------------------------------------------------


def processor_failures(stack: Stack) -> dict[str, float]:
    """The processor's unexpected-exception counter and Envoy's ext_proc failure counters."""
    counts: dict[str, float] = {}
    text = httpx.get(f"{stack.admin_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_processor_exceptions_total":
                counts[sample.name] = sample.value
    assert "gateway_processor_exceptions_total" in counts, "the processor has no failure counter"
    stats = httpx.get(f"{stack.envoy_admin_url}/stats?format=json", timeout=10).json()["stats"]
    for stat in stats:
        name = stat.get("name", "")
        if name.startswith("http.gateway.ext_proc.") and name.rsplit(".", 1)[1] in (
            ENVOY_EXT_PROC_FAILURES
        ):
            counts[name] = float(stat["value"])
        if name == "http.gateway.downstream_rq_5xx":
            counts[name] = float(stat["value"])
    return counts


@pytest.fixture(scope="module")
def watched(fuzz_stack: Stack) -> Iterator[Stack]:
    """The fuzz stack, checked after the module: same processor, alive, nothing counted."""
    processor = fuzz_stack.processor
    assert processor is not None
    pid = processor.pid
    before = processor_failures(fuzz_stack)
    yield fuzz_stack
    assert fuzz_stack.processor is processor and processor.pid == pid
    assert processor.poll() is None, fuzz_stack.dump_logs()
    assert fuzz_stack.envoy is not None and fuzz_stack.envoy.poll() is None
    assert httpx.get(f"{fuzz_stack.admin_url}/healthz", timeout=10).status_code == 200
    after = processor_failures(fuzz_stack)
    assert after == before, (before, after)


def _plain_get(path: str) -> tuple[bytes, str, str, bool]:
    headers = [
        (b"host", b"gateway.test"),
        (b"authorization", b"Bearer " + FULL_KEY.encode()),
        (b"connection", b"close"),
    ]
    return request_bytes("GET", path.encode(), headers, b""), "GET", path, False


@FUZZ
@given(case=http_requests())
# Plain successes the random draws may miss on a given run (the coverage test below).
@example(case=_plain_get("/v1/models"))
@example(case=_plain_get("/health"))
def test_any_request_gets_a_well_formed_answer(
    watched: Stack, case: tuple[bytes, str, str, bool]
) -> None:
    raw, method, path, stream = case
    check_answer(send(watched, raw, method), method, path, stream)


@FUZZ
@given(case=near_valid_body(), key=st.sampled_from([FULL_KEY, LIMITED_KEY]))
def test_near_valid_bodies_reach_every_provider_or_get_a_clear_error(
    watched: Stack, case: tuple[str, bytes, bool], key: str
) -> None:
    path, body, stream = case
    headers = [
        (b"host", b"gateway.test"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw = request_bytes("POST", path.encode(), headers, body)
    check_answer(send(watched, raw, "POST"), "POST", path, stream)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
        (b"GET /v1/models HTTP/1.0\r\n\r\n", 426),
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,  # Envoy's 501, answered as the client error it is
        ),
    ],
)
def test_requests_envoy_cannot_parse_get_an_openai_error(
    watched: Stack, raw: bytes, status: int
) -> None:
    """Regression (issue 15): these got a closed connection and no answer at all, because the
    listener's ext_proc filter held Envoy's reply for the processor (envoy#29440)."""
    answer = send(watched, raw, "GET")
    assert answer.status == status, answer
    assert answer.headers["content-type"].startswith("application/json")
    error = orjson.loads(answer.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"]


def test_the_fuzzers_reached_every_endpoint(watched: Stack) -> None:
    """Runs after the fuzzers (file order): they got past validation to real answers."""
    assert {400, 401, 403, 404, 405} <= SEEN.statuses, SEEN.statuses
    assert {
        "/health",
        "/v1/models",
        "/v1/models/{id}",
        "/v1/chat/completions",
        "chat-stream",
        "/v1/embeddings",
    } <= SEEN.successes, (SEEN.successes, SEEN.errors)
    # Successes came from OpenAI-shaped and from translated wire formats alike.
    assert {"p-openai", "p-azure", "p-anthropic", "p-google", "p-bedrock"} <= SEEN.providers, (
        SEEN.providers
    )
