"""Flood control: each connection's input is metered by two token buckets, bytes and requests,
as IRC servers meter each client's lines.

A bucket holds at most its burst and refills at its rate; a connection whose bucket runs dry is
not read from, and its requests wait, until the bucket has refilled (TCP's window then slows the
sender down): a flooder is slowed, never cut, and nobody else waits for it. No sockets, no clock
of its own: every call is given the time.
"""
from typing import Optional

from policy.bucket import TokenBucket

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
        self.burst_bytes = burst_bytes
        self.requests_per_second = requests_per_second
        self.request_burst = request_burst


class Meter:
    """One connection's buckets (None where the limit is 0). Both start full.

        charge_bytes(n, now)    it sent n bytes: how long to stop reading it (0: not at all)
        requests_allowed(now)   how many of its requests may be handled now (None: any number)
        wait_for_a_request()    after requests_allowed() said 0: how long until one may be
        charge_requests(n)      n of its requests were handled
    """
    __slots__ = ("bytes", "requests")

    def __init__(self, limits: InputLimits, now: float) -> None:
        self.bytes: Optional[TokenBucket] = None
        self.requests: Optional[TokenBucket] = None
        if limits.bytes_per_second:
            self.bytes = TokenBucket(limits.burst_bytes, limits.bytes_per_second, now)
        if limits.requests_per_second:
            self.requests = TokenBucket(limits.request_burst, limits.requests_per_second, now)

    def charge_bytes(self, size: int, now: float) -> float:
        bucket = self.bytes
        if bucket is None:
            return 0.0
        bucket.refill(now).tokens -= size       # (it may go below 0: the debt is waited out)
        return -bucket.tokens / bucket.rate if bucket.tokens < 0 else 0.0

    def requests_allowed(self, now: float) -> Optional[int]:
        bucket = self.requests
        return None if bucket is None else int(bucket.refill(now).tokens)

    def wait_for_a_request(self) -> float:
        bucket = self.requests
        return 0.0 if bucket is None else (1 - bucket.tokens) / bucket.rate

    def charge_requests(self, handled: int) -> None:
        if self.requests is not None:
            self.requests.tokens -= handled

    def last_heard(self) -> float:
        """When it was last charged (or made), the bucket's own record: how long it has been
        idle, for the descriptor reserve (policy/reserve.py). -inf if nothing meters it."""
        bucket = self.bytes or self.requests
        return float("-inf") if bucket is None else bucket.at
