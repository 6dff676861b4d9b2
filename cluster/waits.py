"""What a node's requests wait for while Redis runs them (cluster/shared.py): a JOIN, a LEAVE or
a DISCONNECT waits for its reply and its event; a connection's chats go on their way several
at a time (InFlight).

Boundary: plain bookkeeping, no I/O, like cluster/shared.py, which is its one user.
"""
from collections import Counter
from typing import Dict, List, Optional, Sequence, Set, Tuple

from rooms import Peer
from sansio.actions import Action, Resume
from sansio.wire import Join


class JoinWait:
    __slots__ = ("conn_id", "req", "peer", "lost")

    def __init__(self, conn_id: int, req: Join, peer: Peer) -> None:
        self.conn_id, self.req, self.peer, self.lost = conn_id, req, peer, False


class ChatWait:
    __slots__ = ("conn_id", "ref", "seq")

    def __init__(self, conn_id: int, ref: int) -> None:
        self.conn_id, self.ref, self.seq = conn_id, ref, None


# A connection's chats go to Redis one after the other without waiting for each one's event, up
# to CHATS_IN_FLIGHT of them: one link, one queue, so Redis runs them, and numbers each room's,
# in the order they were sent. Any other request of the connection (a chat to another room too:
# two rooms' events may come in another order, after a gap is read back) waits until they are
# all back (protocol.py holds it: RoomService.holds), so its replies keep the order of its
# requests. One at a time, a member sending chats in a burst had a round trip to Redis, a Wait
# and a Resume per chat, where one server handles the burst in one tick: that was most of a
# node's CPU.
CHATS_IN_FLIGHT = 16


class InFlight:
    """The chats of each connection sent to Redis whose event is not handed out yet, and the
    connections held back until some are done (`held`: a request of theirs waits, or they
    have as many on their way as allowed): only those get a Resume."""

    def __init__(self) -> None:
        self.by_conn: Dict[int, List[ChatWait]] = {}
        self.held: Set[int] = set()

    def add(self, conn_id: int, wait: ChatWait, waits: Optional[List[ChatWait]]) -> bool:
        """A chat of `conn_id` on its way (`waits`: those it has already, as by_conn has them);
        whether the connection has as many on their way as allowed now."""
        if waits is None:
            self.by_conn[conn_id] = [wait]
            return False
        waits.append(wait)
        if len(waits) < CHATS_IN_FLIGHT:
            return False
        self.held.add(conn_id)
        return True

    def hold(self, conn_id: int) -> bool:
        """Whether `conn_id` has chats on their way: then its next request waits for them (and
        the connection gets a Resume once they are back)."""
        if conn_id not in self.by_conn:
            return False
        self.held.add(conn_id)
        return True

    def forget(self, conn_id: int) -> None:
        """`conn_id` is gone: its chats on their way are nobody's wait any more."""
        self.by_conn.pop(conn_id, None)
        self.held.discard(conn_id)

    def has(self, wait: ChatWait) -> bool:
        return wait in self.by_conn.get(wait.conn_id, ())

    def numbered_upto(self, ref: int, upto: int) -> List[ChatWait]:
        """The chats on their way whose event in room `ref` is numbered `upto` or less."""
        return [wait for waits in self.by_conn.values() for wait in waits
                if wait.ref == ref and wait.seq is not None and wait.seq <= upto]

    def finish_own(self, conns: Sequence[int], ref: int, actions: List[Action]) -> None:
        """This node's chats to room `ref` sent by `conns` (a batch's, in order) are done, as
        finish() (the hot path: once a batch)."""
        if len(conns) == 1:
            self._finish_first(conns[0], ref, 1, actions)
        else:
            for conn_id, count in Counter(conns).items():
                self._finish_first(conn_id, ref, count, actions)

    def _finish_first(self, conn_id: int, ref: int, count: int, actions: List[Action]) -> None:
        """The first `count` chats of `conn_id` on their way are done, if they go to room `ref`
        (its chats on their way all go to one room: see CHATS_IN_FLIGHT)."""
        waits = self.by_conn.get(conn_id)
        if not waits or waits[0].ref != ref:
            return
        before = len(waits)
        del waits[:count]
        self._taken_out(conn_id, waits, before, actions)

    def finish(self, wait: ChatWait, actions: List[Action]) -> None:
        """`wait` is done (its event came, it failed, or it was lost): its connection's Resume
        goes to `actions` if it may go on now (it had as many as allowed on their way, or it
        has none left)."""
        waits = self.by_conn.get(wait.conn_id)
        if waits is None or wait not in waits:
            return
        waits.remove(wait)
        self._taken_out(wait.conn_id, waits, len(waits) + 1, actions)

    def _taken_out(self, conn_id: int, waits: List[ChatWait], before: int,
                   actions: List[Action]) -> None:
        """`conn_id` had `before` chats on their way and has `waits` now: a held connection
        goes on once none is left, or once it is back under the limit."""
        if not waits:
            del self.by_conn[conn_id]
        if conn_id in self.held and (not waits or before >= CHATS_IN_FLIGHT > len(waits)):
            self.held.discard(conn_id)
            actions.append(Resume(conn_id))


class LeaveWait:
    """A LEAVE (reply: its LEFT_CHATROOM), or one room of a DISCONNECT (`disconnect`: the rooms
    it has still to leave), or lost connections leaving one room (conn_id None)."""
    __slots__ = ("conn_id", "ref", "leavers", "reply", "disconnect", "seq")

    def __init__(self, conn_id: Optional[int], ref: int, leavers: List[Tuple[int, str]],
                 reply: Optional[bytes] = None, disconnect: Optional[Set[int]] = None) -> None:
        self.conn_id, self.ref, self.leavers = conn_id, ref, leavers
        self.reply, self.disconnect, self.seq = reply, disconnect, None

    def still_waited_for(self, waits: Dict[int, object]) -> bool:
        """False for a request's leave already carried out (its event came before a failure),
        or whose connection is gone (then its membership is left as a lost one's); `waits`:
        what each connection waits for (SharedRooms's)."""
        if self.conn_id is None:
            return True
        if self.disconnect is not None:
            return self.ref in self.disconnect and waits.get(self.conn_id) is self.disconnect
        return waits.get(self.conn_id) is self
