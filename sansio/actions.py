"""The contract between the reactor and the app it runs, and nothing else.

The transports own the sockets (transport/, driven by the loop in reactor.py); an app
(protocol.ChatProtocol, or a test's fake one) decides what to answer. They meet here: the hub
(transport/hub.py) calls the methods of `App`, naming each connection by an integer id, and
carries out the `Action`s the app returns. Neither imports the other, so the hub can run any
app and the app can be tested without a socket.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Sequence, Tuple, Union


# ---------------------------------------------------------------------------------------------
# Actions: what the state machine asks the reactor to do (imperative names)
# ---------------------------------------------------------------------------------------------
# Actions are small dataclasses with __slots__, built once and never changed. They are not
# frozen=True: a frozen dataclass sets each field through object.__setattr__, which made
# building one 3.5x slower (0.82 vs 0.24 us, Python 3.11), and every chat message builds a
# Broadcast. Treat them as immutable all the same.

@dataclass
class Send:
    __slots__ = ("conn_id", "data")
    conn_id: int
    data: bytes


@dataclass(init=False)
class Broadcast:
    __slots__ = ("conn_ids", "data", "messages")
    conn_ids: Tuple[int, ...]   # the members at the moment of the broadcast, in join order
    data: bytes                 # encoded once; queued for each member (copied, or shared)
    messages: int               # how many messages `data` holds (1; a bus node's batch: more)

    def __init__(self, conn_ids: Tuple[int, ...], data: bytes, messages: int = 1) -> None:
        self.conn_ids, self.data, self.messages = conn_ids, data, messages


@dataclass
class Close:
    __slots__ = ("conn_id",)
    conn_id: int                # close once everything queued for it has been sent


@dataclass
class Shutdown:
    __slots__ = ()              # stop the whole server


@dataclass
class Callback:
    __slots__ = ("conn_id", "address")
    conn_id: int
    address: Optional[Tuple[str, int]]  # the (IP literal, port) a JOIN_CHATROOM's CLIENT_IP
                                # and PORT name, parsed by the codec (sansio/wire.py), or None
                                # for "back to the source address": where a datagram transport
                                # sends this connection's stream (docs/UDP.md, "Callback
                                # addresses"); a TCP connection ignores it. Given before the
                                # JOINED_CHATROOM reply it concerns.


@dataclass
class Wait:
    __slots__ = ("conn_id",)
    conn_id: int                # handle no more of its requests (and read no more from it)
                                # until a Resume: its last one waits for a reply from elsewhere
                                # (the shared bus, cluster/shared.py)


@dataclass
class Resume:
    __slots__ = ("conn_id",)
    conn_id: int                # the reply it waited for came: handle its requests again


Action = Union[Send, Broadcast, Close, Shutdown, Callback, Wait, Resume]


def carry_out(actions: List[Action], write: Callable[[int, bytes], None],
              close: Callable[[int], None], stop: Callable[[], None]) -> None:
    """Carry out `actions` in order with three callables: write(conn_id, data) (a Broadcast
    is one write per member), close(conn_id), stop(); Callback, Wait and Resume are ignored. For simple
    drivers of an app over TCP (the comparison peers in bench/); the reactor has its own, with
    the per-member loop inlined."""
    for action in actions:
        kind = type(action)
        if kind is Broadcast:
            for conn_id in action.conn_ids:
                write(conn_id, action.data)
        elif kind is Send:
            write(action.conn_id, action.data)
        elif kind is Close:
            close(action.conn_id)
        elif kind is Shutdown:
            stop()
        elif kind not in (Callback, Wait, Resume):  # (no callbacks, no bus for these drivers)
            raise TypeError("unknown action %r" % (action,))


# ---------------------------------------------------------------------------------------------
# The app: what the reactor calls
# ---------------------------------------------------------------------------------------------

class App(Protocol):
    """What the reactor needs of an app. Any class with these methods is one (it need not
    inherit from App: this is a typing.Protocol, checked by type checkers, not at run time).

    An exception from any of them is a bug in the app, not the peer's fault: the reactor logs
    it and drops that one connection; the others go on.
    """

    def connection_made(self, conn_id: int, local_ip: str, peer_ip: str) -> None:
        """A new connection `conn_id`, accepted on our address `local_ip` from `peer_ip`
        ("" when the reactor was handed a connected socket with no address, as in tests)."""

    def data_received(self, conn_id: int, data: bytes) -> None:
        """Bytes read from `conn_id`. Only buffer them: requests are asked for separately."""

    def maybe_next_actions(self, conn_id: int) -> Optional[List[Action]]:
        """The actions for `conn_id`'s next complete request, or None if none is complete.
        The reactor calls this as many times per tick as its fairness policy allows."""

    def pending_input(self, conn_id: int) -> int:
        """How many bytes of `conn_id`'s input the app holds, not yet handled (they count
        against the reactor's memory budget)."""

    def departure_cost(self, conn_id: int) -> int:
        """How much work telling of `conn_id`'s loss will cause, in units of about a
        microsecond (for the chat: 1, plus 1 per room it is in, each a leave announcement).
        The reactor tells the app of lost connections in calls of bounded work. Optional: an
        app without it is taken to cost 1 per connection."""

    def connections_lost(self, conn_ids: Sequence[int]) -> List[Action]:
        """These connections are gone (closed by either side, or dropped); each is named once,
        in one call with every other connection lost in the same tick. The actions returned
        (e.g. telling their rooms) are carried out at once."""

