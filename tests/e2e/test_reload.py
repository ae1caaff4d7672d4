"""End to end: hot reload of the processor and Envoy under traffic, through the real Envoy.

One private stack for the module; each test starts from the base config (reloaded back) and
changes it with `Stack.reload` (`POST /reload`), a rewritten file (the processor's watch, off in
the base config so that a rewrite and its `POST /reload` never both reload) or SIGHUP. Traffic
is the openai SDK on several threads; every outcome is kept and checked.
"""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from extproc.config.topology import model_route_ids
from extproc.decisions.auth import hash_key
from extproc.dev.stack import stop_process
from tests.e2e.conftest import FULL_KEY, UPSTREAM_KEYS, Stack, make_stack, metric

pytestmark = pytest.mark.e2e

NEW_KEY = "sk-test-rotated-client-key"
ADDED_UPSTREAM_KEY = "sk-added-provider-key"
ROTATED_UPSTREAM_KEY = "sk-added-provider-key-rotated"
Json = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """One request of the traffic: which model, and what the client got."""

    model: str
    stream: bool
    sent: str  # the user message
    status: int  # 200, or the error's HTTP status (0: no HTTP answer at all)
    code: str | None  # the OpenAI error code, if any
    text: str  # the reply, or the exception


class Traffic:
    """openai SDK clients on `workers` threads calling `models` in turn until stopped."""

    def __init__(
        self, stack: Stack, models: list[str], workers: int = 4, streams: bool = True
    ) -> None:
        self.stack = stack
        self.models = models
        self.streams = streams
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(workers)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        self.wait_for(4 * len(self._threads))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.outcomes

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_for(self, more: int, timeout: float = 60) -> None:
        """Until `more` further requests have been answered."""
        target = self.count() + more
        done = threading.Event()
        deadline = threading.Timer(timeout, done.set)
        deadline.start()
        try:
            while self.count() < target and not done.wait(0.02):
                pass
        finally:
            deadline.cancel()
        assert self.count() >= target, f"traffic stalled at {self.count()} answers"

    def _run(self, worker: int) -> None:
        client = self.stack.client(timeout=30)
        turn = worker
        while not self._stop.is_set():
            model = self.models[turn % len(self.models)]
            stream = self.streams and turn % 3 == 0
            turn += 1
            outcome = self._call(client, model, stream, f"{model} {turn}")
            with self._lock:
                self.outcomes.append(outcome)

    @staticmethod
    def _call(client: openai.OpenAI, model: str, stream: bool, text: str) -> Outcome:
        messages: Any = [{"role": "user", "content": text}]
        try:
            if stream:
                chunks = client.chat.completions.create(model=model, messages=messages, stream=True)
                reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                answer = client.chat.completions.create(model=model, messages=messages)
                reply = answer.choices[0].message.content or ""
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            return Outcome(model, stream, text, exc.status_code, body.get("code"), str(exc))
        except openai.APIError as exc:
            return Outcome(model, stream, text, 0, None, repr(exc))
        return Outcome(model, stream, text, 200, None, reply)


def failures(outcomes: list[Outcome], allowed: frozenset[tuple[int, str | None]]) -> list[Any]:
    """Outcomes that are neither the right answer (the fake's echo of what was sent) nor one
    of the `allowed` errors (status, code)."""
    return [
        o
        for o in outcomes
        if (o.status, o.text) != (200, f"echo: {o.sent}") and (o.status, o.code) not in allowed
    ]


def envoy_clusters(stack: Stack) -> set[str]:
    text = httpx.get(f"{stack.envoy_admin_url}/clusters", timeout=10).text
    return {line.split("::", 1)[0] for line in text.splitlines() if "::" in line}


def wait_until(check: Any, timeout: float = 30, what: str = "condition") -> None:
    done = threading.Event()
    timer = threading.Timer(timeout, done.set)
    timer.start()
    try:
        while not check():
            assert not done.wait(0.05), f"{what} did not happen within {timeout}s"
    finally:
        timer.cancel()


