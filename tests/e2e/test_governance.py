"""End to end: governance (rate limits, token limits, budgets, concurrency, keys) through the
real Envoy binary, on the memory backend.

One module stack holds a tenant per test (or per case), so no two tests share a window; key
rotation runs on a private stack it reloads. Expected usage is what the fake reported to the
client (the SDK's `usage`), never a number copied from the gateway's code.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import CompletionUsage
from prometheus_client.parser import text_string_to_metric_families

from extproc.decisions.auth import hash_key
from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import FULL_KEY, Stack, make_stack

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
USER: Any = [{"role": "user", "content": "hello governed world"}]

RPM = 3  # tenant "rpm", across its keys "a" and "b"; it also has a token limit
RPM_TPM = 1_000_000
KEY_RPM = 2  # key "a" of tenant "keyrpm" (the tenant allows more)
TENANT_RPM = 50
TPM_MODELS = ["chat-openai", "chat-anthropic", "chat-gemini", "chat-bedrock"]
TPM_MODES = ["whole", "stream-with-usage", "stream-without-usage"]
TOKEN_BUDGET = 300  # tokens per day, tenant "budget-tokens"
PRICE_IN, PRICE_OUT = 1000.0, 3000.0  # per million tokens, model "chat-priced"
CURRENCY_BUDGET = 0.5  # per day, tenant "budget-burst"
BURST = 50
CONCURRENT = 2  # tenant "conc"
MODEL_RPM = 2  # model "chat-model-rpm", across tenants "mrpm-x" and "mrpm-y"
TENANT_MODEL_RPM = 1  # tenant "tmrpm" on chat-openai (its other models are not limited)


def key_of(tenant: str, key_id: str = "k") -> str:
    """The API key of `key_id` of a tenant of this module."""
    return f"sk-gov-{tenant}-{key_id}"


def tenant(name: str, keys: list[Json] | None = None, **fields: Any) -> Json:
    """A tenant whose keys (`id` plus extras) are `key_of(name, id)`."""
    keys = keys if keys is not None else [{"id": "k"}]
    entries = [{"sha256": hash_key(key_of(name, k["id"])), **k} for k in keys]
    return {"name": name, "keys": entries, **fields}


def tpm_tenant(model: str, mode: str) -> str:
    return f"tpm-{model}-{mode}"


def governed(config: Json) -> None:
    """The module's tenants (one or more per test) and a priced model."""
    config["models"].append(
        {
            "name": "chat-priced",
            "targets": [
                {
                    "provider": "p-openai",
                    "model": "gpt-priced",
                    "price": {"input_per_million": PRICE_IN, "output_per_million": PRICE_OUT},
                }
            ],
        }
    )
    config["models"].append(
        {
            "name": "chat-model-rpm",
            "targets": [{"provider": "p-openai", "model": "gpt-model-rpm"}],
            "limits": {"requests_per_minute": MODEL_RPM},
        }
    )
    config["tenants"] += [
        tenant("mrpm-x"),
        tenant("mrpm-y"),
        tenant("tmrpm", model_limits={"chat-openai": {"requests_per_minute": TENANT_MODEL_RPM}}),
        tenant(
            "rpm",
            [{"id": "a"}, {"id": "b"}],
            limits={"requests_per_minute": RPM, "tokens_per_minute": RPM_TPM},
        ),
        tenant(
            "keyrpm",
            [{"id": "a", "limits": {"requests_per_minute": KEY_RPM}}, {"id": "b"}],
            limits={"requests_per_minute": TENANT_RPM},
        ),
        *(
            tenant(tpm_tenant(model, mode), limits={"tokens_per_minute": 1_000_000})
            for model in TPM_MODELS
            for mode in TPM_MODES
        ),
        tenant(
            "budget-tokens",
            budgets=[{"limit": TOKEN_BUDGET, "unit": "tokens", "period": "day"}],
        ),
        tenant(
            "budget-burst",
            budgets=[{"limit": CURRENCY_BUDGET, "unit": "currency", "period": "day"}],
        ),
        tenant("conc", limits={"concurrent_requests": CONCURRENT}),
        *(tenant(f"drop-{model}", limits={"tokens_per_minute": 1_000_000}) for model in TPM_MODELS),
        *(tenant(f"done-{model}", limits={"tokens_per_minute": 1_000_000}) for model in TPM_MODELS),
        tenant(
            "expiry",
            [
                {"id": "gone", "expires_at": "2020-01-01T00:00:00Z"},
                {"id": "live", "expires_at": "2999-01-01T00:00:00Z"},
            ],
        ),
        tenant(
            "narrow",
            [{"id": "one", "allowed_models": ["chat-openai"]}, {"id": "both"}],
            allowed_models=["chat-openai", "chat-anthropic"],
        ),
    ]


