"""The rooms shared over the bus: `--bus redis://...` (several nodes, one chat server).

Boundary: like protocol.py, this module does no I/O. SharedRooms is a room service
(protocol.RoomService): protocol.ChatProtocol hands it the four requests that touch rooms (JOIN,
CHAT, LEAVE, DISCONNECT) and lost connections, and it sends them through sansio/bus.py instead
of answering at once; everything else (framing, parsing, HELO, KILL) stays ChatProtocol's. What
is done on this node (the rooms table, the limits a JOIN must pass, the replies) is
rooms.LocalRooms's, which SharedRooms holds and calls through its public methods.

How a request goes, while the bus is up:

    JOIN/CHAT/LEAVE --> Bus.join/chat/leave (a script in Redis) and a Wait(conn) action: the
        connection's next requests wait, so that its replies keep their order
    ... Redis publishes the room's event; every node's Bus hands it out in the room's order:
    Joined  --> (our joiner) JOINED_CHATROOM, then the announcement to this node's members
    Chats   --> a room's chats of one call, to this node's members as they are (the sending
                node rendered each CHAT once)
    Left    --> (our leaver) LEFT_CHATROOM, then the announcement to this node's members
    ... and, for our own request's event, Resume(conn): its next request may go.

So a node delivers its own members' chats when Redis hands them back, as it delivers
everybody else's: one order per room, the same for every member on every node.

While the bus is down (Redis unreachable, or the links being set up again): a JOIN gets
ERROR_CODE BUS_UNAVAILABLE; a CHAT to a room whose members are all on this node is delivered
here at once, and to any other room gets BUS_UNAVAILABLE; LEAVE, DISCONNECT and lost connections
are done here at once (leaving always works) and kept in `departed`, and the bus announces them
to the other nodes once it is back (Bus's sync script).
"""
import logging
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from sansio.actions import Action, Broadcast, Close, Resume, Send, Wait
from sansio.bus import (LINKS, MAX_SHARED_ROOMS, NODE_DEAD_AFTER, Bus, ChatGroup, Chats, Done,
                        Joined, Left, LocalState, Numbered, Reaped, Revived, Skipped,
                        StateChanged)
from sansio.bus_scripts import CHAT_END
from cluster.waits import InFlight, JoinWait, LeaveWait
from rooms import LocalRooms, Peer, Rooms, unknown_room
from sansio.wire import (JOINED_TEXT, LEFT_TEXT, Chat, ErrorCode, Join, Leave, RequestError,
                         chat_message, error_reply, left_reply, quote)

LOGGER = logging.getLogger(__name__)


def _unavailable(what: str) -> RequestError:
    return RequestError(ErrorCode.BUS_UNAVAILABLE,
                        "%s needs the shared bus (Redis), which this server cannot reach now; "
                        "try again in a few seconds" % what)


def _not_a_member(ref: int, room: Optional[str]) -> RequestError:
    return RequestError(ErrorCode.NOT_A_MEMBER, "not a member of room %d: %s first"
                        % (ref, "JOIN_CHATROOM " + quote(room) if room else "join it"))


def _framed(chats: Chats, bus: Bus) -> bool:
    """Whether each chat of a batch is one CHAT to its room, as chat_message() renders it (a
    node renders them; anyone who can publish to Redis could send others): the bus has checked
    that the batch holds as many chat ends as chats, the last at its end; here the first chat
    begins as one, and so does the next after every end but the last. Else nobody gets any of
    them, and the batch counts in bus.bad_events. Two calls a batch, in C, however many chats."""
    head = b"CHAT: %d\nCLIENT_NAME: " % chats.ref
    data = chats.data
    if data.startswith(head) and data.count(CHAT_END + head) == chats.count - 1:
        return True
    bus.bad_events += 1
    return False


def _log_reaped(event: Reaped) -> None:
    LOGGER.warning("bus: declared node%s %s dead (no heartbeat reached Redis for %g s while it "
                   "served the others) and announced the leaves of its %d members",
                   "s" if len(event.nodes) > 1 else "", ", ".join(event.nodes), NODE_DEAD_AFTER,
                   event.members)


def _log_revived(event: Revived) -> None:
    LOGGER.warning("bus: the other nodes had declared this one dead (no heartbeat for %g s) and "
                   "announced its members' leaves; announcing its %d members as joined again",
                   NODE_DEAD_AFTER, event.members)