def chat(stack: Stack, model: str, key: str = FULL_KEY) -> str:
    reply = stack.client(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content or ""


# --- the stack and the base config ------------------------------------------------------------


@pytest.fixture(scope="module")
def reload_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("reload")
    (tmp / "added.key").write_text(ADDED_UPSTREAM_KEY, encoding="utf-8")

    def customize(config: Json) -> None:
        config["reload"]["watch_interval_seconds"] = 0

    with make_stack(tmp, customize=customize) as stack:
        yield stack


@pytest.fixture(scope="module")
def base_config(reload_stack: Stack) -> Json:
    """The config the module's stack started with."""
    return copy.deepcopy(reload_stack.config)


@pytest.fixture
def stack(reload_stack: Stack, base_config: Json) -> Iterator[Stack]:
    """The module's stack, back on its base config, the fake reset."""
    answer = reload_stack.reload(copy.deepcopy(base_config))
    assert answer["result"] == "success", answer
    reload_stack.fake.clear()
    yield reload_stack
    reload_stack.fake.clear()


@pytest.fixture
def base(base_config: Json) -> Json:
    """A copy of the base config for the test to change."""
    return copy.deepcopy(base_config)


def key_file(stack: Stack) -> Path:
    return stack.workdir / "added.key"


def watching(stack: Stack, base: Json) -> Json:
    """Turn the file watch on (polling every 0.2 s) by a reload; the config now in force."""
    base["reload"]["watch_interval_seconds"] = 0.2
    answer = stack.reload(base)
    assert answer["result"] == "success", answer
    return base


def with_added_provider_and_models(stack: Stack, base: Json) -> Json:
    """The base config plus a provider (key from a file) and two models on it."""
    config = copy.deepcopy(base)
    fake_url = stack.fake.base_url
    config["providers"].append(
        {
            "name": "p-added",
            "type": "openai",
            "base_url": f"{fake_url}/together/v1",
            "api_key_file": str(key_file(stack)),
        }
    )
    config["models"] += [
        {"name": "chat-added", "targets": [{"provider": "p-added", "model": "added-up"}]},
        {
            "name": "chat-added-pair",
            "targets": [
                {"provider": "p-added", "model": "added-pair-up"},
                {"provider": "p-openai", "model": "gpt-up"},
            ],
        },
    ]
    return config


# --- adding ----------------------------------------------------------------------------------


def test_a_reload_adds_a_provider_and_models_under_traffic_with_no_failed_request(
    stack: Stack, base: Json
) -> None:
    stack.fake.set_behaviour(latency_s=0.05)  # requests are in flight at the swap
    with Traffic(stack, ["chat-openai", "chat-anthropic", "chat-vllm"]) as traffic:
        answer = stack.reload(with_added_provider_and_models(stack, base))
        assert answer["result"] == "success", answer
        assert "providers added: p-added" in answer["changes"]
        assert "models added: chat-added, chat-added-pair" in answer["changes"]
        assert answer["envoy_files"] == ["cds.yaml", "rds.yaml", "lds.yaml"]
        traffic.wait_for(30)  # requests after the swap too
    outcomes = traffic.outcomes
    assert failures(outcomes, frozenset()) == []
    assert len(outcomes) >= 50

    stack.fake.clear()
    assert chat(stack, "chat-added") == "echo: hi"
    (seen,) = stack.fake.requests
    assert seen.path == "/together/v1/chat/completions"
    assert seen.json["model"] == "added-up"
    assert seen.header("authorization") == f"Bearer {ADDED_UPSTREAM_KEY}"
    # A new model with several targets: a new cluster whose health checks the processor
    # answered before the new config was in force, and the per-attempt upstream filter.
    stack.fake.clear()
    assert chat(stack, "chat-added-pair") == "echo: hi"
    (seen,) = stack.fake.requests
    assert seen.json["model"] == "added-pair-up"
    models = {m.id for m in stack.client().models.list()}
    assert {"chat-added", "chat-added-pair", "chat-openai"} <= models


def test_a_changed_config_file_is_reloaded_by_the_watch(stack: Stack, base: Json) -> None:
    base = watching(stack, base)
    before = stack.last_reload()["reload"]
    with pytest.raises(openai.NotFoundError):
        chat(stack, "chat-added")
    stack.rewrite_config(with_added_provider_and_models(stack, base))
    answer = stack.wait_for_reload(before)
    assert (answer["result"], answer["trigger"]) == ("success", "file")
    assert chat(stack, "chat-added") == "echo: hi"


# --- refusing --------------------------------------------------------------------------------


def broken_config(base: Json) -> Json:
    config = copy.deepcopy(base)
    config["providers"][0]["base_url"] = "ftp://nowhere"
    config["models"].append(
        {"name": "chat-x", "targets": [{"provider": "p-missing", "model": "x"}]}
    )
    return config


BROKEN_PROBLEMS = [
    "providers.0.base_url: base_url must start with http:// or https://",
]


def test_an_invalid_file_is_refused_and_traffic_is_unaffected(stack: Stack, base: Json) -> None:
    rejected = metric(stack, "gateway_config_reloads_total", result="rejected")
    with Traffic(stack, ["chat-openai", "chat-anthropic"]) as traffic:
        answer = stack.reload(broken_config(base))
        traffic.wait_for(20)
    assert answer["result"] == "rejected"
    assert answer["problems"] == BROKEN_PROBLEMS
    assert failures(traffic.outcomes, frozenset()) == []
    assert metric(stack, "gateway_config_reloads_total", result="rejected") == rejected + 1
    assert metric(stack, "gateway_config_last_reload_successful") == 0
    # The old config keeps serving, and the log names every problem with its path.
    assert chat(stack, "chat-openai") == "echo: hi"
    log = stack.dump_logs(tail=None)
    (line,) = [x for x in log.splitlines() if "config reload rejected (api)" in x]
    assert " WARNING " in line
    for problem in BROKEN_PROBLEMS:
        assert problem in line


def unknown_provider(config: Json) -> None:
    config["models"].append(
        {"name": "chat-x", "targets": [{"provider": "p-missing", "model": "x"}]}
    )


def missing_credential(config: Json) -> None:
    config["providers"].append(
        {"name": "p-nokey", "type": "openai", "base_url": "http://x", "api_key_env": "UNSET_KEY"}
    )


@pytest.mark.parametrize("breakage", [unknown_provider, missing_credential])
def test_the_reload_refuses_exactly_what_check_config_refuses(
    stack: Stack, base: Json, breakage: Any
) -> None:
    breakage(base)
    answer = stack.reload(base)
    assert answer["result"] == "rejected"
    checked = subprocess.run(
        [sys.executable, "-m", "extproc.cli", "check-config", str(stack.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**UPSTREAM_KEYS, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert checked.returncode == 2, checked.stderr
    listed = [line.removeprefix("  - ") for line in checked.stderr.splitlines()[1:]]
    assert answer["problems"] == listed
    assert len(listed) == 1


def test_a_broken_file_seen_by_the_watch_is_refused(stack: Stack, base: Json) -> None:
    base = watching(stack, base)
    before = stack.last_reload()["reload"]
    stack.rewrite_config(broken_config(base))
    answer = stack.wait_for_reload(before)
    assert (answer["result"], answer["trigger"]) == ("rejected", "file")
    assert answer["problems"] == BROKEN_PROBLEMS
    assert chat(stack, "chat-openai") == "echo: hi"


def test_a_change_that_needs_a_restart_is_refused_whole(stack: Stack, base: Json) -> None:
    config = with_added_provider_and_models(stack, base)
    config["processor"]["admin_port"] = config["processor"]["admin_port"] + 1
    answer = stack.reload(config)
    assert answer["result"] == "rejected"
    (problem,) = answer["problems"]
    assert problem.startswith("processor.admin_port: changed from ")
    assert "needs a restart of the processor" in problem
    # Nothing of it was applied: not the new model either.
    with pytest.raises(openai.NotFoundError):
        chat(stack, "chat-added")


def test_a_reload_envoy_does_not_apply_fails_and_the_old_config_keeps_serving(
    stack: Stack, base: Json
) -> None:
    config = with_added_provider_and_models(stack, base)
    config["reload"]["envoy_apply_timeout_seconds"] = 1
    cds = stack.gateway_config.reload.xds_directory / "cds.yaml"
    before = cds.read_text(encoding="utf-8")
    failed = metric(stack, "gateway_config_reloads_total", result="failed")
    stop_process(stack.envoy)
    try:
        answer = stack.reload(config)
    finally:
        stack.start_envoy()
    assert answer["result"] == "failed"
    (problem,) = answer["problems"]
    assert problem.startswith("Envoy did not apply the new config within 1s")
    # At least this one: the file watch may also have picked up the rewritten file (and failed
    # the same way) before the POST arrived.
    assert metric(stack, "gateway_config_reloads_total", result="failed") >= failed + 1
    # Envoy's files are the running config's again, and that config serves.
    assert cds.read_text(encoding="utf-8") == before
    assert chat(stack, "chat-openai") == "echo: hi"
    with pytest.raises(openai.NotFoundError):
        chat(stack, "chat-added")


# --- keys ------------------------------------------------------------------------------------


def test_a_rotated_client_key_is_refused_at_once_and_a_request_in_flight_completes(
    stack: Stack, base: Json
) -> None:
    gate = threading.Event()
    # Streams are held after their first piece; whole answers are not held.
    stack.fake.set_behaviour(stream_chunk_count=3, stream_gate=gate)
    config = base
    full = next(t for t in config["tenants"] if t["name"] == "full")
    full["api_key_sha256"] = [hash_key(NEW_KEY)]
    try:
        # A translated stream (its processor stream stays open) and a pass-through one, both
        # started with the old key and held by the provider across the swap.
        held = []
        for model in ("chat-anthropic", "chat-openai"):
            chunks = iter(
                stack.client(FULL_KEY).chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "held across"}], stream=True
                )
            )
            first = ""
            while not first:
                chunk = next(chunks)
                first = chunk.choices[0].delta.content or "" if chunk.choices else ""
            held.append((first, chunks))
        answer = stack.reload(config)
        assert answer["result"] == "success", answer
        assert answer["envoy_files"] == []  # a processor-only change: Envoy is left alone
        with pytest.raises(openai.AuthenticationError) as refused:
            chat(stack, "chat-vllm", FULL_KEY)
        assert refused.value.status_code == 401
        assert chat(stack, "chat-vllm", NEW_KEY) == "echo: hi"
        gate.set()
        for first, chunks in held:
            rest = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert first + rest == "echo: held across"
    finally:
        gate.set()


def test_sighup_reloads_a_rotated_provider_key_file(stack: Stack, base: Json) -> None:
    answer = stack.reload(with_added_provider_and_models(stack, base))
    assert answer["result"] == "success", answer
    try:
        key_file(stack).write_text(ROTATED_UPSTREAM_KEY, encoding="utf-8")
        before = stack.last_reload()["reload"]
        assert stack.processor is not None
        stack.processor.send_signal(signal.SIGHUP)
        answer = stack.wait_for_reload(before)
        assert (answer["result"], answer["trigger"]) == ("success", "signal")
        stack.fake.clear()
        assert chat(stack, "chat-added") == "echo: hi"
        (seen,) = stack.fake.requests
        assert seen.header("authorization") == f"Bearer {ROTATED_UPSTREAM_KEY}"
    finally:
        key_file(stack).write_text(ADDED_UPSTREAM_KEY, encoding="utf-8")


# --- removing and changing -------------------------------------------------------------------


def test_a_removed_model_answers_404_never_5xx_and_others_are_unaffected(
    stack: Stack, base: Json
) -> None:
    config = base
    config["models"] = [m for m in config["models"] if m["name"] != "chat-anthropic"]
    removed_cluster = model_route_ids(stack.gateway_config)["chat-anthropic"]
    assert removed_cluster in envoy_clusters(stack)
    gate = threading.Event()
    # Streams are held after their first piece; whole answers are not held.
    stack.fake.set_behaviour(stream_chunk_count=3, stream_gate=gate, latency_s=0.02)
    try:
        # A stream of the model being removed, held by the provider across the reload.
        chunks = iter(
            stack.client().chat.completions.create(
                model="chat-anthropic",
                messages=[{"role": "user", "content": "held to the end"}],
                stream=True,
            )
        )
        first = ""
        while not first:
            chunk = next(chunks)
            first = chunk.choices[0].delta.content or "" if chunk.choices else ""
        with Traffic(
            stack, ["chat-openai", "chat-anthropic", "chat-vllm"], streams=False
        ) as traffic:
            answer = stack.reload(config)
            assert answer["result"] == "success", answer
            assert answer["changes"] == "models removed: chat-anthropic"
            traffic.wait_for(30)
        gate.set()
        rest = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert first + rest == "echo: held to the end"
    finally:
        gate.set()
    outcomes = traffic.outcomes
    others = [o for o in outcomes if o.model != "chat-anthropic"]
    assert failures(others, frozenset()) == []
    removed = [o for o in outcomes if o.model == "chat-anthropic"]
    assert failures(removed, frozenset({(404, "model_not_found")})) == []
    assert removed[-1].status == 404  # the traffic ran on after the reload
    # Once nothing of the old config is in flight, its cluster leaves Envoy.
    wait_until(lambda: removed_cluster not in envoy_clusters(stack), what="cluster removal")
    assert stack.last_reload()["retiring_configs"] == 0


def test_a_model_moved_to_another_provider_sends_each_request_whole_to_one_of_them(
    stack: Stack, base: Json
) -> None:
    config = base
    moving = next(m for m in config["models"] if m["name"] == "chat-openai")
    moving["targets"] = [{"provider": "p-vllm", "model": "llama-moved"}]
    stack.fake.set_behaviour(latency_s=0.03)
    with Traffic(stack, ["chat-openai"], streams=False) as traffic:
        answer = stack.reload(config)
        assert answer["result"] == "success", answer
        traffic.wait_for(30)
    assert failures(traffic.outcomes, frozenset()) == []
    # Every request reached one provider exactly as that provider's config says: the route,
    # cluster and translation of one config, never a mix of the old and the new.
    openai_key = "Bearer " + UPSTREAM_KEYS["TEST_OPENAI_KEY"]
    seen = {"old": 0, "new": 0}
    for request in stack.fake.requests:
        if request.path == "/v1/chat/completions":
            assert (request.json["model"], request.header("authorization")) == (
                "gpt-up",
                openai_key,
            )
            seen["old"] += 1
        else:
            assert request.path == "/vllm/v1/chat/completions"
            assert (request.json["model"], request.header("authorization")) == (
                "llama-moved",
                None,
            )
            seen["new"] += 1
    assert seen["old"] > 0 and seen["new"] > 0


# --- the listener ----------------------------------------------------------------------------


def test_a_listener_change_applies_under_traffic_with_no_failed_request(
    stack: Stack, base: Json
) -> None:
    """A changed body limit changes Envoy's listener (its buffer limit): LDS replaces it and
    drains the old one's connections while the traffic's keep-alive connections carry on."""
    big = "x" * 40_000
    assert chat_text(stack, big) == f"echo: {big}"
    base["limits"]["max_body_bytes"] = 20_000
    stack.fake.set_behaviour(latency_s=0.02)
    with Traffic(stack, ["chat-openai", "chat-vllm"]) as traffic:
        answer = stack.reload(base)
        assert answer["result"] == "success", answer
        assert answer["changes"] == "sections changed: limits"
        traffic.wait_for(40)
    assert failures(traffic.outcomes, frozenset()) == []
    with pytest.raises(openai.APIStatusError) as refused:
        chat_text(stack, big)
    assert refused.value.status_code == 413
    # Envoy itself runs the new listener (the processor alone would also answer 413).
    assert active_listener(stack)["per_connection_buffer_limit_bytes"] == 20_000 + 1024 * 1024


def active_listener(stack: Stack) -> Json:
    dump = httpx.get(
        f"{stack.envoy_admin_url}/config_dump", params={"resource": "dynamic_listeners"}
    ).json()
    (listener,) = [c["active_state"]["listener"] for c in dump["configs"] if "active_state" in c]
    found: Json = listener
    return found


def chat_text(stack: Stack, text: str) -> str:
    reply = stack.client().chat.completions.create(
        model="chat-openai", messages=[{"role": "user", "content": text}]
    )
    return reply.choices[0].message.content or ""
