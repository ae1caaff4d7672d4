"""Unit tests of the per-request pipeline: decisions per phase, no gRPC."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from extproc.config.credentials import AwsCredentials, Credential
from extproc.config.loading import LoadedConfig, parse_config
from extproc.decisions.auth import hash_key, key_id
from extproc.decisions.breaker import Admission
from extproc.errors import GatewayError
from extproc.gateway import Gateway
from extproc.pipeline.actions import Continue, Respond
from extproc.pipeline.attempt import InlineAttempt, Outcome, UpstreamAttempt, buffer_mode
from extproc.pipeline.request import RequestPipeline
from extproc.providers.base import ResponseMode
from extproc.telemetry.record import RequestRecord
from extproc.telemetry.reporter import Telemetry

KEY = "sk-unit-key"
LIMITED = "sk-unit-limited"


def gateway(accounting: bool = True, **limits: Any) -> Gateway:
    config = parse_config(
        {
            "limits": {"max_body_bytes": 4096, **limits},
            "telemetry": {"usage_accounting": accounting, "access_log": {"enabled": False}},
            "providers": [
                {"name": "oa", "type": "openai", "base_url": "https://api.example.com/v1"},
                {
                    "name": "az",
                    "type": "azure",
                    "base_url": "https://res.openai.azure.com",
                    "api_version": "2024-10-21",
                    "api_key_env": "AZ",
                },
                {
                    "name": "local",
                    "type": "ollama",
                    "base_url": "http://127.0.0.1:11434/v1",
                    "timeout_seconds": 10,
                },
                {
                    "name": "ant",
                    "type": "anthropic",
                    "base_url": "https://api.anthropic.example/v1",
                    "api_key_env": "ANT",
                },
                {
                    "name": "gem",
                    "type": "google",
                    "base_url": "https://gemini.example/v1beta",
                    "api_key_env": "GEM",
                },
                {
                    "name": "brk",
                    "type": "bedrock",
                    "base_url": "https://bedrock.example",
                    "aws_region": "us-east-1",
                },
            ],
            "models": [
                {"name": "gpt", "targets": [{"provider": "oa", "model": "gpt-upstream"}]},
                {
                    "name": "pair",
                    "targets": [
                        {"provider": "oa", "model": "gpt-upstream"},
                        {"provider": "az", "model": "dep 1"},
                    ],
                },
                {
                    "name": "split",
                    "targets": [
                        {"provider": "oa", "model": "gpt-upstream", "priority": 0},
                        {"provider": "az", "model": "dep 1", "priority": 0},
                    ],
                },
                {"name": "same", "targets": [{"provider": "oa", "model": "same"}]},
                {"name": "azgpt", "targets": [{"provider": "az", "model": "dep 1"}]},
                {"name": "llama", "targets": [{"provider": "local", "model": "llama3"}]},
                {
                    "name": "emb",
                    "kind": "embeddings",
                    "targets": [{"provider": "oa", "model": "emb-up"}],
                },
                {"name": "claude", "targets": [{"provider": "ant", "model": "claude-up"}]},
                {"name": "gemini", "targets": [{"provider": "gem", "model": "gemini-up"}]},
                {"name": "nova", "targets": [{"provider": "brk", "model": "nova-up"}]},
                {
                    "name": "gemb",
                    "kind": "embeddings",
                    "targets": [{"provider": "gem", "model": "embed-up"}],
                },
            ],
            "tenants": [
                {"name": "t", "api_key_sha256": [hash_key(KEY)]},
                {"name": "l", "api_key_sha256": [hash_key(LIMITED)], "allowed_models": ["gpt"]},
            ],
        }
    )
    creds: dict[str, Credential] = {
        "oa": SecretStr("sk-upstream-oa"),
        "az": SecretStr("az-upstream"),
        "ant": SecretStr("sk-ant-upstream"),
        "gem": SecretStr("gem-upstream"),
        "brk": AwsCredentials("AKIDUNIT", SecretStr("unit-secret")),
    }
    return Gateway(LoadedConfig(config, creds, "test"))


def headers(
    path: str = "/v1/chat/completions", method: str = "POST", key: str | None = KEY, **extra: str
) -> dict[str, str]:
    out = {":path": path, ":method": method, **extra}
    if key is not None:
        out["authorization"] = f"Bearer {key}"
    return out


def run(gw: Gateway, body: dict[str, Any] | bytes, hdrs: dict[str, str] | None = None) -> Continue:
    pipe = RequestPipeline(gw)
    assert isinstance(pipe.on_request_headers(hdrs or headers(), False), Continue)
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    action = pipe.on_request_body(raw, True)
    assert isinstance(action, Continue)
    return action


def fails(
    gw: Gateway, body: dict[str, Any] | bytes, hdrs: dict[str, str] | None = None
) -> GatewayError:
    pipe = RequestPipeline(gw)
    with pytest.raises(GatewayError) as info:
        pipe.on_request_headers(hdrs or headers(), False)
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        pipe.on_request_body(raw, True)
    return info.value


CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi 😀"}]}


def test_multi_target_request_without_a_lead_is_routed_to_the_model_cluster_untranslated() -> None:
    gw = gateway()
    assert gw.models["split"].lead is None  # two targets share the first priority
    hdrs = headers(**{"accept-encoding": "gzip", "x-gateway-timeout": "5"})
    action = run(gw, {**CHAT, "model": "split"}, hdrs)
    assert action.metadata == {"gw": {"route": gw.models["split"].route_id, "model": "split"}}
    assert action.clear_route_cache
    # The body stays as the client wrote it: each attempt translates it for its target.
    assert action.body is None
    assert ":path" not in action.set_headers
    for header in ("authorization", "accept-encoding", "x-gateway-timeout"):
        assert header in action.remove_headers


def lead_request(gw: Gateway) -> tuple[RequestPipeline, Continue]:
    """A request to "pair" (lead: oa, then az) through the downstream filter's phases."""
    pipe = RequestPipeline(gw)
    pipe.on_request_headers(headers(**{"x-request-id": "lead-1"}), False)
    action = pipe.on_request_body(orjson.dumps({**CHAT, "model": "pair"}), True)
    assert isinstance(action, Continue)
    return pipe, action


