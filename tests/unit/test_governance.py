"""Unit tests of governance: the prompt estimator, the rules, the in-memory store, the governor's
reservation and settlement, the 429 answers and the rate-limit headers, the config checks."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from extproc.config.loading import ConfigError, LoadedConfig, parse_config
from extproc.decisions.auth import Authenticator, hash_key
from extproc.errors import GatewayError
from extproc.gateway import Gateway
from extproc.governance.estimate import MAX_NODES, PER_MESSAGE_TOKENS, PromptEstimator
from extproc.governance.governor import Reservation, cost, rate_limit_headers, reset_text
from extproc.governance.memory import MemoryStore
from extproc.governance.rules import WINDOW_MS, Check, Kind, Rule, RuleBook, Scope
from extproc.governance.store import DAY_MS, Settlement, period_of
from extproc.providers.base import Usage
from extproc.telemetry.record import RequestRecord

Json = dict[str, Any]
KEY = "sk-governed"
OTHER_KEY = "sk-governed-other"


def config(**tenant: Any) -> Json:
    return {
        "providers": [{"name": "p", "type": "vllm", "base_url": "http://127.0.0.1:9/v1"}],
        "models": [
            {
                "name": "m",
                "targets": [
                    {
                        "provider": "p",
                        "model": "up",
                        "price": {"input_per_million": 2.0, "output_per_million": 8.0},
                    }
                ],
                "limits": {"requests_per_minute": 1000},
                "reserve_output_tokens": 100,
            },
            {"name": "free", "targets": [{"provider": "p", "model": "free-up"}]},
        ],
        "tenants": [
            {
                "name": "acme",
                "keys": [{"sha256": hash_key(KEY), "id": "ci"}],
                "api_key_sha256": [hash_key(OTHER_KEY)],
                **tenant,
            }
        ],
    }


def gateway(data: Json) -> Gateway:
    return Gateway(LoadedConfig(parse_config(data), {}, "test"))


def rule(kind: Kind, limit: float, key: str = "t:x:r", period: str = "", unit: str = "") -> Rule:
    return Rule(key, Scope.TENANT, kind, limit, "tenant 'x'", period, unit)


# --- the estimator ------------------------------------------------------------------------------


def test_ascii_text_counts_a_token_per_four_characters_plus_the_message_overhead() -> None:
    estimator = PromptEstimator()
    body = {"messages": [{"role": "user", "content": "a" * 400}]}
    assert estimator.prompt(body, 0) == 100 + PER_MESSAGE_TOKENS


def test_cjk_text_counts_a_token_per_character() -> None:
    text = "漢字" * 50
    assert PromptEstimator().text(text) == pytest.approx(len(text))


def test_parts_tools_and_embedding_inputs_count() -> None:
    estimator = PromptEstimator(chars_per_token=1)
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "abcd"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "fn"}}]},
        ],
        "tools": [{"function": {"name": "xyz"}}],
    }
    # text 4, message overhead 2 x 4, tool call name 2, tool name 3
    assert estimator.prompt(body, 0) == 4 + 2 * PER_MESSAGE_TOKENS + 2 + 3
    assert estimator.prompt({"input": ["ab", "cd"]}, 0) == 4
    assert estimator.prompt({"input": [1, 2, 3, 4, 5]}, 0) == 5  # token ids


def test_a_huge_structure_is_not_walked_past_the_node_budget() -> None:
    parts = [{"type": "text", "text": "x"} for _ in range(MAX_NODES * 2)]
    raw_size = 10 * len(parts) * 30
    estimate = PromptEstimator().prompt(
        {"messages": [{"role": "user", "content": parts}]}, raw_size
    )
    assert estimate >= raw_size // 4  # the rest counts by its raw size


# --- the rules ---------------------------------------------------------------------------------


def test_rules_apply_per_tenant_key_model_and_tenant_on_model() -> None:
    data = config(
        limits={"requests_per_minute": 10, "tokens_per_minute": 1000},
        model_limits={"m": {"concurrent_requests": 2}},
        budgets=[{"limit": 5, "period": "day"}],
    )
    data["tenants"][0]["keys"][0]["limits"] = {"requests_per_minute": 3}
    book = RuleBook(parse_config(data))
    scopes = [(r.scope, r.kind) for r in book.for_request("acme", "ci", "m")]
    assert scopes == [
        (Scope.TENANT, Kind.REQUESTS),
        (Scope.TENANT, Kind.TOKENS),
        (Scope.TENANT, Kind.SPEND),
        (Scope.KEY, Kind.REQUESTS),
        (Scope.MODEL, Kind.REQUESTS),
        (Scope.TENANT_MODEL, Kind.CONCURRENCY),
    ]
    other_key = hash_key(OTHER_KEY)[:12]
    assert Scope.KEY not in {r.scope for r in book.for_request("acme", other_key, "free")}
    assert book.needs_usage


# --- the in-memory store -----------------------------------------------------------------------


def test_a_sliding_window_never_admits_more_than_its_limit_in_any_minute() -> None:
    store = MemoryStore()
    requests = (Check(rule(Kind.REQUESTS, 3), 1.0),)
    now = 1_000_000
    admitted = [store.admit(requests, f"r{i}", 1000, now + i * 10_000).allowed for i in range(6)]
    assert admitted == [True, True, True, False, False, False]
    refused = store.admit(requests, "late", 1000, now + 50_000)
    # The first entry leaves the window 60 s after it came in.
    assert refused.retry_after_ms == now + WINDOW_MS - (now + 50_000)
    assert store.admit(requests, "after", 1000, now + WINDOW_MS).allowed


def test_tokens_are_reserved_then_settled_to_the_usage() -> None:
    store = MemoryStore()
    tokens = Check(rule(Kind.TOKENS, 1000), 600.0)
    first = store.admit((tokens,), "a", 1000, 0)
    assert first.allowed and first.states[0].remaining == 400
    assert not store.admit((tokens,), "b", 1000, 1).allowed  # 600 does not fit in 400
    store.settle(Settlement("a", (tokens,), [150.0], [""]))
    assert store.state(tokens, 2).remaining == 850
    assert store.admit((tokens,), "b", 1000, 2).allowed


def test_a_refused_request_takes_nothing_from_any_rule() -> None:
    store = MemoryStore()
    wide = Check(rule(Kind.REQUESTS, 10, "t:x:rpm"), 1.0)
    narrow = Check(rule(Kind.TOKENS, 5, "t:x:tpm"), 10.0)
    decision = store.admit((wide, narrow), "a", 1000, 0)
    assert not decision.allowed and decision.denied == 1
    assert store.state(wide, 0).remaining == 10


def test_concurrency_leases_are_released_at_settlement_or_lapse() -> None:
    store = MemoryStore()
    lease = Check(rule(Kind.CONCURRENCY, 1), 1.0)
    assert store.admit((lease,), "a", 5000, 0).allowed
    assert not store.admit((lease,), "b", 5000, 1).allowed
    store.settle(Settlement("a", (lease,), [0.0], [""]))
    assert store.admit((lease,), "b", 5000, 2).allowed
    assert store.admit((lease,), "c", 5000, 5003).allowed  # b's lease lapsed


def test_budgets_count_per_calendar_period() -> None:
    store = MemoryStore()
    budget = Check(rule(Kind.SPEND, 1.0, "t:x:spend", period="day", unit="currency"), 0.6)
    day = 20_000 * DAY_MS
    first = store.admit((budget,), "a", 1000, day)
    assert first.allowed and first.periods == [period_of(day, "day")[0]]
    assert not store.admit((budget,), "b", 1000, day + 1).allowed
    store.settle(Settlement("a", (budget,), [0.1], first.periods))
    assert store.admit((budget,), "b", 1000, day + 2).allowed
    assert store.admit((budget,), "c", 1000, day + DAY_MS).allowed  # the next day


@pytest.mark.parametrize(
    ("date", "period", "expected", "ends"),
    [
        (dt.date(2026, 12, 31), "month", "2026-12", dt.date(2027, 1, 1)),
        (dt.date(2024, 2, 29), "month", "2024-02", dt.date(2024, 3, 1)),
        (dt.date(2024, 2, 29), "day", "2024-02-29", dt.date(2024, 3, 1)),
    ],
)
def test_periods_are_utc_calendar_days_and_months(
    date: dt.date, period: str, expected: str, ends: dt.date
) -> None:
    at = (date - dt.date(1970, 1, 1)).days * DAY_MS + 12 * 3_600_000
    assert period_of(at, period) == (expected, (ends - dt.date(1970, 1, 1)).days * DAY_MS)


# --- the governor ------------------------------------------------------------------------------


def admit(gw: Gateway, max_tokens: int | None = None, key: str = "ci") -> Reservation:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}
    reservation = gw.governor.admit("acme", key, "m", body, 80, max_tokens, 30.0)
    assert isinstance(reservation, Reservation)
    return reservation


def finished(reservation: Reservation, gw: Gateway, usage: Usage | None, status: int = 200) -> None:
    record = RequestRecord(lambda _: None)
    record.tenant, record.key_id, record.model = "acme", "ci", "m"
    record.status, record.attempts, record.provider = status, 1, "p"
    record.target = next(iter(gw.models["m"].targets)).id
    record.usage = usage
    record.reservation = reservation
    gw.telemetry.emit(record)


def test_a_reservation_is_the_prompt_estimate_plus_max_tokens_then_the_usage() -> None:
    gw = gateway(config(limits={"tokens_per_minute": 10_000}))
    reservation = admit(gw, max_tokens=50)
    prompt = reservation.prompt
    assert prompt == 10 + PER_MESSAGE_TOKENS and reservation.output == 50
    assert reservation.headers()["x-ratelimit-remaining-tokens"] == str(10_000 - prompt - 50)
    finished(reservation, gw, Usage.of(12, 30))
    totals = gw.governance.memory.usage("t:acme")
    assert (totals["input_tokens"], totals["output_tokens"]) == (12, 30)
    assert totals["cost"] == pytest.approx((12 * 2.0 + 30 * 8.0) / 1e6)
    tpm = gw.governor.rules.for_request("acme", "ci", "m")[0]
    assert gw.governance.memory.state(Check(tpm, 0)).remaining == 10_000 - 42


def test_without_max_tokens_the_model_s_reserve_is_used() -> None:
    gw = gateway(config(limits={"tokens_per_minute": 10_000}))
    assert admit(gw).output == 100


def test_an_answer_without_usage_keeps_its_estimate_and_is_counted() -> None:
    gw = gateway(config(limits={"tokens_per_minute": 10_000}))
    reservation = admit(gw, max_tokens=50)
    finished(reservation, gw, None)
    totals = gw.governance.memory.usage("k:acme:ci")
    assert totals["input_tokens"] == reservation.prompt and totals["output_tokens"] == 50
    assert totals["estimated_requests"] == 1
    assert gw.metrics.usage_estimated.labels("acme", "m").value == 1


def test_a_provider_error_charges_nothing() -> None:
    gw = gateway(config(limits={"tokens_per_minute": 10_000}))
    reservation = admit(gw, max_tokens=50)
    finished(reservation, gw, None, status=502)
    assert "input_tokens" not in gw.governance.memory.usage("t:acme")
    assert gw.governance.memory.usage("t:acme")["requests"] == 1


def test_over_the_budget_is_insufficient_quota_before_any_call() -> None:
    # 14 prompt + 100 output tokens at 2 and 8 per million: 0.000828 per request.
    gw = gateway(config(budgets=[{"limit": 0.001, "period": "day"}]))
    admit(gw)
    with pytest.raises(GatewayError) as info:
        admit(gw)
    error = info.value
    assert (error.status, error.code) == (429, "insufficient_quota")
    assert int(error.headers["retry-after"]) > 0
    assert gw.metrics.rate_limited.labels("acme", "tenant", "spend").value == 1


def test_over_a_rate_limit_is_rate_limit_exceeded_with_the_headers() -> None:
    data = config()
    data["tenants"][0]["keys"][0]["limits"] = {"requests_per_minute": 1}
    gw = gateway(data)
    admit(gw)
    admit(gw, key=hash_key(OTHER_KEY)[:12])  # the other key has no limit of its own
    with pytest.raises(GatewayError) as info:
        admit(gw)
    error = info.value
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    assert "key 'ci'" in error.message
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-requests"] == "1"


def test_a_request_larger_than_the_token_limit_says_to_lower_max_tokens() -> None:
    gw = gateway(config(limits={"tokens_per_minute": 100}))
    with pytest.raises(GatewayError) as info:
        admit(gw, max_tokens=500)
    assert "lower max_tokens" in info.value.message


def test_the_headers_name_the_tightest_limit() -> None:
    wide = Check(rule(Kind.REQUESTS, 100, "a"), 1.0)
    tight = Check(rule(Kind.REQUESTS, 5, "b"), 1.0)
    store = MemoryStore()
    decision = store.admit((wide, tight), "r", 1000, 0)
    headers = rate_limit_headers((wide, tight), decision.states)
    assert headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1m0s",
    }


@pytest.mark.parametrize(
    ("ms", "text"), [(0, "0ms"), (20, "20ms"), (1500, "1.5s"), (17_000, "17s"), (360_000, "6m0s")]
)
def test_reset_durations_read_like_openai_s(ms: int, text: str) -> None:
    assert reset_text(ms) == text


def test_cached_tokens_cost_the_cached_price() -> None:
    price = parse_config(config()).models[0].targets[0].price
    assert price is not None
    assert cost(price, 100, 0, 40) == pytest.approx(100 * 2.0 / 1e6)  # no cached price: input
    cheaper = price.model_copy(update={"cached_input_per_million": 0.5})
    assert cost(cheaper, 100, 10, 40) == pytest.approx((60 * 2.0 + 40 * 0.5 + 10 * 8.0) / 1e6)


# --- keys and the config ------------------------------------------------------------------------


def test_an_expired_key_is_refused_and_key_models_narrow_the_tenant_s() -> None:
    data = config(allowed_models=["m", "free"])
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC).isoformat()
    data["tenants"][0]["keys"][0].update(allowed_models=["m"])
    data["tenants"][0]["keys"].append({"sha256": hash_key("sk-old"), "expires_at": past})
    auth = Authenticator(parse_config(data))
    tenant = auth.authenticate(f"Bearer {KEY}")
    assert tenant.key_id == "ci" and tenant.may_use("m") and not tenant.may_use("free")
    assert auth.authenticate(f"Bearer {OTHER_KEY}").may_use("free")
    with pytest.raises(GatewayError) as info:
        auth.authenticate("Bearer sk-old")
    assert info.value.status == 401 and "expired" in info.value.message


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"model_limits": {"ghost": {"requests_per_minute": 1}}},
            "tenants.0.model_limits: unknown model 'ghost'",
        ),
        (
            {"budgets": [{"limit": 1, "period": "day"}, {"limit": 2, "period": "day"}]},
            "tenants.0.budgets: at most one budget per unit and period",
        ),
        ({"keys": [{"sha256": "A" * 64}]}, "tenants.0.keys.0.sha256: API key hashes must be"),
        (
            {"keys": [{"sha256": "a" * 64, "expires_at": "2027-01-01T00:00:00"}]},
            "tenants.0.keys.0.expires_at: expires_at needs a time zone",
        ),
        (
            {
                "keys": [
                    {"sha256": "a" * 64, "id": "x"},
                    {"sha256": "b" * 64, "id": "x", "limits": {"requests_per_minute": 1}},
                ]
            },
            "tenants.0.keys: keys sharing the id 'x' must have the same",
        ),
    ],
)
def test_bad_governance_config_is_a_clear_error_with_its_path(change: Json, problem: str) -> None:
    data = config()
    data["tenants"][0].update(change)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_keys_sharing_an_id_share_its_limits() -> None:
    data = config()
    keys = data["tenants"][0]["keys"]
    keys[0]["limits"] = {"requests_per_minute": 1}
    keys.append({"sha256": hash_key("sk-rotated"), "id": "ci", "limits": keys[0]["limits"]})
    gw = gateway(data)
    assert gw.auth.authenticate("Bearer sk-rotated").key_id == "ci"
    admit(gw)  # through the old key
    with pytest.raises(GatewayError, match="key 'ci'"):
        admit(gw)  # the rotated key: same id, same window


def test_a_redis_backend_needs_a_url_without_a_password() -> None:
    data = config()
    data["governance"] = {"backend": "redis"}
    with pytest.raises(ConfigError, match=r"backend redis needs redis\.url"):
        parse_config(data)
    data["governance"] = {"backend": "redis", "redis": {"url": "redis://:secret@h:6379/0"}}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "password" in str(info.value) and "secret" not in str(info.value)
