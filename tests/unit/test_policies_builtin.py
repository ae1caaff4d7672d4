"""Unit tests of the built-in policies: decisions on hand-built requests, and option checks."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from extproc.policies.api import (
    ALLOW,
    MAX_TAG_VALUE_CHARS,
    Deny,
    Modify,
    Policy,
    PolicyRequest,
)
from extproc.policies.builtin import BUILTINS
from extproc.policies.builtin._pii import MAX_FINDINGS
from extproc.policies.builtin.headers import RequiredHeadersOptions, RequiredHeadersPolicy
from extproc.policies.builtin.max_tokens import MaxTokensOptions, MaxTokensPolicy
from extproc.policies.builtin.models import ModelListOptions, ModelListPolicy
from extproc.policies.builtin.prompt_guard import PromptGuard, PromptGuardOptions
from extproc.policies.builtin.system_prompt import SystemPromptOptions, SystemPromptPolicy
from extproc.policies.builtin.tags import TagsOptions, TagsPolicy


def request(**fields: Any) -> PolicyRequest:
    values: dict[str, Any] = {
        "tenant": "acme",
        "key_id": "k1",
        "model": "gpt-4o",
        "endpoint": "chat",
        "provider": "openai",
        "upstream_model": "gpt-4o-2024-08-06",
        "messages": [{"role": "user", "content": "hello"}],
        "params": {},
        "max_tokens": None,
        "stream": False,
        "headers": {},
        "tags": {},
    }
    values.update(fields)
    return PolicyRequest(**values)


def embeddings() -> PolicyRequest:
    return request(endpoint="embeddings", messages=[], model="text-embedding-3-small")


def chat(text: str) -> PolicyRequest:
    return request(messages=[{"role": "user", "content": text}])


def guard(**options: Any) -> PromptGuard:
    return PromptGuard(PromptGuardOptions(**options))


def redacted(decision: Any) -> str:
    """The content of the only message of a Modify."""
    assert isinstance(decision, Modify), decision
    assert decision.messages is not None
    [message] = decision.messages
    content = message["content"]
    assert isinstance(content, str)
    return content


def luhn_reference(number: str) -> bool:
    """The textbook Luhn check, written independently of the policy's."""
    digits = [int(c) for c in number]
    checksum = 0
    for position, digit in enumerate(reversed(digits), start=1):
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        checksum += digit
    return checksum % 10 == 0


# --- the registry ---------------------------------------------------------------------------------


