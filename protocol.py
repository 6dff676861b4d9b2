"""The chat protocol as a pure state machine: bytes in, requests, actions out.

Boundary: this module imports no socket, no selectors and nothing of the reactor. A connection is
an integer id. Everything it decides can be tested in memory, and the reactor that drives it
knows nothing of chat commands (the "sans-IO" design of h11, the HTTP library).

Theory of operation, following one request through the server:

    bytes --ChatProtocol.data_received--> the connection's Framer (sansio/wire.py)
          --maybe_next_actions--> one frame --parse_request--> a request
          --ChatProtocol.handle--> a list of actions (Send, Broadcast, Close, Shutdown, ...)

Rules of this file:
- The wire is sansio/wire.py's: every request is parsed there, every reply built there.
- Every error a peer can cause is a RequestError, turned into an ERROR_CODE reply here, in
  `handle` (or in maybe_next_actions for the framing and parsing errors).
- Exceptions other than RequestError are our own bugs; the reactor drops the connection.
- The one side effect here is logging (KILL_SERVICE, and the "other messages" nobody processes).
  Time is read only through the clock ChatProtocol is given, for the room-creation limits.
"""
import ipaddress
import logging
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from policy.bucket import TokenBucket
from rooms import Rooms
from sansio.actions import Action, Broadcast, Callback, Close, Send, Shutdown
from sansio.wire import (JOINED_TEXT, LEFT_TEXT, Chat, Disconnect, ErrorCode, Framer, Helo, Join,
                         Kill, Leave, Other, Request, RequestError, chat_message, error_reply,
                         helo_reply, joined_reply, left_reply, maybe_parse_plain_chat,
                         parse_request_in_general, quote)

LOGGER = logging.getLogger(__name__)

# How fast rooms may be created, as token buckets (a burst, then a rate per second), for one
# connection and for all connections from one address: a JOIN that would create a room past
# either gets ERROR_CODE CREATING_ROOMS_TOO_FAST (joining rooms that exist is never limited).
# Far above what people do (the course's test client creates two), and above what the
# benchmarks do (100 rooms from one address at once); 100 000 rooms from one host take minutes.
ROOM_CREATION_BURST_PER_CONNECTION = 50
ROOM_CREATIONS_PER_SECOND_PER_CONNECTION = 5
ROOM_CREATION_BURST_PER_ADDRESS = 2000
ROOM_CREATIONS_PER_SECOND_PER_ADDRESS = 200
# Who may stop the server with KILL_SERVICE (Server.py --kill-from): the course's protocol says
# anyone may; a real deployment would say "loopback" (this machine only) or "none".
KILL_FROM_CHOICES = ("any", "loopback", "none")
# The addresses whose room creations are remembered: past this many, those whose buckets have
# refilled (they have not created a room lately) are forgotten, so the table stays bounded.
ADDRESSES_REMEMBERED = 10_000
# The memberships all connections from one address may hold together (each keeps a name of up
# to MAX_NAME_CHARS): with rooms.MAX_ROOMS_PER_CONNECTION alone, one host with 20 000
# connections could hold 5 million. Past it: ERROR_CODE TOO_MANY_MEMBERSHIPS. Twice what the
# 10 000-connection test (python3 -m tools.many) needs from one address.
MAX_MEMBERSHIPS_PER_ADDRESS = 20_000


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False                        # "" (unknown) or not an address: not loopback


def handle_other_message(conn_id: int, line: str) -> List[Action]:
    """The default handler for messages the protocol does not define: log, reply nothing.

    A reply would break real clients: the course's test client sends such a message and then
    reads the next reply it expects, so an unsolicited ERROR_CODE would be read in its place.
    Pass another function to ChatProtocol to process these messages.
    """
    # DEBUG, not INFO: a peer decides how many of these there are.
    LOGGER.debug("conn %d: ignoring unknown message %s", conn_id, quote(line, 80))
    return []


# ---------------------------------------------------------------------------------------------
# The state machine: requests -> actions
# ---------------------------------------------------------------------------------------------

class _Session:
    """What the protocol remembers about one open connection."""
    __slots__ = ("framer", "local_ip", "peer_ip", "closing", "creations")

    def __init__(self, local_ip: str, peer_ip: str) -> None:
        self.framer = Framer()
        self.local_ip = local_ip      # our side of this connection, for HELO and JOINED
        self.peer_ip = peer_ip        # its side, for KILL_SERVICE's policy ("" if unknown)
        self.closing = False          # DISCONNECT or a fatal error: handle nothing more
        self.creations: Optional[TokenBucket] = None  # rooms it may create; made at its first


