"""Room state and the one-server room service.

Two layers in this module:
- `Rooms`, the table: room names <-> ROOM_REFs, who is in which room, and JOIN_IDs. It knows
  nothing of bytes, sockets or the wire format; a connection is an integer id handed to us by
  the caller; a room is a ROOM_REF (an int) with a name (a str). Plain dictionaries, so it is
  cheap to test and cheap to run.
- `LocalRooms`, the room service of one server (protocol.RoomService): a JOIN, CHAT, LEAVE,
  DISCONNECT or lost connection in, actions out, answered at once from the table, with the
  limits a JOIN must pass. protocol.ChatProtocol hands it those requests; cluster/shared.py is
  the other room service (rooms shared over Redis), and uses this one for what it does here.

The rules the table keeps (docs/PROTOCOL.md, "Identity"):
- a ROOM_REF is given to a room name the first time anybody joins it and stays its ref while
  the room is in the table, empty or not (the course's test client leaves room1, joins it again
  and expects the same ref); refs count up from 0 and are never given to another name;
- the table holds at most MAX_ROOMS rooms. When it is full and a JOIN names a new room, the room
  that has been empty longest is forgotten to make space; a forgotten name joined again later
  gets a new ref. Rooms with members are never forgotten;
- a JOIN_ID is given to a connection at its first JOIN and used for every room it joins;
  distinct connections get distinct ids (they count up from 1);
- a connection is in a room at most once, under the CLIENT_NAME it gave when it joined that room.
"""
import collections
import logging
import time
from typing import (Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    Union)

from policy.creations import RoomCreations
from sansio.actions import Action, Broadcast, Callback, Close, Send
from sansio.wire import (JOINED_TEXT, LEFT_TEXT, Chat, ErrorCode, Join, Leave, RequestError,
                         chat_message, joined_reply, left_reply, maybe_callback_address, quote)

LOGGER = logging.getLogger(__name__)

# A room costs a few hundred bytes plus its name (at most sansio.wire.MAX_NAME_CHARS). An endless
# stream of JOINs with fresh names must stop somewhere, so the table holds at most this many
# rooms; past it, empty rooms are forgotten (oldest-emptied first) and a JOIN gets ERROR_CODE
# TOO_MANY_ROOMS only when every room in the table has members. 100 000 rooms is far above any
# real use of this server.
MAX_ROOMS = 100_000
# Each membership keeps the CLIENT_NAME given for it, so the rooms one connection may be in are
# bounded too. A JOIN past it gets ERROR_CODE TOO_MANY_MEMBERSHIPS. 256, so that the replies to
# one DISCONNECT (a leave announcement for each room, with the longest names: ~2.1 KB each)
# always fit in what the reactor lets one connection be owed (its HIGH_WATER plus one request's
# replies stay under OUTPUT_CAP; tests/test_limits.py checks the sum), and so that one
# connection's memberships cost at most ~300 KB.
MAX_ROOMS_PER_CONNECTION = 256
# The memberships all connections from one address may hold together (each keeps a name of up
# to MAX_NAME_CHARS): with MAX_ROOMS_PER_CONNECTION alone, one host with 20 000 connections
# could hold 5 million. Past it: ERROR_CODE TOO_MANY_MEMBERSHIPS. Twice what the
# 10 000-connection test (python3 -m tools.many) needs from one address.
MAX_MEMBERSHIPS_PER_ADDRESS = 20_000
# The memberships of all connections together. Per address alone there is no bound: 59 addresses
# at their limit held 760 000 (+357 MiB). A membership costs ~200 bytes with short names and
# ~1.4 KB with the widest (a CLIENT_NAME of 256 four-byte characters), so memberships stay under
# ~60 MB with short names and ~420 MB at worst. Past it: ERROR_CODE TOO_MANY_MEMBERSHIPS. It
# takes 15 addresses at their own limit to fill it (30 times what tools.many needs).
MAX_MEMBERSHIPS = 300_000
# From this many memberships on, only an address holding fewer than MAX_ROOMS_PER_CONNECTION
# (one connection's worth) may take more: the last tenth is kept for newcomers, so the addresses
# that filled the table cannot lock everybody else out of it.
MEMBERSHIPS_CROWDED = 270_000