@pytest.fixture(scope="module")
def gov(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The module's stack (memory backend) with the tenants of `governed`."""
    with make_stack(tmp_path_factory.mktemp("governance"), customize=governed) as s:
        yield s


@pytest.fixture
def gfake(gov: Stack) -> Iterator[FakeProviderServer]:
    """`gov`'s fake provider, reset before and after each test."""
    gov.fake.clear()
    yield gov.fake
    gov.fake.clear()


@pytest.fixture(autouse=True)
def _never_a_processor_exception(gov: Stack) -> Iterator[None]:
    yield
    assert metric(gov, "gateway_processor_exceptions_total") == 0


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


def usage(stack: Stack, name: str) -> Json:
    """`GET /usage?tenant=NAME`: the tenant's windows, totals and keys."""
    response = httpx.get(f"{stack.admin_url}/usage", params={"tenant": name}, timeout=10)
    assert response.status_code == 200, response.text
    answer: Json = response.json()
    assert answer["backend"] == "memory"
    entry: Json = answer["tenants"][name]
    return entry


def settled(stack: Stack, name: str, requests: int, timeout: float = 10) -> Json:
    """`usage` once `requests` requests of the tenant are settled (a request settles when its
    record closes, which may be just after the client has its answer)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = usage(stack, name)
        if entry["totals"].get("requests", 0) >= requests or time.monotonic() > deadline:
            assert entry["totals"].get("requests", 0) == requests, entry
            return entry
        time.sleep(0.05)


def window(entry: Json, limit: str, scope: str = "tenant") -> Json:
    """The one window of `entry` that counts `limit` (requests, tokens, concurrency, spend)."""
    [found] = [w for w in entry["windows"] if w["limit"] == limit and w["scope"] == scope]
    return found


def cost(usage: CompletionUsage) -> float:
    """What `usage` costs at chat-priced's configured price."""
    return (usage.prompt_tokens * PRICE_IN + usage.completion_tokens * PRICE_OUT) / 1_000_000


def chat(client: openai.OpenAI, model: str = "chat-openai", **kwargs: Any) -> Any:
    kwargs.setdefault("messages", USER)
    return client.chat.completions.create(model=model, **kwargs)


# -- 1. requests per minute -----------------------------------------------------------------


def test_requests_per_minute_of_a_tenant_count_across_its_keys_and_reopen(
    gov: Stack, gfake: FakeProviderServer
) -> None:
    a, b = gov.client(key_of("rpm", "a")), gov.client(key_of("rpm", "b"))
    remaining = []
    for client in (a, a, b):
        raw = client.chat.completions.with_raw_response.create(model="chat-openai", messages=USER)
        raw.parse()
        headers = raw.headers
        assert headers["x-ratelimit-limit-requests"] == str(RPM)
        remaining.append(int(headers["x-ratelimit-remaining-requests"]))
        assert headers["x-ratelimit-reset-requests"]
        # A token limit applies too: its headers come with the request limit's.
        assert headers["x-ratelimit-limit-tokens"] == str(RPM_TPM)
        assert 0 < int(headers["x-ratelimit-remaining-tokens"]) < RPM_TPM
        assert headers["x-ratelimit-reset-tokens"]
    assert remaining == list(range(RPM - 1, -1, -1))

    with pytest.raises(openai.RateLimitError) as refused:
        chat(b)
    error = refused.value
    assert error.code == "rate_limit_exceeded"
    headers = error.response.headers
    retry = int(headers["retry-after"])
    assert 1 <= retry <= 60
    assert headers["x-ratelimit-limit-requests"] == str(RPM)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]
    assert headers["x-ratelimit-limit-tokens"] == str(RPM_TPM)
    assert len(gfake.requests) == RPM  # the refused request never reached a provider
    entry = settled(gov, "rpm", RPM)
    assert window(entry, "requests")["used"] == RPM
    assert entry["keys"]["a"]["totals"]["requests"] == 2
    assert entry["keys"]["b"]["totals"]["requests"] == 1
    assert metric(gov, "gateway_rate_limited_total", tenant="rpm", scope="tenant") == 1

    # The one wait of the suite: the window slides past the first request.
    time.sleep(retry)
    answer = chat(b)
    assert answer.choices[0].message.content
    assert len(gfake.requests) == RPM + 1


