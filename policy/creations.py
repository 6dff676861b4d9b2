"""How fast rooms may be created: one token bucket per connection and one per address.

A JOIN that would create a room asks `maybe_refusal()` first and, once the room is made,
`spend()`s one creation; joining a room that exists is never limited. The shared bus asks first,
tells Redis whether a creation is allowed, and spends only once Redis says the room was new.
No sockets, no clock of its own (every call is given `now`), nothing of the wire: the caller
turns a refusal into its ERROR_CODE. Imports nothing of the project but policy/bucket.py.
"""
from typing import Dict, NamedTuple, Optional

from policy.bucket import TokenBucket

# The limits, as token buckets (a burst, then a rate per second), for one connection and for all
# connections from one address. Far above what people do (the course's test client creates
# two), and above what the benchmarks do (100 rooms from one address at once); 100 000 rooms
# from one host take minutes.
ROOM_CREATION_BURST_PER_CONNECTION = 50
ROOM_CREATIONS_PER_SECOND_PER_CONNECTION = 5
ROOM_CREATION_BURST_PER_ADDRESS = 2000
ROOM_CREATIONS_PER_SECOND_PER_ADDRESS = 200
# The addresses whose room creations are remembered: past this many, those whose buckets have
# refilled (they have not created a room lately) are forgotten, so the table stays bounded.
ADDRESSES_REMEMBERED = 10_000


class Refusal(NamedTuple):
    """Which limit a creation would pass: `whose` is "connection" or "address"."""
    whose: str
    burst: float
    rate: float


class RoomCreations:
    """The room creations of every connection and every address (see the module docstring).
    A connection's bucket is made at its first creation and kept until `forget()`."""

    __slots__ = ("_by_connection", "_by_address")

    def __init__(self) -> None:
        self._by_connection: Dict[int, TokenBucket] = {}
        self._by_address: Dict[str, TokenBucket] = {}

    def maybe_refusal(self, conn_id: int, address: str, now: float) -> Optional[Refusal]:
        """None if `conn_id`, from `address`, may create a room now, else the limit it would
        pass (the connection's is looked at first). Spends nothing."""
        connection = self._by_connection.get(conn_id)
        if connection is None:
            connection = self._by_connection[conn_id] = TokenBucket(
                ROOM_CREATION_BURST_PER_CONNECTION, ROOM_CREATIONS_PER_SECOND_PER_CONNECTION, now)
        by_address = self._by_address
        bucket = by_address.get(address)
        if bucket is None:
            if len(by_address) >= ADDRESSES_REMEMBERED:     # forget the idle ones
                for ip in [ip for ip, b in by_address.items() if b.refill(now).tokens >= b.burst]:
                    del by_address[ip]
            bucket = by_address[address] = TokenBucket(
                ROOM_CREATION_BURST_PER_ADDRESS, ROOM_CREATIONS_PER_SECOND_PER_ADDRESS, now)
        for whose, limit in (("connection", connection.refill(now)),
                             ("address", bucket.refill(now))):
            if limit.tokens < 1:
                return Refusal(whose, limit.burst, limit.rate)
        return None

    def spend(self, conn_id: int, address: str) -> None:
        """Count one room created by `conn_id` from `address` (asked before: maybe_refusal)."""
        self._by_connection[conn_id].tokens -= 1
        bucket = self._by_address.get(address)
        if bucket is not None:
            bucket.tokens -= 1

    def forget(self, conn_id: int) -> None:
        """`conn_id` is gone (its address's bucket stays: it counts every connection)."""
        self._by_connection.pop(conn_id, None)
