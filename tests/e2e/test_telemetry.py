"""End to end: what the gateway reports — metrics with their values, one access-log line per
request, no secret anywhere in any log — through the real Envoy with the openai SDK.

Expected values come from what the client itself received (the usage block the provider
reported, translated for it), never from the gateway's own code.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.decisions.auth import hash_key, key_id
from extproc.dev.fakes import FakeProviderServer
from tests.e2e.access_log import access_lines
from tests.e2e.conftest import FULL_KEY, LIMITED_KEY, UPSTREAM_KEYS, Stack, make_stack

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "count my tokens please"}]
FULL = {"tenant": "full", "key_id": key_id(hash_key(FULL_KEY))}
PROVIDERS = {
    "chat-openai": ("p-openai", "openai"),
    "chat-anthropic": ("p-anthropic", "anthropic"),
    "chat-gemini": ("p-google", "gcp.gemini"),
    "chat-bedrock": ("p-bedrock", "aws.bedrock"),
    "chat-vllm": ("p-vllm", "vllm"),
}


class Scrape:
    """One scrape of the processor's /metrics, summed over samples matching some labels."""

    def __init__(self, stack: Stack) -> None:
        response = httpx.get(f"{stack.admin_url}/metrics", timeout=10)
        assert response.status_code == 200
        self.samples = [
            sample
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        ]

    def sum(self, name: str, **labels: str) -> float:
        """The sum of every sample `name` whose labels include `labels`."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        """Every sample name exported."""
        return {s.name for s in self.samples}


def scrape_after(stack: Stack, before: Scrape, requests: int = 1) -> Scrape:
    """A scrape once `requests` more requests were counted: a request is counted when its last
    ext_proc stream ends, which may be just after the client has its answer."""
    deadline = time.monotonic() + 10
    while True:
        after = Scrape(stack)
        counted = delta(before, after, "gateway_requests_total")
        if counted >= requests or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.sum(name, **labels) - before.sum(name, **labels)


def genai(model: str) -> dict[str, str]:
    return {"gen_ai_request_model": model, "gen_ai_provider_name": PROVIDERS[model][1]}


def check_tokens(before: Scrape, after: Scrape, model: str, prompt: int, completion: int) -> None:
    """The request's tokens, as the client was told, in both token metrics."""
    provider = PROVIDERS[model][0]
    caller = {**FULL, "model": model, "provider": provider}
    assert delta(before, after, "gateway_tokens_total", **caller, token_type="input") == prompt
    assert delta(before, after, "gateway_tokens_total", **caller, token_type="output") == completion
    usage = "gen_ai_client_token_usage_sum"
    assert delta(before, after, usage, **genai(model), gen_ai_token_type="input") == prompt
    assert delta(before, after, usage, **genai(model), gen_ai_token_type="output") == completion
    counted = delta(before, after, "gen_ai_client_token_usage_count", **genai(model))
    assert counted == 2  # one observation per token type reported (no cached count here)


@pytest.mark.parametrize("model", list(PROVIDERS))
def test_a_whole_answer_is_counted_with_its_tokens(
    stack: Stack, fake: FakeProviderServer, model: str
) -> None:
    before = Scrape(stack)
    answer = stack.client().chat.completions.create(model=model, messages=USER)
    after = scrape_after(stack, before)
    assert answer.usage is not None
    provider = PROVIDERS[model][0]
    requests = {**FULL, "model": model, "provider": provider, "status": "200", "code": ""}
    assert delta(before, after, "gateway_requests_total", **requests) == 1
    check_tokens(before, after, model, answer.usage.prompt_tokens, answer.usage.completion_tokens)
    # The GenAI duration, labelled with the model that answered as the provider named it.
    duration = "gen_ai_server_request_duration_seconds_count"
    labels = {**genai(model), "gen_ai_operation_name": "chat", "error_type": ""}
    assert delta(before, after, duration, **labels, gen_ai_response_model=answer.model) == 1
    # Whole answers have no time to first token.
    assert delta(before, after, "gen_ai_server_time_to_first_token_seconds_count") == 0
    # The gateway's own time, per phase it handled.
    for phase in ("request_headers", "request_body", "response_headers", "response_body"):
        assert delta(before, after, "gateway_processing_seconds_count", phase=phase) >= 1, phase