def test_a_lead_target_request_is_translated_downstream_for_the_lead_and_kept_for_retries() -> None:
    gw = gateway()
    route = gw.models["pair"]
    assert route.lead is route.targets[0] and not route.inline
    pipe, action = lead_request(gw)
    # The first attempt goes out as the lead's request: no upstream filter runs for it.
    assert action.set_headers[":path"] == "/v1/chat/completions"
    assert action.set_headers["authorization"] == "Bearer sk-upstream-oa"
    assert action.body is not None and orjson.loads(action.body)["model"] == "gpt-upstream"
    # A retry's upstream filter translates the OpenAI body, kept in the record.
    record = pipe.record
    assert record is not None and record.lead is pipe.attempt and record.attempts == 1
    assert record.attempt_body is not None
    assert orjson.loads(record.attempt_body)["model"] == "pair"


def test_off_a_lead_target_model_is_translated_per_attempt() -> None:
    loaded = gateway().loaded
    off = loaded.config.resilience.model_copy(update={"inline_first_attempt": False})
    config = loaded.config.model_copy(update={"resilience": off})
    gw = Gateway(LoadedConfig(config, loaded.credentials, "test"))
    assert gw.models["pair"].lead is None
    assert run(gw, {**CHAT, "model": "pair"}).body is None


def lead_answered(gw: Gateway, pipe: RequestPipeline, status: int) -> Continue:
    answer = {":status": str(status), "content-type": "application/json", "content-length": "2"}
    action = pipe.on_response_headers(answer, False)
    assert isinstance(action, Continue)
    return action


def test_a_lead_answer_is_the_downstream_attempts_own() -> None:
    gw = gateway()
    pipe, _ = lead_request(gw)
    lead_answered(gw, pipe, 200)
    assert pipe.attempt is not None and pipe.attempt.outcome is Outcome.SUCCESS
    assert pipe.provider == "oa" and attempts_counted(gw, "success", model="pair") == 1
    assert pipe.record is not None and pipe.record.lead is None


def retry_of_lead(gw: Gateway, attempt_count: str) -> UpstreamAttempt:
    """The upstream filter's attempt stream of the "pair" request, to its second target."""
    retry = UpstreamAttempt(gw, gw.models["pair"].targets[1])
    action = retry.on_request_headers(
        {
            ":path": "/v1/chat/completions",
            "x-request-id": "lead-1",
            "x-envoy-attempt-count": attempt_count,
        },
        False,
    )
    assert isinstance(action, Continue) and action.body is not None
    assert "/deployments/dep%201/" in action.set_headers[":path"]  # translated for Azure
    return retry


def test_a_retry_after_the_lead_counts_it_failed_and_answers_for_itself() -> None:
    gw = gateway()
    pipe, _ = lead_request(gw)
    lead = pipe.attempt
    assert lead is not None
    retry = retry_of_lead(gw, "2")
    # The lead's answer (a 5xx or a 429 Envoy retried on) never reached the processor.
    assert lead.superseded and lead.outcome is Outcome.FAILURE
    assert lead.target.breaker.snapshot(0.0)["consecutive_failures"] == 1
    assert attempts_counted(gw, "failure", model="pair") == 1
    assert retry.record is not None and retry.record.attempts == 2 and retry.record.lead is None
    # The answer the downstream filter sees is the retry's, already translated by it.
    retry.on_response_headers(
        {":status": "200", "content-type": "application/json", "content-length": "2"}, False
    )
    action = lead_answered(gw, pipe, 200)
    assert pipe.attempt is None and action.mode_override is None
    assert attempts_counted(gw, "success", model="pair") == 0


def test_a_first_attempt_envoy_sent_elsewhere_leaves_the_lead_unsent() -> None:
    gw = gateway()
    pipe, _ = lead_request(gw)
    lead = pipe.attempt
    assert lead is not None
    retry = retry_of_lead(gw, "1")  # health checks and the breaker disagreed for a moment
    assert lead.superseded and lead.outcome is Outcome.NOT_SENT
    assert lead.target.breaker.snapshot(0.0)["consecutive_failures"] == 0
    assert attempts_counted(gw, "failure", model="pair") == 0
    assert retry.record is not None and retry.record.attempts == 1