def test_a_key_limit_refuses_only_that_key(gov: Stack, gfake: FakeProviderServer) -> None:
    a, b = gov.client(key_of("keyrpm", "a")), gov.client(key_of("keyrpm", "b"))
    for expected in range(KEY_RPM - 1, -1, -1):
        raw = a.chat.completions.with_raw_response.create(model="chat-openai", messages=USER)
        raw.parse()
        # The tightest request limit is the key's.
        assert raw.headers["x-ratelimit-limit-requests"] == str(KEY_RPM)
        assert raw.headers["x-ratelimit-remaining-requests"] == str(expected)
        assert "x-ratelimit-limit-tokens" not in raw.headers  # no token limit applies
    with pytest.raises(openai.RateLimitError) as refused:
        chat(a)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["retry-after"]
    # The other key of the same tenant is not limited by it.
    for _ in range(KEY_RPM + 1):
        raw = b.chat.completions.with_raw_response.create(model="chat-openai", messages=USER)
        raw.parse()
        assert raw.headers["x-ratelimit-limit-requests"] == str(TENANT_RPM)
    admitted = 2 * KEY_RPM + 1
    assert len(gfake.requests) == admitted
    entry = settled(gov, "keyrpm", admitted)
    assert window(entry, "requests")["used"] == admitted
    assert window(entry["keys"]["a"], "requests", "key")["used"] == KEY_RPM
    assert entry["keys"]["b"]["windows"] == []
    assert metric(gov, "gateway_rate_limited_total", tenant="keyrpm", scope="key") == 1
    assert metric(gov, "gateway_rate_limited_total", tenant="keyrpm", scope="tenant") == 0


def test_a_model_limit_counts_every_tenant_and_a_tenant_model_limit_one_model(
    gov: Stack, gfake: FakeProviderServer
) -> None:
    x, y = gov.client(key_of("mrpm-x")), gov.client(key_of("mrpm-y"))
    chat(x, "chat-model-rpm")
    chat(y, "chat-model-rpm")  # another tenant, the same model's window
    with pytest.raises(openai.RateLimitError) as refused:
        chat(x, "chat-model-rpm")
    assert "model 'chat-model-rpm'" in refused.value.message
    assert metric(gov, "gateway_rate_limited_total", tenant="mrpm-x", scope="model") == 1

    limited = gov.client(key_of("tmrpm"))
    chat(limited)  # chat-openai: its one request this minute
    with pytest.raises(openai.RateLimitError) as refused:
        chat(limited)
    assert "tenant 'tmrpm' on model 'chat-openai'" in refused.value.message
    chat(limited, "chat-anthropic")  # the tenant's other models are not limited
    assert metric(gov, "gateway_rate_limited_total", tenant="tmrpm", scope="tenant_model") == 1
    assert len(gfake.requests) == MODEL_RPM + TENANT_MODEL_RPM + 1


# -- 2. tokens per minute, settled to the usage reported ------------------------------------


def stream_chat(client: openai.OpenAI, model: str, messages: Any, **kwargs: Any) -> tuple[str, Any]:
    """Stream a chat answer: (its text, the usage chunk the client got, or None)."""
    text, reported = "", None
    for chunk in client.chat.completions.create(
        model=model, messages=messages, stream=True, **kwargs
    ):
        if chunk.usage is not None:
            assert reported is None, "two usage chunks"
            reported = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, reported