def stream_usage(
    stack: Stack, model: str, include_usage: bool, headers: dict[str, str] | None = None
) -> tuple[str, Any]:
    """Stream a chat answer; (its text, the usage chunk the client got or None)."""
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = stack.client().chat.completions.create(
        model=model, messages=USER, stream=True, extra_headers=headers, **options
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, usage


@pytest.mark.parametrize("model", ["chat-openai", "chat-anthropic", "chat-bedrock"])
@pytest.mark.parametrize("include_usage", [True, False])
def test_a_stream_is_counted_with_its_tokens_and_timings(
    stack: Stack, fake: FakeProviderServer, model: str, include_usage: bool
) -> None:
    # What the provider reports for this request: the same request, whole.
    whole = stack.client().chat.completions.create(model=model, messages=USER)
    assert whole.usage is not None
    before = Scrape(stack)
    text, usage = stream_usage(stack, model, include_usage)
    after = scrape_after(stack, before)
    assert text == whole.choices[0].message.content
    if include_usage:
        assert usage is not None and usage.prompt_tokens == whole.usage.prompt_tokens
    else:
        # The gateway asked the provider for its usage; the client, who did not, gets none.
        assert usage is None
    check_tokens(before, after, model, whole.usage.prompt_tokens, whole.usage.completion_tokens)
    ttft = delta(before, after, "gen_ai_server_time_to_first_token_seconds_count", **genai(model))
    assert ttft == 1
    tpot = "gen_ai_server_time_per_output_token_seconds_count"
    expected_tpot = 1 if whole.usage.completion_tokens > 1 else 0
    assert delta(before, after, tpot, **genai(model)) == expected_tpot
    assert after.sum("gateway_response_streams_active") == 0  # the stream has ended


def test_a_read_pass_through_stream_still_reaches_the_client_chunk_by_chunk(
    stack: Stack, fake: FakeProviderServer
) -> None:
    # The fake holds the rest of the stream until the client has the first words: a gateway
    # that waited for the whole stream (to count its tokens) would never let this finish.
    gate = threading.Event()
    fake.set_behaviour(stream_gate=gate, reply="one two three four")
    client = stack.client().with_options(timeout=20)
    stream = client.chat.completions.create(model="chat-openai", messages=USER, stream=True)
    texts = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
            gate.set()
    assert "".join(texts) == "one two three four"


def traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def lines_of(stack: Stack, trace_id: str) -> list[dict[str, Any]]:
    """The access lines of one trace id, once there is one: a line is written when the
    request's last ext_proc stream ends, which may be just after the client has its answer."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in access_lines(stack) if line["trace_id"] == trace_id]
        if lines or time.monotonic() > deadline:
            time.sleep(0.2)  # a second line for the same request would be written by now
            return [line for line in access_lines(stack) if line["trace_id"] == trace_id]
        time.sleep(0.05)


def test_one_access_line_per_request_with_its_fields(
    stack: Stack, fake: FakeProviderServer
) -> None:
    trace_id, header = traceparent()
    stream = stack.client().chat.completions.create(
        model="chat-anthropic",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"traceparent": header},
    )
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
    assert usage is not None
    (line,) = lines_of(stack, trace_id)
    assert line["tenant"] == "full" and line["key_id"] == FULL["key_id"]
    assert line["model"] == "chat-anthropic" and line["stream"] is True
    assert line["provider"] == "p-anthropic" and line["upstream_model"] == "claude-up"
    assert line["target"]  # the target's id (docs/operations.md)
    assert line["status"] == 200 and line["error_code"] == "" and line["attempts"] == 1
    assert line["prompt_tokens"] == usage.prompt_tokens
    assert line["completion_tokens"] == usage.completion_tokens
    assert line["request_id"]  # Envoy's x-request-id
    assert line["latency_ms"] >= line["ttft_ms"] >= line["headers_ms"] >= 0
    assert "content" not in line  # no prompt or completion text unless enabled
    assert "count my tokens" not in orjson.dumps(line).decode()


def test_an_error_has_its_access_line_too(stack: Stack, fake: FakeProviderServer) -> None:
    trace_id, header = traceparent()
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="sk-not-a-key", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="chat-openai", messages=USER, extra_headers={"traceparent": header}
        )
    (line,) = lines_of(stack, trace_id)
    assert line["status"] == 401 and line["error_code"] == "invalid_api_key"
    assert line["tenant"] == "" and line["model"] == "" and line["attempts"] == 0
    trace_id, header = traceparent()
    fake.set_behaviour(status=503)
    with pytest.raises(openai.InternalServerError):
        stack.client().chat.completions.create(
            model="chat-gemini", messages=USER, extra_headers={"traceparent": header}
        )
    (line,) = lines_of(stack, trace_id)
    assert line["status"] == 503 and line["error_code"] == "provider_overloaded"
    assert line["provider"] == "p-google" and line["attempts"] == 1


def every_secret() -> list[str]:
    return [FULL_KEY, LIMITED_KEY, *UPSTREAM_KEYS.values()]


def test_no_secret_in_any_log_line(stack: Stack, fake: FakeProviderServer) -> None:
    # Every provider type and every client key, good and bad, streamed and not, errors too.
    limited = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=LIMITED_KEY, max_retries=0)
    with limited:
        limited.chat.completions.create(model="chat-openai", messages=USER)
        with pytest.raises(openai.PermissionDeniedError):
            limited.chat.completions.create(model="chat-anthropic", messages=USER)
    for model in [*PROVIDERS, "chat-azure", "chat-together", "chat-ollama", "chat-bedrock-badsig"]:
        for stream in (False, True):
            try:
                stream_or_answer = stack.client().chat.completions.create(
                    model=model, messages=USER, stream=stream
                )
                if stream:
                    list(stream_or_answer)  # type: ignore[arg-type]
            except openai.APIStatusError as error:
                assert model == "chat-bedrock-badsig", (model, error)
    fake.set_behaviour(status=401)  # a provider refusing the gateway's key
    with pytest.raises(openai.APIStatusError):
        stack.client().chat.completions.create(model="chat-openai", messages=USER)
    logs = stack.dump_logs(tail=None)
    assert access_lines(stack), "the access log is part of the scan"
    for secret in every_secret():
        assert secret not in logs, f"a secret ({secret[:6]}...) appears in a log"
        assert hash_key(secret) not in logs  # not even a whole key hash: key ids are short


@pytest.fixture(scope="module")
def pair_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose model has two targets: attempts on upstream-filter streams, failover."""

    def two_targets(config: dict[str, Any]) -> None:
        config["resilience"]["max_retries"] = 1
        config["models"].append(
            {
                "name": "chat-pair",
                "targets": [
                    {"provider": "p-openai", "model": "gpt-up"},
                    {"provider": "p-anthropic", "model": "claude-up"},
                ],
            }
        )

    tmp: Path = tmp_path_factory.mktemp("pair")
    with make_stack(tmp, customize=two_targets) as s:
        yield s


@pytest.mark.parametrize("stream", [False, True])
def test_a_failover_is_one_line_with_its_attempts_and_the_answering_provider(
    pair_stack: Stack, stream: bool
) -> None:
    pair_stack.fake.clear()
    # The first attempt (first target) fails with a 503, the retry goes to the second target.
    pair_stack.fake.set_behaviour(status=503, fail_times=1)
    trace_id, header = traceparent()
    before = Scrape(pair_stack)
    if stream:
        _, usage = stream_usage(pair_stack, "chat-pair", True, {"traceparent": header})
    else:
        answer = pair_stack.client().chat.completions.create(
            model="chat-pair", messages=USER, extra_headers={"traceparent": header}
        )
        usage = answer.usage
    after = scrape_after(pair_stack, before)
    pair_stack.fake.clear()
    assert usage is not None
    (line,) = lines_of(pair_stack, trace_id)
    assert line["attempts"] == 2 and line["status"] == 200 and line["error_code"] == ""
    assert line["provider"] == "p-anthropic" and line["model"] == "chat-pair"
    assert line["prompt_tokens"] == usage.prompt_tokens
    caller = {**FULL, "model": "chat-pair", "provider": "p-anthropic"}
    tokens = delta(before, after, "gateway_tokens_total", **caller, token_type="output")
    assert tokens == usage.completion_tokens
    status = {"model": "chat-pair", "provider": "p-anthropic", "status": "200"}
    assert delta(before, after, "gateway_requests_total", **status) == 1
