"""The descriptor reserve's policy: who makes way when every descriptor is taken, and who is
closed while descriptors are scarce. No sockets, no clock (the listener, transport/tcp.py,
keeps the reserve descriptor itself and gives the time).

One descriptor is kept in reserve, so that when every other is taken a new connection can still
be accepted; the connection that has been idle longest without ever completing a request then
makes way for it (if there is none, the new one is closed at once rather than left to hang).
So idle connections holding every descriptor cannot lock new clients out.
"""
import collections
from typing import Any, Iterator, Optional

# While descriptors are scarce (connections hold CROWDED of the open-file limit), connections
# that never completed a request are closed after UNPROVEN_TIMEOUT seconds idle; otherwise they
# wait for ever (a person typing into nc may take a while).
CROWDED = 0.9
UNPROVEN_TIMEOUT = 10.0


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
