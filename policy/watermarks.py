"""Water marks: when to stop reading from a peer whose own output is piling up, when to read
again, and when to give up on it (asyncio's flow control, Redis's output-buffer limit).

One implementation with hysteresis, used by every transport with its own numbers: a TCP
connection's are below; a UDP session's (transport/udp.py) add what may be in flight. No
sockets, no clock.
"""

# Stop reading from a peer whose own unsent output passes HIGH_WATER and start again below
# LOW_WATER (asyncio's defaults: 64 KiB and a quarter of it).
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
# Disconnect a peer whose unsent output passes this (Redis: client-output-buffer-limit). 1 MiB
# is ~15 000 chat messages: a reader that far behind is stalled, not slow. It counts what the
# peer is owed, shared or not (transport/hub.py, SHARE_MIN).
OUTPUT_CAP = 1024 * 1024

# What over() says.
BELOW = 0       # nothing to do
PAUSE = 1       # stop reading from it until it drains below the low mark
ABORT = 2       # past the cap: drop it


class WaterMarks:
    """A high and a low mark with hysteresis, and a hard cap (high <= cap)."""
    __slots__ = ("high", "low", "cap")

    def __init__(self, high: int, low: int, cap: int = OUTPUT_CAP) -> None:
        if not low <= high <= cap:
            raise ValueError("water marks must be low <= high <= cap")
        self.high, self.low, self.cap = high, low, cap

    def over(self, queued: int) -> int:
        """What `queued` bytes of output mean: BELOW, PAUSE or ABORT."""
        if queued > self.cap:
            return ABORT
        return PAUSE if queued > self.high else BELOW

    def may_resume(self, queued: int) -> bool:
        """A paused peer with `queued` bytes of output may be read from again."""
        return queued <= self.low


TCP_MARKS = WaterMarks(HIGH_WATER, LOW_WATER, OUTPUT_CAP)