def test_a_multi_target_request_keeps_its_body_for_the_attempts_under_its_own_id() -> None:
    gw = gateway()
    first, second = RequestPipeline(gw), RequestPipeline(gw)
    # A client may send its own x-request-id (Envoy keeps it): two requests in flight with the
    # same one must not share a record, or an attempt would translate the other's body.
    for pipe in (first, second):
        pipe.on_request_headers(headers(**{"x-request-id": "mine"}), False)
    raw = [orjson.dumps({**CHAT, "model": "pair", "user": name}) for name in ("a", "b")]
    actions = [
        pipe.on_request_body(body, True) for pipe, body in zip((first, second), raw, strict=True)
    ]
    assert isinstance(actions[0], Continue) and isinstance(actions[1], Continue)
    assert first.record is not None and second.record is not None
    assert first.record.request_id == "mine" and "x-request-id" not in actions[0].set_headers
    fresh = second.record.request_id
    assert fresh != "mine" and actions[1].set_headers["x-request-id"] == fresh
    for pipe, body, request_id in ((first, raw[0], "mine"), (second, raw[1], fresh)):
        found = gw.telemetry.records.find(request_id)
        assert found is pipe.record and found.attempt_body is body  # the bytes as received


def test_an_overlong_request_id_is_replaced() -> None:
    gw = gateway()
    pipe = RequestPipeline(gw)
    pipe.on_request_headers(headers(**{"x-request-id": "x" * 129}), False)
    action = pipe.on_request_body(orjson.dumps({**CHAT, "model": "pair"}), True)
    assert isinstance(action, Continue) and pipe.record is not None
    assert action.set_headers["x-request-id"] == pipe.record.request_id != "x" * 129


def test_single_target_request_is_translated_once_downstream() -> None:
    gw = gateway()
    hdrs = headers(
        **{"accept-encoding": "gzip", "x-envoy-max-retries": "9", "x-api-key": "k"},
        **{"x-gateway-timeout": "5"},
    )
    action = run(gw, CHAT, hdrs)
    assert action.metadata == {"gw": {"route": gw.models["gpt"].route_id, "model": "gpt"}}
    assert action.clear_route_cache
    assert action.set_headers[":path"] == "/v1/chat/completions"
    # The client's key is replaced by the provider's: set, and so not also removed.
    assert action.set_headers["authorization"] == "Bearer sk-upstream-oa"
    assert "authorization" not in action.remove_headers
    assert action.body is not None and orjson.loads(action.body)["model"] == "gpt-upstream"
    assert action.set_headers["content-length"] == str(len(action.body))
    for header in ("accept-encoding", "x-gateway-timeout", "x-envoy-max-retries", "x-api-key"):
        assert header in action.remove_headers
    # Only what the client sent is removed: no mutation for headers that are not there.
    assert set(action.remove_headers) <= set(hdrs)
    assert len(set(action.remove_headers)) == len(action.remove_headers)


def test_route_ids_are_distinct_per_model() -> None:
    gw = gateway()
    ids = [route.route_id for route in gw.models.values()]
    assert len(set(ids)) == len(ids)


