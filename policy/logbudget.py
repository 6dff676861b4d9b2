"""The log budget: log lines that peers can cause (a connection opened or closed, an eviction)
are rate-limited, so that a flood of connections never becomes a flood of log. No sockets, no
clock of its own (it is given one).
"""
import logging
from typing import Any, Callable

from policy.bucket import TokenBucket

# At most this many lines a second, in bursts of LOG_BURST; the rest are counted, and the count
# is logged with the next line let through.
LOG_LINES_PER_SECOND = 20
LOG_BURST = 100


class LogBudget:
    """A token bucket of log lines. Lines past it are dropped and counted; the next line let
    through says how many."""

    def __init__(self, clock: Callable[[], float], per_second: float = LOG_LINES_PER_SECOND,
                 burst: float = LOG_BURST) -> None:
        self._clock = clock
        self._bucket = TokenBucket(burst, per_second, clock())
        self.dropped = 0

    def log(self, logger: logging.Logger, level: int, message: str, *args: Any) -> None:
        if not logger.isEnabledFor(level):
            return
        if not self._bucket.take(self._clock()):
            self.dropped += 1
            return
        if self.dropped:
            message += " (%d such lines not logged before this one)" % self.dropped
            self.dropped = 0
        logger.log(level, message, *args)
