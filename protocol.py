"""The chat protocol as a pure state machine: bytes in, requests, actions out.

Boundary: this module imports no socket, no selectors and nothing of the reactor or of cluster/.
A connection is an integer id. Everything it decides can be tested in memory, and the reactor
that drives it knows nothing of chat commands (the "sans-IO" design of h11, the HTTP library).

Theory of operation, following one request through the server:

    bytes --ChatProtocol.data_received--> the connection's Framer (sansio/wire.py)
          --maybe_next_actions--> one frame --parse_request--> a request
          --ChatProtocol.handle--> a list of actions (Send, Broadcast, Close, Shutdown, ...)

HELO, KILL_SERVICE and messages the protocol does not define are answered here. The requests
that touch rooms (JOIN, CHAT, LEAVE, DISCONNECT) and lost connections go to the room service
it is given (`RoomService`): rooms.LocalRooms answers them at once from this server's rooms;
cluster.shared.SharedRooms shares the rooms of several servers over Redis, and answers some of
them later (a Wait action now, the reply and a Resume once Redis has answered).

Rules of this file:
- The wire is sansio/wire.py's: every request is parsed there, every reply built there.
- Every error a peer can cause is a RequestError, turned into an ERROR_CODE reply here, in
  `handle` (or in maybe_next_actions for the framing and parsing errors).
- Exceptions other than RequestError are our own bugs; the reactor drops the connection.
- The one side effect here is logging (KILL_SERVICE, and the "other messages" nobody processes).
"""
import ipaddress
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from rooms import LocalRooms, Peer, Rooms
from sansio.actions import Action, Close, Send, Shutdown, Wait
from sansio.wire import (Chat, Disconnect, ErrorCode, Framer, Helo, Join, Kill, Leave, Other,
                         Request, RequestError, error_reply, helo_reply, maybe_parse_plain_chat,
                         parse_request_in_general, quote)

LOGGER = logging.getLogger(__name__)

# Who may stop the server with KILL_SERVICE (Server.py --kill-from): the course's protocol says
# anyone may; a real deployment would say "loopback" (this machine only) or "none".
KILL_FROM_CHOICES = ("any", "loopback", "none")


class RoomService(Protocol):
    """What ChatProtocol needs of the rooms: the four requests that touch them and lost
    connections, each answered with actions (as ChatProtocol is answered by the reactor). A
    RequestError raised by any of them becomes the requester's ERROR_CODE reply.

    Two implementations: rooms.LocalRooms (one server) and cluster.shared.SharedRooms (rooms
    shared over Redis). Any class with these methods is one (a typing.Protocol: checked by type
    checkers, not at run time)."""

    rooms: Rooms        # the rooms this server's own connections are in (statistics, tests)

    def join(self, conn_id: int, req: Join, peer: Peer) -> List[Action]:
        """JOIN_CHATROOM from `conn_id`, whose addresses `peer` gives."""

    def chat(self, conn_id: int, req: Chat) -> Optional[List[Action]]:
        """CHAT from `conn_id`: the hot path. None: not now (see holds()); it is asked again
        after the service's Resume."""

    def leave(self, conn_id: int, req: Leave) -> List[Action]:
        """LEAVE_CHATROOM from `conn_id`."""

    def disconnect(self, conn_id: int) -> List[Action]:
        """DISCONNECT from `conn_id`: leave every room, then its Close (in these actions, or
        after a Wait, once every room is left)."""

    def lost(self, conn_ids: Sequence[int]) -> List[Action]:
        """These connections are gone (App.connections_lost): take them out of their rooms."""

    def holds(self, conn_id: int) -> bool:
        """True while `conn_id`'s chats are on their way (the service answers them later,
        several at once): its next request that is not a CHAT waits for them, so that its
        replies keep the order of its requests."""


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

# What a session holds back once it is closing (DISCONNECT, or a fatal error): nothing more of
# its requests is handled. One slot for both, not a flag of its own: 96 bytes a session, not 112.
SESSION_CLOSING = object()


class _Session(Framer):
    """What the protocol remembers about one open connection: its framer (the session is one,
    with slots more: one object a connection, not two, as 10 000 idle connections cost 64
    bytes less each), its addresses, and a request held back, or SESSION_CLOSING."""
    __slots__ = ("peer", "held")

    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer              # its addresses: ours for HELO and JOINED, its own for KILL
        # A request waiting for the chats before it (RoomService.holds, or None from chat): its
        # frame, or the CHAT already taken from the buffer. SESSION_CLOSING once it is closing.
        self.held: Any = None

    def let_go_of_buffer(self) -> None:
        """All its input is handled: its framer holds b"", not an empty bytearray of its own
        (56 bytes: 560 KB of 10 000 idle connections), until its next bytes come
        (Framer.receive_data makes a bytearray of them)."""
        self._buf = b""


