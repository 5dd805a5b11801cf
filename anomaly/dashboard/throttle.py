"""Login throttling: too many failed logins for one account, or from one client address, lock
further attempts out for a while, doubling with each failure after the lockout.

An attempt counts as failed from the moment it starts (a success takes it back), so a flood of
simultaneous guesses is cut off after the limit instead of all being checked. Refused attempts
are not counted, so an attacker cannot stretch a lockout for ever. The counts live in the
dashboard process: with several worker processes each counts on its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: the first lockout; each further failure doubles it, up to MAX_LOCK_SECONDS
BASE_LOCK_SECONDS = 30.0
MAX_LOCK_SECONDS = 900.0
#: failures older than this (since the key's last failure) are forgotten
FORGET_SECONDS = 900.0
#: counts kept before forgotten ones are dropped
MAX_KEYS = 10_000


@dataclass
class _Count:
    failures: int
    last: float


class Throttle:
    """Failed-login counts per account and per client address."""

    def __init__(
        self,
        per_account: int,
        per_address: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"account": per_account, "address": per_address}
        self.clock = clock
        self._counts: dict[tuple[str, str], _Count] = {}
        self._lock = threading.Lock()

    def attempt(self, account: str, address: str) -> float:
        """0 if a login may be tried now (it counts as failed until :meth:`succeeded`), else
        the seconds to wait."""
        keys = (("account", account), ("address", address))
        with self._lock:
            now = self.clock()
            if len(self._counts) > MAX_KEYS:  # names made up by a flood: drop what is forgotten
                self._counts = {
                    k: c for k, c in self._counts.items() if now - c.last <= FORGET_SECONDS
                }
            wait = max(self._wait(key, now) for key in keys)
            if wait > 0:
                logger.warning(
                    "login refused for %r from %s: locked out for %d s more",
                    account, address, math.ceil(wait),
                )  # fmt: skip
                return wait
            for key in keys:
                count = self._current(key, now)
                count.failures += 1
                count.last = now
                if count.failures >= self.limits[key[0]]:
                    logger.warning(
                        "%d failed logins for %s %r: locked out for %d s",
                        count.failures, key[0], key[1], self._lock_seconds(key, count),
                    )  # fmt: skip
            return 0.0

    def succeeded(self, account: str, address: str) -> None:
        """The attempt was right: forget the account's failures, take back the address's."""
        with self._lock:
            self._counts.pop(("account", account), None)
            count = self._counts.get(("address", address))
            if count is not None:
                count.failures = max(count.failures - 1, 0)

    def _current(self, key: tuple[str, str], now: float) -> _Count:
        count = self._counts.get(key)
        if count is None or now - count.last > FORGET_SECONDS:
            count = self._counts[key] = _Count(0, now)
        return count

    def _lock_seconds(self, key: tuple[str, str], count: _Count) -> float:
        over = count.failures - self.limits[key[0]]
        return min(BASE_LOCK_SECONDS * 2.0 ** min(over, 30), MAX_LOCK_SECONDS)

    def _wait(self, key: tuple[str, str], now: float) -> float:
        count = self._counts.get(key)
        if count is None or count.failures < self.limits[key[0]]:
            return 0.0
        if now - count.last > FORGET_SECONDS:
            return 0.0
        return max(count.last + self._lock_seconds(key, count) - now, 0.0)