def started_attempt(
    gw: Gateway, model: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[UpstreamAttempt, Continue]:
    """An attempt and its answer to its request headers, for a request whose downstream
    stream forwarded `body` (the upstream filter is sent no body of its own)."""
    target = gw.models[model].targets[0]
    record = gw.telemetry.new_record()
    record.request_id = "req-1"
    assert gw.telemetry.records.open(record)
    record.attempt_body = orjson.dumps(body)
    pipe = UpstreamAttempt(gw, target)
    action = pipe.on_request_headers(
        {":path": path, ":method": "POST", "x-request-id": "req-1"}, False
    )
    assert isinstance(action, Continue)
    assert action.keep_mode  # the filter's mode (no request body) stands
    assert pipe.record is record and record.attempts == 1
    return pipe, action


def attempt(
    gw: Gateway, model: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> Continue:
    """The attempt's answer to its request headers (`started_attempt`)."""
    return started_attempt(gw, model, body, path)[1]


def test_an_attempt_without_its_requests_record_is_refused() -> None:
    gw = gateway()
    pipe = UpstreamAttempt(gw, gw.models["gpt"].targets[0])
    with pytest.raises(RuntimeError, match="record"):
        pipe.on_request_headers({":path": "/v1/chat/completions", "x-request-id": "nope"}, False)


def test_attempt_translates_for_openai() -> None:
    action = attempt(gateway(), "gpt", CHAT)
    assert action.set_headers[":path"] == "/v1/chat/completions"
    assert action.set_headers["authorization"] == "Bearer sk-upstream-oa"
    assert action.body is not None
    sent = orjson.loads(action.body)
    assert sent["model"] == "gpt-upstream"
    assert sent["messages"] == CHAT["messages"]
    assert action.set_headers["content-length"] == str(len(action.body))
    # Credentials other provider types use are scrubbed (an earlier attempt may have set them).
    for header in ("api-key", "x-api-key", "x-goog-api-key", "x-amz-date"):
        assert header in action.remove_headers


def test_attempt_keeps_an_unchanged_body() -> None:
    action = attempt(gateway(), "same", {**CHAT, "model": "same"})
    assert action.body is None
    assert "content-length" not in action.set_headers


def test_attempt_azure_path_and_key() -> None:
    action = attempt(gateway(), "azgpt", {**CHAT, "model": "azgpt"})
    assert (
        action.set_headers[":path"]
        == "/openai/deployments/dep%201/chat/completions?api-version=2024-10-21"
    )
    assert action.set_headers["api-key"] == "az-upstream"
    assert "authorization" in action.remove_headers
    assert "api-key" not in action.remove_headers


def test_attempt_keyless_provider_drops_authorization() -> None:
    action = attempt(gateway(), "llama", {**CHAT, "model": "llama"})
    assert "authorization" in action.remove_headers
    assert action.set_headers[":path"] == "/v1/chat/completions"


def test_attempt_embeddings_path() -> None:
    action = attempt(gateway(), "emb", {"model": "emb", "input": "x"}, "/v1/embeddings")
    assert action.set_headers[":path"] == "/v1/embeddings"


def test_timeout_defaults_header_and_field() -> None:
    gw = gateway(default_timeout_seconds=30)
    assert run(gw, CHAT).set_headers["x-envoy-upstream-rq-timeout-ms"] == "30000"
    hdrs = headers(**{"x-gateway-timeout": "2.5"})
    assert run(gw, CHAT, hdrs).set_headers["x-envoy-upstream-rq-timeout-ms"] == "2500"
    action = run(gw, {**CHAT, "model": "same", "timeout": 7})
    assert action.set_headers["x-envoy-upstream-rq-timeout-ms"] == "7000"
    assert action.body is not None and "timeout" not in orjson.loads(action.body)
    assert action.set_headers["content-length"] == str(len(action.body))


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({**CHAT, "model": "ghost"}, 404, "model_not_found"),
        ({**CHAT, "model": ""}, 400, "invalid_model_id"),
        ({**CHAT, "model": "emb"}, 400, "invalid_model_kind"),
        ({**CHAT, "temperature": 3}, 400, "invalid_temperature"),
        ({**CHAT, "timeout": 0}, 400, "invalid_timeout"),
        (b"not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"x" * 5000, 413, "payload_too_large"),
    ],
)
def test_body_errors(body: Any, status: int, code: str) -> None:
    err = fails(gateway(), body)
    assert (err.status, err.code) == (status, code)


def test_header_errors() -> None:
    gw = gateway()
    assert fails(gw, CHAT, headers(key=None)).status == 401
    assert fails(gw, CHAT, headers(key="sk-wrong")).status == 401
    assert fails(gw, CHAT, headers(**{"content-length": "999999"})).status == 413
    assert fails(gw, CHAT, headers(**{"x-gateway-timeout": "700"})).code == "invalid_timeout"
    assert fails(gw, CHAT, headers(method="GET")).status == 405
    assert fails(gw, CHAT, headers(path="/v1/nope")).code == "unknown_url"


def test_model_not_allowed_for_tenant() -> None:
    err = fails(gateway(), {**CHAT, "model": "llama"}, headers(key=LIMITED))
    assert (err.status, err.code) == (403, "model_not_allowed")


def test_models_listing_is_filtered_by_tenant() -> None:
    gw = gateway()
    full = RequestPipeline(gw).on_request_headers(headers("/v1/models", "GET"), True)
    limited = RequestPipeline(gw).on_request_headers(headers("/v1/models", "GET", LIMITED), True)
    assert isinstance(full, Respond) and isinstance(limited, Respond)
    names = [m["id"] for m in orjson.loads(full.body)["data"]]
    assert names == [m.name for m in gw.config.models]
    assert [m["id"] for m in orjson.loads(limited.body)["data"]] == ["gpt"]
    one = RequestPipeline(gw).on_request_headers(headers("/v1/models/gpt", "GET"), True)
    assert isinstance(one, Respond) and orjson.loads(one.body)["id"] == "gpt"
    with pytest.raises(GatewayError) as info:
        RequestPipeline(gw).on_request_headers(headers("/v1/models/llama", "GET", LIMITED), True)
    assert info.value.status == 404


def test_health_needs_no_key() -> None:
    action = RequestPipeline(gateway()).on_request_headers(headers("/health", "GET", None), True)
    assert isinstance(action, Respond) and action.status == 200


def test_error_response_is_openai_shaped() -> None:
    pipe = RequestPipeline(gateway())
    answer = pipe.fail(GatewayError(400, "invalid_top_p", "bad", "top_p"))
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert orjson.loads(answer.body) == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "top_p",
            "code": "invalid_top_p",
        }
    }


def test_client_envoy_headers_are_dropped() -> None:
    hdrs = headers(**{"x-envoy-max-retries": "50", "x-envoy-upstream-rq-timeout-ms": "1"})
    action = run(gateway(), CHAT, hdrs)
    assert "x-envoy-max-retries" in action.remove_headers
    # The gateway's own timeout wins over the client's.
    assert action.set_headers["x-envoy-upstream-rq-timeout-ms"] == "120000"
    assert "x-envoy-upstream-rq-timeout-ms" not in action.remove_headers


def test_provider_timeout_caps_the_request_timeout() -> None:
    gw = gateway(default_timeout_seconds=30)
    llama = {**CHAT, "model": "llama"}
    assert run(gw, llama).set_headers["x-envoy-upstream-rq-timeout-ms"] == "10000"
    hdrs = headers(**{"x-gateway-timeout": "5"})
    assert run(gw, llama, hdrs).set_headers["x-envoy-upstream-rq-timeout-ms"] == "5000"
    hdrs = headers(**{"x-gateway-timeout": "500"})
    assert run(gw, llama, hdrs).set_headers["x-envoy-upstream-rq-timeout-ms"] == "10000"
    # No cap configured: the client's 500 s stands.
    assert run(gw, CHAT, hdrs).set_headers["x-envoy-upstream-rq-timeout-ms"] == "500000"


# --- inline attempts (one-target models): the response side ---------------------------------