class ChatProtocol:
    """The whole server's protocol state: every connection's session, and the room service
    that holds the rooms (rooms.LocalRooms unless another is given).

    The reactor drives it as a sansio.actions.App: connection_made / data_received /
    maybe_next_actions / pending_input / connections_lost; tests can also call handle() with a
    request directly.
    """

    def __init__(self, port: int, student_id: str, rooms: Optional[Rooms] = None,
                 on_other_message: Callable[[int, str], List[Action]] = handle_other_message,
                 kill_from: str = "any", clock: Callable[[], float] = time.monotonic,
                 service: Optional[RoomService] = None) -> None:
        """`rooms` and `clock` (for the room-creation limits) make the default LocalRooms;
        `service` is another room service, such as cluster.shared.SharedRooms."""
        if kill_from not in KILL_FROM_CHOICES:
            raise ValueError("kill_from must be one of %s" % (KILL_FROM_CHOICES,))
        self.port = port                  # the listening port, reported by HELO and JOINED
        self.student_id = student_id
        self.service = service if service is not None else LocalRooms(rooms, clock)
        self.rooms = self.service.rooms
        self.on_other_message = on_other_message
        self.kill_from = kill_from
        self._sessions: Dict[int, _Session] = {}
        # The last connection's Peer, shared by the next from the same addresses (nobody
        # changes a Peer): a client that opens many connections costs one, not one each.
        self._last_peer: Optional[Peer] = None
        service = self.service
        # CHAT and LEAVE go straight to the service: no call of ours on the hot path.
        self._handlers: Dict[type, Callable[[int, Request], List[Action]]] = {
            Chat: service.chat, Join: self._on_join, Leave: service.leave,
            Disconnect: self._on_disconnect, Helo: self._on_helo, Kill: self._on_kill,
            Other: self._on_other,
        }

    # -- driven by the reactor -----------------------------------------------------------------

    def connection_made(self, conn_id: int, local_ip: str, peer_ip: str = "") -> None:
        peer = self._last_peer
        if peer is None or peer.peer_ip != peer_ip or peer.local_ip != local_ip:
            peer = self._last_peer = Peer(local_ip, self.port, peer_ip)
        self._sessions[conn_id] = _Session(peer)

    def data_received(self, conn_id: int, data: bytes) -> None:
        """Buffer bytes from the peer; requests are handled by maybe_next_actions()."""
        self._sessions[conn_id].receive_data(data)

    def maybe_next_actions(self, conn_id: int) -> Optional[List[Action]]:
        """Handle the next complete request of `conn_id` and return its actions, or None when
        no complete request is buffered (or the connection is closing)."""
        session = self._sessions[conn_id]
        held = session.held
        if held is SESSION_CLOSING:
            return None
        try:
            session.held = None
            if held is None:
                # A plain CHAT taken whole from the buffer (the commonest request), straight to
                # the room service (handle(), without a call); else a frame
                request = session.maybe_take_plain_chat()
                if request is not None:
                    actions = self.service.chat(conn_id, request)
                    if actions is None:     # not now: asked again after the service's Resume
                        session.held = request
                        return [Wait(conn_id)]
                    return actions
                held = session.maybe_next_frame()
                if held is None:
                    return None
            if isinstance(held, bytes):
                # parse_request() without its own call: the plain-CHAT parse, then the general
                # one, once the chats before it are answered (the service says when: a Resume)
                request = maybe_parse_plain_chat(held)
                if request is None:
                    if self.service.holds(conn_id):
                        session.held = held
                        return [Wait(conn_id)]
                    request = parse_request_in_general(held)
            else:
                request = held
        except RequestError as err:
            actions: List[Action] = [Send(conn_id, error_reply(err.code, err.description))]
            if err.code == ErrorCode.REQUEST_TOO_LONG:
                session.held = SESSION_CLOSING
                actions.append(Close(conn_id))
            return actions
        actions = self.handle(conn_id, request)
        if actions is None:                 # not now: asked again after the service's Resume
            session.held = request
            return [Wait(conn_id)]
        return actions

    def pending_input(self, conn_id: int) -> int:
        """How many bytes of `conn_id`'s input are buffered, not yet handled (none: its empty
        buffer goes, _Session.let_go_of_buffer)."""
        session = self._sessions[conn_id]
        held = session.buffered()
        if not held:
            session.let_go_of_buffer()
        return held

    def connections_lost(self, conn_ids: Sequence[int]) -> List[Action]:
        """These connections are gone (closed by either side, or broken): nothing is sent to
        any of them any more, and the room service takes them out of their rooms (see
        rooms.LocalRooms.lost for the order of the announcements)."""
        for conn_id in conn_ids:
            self._sessions.pop(conn_id, None)
        return self.service.lost(conn_ids)

    def departure_cost(self, conn_id: int) -> int:
        """What telling of `conn_id`'s loss costs (the reactor's unit of departure work): one,
        plus one leave announcement per room it is in."""
        return 1 + self.rooms.count_rooms_of(conn_id)

    def connection_lost(self, conn_id: int) -> List[Action]:
        """connections_lost() for one connection, for drivers that learn of each loss on its
        own (such as asyncio's Protocol.connection_lost)."""
        return self.connections_lost((conn_id,))

    # -- requests ------------------------------------------------------------------------------

    def handle(self, conn_id: int, request: Request) -> Optional[List[Action]]:
        """The actions for one request from `conn_id`; errors become an ERROR_CODE reply. None
        when the service holds it (RoomService.chat)."""
        try:
            return self._handlers[type(request)](conn_id, request)
        except RequestError as err:
            return [Send(conn_id, error_reply(err.code, err.description))]

    def _on_join(self, conn_id: int, req: Join) -> List[Action]:
        return self.service.join(conn_id, req, self._sessions[conn_id].peer)

    def _on_disconnect(self, conn_id: int, req: Disconnect) -> List[Action]:
        self._sessions[conn_id].held = SESSION_CLOSING
        return self.service.disconnect(conn_id)

    def _on_helo(self, conn_id: int, req: Helo) -> List[Action]:
        reply = helo_reply(req.line, self._sessions[conn_id].peer.local_ip, self.port,
                           self.student_id)
        return [Send(conn_id, reply)]

    def _on_kill(self, conn_id: int, req: Kill) -> List[Action]:
        peer = self._sessions[conn_id].peer.peer_ip
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
