"""What the bus (sansio/bus.py) hands its owner besides room events, and what it asks of it.

Boundary: sans-IO and stateless: plain values only. The room events (Joined, Chats, Left) are
sansio/bus_scripts.py's, as they are what Redis publishes; sansio/bus.py offers all of them
from one place.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple, Union

from sansio.bus_scripts import Chats, Joined, Left

# ---------------------------------------------------------------------------------------------
# What the bus tells its owner, besides room events
# ---------------------------------------------------------------------------------------------
# Named tuples, as the room events are (sansio/bus_scripts.py): immutable, compared field by
# field; compare them with events, not with plain tuples. Done is written as a class for its
# one default.

class Done(NamedTuple):
    """The reply to one of the owner's requests (join, leave; a chat's only when its call
    failed, with its ChatGroup: see Numbered), matched by `token`.
    `value` is the script's reply: see each script. `failed` is a reason when there will be no
    reply (the links dropped, or Redis answered with an error); then `value` is None."""
    token: Any
    value: Any
    failed: str = ""


# The chats of one room sent in one call (sansio/bus_links.py, Held): the owner's token for
# them. `conns`: the CONN of each one's sender, in order. The call's Numbered names them; a
# call that fails gets a failed Done for each.
ChatGroup = NamedTuple("ChatGroup", [("ref", int), ("conns", List[int])])
# The chats of one call were numbered: `groups`, each room's, in the order sent; `firsts`, each
# room's first number (the next chat of the room has the next). One event a call.
Numbered = NamedTuple("Numbered", [("groups", List[ChatGroup]), ("firsts", List[int])])
# Events of room `ref` numbered up to `upto` that can no longer be read back (the room's log no
# longer has them): they are lost for this node, and counted in Bus.lost.
Skipped = NamedTuple("Skipped", [("ref", int), ("upto", int)])
# The bus went up (every request may use it) or down (only what is local works), and why.
StateChanged = NamedTuple("StateChanged", [("up", bool), ("why", str)])
# This node's heartbeat declared other nodes dead (their heartbeats stopped reaching Redis for
# NODE_DEAD_AFTER, Redis serving meanwhile) and announced their `members`' leaves.
Reaped = NamedTuple("Reaped", [("nodes", Tuple[str, ...]), ("members", int)])
# This node was declared dead by the others (no heartbeat for NODE_DEAD_AFTER: stopped, or cut
# off from Redis) while it was alive; its `members` are being put back.
Revived = NamedTuple("Revived", [("members", int)])

Event = Union[Joined, Chats, Left, Done, Numbered, Skipped, StateChanged, Reaped, Revived]


@dataclass(frozen=True)
class LocalState:
    """What this node holds, for bringing Redis up to date after it was away (the owner's view):
    its members (ref, conn, join_id, name), the leaves it made while the bus was down
    (ref, conn, name), and the room names it knows by ref."""
    members: Sequence[Tuple[int, int, int, str]]
    departed: Sequence[Tuple[int, int, str]]
    names: Dict[int, str]