@pytest.mark.parametrize("mode", TPM_MODES)
@pytest.mark.parametrize("model", TPM_MODELS)
def test_tokens_per_minute_settle_to_the_usage_reported(
    gov: Stack, gfake: FakeProviderServer, model: str, mode: str
) -> None:
    name = tpm_tenant(model, mode)
    client = gov.client(key_of(name))
    spent: list[tuple[int, int]] = []
    for text in ("one two three", "four five six seven eight nine ten"):
        messages: Any = [{"role": "user", "content": text}]
        if mode == "whole":
            answer = chat(client, model, messages=messages, max_tokens=500)
            assert answer.usage is not None
            spent.append((answer.usage.prompt_tokens, answer.usage.completion_tokens))
        elif mode == "stream-with-usage":
            options = {"include_usage": True}
            _, reported = stream_chat(
                client, model, messages, max_tokens=500, stream_options=options
            )
            assert reported is not None
            spent.append((reported.prompt_tokens, reported.completion_tokens))
        else:
            streamed, reported = stream_chat(client, model, messages, max_tokens=500)
            assert reported is None  # the client did not ask for it
            # What the provider reports for this request: the same request, whole, by an
            # ungoverned tenant.
            whole = chat(gov.client(FULL_KEY), model, messages=messages, max_tokens=500)
            assert whole.usage is not None and whole.choices[0].message.content == streamed
            spent.append((whole.usage.prompt_tokens, whole.usage.completion_tokens))
    entry = settled(gov, name, len(spent))
    totals = entry["totals"]
    prompt, completion = sum(p for p, _ in spent), sum(c for _, c in spent)
    assert totals["input_tokens"] == prompt
    assert totals["output_tokens"] == completion
    assert "estimated_requests" not in totals
    assert window(entry, "tokens")["used"] == prompt + completion
    assert entry["keys"]["k"]["totals"] == totals
    if model == "chat-openai" and mode == "stream-without-usage":
        # The gateway asked the provider for the usage chunk, and kept it from the client.
        asked = [r.json.get("stream_options") for r in gfake.requests if r.json.get("stream")]
        assert asked == [{"include_usage": True}] * len(spent)


# -- 3. budgets -----------------------------------------------------------------------------


def test_a_token_budget_refuses_a_request_that_cannot_fit_before_any_provider_call(
    gov: Stack, gfake: FakeProviderServer
) -> None:
    client = gov.client(key_of("budget-tokens"))
    first = chat(client, max_tokens=50)
    assert first.usage is not None
    budget = window(settled(gov, "budget-tokens", 1), "spend")
    assert budget["max"] == TOKEN_BUDGET
    assert budget["used"] == first.usage.prompt_tokens + first.usage.completion_tokens
    left = int(budget["remaining"])

    # All that is left as output, plus a prompt: it cannot fit.
    too_much: Any = [{"role": "user", "content": "this one asks too much"}]
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client, messages=too_much, max_tokens=left)
    assert refused.value.code == "insufficient_quota"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert len(gfake.requests) == 1
    assert all(r.json["messages"] != too_much for r in gfake.requests)
    assert metric(gov, "gateway_rate_limited_total", tenant="budget-tokens", limit="spend") == 1

    # A request that fits what is left still passes.
    small = chat(client, max_tokens=5)
    assert small.usage is not None
    after = window(settled(gov, "budget-tokens", 2), "spend")
    used = budget["used"] + small.usage.prompt_tokens + small.usage.completion_tokens
    assert after["used"] == used


def test_a_concurrent_burst_never_spends_past_a_currency_budget(
    gov: Stack, gfake: FakeProviderServer
) -> None:
    gate = threading.Event()
    gfake.set_behaviour(stream_gate=gate)
    client = gov.client(key_of("budget-burst"), timeout=60)
    results: list[Any] = [None] * BURST
    refused = threading.Semaphore(0)

    def one(index: int) -> None:
        try:
            _, reported = stream_chat(
                client,
                "chat-priced",
                USER,
                max_tokens=40,
                stream_options={"include_usage": True},
            )
            results[index] = reported
        except openai.RateLimitError as exc:
            results[index] = exc.code
            refused.release()
        except Exception as exc:  # kept and reported below
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST)]
    try:
        for thread in threads:
            thread.start()
        # Every request is decided while the admitted ones are all in flight (held open).
        deadline = time.monotonic() + 30
        count = 0
        while count + gfake.stream_started < BURST and time.monotonic() < deadline:
            if refused.acquire(timeout=0.05):
                count += 1
        assert count + gfake.stream_started == BURST, (count, gfake.stream_started)
        held = window(usage(gov, "budget-burst"), "spend")
    finally:
        gate.set()
        for thread in threads:
            thread.join(60)

    admitted = [r for r in results if isinstance(r, CompletionUsage)]
    assert len(admitted) + results.count("insufficient_quota") == BURST, results
    assert admitted and len(admitted) < BURST
    assert len(gfake.requests) == len(admitted)
    # Reservations (alike: the same request each time) held at once fit the budget, and one
    # more would not have: each refusal was due.
    reserved = held["used"]
    each = reserved / len(admitted)
    assert reserved <= CURRENCY_BUDGET
    assert reserved + each > CURRENCY_BUDGET
    # Settled: what the answers reported, at the configured price, within the budget.
    entry = settled(gov, "budget-burst", len(admitted))
    actual = sum(cost(u) for u in admitted)
    spend = window(entry, "spend")["used"]
    assert spend == pytest.approx(actual)
    assert spend <= reserved <= CURRENCY_BUDGET
    assert entry["totals"]["cost"] == pytest.approx(actual)