def test_builtins_names_and_shape() -> None:
    assert set(BUILTINS) == {
        "max_tokens",
        "models",
        "required_headers",
        "prompt_guard",
        "system_prompt",
        "tags",
    }
    for name, cls in BUILTINS.items():
        assert issubclass(cls, Policy), name
        assert cls.inline is True, name
        assert not inspect.iscoroutinefunction(cls.check), name
        options = cls.Options
        assert issubclass(options, BaseModel)
        assert options.model_config.get("extra") == "forbid", name
        assert options.model_config.get("frozen") is True, name


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("max_tokens", {"cap": 10, "capp": 1}),
        ("models", {"deny": ["x"], "allows": ["y"]}),
        ("required_headers", {"headers": {"x-a": None}, "tags": {}}),
        ("prompt_guard", {"emails": "redact"}),
        ("system_prompt", {"text": "t", "forbid": True}),
        ("tags", {"tags": {"a": "b"}, "from_header": {}}),
    ],
)
def test_unknown_option_keys_are_errors(name: str, options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BUILTINS[name].Options.model_validate(options)


# --- max_tokens -----------------------------------------------------------------------------------


def max_tokens(**options: Any) -> MaxTokensPolicy:
    return MaxTokensPolicy(MaxTokensOptions(**options))


def test_max_tokens_sets_the_cap_when_the_request_has_none() -> None:
    assert max_tokens(cap=500).check(request(max_tokens=None)) == Modify(max_tokens=500)


def test_max_tokens_caps_a_larger_request() -> None:
    assert max_tokens(cap=500).check(request(max_tokens=501)) == Modify(max_tokens=500)


def test_max_tokens_allows_up_to_the_cap() -> None:
    policy = max_tokens(cap=500, on_exceed="deny")
    assert policy.check(request(max_tokens=500)) is ALLOW
    assert policy.check(request(max_tokens=1)) is ALLOW


def test_max_tokens_deny_refuses_a_larger_request_naming_the_cap() -> None:
    decision = max_tokens(cap=500, on_exceed="deny").check(request(max_tokens=4096))
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (400, "max_tokens_exceeded")
    assert "500" in decision.message


def test_max_tokens_deny_still_sets_the_cap_when_unset() -> None:
    assert max_tokens(cap=7, on_exceed="deny").check(request()) == Modify(max_tokens=7)


def test_max_tokens_leaves_embeddings_alone() -> None:
    assert max_tokens(cap=1, on_exceed="deny").check(embeddings()) is ALLOW


@pytest.mark.parametrize(
    "options",
    [{}, {"cap": 0}, {"cap": 10_000_001}, {"cap": -5}, {"cap": 10, "on_exceed": "truncate"}],
)
def test_max_tokens_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MaxTokensOptions(**options)


# --- models ---------------------------------------------------------------------------------------


def models(**options: Any) -> ModelListPolicy:
    return ModelListPolicy(ModelListOptions(**options))


def test_models_deny_pattern_refuses() -> None:
    decision = models(deny=["gpt-4o*"]).check(request(model="gpt-4o-mini"))
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (403, "model_not_allowed")


def test_models_deny_wins_over_allow() -> None:
    decision = models(allow=["gpt-*"], deny=["gpt-4o"]).check(request(model="gpt-4o"))
    assert isinstance(decision, Deny)


def test_models_allow_list_refuses_what_it_does_not_match() -> None:
    policy = models(allow=["claude-*", "llama3"])
    assert policy.check(request(model="claude-3-5-sonnet")) is ALLOW
    assert policy.check(request(model="llama3")) is ALLOW
    for model in ("gpt-4o", "llama3.1", "xclaude-3"):
        decision = policy.check(request(model=model))
        assert isinstance(decision, Deny), model
        assert decision.code == "model_not_allowed"


def test_models_patterns_are_case_sensitive_and_support_classes() -> None:
    policy = models(allow=["gpt-4o-mini", "o[13]-*"])
    assert isinstance(policy.check(request(model="GPT-4o-mini")), Deny)
    assert policy.check(request(model="o1-preview")) is ALLOW
    assert policy.check(request(model="o3-mini")) is ALLOW
    assert isinstance(policy.check(request(model="o2-mini")), Deny)


def test_models_rewrite_after_the_checks() -> None:
    policy = models(allow=["gpt-4o", "gpt-4o-mini"], rewrite={"gpt-4o": "gpt-4o-mini"})
    assert policy.check(request(model="gpt-4o")) == Modify(model="gpt-4o-mini")
    assert policy.check(request(model="gpt-4o-mini")) is ALLOW
    denied = models(deny=["gpt-4o"], rewrite={"gpt-4o": "gpt-4o-mini"})
    assert isinstance(denied.check(request(model="gpt-4o")), Deny)


def test_models_rewrite_alone_allows_everything_else() -> None:
    policy = models(rewrite={"old": "new"})
    assert policy.check(request(model="old")) == Modify(model="new")
    assert policy.check(request(model="other")) is ALLOW


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "at least one of allow, deny or rewrite"),
        ({"allow": None, "deny": [], "rewrite": {}}, "at least one of allow, deny or rewrite"),
        ({"allow": []}, "allow must list at least one pattern"),
        ({"deny": [""]}, "at least 1 character"),
        ({"rewrite": {"a": "a"}}, "rewritten to itself"),
        ({"deny": "gpt-4o"}, "valid list"),
    ],
)
def test_models_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelListOptions(**options)


# --- required_headers -----------------------------------------------------------------------------


def required(**options: Any) -> RequiredHeadersPolicy:
    return RequiredHeadersPolicy(RequiredHeadersOptions(**options))


def test_required_headers_declares_every_header_it_reads_lower_case() -> None:
    policy = required(headers={"X-Team": None}, tag_from={"X-Project": "project"})
    assert policy.headers == frozenset({"x-team", "x-project"})


def test_required_headers_missing_header_is_refused() -> None:
    policy = required(headers={"x-team": None, "x-env": "prod|dev"})
    decision = policy.check(request(headers={"x-env": "prod"}))
    assert decision == Deny(
        message="the request header 'x-team' is required", status=400, code="missing_header"
    )
    empty = policy.check(request(headers={"x-team": "", "x-env": "prod"}))
    assert isinstance(empty, Deny)
    assert empty.code == "missing_header"


