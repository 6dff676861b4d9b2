"""Flood control: each connection's input is metered by two token buckets, bytes and requests,
as IRC servers meter each client's lines.

A bucket holds at most its burst and refills at its rate; a connection whose bucket runs dry is
not read from, and its requests wait, until the bucket has refilled (TCP's window then slows the
sender down): a flooder is slowed, never cut, and nobody else waits for it. No sockets, no clock
of its own: every call is given the time.
"""
from typing import Optional

from policy.bucket import refilled

# The rates are set so that a member who reads 1 MB/s keeps up with any one flooder (whose every
# byte it is sent), far above what a person types, and above what the benchmarks' busiest member
# sends (200 requests in a burst, a few KB/s). Server.py's --input-rate and --request-rate set
# them (0: no limit).
INPUT_BYTES_PER_SECOND = 512 * 1024
INPUT_BURST_BYTES = 512 * 1024
REQUESTS_PER_SECOND = 500
REQUEST_BURST = 1000


class InputLimits:
    """Flood control's numbers (see INPUT_BYTES_PER_SECOND). A rate of 0 means no limit."""
    __slots__ = ("bytes_per_second", "burst_bytes", "requests_per_second", "request_burst")

    def __init__(self, bytes_per_second: float = INPUT_BYTES_PER_SECOND,
                 burst_bytes: float = INPUT_BURST_BYTES,
                 requests_per_second: float = REQUESTS_PER_SECOND,
                 request_burst: float = REQUEST_BURST) -> None:
        self.bytes_per_second = bytes_per_second
        self.burst_bytes = float(burst_bytes)       # (a new meter's tokens: one float for all)
        self.requests_per_second = requests_per_second
        self.request_burst = float(request_burst)


class Meter:
    """One connection's two buckets, bytes and requests (policy/bucket.py's rule; a rate of 0:
    no bucket). Both start full.

        charge_bytes(n, now)    it sent n bytes: how long to stop reading it (0: not at all)
        requests_allowed(now)   how many of its requests may be handled now (None: any number)
        wait_for_a_request()    after requests_allowed() said 0: how long until one may be
        charge_requests(n)      n of its requests were handled

    The buckets' numbers are slots of the meter itself, not two TokenBucket objects: every
    connection has a meter, and two buckets of their own cost 10 000 idle connections 1 MB
    (tools.many). The times are the caller's `now`, one float shared by a whole tick.

    A connection is its own meter (transport/conn.py: a subclass, whose start_metering() is this
    __init__), so that it costs no object of its own either.
    """
    __slots__ = ("limits", "byte_tokens", "bytes_at", "request_tokens", "requests_at")

    def __init__(self, limits: InputLimits, now: float) -> None:
        self.start_metering(limits, now)

    def start_metering(self, limits: InputLimits, now: float) -> None:
        """Both buckets full, from `now`."""
        self.limits = limits
        self.byte_tokens = limits.burst_bytes
        self.request_tokens = limits.request_burst
        self.bytes_at = self.requests_at = now      # when each was last brought up to date

    def charge_bytes(self, size: int, now: float) -> float:
        limits = self.limits
        rate = limits.bytes_per_second
        if not rate:
            return 0.0
        # (it may go below 0: the debt is waited out)
        tokens = refilled(self.byte_tokens, limits.burst_bytes, rate, now - self.bytes_at) - size
        self.byte_tokens, self.bytes_at = tokens, now
        return -tokens / rate if tokens < 0 else 0.0

    def requests_allowed(self, now: float) -> Optional[int]:
        limits = self.limits
        rate = limits.requests_per_second
        if not rate:
            return None
        self.request_tokens = refilled(self.request_tokens, limits.request_burst, rate,
                                       now - self.requests_at)
        self.requests_at = now
        return int(self.request_tokens)

    def wait_for_a_request(self) -> float:
        rate = self.limits.requests_per_second
        return (1 - self.request_tokens) / rate if rate else 0.0

    def charge_requests(self, handled: int) -> None:
        if self.limits.requests_per_second:
            self.request_tokens -= handled

    def last_heard(self) -> float:
        """When it was last charged (or made), the buckets' own record: how long it has been
        idle, for the descriptor reserve (policy/reserve.py). -inf if nothing meters it."""
        limits = self.limits
        if limits.bytes_per_second:
            return self.bytes_at
        return self.requests_at if limits.requests_per_second else float("-inf")