# -- 4. concurrency -------------------------------------------------------------------------


def test_concurrent_streams_hold_leases_until_they_settle(
    gov: Stack, gfake: FakeProviderServer
) -> None:
    client = gov.client(key_of("conc"))
    gate = threading.Event()
    gfake.set_behaviour(stream_gate=gate)
    try:
        held = [chat(client, stream=True) for _ in range(CONCURRENT)]
        assert gfake.stream_started == CONCURRENT
        assert window(usage(gov, "conc"), "concurrency")["used"] == CONCURRENT
        with pytest.raises(openai.RateLimitError) as refused:
            chat(client, stream=True)
        assert refused.value.code == "rate_limit_exceeded"
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert len(gfake.requests) == CONCURRENT
    finally:
        gate.set()
    for stream in held:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    entry = settled(gov, "conc", CONCURRENT)
    assert window(entry, "concurrency")["used"] == 0

    # Both leases are free again: as many streams as allowed open at once.
    gate = threading.Event()
    gfake.set_behaviour(stream_gate=gate)
    try:
        again = [chat(client, stream=True) for _ in range(CONCURRENT)]
    finally:
        gate.set()
    for stream in again:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert metric(gov, "gateway_rate_limited_total", tenant="conc", limit="concurrency") == 1


# -- 5. keys --------------------------------------------------------------------------------


def test_an_expired_key_is_refused(gov: Stack, gfake: FakeProviderServer) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(gov.client(key_of("expiry", "gone")))
    assert refused.value.code == "invalid_api_key"
    assert chat(gov.client(key_of("expiry", "live"))).choices[0].message.content
    assert len(gfake.requests) == 1


def test_a_key_narrower_than_its_tenant_is_forbidden_the_other_models(
    gov: Stack, gfake: FakeProviderServer
) -> None:
    one, both = gov.client(key_of("narrow", "one")), gov.client(key_of("narrow", "both"))
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        chat(one, "chat-anthropic")
    assert forbidden.value.code == "model_not_allowed"
    assert chat(one, "chat-openai").choices[0].message.content
    assert chat(both, "chat-anthropic").choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):  # outside the tenant's models
        chat(both, "chat-gemini")
    assert len(gfake.requests) == 2
    entry = settled(gov, "narrow", 2)
    assert set(entry["keys"]) == {"one", "both"}
    assert entry["keys"]["one"]["totals"]["requests"] == 1
    assert entry["keys"]["both"]["totals"]["requests"] == 1


def test_keys_rotate_and_are_revoked_by_a_reload_without_a_restart(tmp_path: Path) -> None:
    old, new = key_of("rot", "old"), key_of("rot", "new")

    def rotation_tenant(config: Json) -> None:
        config["tenants"].append(tenant("rot", [{"id": "old"}]))

    with make_stack(tmp_path, customize=rotation_tenant) as stack:
        assert stack.processor is not None
        pid = stack.processor.pid
        assert chat(stack.client(old)).choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            chat(stack.client(new))

        # Rotation: the new key is added beside the old one; both work.
        config = copy.deepcopy(stack.config)
        [rot] = [t for t in config["tenants"] if t["name"] == "rot"]
        rot["keys"].append({"id": "new", "sha256": hash_key(new)})
        assert stack.reload(config)["result"] == "success"
        assert chat(stack.client(old)).choices[0].message.content
        assert chat(stack.client(new)).choices[0].message.content

        # Revocation: the old key is removed.
        config = copy.deepcopy(stack.config)
        [rot] = [t for t in config["tenants"] if t["name"] == "rot"]
        rot["keys"] = [k for k in rot["keys"] if k["id"] != "old"]
        assert stack.reload(config)["result"] == "success"
        with pytest.raises(openai.AuthenticationError) as revoked:
            chat(stack.client(old))
        assert revoked.value.code == "invalid_api_key"
        assert chat(stack.client(new)).choices[0].message.content

        assert stack.processor.pid == pid and stack.processor.poll() is None
        entry = settled(stack, "rot", 4)  # the tenant's history survives both reloads
        assert set(entry["keys"]) == {"new"}
        assert entry["keys"]["new"]["totals"]["requests"] == 2
        assert metric(stack, "gateway_processor_exceptions_total") == 0