def test_required_headers_value_must_match_whole_and_is_not_echoed() -> None:
    policy = required(headers={"x-env": "prod|dev"})
    assert policy.check(request(headers={"x-env": "prod"})) is ALLOW
    for value in ("production", "xprod", "staging-secret-42"):
        decision = policy.check(request(headers={"x-env": value}))
        assert isinstance(decision, Deny), value
        assert (decision.status, decision.code) == (400, "invalid_header")
        assert "x-env" in decision.message
        assert value not in decision.message


def test_required_headers_tags_from_headers() -> None:
    policy = required(
        headers={"x-team": r"[a-z0-9-]+"},
        tag_from={"x-team": "team", "x-project": "project"},
    )
    long_project = "p" * (MAX_TAG_VALUE_CHARS + 10)
    decision = policy.check(request(headers={"x-team": "search", "x-project": long_project}))
    assert decision == Modify(tags={"team": "search", "project": "p" * MAX_TAG_VALUE_CHARS})
    # An optional header that is absent gives no tag.
    assert policy.check(request(headers={"x-team": "search"})) == Modify(tags={"team": "search"})


def test_required_headers_without_tags_allows() -> None:
    policy = required(headers={"x-team": None}, tag_from={"x-project": "project"})
    assert policy.check(request(headers={"x-team": "a"})) is ALLOW


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"headers": {}}, "at least 1 item"),
        ({"headers": {"x-team": "(["}}, "invalid regular expression"),
        ({"headers": {"x team": None}}, "not a valid header name"),
        ({"headers": {"X-Team": None, "x-team": None}}, "listed twice"),
        ({"headers": {"x-a": None}, "tag_from": {"x-a": "Team"}}, "must match"),
        ({"headers": {"x-a": None}, "tag_from": {"authorization": "key"}}, "credentials"),
        ({"headers": {"x-a": None}, "tag_from": {"x-a": "t", "x-b": "t"}}, "two headers"),
    ],
)
def test_required_headers_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RequiredHeadersOptions(**options)


# --- system_prompt --------------------------------------------------------------------------------


def test_system_prompt_is_added() -> None:
    policy = SystemPromptPolicy(SystemPromptOptions(text="Be brief."))
    assert policy.check(request()) == Modify(system_prompt="Be brief.")
    with_system = request(
        messages=[{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    )
    assert policy.check(with_system) == Modify(system_prompt="Be brief.")


def test_system_prompt_leaves_embeddings_alone() -> None:
    policy = SystemPromptPolicy(SystemPromptOptions(text="x", forbid_client_system=True))
    assert policy.check(embeddings()) is ALLOW


@pytest.mark.parametrize("role", ["system", "developer"])
def test_system_prompt_can_forbid_the_clients_own(role: str) -> None:
    policy = SystemPromptPolicy(SystemPromptOptions(text="x", forbid_client_system=True))
    decision = policy.check(
        request(messages=[{"role": "user", "content": "a"}, {"role": role, "content": "b"}])
    )
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (400, "system_prompt_not_allowed")
    assert policy.check(request()) == Modify(system_prompt="x")


@pytest.mark.parametrize("text", ["", "   \n", "x" * 100_001])
def test_system_prompt_bad_text(text: str) -> None:
    with pytest.raises(ValidationError):
        SystemPromptOptions(text=text)


# --- tags -----------------------------------------------------------------------------------------


def test_tags_static_and_from_headers() -> None:
    policy = TagsPolicy(
        TagsOptions(tags={"env": "prod"}, from_headers={"X-Team": "team", "x-app": "app"})
    )
    assert policy.headers == frozenset({"x-team", "x-app"})
    long = "t" * (MAX_TAG_VALUE_CHARS + 1)
    decision = policy.check(request(headers={"x-team": long}))
    assert decision == Modify(tags={"env": "prod", "team": "t" * MAX_TAG_VALUE_CHARS})
    assert policy.check(request()) == Modify(tags={"env": "prod"})


def test_tags_without_any_allows() -> None:
    policy = TagsPolicy(TagsOptions(from_headers={"x-team": "team"}))
    assert policy.check(request(headers={"x-team": ""})) is ALLOW
    assert policy.check(request()) is ALLOW


def test_tags_static_only_reads_no_header() -> None:
    policy = TagsPolicy(TagsOptions(tags={"env": "prod"}))
    assert policy.headers == frozenset()
    first, second = policy.check(request()), policy.check(request())
    assert first == second == Modify(tags={"env": "prod"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "at least one of tags or from_headers"),
        ({"tags": {"Env": "prod"}}, "must match"),
        ({"tags": {"env": "x" * (MAX_TAG_VALUE_CHARS + 1)}}, "longer than"),
        ({"from_headers": {"x-a": "9team"}}, "must match"),
        ({"from_headers": {"cookie": "c"}}, "credentials"),
        ({"tags": {"team": "a"}, "from_headers": {"x-team": "team"}}, "both in tags"),
    ],
)
def test_tags_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TagsOptions(**options)


# --- prompt_guard: emails and cards ---------------------------------------------------------------


def test_prompt_guard_allows_a_clean_prompt() -> None:
    assert guard(phone="redact").check(chat("What is the capital of France?")) is ALLOW
    assert guard().check(embeddings()) is ALLOW


def test_prompt_guard_redacts_emails_and_tags_the_request() -> None:
    decision = guard().check(chat("write to jane.doe+news@mail.example.co.uk, or to a@b.io."))
    assert redacted(decision) == "write to [email redacted], or to [email redacted]."
    assert isinstance(decision, Modify)
    assert decision.tags == {"prompt_guard": "redacted"}


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",  # Visa test number
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555555555554444",  # Mastercard test number
        "3782 822463 10005",  # Amex, 4-6-5
        "6011111111111117",  # Discover
        "4222222222222",  # 13-digit Visa
    ],
)
def test_prompt_guard_redacts_luhn_valid_cards(card: str) -> None:
    assert luhn_reference(card.replace(" ", "").replace("-", ""))
    assert redacted(guard().check(chat(f"my card: {card}, thanks"))) == (
        "my card: [card redacted], thanks"
    )


