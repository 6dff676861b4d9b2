"""A connection as the hub sees it, whatever carries it: an output queue, the flags the hub's
policies set, a State, and the verbs every transport has (asyncio's: write, pause_reading,
resume_reading, close, abort, get_write_buffer_size). TCP connections (transport/tcp.py) and
UDP sessions (transport/udp.py) are its subclasses; the hub never asks which one it holds.
"""
import enum
import logging
from typing import Any, Dict, List, Optional, Tuple

from policy.flood import Meter
from policy.memory import Memory
from policy.watermarks import ABORT, PAUSE, TCP_MARKS, WaterMarks


class State(enum.IntEnum):
    """Where a connection is in its life. Each value means one thing."""
    OPEN = 0        # requests are read and handled, output is queued and sent
    CLOSING = 1     # a Close (or the peer's FIN): send what is queued, then our FIN
    LINGERING = 2   # everything and our FIN sent: read and drop until the peer's FIN
    ABORTING = 3    # being dropped (its output passed OUTPUT_CAP, its socket failed, or the
                    # memory budget): nothing more is read, queued or sent; it is torn down
                    # when the tick has time for it (Hub.drop_aborted)
    CLOSED = 4      # unregistered and closed; events still pending for it are ignored


# What a connection with nothing queued holds as its queue: one empty tuple for all of them, not
# an empty list each (56 bytes: 560 KB of 10 000 idle connections). Its first output makes it a
# list (Hub.write_many), which goes again once everything in it is sent or dropped.
NO_OUTPUT: Tuple[()] = ()

# The states as module globals, for the hot paths: `State.OPEN` is a class attribute lookup that
# costs six times a global one (60 vs 10 ns, Python 3.11), and write_many tests it once per
# delivered message. Members are singletons, so `is` compares them.
OPEN, CLOSING, LINGERING = State.OPEN, State.CLOSING, State.LINGERING
ABORTING, CLOSED = State.ABORTING, State.CLOSED