# -- 6. a client that leaves mid-stream -----------------------------------------------------


# Gemini's stream has no last event of its own: the gateway ends it at the response's end,
# so no client can leave between the two.
@pytest.mark.parametrize("model", [m for m in TPM_MODELS if m != "chat-gemini"])
def test_a_stream_the_client_closes_at_done_is_charged_what_the_provider_reported(
    gov: Stack, gfake: FakeProviderServer, model: str
) -> None:
    # The openai SDK closes the connection once it reads [DONE]; the provider's response
    # has not ended yet (the fake holds it open), so Envoy resets the stream before the
    # processor sees its end. The usage before [DONE] is final all the same.
    name = f"done-{model}"
    labels = {"tenant": name, "model": model}
    before = metric(gov, "gateway_usage_estimated_total", **labels)
    gate = threading.Event()
    gfake.set_behaviour(end_gate=gate, reply="every word, then the provider lingers")
    try:
        stream = gov.client(key_of(name)).chat.completions.create(
            model=model,
            messages=USER,
            stream=True,
            max_tokens=300,
            stream_options={"include_usage": True},
        )
        usage = None
        with stream:
            for chunk in stream:
                usage = chunk.usage or usage
        entry = settled(gov, name, 1)
        # The gateway saw the client leave before the provider's response ended.
        assert gfake.stream_finished == 1
    finally:
        gate.set()
    assert usage is not None and usage.completion_tokens < 300
    totals = entry["totals"]
    assert "estimated_requests" not in totals
    assert totals["input_tokens"] == usage.prompt_tokens
    assert totals["output_tokens"] == usage.completion_tokens
    assert window(entry, "tokens")["used"] == usage.prompt_tokens + usage.completion_tokens
    assert metric(gov, "gateway_usage_estimated_total", **labels) == before


@pytest.mark.parametrize("model", TPM_MODELS)
def test_a_stream_the_client_leaves_is_charged_its_reservation(
    gov: Stack, gfake: FakeProviderServer, model: str
) -> None:
    name = f"drop-{model}"
    client = gov.client(key_of(name))
    labels = {"tenant": name, "model": model}
    before = metric(gov, "gateway_usage_estimated_total", **labels)
    gate = threading.Event()
    gfake.set_behaviour(stream_gate=gate, reply="a reply the client never reads to its end")
    max_tokens = 300
    try:
        with client.chat.completions.with_streaming_response.create(
            model=model, messages=USER, stream=True, max_tokens=max_tokens
        ) as response:
            limit = int(response.headers["x-ratelimit-limit-tokens"])
            reserved = limit - int(response.headers["x-ratelimit-remaining-tokens"])
            for chunk in response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    break  # and leave: the context closes the connection mid-stream
        entry = settled(gov, name, 1)
    finally:
        gate.set()
    [sent] = gfake.requests
    totals = entry["totals"]
    # What the provider went on to generate is unknown: the reserved output stands.
    assert totals["estimated_requests"] == 1
    assert totals["output_tokens"] == max_tokens
    assert window(entry, "tokens")["used"] == totals["input_tokens"] + max_tokens
    assert metric(gov, "gateway_usage_estimated_total", **labels) == before + 1
    if model == "chat-anthropic":
        # Its message_start, before the cut, reported the prompt's count: that one is known.
        whole = chat(gov.client(FULL_KEY), model, max_tokens=max_tokens)
        assert whole.usage is not None
        assert totals["input_tokens"] == whole.usage.prompt_tokens
    else:
        # No count came before the cut: the whole reservation stands.
        assert totals["input_tokens"] + totals["output_tokens"] == reserved
    if model == "chat-openai":
        # The gateway had asked for the usage chunk; it never came.
        assert sent.json["stream_options"] == {"include_usage": True}
