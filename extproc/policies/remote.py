"""The `grpc` policy: a platform team's own server decides, over `llm_gateway.policy.v1`.

Owns the conversion between the policy API (`api.py`) and the proto's messages, and the pool of
gRPC channels every `RemotePolicy` shares (a config reload builds new instances on the same
channels). It never logs: request content and header values must not reach a log from here.
`docs/policy-service.md` is the guide; `proto/llm_gateway/policy/v1/policy.proto` the contract.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import grpc
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from extproc.policies.api import (
    ALLOW,
    MAX_MESSAGE_CHARS,
    MAX_TAG_VALUE_CHARS,
    TAG_PATTERN,
    Completion,
    Decision,
    Deny,
    Modify,
    Policy,
    PolicyRequest,
)
from llm_gateway.policy.v1 import policy_pb2, policy_pb2_grpc

# An HTTP header name (RFC 9110 token, lower-case), or an HTTP/2 pseudo-header such as ":authority".
_HEADER_NAME = re.compile(r"^:?[!#$%&'*+.^_`|~0-9a-z-]+$")
# The caller's credentials stay in the gateway.
_NEVER_FORWARDED = frozenset({"authorization", "proxy-authorization"})
# Matches the largest request body the gateway accepts (config `limits.max_body_bytes`, at most
# 64 MiB): a CheckRequest carries the messages, a Modify may carry new ones.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # Ping a connection with calls in flight every 5 minutes, the most often that stock gRPC
    # servers (Go's, C-core's) accept; never ping an idle one, which they answer with GOAWAY.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Close a connection idle for 4 minutes rather than find it cut by a NAT or load balancer
    # (commonly after 350 s) on the next request; the next call reconnects.
    ("grpc.client_idle_timeout_ms", 240_000),
    # A restarted server is used again within seconds (the default backoff grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
)


class RemotePolicyOptions(BaseModel):
    """The options of a `grpc` policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The server's gRPC target: "host:port", "dns:///host:port" or "unix:/path/to/socket".
    address: str
    # TLS with the system's root CAs (no client certificate); plaintext otherwise.
    tls: bool = False
    # The deadline of each Check (and Completed) call.
    deadline_ms: Annotated[int, Field(ge=1, le=60_000)] = 100
    # False: CheckRequest carries no messages (nor embeddings' "input"), for identity-only servers.
    send_messages: bool = True
    # Request headers forwarded in CheckRequest.headers (names; lower-cased here).
    headers: list[str] = Field(default_factory=list)
    # Send a CompletionNotice for every request the policy checked.
    notify_completion: bool = False
    # Have the gateway read buffered answers so CompletionNotice.answer carries their text.
    wants_answer: bool = False

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        value = value.strip()
        if not value or any(char.isspace() for char in value):
            raise ValueError("address must be a gRPC target such as host:port or unix:/path")
        if value.startswith(("http://", "https://")):
            raise ValueError("address is a gRPC target (host:port or unix:/path), not a URL")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: list[str]) -> list[str]:
        names = list(dict.fromkeys(name.strip().lower() for name in value))
        for name in names:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name in _NEVER_FORWARDED:
                raise ValueError(f"{name} carries the caller's credentials: it is never forwarded")
        return names

    @model_validator(mode="after")
    def _answer_needs_notices(self) -> RemotePolicyOptions:
        if self.wants_answer and not self.notify_completion:
            raise ValueError("wants_answer needs notify_completion (the answer is sent in it)")
        return self


class RemotePolicy(Policy):
    """A policy whose decisions a gRPC `PolicyService` server makes (config name `grpc`).

    `check` sends a CheckRequest under `deadline_ms` and returns the server's decision; a failed
    or late call and an invalid decision raise (the policy chain applies the policy's `on_error`).
    Numbers in a Modify's messages come back as floats (google.protobuf.Struct has no integers).
    """

    Options: ClassVar[type[BaseModel]] = RemotePolicyOptions

    def __init__(self, options: RemotePolicyOptions) -> None:
        super().__init__(options)
        self.headers = frozenset(options.headers)
        self.wants_answer = options.wants_answer
        self._address = options.address
        self._tls = options.tls
        self._timeout = options.deadline_ms / 1000
        self._send_messages = options.send_messages
        self._forwarded = tuple(options.headers)
        self._notify = options.notify_completion

    def channel(self) -> grpc.aio.Channel:
        """The channel to this policy's server, shared by every policy with the same address."""
        return _pool.channel(self._address, self._tls)

    async def check(self, request: PolicyRequest) -> Decision:
        """Ask the server; raises `grpc.aio.AioRpcError` or `ValueError` when it cannot answer."""
        message = check_request(request, self._forwarded, send_messages=self._send_messages)
        stub = _pool.stub(self._address, self._tls)
        response = await stub.Check(message, timeout=self._timeout)
        return decision_from(response)

    async def completed(self, completion: Completion) -> None:
        """Send the server a CompletionNotice, when `notify_completion` is on."""
        if not self._notify:
            return
        stub = _pool.stub(self._address, self._tls)
        await stub.Completed(completion_notice(completion), timeout=self._timeout)