def routed(gw: Gateway, body: dict[str, Any] | None = None) -> RequestPipeline:
    pipe = RequestPipeline(gw)
    pipe.on_request_headers(headers(), False)
    assert isinstance(pipe.on_request_body(orjson.dumps(body or CHAT), True), Continue)
    assert isinstance(pipe.attempt, InlineAttempt)
    return pipe


def requests_counted(gw: Gateway, **labels: str) -> float:
    """Requests counted with these labels (whatever the others), once their streams ended."""
    total = 0.0
    for family in gw.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "gateway_requests_total" and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def test_inline_provider_error_is_mapped_in_the_body_phase_and_counted_once() -> None:
    gw = gateway()
    pipe = routed(gw)
    action = pipe.on_response_headers({":status": "401", "content-type": "application/json"}, False)
    assert isinstance(action, Continue) and action.mode_override is not None  # BUFFERED
    assert not pipe.finished  # the client's status is not known yet
    body = orjson.dumps({"error": {"message": "bad key sk-up...", "type": "auth"}})
    mapped = pipe.on_response_body(body, True)
    assert isinstance(mapped, Continue) and mapped.body is not None
    assert mapped.set_headers[":status"] == "502"
    assert b"sk-up" not in mapped.body
    assert requests_counted(gw, model="gpt") == 0  # counted when the stream ends
    pipe.finish()
    assert requests_counted(gw, model="gpt", provider="oa", status="502") == 1
    assert requests_counted(gw, model="gpt") == 1
    caller = {"tenant": "t", "key_id": key_id(hash_key(KEY))}
    assert requests_counted(gw, code="provider_auth_failed", **caller) == 1


def envoy_reply(gw: Gateway, status: int, code: str) -> tuple[RequestPipeline, Any, Any]:
    """A routed inline request answered by Envoy itself (marked local reply)."""
    pipe = routed(gw)
    reply = {":status": str(status), "x-gateway-error": code}
    action = pipe.on_response_headers(reply, False)
    return pipe, gw.models["gpt"].targets[0].breaker, action


def test_inline_envoy_reply_without_a_request_sent_leaves_the_breaker_alone() -> None:
    gw = gateway()
    pipe, breaker, action = envoy_reply(gw, 503, "no_healthy_provider")
    assert action == Continue()  # passed on untouched, no provider header
    assert breaker.snapshot(0.0)["consecutive_failures"] == 0
    pipe.finish()
    assert requests_counted(gw, model="gpt", provider="", status="503") == 1
    assert requests_counted(gw, code="no_healthy_provider") == 1
    assert breaker.snapshot(0.0)["consecutive_failures"] == 0


def test_inline_envoy_timeout_counts_against_the_target_and_is_not_rewritten() -> None:
    gw = gateway()
    pipe, breaker, action = envoy_reply(gw, 504, "provider_timeout")
    assert isinstance(action, Continue)
    assert action.mode_override is None and ":status" not in action.set_headers
    assert action.set_headers == {"x-gateway-provider": "oa"}
    assert breaker.snapshot(0.0)["consecutive_failures"] == 1
    pipe.finish()
    assert requests_counted(gw, model="gpt", provider="oa", status="504") == 1


def test_a_provider_cannot_pass_for_envoy_on_the_upstream_path() -> None:
    # The marker is honoured only inline; an upstream attempt treats it as the provider's.
    gw = gateway()
    pipe, _ = started_attempt(gw, "pair", {**CHAT, "model": "pair"})
    action = pipe.on_response_headers({":status": "500", "x-gateway-error": "x"}, False)
    assert action.mode_override is not None  # mapped like any provider error


def test_inline_request_whose_error_body_never_came_is_still_counted() -> None:
    gw = gateway()
    pipe = routed(gw)
    action = pipe.on_response_headers({":status": "401", "content-type": "application/json"}, False)
    assert isinstance(action, Continue) and action.mode_override is not None  # body awaited
    assert requests_counted(gw, model="gpt", provider="oa", status="401") == 0
    pipe.finish()  # the stream ended before the body phase: Envoy answered the drop, 502
    assert requests_counted(gw, model="gpt", provider="oa", status="502") == 1
    assert requests_counted(gw, model="gpt", provider="oa", status="401") == 0


@pytest.mark.parametrize(("model", "stream"), [("claude", False), ("claude", True)])
def test_an_answer_cut_short_counts_against_the_target_only_when_buffered(
    model: str, stream: bool
) -> None:
    gw = gateway()
    pipe = routed_to(gw, model, stream=stream)
    kind = "text/event-stream" if stream else "application/json"
    pipe.on_response_headers({":status": "200", "content-type": kind}, False)
    breaker = gw.models[model].targets[0].breaker
    pipe.on_response_body(b"event: message_start\ndata: {", False)  # then the drop
    pipe.finish()
    # Buffered: Envoy answered the client 502 itself. Streamed: the client had the headers;
    # a client that stops reading ends the stream just the same, so the target is not blamed.
    assert breaker.snapshot(0.0)["consecutive_failures"] == (0 if stream else 1)
    assert requests_counted(gw, model=model, provider="ant", status="200" if stream else "502") == 1


def attempts_counted(gw: Gateway, outcome: str, model: str = "gpt") -> float:
    labels = {"model": model, "provider": "oa", "outcome": outcome}
    value = gw.metrics.registry.get_sample_value("gateway_upstream_attempts_total", labels)
    return value or 0.0