class BusLinks:
    """The Redis links' half of SharedRooms (transport/redis.py, Links): what the reactor calls for the
    two links, handed to the Bus as it comes, as asyncio's transports share _FlowControlMixin.
    SharedRooms adds link_actions(), the one call that needs the rooms."""

    bus: Bus
    bus_address: Tuple[str, int]    # where every link connects to (an IP address, not a name)
    links: Tuple[str, ...]          # their names, in the order they are read each tick

    def links_wanted(self, now: float) -> List[str]:
        return self.bus.wants_links(now)

    def link_opening(self, name: str, now: float) -> None:
        self.bus.connecting(name, now)

    def link_up(self, name: str, now: float) -> None:
        self.bus.link_up(name, now)

    def link_failed(self, name: str, why: str, now: float) -> None:
        self.bus.link_failed(name, why, now)

    def link_data(self, name: str, data: bytes, now: float) -> None:
        self.bus.receive(name, data, now)

    def link_output(self, name: str) -> bytes:
        return self.bus.data_to_send(name)

    def links_to_close(self) -> List[str]:
        return self.bus.links_to_close()

    def links_deadline(self) -> Optional[float]:
        return self.bus.next_deadline()

    def links_timer(self, now: float) -> None:
        self.bus.timer(now)

    def links_goodbye(self) -> bytes:
        return self.bus.goodbye()