# What Rooms keeps of the rooms a connection is in: one ROOM_REF, or a tuple of several.
RefsHeld = Union[int, Tuple[int, ...]]


def _as_tuple(refs: RefsHeld) -> Tuple[int, ...]:
    """The rooms a connection is in (Rooms._refs_of's value), as a tuple."""
    return (refs,) if type(refs) is int else refs


class Rooms:
    """All rooms of one server. Costs grow with the rooms of the connection concerned (join,
    leave, leave_all: at most MAX_ROOMS_PER_CONNECTION), never with the number of rooms."""

    def __init__(self, max_rooms: int = MAX_ROOMS,
                 max_rooms_per_connection: int = MAX_ROOMS_PER_CONNECTION) -> None:
        self.max_rooms = max_rooms
        self.max_rooms_per_connection = max_rooms_per_connection
        self._ref_by_name: Dict[str, int] = {}
        self._names: Dict[int, str] = {}                # ROOM_REF -> room name
        self._members: Dict[int, Dict[int, str]] = {}   # ROOM_REF -> {conn_id: name}, join order
        # The rooms without members, longest-empty first: the ones that may be forgotten.
        self._empty: "collections.OrderedDict[int, None]" = collections.OrderedDict()
        self._next_ref = 0
        # conn_id -> the ROOM_REFs it is in: the bare ref while it is in one room (most are; a
        # ref below 257 is an int Python shares, where (ref,) is 48 bytes and [ref] 88: 480 KB
        # at 10 000 connections), else a tuple (see _as_tuple).
        self._refs_of: Dict[int, RefsHeld] = {}
        self._join_ids: Dict[int, int] = {}         # conn_id -> JOIN_ID
        self._next_join_id = 1

    # -- rooms ---------------------------------------------------------------------------------

    def ref_of(self, room_name: str) -> Optional[int]:
        """The ROOM_REF of a room name in the table, or None."""
        return self._ref_by_name.get(room_name)

    def exists(self, ref: int) -> bool:
        """True if room `ref` is in the table now."""
        return ref in self._names

    def was_given(self, ref: int) -> bool:
        """True if `ref` was ever given to a room, even one forgotten since."""
        return 0 <= ref < self._next_ref

    def name_of_room(self, ref: int) -> str:
        return self._names[ref]

    def is_full(self) -> bool:
        """True when no new room may be created: the table is full and every room in it has
        members (joining an existing room still works)."""
        return len(self._names) >= self.max_rooms and not self._empty

    def count_rooms(self) -> int:
        """How many rooms the table holds now."""
        return len(self._names)

    def count_memberships(self) -> int:
        """How many (connection, room) memberships there are (O(connections): for statistics)."""
        return sum(len(_as_tuple(refs)) for refs in self._refs_of.values())

    def maybe_members(self, ref: int) -> Optional[Mapping[int, str]]:
        """The live {conn_id: client name} of room `ref` in join order, or None if there is no
        such room. Read it, do not keep it or change it (every CHAT reads it, so it is not
        copied)."""
        return self._members.get(ref)

    def members_lookup(self) -> Callable[[int], Optional[Mapping[int, str]]]:
        """maybe_members() as one call in C, the table's own lookup, for the CHAT hot path to
        keep (rooms100x5: a call in Python fewer per request)."""
        return self._members.get

    def count_rooms_of(self, conn_id: int) -> int:
        """How many rooms `conn_id` is in."""
        return len(_as_tuple(self._refs_of.get(conn_id, ())))

    def member_ids(self, ref: int) -> Tuple[int, ...]:
        """A snapshot of the connections in room `ref`, in the order they joined."""
        return tuple(self._members.get(ref, ()))

    def name_in(self, conn_id: int, ref: int) -> Optional[str]:
        """The CLIENT_NAME `conn_id` joined room `ref` under, or None if it is not a member."""
        members = self._members.get(ref)
        return None if members is None else members.get(conn_id)

    # -- membership ----------------------------------------------------------------------------

    def join(self, conn_id: int, room_name: str, client_name: str, given_ref: Optional[int] = None,
             given_join_id: Optional[int] = None) -> Tuple[int, int, bool]:
        """Put `conn_id` in the room called `room_name`, creating the room if needed (and
        forgetting the longest-empty room if the table is full).

        Returns (ROOM_REF, JOIN_ID, newly_joined). A connection already in the room stays in it
        under its first name and newly_joined is False. The caller checks is_full() before
        joining a room that does not exist yet, and count_rooms_of() before a new membership.
        With the shared bus (cluster/shared.py) Redis gives the ref and the JOIN_ID: `given_ref` and
        `given_join_id`, which this table then keeps.
        """
        ref = self._ref_by_name.get(room_name)
        if ref is not None and given_ref is not None and ref != given_ref \
                and not self._members[ref]:
            self._forget_room(ref)      # the shared table forgot it; the name has a new ref
            ref = None
        if ref is None:
            ref = self._create(room_name, given_ref)
        join_id = self._join_ids.get(conn_id)
        if join_id is None:
            if given_join_id is None:
                given_join_id = self._next_join_id
                self._next_join_id += 1
            join_id = self._join_ids[conn_id] = given_join_id
        members = self._members[ref]
        if conn_id in members:
            return ref, join_id, False
        if not members:
            del self._empty[ref]
        members[conn_id] = client_name
        held = self._refs_of.get(conn_id)
        self._refs_of[conn_id] = ref if held is None else _as_tuple(held) + (ref,)
        return ref, join_id, True

    def _create(self, room_name: str, ref: Optional[int] = None) -> int:
        if len(self._names) >= self.max_rooms and self._empty:
            # The longest-empty room. (None empty: only with the shared bus, whose Redis gave
            # the room; this node's table then holds one room more than its maximum for now.)
            self._forget_room(next(iter(self._empty)))
        if ref is None:
            ref = self._next_ref
        self._next_ref = max(self._next_ref, ref + 1)
        self._ref_by_name[room_name] = ref
        self._names[ref] = room_name
        self._members[ref] = {}
        self._empty[ref] = None
        return ref

    def _forget_room(self, ref: int) -> None:
        """Take an empty room out of the table (its ref is never given again)."""
        del self._empty[ref]
        del self._ref_by_name[self._names.pop(ref)]
        del self._members[ref]

    def leave(self, conn_id: int, ref: int) -> Optional[str]:
        """Take `conn_id` out of room `ref`. Returns the name it had there, or None if it was
        not a member (leaving twice is not an error)."""
        members = self._members.get(ref)
        name = None if members is None else members.pop(conn_id, None)
        if name is not None:
            refs = tuple(r for r in _as_tuple(self._refs_of[conn_id]) if r != ref)
            if refs:
                self._refs_of[conn_id] = refs[0] if len(refs) == 1 else refs
            else:
                del self._refs_of[conn_id]
            if not members:
                self._empty[ref] = None
        return name

    def leave_all(self, conn_id: int) -> List[Tuple[int, str, Tuple[int, ...]]]:
        """Take `conn_id` out of every room it is in. Returns, in ascending ROOM_REF order (the
        order DISCONNECT announces in), (ref, the name it had there, the members just before
        it left, itself included)."""
        left = []
        for ref in sorted(_as_tuple(self._refs_of.pop(conn_id, ()))):
            members = self._members[ref]
            before = tuple(members)
            left.append((ref, members.pop(conn_id), before))
            if not members:
                self._empty[ref] = None
        return left

    def drop(self, conn_id: int) -> List[Tuple[int, str]]:
        """leave_all() and forget() for a connection that is gone, without the snapshots of
        each room's members (nobody is told by this connection; the caller announces to who
        remains): (ref, the name it had there), in ascending ROOM_REF order. The cost is its
        own rooms, not their sizes, so 8 000 members of one room leaving cost 8 000 steps."""
        left = []
        for ref in sorted(_as_tuple(self._refs_of.pop(conn_id, ()))):
            members = self._members[ref]
            left.append((ref, members.pop(conn_id)))
            if not members:
                self._empty[ref] = None
        self._join_ids.pop(conn_id, None)
        return left

    def memberships(self) -> Iterator[Tuple[int, int, int, str]]:
        """Every membership as (ref, conn_id, its JOIN_ID, its name there), for the shared bus's
        record of this node's members (O(memberships))."""
        for ref, members in self._members.items():
            for conn_id, name in members.items():
                yield ref, conn_id, self._join_ids[conn_id], name

    def refs_of(self, conn_id: int) -> List[int]:
        """The rooms `conn_id` is in, in ascending ROOM_REF order (the order DISCONNECT uses)."""
        return sorted(_as_tuple(self._refs_of.get(conn_id, ())))

    def join_id_of(self, conn_id: int) -> Optional[int]:
        """The JOIN_ID given to `conn_id`, or None if it never joined a room."""
        return self._join_ids.get(conn_id)

    def forget(self, conn_id: int) -> None:
        """Drop everything known about a connection that has gone, memberships included (the
        caller announces the leaves first). Its JOIN_ID is never given to anybody else."""
        for ref in _as_tuple(self._refs_of.pop(conn_id, ())):
            members = self._members[ref]
            del members[conn_id]
            if not members:
                self._empty[ref] = None
        self._join_ids.pop(conn_id, None)


