"""The health of a provider as its active checks last saw it: pure state, no I/O.

While a provider is unhealthy its targets report unavailable, exactly like an open breaker, so
Envoy routes around it and a recovered provider gets traffic again without a restart. The
checks themselves run in `extproc.server.health_checks`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ProviderHealth:
    """The health of one provider as its checks last saw it (healthy until proven not)."""

    provider: str
    healthy: bool = True
    failures: int = 0
    successes: int = 0
    last_error: str = ""

    def observe(self, ok: bool, error: str, unhealthy_after: int, healthy_after: int) -> bool:
        """Count one check result; True when the health flipped."""
        if ok:
            self.failures, self.successes = 0, self.successes + 1
            if not self.healthy and self.successes >= healthy_after:
                self.healthy = True
                return True
            return False
        self.successes, self.failures, self.last_error = 0, self.failures + 1, error
        if self.healthy and self.failures >= unhealthy_after:
            self.healthy = False
            return True
        return False
