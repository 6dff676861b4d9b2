"""Room state: room names <-> ROOM_REFs, who is in which room, and JOIN_IDs.

Boundary: this module knows nothing of bytes, sockets or the wire format. A connection is an
integer id handed to us by the caller; a room is a ROOM_REF (an int) with a name (a str).
Everything here is plain dictionaries, so it is cheap to test and cheap to run.

The rules it keeps (docs/PROTOCOL.md, "Identity"):
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
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

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
        # conn_id -> ROOM_REFs it is in. A tuple, not a list: most connections are in one room,
        # and (ref,) is 48 bytes where [ref] is 88; at 10 000 connections that is 400 KB.
        self._refs_of: Dict[int, Tuple[int, ...]] = {}
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
        return sum(len(refs) for refs in self._refs_of.values())

    def maybe_members(self, ref: int) -> Optional[Mapping[int, str]]:
        """The live {conn_id: client name} of room `ref` in join order, or None if there is no
        such room. Read it, do not keep it or change it (every CHAT reads it, so it is not
        copied)."""
        return self._members.get(ref)

    def count_rooms_of(self, conn_id: int) -> int:
        """How many rooms `conn_id` is in."""
        return len(self._refs_of.get(conn_id, ()))

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
        self._refs_of[conn_id] = self._refs_of.get(conn_id, ()) + (ref,)
        return ref, join_id, True

    def _create(self, room_name: str, ref: Optional[int] = None) -> int:
        if len(self._names) >= self.max_rooms:
            self._forget_room(next(iter(self._empty)))          # the longest-empty room
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
            refs = tuple(r for r in self._refs_of[conn_id] if r != ref)
            if refs:
                self._refs_of[conn_id] = refs
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
        for ref in sorted(self._refs_of.pop(conn_id, ())):
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
        for ref in sorted(self._refs_of.pop(conn_id, ())):
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
        return sorted(self._refs_of.get(conn_id, ()))

    def join_id_of(self, conn_id: int) -> Optional[int]:
        """The JOIN_ID given to `conn_id`, or None if it never joined a room."""
        return self._join_ids.get(conn_id)

    def forget(self, conn_id: int) -> None:
        """Drop everything known about a connection that has gone, memberships included (the
        caller announces the leaves first). Its JOIN_ID is never given to anybody else."""
        for ref in self._refs_of.pop(conn_id, ()):
            members = self._members[ref]
            del members[conn_id]
            if not members:
                self._empty[ref] = None
        self._join_ids.pop(conn_id, None)
