"""The `extproc` command line: serve, check-config, config-schema, render-envoy, hash-key,
drain and wait-envoy-exit (the shutdown hooks), run-local.

Each sub-command is a small function; exit codes: 0 success, 1 runtime failure,
2 bad usage or an unusable configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from extproc.config.loading import ConfigError, load_config, parse_config
from extproc.config.schema import GatewayConfig

log = logging.getLogger("extproc")


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.config, resolve_credentials=not args.skip_credentials)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    config = loaded.config
    print(
        f"{args.config}: OK ({len(config.providers)} providers, {len(config.models)} models, "
        f"{len(config.tenants)} tenants, auth {'on' if config.auth.enabled else 'OFF'})"
    )
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(GatewayConfig.model_json_schema(), indent=2))
    return 0


def _cmd_render_envoy(args: argparse.Namespace) -> int:
    from extproc.bootstrap import render_static_yaml, render_yaml, write_xds_files, xds_files

    try:
        loaded = load_config(args.config, resolve_credentials=False)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    config = loaded.config
    text = render_static_yaml(config) if args.static else render_yaml(config)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    if args.xds_dir is not None:
        files = xds_files([config])
        try:
            write_xds_files(Path(args.xds_dir), files)
        except OSError as exc:
            print(f"cannot write {args.xds_dir}: {exc.strerror}", file=sys.stderr)
            return 1
        names = ", ".join(f.name for f in files)
        print(f"wrote {names} into {args.xds_dir}", file=sys.stderr)
    return 0


def _cmd_write_xds(args: argparse.Namespace) -> int:
    """Render Envoy's files for sets of configs read as JSON on stdin, write the first set.

    Reads `{"sets": [[config, ...], ...]}`; writes the first set's files into its first
    config's `reload.xds_directory`; prints `{"written": [file], "sets": [[{"name", "version",
    "text"}, ...], ...]}` so the processor can write a later set itself. The processor runs this
    as a child process, so the renderer's imports and CPU never reach its event loop.
    """
    from extproc.bootstrap import write_xds_files, xds_files

    try:
        request = json.loads(sys.stdin.buffer.read())
        sets = [[parse_config(data, "stdin") for data in configs] for configs in request["sets"]]
        if not sets or not all(sets):
            raise ValueError("no configs")
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        print(f"unusable request: {exc}", file=sys.stderr)
        return 2
    rendered = [xds_files(configs) for configs in sets]
    directory = sets[0][0].reload.xds_directory
    try:
        written = write_xds_files(directory, rendered[0])
    except OSError as exc:
        print(f"cannot write {directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    answer = {
        "written": written,
        "sets": [
            [{"name": f.name, "version": f.version, "text": f.text} for f in files]
            for files in rendered
        ],
    }
    json.dump(answer, sys.stdout)
    return 0


def _cmd_hash_key(args: argparse.Namespace) -> int:
    from extproc.decisions.auth import hash_key

    key = args.key
    if key is None:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = key.strip()
    if not key:
        print("no key given", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s: %s", exc.source, problem)
        return 2
    from extproc.server.serve import serve
    from extproc.telemetry.access_log import configure_logging

    telemetry = loaded.config.telemetry
    configure_logging(args.log_level or telemetry.log_level, telemetry.log_format)
    for warning in loaded.warnings:
        log.warning("%s: %s", loaded.source, warning)

    try:
        if loaded.config.processor.event_loop == "uvloop":
            import uvloop

            uvloop.run(serve(loaded))
        else:
            asyncio.run(serve(loaded))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


def _config_or_none(path: str) -> GatewayConfig | None:
    """The config at `path` (credentials not needed), or None after logging its problems."""
    try:
        return load_config(path, resolve_credentials=False).config
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s: %s", exc.source, problem)
        return None


def _cmd_drain(args: argparse.Namespace) -> int:
    from extproc.server.envoy_admin import EnvoyAdmin, drain_envoy

    config = _config_or_none(args.config)
    if config is None:
        return 2
    grace = config.processor.shutdown_grace_seconds if args.grace is None else args.grace
    outcome = drain_envoy(EnvoyAdmin.for_config(config), grace=grace, delay=args.delay)
    return 0 if outcome.complete else 1


def _cmd_wait_envoy_exit(args: argparse.Namespace) -> int:
    from extproc.server.envoy_admin import EnvoyAdmin, wait_for_envoy_exit

    config = _config_or_none(args.config)
    if config is None:
        return 2
    if wait_for_envoy_exit(EnvoyAdmin.for_config(config), args.timeout):
        log.info("Envoy is not running (its admin refuses connections)")
        return 0
    log.warning("Envoy still answers after %.0fs", args.timeout)
    return 1


def _cmd_run_local(args: argparse.Namespace) -> int:
    from extproc.dev.local import run_local

    return run_local(Path(args.config), fake_port=args.fake_port)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(prog="extproc", description="LLM gateway ext_proc service")
    parser.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING or ERROR (default: `telemetry.log_level` for serve, else INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the ext_proc gRPC service")
    p.add_argument("--config", required=True)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file and report every problem")
    p.add_argument("config")
    p.add_argument(
        "--skip-credentials",
        action="store_true",
        help="do not read provider credentials (env vars / files) nor tenants' "
        "api_key_sha256_file (e.g. in CI, where the Secrets are absent)",
    )
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("config-schema", help="print the config JSON schema")
    p.set_defaults(func=_cmd_config_schema)

    p = sub.add_parser("render-envoy", help="write the Envoy bootstrap for a config")
    p.add_argument("--config", required=True)
    p.add_argument("--output", "-o", default=None, help="file to write (default: stdout)")
    p.add_argument(
        "--xds-dir",
        default=None,
        help="also write the listener, routes and clusters files (LDS, RDS, CDS) into this "
        "directory; the bootstrap reads them from the config's reload.xds_directory",
    )
    p.add_argument(
        "--static",
        action="store_true",
        help="write everything into one static bootstrap instead (no hot reload; for "
        "`envoy --mode validate`, which does not read the dynamic files)",
    )
    p.set_defaults(func=_cmd_render_envoy)

    p = sub.add_parser(
        "write-xds", help="(used by the processor) write Envoy's xDS files for configs on stdin"
    )
    p.set_defaults(func=_cmd_write_xds)

    p = sub.add_parser("hash-key", help="print the SHA-256 of an API key for the config")
    p.add_argument("key", nargs="?", help="the key (default: read from stdin / prompt)")
    p.set_defaults(func=_cmd_hash_key)

    p = sub.add_parser(
        "drain",
        help="drain Envoy for shutdown: fail its health checks, close its listeners after "
        "--delay, wait for in-flight requests (Envoy's preStop hook)",
    )
    p.add_argument("--config", required=True)
    p.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds new connections are still accepted (each told to close) before the "
        "listeners close (default 0)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds to wait for in-flight requests (default processor.shutdown_grace_seconds)",
    )
    p.set_defaults(func=_cmd_drain)

    p = sub.add_parser(
        "wait-envoy-exit",
        help="wait until Envoy's admin stops answering (the processor's preStop hook: it "
        "must outlive Envoy's in-flight requests)",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--timeout", type=float, required=True, help="give up after this many seconds")
    p.set_defaults(func=_cmd_wait_envoy_exit)

    p = sub.add_parser(
        "run-local", help="run fake provider + processor + Envoy together (what `make run` does)"
    )
    p.add_argument("--config", default="examples/gateway.yaml")
    p.add_argument("--fake-port", type=int, default=18000)
    p.set_defaults(func=_cmd_run_local)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `extproc` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level or "INFO").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
