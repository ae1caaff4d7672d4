"""An example policy server for the gateway's `grpc` policy: the model a platform team copies.

It serves `llm_gateway.policy.v1.PolicyService` (proto/llm_gateway/policy/v1/policy.proto) with a
few rules chosen on the command line, and writes every CompletionNotice to a JSON-lines file:

    .venv/bin/python examples/policy_server.py --deny-word secret --cap-max-tokens 512 \\
        --tag team=ml --header-tag x-team=team --completions /tmp/completions.jsonl

On start it prints one line, `policy server listening on HOST:PORT`; it stops on SIGTERM/SIGINT.
docs/policy-service.md explains the service and how to run this beside the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import IO, Any

import grpc
from google.protobuf import json_format

from llm_gateway.policy.v1 import policy_pb2, policy_pb2_grpc

DENY_MESSAGE = "the request mentions a forbidden topic"
# The gateway refuses other tag names (and values over 256 characters) as an invalid decision.
TAG_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
# The gateway sends requests as large as its body limit (at most 64 MiB); gRPC's default is 4 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Rules:
    """What the server decides, from the command line."""

    deny_words: tuple[str, ...] = ()  # lower-case
    system_prompt: str | None = None
    cap_max_tokens: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    header_tags: dict[str, str] = field(default_factory=dict)  # header name -> tag name
    delay_seconds: float = 0.0


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message: its string content, or the text of its text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def decide(rules: Rules, request: policy_pb2.CheckRequest) -> policy_pb2.CheckResponse:
    """The decision on one request: deny on a forbidden word, else modify as the rules say."""
    if rules.deny_words:
        text = " ".join(
            message_text(json_format.MessageToDict(m)) for m in request.messages
        ).lower()
        if any(word in text for word in rules.deny_words):
            deny = policy_pb2.Deny(status=403, code="policy_denied", message=DENY_MESSAGE)
            return policy_pb2.CheckResponse(deny=deny)

    modify = policy_pb2.Modify()
    if rules.system_prompt:
        modify.system_prompt = rules.system_prompt
    cap = rules.cap_max_tokens
    if cap is not None and (not request.HasField("max_tokens") or request.max_tokens > cap):
        modify.max_tokens = cap
    modify.tags.update(rules.tags)
    for header, tag in rules.header_tags.items():
        if header in request.headers:
            modify.tags[tag] = request.headers[header]

    if not modify.ListFields():  # nothing to change
        return policy_pb2.CheckResponse(allow=policy_pb2.Allow())
    return policy_pb2.CheckResponse(modify=modify)


class PolicyService(policy_pb2_grpc.PolicyServiceServicer):
    """The gRPC service: `Check` applies the rules, `Completed` appends to the completions file."""

    def __init__(self, rules: Rules, completions: IO[str] | None) -> None:
        self.rules = rules
        self.completions = completions

    async def Check(  # noqa: N802 - gRPC method name
        self, request: policy_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.CheckResponse:
        """Decide on a request (after `--delay-ms`, to exercise the gateway's deadline)."""
        if self.rules.delay_seconds:
            await asyncio.sleep(self.rules.delay_seconds)
        return decide(self.rules, request)

    async def Completed(  # noqa: N802 - gRPC method name
        self, request: policy_pb2.CompletionNotice, context: grpc.aio.ServicerContext[Any, Any]
    ) -> policy_pb2.CompletionAck:
        """Record how a request ended: one JSON object per line (proto3 JSON: int64 as strings)."""
        if self.completions is not None:
            record = json_format.MessageToDict(
                request,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
            # A small synchronous write; a real server would hand it to a queue or a database.
            self.completions.write(json.dumps(record, sort_keys=True) + "\n")
            self.completions.flush()
        return policy_pb2.CompletionAck()


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address", default="127.0.0.1:50070", help="HOST:PORT to listen on (port 0: any free)"
    )
    parser.add_argument(
        "--deny-word",
        action="append",
        default=[],
        metavar="WORD",
        help="deny a request whose message text contains WORD, case-insensitively (repeatable)",
    )
    parser.add_argument("--system-prompt", metavar="TEXT", help="put TEXT before the messages")
    parser.add_argument(
        "--cap-max-tokens", type=int, metavar="N", help="cap the request's max_tokens at N"
    )
    parser.add_argument(
        "--tag", action="append", type=_key_value, default=[], metavar="K=V", help="tag requests"
    )
    parser.add_argument(
        "--header-tag",
        action="append",
        type=_key_value,
        default=[],
        metavar="HEADER=TAG",
        help="tag a request with the value of a forwarded header (repeatable)",
    )
    parser.add_argument("--delay-ms", type=int, default=0, metavar="N", help="wait N ms per Check")
    parser.add_argument(
        "--completions", metavar="FILE", help="append each CompletionNotice to FILE as JSON"
    )
    args = parser.parse_args(argv)
    if args.cap_max_tokens is not None and args.cap_max_tokens < 1:
        parser.error("--cap-max-tokens must be at least 1")
    if args.delay_ms < 0:
        parser.error("--delay-ms must not be negative")
    for name, _ in args.tag:
        if not TAG_NAME.match(name):
            parser.error(f"--tag: {name!r} is not a tag name ({TAG_NAME.pattern})")
    for _, name in args.header_tag:
        if not TAG_NAME.match(name):
            parser.error(f"--header-tag: {name!r} is not a tag name ({TAG_NAME.pattern})")
    return args


async def serve(args: argparse.Namespace, completions: IO[str] | None) -> None:
    """Listen, print the address, and serve until SIGTERM or SIGINT."""
    rules = Rules(
        deny_words=tuple(word.lower() for word in args.deny_word),
        system_prompt=args.system_prompt,
        cap_max_tokens=args.cap_max_tokens,
        tags=dict(args.tag),
        header_tags={header.lower(): tag for header, tag in args.header_tag},
        delay_seconds=args.delay_ms / 1000,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing
        ]
    )
    service = PolicyService(rules, completions)
    # grpcio-tools writes no type stubs for the gRPC module.
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(args.address)  # the bound port, for port 0
    await server.start()
    host = args.address.rpartition(":")[0]
    print(f"policy server listening on {host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=2)  # calls in flight get 2 s to finish


def main(argv: list[str] | None = None) -> int:
    """Run the server."""
    args = parse_args(argv)
    if args.completions is None:
        asyncio.run(serve(args, None))
    else:
        # Appended to, a line per notice (flushed, so it is in the file when Completed answers).
        with open(args.completions, "a", encoding="utf-8") as completions:
            asyncio.run(serve(args, completions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