class ChatProtocol:
    """The whole server's protocol state: every connection's session and every room.

    The reactor drives it as a sansio.actions.App: connection_made / data_received /
    maybe_next_actions / pending_input / connections_lost; tests can also call handle() with a
    request directly.
    """

    def __init__(self, port: int, student_id: str, rooms: Optional[Rooms] = None,
                 on_other_message: Callable[[int, str], List[Action]] = handle_other_message,
                 kill_from: str = "any", clock: Callable[[], float] = time.monotonic
                 ) -> None:
        if kill_from not in KILL_FROM_CHOICES:
            raise ValueError("kill_from must be one of %s" % (KILL_FROM_CHOICES,))
        self.port = port                  # the listening port, reported by HELO and JOINED
        self.student_id = student_id
        self.rooms = rooms if rooms is not None else Rooms()
        self.on_other_message = on_other_message
        self.kill_from = kill_from
        self._clock = clock               # only for the room-creation limits
        self._sessions: Dict[int, _Session] = {}
        self._creations_by_address: Dict[str, TokenBucket] = {}
        self._memberships_by_address: Dict[str, int] = {}
        self._handlers: Dict[type, Callable[[int, Request], List[Action]]] = {
            Chat: self._on_chat, Join: self._on_join, Leave: self._on_leave,
            Disconnect: self._on_disconnect, Helo: self._on_helo, Kill: self._on_kill,
            Other: self._on_other,
        }

    # -- driven by the reactor -----------------------------------------------------------------

    def connection_made(self, conn_id: int, local_ip: str, peer_ip: str = "") -> None:
        self._sessions[conn_id] = _Session(local_ip, peer_ip)

    def data_received(self, conn_id: int, data: bytes) -> None:
        """Buffer bytes from the peer; requests are handled by maybe_next_actions()."""
        self._sessions[conn_id].framer.receive_data(data)

    def maybe_next_actions(self, conn_id: int) -> Optional[List[Action]]:
        """Handle the next complete request of `conn_id` and return its actions, or None when
        no complete request is buffered (or the connection is closing)."""
        session = self._sessions[conn_id]
        if session.closing:
            return None
        try:
            frame = session.framer.maybe_next_frame()
            if frame is None:
                return None
            # parse_request(), without its own call on the hot path: the plain-CHAT shortcut
            # first, the general parser for everything it leaves
            request = maybe_parse_plain_chat(frame) or parse_request_in_general(frame)
        except RequestError as err:
            actions: List[Action] = [Send(conn_id, error_reply(err.code, err.description))]
            if err.code == ErrorCode.REQUEST_TOO_LONG:
                session.closing = True
                actions.append(Close(conn_id))
            return actions
        return self.handle(conn_id, request)

    def pending_input(self, conn_id: int) -> int:
        """How many bytes of `conn_id`'s input are buffered, not yet handled."""
        return self._sessions[conn_id].framer.buffered()

    def connections_lost(self, conn_ids: Sequence[int]) -> List[Action]:
        """These connections are gone (closed by either side, or broken). Each room they were
        in is told they left, in the order they are named and, for each, in ascending ROOM_REF
        order; nothing is sent to any of them any more.

        All of them leave before anything is announced, so the announcements go only to the
        members that remain, and a room's announcements go out as one message: a room of 8 000
        whose members all reset at once costs 8 000 leaves, not 8 000 x 8 000 deliveries."""
        left: Dict[int, List[bytes]] = {}          # ROOM_REF -> its announcements, in order
        for conn_id in conn_ids:
            session = self._sessions.pop(conn_id, None)
            rooms_left = self.rooms.drop(conn_id)
            for ref, name in rooms_left:
                left.setdefault(ref, []).append(chat_message(ref, name, LEFT_TEXT % name))
            if session is not None:
                self._count_left(session.peer_ip, len(rooms_left))
        actions: List[Action] = []
        for ref, announcements in left.items():
            remaining = self.rooms.member_ids(ref)
            if remaining:
                actions.append(Broadcast(remaining, b"".join(announcements)))
        return actions

    def connection_lost(self, conn_id: int) -> List[Action]:
        """connections_lost() for one connection, for drivers that learn of each loss on its
        own (such as asyncio's Protocol.connection_lost)."""
        return self.connections_lost((conn_id,))

    # -- requests ------------------------------------------------------------------------------

    def handle(self, conn_id: int, request: Request) -> List[Action]:
        """The actions for one request from `conn_id`; errors become an ERROR_CODE reply."""
        try:
            return self._handlers[type(request)](conn_id, request)
        except RequestError as err:
            return [Send(conn_id, error_reply(err.code, err.description))]

    def _on_chat(self, conn_id: int, req: Chat) -> List[Action]:
        members = self.rooms.maybe_members(req.ref)
        if members is None:
            raise self._unknown_room(req.ref)
        # Identity is the connection: req.join_id and req.client_name are not trusted.
        name = members.get(conn_id)
        if name is None:
            raise RequestError(ErrorCode.NOT_A_MEMBER,
                               "not a member of room %d: JOIN_CHATROOM %s first"
                               % (req.ref, quote(self.rooms.name_of_room(req.ref))))
        return [Broadcast(tuple(members), chat_message(req.ref, name, req.message))]

    def _on_join(self, conn_id: int, req: Join) -> List[Action]:
        rooms = self.rooms
        ref = rooms.ref_of(req.room)
        session = self._admit_join(conn_id, req, ref)
        ref, join_id, newly_joined = rooms.join(conn_id, req.room, req.client_name)
        if newly_joined:
            self._count_joined(session.peer_ip)
        return self._joined(conn_id, req, ref, join_id, newly_joined)

    def _admit_join(self, conn_id: int, req: Join, ref: Optional[int],
                    count_creation: bool = True) -> _Session:
        """Check the limits a JOIN must pass (the room `ref` is None if it is new here) and
        count a room creation (unless not `count_creation`: the shared bus counts it once
        Redis says the room was new); raise RequestError if one is passed."""
        rooms = self.rooms
        if ref is None and rooms.is_full():
            raise RequestError(ErrorCode.TOO_MANY_ROOMS,
                               "the server has its maximum of %d rooms; join an existing one"
                               % rooms.max_rooms)
        if ((ref is None or rooms.name_in(conn_id, ref) is None)
                and rooms.count_rooms_of(conn_id) >= rooms.max_rooms_per_connection):
            raise RequestError(ErrorCode.TOO_MANY_MEMBERSHIPS,
                               "you are in %d rooms, the most one connection may be in; "
                               "leave one first" % rooms.max_rooms_per_connection)
        session = self._sessions[conn_id]
        by_address = self._memberships_by_address
        if ((ref is None or rooms.name_in(conn_id, ref) is None)
                and by_address.get(session.peer_ip, 0) >= MAX_MEMBERSHIPS_PER_ADDRESS):
            raise RequestError(ErrorCode.TOO_MANY_MEMBERSHIPS,
                               "connections from your address are in %d rooms, the most they "
                               "may be in together; leave one first" % MAX_MEMBERSHIPS_PER_ADDRESS)
        if ref is None and count_creation:
            self._take_room_creation(session)
        return session

    def _count_joined(self, peer_ip: str) -> None:
        by_address = self._memberships_by_address
        by_address[peer_ip] = by_address.get(peer_ip, 0) + 1

    def _joined(self, conn_id: int, req: Join, ref: int, join_id: int,
                newly_joined: bool) -> List[Action]:
        """The actions once `conn_id` is in room `ref`: its reply, then (the first time) the
        announcement to every member, itself included."""
        reply = joined_reply(req.room, self._sessions[conn_id].local_ip, self.port, ref, join_id)
        actions: List[Action] = [Send(conn_id, reply)]
        if req.names_a_callback():    # first, so that the reply already goes there
            actions.insert(0, Callback(conn_id, req.client_ip, req.port))
        if newly_joined:      # joining again: the same reply, no second announcement
            name = self.rooms.name_in(conn_id, ref)
            actions.append(Broadcast(self.rooms.member_ids(ref),
                                     chat_message(ref, name, JOINED_TEXT % name)))
        return actions

    def _on_leave(self, conn_id: int, req: Leave) -> List[Action]:
        ref = req.ref
        if not self.rooms.was_given(ref):       # a forgotten room is still answered
            raise self._unknown_room(ref)
        # The reply repeats for a room already left. Who leaves is the connection, whatever
        # JOIN_ID it quotes (nobody can leave for somebody else), and the JOIN_ID in the reply is
        # the one the server gave it; a connection that never joined gets its request's back.
        join_id = self.rooms.join_id_of(conn_id)
        reply = left_reply(ref, req.join_id if join_id is None else join_id)
        return [Send(conn_id, reply)] + self._leave(conn_id, ref, tell_self=True)

    def _on_disconnect(self, conn_id: int, req: Disconnect) -> List[Action]:
        self._sessions[conn_id].closing = True
        return self._leave_all(conn_id, tell_self=True) + [Close(conn_id)]

    def _on_helo(self, conn_id: int, req: Helo) -> List[Action]:
        reply = helo_reply(req.line, self._sessions[conn_id].local_ip, self.port, self.student_id)
        return [Send(conn_id, reply)]

    def _take_room_creation(self, session: _Session) -> None:
        """Count one room created by `session`, or refuse it if that passes the limits for the
        connection or for its address (ROOM_CREATION_BURST_PER_CONNECTION)."""
        refusal = self._room_creation_refusal(session)
        if refusal is not None:
            raise refusal
        self._spend_room_creation(session)

    def _spend_room_creation(self, session: _Session) -> None:
        """Count one room created by `session` (checked before: _room_creation_refusal)."""
        session.creations.tokens -= 1
        address = self._creations_by_address.get(session.peer_ip)
        if address is not None:
            address.tokens -= 1

    def _room_creation_refusal(self, session: _Session) -> Optional[RequestError]:
        """None if `session` may create a room now, else the error saying which limit it
        would pass. Takes nothing."""
        now = self._clock()
        if session.creations is None:
            session.creations = TokenBucket(ROOM_CREATION_BURST_PER_CONNECTION,
                                        ROOM_CREATIONS_PER_SECOND_PER_CONNECTION, now)
        by_address = self._creations_by_address
        address = by_address.get(session.peer_ip)
        if address is None:
            if len(by_address) >= ADDRESSES_REMEMBERED:     # forget the idle ones
                for ip in [ip for ip, b in by_address.items() if b.refill(now).tokens >= b.burst]:
                    del by_address[ip]
            address = by_address[session.peer_ip] = TokenBucket(
                ROOM_CREATION_BURST_PER_ADDRESS, ROOM_CREATIONS_PER_SECOND_PER_ADDRESS, now)
        for bucket, whose in ((session.creations.refill(now), "this connection"),
                              (address.refill(now), "your address")):
            if bucket.tokens < 1:
                return RequestError(ErrorCode.CREATING_ROOMS_TOO_FAST,
                                    "%s creates rooms too fast (at most %d at once, then %g a "
                                    "second); join an existing room, or wait"
                                    % (whose, bucket.burst, bucket.rate))
        return None

    def _on_kill(self, conn_id: int, req: Kill) -> List[Action]:
        peer = self._sessions[conn_id].peer_ip
        if self.kill_from == "none" or (self.kill_from == "loopback" and not _is_loopback(peer)):
            LOGGER.warning("conn %d: KILL_SERVICE from %s refused (--kill-from %s)", conn_id,
                           peer or "an unknown address", self.kill_from)
            raise RequestError(ErrorCode.KILL_NOT_ALLOWED,
                               "KILL_SERVICE is not accepted from %s on this server"
                               % ("anywhere" if self.kill_from == "none" else "your address"))
        LOGGER.info("conn %d: KILL_SERVICE from %s", conn_id, peer or "an unknown address")
        return [Shutdown()]

    def _on_other(self, conn_id: int, req: Other) -> List[Action]:
        return self.on_other_message(conn_id, req.line)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _unknown_room(ref: int) -> RequestError:
        return RequestError(ErrorCode.UNKNOWN_ROOM,
                            "no room has ROOM_REF %s; JOINED_CHATROOM tells you a room's ref"
                            % quote(str(ref)))

    def _leave(self, conn_id: int, ref: int, tell_self: bool) -> List[Action]:
        """Take conn_id out of room `ref` and announce it (to itself too if tell_self)."""
        members = self.rooms.member_ids(ref)      # before it leaves: it is told too
        name = self.rooms.leave(conn_id, ref)
        if name is None:
            return []
        self._count_left(self._sessions[conn_id].peer_ip, 1)
        return self._announce_leave(conn_id, ref, name, members, tell_self)

    def _leave_all(self, conn_id: int, tell_self: bool) -> List[Action]:
        actions: List[Action] = []
        left = self.rooms.leave_all(conn_id)
        for ref, name, members in left:             # ascending ROOM_REF
            actions += self._announce_leave(conn_id, ref, name, members, tell_self)
        self._count_left(self._sessions[conn_id].peer_ip, len(left))
        return actions

    def _count_left(self, peer_ip: str, memberships: int) -> None:
        """Connections from `peer_ip` hold `memberships` fewer (MAX_MEMBERSHIPS_PER_ADDRESS)."""
        if memberships:
            held = self._memberships_by_address[peer_ip] - memberships
            if held:
                self._memberships_by_address[peer_ip] = held
            else:
                del self._memberships_by_address[peer_ip]

    @staticmethod
    def _announce_leave(conn_id: int, ref: int, name: str, members: Tuple[int, ...],
                        tell_self: bool) -> List[Action]:
        if not tell_self:
            members = tuple(m for m in members if m != conn_id)
        if not members:
            return []
        return [Broadcast(members, chat_message(ref, name, LEFT_TEXT % name))]
