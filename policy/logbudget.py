"""The log budget: log lines that peers can cause (a connection opened or closed, an eviction)
are rate-limited, so that a flood of connections never becomes a flood of log. No sockets, no
clock of its own (it is given one).
"""
import logging
from typing import Any, Callable, Dict, Hashable

from policy.bucket import TokenBucket

# At most this many lines a second, in bursts of LOG_BURST; the rest are counted, and the count
# is logged with the next line let through.
LOG_LINES_PER_SECOND = 20
LOG_BURST = 100
# An internal error's traceback is logged once per kind (exception type and where it was raised)
# in this many seconds; repeats in between get one line, through the budget.
TRACEBACK_INTERVAL = 60.0


class LogBudget:
    """A token bucket of log lines. Lines past it are dropped and counted; the next line let
    through says how many."""

    def __init__(self, clock: Callable[[], float], per_second: float = LOG_LINES_PER_SECOND,
                 burst: float = LOG_BURST) -> None:
        self._clock = clock
        self._bucket = TokenBucket(burst, per_second, clock())
        self.dropped = 0
        self._tracebacks: Dict[Hashable, float] = {}    # kind -> when last logged

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

    def traceback_due(self, kind: Hashable) -> bool:
        """Whether an internal error of this kind gets its traceback logged now (once per
        TRACEBACK_INTERVAL); if so, from now on it is counted as logged."""
        now = self._clock()
        if now - self._tracebacks.get(kind, -TRACEBACK_INTERVAL) < TRACEBACK_INTERVAL:
            return False
        self._tracebacks[kind] = now
        return True