@pytest.mark.parametrize(
    "number",
    ["4111 1111 1111 1112", "4111111111111112", "5555555555554440", "378282246310006"],
)
def test_prompt_guard_leaves_luhn_invalid_numbers(number: str) -> None:
    assert not luhn_reference(number.replace(" ", ""))
    assert guard().check(chat(f"reference {number}")) is ALLOW


def test_prompt_guard_finds_a_card_among_other_numbers() -> None:
    text = "pay 2 items with 4111 1111 1111 1111 12 28 cvv 123"
    assert redacted(guard().check(chat(text))) == "pay 2 items with [card redacted] 12 28 cvv 123"
    after_decimal = "pi 3.14 4111 1111 1111 1111"
    assert redacted(guard().check(chat(after_decimal))) == "pi 3.14 [card redacted]"


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\A[1-9][0-9]{15}\Z", fullmatch=True))
def test_prompt_guard_redacts_sixteen_digits_exactly_when_luhn_valid(number: str) -> None:
    decision = guard(email="off").check(chat(f"n {number} n"))
    if luhn_reference(number):
        assert redacted(decision) == "n [card redacted] n"
    else:
        assert decision is ALLOW


def test_prompt_guard_does_not_take_a_card_for_a_phone() -> None:
    text = "card 4111 1111 1111 1111 and 4111-1111-1111-1111, +4111 1111 1111 1111"
    both = guard(phone="redact").check(chat(text))
    assert redacted(both) == "card [card redacted] and [card redacted], +[card redacted]"
    assert guard(card="off", email="off", phone="redact").check(chat(text)) is ALLOW


def test_prompt_guard_the_first_kind_wins_an_overlap() -> None:
    decision = guard(phone="redact").check(chat("mail 415-555-0100@example.com now"))
    assert redacted(decision) == "mail [email redacted] now"


def test_prompt_guard_emails_next_to_each_other() -> None:
    text = "a@b.com.c@d.co.uk and see...jane@example.com"
    expected = "[email redacted].[email redacted] and see...[email redacted]"
    assert redacted(guard().check(chat(text))) == expected


def test_prompt_guard_the_longest_card_in_a_run_wins() -> None:
    # A 16-digit card that becomes a valid 19-digit one with three more digits.
    suffix = next(f"{n:03d}" for n in range(1000) if luhn_reference(f"4111111111111111{n:03d}"))
    text = f"12 4111 1111 1111 1111 {suffix} 5"
    assert redacted(guard().check(chat(text))) == "12 [card redacted] 5"


def test_prompt_guard_counts_characters_not_bytes() -> None:
    text = "café ☕ — jane@example.com, 4111 1111 1111 1111 or +1 415 555 0100 😀 ok"
    decision = guard(phone="redact").check(chat(text))
    assert redacted(decision) == (
        "café ☕ — [email redacted], [card redacted] or [phone redacted] 😀 ok"
    )


