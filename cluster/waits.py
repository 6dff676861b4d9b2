"""What a node's requests wait for while Redis runs them (cluster/shared.py): a JOIN, a LEAVE or
a DISCONNECT waits for its reply and its event; a connection's chats go on their way several
at a time (InFlight).

Boundary: plain bookkeeping, no I/O, like cluster/shared.py, which is its one user.
"""
from collections import Counter, deque
from typing import Deque, Dict, List, Optional, Sequence, Set, Tuple

from rooms import Peer
from sansio.actions import Action, Resume, Send
from sansio.wire import Join


class JoinWait:
    __slots__ = ("conn_id", "req", "peer", "lost")

    def __init__(self, conn_id: int, req: Join, peer: Peer) -> None:
        self.conn_id, self.req, self.peer, self.lost = conn_id, req, peer, False


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
    have as many on their way as allowed): only those get a Resume.

    Nothing is kept a chat: a connection's are counted (they all go to one room), and a call's
    are known by their numbers once Redis has answered (each room's ChatGroup, numbered from
    its first): when the room's events are handed out that far, they are done."""

    def __init__(self) -> None:
        self.by_conn: Dict[int, List[int]] = {}     # conn_id -> [ref, chats on their way]
        self.held: Set[int] = set()
        # ref -> (last number, senders) of each call's chats numbered and not handed out yet
        self._numbered: Dict[int, Deque[Tuple[int, List[int]]]] = {}
        # ref -> the last event handed out, of each room followed (a call's chats may come
        # before its reply). Not the bus's own count: the bus runs ahead of the events taken
        # from it and not handled yet, and a Resume must follow its chats' Broadcast.
        self._handed: Dict[int, int] = {}

    def add(self, conn_id: int, ref: int, entry: Optional[List[int]]) -> bool:
        """A chat of `conn_id` to `ref` on its way (`entry`: by_conn's for it, if any); whether
        the connection has as many on their way as allowed now."""
        if entry is None:
            self.by_conn[conn_id] = [ref, 1]
            return False
        entry[1] += 1
        if entry[1] < CHATS_IN_FLIGHT:
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

    def numbered(self, ref: int, conns: List[int], first: int, actions: List[Action]) -> None:
        """Chats of `conns` to room `ref`, in order, were numbered from `first` by Redis."""
        for conn_id in conns:
            entry = self.by_conn.get(conn_id)
            if entry is not None and entry[0] == ref:
                break
        else:
            return      # nobody's any more (their senders are gone): nothing kept for them
        last = first + len(conns) - 1
        if self._handed.get(ref, -1) >= last:
            self.finish(ref, conns, actions)        # (their event came before the reply)
        else:
            self._numbered.setdefault(ref, deque()).append((last, conns))

    def handed_out(self, ref: int, last: int, actions: List[Action]) -> None:
        """Room `ref`'s events up to number `last` are handed out, or lost (the hot path: once
        a batch): the chats numbered so far are done."""
        self._handed[ref] = last
        due = self._numbered.get(ref)
        if due is not None:
            while due and due[0][0] <= last:
                self.finish(ref, due.popleft()[1], actions)
            if not due:
                del self._numbered[ref]

    def forget_room(self, ref: int) -> None:
        """This node has no member in room `ref` any more: none of its chats there is anybody's
        (numbered() keeps nothing for a call whose senders are all gone)."""
        self._handed.pop(ref, None)
        self._numbered.pop(ref, None)

    def finish(self, ref: int, conns: Sequence[int], actions: List[Action],
               reply: Optional[bytes] = None) -> int:
        """The chats to room `ref` sent by `conns` (one each, in order) are done; with a
        `reply`, they failed, and each one still on its way gets it. A connection's Resume goes
        to `actions` if it may go on now (it had as many as allowed on their way, or it has none
        left). How many were still on their way."""
        done = 0
        for conn_id, count in Counter(conns).items() if len(conns) > 1 else ((conns[0], 1),):
            entry = self.by_conn.get(conn_id)
            if entry is None or entry[0] != ref:
                continue
            before = entry[1]
            left = entry[1] = max(0, before - count)
            done += before - left
            if reply is not None:
                actions += [Send(conn_id, reply)] * (before - left)
            if not left:
                del self.by_conn[conn_id]
            if conn_id in self.held and (not left or before >= CHATS_IN_FLIGHT > left):
                self.held.discard(conn_id)
                actions.append(Resume(conn_id))
        return done


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
