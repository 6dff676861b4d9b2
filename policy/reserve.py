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
from typing import Any, Callable, Dict, Iterator, Optional, Set

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
    found at once (addresses are kept in buckets by how many they hold, as an LFU cache keeps
    its keys). add() and remove() are O(1); maybe_make_way() is O(MAKE_WAY_SAMPLE)."""

    def __init__(self) -> None:
        self._by_address: Dict[str, Dict[int, Any]] = {}   # address -> {conn_id: conn}, oldest first
        self._by_count: Dict[int, Set[str]] = {}           # n -> the addresses holding n
        self._most = 0

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._by_address.values())

    def held_by(self, address: str) -> int:
        return len(self._by_address.get(address, ()))

    def add(self, conn: Any) -> None:
        conns = self._by_address.setdefault(conn.peer_ip, {})
        self._move(conn.peer_ip, len(conns), len(conns) + 1)
        conns[conn.conn_id] = conn

    def remove(self, conn: Any) -> None:
        """Forget `conn` (idempotent)."""
        conns = self._by_address.get(conn.peer_ip)
        if conns is None or conns.pop(conn.conn_id, None) is None:
            return
        self._move(conn.peer_ip, len(conns) + 1, len(conns))
        if not conns:
            del self._by_address[conn.peer_ip]

    def _move(self, address: str, was: int, now: int) -> None:
        if was:
            bucket = self._by_count[was]
            bucket.discard(address)
            if not bucket:
                del self._by_count[was]
                if self._most == was and now < was:
                    self._most = now
        if now:
            self._by_count.setdefault(now, set()).add(address)
            self._most = max(self._most, now)

    def maybe_make_way(self, heard_at: Callable[[Any], float]) -> Optional[Any]:
        """The connection that makes way (it stays here until the caller tears it down): of
        the address holding the most, the one heard_at() says was heard from longest ago,
        among its MAKE_WAY_SAMPLE oldest. None if no connection is held."""
        if not self._most:
            return None
        address = next(iter(self._by_count[self._most]))
        chosen, chosen_at = None, 0.0
        for count, conn in enumerate(self._by_address[address].values()):
            if count == MAKE_WAY_SAMPLE:
                break
            at = heard_at(conn)
            if chosen is None or at < chosen_at:
                chosen, chosen_at = conn, at
        return chosen