def test_inline_stream_ending_unanswered_is_a_client_gone_not_a_provider_failure() -> None:
    gw = gateway()
    pipe = routed(gw)
    breaker = gw.models["gpt"].targets[0].breaker
    pipe.finish()  # the client left before any response headers
    assert breaker.snapshot(0.0)["consecutive_failures"] == 0
    assert attempts_counted(gw, "client_gone") == 1
    assert attempts_counted(gw, "no_response") == 0


def test_inline_probe_whose_client_left_frees_the_probe_slot() -> None:
    gw = gateway()
    breaker = gw.models["gpt"].targets[0].breaker
    settings = breaker.settings
    opened = time.monotonic() - settings.open_seconds - 1  # open, and due to probe now
    for _ in range(settings.consecutive_failures):
        breaker.record_failure(opened, False, "HTTP 500")
    pipe = routed(gw)
    assert pipe.attempt is not None and pipe.attempt.probe
    assert breaker.peek(time.monotonic()) is Admission.DENY_OPEN  # its one probe slot is taken
    pipe.finish()  # the client left before any answer
    assert breaker.peek(time.monotonic()) is Admission.PROBE  # free for the next request


def test_upstream_attempt_ending_unanswered_counts_against_the_target() -> None:
    gw = gateway()
    pipe, _ = started_attempt(gw, "pair", {**CHAT, "model": "pair"})
    target = pipe.target
    pipe.finish()
    assert target.breaker.snapshot(0.0)["consecutive_failures"] == 1


# --- what an answer said, and answers the client could not use ------------------------------


def routed_to(gw: Gateway, model: str, **fields: Any) -> RequestPipeline:
    return routed(gw, {**CHAT, "model": model, **fields})


ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-up-20250101",
    "content": [{"type": "text", "text": "hello"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 7, "cache_read_input_tokens": 2, "output_tokens": 3},
}


def test_a_translated_answer_reports_its_usage_and_model() -> None:
    gw = gateway()
    pipe = routed_to(gw, "claude")
    body = orjson.dumps(ANTHROPIC_MESSAGE)
    action = pipe.on_response_headers(
        {":status": "200", "content-type": "application/json", "content-length": str(len(body))},
        False,
    )
    assert action.mode_override is ResponseMode.BUFFERED  # translated whole
    translated = pipe.on_response_body(body, True)
    assert translated.body is not None
    assert orjson.loads(translated.body)["model"] == "claude-up-20250101"
    attempt = pipe.attempt
    assert attempt is not None and attempt.outcome is Outcome.SUCCESS
    assert attempt.response_model == "claude-up-20250101"
    usage = attempt.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (9, 3, 2)


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def test_a_translated_stream_reports_its_usage_once_it_is_known() -> None:
    gw = gateway()
    pipe = routed_to(gw, "claude", stream=True)
    headers = {":status": "200", "content-type": "text/event-stream"}
    assert pipe.on_response_headers(headers, False).mode_override is not None  # STREAMED
    start = {"type": "message_start", "message": {**ANTHROPIC_MESSAGE, "content": []}}
    pipe.on_response_body(sse_event("message_start", start), False)
    attempt = pipe.attempt
    assert attempt is not None and attempt.response_model == "claude-up-20250101"
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}}
    delta["usage"] = {"output_tokens": 11}
    end = sse_event("message_delta", delta) + sse_event("message_stop", {"type": "message_stop"})
    out = pipe.on_response_body(end, True)
    assert out.body is not None and out.body.endswith(b"data: [DONE]\n\n")
    assert attempt.usage is not None
    assert (attempt.usage.prompt_tokens, attempt.usage.completion_tokens) == (9, 11)


@pytest.mark.parametrize(
    ("model", "fields", "content_type"),
    [
        ("gpt", {}, "text/html; charset=utf-8"),  # a proxy's error page, served as a 200
        ("gpt", {"stream": True}, "application/json"),  # asked for a stream, got JSON
        ("gpt", {}, None),
        ("claude", {"stream": True}, "text/html"),
        ("nova", {"stream": True}, "text/event-stream"),  # Bedrock streams are binary frames
    ],
)
def test_a_2xx_of_the_wrong_content_type_becomes_a_502(
    model: str, fields: dict[str, Any], content_type: str | None
) -> None:
    gw = gateway()
    pipe = routed_to(gw, model, **fields)
    breaker = gw.models[model].targets[0].breaker
    headers = {":status": "200"}
    if content_type is not None:
        headers["content-type"] = content_type
    action = pipe.on_response_headers(headers, False)
    assert action.mode_override is not None  # the body is buffered, to be replaced
    assert breaker.snapshot(0.0)["consecutive_failures"] == 1
    answer = pipe.on_response_body(b"<html>Bad gateway</html>", True)
    assert answer.set_headers[":status"] == "502"
    assert answer.body is not None
    error = orjson.loads(answer.body)["error"]
    assert error["code"] == "malformed_provider_response"
    assert error["message"].startswith(f"provider '{gw.models[model].targets[0].provider.name}'")
    pipe.finish()
    assert requests_counted(gw, model=model, provider=pipe.provider, status="502") == 1


def test_an_answer_of_the_right_content_type_passes_untouched() -> None:
    gw = gateway(accounting=False)
    pipe = routed_to(gw, "gpt", stream=True)
    headers = {":status": "200", "content-type": "text/event-stream; charset=utf-8"}
    action = pipe.on_response_headers(headers, False)
    assert action.mode_override is None  # the filter's own mode: Envoy streams it untouched
    assert action.set_headers == {"x-gateway-provider": "oa"}
    assert gw.models["gpt"].targets[0].breaker.snapshot(0.0)["consecutive_failures"] == 0


