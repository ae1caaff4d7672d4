"""End to end: breaker-aware routing and same-request failover across providers, real Envoy.

Each test gets its own stack (breaker state must not leak between tests): a primary
OpenAI-compatible fake and a backup fake spoken to as Anthropic, behind one model.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from extproc.config.topology import model_stat_name
from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import FULL_KEY, UPSTREAM_KEYS, Stack, make_stack

pytestmark = pytest.mark.e2e

OPEN_SECONDS = 2.0
HC_INTERVAL_MS = 100


@dataclass
class Pair:
    """A stack whose model `resilient` has a primary and a backup target."""

    stack: Stack
    primary: FakeProviderServer
    backup: FakeProviderServer

    def client(self) -> openai.OpenAI:
        return self.stack.client()

    def chat(self, content: str = "hello", **kwargs: Any) -> Any:
        return self.client().chat.completions.create(
            model="resilient", messages=[{"role": "user", "content": content}], **kwargs
        )

    def post(self, **body: Any) -> httpx.Response:
        payload = {"model": "resilient", "messages": [{"role": "user", "content": "hi"}], **body}
        return httpx.post(
            f"{self.stack.base_url}/v1/chat/completions",
            json=payload,
            headers={"authorization": f"Bearer {FULL_KEY}"},
            timeout=30,
        )

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.stack.admin_url}/metrics").text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def envoy_stat(self, name: str, model: str = "resilient") -> int:
        """Envoy's counter `cluster.<model's stat name>.<name>` (Envoy lists its counters from
        the start, zeros too: a name it does not know is an error, never a silent 0)."""
        stat = f"cluster.{model_stat_name(model)}.{name}"
        text = httpx.get(
            f"{self.stack.envoy_admin_url}/stats", params={"filter": f"^{re.escape(stat)}$"}
        ).text
        values = [v for k, _, v in (x.partition(": ") for x in text.splitlines()) if k == stat]
        assert len(values) == 1, f"Envoy has no counter {stat}: {text[:500]}"
        return int(values[0])

    def breakers(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.stack.admin_url}/breakers").json()
        return result

    def wait_for_health_checks(self) -> None:
        # Envoy learns breaker states through active health checks of the processor.
        time.sleep(HC_INTERVAL_MS / 1000 * 4)


def resilient_config(backup_url: str, **resilience: Any) -> Any:
    def customize(config: dict[str, Any]) -> None:
        config["providers"].append(
            {
                "name": "p-backup",
                "type": "anthropic",
                "base_url": f"{backup_url}/v1",
                "api_key_env": "TEST_ANTHROPIC_KEY",
            }
        )
        config["models"].append(
            {
                "name": "resilient",
                "targets": [
                    {"provider": "p-openai", "model": "primary-model"},
                    {"provider": "p-backup", "model": "backup-model"},
                ],
            }
        )
        config["resilience"] = {
            "breaker_consecutive_failures": 5,
            "breaker_open_seconds": OPEN_SECONDS,
            "health_check_interval_ms": HC_INTERVAL_MS,
            "max_retries": 2,
            "retry_base_interval_ms": 10,
            "retry_max_interval_ms": 40,
            **resilience,
        }

    return customize


def make_pair(
    tmp_path: Path, telemetry: dict[str, Any] | None = None, **resilience: Any
) -> Iterator[Pair]:
    backup = FakeProviderServer(port=0).start()
    resilient = resilient_config(backup.base_url, **resilience)

    def customize(config: dict[str, Any]) -> None:
        resilient(config)
        if telemetry is not None:
            config["telemetry"] = telemetry

    stack = make_stack(tmp_path, customize=customize)
    try:
        yield Pair(stack, stack.fake, backup)
    finally:
        stack.stop()
        stack.fake.stop()
        backup.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    yield from make_pair(tmp_path)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_primary_5xx_fails_over_to_a_different_provider_type(pair: Pair, status: int) -> None:
    pair.primary.set_behaviour(status=status)
    reply = pair.chat("fail over please")
    # One normal OpenAI answer, produced by the Anthropic-speaking backup and translated back.
    assert reply.choices[0].message.content == "echo: fail over please"
    assert reply.model == "backup-model"  # the model that answered: the backup's
    assert len(pair.primary.requests) == 1
    (seen,) = pair.backup.requests
    assert seen.path == "/v1/messages"
    assert seen.json["model"] == "backup-model"
    assert seen.header("x-api-key")
    # Credentials of the first attempt did not follow the request to the second provider.
    assert seen.header("authorization") is None
    assert pair.primary.requests[0].header("x-api-key") is None


def test_unreachable_primary_fails_over(pair: Pair) -> None:
    pair.primary.stop()  # connection refused
    reply = pair.chat("anyone there?")
    assert reply.choices[0].message.content == "echo: anyone there?"
    assert len(pair.backup.requests) == 1


def test_streams_fail_over_before_the_first_byte(pair: Pair) -> None:
    pair.primary.set_behaviour(status=503)
    stream = pair.chat("stream it", stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: stream it"
    assert len(pair.primary.requests) == 1 and len(pair.backup.requests) == 1


def test_provider_429_cools_the_target_and_fails_over(tmp_path: Path) -> None:
    # Every attempt on its upstream filter (no lead): the processor sees the 429 itself.
    for pair in make_pair(tmp_path, inline_first_attempt=False):
        pair.primary.set_behaviour(status=429, error_headers={"retry-after": "1"})
        reply = pair.chat("rate limited")
        assert reply.choices[0].message.content == "echo: rate limited"
        state = pair.breakers()["p-openai/primary-model"]
        assert state["state"] == "closed"  # a 429 is a cool-down, not a failure
        assert state["consecutive_failures"] == 0
        assert pair.metric("gateway_upstream_attempts_total", outcome="rate_limited") == 1


def test_a_lead_targets_429_fails_over_and_counts_as_its_failure(pair: Pair) -> None:
    # The lead's first attempt has no upstream filter: Envoy retries its 429 unseen, and the
    # retry's stream counts the lead's try as a failure (docs/architecture.md, "The lead").
    pair.primary.set_behaviour(status=429, error_headers={"retry-after": "1"})
    reply = pair.chat("rate limited")
    assert reply.choices[0].message.content == "echo: rate limited"
    assert len(pair.primary.requests) == 1 and len(pair.backup.requests) == 1
    state = pair.breakers()["p-openai/primary-model"]
    assert state["state"] == "closed" and state["consecutive_failures"] == 1
    attempts = "gateway_upstream_attempts_total"
    assert pair.metric(attempts, provider="p-openai", outcome="failure") == 1
    assert pair.metric(attempts, provider="p-backup", outcome="success") == 1


@pytest.mark.parametrize("status", [401, 404])
def test_a_lead_targets_4xx_the_gateway_answers_with_a_502_fails_over(
    pair: Pair, status: int
) -> None:
    # Unmapped on the lead's first attempt, so the lead route retries them as they come.
    pair.primary.set_behaviour(status=status)
    reply = pair.chat("fail over")
    assert reply.choices[0].message.content == "echo: fail over"
    assert len(pair.primary.requests) == 1 and len(pair.backup.requests) == 1


def test_a_lead_targets_400_is_the_clients_error_and_not_retried(pair: Pair) -> None:
    pair.primary.set_behaviour(status=400)
    response = pair.post()
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "provider_invalid_request"
    assert len(pair.primary.requests) == 1 and pair.backup.requests == []


def test_breaker_opens_after_n_failures_and_then_skips_the_primary(pair: Pair) -> None:
    pair.primary.set_behaviour(status=500)
    for i in range(5):
        assert pair.chat(f"attempt {i}").choices[0].message.content == f"echo: attempt {i}"
    assert len(pair.primary.requests) == 5
    assert pair.breakers()["p-openai/primary-model"]["state"] == "open"
    assert pair.metric("gateway_breaker_transitions_total", state="open") == 1
    pair.wait_for_health_checks()
    pair.primary.clear()
    for i in range(5):
        assert pair.chat(f"after {i}").choices[0].message.content == f"echo: after {i}"
    # The open breaker kept every request away from the primary: it saw nothing.
    assert pair.primary.requests == []


def test_half_open_probe_recovers_the_primary(pair: Pair) -> None:
    pair.primary.set_behaviour(status=500)
    for _ in range(5):
        pair.chat()
    assert pair.breakers()["p-openai/primary-model"]["state"] == "open"
    pair.primary.clear()  # the primary is healthy again
    time.sleep(OPEN_SECONDS)
    pair.wait_for_health_checks()
    deadline = time.monotonic() + 10
    while not pair.primary.requests and time.monotonic() < deadline:
        pair.chat("probe?")
        time.sleep(0.05)
    assert pair.primary.requests, "no probe reached the recovered primary"
    assert pair.breakers()["p-openai/primary-model"]["state"] == "closed"
    before = len(pair.backup.requests)
    pair.wait_for_health_checks()
    pair.chat("back to normal")
    assert len(pair.backup.requests) == before  # traffic is back on the primary


def test_fifty_concurrent_failures_open_the_breaker_exactly_once(tmp_path: Path) -> None:
    # Open for 30 s: the 50 requests end well before a half-open probe could fail and re-open.
    for pair in make_pair(tmp_path, breaker_open_seconds=30):
        pair.primary.set_behaviour(status=500)
        with concurrent.futures.ThreadPoolExecutor(max_workers=25) as pool:
            statuses = list(pool.map(lambda _, p=pair: p.post().status_code, range(50)))
        assert statuses == [200] * 50  # every one failed over
        assert pair.metric("gateway_breaker_transitions_total", state="open") == 1
        assert pair.breakers()["p-openai/primary-model"]["state"] == "open"


def test_all_providers_down_is_a_fast_503(tmp_path: Path) -> None:
    # Breakers stay open for 30 s here: with the usual 2 s they may already be half-open (and
    # Envoy's health checks not yet caught up) by the time of the last request on a slow machine.
    for pair in make_pair(tmp_path, breaker_open_seconds=30):
        _all_providers_down(pair)


def _all_providers_down(pair: Pair) -> None:
    pair.primary.set_behaviour(status=500)
    pair.backup.set_behaviour(status=500)
    for _ in range(20):
        # Every attempt fails: the client gets the last provider error (or Envoy's 503
        # once its health checks see both targets out).
        assert pair.post().status_code in (502, 503)
        states = pair.breakers()
        if all(states[k]["state"] == "open" for k in states if k.startswith("p-")):
            break
    assert states["p-openai/primary-model"]["state"] == "open"
    assert states["p-backup/backup-model"]["state"] == "open"
    pair.primary.clear()
    pair.backup.clear()
    refused_before = pair.metric("gateway_errors_total", code="no_healthy_provider")
    attempts_before = pair.metric("gateway_upstream_attempts_total")
    sent_before = pair.envoy_stat("upstream_rq_total")
    response = pair.post()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_provider"
    # Answered by the processor itself: its marker, its Retry-After (Envoy's own "no healthy
    # upstream" reply gets the marker from local_reply_config but no Retry-After), its count.
    assert response.headers["x-gateway-error"] == "no_healthy_provider"
    assert int(response.headers["retry-after"]) >= 1
    assert pair.metric("gateway_errors_total", code="no_healthy_provider") == refused_before + 1
    # ... before any provider was tried: no fake saw it, no attempt, Envoy sent nothing upstream.
    assert pair.primary.requests == [] and pair.backup.requests == []
    assert pair.metric("gateway_upstream_attempts_total") == attempts_before
    assert pair.envoy_stat("upstream_rq_total") == sent_before


def test_all_providers_rate_limited_is_a_429(pair: Pair) -> None:
    # Retry-After values above max_rate_limited_wait_seconds (10): Envoy does not wait
    # for them between attempts, it fails over on its normal back-off.
    pair.primary.set_behaviour(status=429, error_headers={"retry-after": "30"})
    pair.backup.set_behaviour(status=429, error_headers={"retry-after": "20"})
    first = pair.post()
    # The last attempt's 429, or Envoy's own 503 when its health checks already see both
    # targets cooling before the last retry.
    assert first.status_code in (429, 503)
    pair.primary.clear()
    pair.backup.clear()
    response = pair.post()
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 15 <= int(response.headers["retry-after"]) <= 20  # the shortest cool-down
    assert pair.primary.requests == [] and pair.backup.requests == []


def test_slow_primary_times_out_per_try_and_fails_over(tmp_path: Path) -> None:
    for p in make_pair(tmp_path, per_try_timeout_seconds=0.5):
        p.primary.set_behaviour(latency_s=3)
        reply = p.chat("too slow")
        assert reply.choices[0].message.content == "echo: too slow"  # both fakes echo
        # The answer is the backup's: the primary's try was cut by the per-try timeout (it would
        # have answered 200 after its 3 s), not by the request's own timeout, and retried once.
        assert len(p.primary.requests) == 1 and len(p.backup.requests) == 1
        assert p.envoy_stat("upstream_rq_per_try_timeout") == 1
        assert p.envoy_stat("upstream_rq_retry") == 1
        assert p.envoy_stat("upstream_rq_timeout") == 0
        # The primary is the lead: its try was made without an upstream filter, and the
        # retry's stream counted it failed (with one, it would be "no_response"); the backup's
        # attempt succeeded.
        attempts = "gateway_upstream_attempts_total"
        assert p.metric(attempts, provider="p-openai", outcome="failure") == 1
        assert p.metric(attempts, provider="p-backup", outcome="success") == 1
        assert p.metric(attempts) == 2


def test_capacity_overflow_is_an_openai_503(tmp_path: Path) -> None:
    for p in make_pair(tmp_path, max_requests=1, max_pending_requests=1, max_retries=0):
        p.primary.set_behaviour(latency_s=1.5)
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda _, pair=p: pair.post(), range(6)))
        overflow = [r for r in results if r.status_code == 503]
        assert overflow, [r.status_code for r in results]
        for response in overflow:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert (error["code"], error["type"]) == ("capacity_exceeded", "service_unavailable")


def test_active_health_check_keeps_traffic_off_a_sick_provider_and_back_on_recovery(
    tmp_path: Path,
) -> None:
    def with_health_check(config: dict[str, Any]) -> None:
        primary = next(p for p in config["providers"] if p["name"] == "p-openai")
        primary["health_check"] = {"path": "/models", "interval_seconds": 0.1}

    backup = FakeProviderServer(port=0).start()
    customize = resilient_config(backup.base_url)

    def both(config: dict[str, Any]) -> None:
        customize(config)
        with_health_check(config)

    stack = make_stack(tmp_path, customize=both)
    try:
        pair = Pair(stack, stack.fake, backup)
        pair.primary.set_behaviour(status=503)  # sick: its health endpoint fails too
        time.sleep(0.5)
        pair.wait_for_health_checks()
        pair.primary.clear()
        pair.primary.set_behaviour(status=503)
        assert pair.chat("routed around").choices[0].message.content == "echo: routed around"
        # Only health checks reached the sick primary; the request went to the backup.
        assert [r.method for r in pair.primary.requests if r.method != "GET"] == []
        assert pair.breakers()["providers"]["p-openai"]["healthy"] is False
        pair.primary.clear()  # recovered
        time.sleep(0.3)
        pair.wait_for_health_checks()
        assert pair.breakers()["providers"]["p-openai"]["healthy"] is True
        before = len(pair.backup.requests)
        pair.chat("back on the primary")
        assert len(pair.backup.requests) == before
        assert any(r.method == "POST" for r in pair.primary.requests)
        health_checks = [r for r in pair.primary.requests if r.method == "GET"]
        assert health_checks and health_checks[0].path == "/v1/models"
        assert health_checks[0].header("authorization") == "Bearer sk-upstream-openai-secret"
    finally:
        stack.stop()
        stack.fake.stop()
        backup.stop()


def test_stream_hanging_mid_way_is_cut_by_the_idle_timeout(tmp_path: Path) -> None:
    for p in make_pair(tmp_path, per_try_idle_timeout_seconds=1):
        never = threading.Event()  # the primary sends its first chunk, then hangs
        p.primary.set_behaviour(stream_chunks=["partial ", "never"], stream_gate=never)
        received = ""
        with pytest.raises((httpx.HTTPError, openai.APIError)) as cut:
            for chunk in p.chat("hang", stream=True):
                if chunk.choices:
                    received += chunk.choices[0].delta.content or ""
        # Bytes already reached the client, so no failover; but no hang either: Envoy's idle
        # timeout reset the stream (the client's own 30 s timeout would be a timeout error).
        assert received == "partial "
        assert not isinstance(cut.value, (httpx.TimeoutException, openai.APITimeoutError))
        assert p.envoy_stat("upstream_rq_per_try_idle_timeout") == 1
        assert p.envoy_stat("upstream_rq_retry") == 0 and p.backup.requests == []
        # ... and the reset reached the hanging provider (the fake notices it on its own time).
        deadline = time.monotonic() + 10
        while p.primary.stream_aborted == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (p.primary.stream_started, p.primary.stream_aborted) == (1, 1)
        never.set()


def test_single_target_model_breaker_opens_and_recovers(pair: Pair) -> None:
    # `chat-openai` has one target: its requests are translated once by the downstream filter
    # (no upstream filter), which feeds the breaker from the final answer of each request.
    # Its cluster has no outlier detection: Envoy retries (max_retries 2) but never ejects the
    # only endpoint, so the breaker alone decides, and answers with Retry-After.
    def post() -> httpx.Response:
        return httpx.post(
            f"{pair.stack.base_url}/v1/chat/completions",
            json={"model": "chat-openai", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {FULL_KEY}"},
            timeout=30,
        )

    pair.primary.set_behaviour(status=500)
    for _ in range(5):
        response = post()
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "provider_error"
    # Envoy retried each request on the same target: 3 tries, one breaker outcome per request.
    assert len(pair.primary.requests) == 15
    assert pair.breakers()["p-openai/gpt-up"]["state"] == "open"
    pair.primary.clear()
    refused = post()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "no_healthy_provider"
    assert int(refused.headers["retry-after"]) >= 1
    assert pair.primary.requests == []  # refused without calling the provider

    time.sleep(OPEN_SECONDS)
    pair.wait_for_health_checks()
    deadline = time.monotonic() + 10
    statuses = []
    while time.monotonic() < deadline and statuses[-3:] != [200] * 3:
        statuses.append(post().status_code)
        time.sleep(0.05)
    # Envoy's own "no healthy upstream" replies while its health checks catch up must not
    # count as failures (they would hold the breaker open forever).
    assert statuses[-3:] == [200] * 3, statuses
    assert pair.breakers()["p-openai/gpt-up"]["state"] == "closed"


def test_clients_that_give_up_do_not_open_a_single_target_breaker(pair: Pair) -> None:
    # `chat-openai`'s attempt runs in the downstream filter, whose stream is the client's:
    # provider resets and timeouts reach it as Envoy's marked replies, so a stream that ends
    # without any response means the client left. Impatient clients must not open the breaker.
    pair.primary.set_behaviour(latency_s=30.0)  # never answers while the client waits
    body = {"model": "chat-openai", "messages": [{"role": "user", "content": "hi"}]}
    payload = orjson.dumps(body)
    listener = pair.stack.config["listener"]
    for sent in range(1, 8):  # more than breaker_consecutive_failures (5)
        # The client leaves once its request reached the provider (event, not a timer).
        with socket.create_connection((listener["address"], listener["port"])) as client:
            client.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n"
                + f"authorization: Bearer {FULL_KEY}\r\n".encode()
                + b"content-type: application/json\r\n"
                + f"content-length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            pair.primary.wait_for_requests(sent, timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gone = pair.metric("gateway_upstream_attempts_total", outcome="client_gone")
        if gone >= 7:
            break
        time.sleep(0.1)
    assert gone == 7
    assert pair.metric("gateway_upstream_attempts_total", outcome="no_response") == 0
    assert pair.breakers()["p-openai/gpt-up"]["state"] == "closed"
    pair.primary.set_behaviour()  # answer at once again
    reply = pair.stack.client().chat.completions.create(**body)
    assert reply.choices[0].message.content == "echo: hi"


BACKUP_KINDS: dict[str, dict[str, Any]] = {
    # How each provider type reaches the backup fake; its path marker; its credential header.
    "google": {
        "provider": {"type": "google", "api_key_env": "TEST_GOOGLE_KEY"},
        "suffix": "/gemini/v1beta",
        "model": "gemini-backup",
        "path": "/gemini/v1beta/models/gemini-backup:",
        "credential": "x-goog-api-key",
    },
    "bedrock": {
        "provider": {
            "type": "bedrock",
            "aws_region": "us-east-1",
            "aws_access_key_id_env": "TEST_AWS_KEY_ID",
            "aws_secret_access_key_env": "TEST_AWS_SECRET",
            "aws_session_token_env": "TEST_AWS_NO_TOKEN",
        },
        "suffix": "",
        "model": "anthropic.claude-3-haiku-20240307-v1:0",
        "path": "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
        "credential": "authorization",  # SigV4, checked by the fake
    },
}


@pytest.mark.parametrize("kind", sorted(BACKUP_KINDS))
@pytest.mark.parametrize("stream", [False, True])
def test_each_attempt_is_translated_for_its_own_provider_type(
    tmp_path: Path, kind: str, stream: bool
) -> None:
    # One-target models are translated by the downstream filter; this is the per-attempt
    # path (upstream filter) for the wire formats other than Anthropic's: the backup gets a
    # request in its own format (Bedrock signed with SigV4 for this attempt), the client an
    # OpenAI answer, and no credential of the first attempt reaches the second provider.
    spec = BACKUP_KINDS[kind]
    backup = FakeProviderServer(port=0).start()

    def customize(config: dict[str, Any]) -> None:
        config["providers"].append(
            {"name": "p-backup", "base_url": backup.base_url + spec["suffix"], **spec["provider"]}
        )
        config["models"].append(
            {
                "name": "resilient",
                "targets": [
                    {"provider": "p-openai", "model": "primary-model"},
                    {"provider": "p-backup", "model": spec["model"]},
                ],
            }
        )
        config["resilience"] = {"max_retries": 2, "health_check_interval_ms": HC_INTERVAL_MS}

    stack = make_stack(tmp_path, customize=customize)
    try:
        stack.fake.set_behaviour(status=503)
        client = stack.client()
        messages = [{"role": "user", "content": f"fail over to {kind}"}]
        if stream:
            chunks = client.chat.completions.create(
                model="resilient", messages=messages, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            reply = client.chat.completions.create(model="resilient", messages=messages)
            assert reply.model == BACKUP_KINDS[kind]["model"]  # the model that answered
            text = reply.choices[0].message.content or ""
        assert text == f"echo: fail over to {kind}"
        assert len(stack.fake.requests) == 1
        (seen,) = backup.requests
        assert seen.path.startswith(spec["path"]), seen.path
        assert seen.header(spec["credential"])
        # The OpenAI key stayed behind: Bedrock's authorization is its own SigV4 signature.
        auth = seen.header("authorization")
        assert auth is None if kind != "bedrock" else str(auth).startswith("AWS4-HMAC-SHA256 ")
    finally:
        stack.stop()
        stack.fake.stop()
        backup.stop()


def ext_proc_counts(stack: Stack) -> dict[str, int]:
    """Envoy's ext_proc counters (streams started, messages sent to the processor) of the
    listener's filter (`http.gateway.`) and of the model cluster's upstream filter."""
    text = httpx.get(
        f"{stack.envoy_admin_url}/stats",
        params={"filter": r"ext_proc\.(streams_started|stream_msgs_sent)$"},
    ).text
    counts = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        scope = "downstream" if name.startswith("http.") else "upstream"
        counts[f"{scope}.{name.rsplit('.', 1)[1]}"] = int(value)
    return counts


@pytest.fixture
def unread_pair(tmp_path: Path) -> Iterator[Pair]:
    """A pair whose answers nothing reads (usage accounting off)."""
    yield from make_pair(tmp_path, telemetry={"usage_accounting": False})


def sent_since(pair: Pair, before: dict[str, int]) -> dict[str, int]:
    """The ext_proc streams and messages Envoy counted since `before`."""
    after = ext_proc_counts(pair.stack)
    return {name: after[name] - before.get(name, 0) for name in after}


def three_healthy_requests(pair: Pair) -> dict[str, int]:
    """The ext_proc streams and messages of three requests the primary answers (after one to
    warm up)."""
    pair.chat("warm up")
    before = ext_proc_counts(pair.stack)
    for n in range(3):
        assert pair.chat(f"primary {n}").choices[0].message.content == f"echo: primary {n}"
    return sent_since(pair, before)


def failed_over_request(pair: Pair) -> dict[str, int]:
    """The ext_proc streams and messages of a request the primary fails (503)."""
    before = ext_proc_counts(pair.stack)
    pair.primary.set_behaviour(status=503)
    assert pair.chat("to the backup").choices[0].message.content == "echo: to the backup"
    return sent_since(pair, before)


def test_a_lead_targets_first_attempt_costs_no_attempt_stream(unread_pair: Pair) -> None:
    pair = unread_pair
    # The downstream filter translates for the lead (the primary), and the upstream filters
    # skip the first attempt to it: a healthy request is one stream of 3 messages, as for a
    # model with one target (without usage accounting nothing reads the answer's body).
    assert three_healthy_requests(pair) == {
        "downstream.streams_started": 3,
        "downstream.stream_msgs_sent": 3 * 3,
        "upstream.streams_started": 0,
        "upstream.stream_msgs_sent": 0,
    }
    sent = pair.primary.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {
        "model": "primary-model",
        "messages": [{"role": "user", "content": "primary 2"}],
    }
    assert sent.header("authorization") == f"Bearer {UPSTREAM_KEYS['TEST_OPENAI_KEY']}"
    names = {name.lower(): value for name, value in sent.headers}
    assert "transfer-encoding" not in names and names["content-length"] == str(len(sent.body))
    # The lead fails: Envoy retries on the backup, whose attempt runs the upstream filter
    # (request headers, response headers, and the Anthropic answer's body to translate).
    assert failed_over_request(pair) == {
        "downstream.streams_started": 1,
        "downstream.stream_msgs_sent": 3,
        "upstream.streams_started": 1,
        "upstream.stream_msgs_sent": 3,
    }
    # The retry replays the lead's body; the backup's attempt replaced it with its own.
    backup = pair.backup.requests[-1]
    assert backup.path == "/v1/messages" and backup.json["model"] == "backup-model"
    assert backup.header("authorization") is None  # the lead's key was removed
    assert backup.header("x-api-key") == UPSTREAM_KEYS["TEST_ANTHROPIC_KEY"]


def test_an_attempt_costs_two_ext_proc_messages_and_gets_its_body_translated(
    tmp_path: Path,
) -> None:
    # Every attempt on its upstream filter (no lead). That filter is sent no request body: its
    # answer to the attempt's request headers carries the body translated for the target
    # (from what the downstream filter read). Without usage accounting nothing reads the
    # answer's body, so an attempt is request headers + response headers, and the request
    # 3 + 2 messages on two streams.
    for pair in make_pair(
        tmp_path, telemetry={"usage_accounting": False}, inline_first_attempt=False
    ):
        check_attempt_messages(pair)


def check_attempt_messages(pair: Pair) -> None:
    assert three_healthy_requests(pair) == {
        "downstream.streams_started": 3,
        "downstream.stream_msgs_sent": 3 * 3,
        "upstream.streams_started": 3,
        "upstream.stream_msgs_sent": 3 * 2,
    }
    # Two attempts, each with one more message: the primary's error body is read to map it,
    # the backup's Anthropic answer to translate it.
    assert failed_over_request(pair) == {
        "downstream.streams_started": 1,
        "downstream.stream_msgs_sent": 3,
        "upstream.streams_started": 2,
        "upstream.stream_msgs_sent": 2 * 3,
    }
    sent = pair.primary.requests[-1]
    assert sent.json == {
        "model": "primary-model",
        "messages": [{"role": "user", "content": "to the backup"}],
    }
    # A sized body, as before: not chunked although the ext_proc answer replaced it.
    for request in (sent, pair.backup.requests[-1]):
        names = {name.lower(): value for name, value in request.headers}
        assert "transfer-encoding" not in names
        assert names["content-length"] == str(len(request.body))
    # Anthropic's wire: translated for the backup target, not the OpenAI body.
    backup = pair.backup.requests[-1]
    assert backup.path == "/v1/messages" and backup.json["model"] == "backup-model"


def test_requests_in_flight_with_the_same_client_request_id_keep_their_own_bodies(
    pair: Pair,
) -> None:
    # Envoy keeps an x-request-id the client sent, and the attempts' streams find their
    # request by it: request A's headers arrive, then all of B (same id; held by the provider),
    # then A's body. A's attempt must translate A's body, not B's.
    pair.primary.set_behaviour(latency_s=1.5)
    host = pair.stack.base_url.removeprefix("http://")
    a_body = orjson.dumps(
        {"model": "resilient", "messages": [{"role": "user", "content": "I am A"}]}
    )
    a = http.client.HTTPConnection(host, timeout=30)
    a.putrequest("POST", "/v1/chat/completions")
    for name, value in (
        ("authorization", f"Bearer {FULL_KEY}"),
        ("content-type", "application/json"),
        ("content-length", str(len(a_body))),
        ("x-request-id", "the-same-id"),
    ):
        a.putheader(name, value)
    a.endheaders()

    def b() -> httpx.Response:
        return httpx.post(
            f"{pair.stack.base_url}/v1/chat/completions",
            json={"model": "resilient", "messages": [{"role": "user", "content": "I am B"}]},
            headers={"authorization": f"Bearer {FULL_KEY}", "x-request-id": "the-same-id"},
            timeout=30,
        )

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        b_answer = pool.submit(b)
        deadline = time.monotonic() + 10
        while len(pair.primary.requests) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # B reached the provider, and is held there
        assert len(pair.primary.requests) == 1
        a.send(a_body)
        a_answer = a.getresponse()
        a_reply = orjson.loads(a_answer.read())
        assert a_answer.status == 200, a_reply
        assert a_reply["choices"][0]["message"]["content"] == "echo: I am A"
        b_reply = b_answer.result().json()
        assert b_reply["choices"][0]["message"]["content"] == "echo: I am B"
    a.close()
    assert sorted(r.json["messages"][0]["content"] for r in pair.primary.requests) == [
        "I am A",
        "I am B",
    ]
