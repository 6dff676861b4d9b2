"""The descriptor reserve's policy: who makes way when every descriptor is taken, and who is
closed while descriptors are scarce. No sockets, no clock (the listener, transport/tcp.py,
keeps the reserve descriptor itself and gives the time).

One descriptor is kept in reserve, so that when every other is taken a new connection can still
be accepted; a connection then makes way for it, chosen in this order:
1. the connection idle longest of those that never completed a request (Unproven);
2. else, of the address that holds the most connections, the one we heard from longest ago
   (Holders): proven idlers cannot lock new clients out either, and whoever holds the most
   descriptors pays for the newcomer, not a client with one connection.
Only when no connection holds a descriptor (they are all Redis links, say) is the new one closed
at once, rather than left to hang.
"""
import collections
import itertools
from typing import Any, Callable, Iterator, Optional

from policy.shares import Shares

# While descriptors are scarce (connections hold CROWDED of the open-file limit), connections
# that never completed a request are closed after UNPROVEN_TIMEOUT seconds idle; otherwise they
# wait for ever (a person typing into nc may take a while).
CROWDED = 0.9
UNPROVEN_TIMEOUT = 10.0
# Of the address that holds the most, this many of its connections (its oldest) are looked at,
# and the one heard from longest ago makes way: Redis's approximated LRU (maxmemory-samples),
# so that one accept costs the same with 100 connections from that address or 100 000.
MAKE_WAY_SAMPLE = 64


class Unproven(collections.OrderedDict):
    """The connections that have not completed a request yet, longest idle first:
    conn_id -> (when it last sent something, the connection). A dict, so that the hot paths'
    `conn_id in unproven` costs what a dict lookup does."""

    def __init__(self, open_file_limit: int) -> None:
        super().__init__()
        self.crowded_at = int(CROWDED * open_file_limit)

    def add(self, conn: Any, now: float) -> None:
        self[conn.conn_id] = (now, conn)

    def touched(self, conn: Any, now: float) -> None:
        """It sent something (not yet a whole request): idle no longer."""
        self[conn.conn_id] = (now, conn)
        self.move_to_end(conn.conn_id)

    def forget(self, conn_id: int) -> None:
        """It has completed a request, or gone. A table emptied gives its memory back: a dict
        keeps the size of its largest (10 000 connections that joined at once left 42 bytes
        each)."""
        if self.pop(conn_id, None) is not None and not self:
            self.clear()

    def maybe_make_way(self) -> Optional[Any]:
        """The connection that makes way for a new one (longest idle), or None."""
        if not self:
            return None
        return self.popitem(last=False)[1][1]

    def idle_too_long(self, now: float, connections: int) -> Iterator[Any]:
        """While `connections` is CROWDED of the limit: those idle for UNPROVEN_TIMEOUT, longest
        idle first (the caller closes each, which takes it out of here)."""
        if connections < self.crowded_at:
            return
        while self:
            since, conn = next(iter(self.values()))
            if now - since < UNPROVEN_TIMEOUT:
                return
            yield conn


class Holders:
    """The connections that hold a descriptor, by address, with the address holding the most
    found at once (policy/shares.py). add() and remove() are O(1); maybe_make_way() is
    O(MAKE_WAY_SAMPLE)."""

    def __init__(self) -> None:
        self._shares: Shares[str, Any] = Shares()

    def held_by(self, address: str) -> int:
        return self._shares.count(address)

    def add(self, conn: Any) -> None:
        self._shares.add(conn.peer_ip, conn)

    def remove(self, conn: Any) -> None:
        """Forget `conn` (idempotent)."""
        self._shares.remove(conn.peer_ip, conn)

    def maybe_make_way(self, heard_at: Callable[[Any], float]) -> Optional[Any]:
        """The connection that makes way (it stays here until the caller tears it down): of
        the address holding the most, the one heard_at() says was heard from longest ago,
        among its MAKE_WAY_SAMPLE oldest. None if no connection is held."""
        address = self._shares.busiest()
        if address is None:
            return None
        return min(itertools.islice(self._shares.held(address), MAKE_WAY_SAMPLE), key=heard_at)
