"""The token bucket, the one rate limiter every part of the server uses.

A bucket holds at most `burst` tokens and gains `rate` tokens a second; spending takes tokens
out. It never reads a clock: every call is given `now` (any monotonic seconds), so it is tested
with plain numbers. Used for: flood control of a connection's input (bytes and requests), room
creations per connection and per address, the log lines peers can cause, and the UDP layer's
PROBEs. Imports nothing of the project.
"""


def refilled(tokens: float, burst: float, rate: float, elapsed: float) -> float:
    """What a bucket holding `tokens` holds `elapsed` seconds later (never past `burst`; a
    clock that went back earns nothing). TokenBucket's rule, for holders that keep a bucket's
    numbers in slots of their own (policy/flood.py's Meter: one object per connection)."""
    return min(burst, tokens + elapsed * rate) if elapsed > 0 else tokens


class TokenBucket:
    """Up to `burst` tokens at once, refilled at `rate` a second (0: never refilled)."""

    __slots__ = ("burst", "rate", "tokens", "at")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = float(burst)      # a new bucket starts full
        self.at = now                   # when `tokens` was last brought up to date

    def refill(self, now: float) -> "TokenBucket":
        """Add what has been earned since the last look (never past `burst`; a clock that
        went back earns nothing) and return the bucket, so that `b.refill(now).tokens` reads."""
        self.tokens = refilled(self.tokens, self.burst, self.rate, now - self.at)
        self.at = now
        return self

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend `amount` if the bucket holds that much now; say whether it did."""
        if self.refill(now).tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def seconds_until(self, amount: float) -> float:
        """How long, from the last refill, until the bucket holds `amount` (0 if it does
        already; infinity if it never will)."""
        missing = amount - self.tokens
        if missing <= 0:
            return 0.0
        if self.rate <= 0 or amount > self.burst:
            return float("inf")
        return missing / self.rate