# ---------------------------------------------------------------------------------------------
# The room service of one server
# ---------------------------------------------------------------------------------------------

class Peer:
    """What the room service knows of one connection: our address on it, for JOINED_CHATROOM's
    SERVER_IP and PORT, and the peer's address, for the limits per address ("" if unknown)."""
    __slots__ = ("local_ip", "port", "peer_ip")

    def __init__(self, local_ip: str, port: int, peer_ip: str) -> None:
        self.local_ip, self.port, self.peer_ip = local_ip, port, peer_ip


def unknown_room(ref: int) -> RequestError:
    """The error for a request naming a ROOM_REF no room was ever given."""
    return RequestError(ErrorCode.UNKNOWN_ROOM,
                        "no room has ROOM_REF %s; JOINED_CHATROOM tells you a room's ref"
                        % quote(str(ref)))


class LocalRooms:
    """The room service of one server (protocol.RoomService): every request answered at once
    from `rooms`, the table. Besides the table it keeps the limits a JOIN must pass (rooms
    created per connection and per address, memberships per address) and, from a connection's
    first JOIN until it is lost, its Peer.

    Its public helpers (admit, joined, count_joined, ...) are the steps of a JOIN and a leave,
    for cluster/shared.py, which does those steps itself once Redis has answered."""

    def __init__(self, rooms: Optional[Rooms] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rooms = rooms if rooms is not None else Rooms()
        self.clock = clock                # only for the room-creation limits
        self.creations = RoomCreations()
        self._peers: Dict[int, Peer] = {}
        self._memberships_by_address: Dict[str, int] = {}
        self.memberships = 0              # of this server's connections (MAX_MEMBERSHIPS)
        self._maybe_members = self.rooms.members_lookup()

    # -- the service ---------------------------------------------------------------------------

    def join(self, conn_id: int, req: Join, peer: Peer) -> List[Action]:
        """JOIN_CHATROOM: its reply and (the first time) the announcement to the room."""
        rooms = self.rooms
        self.admit(conn_id, peer, rooms.ref_of(req.room))
        ref, join_id, newly_joined = rooms.join(conn_id, req.room, req.client_name)
        if newly_joined:
            self.count_joined(conn_id, peer)
        return self.joined(conn_id, req, peer, ref, join_id, newly_joined)

    def chat(self, conn_id: int, req: Chat) -> List[Action]:
        """CHAT: the message to every member, the sender too. The hot path: one lookup."""
        members = self._maybe_members(req.ref)
        if members is None:
            raise unknown_room(req.ref)
        # Identity is the connection: req.join_id and req.client_name are not trusted.
        name = members.get(conn_id)
        if name is None:
            raise RequestError(ErrorCode.NOT_A_MEMBER,
                               "not a member of room %d: JOIN_CHATROOM %s first"
                               % (req.ref, quote(self.rooms.name_of_room(req.ref))))
        return [Broadcast(tuple(members), chat_message(req.ref, name, req.message))]

    def leave(self, conn_id: int, req: Leave) -> List[Action]:
        """LEAVE_CHATROOM: its reply (repeated for a room already left), then the announcement
        to the room, the leaver included."""
        ref = req.ref
        if not self.rooms.was_given(ref):       # a forgotten room is still answered
            raise unknown_room(ref)
        # Who leaves is the connection, whatever JOIN_ID it quotes (nobody can leave for
        # somebody else), and the JOIN_ID in the reply is the one the server gave it; a
        # connection that never joined gets its request's back.
        join_id = self.rooms.join_id_of(conn_id)
        reply = left_reply(ref, req.join_id if join_id is None else join_id)
        return [Send(conn_id, reply)] + self.leave_here(conn_id, ref)

    def disconnect(self, conn_id: int) -> List[Action]:
        """DISCONNECT: leave every room, in ascending ROOM_REF order, each told (the leaver
        too), then close."""
        actions: List[Action] = []
        left = self.rooms.leave_all(conn_id)
        for ref, name, members in left:             # ascending ROOM_REF
            if members:
                actions.append(Broadcast(members, chat_message(ref, name, LEFT_TEXT % name)))
        self.count_left(conn_id, len(left))
        return actions + [Close(conn_id)]

    def holds(self, conn_id: int) -> bool:
        """Never: every request is answered at once here (protocol.RoomService.holds)."""
        return False

    def lost(self, conn_ids: Sequence[int]) -> List[Action]:
        """These connections are gone. Each room they were in is told they left, in the order
        they are named and, for each, in ascending ROOM_REF order.

        All of them leave before anything is announced, so the announcements go only to the
        members that remain, and a room's announcements go out as one message: a room of 8 000
        whose members all reset at once costs 8 000 leaves, not 8 000 x 8 000 deliveries."""
        left: Dict[int, List[bytes]] = {}          # ROOM_REF -> its announcements, in order
        for conn_id in conn_ids:
            rooms_left = self.rooms.drop(conn_id)
            for ref, name in rooms_left:
                left.setdefault(ref, []).append(chat_message(ref, name, LEFT_TEXT % name))
            self.forget_peer(conn_id, len(rooms_left))
        actions: List[Action] = []
        for ref, announcements in left.items():
            remaining = self.rooms.member_ids(ref)
            if remaining:
                actions.append(Broadcast(remaining, b"".join(announcements)))
        return actions

    # -- the steps of a JOIN -------------------------------------------------------------------

    def admit(self, conn_id: int, peer: Peer, ref: Optional[int],
              count_creation: bool = True) -> None:
        """Check the limits a JOIN must pass (the room `ref` is None if it is new here) and
        count a room creation (unless not `count_creation`: the shared bus counts it once
        Redis says the room was new); raise RequestError if one is passed."""
        rooms = self.rooms
        if ref is None and rooms.is_full():
            raise RequestError(ErrorCode.TOO_MANY_ROOMS,
                               "the server has its maximum of %d rooms; join an existing one"
                               % rooms.max_rooms)
        if ref is None or rooms.name_in(conn_id, ref) is None:     # a new membership
            self._check_memberships(conn_id, peer)
        if ref is None and count_creation:
            refusal = self.maybe_creation_refusal(conn_id, peer)
            if refusal is not None:
                raise refusal
            self.creations.spend(conn_id, peer.peer_ip)

    def _check_memberships(self, conn_id: int, peer: Peer) -> None:
        """Raise TOO_MANY_MEMBERSHIPS if `conn_id` may not hold one more membership: past its
        own limit, its address's, or the server's (MAX_MEMBERSHIPS, MEMBERSHIPS_CROWDED)."""
        per_connection = self.rooms.max_rooms_per_connection
        if self.rooms.count_rooms_of(conn_id) >= per_connection:
            raise RequestError(ErrorCode.TOO_MANY_MEMBERSHIPS,
                               "you are in %d rooms, the most one connection may be in; "
                               "leave one first" % per_connection)
        held = self._memberships_by_address.get(peer.peer_ip, 0)
        if held >= MAX_MEMBERSHIPS_PER_ADDRESS:
            raise RequestError(ErrorCode.TOO_MANY_MEMBERSHIPS,
                               "connections from your address are in %d rooms, the most they "
                               "may be in together; leave one first" % MAX_MEMBERSHIPS_PER_ADDRESS)
        if self.memberships >= MAX_MEMBERSHIPS or (self.memberships >= MEMBERSHIPS_CROWDED
                                                   and held >= per_connection):
            raise RequestError(ErrorCode.TOO_MANY_MEMBERSHIPS,
                               "the server holds %d memberships, near the most it may hold "
                               "(%d); leave a room first, or try later"
                               % (self.memberships, MAX_MEMBERSHIPS))

    def maybe_creation_refusal(self, conn_id: int, peer: Peer) -> Optional[RequestError]:
        """None if `conn_id` may create a room now, else the error saying which limit it would
        pass (policy/creations.py). Takes nothing."""
        refusal = self.creations.maybe_refusal(conn_id, peer.peer_ip, self.clock())
        if refusal is None:
            return None
        return RequestError(ErrorCode.CREATING_ROOMS_TOO_FAST,
                            "%s creates rooms too fast (at most %d at once, then %g a second); "
                            "join an existing room, or wait"
                            % ("this connection" if refusal.whose == "connection"
                               else "your address", refusal.burst, refusal.rate))

    def spend_creation(self, conn_id: int, peer: Peer) -> None:
        """Count one room created by `conn_id` (asked before: maybe_creation_refusal)."""
        self.creations.spend(conn_id, peer.peer_ip)

    def count_joined(self, conn_id: int, peer: Peer) -> None:
        """`conn_id` holds one more membership (MAX_MEMBERSHIPS_PER_ADDRESS); keep its Peer."""
        self._peers[conn_id] = peer
        self.memberships += 1
        by_address = self._memberships_by_address
        by_address[peer.peer_ip] = by_address.get(peer.peer_ip, 0) + 1

    def joined(self, conn_id: int, req: Join, peer: Peer, ref: int, join_id: int,
               newly_joined: bool) -> List[Action]:
        """The actions once `conn_id` is in room `ref`: its reply, then (the first time) the
        announcement to every member, itself included; before them, the callback address the
        JOIN names (so that the reply already goes there), if it names one that parses."""
        reply = joined_reply(req.room, peer.local_ip, peer.port, ref, join_id)
        actions: List[Action] = [Send(conn_id, reply)]
        if req.names_a_callback():
            try:
                actions.insert(0, Callback(conn_id, maybe_callback_address(req.client_ip,
                                                                           req.port)))
            except ValueError as exc:
                LOGGER.debug("conn %d: callback %s:%s ignored: %s", conn_id,
                             quote(req.client_ip), quote(req.port), exc)
        if newly_joined:      # joining again: the same reply, no second announcement
            name = self.rooms.name_in(conn_id, ref)
            actions.append(Broadcast(self.rooms.member_ids(ref),
                                     chat_message(ref, name, JOINED_TEXT % name)))
        return actions

    # -- the steps of a leave ------------------------------------------------------------------

    def leave_here(self, conn_id: int, ref: int) -> List[Action]:
        """Take `conn_id` out of room `ref` and announce it to the members, itself included."""
        members = self.rooms.member_ids(ref)      # before it leaves: it is told too
        name = self.rooms.leave(conn_id, ref)
        if name is None:
            return []
        self.count_left(conn_id, 1)
        return [Broadcast(members, chat_message(ref, name, LEFT_TEXT % name))]

    def peer_of(self, conn_id: int) -> Optional[Peer]:
        """The Peer of a connection that has joined and is not lost, else None."""
        return self._peers.get(conn_id)

    def count_left(self, conn_id: int, memberships: int) -> None:
        """`conn_id` (not lost) holds `memberships` fewer (MAX_MEMBERSHIPS_PER_ADDRESS)."""
        if memberships:
            self.memberships -= memberships
            peer_ip = self._peers[conn_id].peer_ip
            held = self._memberships_by_address[peer_ip] - memberships
            if held:
                self._memberships_by_address[peer_ip] = held
            else:
                del self._memberships_by_address[peer_ip]

    def forget_peer(self, conn_id: int, memberships: int) -> None:
        """`conn_id` is lost: its `memberships` no longer count for its address (whether or not
        the table has let them go yet), and its Peer and room creations are forgotten."""
        if conn_id in self._peers:
            self.count_left(conn_id, memberships)
            del self._peers[conn_id]
        self.creations.forget(conn_id)