OPENAI_STREAM = [
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-up-0613","choices":'
    b'[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-up-0613","choices":[],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("client_asked", [False, True])
def test_an_accounted_pass_through_stream_is_read_but_not_changed(client_asked: bool) -> None:
    gw = gateway()
    fields: dict[str, Any] = {"stream": True}
    if client_asked:
        fields["stream_options"] = {"include_usage": True}
    pipe = RequestPipeline(gw)
    pipe.on_request_headers(headers(), False)
    request = pipe.on_request_body(orjson.dumps({**CHAT, "model": "gpt", **fields}), True)
    assert isinstance(request, Continue) and request.body is not None
    # The provider is always asked for its usage chunk.
    assert orjson.loads(request.body)["stream_options"] == {"include_usage": True}
    headers_action = pipe.on_response_headers(
        {":status": "200", "content-type": "text/event-stream"}, False
    )
    assert headers_action.mode_override is ResponseMode.STREAMED  # read chunk by chunk
    assert gw.metrics.registry.get_sample_value("gateway_response_streams_active") == 1
    first, usage_chunk, done = (pipe.on_response_body(c, False) for c in OPENAI_STREAM)
    assert first == Continue()  # no body mutation: the chunk goes on as it came
    # The usage chunk reaches the client only when it asked for it.
    assert usage_chunk == (Continue() if client_asked else Continue(body=b""))
    assert done == Continue()
    end = pipe.on_response_body(b"", True)
    assert end == Continue()
    pipe.finish()
    assert gw.metrics.registry.get_sample_value("gateway_response_streams_active") == 0
    tokens = {
        kind: gw.metrics.registry.get_sample_value(
            "gateway_tokens_total",
            {
                "tenant": "t",
                "key_id": key_id(hash_key(KEY)),
                "model": "gpt",
                "provider": "oa",
                "token_type": kind,
            },
        )
        for kind in ("input", "output")
    }
    assert tokens == {"input": 5, "output": 2}
    labels = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "gpt",
        "gen_ai_response_model": "gpt-up-0613",
    }
    ttft = gw.metrics.registry.get_sample_value(
        "gen_ai_server_time_to_first_token_seconds_count", labels
    )
    assert ttft == 1


def test_an_accounted_pass_through_answer_is_read_but_not_changed() -> None:
    gw = gateway()
    pipe = routed_to(gw, "gpt")
    action = pipe.on_response_headers(
        {":status": "200", "content-type": "application/json", "content-length": "200"}, False
    )
    assert action.mode_override is ResponseMode.BUFFERED
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "model": "gpt-up-0613",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 4,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 3},
        },
    }
    assert pipe.on_response_body(orjson.dumps(answer), True) == Continue()  # unchanged
    pipe.finish()
    counted = {
        kind: gw.metrics.registry.get_sample_value(
            "gen_ai_client_token_usage_sum",
            {
                "gen_ai_operation_name": "chat",
                "gen_ai_provider_name": "openai",
                "gen_ai_request_model": "gpt",
                "gen_ai_response_model": "gpt-up-0613",
                "gen_ai_token_type": kind,
            },
        )
        for kind in ("input", "output", "cached")
    }
    assert counted == {"input": 11, "output": 4, "cached": 3}


def test_an_error_without_a_body_still_gets_ours() -> None:
    gw = gateway()
    pipe = routed_to(gw, "claude")
    action = pipe.on_response_headers({":status": "503"}, True)  # end_of_stream: no body
    assert action.set_headers[":status"] == "503"
    assert action.body is not None  # sent in the headers answer (CONTINUE_AND_REPLACE)
    assert action.set_headers["content-length"] == str(len(action.body))
    assert orjson.loads(action.body)["error"]["code"] == "provider_overloaded"


@pytest.mark.parametrize("stream", [False, True])
def test_a_2xx_to_translate_without_a_body_is_a_502(stream: bool) -> None:
    gw = gateway()
    pipe = routed_to(gw, "claude", stream=stream)
    kind = "text/event-stream" if stream else "application/json"
    action = pipe.on_response_headers({":status": "200", "content-type": kind}, True)
    assert action.set_headers[":status"] == "502"
    assert action.body is not None
    assert orjson.loads(action.body)["error"]["code"] == "malformed_provider_response"
    assert gw.models["claude"].targets[0].breaker.snapshot(0.0)["consecutive_failures"] == 1
    pipe.finish()
    assert requests_counted(gw, model="claude", provider="ant", status="502") == 1


class Captured(Telemetry):
    """Telemetry that keeps each emitted record instead of reporting it."""

    def __init__(self, include_content: bool) -> None:
        super().__init__(access_log=False, include_content=include_content)
        self.emitted: list[RequestRecord] = []

    def emit(self, record: RequestRecord) -> None:
        self.emitted.append(record)


@pytest.mark.parametrize("include_content", [False, True])
def test_the_access_record_holds_text_only_when_asked(include_content: bool) -> None:
    base = gateway()
    creds = {t.provider.name: t.credential for t in base.targets.values() if t.credential}
    telemetry = Captured(include_content)
    gw = Gateway(LoadedConfig(base.config, creds, "test"), telemetry=telemetry)
    pipe = routed_to(gw, "claude")
    pipe.on_response_headers({":status": "200", "content-type": "application/json"}, False)
    pipe.on_response_body(orjson.dumps(ANTHROPIC_MESSAGE), True)
    pipe.finish()
    (record,) = telemetry.emitted
    if include_content:
        assert record.content == {"request": CHAT["messages"], "response": ["hello"]}
    else:
        assert record.content is None
    assert record.usage is not None and record.usage.prompt_tokens > 0
    assert record.status == 200 and record.tenant == "t" and record.attempts == 1