# --- prompt_guard: phones -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "+1 415 555 0100",
        "+44 20 7946 0958",
        "+33612345678",
        "+33 6 12 34 56 78",
        "+1 (415) 555-0100",
        "+44 (0)20 7946 0958",
        "(415) 555-0100",
        "(415)555-0100",
        "415-555-0100",
        "415.555.0100",
        "1-800-555-0100",
        "1.800.555.0100",
    ],
)
def test_prompt_guard_redacts_phones(phone: str) -> None:
    decision = guard(phone="redact").check(chat(f"call {phone} today"))
    assert redacted(decision) == "call [phone redacted] today"


def test_prompt_guard_phones_are_off_by_default() -> None:
    assert guard().check(chat("call 415-555-0100")) is ALLOW


@pytest.mark.parametrize(
    "text",
    [
        "the release is on 2026-12-01 at 12:30:45",
        "dates 2026/12/01, 01.12.2026 and 12-01-2026",
        "upgrade from 1.2.3 to 10.11.12",
        "order 12345 shipped; order #1234567 too",
        "servers 192.168.100.200 and 10.0.0.1, mask 255.255.255.0",
        "ISBN 978-3-16-148410-0",
        "revenue was $1,234,567.89 in 2025",
        "pi is 3.14159265358979323846",
        "between 1990-2020 the value rose 15-20%",
        "call extension 4155",
        "1+2=3 and 2+2=4 and 10+1234567",
        "serial 4111111111111112",
        "ratio 0.4111111111111111 and 4111111111111111,5",
        "code +123 4567 8901 2345 6789 0123",
        "build 10.415.555.0100 and 2.415-555-0100",
        "x@y, user@localhost, @handle, name@ and a @ b.com",
    ],
)
def test_prompt_guard_no_false_positives(text: str) -> None:
    assert guard(phone="redact").check(chat(text)) is ALLOW


# --- prompt_guard: structure of messages ----------------------------------------------------------


