"""The processor's access-log lines as the e2e tests read them from its log file."""

from __future__ import annotations

from typing import Any

import orjson

from tests.e2e.conftest import Stack


def access_lines(stack: Stack) -> list[dict[str, Any]]:
    """Every whole access-log line the processor wrote so far (the processor may be writing the
    last line right now: a line without its newline yet is left for the next read)."""
    assert stack.processor_log is not None
    text = stack.processor_log.read_text(encoding="utf-8", errors="replace")
    lines = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.startswith("{") and '"request_id"' in line:
            lines.append(orjson.loads(line))
    return lines