class SharedRooms(BusLinks):
    """The room service of one node of several sharing rooms over Redis (see the module
    docstring); give it to protocol.ChatProtocol as its `service`.

    Besides the room service, the reactor drives its two Redis links through the `link_*`
    methods (transport/redis.py, Links) and carries out what link_actions() returns after each."""

    def __init__(self, bus_address: Tuple[str, int], prefix: str, node: str, db: int = 0,
                 max_rooms: int = MAX_SHARED_ROOMS, local: Optional[LocalRooms] = None) -> None:
        """`local` holds this node's rooms and limits (if not given, a LocalRooms whose table
        holds at most `max_rooms`, as the shared one: empty rooms past it are forgotten here
        too, so that a node's memory does not grow with every room the group ever had; its
        clock is the one the bus's requests are stamped with)."""
        self.local = local if local is not None else LocalRooms(Rooms(max_rooms=max_rooms))
        self.rooms = self.local.rooms
        self._maybe_members = self.rooms.members_lookup()   # (the CHAT hot path's, in C)
        self._clock = self.local.clock
        self.bus_address = bus_address
        self.bus = Bus(prefix, node, self._local_state, db=db, max_rooms=max_rooms)
        self.links = LINKS
        self._actions: List[Action] = []
        self._waits: Dict[int, Any] = {}                # conn_id -> what it waits for
        self._in_flight = InFlight()                   # its chats on their way
        self._remote: Dict[int, int] = {}               # ref -> members on other nodes
        self._given_up: Dict[int, Dict[int, str]] = {}  # ref -> {conn: name}: see _give_up
        # Joins Redis has answered whose event is not handed out yet: ref -> {conn: (seq,
        # join_id)}. The room stays followed for them, or their event would not come.
        self._joins_due: Dict[int, Dict[int, Tuple[int, int]]] = {}
        self._maybe_idle: Set[int] = set()              # rooms to let go if nobody is left
        self.departed: List[Tuple[int, int, str]] = []  # leaves made while the bus was down
        self._departed_sent = 0
        self.refused = 0                                # requests refused: ERROR_CODE 15
        self._on_bus_event = {Chats: self._on_chats, Joined: self._on_joined, Left: self._on_left,
                              Done: self._on_done, Numbered: self._on_numbered,
                              Skipped: self._on_skipped, StateChanged: self._on_state,
                              Reaped: _log_reaped, Revived: _log_revived}

    # -- requests ------------------------------------------------------------------------------

    def join(self, conn_id: int, req: Join, peer: Peer) -> List[Action]:
        ref = self.rooms.ref_of(req.room)
        if ref is not None and self.rooms.name_in(conn_id, ref) is not None:
            return self.local.join(conn_id, req, peer)  # joining again: answered here
        if not self.bus.up:
            raise self._refuse("joining a room")
        # The room-creation limits: whether the room is new only Redis knows, so the script is
        # told whether this connection may create one, and the creation is counted once it says
        # it did (_join_done).
        self.local.admit(conn_id, peer, ref, count_creation=False)
        may_create = self.local.maybe_creation_refusal(conn_id, peer) is None
        wait = self._waits[conn_id] = JoinWait(conn_id, req, peer)
        self.bus.join(wait, conn_id, req.room, req.client_name,
                      self.rooms.join_id_of(conn_id) or 0, may_create, self._clock())
        return [Wait(conn_id)]

    def chat(self, conn_id: int, req: Chat) -> Optional[List[Action]]:
        """The hot path: a member's chat joins this tick's call to Redis; it reaches the members
        with its event (_on_chats). Anything else: _chat_not_now."""
        ref, in_flight = req.ref, self._in_flight
        members = self._maybe_members(ref)
        name = None if members is None else members.get(conn_id)
        entry = in_flight.by_conn.get(conn_id)
        if name is None or (entry is not None and entry[0] != ref) or not self.bus.chat(
                conn_id, ref, chat_message(ref, name, req.message), self._clock()):
            return self._chat_not_now(conn_id, req, name)
        return [Wait(conn_id)] if in_flight.add(conn_id, ref, entry) else []

    def _chat_not_now(self, conn_id: int, req: Chat, name: Optional[str]) -> Optional[List[Action]]:
        """A chat that cannot join this tick's call as it is: with chats of its sender on their
        way it waits for them (None: asked again after their Resume; see InFlight), whether it
        goes to another room, Redis is behind or down, or the sender is no member; else it is
        refused, or (the bus down) answered here if every member is here."""
        ref = req.ref
        if self._in_flight.hold(conn_id):
            return None
        if name is None:
            if not self._exists(ref):
                raise unknown_room(ref)
            raise _not_a_member(ref, self.bus.room_names.get(ref))
        if self.bus.up:                 # Redis is behind
            self.refused += 1
            raise RequestError(ErrorCode.BUS_UNAVAILABLE, "the shared bus (Redis) is behind: "
                               "your chat was not sent; send it again in a moment")
        if self._remote.get(ref, 0):
            raise self._refuse("a chat to a room with members on other servers")
        return self.local.chat(conn_id, req)            # every member is here

    def leave(self, conn_id: int, req: Leave) -> List[Action]:
        if not self._exists(req.ref):
            raise unknown_room(req.ref)
        name = self.rooms.name_in(conn_id, req.ref)
        join_id = self.rooms.join_id_of(conn_id)
        reply = left_reply(req.ref, req.join_id if join_id is None else join_id)
        if name is None:
            return [Send(conn_id, reply)]               # left already, or never joined
        if not self.bus.up:
            self.departed.append((req.ref, conn_id, name))
            return self.local.leave(conn_id, req)      # done here; told to the others later
        wait = self._waits[conn_id] = LeaveWait(conn_id, req.ref, [(conn_id, name)], reply)
        self.bus.leave(wait, req.ref, wait.leavers, self._clock())
        return [Wait(conn_id)]

    def disconnect(self, conn_id: int) -> List[Action]:
        refs = self.rooms.refs_of(conn_id)
        if not refs or not self.bus.up:
            self.departed += [(ref, conn_id, self.rooms.name_in(conn_id, ref)) for ref in refs]
            return self.local.disconnect(conn_id)
        remaining = set(refs)
        self._waits[conn_id] = remaining
        now = self._clock()
        for ref in refs:                                # ascending, as on one node
            leavers = [(conn_id, self.rooms.name_in(conn_id, ref))]
            self.bus.leave(LeaveWait(conn_id, ref, leavers, None, remaining), ref, leavers, now)
        return [Wait(conn_id)]

    def holds(self, conn_id: int) -> bool:
        return self._in_flight.hold(conn_id)

    def lost(self, conn_ids: Sequence[int]) -> List[Action]:
        for conn_id in conn_ids:
            self._in_flight.forget(conn_id)     # (its chats reach the others all the same)
        if not self.bus.up:
            for conn_id in conn_ids:
                self.departed += [(ref, conn_id, self.rooms.name_in(conn_id, ref))
                                  for ref in self.rooms.refs_of(conn_id)]
            return self.local.lost(conn_ids)
        leaving: Dict[int, List[Tuple[int, str]]] = {}  # ref -> lost members leaving it
        for conn_id in conn_ids:
            wait = self._waits.pop(conn_id, None)
            if isinstance(wait, JoinWait):
                wait.lost = True                        # its Done leaves the room again
            busy: Set[int] = set()                      # rooms a request of its is leaving
            if isinstance(wait, LeaveWait):
                busy = {wait.ref}
            elif isinstance(wait, set):
                busy = wait
            refs = self.rooms.refs_of(conn_id)
            self.local.forget_peer(conn_id, len(refs))  # (they leave once Redis says so)
            if not refs:
                self.rooms.forget(conn_id)
            for ref in refs:
                if ref not in busy:
                    leaving.setdefault(ref, []).append((conn_id, self.rooms.name_in(conn_id, ref)))
        now = self._clock()
        for ref, leavers in leaving.items():            # one event per room, as on one node
            self.bus.leave(LeaveWait(None, ref, leavers), ref, leavers, now)
        return []

    # -- the links, for the reactor (the rest is BusLinks's) ---------------------------------

    def link_actions(self) -> List[Action]:
        """The actions for everything the bus has handed out since the last call."""
        while True:
            events = self.bus.take_events()     # (handling a Done may hand out more)
            if not events:
                break
            for event in events:
                self._on_bus_event[type(event)](event)
        self.bus.forget_early()
        self._let_go_of_idle_rooms()
        actions, self._actions = self._actions, []
        return actions

    # -- events of the rooms -------------------------------------------------------------------

    def _on_chats(self, event: Chats) -> None:
        ref, count = event.ref, event.count
        members = self.rooms.member_ids(ref)
        if members and _framed(event, self.bus):
            self._actions.append(Broadcast(members, event.data, count))
        self._in_flight.handed_out(ref, event.seq + count - 1, self._actions)  # (ours: done)

    def _on_joined(self, event: Joined) -> None:
        if event.node != self.bus.node:
            self._remote[event.ref] = self._remote.get(event.ref, 0) + 1
            self._announce(event.ref, [event.name], JOINED_TEXT)
            return
        if event.settled:
            return              # restored: nobody here saw it leave
        due = self._joins_due.get(event.ref)
        if due is not None and due.pop(event.conn, None) is not None and not due:
            del self._joins_due[event.ref]
        wait = self._waits.get(event.conn)
        if not isinstance(wait, JoinWait) or wait.req.room != event.room:
            self._give_up(event)
            return
        self._join_here(wait, event.ref, event.join_id)

    def _give_up(self, event: Joined) -> None:
        """Our join that Redis ran although this node gave it up: the link dropped before its
        reply (the joiner got ERROR_CODE 15), or the joiner's connection is gone. The other
        nodes announce it, so this node's members are told too (one sequence for every member),
        and it is taken out again: by this leave, or by the sync after the link is back
        (whichever Redis runs first announces it; see _on_left)."""
        ref = event.ref
        self._announce(ref, [event.name], JOINED_TEXT)
        self._given_up.setdefault(ref, {})[event.conn] = event.name
        leavers = [(event.conn, event.name)]
        self.bus.leave(LeaveWait(None, ref, []), ref, leavers, self._clock())

    def _join_here(self, wait: JoinWait, ref: int, join_id: int) -> None:
        conn_id, req = wait.conn_id, wait.req
        del self._waits[conn_id]
        self.rooms.join(conn_id, req.room, req.client_name, ref, join_id)
        self.local.count_joined(conn_id, wait.peer)
        self._actions += self.local.joined(conn_id, req, wait.peer, ref, join_id, True)
        self._actions.append(Resume(conn_id))

    def _on_left(self, event: Left) -> None:
        ref = event.ref
        if event.node != self.bus.node:
            self._remote[ref] = max(0, self._remote.get(ref, 0) - len(event.leavers))
            self._announce(ref, [name for _conn, name in event.leavers], LEFT_TEXT)
        else:
            given_up = self._given_up.get(ref, {})      # (settled or not: see _give_up)
            self._announce(ref, [name for conn_id, name in event.leavers
                                 if given_up.pop(conn_id, None) is not None], LEFT_TEXT)
            lost = []                                   # lost connections: left together
            for conn_id, name in event.leavers if not event.settled else ():
                wait = self._waits.get(conn_id)
                if isinstance(wait, LeaveWait) and wait.ref == ref:
                    self._leave_here(wait)
                elif isinstance(wait, set) and ref in wait:
                    self._leave_here(LeaveWait(conn_id, ref, [], None, wait))
                elif (self.rooms.name_in(conn_id, ref) is not None
                      and self.local.peer_of(conn_id) is None):
                    lost.append((conn_id, name))
                # (a member still here whose leave another node announced: this node was
                # reaped while it could not heartbeat; its sync puts the member back)
            if lost:
                # One leave for all of them, as on one server (LocalRooms.lost): the room's
                # members are listed once and told in one message. One by one, 4 000 members
                # resetting at once cost 4 000 lists of the room: seconds of one tick.
                self._leave_here(LeaveWait(None, ref, lost))
        self._maybe_idle.add(ref)     # (let go of once what came with this is handled)

    def _leave_here(self, wait: LeaveWait) -> None:
        """Carry out a leave on this node: the leaver's reply (LEAVE), then the announcement to
        the room's members here (the leaver too, unless it is gone)."""
        ref = wait.ref
        if not wait.still_waited_for(self._waits):
            return
        members = self.rooms.member_ids(ref)
        names = []
        for conn_id, _name in wait.leavers or [(wait.conn_id, "")]:
            name = self.rooms.leave(conn_id, ref)
            if name is None:
                continue
            names.append(name)
            if self.local.peer_of(conn_id) is not None:
                self.local.count_left(conn_id, 1)
            elif not self.rooms.count_rooms_of(conn_id):
                self.rooms.forget(conn_id)              # gone, and in no room any more
        leaver_here = wait.conn_id is not None and self.local.peer_of(wait.conn_id) is not None
        told = members if leaver_here else self.rooms.member_ids(ref)     # (who remains)
        if wait.reply is not None:
            self._actions.append(Send(wait.conn_id, wait.reply))
        if names and told:
            self._actions.append(Broadcast(told, b"".join(
                chat_message(ref, name, LEFT_TEXT % name) for name in names)))
        if wait.disconnect is not None:
            wait.disconnect.discard(ref)
            if not wait.disconnect and self._waits.get(wait.conn_id) is wait.disconnect:
                del self._waits[wait.conn_id]
                self._actions.append(Close(wait.conn_id))
        elif wait.conn_id is not None and self._waits.get(wait.conn_id) is wait:
            self._resume(wait.conn_id)
        self._maybe_idle.add(ref)     # (let go of once what came with this is handled)

    def _announce(self, ref: int, names: List[str], text: str) -> None:
        members = self.rooms.member_ids(ref)
        if members and names:
            self._actions.append(Broadcast(members, b"".join(
                chat_message(ref, name, text % name) for name in names)))

    # -- replies and the bus's state -----------------------------------------------------------

    def _on_done(self, event: Done) -> None:
        wait, value = event.token, event.value
        if isinstance(wait, JoinWait):
            self._join_done(wait, event)
        elif isinstance(wait, ChatGroup):               # (failed: a call's Done is Numbered)
            self.refused += self._in_flight.finish(wait.ref, wait.conns, self._actions, error_reply(
                ErrorCode.BUS_UNAVAILABLE, "the shared bus (Redis) failed (%s): your chat "
                "may not have reached every member" % event.failed))
        elif isinstance(wait, LeaveWait):
            # Who Redis did not count as members is not announced by it: do it here.
            removed = set() if event.failed else set(value[1:])
            if event.failed:
                self.departed += [(wait.ref, c, n) for c, n in wait.leavers]
            else:
                wait.seq = value[0]
            here = [(c, n) for c, n in wait.leavers if c not in removed]
            if wait.conn_id is not None and here and wait.still_waited_for(self._waits):
                self._leave_here(wait)                  # LEAVE / DISCONNECT, done here
            elif here:                                  # lost members: gone here too
                self._leave_here(LeaveWait(None, wait.ref, here))

    def _join_done(self, wait: JoinWait, event: Done) -> None:
        conn_id = wait.conn_id
        if event.failed or event.value[0] < 0:
            if not wait.lost and self._waits.get(conn_id) is wait:
                del self._waits[conn_id]
                if event.failed:
                    error = self._refuse("joining a room")
                elif event.value[0] == -2:
                    error = self.local.maybe_creation_refusal(conn_id, wait.peer) or RequestError(
                        ErrorCode.CREATING_ROOMS_TOO_FAST, "rooms are being created too fast "
                        "from here; join an existing room, or wait")
                else:
                    error = RequestError(ErrorCode.TOO_MANY_ROOMS, "the shared servers have "
                                         "their maximum of %d rooms, each with members; join "
                                         "an existing one" % self.bus.max_rooms)
                self._actions += [Send(conn_id, error_reply(error.code, error.description)),
                                  Resume(conn_id)]
            return
        ref, join_id, seq, others, created = event.value
        if created and not wait.lost:
            self.local.spend_creation(conn_id, wait.peer)
        if wait.lost:           # gone before Redis answered: take it out again
            self.bus.leave(LeaveWait(None, ref, []), ref, [(conn_id, wait.req.client_name)],
                           self._clock())
            return
        if not self.bus.follows(ref):
            self._remote[ref] = others
        if self._waits.get(conn_id) is wait:           # (its event may have come first)
            self._joins_due.setdefault(ref, {})[conn_id] = (seq, join_id)
        self.bus.follow(ref, seq, self._clock())

    def _on_numbered(self, event: Numbered) -> None:
        for group, first in zip(event.groups, event.firsts):
            self._in_flight.numbered(group.ref, group.conns, first, self._actions)

    def _on_skipped(self, event: Skipped) -> None:
        """Events of a room this node can no longer read: our own requests among them are done
        as far as this node can tell."""
        self._in_flight.handed_out(event.ref, event.upto, self._actions)
        for conn_id, wait in list(self._waits.items()):
            if isinstance(wait, LeaveWait) and wait.ref == event.ref \
                    and wait.seq is not None and wait.seq <= event.upto:
                self._leave_here(wait)
        due = self._joins_due.get(event.ref, {})
        for conn_id, (seq, join_id) in list(due.items()):
            if seq <= event.upto:           # its own event is lost: joined all the same
                del due[conn_id]
                wait = self._waits.get(conn_id)
                if isinstance(wait, JoinWait):
                    self._join_here(wait, event.ref, join_id)
        if not due:
            self._joins_due.pop(event.ref, None)
        LOGGER.warning("bus: room %d: events up to %d could not be read back (lost here; %d "
                       "so far)", event.ref, event.upto, self.bus.lost)

    def _on_state(self, event: StateChanged) -> None:
        if event.up:
            del self.departed[:self._departed_sent]
            self._departed_sent = 0
            LOGGER.info("bus: up (node %s): %s; so far %d outages, %d requests refused with "
                        "ERROR_CODE %d, %d events read back, %d lost", self.bus.node, event.why,
                        self.bus.outages, self.refused, ErrorCode.BUS_UNAVAILABLE,
                        self.bus.repaired, self.bus.lost)
        else:
            LOGGER.warning("bus: down (%s); rooms with every member here keep working, other "
                           "requests get ERROR_CODE %d until it is back", event.why,
                           ErrorCode.BUS_UNAVAILABLE)

    # -- helpers -------------------------------------------------------------------------------

    def _refuse(self, what: str) -> RequestError:
        self.refused += 1
        return _unavailable(what)

    def _resume(self, conn_id: int) -> None:
        self._waits.pop(conn_id, None)
        self._actions.append(Resume(conn_id))

    def _exists(self, ref: int) -> bool:
        """True if room `ref` was ever given, on any node (as far as this one has heard)."""
        return self.rooms.was_given(ref) or 0 <= ref < self.bus.next_ref

    def _let_go_of_idle_rooms(self) -> None:
        for ref in self._maybe_idle:
            if not self.rooms.member_ids(ref) and ref not in self._joins_due:
                self.bus.unfollow(ref)
                self._in_flight.forget_room(ref)
                self._remote.pop(ref, None)
                self._given_up.pop(ref, None)   # their leaves are no longer handed out here
        self._maybe_idle.clear()

    def _local_state(self) -> LocalState:
        self._departed_sent = len(self.departed)
        names = dict(self.bus.room_names)
        for ref, _conn, _jid, _name in self.rooms.memberships():
            names.setdefault(ref, self.rooms.name_of_room(ref))
        return LocalState(list(self.rooms.memberships()), list(self.departed), names)