def test_prompt_guard_scans_text_parts_and_leaves_other_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a@b.com.png"}}
    audio = {"type": "input_audio", "input_audio": {"data": "4111111111111111", "format": "wav"}}
    clean = {"type": "text", "text": "nothing here"}
    messages = [
        {"role": "system", "content": "you help jane@example.com"},
        {"role": "user", "content": "just words"},
        {
            "role": "user",
            "content": [
                clean,
                {"type": "text", "text": "card 4111 1111 1111 1111"},
                image,
                audio,
                {"type": "text", "text": "and bob@example.org"},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    original = copy.deepcopy(messages)
    decision = guard().check(request(messages=messages))
    assert isinstance(decision, Modify)
    assert decision.messages is not None
    new = decision.messages
    # The request's own objects are untouched...
    assert messages == original
    assert new is not messages
    # ...unchanged messages and parts are shared, changed ones are copies.
    assert new[1] is messages[1]
    assert new[3] is messages[3]
    assert new[0] is not messages[0]
    assert new[0] == {"role": "system", "content": "you help [email redacted]"}
    parts = new[2]["content"]
    assert parts is not messages[2]["content"]
    assert parts[0] is clean
    assert parts[2] is image
    assert parts[3] is audio
    assert parts[1] == {"type": "text", "text": "card [card redacted]"}
    assert parts[4] == {"type": "text", "text": "and [email redacted]"}
    assert new[2]["role"] == "user"


def test_prompt_guard_scans_every_role() -> None:
    for role in ("system", "developer", "user", "assistant", "tool"):
        decision = guard().check(request(messages=[{"role": role, "content": "a@example.com"}]))
        assert redacted(decision) == "[email redacted]", role


# --- prompt_guard: block, custom patterns, replacement --------------------------------------------


def test_prompt_guard_block_never_echoes_the_secret() -> None:
    decision = guard(card="block").check(chat("hi jane@example.com, 4111 1111 1111 1111"))
    assert isinstance(decision, Deny)
    assert (decision.status, decision.code) == (400, "prompt_blocked")
    assert decision.message == "the prompt contains card (blocked by policy)"
    assert "4111" not in decision.message
    assert "jane" not in decision.message


def test_prompt_guard_block_in_a_later_message_refuses_the_request() -> None:
    messages = [
        {"role": "user", "content": "a@example.com"},
        {"role": "user", "content": [{"type": "text", "text": "+44 20 7946 0958"}]},
    ]
    decision = guard(phone="block").check(request(messages=messages))
    assert decision == Deny(
        message="the prompt contains phone (blocked by policy)", status=400, code="prompt_blocked"
    )
    assert messages[0]["content"] == "a@example.com"


def test_prompt_guard_custom_patterns_redact_and_block() -> None:
    policy = guard(
        email="off",
        card="off",
        patterns=[
            {"name": "ticket", "regex": r"TICKET-[0-9]{4}"},
            {"name": "api_key", "regex": r"sk-[A-Za-z0-9]{20,}", "action": "block"},
        ],
        replacement="<{kind}>",
    )
    assert redacted(policy.check(chat("see TICKET-1234 and TICKET-99"))) == (
        "see <ticket> and TICKET-99"
    )
    secret = "sk-" + "a1B2" * 6
    decision = policy.check(chat(f"my key is {secret}"))
    assert isinstance(decision, Deny)
    assert decision.message == "the prompt contains api_key (blocked by policy)"
    assert secret not in decision.message
    assert policy.check(chat("a@example.com 4111111111111111")) is ALLOW


def test_prompt_guard_empty_matches_of_a_custom_regex_are_ignored() -> None:
    policy = guard(email="off", card="off", patterns=[{"name": "w", "regex": r"\b"}])
    assert policy.check(chat("two words")) is ALLOW


def test_prompt_guard_replacement_without_placeholder() -> None:
    assert redacted(guard(replacement="***").check(chat("mail a@example.com"))) == "mail ***"


def test_prompt_guard_refuses_a_prompt_with_too_many_findings() -> None:
    decision = guard().check(chat("x@example.com " * (MAX_FINDINGS + 1)))
    assert isinstance(decision, Deny)
    assert decision.code == "prompt_blocked"
    assert "example" not in decision.message
    assert redacted(guard().check(chat("x@example.com " * 100))).count("[email redacted]") == 100


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"email": "warn"}, "Input should be"),
        ({"email": "off", "card": "off", "phone": "off"}, "nothing to look for"),
        ({"patterns": [{"name": "Bad", "regex": "x"}]}, "should match pattern"),
        ({"patterns": [{"name": "a" * 33, "regex": "x"}]}, "should match pattern"),
        ({"patterns": [{"name": "t", "regex": "(unclosed"}]}, "invalid regular expression"),
        ({"patterns": [{"name": "t", "regex": "a*"}]}, "matches the empty string"),
        ({"patterns": [{"name": "t", "regex": "x", "action": "off"}]}, "Input should be"),
        ({"patterns": [{"name": "email", "regex": "x"}]}, "built-in kind"),
        ({"patterns": [{"name": "t", "regex": "x"}, {"name": "t", "regex": "y"}]}, "twice"),
        ({"patterns": [{"name": "t", "regex": "x", "flags": "i"}]}, "Extra inputs"),
        ({"replacement": "[{type} redacted]"}, "only the placeholder"),
        ({"replacement": "[{kind!r}]"}, "only the placeholder"),
        ({"replacement": "[{0}]"}, "only the placeholder"),
        ({"replacement": "[{kind"}, "not a valid template"),
    ],
)
def test_prompt_guard_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PromptGuardOptions(**options)


def test_prompt_guard_only_custom_patterns_is_valid() -> None:
    options = PromptGuardOptions(email="off", card="off", patterns=[{"name": "t", "regex": "x"}])
    assert options.patterns[0].regex.pattern == "x"


# --- prompt_guard: adversarial input --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a" * 10**6 + "@",
        "1 " * 500_000,
        "1-" * 500_000,
        "@" * 10**6,
        "a@" * 500_000,
        "x@" + "aa." * 330_000,
        "+1" * 500_000,
        "(415) 555-" * 100_000,
        "1" * 10**6,
        "1111 " * 200_000,
        ".1" * 500_000,
        "a." * 500_000 + "@",
    ],
)
def test_prompt_guard_megabyte_adversarial_inputs(text: str) -> None:
    """Each completes (the patterns are linear) and finds nothing, or at most redacts."""
    decision = guard(phone="redact").check(chat(text))
    if text.startswith("x@"):
        # 126 labels is the most a domain has; "x@aa.aa…" is one long address, then text.
        assert redacted(decision).startswith("[email redacted].aa.aa")
    else:
        assert decision is ALLOW


def test_prompt_guard_finds_a_secret_after_a_megabyte() -> None:
    text = "a" * 10**6 + " jane@example.com " + "1 " * 1000 + "4111 1111 1111 1111"
    decision = guard().check(chat(text))
    expected = "a" * 10**6 + " [email redacted] " + "1 " * 1000 + "[card redacted]"
    assert redacted(decision) == expected