# -- whole answers larger than Envoy's buffer (docs/architecture.md "Oversized answers") ----


def test_buffer_mode_is_decided_by_the_content_length() -> None:
    assert buffer_mode({"content-length": "100"}, 100) is ResponseMode.BUFFERED
    assert buffer_mode({"content-length": "101"}, 100) is None  # never buffered
    assert buffer_mode({}, 100) is ResponseMode.BUFFERED_PARTIAL  # chunked: length unknown
    assert buffer_mode({"content-length": "-1"}, 100) is ResponseMode.BUFFERED_PARTIAL


def test_the_response_buffer_is_envoys_per_connection_buffer() -> None:
    gw = gateway()
    assert gw.buffer_bytes == 4096 + 1024 * 1024 == gw.config.limits.buffer_bytes


def too_large(gw: Gateway) -> dict[str, str]:
    return {"content-length": str(gw.buffer_bytes + 1)}


def test_a_translated_answer_longer_than_the_buffer_is_a_502_at_its_headers() -> None:
    gw = gateway()
    pipe = routed_to(gw, "claude")
    json_type = {"content-type": "application/json"}
    action = pipe.on_response_headers({":status": "200", **json_type, **too_large(gw)}, False)
    # Answered in the headers answer (Envoy drops the provider's body): nothing is buffered.
    assert isinstance(action, Continue) and action.mode_override is None
    assert action.set_headers[":status"] == "502" and action.body is not None
    error = orjson.loads(action.body)["error"]
    assert error["code"] == "provider_response_too_large"
    assert str(gw.buffer_bytes) in error["message"]
    assert gw.models["claude"].targets[0].breaker.snapshot(0.0)["consecutive_failures"] == 1
    pipe.finish()
    assert requests_counted(gw, model="claude", status="502") == 1


def test_a_read_only_answer_longer_than_the_buffer_passes_through_unread() -> None:
    gw = gateway()  # usage accounting on: OpenAI answers are read
    pipe = routed(gw)
    json_type = {"content-type": "application/json"}
    action = pipe.on_response_headers({":status": "200", **json_type, **too_large(gw)}, False)
    assert isinstance(action, Continue) and action.mode_override is None and action.body is None
    assert ":status" not in action.set_headers
    pipe.finish()
    assert requests_counted(gw, model="gpt", status="200") == 1


def test_an_error_longer_than_the_buffer_is_mapped_without_its_body() -> None:
    gw = gateway()
    pipe = routed(gw)
    action = pipe.on_response_headers({":status": "500", **too_large(gw)}, False)
    assert isinstance(action, Continue) and action.mode_override is None
    assert action.set_headers[":status"] == "502" and action.body is not None
    assert orjson.loads(action.body)["error"]["code"] == "provider_error"


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_an_answer_that_fits_is_buffered_and_one_of_unknown_length_buffered_partially(
    model: str,
) -> None:
    gw = gateway()
    json_type = {"content-type": "application/json"}
    fits = routed_to(gw, model).on_response_headers(
        {":status": "200", **json_type, "content-length": str(gw.buffer_bytes)}, False
    )
    assert isinstance(fits, Continue) and fits.mode_override is ResponseMode.BUFFERED
    chunked = routed_to(gw, model).on_response_headers({":status": "200", **json_type}, False)
    assert isinstance(chunked, Continue)
    assert chunked.mode_override is ResponseMode.BUFFERED_PARTIAL


@pytest.mark.parametrize(("model", "status"), [("gpt", 200), ("claude", 200), ("claude", 429)])
def test_an_answer_of_unknown_length_that_outgrew_the_buffer_is_answered_at_once(
    model: str, status: int
) -> None:
    gw = gateway()
    pipe = routed_to(gw, model)
    headers_action = pipe.on_response_headers(
        {":status": str(status), "content-type": "application/json"}, False
    )
    assert isinstance(headers_action, Continue)
    assert headers_action.mode_override is ResponseMode.BUFFERED_PARTIAL
    # BUFFERED_PARTIAL: the first part, without its end; nothing more of it will come.
    action = pipe.on_response_body(b'{"id": "' + b"x" * gw.buffer_bytes, False)
    assert isinstance(action, Respond)
    code = orjson.loads(action.body)["error"]["code"]
    if status == 200:
        assert (action.status, code) == (502, "provider_response_too_large")
    else:  # the provider's error, mapped without its body
        assert (action.status, code) == (429, "rate_limit_exceeded")
    pipe.finish()
    assert requests_counted(gw, model=model, status=str(action.status)) == 1


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_a_whole_answer_of_unknown_length_past_the_buffer_is_refused_too(model: str) -> None:
    # BUFFERED_PARTIAL hands over all of it when it came before the headers answer.
    gw = gateway()
    pipe = routed_to(gw, model)
    pipe.on_response_headers({":status": "200", "content-type": "application/json"}, False)
    action = pipe.on_response_body(b"x" * (gw.buffer_bytes + 1), True)
    assert isinstance(action, Respond) and action.status == 502
    assert orjson.loads(action.body)["error"]["code"] == "provider_response_too_large"
