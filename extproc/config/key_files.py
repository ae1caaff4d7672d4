"""Files the config refers to for keys: tenants' digest files, read at load; the watch list.

`tenants[].api_key_sha256_file` holds SHA-256 digests of client keys, one a line (a Kubernetes
Secret mounted read-only); they are read by `load_config` (start-up, every reload,
`check-config`) and become keys of their tenant. Errors name the path and the line, never the
line's text: a raw key pasted by mistake must not reach a log.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml

from extproc.config.schema import SHA256_PATTERN, GatewayConfig

# A digest line is 65 bytes: this holds a quarter of a million keys, and stops a path to a
# huge file or a device from filling the processor's memory.
MAX_KEY_FILE_BYTES = 16 * 1024 * 1024
# Bad lines reported per file (the rest are counted).
_MAX_LINE_PROBLEMS = 5
_BAD_DIGEST = (
    "API key hashes must be 64 lower-case hex characters (use `extproc hash-key` to make one)"
)


class KeyFileError(Exception):
    """A digest file cannot be used; `problems` says why (each relative to the field)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_key_file(text: str) -> list[tuple[int, str]]:
    """The (line number, digest) pairs of a digest file's text; KeyFileError for bad lines.

    One digest a line; blank lines, `#` comment lines and `# ...` after a digest are ignored.
    """
    digests: list[tuple[int, str]] = []
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        if SHA256_PATTERN.match(value):
            digests.append((number, value))
        else:
            bad.append(number)
    if bad:
        problems = [f"line {n}: {_BAD_DIGEST}" for n in bad[:_MAX_LINE_PROBLEMS]]
        if len(bad) > _MAX_LINE_PROBLEMS:
            problems.append(f"{len(bad) - _MAX_LINE_PROBLEMS} more bad line(s)")
        raise KeyFileError(problems)
    return digests


def read_key_file(path: Path) -> list[tuple[int, str]]:
    """The (line number, digest) pairs of the digest file at `path`; KeyFileError."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise KeyFileError([f"{path} is larger than {MAX_KEY_FILE_BYTES // (1024 * 1024)} MiB"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError([f"{path} is not valid UTF-8"]) from None
    try:
        return parse_key_file(text)
    except KeyFileError as exc:
        raise KeyFileError([f"{path}: {p}" for p in exc.problems]) from None


def with_key_files(config: GatewayConfig) -> tuple[GatewayConfig, list[str], list[str]]:
    """`config` with every tenant's digest file read into it: (config, problems, warnings).

    A file without a digest is valid, but a warning (its tenant may then accept no key).
    """
    problems: list[str] = []
    warnings: list[str] = []
    tenants = list(config.tenants)
    for i, tenant in enumerate(tenants):
        path = tenant.api_key_sha256_file
        if path is None:
            continue
        where = f"tenants.{i}.api_key_sha256_file"
        try:
            digests = read_key_file(path)
        except KeyFileError as exc:
            problems += [f"{where}: {p}" for p in exc.problems]
            continue
        if not digests:
            if tenant.api_key_sha256 or tenant.keys:
                warnings.append(f"{where}: {path} holds no key digest")
            else:
                warnings.append(
                    f"{where}: {path} holds no key digest: tenant '{tenant.name}' accepts no "
                    "API key (every request gets 401) until it does"
                )
        tenants[i] = tenant.with_file_digests(tuple(digests))
    return config.model_copy(update={"tenants": tenants}), problems, warnings


# -- the watch list --------------------------------------------------------------------------


def referenced_files(data: Any) -> list[Path]:
    """Files a parsed (maybe invalid) config refers to for keys, in config order: providers'
    `api_key_file` and `aws_credentials_file`, tenants' `api_key_sha256_file`."""
    found: list[Path] = []
    if not isinstance(data, dict):
        return found
    for section, fields in (
        ("providers", ("api_key_file", "aws_credentials_file")),
        ("tenants", ("api_key_sha256_file",)),
    ):
        items = data.get(section)
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict):
                continue
            for name in fields:
                value = item.get(name)
                if isinstance(value, str) and value and Path(value) not in found:
                    found.append(Path(value))
    return found


def watched_files(config_path: Path) -> tuple[Path, ...]:
    """The config file and the key files its current content refers to (the config's own
    problems do not matter here: a broken config's files are watched too)."""
    try:
        data = yaml.safe_load(config_path.read_bytes())
    except (OSError, yaml.YAMLError):
        data = None
    return (config_path, *referenced_files(data))


def files_stamp(paths: tuple[Path, ...]) -> tuple[object, ...]:
    """What `stat` says of each file, following symlinks (cheap, for polling): a file
    replaced, rewritten or swapped behind a symlink (a Kubernetes Secret or ConfigMap
    update) changes it."""
    stamp: list[object] = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            stamp.append((str(path), None))
            continue
        stamp.append((str(path), info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(stamp)


def files_digest(paths: tuple[Path, ...]) -> str:
    """SHA-256 over the names and contents of the files (an unreadable one counts as such)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + b"\0")
        try:
            content = path.read_bytes()
        except OSError:
            digest.update(b"\1unreadable\0")
            continue
        digest.update(b"\2" + hashlib.sha256(content).digest())
    return digest.hexdigest()
