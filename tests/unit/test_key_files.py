"""Client key digests from files (`tenants[].api_key_sha256_file`): parsing, load errors with
their paths, duplicates across files and the config, empty files, `--skip-credentials`, and the
watch list the Reloader polls (the kubelet's `..data` symlink swap included)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config.key_files import (
    KeyFileError,
    files_digest,
    files_stamp,
    parse_key_file,
    referenced_files,
    watched_files,
)
from extproc.config.loading import ConfigError, LoadedConfig, load_config, parse_config
from extproc.decisions.auth import Authenticator
from extproc.errors import GatewayError
from extproc.governance.rules import RuleBook
from tests.secret_volume import SecretVolume

BAD_DIGEST = (
    "API key hashes must be 64 lower-case hex characters (use `extproc hash-key` to make one)"
)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config_data(tenants: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "providers": [{"name": "p1", "type": "vllm", "base_url": "http://127.0.0.1:9/v1"}],
        "models": [{"name": "m1", "targets": [{"provider": "p1", "model": "up"}]}],
        "tenants": tenants,
    }


def write_config(tmp: Path, tenants: list[dict[str, Any]]) -> Path:
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config_data(tenants)), encoding="utf-8")
    return path


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def tenant_of(loaded: LoadedConfig, key: str) -> tuple[str, str]:
    found = Authenticator(loaded.config).authenticate(f"Bearer {key}")
    return found.name, found.key_id


# --- parsing -----------------------------------------------------------------------------------


def test_a_file_holds_one_digest_a_line_with_blank_lines_and_comments() -> None:
    one, two = digest("k1"), digest("k2")
    text = f"# keys of team a\n\n{one}\n   {two}   # ci, rotated 2026-12\r\n\n"
    assert parse_key_file(text) == [(3, one), (4, two)]
    assert parse_key_file("") == []
    assert parse_key_file("# nothing yet\n\n") == []


def test_bad_lines_are_named_by_number_never_by_their_text() -> None:
    raw_key = "sk-a-raw-key-pasted-by-mistake"
    text = f"{digest('k1')}\n\n{raw_key}\n{digest('k2').upper()}\n"
    with pytest.raises(KeyFileError) as info:
        parse_key_file(text)
    assert info.value.problems == [f"line 3: {BAD_DIGEST}", f"line 4: {BAD_DIGEST}"]
    assert raw_key not in str(info.value) and digest("k2").upper() not in str(info.value)


def test_many_bad_lines_are_counted_after_the_first_five() -> None:
    with pytest.raises(KeyFileError) as info:
        parse_key_file("x\n" * 8)
    assert info.value.problems[-1] == "3 more bad line(s)"
    assert len(info.value.problems) == 6


# --- loading -----------------------------------------------------------------------------------


def test_digests_from_the_file_are_keys_of_the_tenant(tmp_path: Path) -> None:
    keys = tmp_path / "team-a.sha256"
    keys.write_text(f"{digest('from-file')}\n", encoding="utf-8")
    path = write_config(
        tmp_path,
        [
            {
                "name": "a",
                "api_key_sha256": [digest("inline")],
                "api_key_sha256_file": str(keys),
            },
            {"name": "b", "api_key_sha256_file": str(keys.with_name("b.sha256"))},
        ],
    )
    keys.with_name("b.sha256").write_text(f"{digest('only-b')}\n", encoding="utf-8")
    loaded = load_config(path)
    assert loaded.warnings == ()
    assert tenant_of(loaded, "from-file") == ("a", digest("from-file")[:12])
    assert tenant_of(loaded, "inline") == ("a", digest("inline")[:12])
    assert tenant_of(loaded, "only-b") == ("b", digest("only-b")[:12])
    with pytest.raises(GatewayError) as info:
        Authenticator(loaded.config).authenticate("Bearer not-listed")
    assert info.value.status == 401
    # The key ids of file keys are known to the limits (and `/usage`) like any other.
    (tenant_a, _) = loaded.config.tenants
    assert [k.key_id for k in tenant_a.all_keys()] == [
        digest("inline")[:12],
        digest("from-file")[:12],
    ]
    RuleBook(loaded.config)  # builds with the file keys


def test_a_tenant_needs_a_key_a_file_counts() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_data([{"name": "a"}]))
    assert info.value.problems == [
        "tenants.0: a tenant needs at least one key (api_key_sha256, api_key_sha256_file or keys)"
    ]
    parse_config(config_data([{"name": "a", "api_key_sha256_file": "/nowhere"}]))


def test_an_unreadable_file_is_a_load_error_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.sha256"
    path = write_config(tmp_path, [{"name": "a", "api_key_sha256_file": str(missing)}])
    assert load_problems(path) == [
        f"tenants.0.api_key_sha256_file: cannot read {missing}: No such file or directory"
    ]
    missing.write_bytes(b"\xff\xfe not text")
    assert load_problems(path) == [f"tenants.0.api_key_sha256_file: {missing} is not valid UTF-8"]


def test_a_bad_line_is_a_load_error_with_the_path_and_the_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team a\n{digest('k')}\nsk-raw-key\n", encoding="utf-8")
    path = write_config(tmp_path, [{"name": "a", "api_key_sha256_file": str(keys)}])
    problems = load_problems(path)
    assert problems == [f"tenants.0.api_key_sha256_file: {keys}: line 3: {BAD_DIGEST}"]
    assert "sk-raw-key" not in problems[0]


def test_a_digest_used_twice_across_files_and_the_config_is_a_duplicate(tmp_path: Path) -> None:
    shared, inline = digest("shared"), digest("inline")
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text(f"{shared}\n{inline}\n", encoding="utf-8")
    second.write_text(f"# b\n{digest('b')}\n{shared}\n{digest('b')}\n", encoding="utf-8")
    path = write_config(
        tmp_path,
        [
            {"name": "a", "api_key_sha256": [inline], "api_key_sha256_file": str(first)},
            {"name": "b", "api_key_sha256_file": str(second)},
        ],
    )
    problems = load_problems(path)
    assert problems == [
        "tenants.0.api_key_sha256_file: line 2: key already used by this tenant",
        "tenants.1.api_key_sha256_file: line 3: key already used by 'a'",
        "tenants.1.api_key_sha256_file: line 4: key already used by this tenant",
    ]
    for problem in problems:  # never a whole digest
        assert shared not in problem and inline not in problem and digest("b") not in problem


def test_an_empty_file_loads_with_a_warning_and_its_tenant_accepts_no_key(
    tmp_path: Path,
) -> None:
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.write_text("# all keys of team a revoked\n", encoding="utf-8")
    other.write_text("", encoding="utf-8")
    path = write_config(
        tmp_path,
        [
            {"name": "a", "api_key_sha256_file": str(empty)},
            {"name": "b", "api_key_sha256": [digest("b")], "api_key_sha256_file": str(other)},
        ],
    )
    loaded = load_config(path)
    assert loaded.warnings == (
        f"tenants.0.api_key_sha256_file: {empty} holds no key digest: tenant 'a' accepts no "
        "API key (every request gets 401) until it does",
        f"tenants.1.api_key_sha256_file: {other} holds no key digest",
    )
    assert loaded.config.tenants[0].all_keys() == []
    assert tenant_of(loaded, "b")[0] == "b"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_reads_the_files_unless_credentials_are_skipped(tmp_path: Path) -> None:
    missing = tmp_path / "client-keys" / "team-a"
    path = write_config(tmp_path, [{"name": "a", "api_key_sha256_file": str(missing)}])
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert f"tenants.0.api_key_sha256_file: cannot read {missing}" in result.stderr
    skipped = run_cli("check-config", "--skip-credentials", str(path))
    assert skipped.returncode == 0, skipped.stderr
    assert load_config(path, resolve_credentials=False).config.tenants[0].all_keys() == []
    missing.parent.mkdir()
    missing.write_text("\n", encoding="utf-8")
    warned = run_cli("check-config", str(path))
    assert warned.returncode == 0, warned.stderr
    assert f"{path}: warning: tenants.0.api_key_sha256_file: {missing} holds no" in warned.stderr


def test_the_schema_documents_the_field() -> None:
    result = run_cli("config-schema")
    assert result.returncode == 0, result.stderr
    assert "api_key_sha256_file" in result.stdout
    assert "_file_digests" not in result.stdout


# --- the watch list ------------------------------------------------------------------------------


def test_the_watch_list_is_every_key_file_of_the_config_even_a_broken_one(
    tmp_path: Path,
) -> None:
    data: Any = {
        "providers": [
            {"name": "p", "api_key_file": "/run/secrets/p"},
            {"name": "q", "aws_credentials_file": "/run/aws"},
            "nonsense",
            {"name": "r", "api_key_file": 7},
        ],
        "tenants": [
            {"name": "a", "api_key_sha256_file": "/etc/llm-gateway-client-keys/a"},
            {"name": "b", "api_key_sha256_file": "/run/secrets/p"},
        ],
        "models": "not even a list",
    }
    assert referenced_files(data) == [
        Path("/run/secrets/p"),
        Path("/run/aws"),
        Path("/etc/llm-gateway-client-keys/a"),
    ]
    assert referenced_files(None) == [] and referenced_files({"tenants": "x"}) == []
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert watched_files(config) == (config, *referenced_files(data))
    config.write_text("{ not: yaml", encoding="utf-8")
    assert watched_files(config) == (config,)
    assert watched_files(tmp_path / "absent.yaml") == (tmp_path / "absent.yaml",)


def test_a_kubelet_secret_update_changes_the_stamp_and_the_digest(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "client-keys")
    first = volume.update({"team-a": f"{digest('old')}\n", "team-b": f"{digest('b')}\n"})
    path = volume.path("team-a")
    assert path.is_symlink() and (tmp_path / "client-keys" / "..data").is_symlink()
    assert path.resolve() == first / "team-a"
    watched = (path, volume.path("team-b"))
    stamp, content = files_stamp(watched), files_digest(watched)
    assert files_stamp(watched) == stamp  # nothing changed: polling sees nothing

    second = volume.update({"team-a": f"{digest('new')}\n", "team-b": f"{digest('b')}\n"})
    assert path.resolve() == second / "team-a" and not first.exists()
    assert files_stamp(watched) != stamp
    assert files_digest(watched) != content
    assert path.read_text(encoding="utf-8") == f"{digest('new')}\n"

    # The same content again (a resync): the stamp moves, the content digest does not.
    stamp, content = files_stamp(watched), files_digest(watched)
    volume.update({"team-a": f"{digest('new')}\n", "team-b": f"{digest('b')}\n"})
    assert files_stamp(watched) != stamp
    assert files_digest(watched) == content

    # A key removed from the Secret: its symlink goes, which is a change too.
    volume.update({"team-a": f"{digest('new')}\n"})
    assert not volume.path("team-b").exists()
    assert files_digest(watched) != content


def test_a_config_reads_its_tenant_keys_through_the_kubelet_layout(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "client-keys")
    volume.update({"team-a": f"{digest('old')}\n"})
    path = write_config(
        tmp_path, [{"name": "a", "api_key_sha256_file": str(volume.path("team-a"))}]
    )
    assert tenant_of(load_config(path), "old")[0] == "a"
    volume.update({"team-a": f"{digest('new')}\n"})
    loaded = load_config(path)
    assert tenant_of(loaded, "new")[0] == "a"
    with pytest.raises(GatewayError):
        tenant_of(loaded, "old")