def check_request(
    request: PolicyRequest, forwarded: tuple[str, ...], *, send_messages: bool
) -> policy_pb2.CheckRequest:
    """The CheckRequest for `request`, with the `forwarded` headers it has."""
    headers = request.headers
    message = policy_pb2.CheckRequest(
        request_id=request.request_id,
        tenant=request.tenant,
        key_id=request.key_id,
        model=request.model,
        endpoint=request.endpoint,
        provider=request.provider,
        upstream_model=request.upstream_model,
        max_tokens=request.max_tokens,
        stream=request.stream,
        headers={name: headers[name] for name in forwarded if name in headers},
        tags=request.tags,
    )
    params: Mapping[str, Any] = request.params
    if send_messages:
        for chat_message in request.messages:
            message.messages.add().update(chat_message)
    elif "input" in params and request.endpoint == "embeddings":
        params = {name: value for name, value in params.items() if name != "input"}
    if params:
        message.params.update(params)
    return message


def decision_from(response: policy_pb2.CheckResponse) -> Decision:
    """The policy API's decision for a server's CheckResponse; ValueError when it is invalid."""
    kind = response.WhichOneof("decision")
    if kind == "deny":
        deny = response.deny
        return Deny(
            message=deny.message[:MAX_MESSAGE_CHARS],
            status=deny.status or 403,
            code=deny.code or "policy_denied",
        )
    if kind == "modify":
        return _modify_from(response.modify)
    return ALLOW


def _modify_from(modify: policy_pb2.Modify) -> Modify:
    max_tokens = modify.max_tokens if modify.HasField("max_tokens") else None
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"Modify.max_tokens must be at least 1, not {max_tokens}")
    messages: list[dict[str, Any]] | None = None
    if modify.replace_messages:
        if not modify.messages:
            raise ValueError("Modify.replace_messages with no messages")
        messages = [json_format.MessageToDict(chat_message) for chat_message in modify.messages]
    elif modify.messages:
        raise ValueError("Modify.messages without replace_messages")
    tags = dict(modify.tags)
    for name, value in tags.items():
        if not TAG_PATTERN.match(name):
            raise ValueError(f"Modify.tags: {name[:64]!r} does not match {TAG_PATTERN.pattern}")
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise ValueError(
                f"Modify.tags: the value of {name} is over {MAX_TAG_VALUE_CHARS} chars"
            )
    return Modify(
        max_tokens=max_tokens,
        model=modify.model or None,
        messages=messages,
        system_prompt=modify.system_prompt or None,
        set_headers=dict(modify.set_headers),
        tags=tags,
    )


def completion_notice(completion: Completion) -> policy_pb2.CompletionNotice:
    """The CompletionNotice for `completion`."""
    return policy_pb2.CompletionNotice(
        request_id=completion.request_id,
        tenant=completion.tenant,
        key_id=completion.key_id,
        model=completion.model,
        provider=completion.provider,
        status=completion.status,
        code=completion.code,
        stream=completion.stream,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cached_tokens=completion.cached_tokens,
        cost=completion.cost,
        cache_hit=completion.cache_hit,
        duration_seconds=completion.duration_seconds,
        tags=completion.tags,
        answer=completion.answer,
    )


class _ChannelPool:
    """One channel (and stub) per (address, tls), opened on first use on the running loop.

    Never at import or config load: checking a config must not open connections. A grpc.aio
    channel belongs to the event loop that made it, so a new loop (a test's) starts a new pool.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stubs: dict[tuple[str, bool], tuple[grpc.aio.Channel, Any]] = {}

    def _entry(self, address: str, tls: bool) -> tuple[grpc.aio.Channel, Any]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._stubs = loop, {}
        entry = self._stubs.get((address, tls))
        if entry is None:
            if tls:
                credentials = grpc.ssl_channel_credentials()
                channel = grpc.aio.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            # grpcio-tools writes no type stubs for the gRPC module: its stub is untyped.
            stub = policy_pb2_grpc.PolicyServiceStub(channel)  # type: ignore[no-untyped-call]
            entry = self._stubs[(address, tls)] = (channel, stub)
        return entry

    def channel(self, address: str, tls: bool) -> grpc.aio.Channel:
        """The channel to `address`."""
        return self._entry(address, tls)[0]

    def stub(self, address: str, tls: bool) -> Any:
        """The PolicyService stub on the channel to `address`."""
        return self._entry(address, tls)[1]

    async def close(self) -> None:
        """Close every channel of the running loop's pool (calls in flight are cancelled)."""
        stubs, self._stubs = self._stubs, {}
        if self._loop is asyncio.get_running_loop():
            for channel, _ in stubs.values():
                await channel.close()


_pool = _ChannelPool()


async def close_channels() -> None:
    """Close the channels of every RemotePolicy, at shutdown (a later check opens new ones)."""
    await _pool.close()