class Connection(Meter):
    """One connection to the app. The input buffer lives in the app (its framer); `out` is the
    output queue, which the hub's write_many fills inline and the transport's flush() empties.
    It is its own flood meter (policy/flood.py, started by Hub.add): the buckets' numbers are
    slots of the connection, not of an object of their own (72 bytes: 720 KB of 10 000 idle
    connections).

    A subclass provides: flush() (send what is queued), update_interest() (what to wait for),
    stop_events() (an abort: nothing more is read), release(reason) (teardown: give the socket
    or session back), send_last() (the server stops: what can go at once), callback(address).
    """
    __slots__ = ("hub", "conn_id", "peer_ip", "out", "tail", "out_bytes", "in_bytes", "state",
                 "stale", "reads_paused", "throttled", "waiting", "scheduled", "flush_pending",
                 "reported_lost")
    marks: WaterMarks = TCP_MARKS       # its water marks (policy/watermarks.py)
    # Its input its transport holds, not yet given to the app: a UDP session's out-of-order
    # segments (a slot there); nothing for TCP, whose kernel holds that. Its share of the
    # memory budget counts it (policy/memory.py, bytes_held).
    transport_in = 0

    def __init__(self, hub: Any, conn_id: int, peer_ip: str) -> None:
        self.hub = hub
        self.conn_id = conn_id
        self.peer_ip = peer_ip          # its address (interned: one string per address)
        # Unsent output, oldest first: bytearrays of copied small output, and shared bytes
        # objects (a memoryview of one once part of it is sent). out_bytes is their total. A
        # list while it holds any (56 bytes where an empty deque is 760), else NO_OUTPUT.
        self.out: Any = NO_OUTPUT
        self.tail: Optional[bytearray] = None   # the last of `out`, while small output goes there
        self.out_bytes = 0
        self.in_bytes = 0               # its input the app holds, not yet handled
        self.state = OPEN
        self.stale = False              # closed or dropped: the loop ignores its events
        self.reads_paused = False       # our output to it is above its high mark (until low)
        self.throttled = False          # flood control: a bucket ran dry (Hub.throttle)
        self.waiting = False            # a Wait: neither read from nor given turns until Resume
        # Set and cleared by the Scheduler only: the app may hold complete requests from it,
        # which are handled before anything more is read from it (so its unhandled input
        # stays bounded).
        self.scheduled = False
        # It is on the hub's list to flush, or (TCP: write_blocked) its remainder waits for
        # writability, which puts it there: either way, output queued meanwhile just joins.
        self.flush_pending = False
        self.reported_lost = False      # the app has been told it is gone (connections_lost)

    # -- the verbs -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue `data`; it is sent at the end of this tick."""
        self.hub.write_many((self.conn_id,), data)

    def queue(self, chunk: Any) -> None:
        """Put `chunk` (a bytearray, or shared bytes) at the end of its output queue; the
        caller counts it (Hub.write_many)."""
        if self.out:
            self.out.append(chunk)
        else:                               # NO_OUTPUT: nothing was queued
            self.out = [chunk]

    def get_write_buffer_size(self) -> int:
        return self.out_bytes

    def pause_reading(self) -> None:
        """Read nothing more from it until resume_reading() (its output is piling up). A TCP
        connection's interest follows at its flush, which comes this tick: it has output."""
        self.reads_paused = True

    def resume_reading(self) -> None:
        self.reads_paused = False
        self.hub.scheduler.requeue(self)    # the app may hold requests read before the pause
        self.update_interest()

    def close(self) -> None:
        """Close once its queued output is sent (idempotent)."""
        if self.state is OPEN:
            self.state = CLOSING
            self.hub.want_flush(self)

    def abort(self, level: int, reason: str) -> None:
        """Drop it: from now on it is neither read from, written to nor sent to (ABORTING),
        the app is told it is gone (in this tick's flush), and it is torn down when the tick
        has time for it (Hub.drop_aborted). Tearing a socket down costs tens of microseconds:
        thousands at once (a storm of resets, 2 000 stalled members passing the cap together)
        must not make one long tick. Safe in the middle of a broadcast; idempotent."""
        if self.state is ABORTING or self.state is CLOSED:
            return
        self.state = ABORTING
        self.stale = True
        self.stop_events()
        self.hub.aborted(self, level, reason)

    # -- water marks ---------------------------------------------------------------------------

    def over_high_water(self) -> None:
        """Its queue passed the lowest high mark of any transport (the hub checks that inline):
        pause or drop it by its own marks."""
        verdict = self.marks.over(self.out_bytes)
        if verdict is ABORT:
            self.abort(logging.WARNING, "evicted: the output queued for it passed OUTPUT_CAP "
                       "(%d bytes): it does not read" % self.marks.cap)
        elif verdict is PAUSE and not self.reads_paused:
            self.pause_reading()

    def maybe_resume(self) -> None:
        """Read from it again once its queue has drained below its low mark."""
        if self.reads_paused and self.state is OPEN and self.marks.may_resume(self.out_bytes):
            self.resume_reading()

    # -- for the subclasses --------------------------------------------------------------------

    def flush(self) -> None:
        raise NotImplementedError

    def update_interest(self) -> None:
        raise NotImplementedError

    def input_counted(self) -> None:
        """The hub has just counted its input held by the app (in_bytes)."""

    def stop_events(self) -> None:
        """It is being dropped: from now on nothing more is read from it."""

    def release(self, reason: str) -> None:
        raise NotImplementedError

    def send_last(self) -> None:
        """The server is stopping: send what can go at once (best effort)."""

    def callback(self, address: Optional[Tuple[str, int]]) -> None:
        """JOIN named a callback address (None: back to the source): only a datagram
        transport has a use for it (docs/UDP.md, "Callback addresses")."""


class SharedOutput:
    """Output queued by reference (transport/hub.py, SHARE_MIN): the same bytes object in many
    connections' queues, counted once against the memory budget until its last holder is
    done with it."""
    __slots__ = ("memory", "held")

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.held: Dict[int, List[Any]] = {}    # id(bytes) -> [the bytes, how many hold it]

    def hold(self, data: bytes, holders: int) -> None:
        """`holders` more queues hold `data`."""
        entry = self.held.get(id(data))
        if entry is None:
            self.held[id(data)] = [data, holders]
            self.memory.output += len(data)
        else:
            entry[1] += holders

    def release(self, chunk: Any) -> None:
        """One holder is done with a shared object (or a memoryview of one)."""
        data = chunk.obj if type(chunk) is memoryview else chunk
        entry = self.held[id(data)]
        entry[1] -= 1
        if not entry[1]:
            del self.held[id(data)]
            self.memory.output -= len(data)

    def drop_queue(self, conn: Connection) -> None:
        """Forget everything queued for `conn` (it is closed, aborted, or handed on)."""
        memory = self.memory
        for chunk in conn.out:
            if type(chunk) is bytearray:
                memory.output -= len(chunk)
            else:
                self.release(chunk)
        conn.out = NO_OUTPUT
        conn.tail = None
        conn.out_bytes = 0
