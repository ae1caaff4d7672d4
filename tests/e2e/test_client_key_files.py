"""End to end: a tenant's client keys from a mounted Secret (`api_key_sha256_file`), rotated
the way the kubelet updates the volume, through the real Envoy with the openai SDK.

The processor's watch polls the config file and the key files it refers to; the tests wait for
its reloads through `GET /reload` (the count of reloads), never for a fixed time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from extproc.decisions.auth import hash_key
from tests.e2e.conftest import Stack, make_stack
from tests.secret_volume import SecretVolume

pytestmark = pytest.mark.e2e

FIRST_KEY = "sk-from-secret-first"
SECOND_KEY = "sk-from-secret-second"
NOT_LISTED_KEY = "sk-never-in-the-secret"


def key_lines(*keys: str) -> str:
    return "# client keys of tenant 'mounted'\n" + "".join(f"{hash_key(k)}\n" for k in keys)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> SecretVolume:
    made = SecretVolume(tmp_path_factory.mktemp("secret") / "client-keys")
    made.update({"mounted": key_lines(FIRST_KEY)})
    return made


@pytest.fixture(scope="module")
def keys_stack(tmp_path_factory: pytest.TempPathFactory, volume: SecretVolume) -> Iterator[Stack]:
    def customize(config: dict[str, Any]) -> None:
        config["reload"]["watch_interval_seconds"] = 0.2
        config["tenants"].append(
            {
                "name": "mounted",
                "api_key_sha256_file": str(volume.path("mounted")),
                "allowed_models": ["chat-openai"],
            }
        )

    with make_stack(tmp_path_factory.mktemp("keys"), customize=customize) as stack:
        yield stack


def chat(stack: Stack, key: str) -> str:
    reply = stack.client(key).chat.completions.create(
        model="chat-openai", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content or ""


def reloads_so_far(stack: Stack) -> int:
    """How many reloads the processor has finished (none yet: no `reload` in the answer)."""
    answer = stack.last_reload()
    return int(answer["reload"]) if answer["result"] is not None else 0


def refused(stack: Stack, key: str) -> int:
    """The status of a request with `key` that must be refused."""
    with pytest.raises(openai.APIStatusError) as info:
        chat(stack, key)
    return info.value.status_code


def test_keys_from_a_secret_work_and_rotate_with_the_volume(
    keys_stack: Stack, volume: SecretVolume
) -> None:
    stack = keys_stack
    assert chat(stack, FIRST_KEY) == "echo: hi"
    assert refused(stack, NOT_LISTED_KEY) == 401
    assert refused(stack, SECOND_KEY) == 401

    # Rotation, step 1: the new key added beside the old one (a new Secret version).
    before = reloads_so_far(stack)
    volume.update({"mounted": key_lines(FIRST_KEY, SECOND_KEY)})
    answer = stack.wait_for_reload(before)
    assert (answer["result"], answer["trigger"]) == ("success", "file"), answer
    assert answer["changes"] == "tenants changed: mounted"
    assert chat(stack, SECOND_KEY) == "echo: hi"
    assert chat(stack, FIRST_KEY) == "echo: hi"

    # Step 2: the old key removed: 401 from this reload on.
    before = answer["reload"]
    volume.update({"mounted": key_lines(SECOND_KEY)})
    answer = stack.wait_for_reload(before)
    assert (answer["result"], answer["trigger"]) == ("success", "file"), answer
    assert chat(stack, SECOND_KEY) == "echo: hi"
    assert refused(stack, FIRST_KEY) == 401


def test_a_broken_secret_version_is_refused_and_the_keys_in_force_keep_working(
    keys_stack: Stack, volume: SecretVolume
) -> None:
    stack = keys_stack
    in_force = Path(volume.path("mounted")).read_text(encoding="utf-8")
    working = SECOND_KEY if hash_key(SECOND_KEY) in in_force else FIRST_KEY
    assert chat(stack, working) == "echo: hi"
    before = reloads_so_far(stack)
    volume.update({"mounted": f"{hash_key(working)}\nsk-a-raw-key-by-mistake\n"})
    answer = stack.wait_for_reload(before)
    assert (answer["result"], answer["trigger"]) == ("rejected", "file"), answer
    assert answer["problems"] == [
        f"tenants.2.api_key_sha256_file: {volume.path('mounted')}: line 2: API key hashes must "
        "be 64 lower-case hex characters (use `extproc hash-key` to make one)"
    ]
    assert chat(stack, working) == "echo: hi"
    assert refused(stack, NOT_LISTED_KEY) == 401
    # Neither the bad line nor a whole digest reached the processor's log.
    assert stack.processor_log is not None
    log = stack.processor_log.read_text(encoding="utf-8")
    assert "config reload rejected (file)" in log
    assert "sk-a-raw-key-by-mistake" not in log and hash_key(working) not in log

    # Fixed in the next version: it reloads again.
    before = answer["reload"]
    volume.update({"mounted": key_lines(working)})
    answer = stack.wait_for_reload(before)
    assert (answer["result"], answer["trigger"]) == ("success", "file"), answer
    assert chat(stack, working) == "echo: hi"
