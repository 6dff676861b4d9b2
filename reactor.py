"""A single-threaded event loop over `selectors`: sockets in, bytes to an app, actions out.

Boundary: this module knows nothing of chat commands. It accepts connections, reads bytes and
hands them to an *app* (any object with the methods of sansio.actions.App; the server's is
protocol.ChatProtocol), asks the app for the actions of each complete request, and carries the
actions out: queue bytes for a connection, close it, stop. The app names connections by integer
ids and never sees a socket. This module imports sansio.actions and sansio.udp, never protocol.

One tick of the loop (`run_once`), in the order of Redis's ae.c (aeProcessEvents: file events,
then time events; handleClientsWithPendingWrites before the next wait), reads before writes:

    1. timeout      how long select() may wait (_next_timeout): not at all while work is
                    left over from the last tick (requests, events, output, departures, drops);
                    otherwise until the first timer is due (a lingering connection's deadline,
                    a throttled connection's refill, the end of an accept pause, the UDP
                    endpoint's next timer, a periodic call), and never longer than the
                    caller's bound
    2. select()     which sockets are ready
    3. read         accept every pending connection (_on_acceptable); recv() once from each
                    ready connection and give the bytes to the app (_on_readable); up to
                    UDP_READS_PER_TICK datagrams into the UDP endpoint, whose sessions' stream
                    bytes go to the app the same way (_on_datagrams). At most STEP_BUDGET:
                    the sockets left are still ready at the next select()
    4. handle       the Scheduler names the connections whose requests are handled now, and
                    how many each (see TICK_TARGET, TICK_LIMIT); their actions append bytes to
                    output queues. When backlogs are being worked through, the replies of the
                    connections without one are flushed first, before the backlogs' turns.
    5. flush        tell the app of the connections lost (a bounded number, in one call);
                    then one send() (sendmsg() for several buffers) per connection with new
                    output: everything queued for it this tick leaves in one system call (a
                    UDP session's goes into its stream), for at most STEP_BUDGET; then the
                    UDP endpoint's datagrams, ACKs included, one sendto() each
    6. drops        close the sockets of dropped connections, for at most STEP_BUDGET;
                    past the memory budget, evict the connections that hold the most
    7. timers       let go of the lingering connections whose time is up; end throttles;
                    close idle connections that never completed a request while descriptors
                    are scarce; accept again once an accept pause is over; run the UDP
                    endpoint's timers and the periodic calls when due

So no tick is long whatever arrives: every step that could grow with an attacker's numbers (a
storm of resets, thousands of joins to one room, 2 000 members passing OUTPUT_CAP together)
stops after its share of the tick and leaves the rest, in order, to the next.

The write path is asyncio's (selector_events.py), with the send moved to the end of the tick as
Redis does (handleClientsWithPendingWrites): nothing is sent while a request is being handled;
at the end of the tick a connection with output is sent to at once, without waiting for the
selector; only a remainder that the kernel would not take stays queued, and only then does the
loop watch that socket for writability, until the queue is empty again.

Closing (asyncio's close(), with a lingering close after it): a Close sends what is queued,
then our FIN; the connection then reads and drops the peer's input until the peer closes too
(LINGER_TIMEOUT), so that unread input never turns our close into a RST.

Flow control (asyncio's water marks, Redis's output-buffer limit): a connection whose queued
output passes HIGH_WATER is not read from until it drains below LOW_WATER; one whose queue passes
OUTPUT_CAP is disconnected. So a client that never reads costs at most OUTPUT_CAP and slows
nobody else down. Output of SHARE_MIN bytes or more is queued by reference, one object for all
the members of a broadcast; everything the connections' buffers hold, input included, is one
figure (Memory) checked each tick against MEMORY_BUDGET, past which the largest holders are
evicted (Redis's maxmemory-clients).

Flood control (IRC servers' per-client flood control, token buckets): each connection's input
is metered in bytes and in requests (INPUT_BYTES_PER_SECOND); one whose bucket runs dry is
neither read from nor given turns until it refills. It is slowed, never cut.

Descriptors: one is kept in reserve, so that with every other taken a new connection can
still be accepted, the longest-idle connection that never completed a request making way.

UDP (docs/UDP.md): with `udp=True` one datagram socket on the same IP and port carries every
UDP session; sansio/udp.py's ServerEndpoint, a state machine with no socket and no clock, does the
reliability, and this module feeds it datagrams and the time. Each session is a UdpConnection,
a connection to the app like any other: same Scheduler, same flood control, same memory budget
and OUTPUT_CAP; a Close is a graceful close of the session, and a session that ends (timeout,
RESET) is a connection lost.

Links (`--bus`, cluster/shared.py): the app may also need outgoing connections of its own, such as
its two links to Redis. The reactor opens them when the app wants (sansio.actions.Links), in the
same loop: nonblocking connect, read everything ready at the start of each tick (before any
client, so that a node busy with clients never falls behind Redis: Redis cuts a pub/sub client
whose output passes its buffer limit), and send what the app has for them at the end of it. A
request waiting for Redis's answer makes its connection wait (a Wait action: not read from, no
turns) until the app's Resume.

A connection's life is a `State`: OPEN, then either CLOSING (a Close: sending what is queued)
and LINGERING (our FIN sent: waiting for the peer's), or ABORTING (dropped: past OUTPUT_CAP,
its socket failed, or evicted; nothing more is read or sent, and its socket is closed when the
tick has time); CLOSED at the end of every path.
"""
import collections
import enum
import errno
import heapq
import ipaddress
import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from sansio import udp_server, udp_stream, udp_wire
from sansio.actions import Action, App, Broadcast, Callback, Close, Links, Resume, Send, Shutdown, Wait

LOGGER = logging.getLogger(__name__)

# --- limits (README, "Limits") ------------------------------------------------------------------
# Bytes asked of recv() at once. 64 KiB is what the kernel usually has ready on loopback, and a
# connection's unhandled input stays below this plus one partial request (see _on_readable).
READ_SIZE = 64 * 1024
# Fairness (the Scheduler carries it out). Requests are handled in ticks, and what a tick's
# requests produce is sent at its end, so a reply waits about as long as a tick takes: one
# flooding client must never own a tick.
# - Connections with a backlog (requests left over from earlier ticks) get a *share* of requests
#   per tick, which adapts: halved after a tick whose request handling took longer than
#   TICK_TARGET, a quarter larger after one that took under half of it while some backlog used
#   its whole share (growing slowly and shrinking fast, as TCP's window does, keeps ticks near
#   the target instead of swinging to twice it).
# - Connections without a backlog go first, get up to MAX_REQUESTS_PER_TICK each (the share,
#   once the tick is TICK_TARGET old), and what they produce is sent before the backlogs are
#   worked on, as fq_codel serves new flows before old ones: a client that sends a little now
#   and then never queues behind its own earlier requests, however many clients are flooding.
TICK_TARGET = 0.020
# The read step, the sends and the teardowns of dropped connections each stop once they have
# taken STEP_BUDGET: what is left waits for the next tick (the selector is level-triggered, so a
# socket not read from is simply ready again; a connection not yet sent to stays due). So 8 000
# connections resetting at once, or 2 000 stalled members passing the cap together, cost a
# number of short ticks, not one long one (tearing a socket down costs tens of microseconds). A
# quarter of TICK_TARGET each: in such a storm a tick is then ~25 ms, and a client's request
# waits for at most a few of them.
STEP_BUDGET = TICK_TARGET / 4
EVENTS_BETWEEN_CLOCK_READS = 32
# A tick's turns stop once they have taken TICK_LIMIT, even if connections without a backlog
# are still waiting for theirs: they go first in the next tick. Every connection's turn is
# cheap, but a thousand joins to a room of 8 000 are not (each announces to every member).
TICK_LIMIT = 2 * TICK_TARGET
# The most lost connections the app is told of in one call: each costs it ~20 us (leaving its
# rooms), so 8 000 at once would be one long tick; the rest are told in the next ticks.
LOST_PER_CALL = 250
MIN_REQUESTS_PER_TICK = 1
MAX_REQUESTS_PER_TICK = 64
# The share a backlog starts with, before any tick has been measured. Start small and let it
# grow (a quarter per quick tick: about 15 ticks to the maximum): a start too large would make
# the first backlogged ticks overshoot TICK_TARGET, and every client would wait for them.
INITIAL_REQUESTS_PER_TICK = 4
# Stop reading from a peer whose own unsent output passes HIGH_WATER and start again below
# LOW_WATER (asyncio's defaults: 64 KiB and a quarter of it).
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
# Disconnect a peer whose unsent output passes this (Redis: client-output-buffer-limit). 1 MiB
# is ~15 000 chat messages: a reader that far behind is stalled, not slow. It counts what the
# peer is owed, shared or not (see SHARE_MIN).
OUTPUT_CAP = 1024 * 1024
# Output of at least this many bytes is queued by reference: every member of a broadcast holds
# the same bytes object, and sendmsg() gathers a connection's queue in one system call. Smaller
# output (nearly every chat) is copied onto the end of the member's own buffer, which costs less
# than a reference would when it is sent. So a 64 KiB chat to 2 000 members costs 64 KiB, not
# 128 MB, and a departure announced to a whole room is one object, however large the room.
SHARE_MIN = 2048
# The most buffers one sendmsg() is given (Linux's IOV_MAX is 1024).
MAX_IOV = 1024
# The memory budget: what all connections' buffers together may hold (Memory), input and
# output. Past it, the connections that hold the most are dropped, largest first, as Redis's
# maxmemory-clients does, until the total is under it again: so no number of connections, each
# within its own limits, can make the server's memory grow past this plus a fixed cost per
# connection (README, "Limits"). 128 MiB is a thousand times a busy room's traffic per tick.
# Server.py's --memory-budget sets it.
MEMORY_BUDGET = 128 * 1024 * 1024
# Flood control: each connection's input is metered by two token buckets (bytes and requests),
# as IRC servers meter each client's lines. A bucket holds at most its burst and refills at its
# rate; a connection whose bucket runs dry is not read from, and its requests wait, until the
# bucket has refilled (TCP's window then slows the sender down): a flooder is slowed, never
# cut, and nobody else waits for it. The rates are set so that a member who reads 1 MB/s keeps
# up with any one flooder (whose every byte it is sent), far above what a person types, and
# above what the benchmarks' busiest member sends (200 requests in a burst, a few KB/s).
# Server.py's --input-rate and --request-rate set them (0: no limit).
INPUT_BYTES_PER_SECOND = 512 * 1024
INPUT_BURST_BYTES = 512 * 1024
REQUESTS_PER_SECOND = 500
REQUEST_BURST = 1000
# Log lines a peer can cause (a connection opened or closed, an eviction) are rate-limited: at
# most this many a second, in bursts of LOG_BURST; the rest are counted, and the count is logged
# with the next line let through. A flood of connections must not become a flood of log.
LOG_LINES_PER_SECOND = 20
LOG_BURST = 100
# An internal error's traceback is logged once per kind (exception type and where it was raised)
# in this many seconds; repeats in between get one line, through the rate limit.
TRACEBACK_INTERVAL = 60.0
# Descriptors: one is kept in reserve, so that when every other is taken, a new connection can
# still be accepted; the connection that has been idle longest without ever completing a
# request then makes way for it (if there is none, the new one is closed at once rather than
# left to hang). So idle connections holding every descriptor cannot lock new clients out.
# And while descriptors are scarce (connections hold CROWDED of the open-file limit), such
# connections are closed after UNPROVEN_TIMEOUT seconds idle; otherwise they wait for ever (a
# person typing into nc may take a while).
CROWDED = 0.9
UNPROVEN_TIMEOUT = 10.0
# The most connections evicted for the budget in one tick (each eviction frees what that
# connection held; the next tick goes on if the total is still over).
EVICTIONS_PER_TICK = 64
# Pending connections the kernel may hold for us between two ticks.
BACKLOG = 1024
# After accept() fails for lack of file descriptors, stop accepting for this long rather than
# spin on a listening socket that stays readable.
ACCEPT_RETRY_DELAY = 0.1
# After we have sent everything and our FIN, how long we keep reading (and dropping) what the
# peer still sends, waiting for its own FIN. Closing a socket with unread input makes the kernel
# answer RST instead of FIN, and a peer that is told "reset" may lose what it has not read yet.
LINGER_TIMEOUT = 2.0
# The longest select() wait: only bounds how long stop() from a signal can go unnoticed.
MAX_WAIT = 1.0

# --- UDP (docs/UDP.md): sansio/udp.py is the reliability layer; this module owns its socket and
# its clock, and makes each of its sessions a connection to the app like a TCP one.
# Datagrams read per tick at most, so that a flood of them cannot make a tick long (TCP reads
# are bounded the same way: one recv() per connection per tick). 256 x 1 200 bytes = 300 KB.
UDP_READS_PER_TICK = 256
# Datagrams kept for the next tick when the kernel's send buffer is full (EAGAIN). Past it the
# newest are dropped, as a congested network would: the reliability layer takes them as lost
# and sends them again, so a full send buffer costs a retransmission, never unbounded memory.
UDP_SEND_BACKLOG = 4096
# The kernel buffers asked for the UDP socket (it may give less): one socket carries every
# session, so it should absorb a burst from many of them between two ticks.
UDP_SOCKET_BUFFER = 1024 * 1024
# A UDP session's output counts against HIGH_WATER, OUTPUT_CAP and the memory budget like a TCP
# connection's queue, including what the endpoint holds unacknowledged. Up to a whole receive
# window of it (64 x 1 168 bytes) is in flight for a session that keeps up, so its reads pause
# above HIGH_WATER plus that window, and resume below a quarter of it.
UDP_HIGH_WATER = HIGH_WATER + udp_stream.RECV_WINDOW * udp_wire.MAX_PAYLOAD
UDP_LOW_WATER = UDP_HIGH_WATER // 4
# A UDP session's input held by the app, not yet handled, above which its stream is not taken
# for now (the peer sends it again later): a TCP connection's unhandled input is bounded by
# not reading it, a datagram session's by this. Twice READ_SIZE: more than any incomplete
# request can hold (the Framer refuses one longer than 64 KiB), so it never waits for itself.
UDP_INPUT_HIGH_WATER = 2 * READ_SIZE
# How long a UDP session we close (DISCONNECT) may take to deliver what it was sent and hear
# CLOSE_ACK before it is reset. The endpoint bounds a close too (MAX_CLOSE_SENDS, the idle
# timeout), but a peer that answers PINGs and never acknowledges data must not hold it for ever.
UDP_CLOSE_TIMEOUT = 30.0
# Rounds of "send the endpoint's datagrams, act on its events" per flush: an event (a session
# over) can bring output (its rooms told), which can end another session (over its cap).
UDP_OUTPUT_ROUNDS = 8
# Tries at binding TCP and UDP to the same port when PORT is 0: the kernel picks a free TCP port,
# whose UDP twin may be taken.
BIND_TRIES = 16
# What one tick reads from a link (Redis) at most: READ_SIZE chunks, until the socket is empty or
# this many. Redis may publish faster than one recv() a tick takes; a subscriber that reads less
# than is published falls behind until Redis cuts it (client-output-buffer-limit pubsub), so a
# link is read far more than a client is, but not without end (the tick stays bounded).
LINK_READS_PER_TICK = 64

_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

if hasattr(socket.socket, "sendmsg"):
    def _sendmsg(sock: socket.socket, buffers: List[Any]) -> int:
        return sock.sendmsg(buffers)
else:                                   # no scatter-gather here (Windows): join, then send
    def _sendmsg(sock: socket.socket, buffers: List[Any]) -> int:
        return sock.send(b"".join(buffers))


class InputLimits:
    """Flood control's numbers (see INPUT_BYTES_PER_SECOND). A rate of 0 means no limit."""
    __slots__ = ("bytes_per_second", "burst_bytes", "requests_per_second", "request_burst")

    def __init__(self, bytes_per_second: float = INPUT_BYTES_PER_SECOND,
                 burst_bytes: float = INPUT_BURST_BYTES,
                 requests_per_second: float = REQUESTS_PER_SECOND,
                 request_burst: float = REQUEST_BURST) -> None:
        self.bytes_per_second = bytes_per_second
        self.burst_bytes = burst_bytes
        self.requests_per_second = requests_per_second
        self.request_burst = request_burst


class LogBudget:
    """The rate limit for log lines that peers can cause (LOG_LINES_PER_SECOND): a token
    bucket of lines. Lines past it are dropped and counted; the next line let through says
    how many."""

    def __init__(self, per_second: float = LOG_LINES_PER_SECOND, burst: float = LOG_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()
        self.dropped = 0

    def log(self, level: int, message: str, *args: Any) -> None:
        if not LOGGER.isEnabledFor(level):
            return
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens < 1:
            self.dropped += 1
            return
        self._tokens -= 1
        if self.dropped:
            message += " (%d such lines not logged before this one)" % self.dropped
            self.dropped = 0
        LOGGER.log(level, message, *args)


def _open_file_limit() -> int:
    try:
        import resource
    except ImportError:                     # not on this OS: assume the common default
        return 1024
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _bind_udp(family: int, host: str, port: int) -> socket.socket:
    """The UDP socket on the TCP listener's address and port (no SO_REUSEADDR: two servers must
    not share one port's datagrams)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, UDP_SOCKET_BUFFER)
            except OSError:
                pass                        # the kernel's default will do
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _open_reserve() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None                         # no descriptor to spare even now: do without


def _bytes_held(conn: "Connection") -> int:
    return conn.out_bytes + conn.in_bytes


class Memory:
    """What every connection's buffers hold, in bytes: the one figure the memory budget is
    checked against (Redis's maxmemory-clients). `output` counts copied output once per copy
    and shared output once per object; `input` is what the app holds of requests not yet
    handled (its framers' buffers)."""
    __slots__ = ("output", "input", "budget")

    def __init__(self, budget: int) -> None:
        self.output = 0
        self.input = 0
        self.budget = budget

    @property
    def total(self) -> int:
        return self.output + self.input


class State(enum.IntEnum):
    """Where a connection is in its life. Each value means one thing."""
    OPEN = 0        # requests are read and handled, output is queued and sent
    CLOSING = 1     # a Close (or the peer's FIN): send what is queued, then our FIN
    LINGERING = 2   # everything and our FIN sent: read and drop until the peer's FIN
    ABORTING = 3    # being dropped (its output passed OUTPUT_CAP, its socket failed, or the
                    # memory budget): nothing more is read, queued or sent; it is
                    # torn down when the tick has time for it (_drop_aborted)
    CLOSED = 4      # unregistered and closed; events still pending for it are ignored


# The states as module globals, for the hot paths: `State.OPEN` is a class attribute lookup that
# costs six times a global one (60 vs 10 ns, Python 3.11), and write_many tests it once per
# delivered message. Members are singletons, so `is` compares them.
_OPEN, _CLOSING, _LINGERING = State.OPEN, State.CLOSING, State.LINGERING
_ABORTING, _CLOSED = State.ABORTING, State.CLOSED


class Connection:
    """One client connection as the reactor sees it: a socket and two buffers' worth of state.

    The input buffer lives in the app (its framer); `out` is the output queue.
    """
    __slots__ = ("sock", "conn_id", "peer_ip", "out", "tail", "out_bytes", "in_bytes", "state",
                 "events", "reads_paused", "peer_closed", "throttled", "credit_bytes",
                 "credit_requests", "credited_at", "scheduled", "flush_pending", "reported_lost",
                 "waiting")

    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.conn_id = conn_id
        self.peer_ip = ""               # its address (interned: one string per address)
        # Unsent output, oldest first: bytearrays of copied small output, and shared bytes
        # objects (a memoryview of one once part of it is sent). out_bytes is their total.
        self.out: List[Any] = []        # (a list: 56 bytes where an empty deque is 760)
        self.tail: Optional[bytearray] = None   # the last of `out`, while small output goes there
        self.out_bytes = 0
        self.in_bytes = 0               # its input the app holds, not yet handled
        self.state = _OPEN
        self.events = selectors.EVENT_READ  # what the selector watches it for
        self.reads_paused = False       # our output to it is above HIGH_WATER (until LOW_WATER)
        self.peer_closed = False        # it sent its FIN: nothing more to read, ever
        # Flood control (INPUT_BYTES_PER_SECOND): what its buckets hold, as of `credited_at`;
        # `throttled` while one has run dry: it is neither read from nor given turns.
        self.throttled = False
        self.credit_bytes = 0.0
        self.credit_requests = 0.0
        self.credited_at = 0.0
        # Set and cleared by the Scheduler only: the app may hold complete requests from it,
        # which are handled before anything more is read from it (so its unhandled input
        # stays bounded).
        self.scheduled = False
        self.flush_pending = False      # it is on the reactor's list to flush this tick
        self.reported_lost = False      # the app has been told it is gone (connection_lost)
        self.waiting = False            # a Wait: neither read from nor given turns until Resume


class UdpConnection(Connection):
    """A UDP session as the reactor sees it: a Connection with no socket of its own (`sock` is
    None; the reactor's one UDP socket carries every session). What is queued for it goes into
    its stream at the end of the tick; `out_bytes` also counts what the endpoint holds for it
    unacknowledged (`endpoint_out`), so that HIGH_WATER, OUTPUT_CAP and the memory budget treat
    it as a TCP connection's queue; `endpoint_in` is its out-of-order input the endpoint holds."""
    __slots__ = ("session_id", "endpoint_out", "endpoint_in")

    def __init__(self, conn_id: int, session_id: int) -> None:
        super().__init__(None, conn_id)     # type: ignore[arg-type]
        self.session_id = session_id
        self.endpoint_out = 0
        self.endpoint_in = 0


class _Link:
    """One outgoing connection of the app's (sansio.actions.Links), e.g. a link to Redis."""
    __slots__ = ("name", "sock", "connected", "out", "events")
    # To the clients' read step (_on_events) a link is never OPEN, so it passes it by at no
    # cost: links are read before it, in _on_link_events.
    state = State.CLOSED

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock
        self.connected = False              # connect() has completed
        self.out = bytearray()              # what the kernel has not taken yet
        self.events = selectors.EVENT_WRITE     # until connected: writable means connected


class Scheduler:
    """The fairness policy (see TICK_TARGET): whose requests are handled in a tick, in what
    order, and how many each. It knows connections only by their `scheduled` flag.

        schedule(conn)      it has new input: a turn next tick, among the fresh ones
        requeue(conn)       it may still hold requests: a turn next tick, in the backlog
        has_backlog         some connection is requeued (the next select() must not wait)
        turns(after_fresh)  this tick's turns: (conn, how many requests it may handle now)
        tick_took(s, used)  adapt the backlog's share to how long a tick's turns took
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._fresh: List[Connection] = []        # read this tick, nothing left from before
        self._backlog: List[Connection] = []      # requests may be left over from last tick
        self._deferred: List[Connection] = []     # fresh ones a full tick had no time for
        self.requests_per_tick = INITIAL_REQUESTS_PER_TICK   # a backlog's share; adapts

    def schedule(self, conn: Connection) -> None:
        """`conn` was just read from: give it a turn as a connection without a backlog."""
        if not conn.scheduled:
            conn.scheduled = True
            self._fresh.append(conn)

    def requeue(self, conn: Connection) -> None:
        """`conn` may still hold requests: give it a turn in the next tick's backlog."""
        if not conn.scheduled:
            conn.scheduled = True
            self._backlog.append(conn)

    @property
    def has_backlog(self) -> bool:
        """Some connection waits for a turn with requests left over, or for a turn a full
        tick could not give it: select() must not wait."""
        return bool(self._backlog or self._deferred)

    def turns(self, after_fresh: Callable[[], None]) -> Iterator[Tuple[Connection, int]]:
        """This tick's turns, as (connection, how many of its requests to handle now).

        First every fresh connection, with MAX_REQUESTS_PER_TICK while the tick is younger
        than TICK_TARGET and the share after that; then, if backlogs follow, `after_fresh()`
        once (the reactor sends the fresh connections' replies there); then every backlog
        connection with the share. A connection is unscheduled when its turn comes: the
        caller requeues it during its turn if it may have more. Turns requeued or scheduled
        during this tick come in the next one. Once the turns have taken TICK_LIMIT, the
        connections still waiting keep their place for the next tick, first in line. At the
        end the share adapts (tick_took).
        """
        fresh, backlog = self._deferred + self._fresh, self._backlog
        if not fresh and not backlog:
            return
        self._fresh, self._backlog, self._deferred = [], [], []
        clock = self._clock
        started = clock()
        share = self.requests_per_tick
        for index, conn in enumerate(fresh):
            elapsed = clock() - started
            if elapsed > TICK_LIMIT:
                self._deferred = fresh[index:]          # still scheduled: first next tick
                self._backlog[:0] = backlog
                self.tick_took(elapsed, True)
                return
            conn.scheduled = False
            yield conn, (MAX_REQUESTS_PER_TICK if elapsed < TICK_TARGET else share)
        if fresh and backlog:
            after_fresh()
        share_used_up = False
        for index, conn in enumerate(backlog):
            if clock() - started > TICK_LIMIT:
                self._backlog[:0] = backlog[index:]
                share_used_up = True
                break
            conn.scheduled = False
            yield conn, share
            share_used_up |= conn.scheduled     # requeued: it had more than its share
        self.tick_took(clock() - started, share_used_up)

    def tick_took(self, seconds: float, share_used_up: bool) -> None:
        """Adapt the share to a tick whose turns took `seconds`; `share_used_up`: some backlog
        connection handled its whole share and may have more."""
        share = self.requests_per_tick
        if seconds > TICK_TARGET:
            self.requests_per_tick = max(MIN_REQUESTS_PER_TICK, share // 2)
        elif share_used_up and seconds < TICK_TARGET / 2:
            self.requests_per_tick = min(MAX_REQUESTS_PER_TICK, share + max(1, share // 4))


class Reactor:
    """Listens on one address and runs `app` for every connection, on one thread.

    `app` may be given after construction (as Server.py does), once `address` tells the real
    port that binding to port 0 picked. With `udp`, it also serves UDP sessions (docs/UDP.md)
    on the same IP and port number, each a connection to the app like a TCP one; a UDP peer
    silent for `udp_idle_timeout` seconds is gone.
    """

    def __init__(self, host: str, port: int, app: Optional[App] = None,
                 backlog: int = BACKLOG, memory_budget: int = MEMORY_BUDGET,
                 limits: Optional[InputLimits] = None, udp: bool = False,
                 udp_idle_timeout: float = udp_stream.IDLE_TIMEOUT) -> None:
        self.app = app
        self.selector = selectors.DefaultSelector()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.udp_sock: Optional[socket.socket] = None
        for attempt in range(BIND_TRIES):
            self.listener = socket.socket(family, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            if not udp:
                break
            try:
                self.udp_sock = _bind_udp(family, host, self.listener.getsockname()[1])
                break
            except OSError as exc:
                self.listener.close()
                if port != 0 or exc.errno != errno.EADDRINUSE or attempt == BIND_TRIES - 1:
                    raise
        self.listener.listen(backlog)
        self.listener.setblocking(False)
        self.address: Tuple[str, int] = self.listener.getsockname()[:2]
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        # UDP: the endpoint (sansio/udp.py), its sessions as connections, and datagrams the
        # kernel would not take yet (UDP_SEND_BACKLOG).
        self.udp: Optional[udp_server.ServerEndpoint] = None
        self._udp_conns: Dict[int, UdpConnection] = {}    # by session id
        self._udp_backlog: Deque[Tuple[bytes, Any]] = collections.deque()
        self._udp_events = selectors.EVENT_READ
        self._udp_closing: Deque[Tuple[float, UdpConnection]] = collections.deque()  # by deadline
        self.udp_dropped = 0                      # datagrams not sent (backlog full, errors)
        if self.udp_sock is not None:
            self.udp = udp_server.ServerEndpoint(idle_timeout=udp_idle_timeout)
            self.selector.register(self.udp_sock, selectors.EVENT_READ, self.udp_sock)
        # A socket pair to wake select() from a signal handler (asyncio's self-pipe).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self.conns: Dict[int, Connection] = {}
        self._next_conn_id = 1
        self.scheduler = Scheduler()
        self._to_flush: List[Connection] = []     # got output this tick
        # ABORTING, to be torn down as time allows (_drop_aborted): (conn, log level, why).
        self._to_abort: List[Tuple[Connection, int, str]] = []
        self._events_left = False                 # the read step stopped before the end
        self._lost: List[Connection] = []         # gone; the app is told in the flush
        self.memory = Memory(memory_budget)
        # Shared output (see SHARE_MIN): id(bytes) -> [the bytes, how many queues hold it].
        self._shared: Dict[int, List[Any]] = {}
        self.evictions = 0                        # connections dropped for the memory budget
        self.limits = limits if limits is not None else InputLimits()
        # Throttled connections by when their buckets have refilled: (time, conn_id, conn).
        self._throttled: List[Tuple[float, int, Connection]] = []
        self.throttles = 0                        # how often a connection was throttled
        self._now = time.monotonic()              # this tick's time, read once after select()
        self.log_budget = LogBudget()
        self._periodic: List[List[Any]] = []      # [when next, every how many seconds, func]
        self.deliveries = 0                       # messages queued for connections, ever
        self._tracebacks: Dict[Tuple[str, str, int], float] = {}   # kind -> when last logged
        # Connections that have not completed a request yet, longest idle first (see the
        # descriptor reserve above), and the reserve itself.
        self._unproven: "collections.OrderedDict[int, Tuple[float, Connection]]" = (
            collections.OrderedDict())             # conn_id -> (last read, connection)
        self._crowded_at = int(CROWDED * _open_file_limit())
        self._reserve_fd: Optional[int] = _open_reserve()
        self._lingering: Deque[Tuple[float, Connection]] = collections.deque()  # by deadline
        self._accept_paused_until = 0.0           # 0.0: accepting
        self._stopping = False      # stop() was called: handle no more requests, end the loop
        self.links: Optional[Links] = None        # the app's outgoing links, if it has any
        self._links: Dict[str, _Link] = {}        # open ones, by name

    # -- the loop ------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Run ticks until stop() is called (by a Shutdown action or a signal), then close."""
        try:
            while not self._stopping:
                self.run_once(MAX_WAIT)
        finally:
            self.close()

    def run_once(self, timeout: Optional[float] = None) -> None:
        """One tick (the module docstring's steps): wait up to `timeout` (None: as long as it
        takes) for sockets, read, handle requests, flush, close dropped connections, run the
        timers."""
        events = self.selector.select(self._next_timeout(timeout))
        self._now = time.monotonic()
        if self._links:
            self._on_link_events(events)
        self._on_events(events)
        self._process_input()
        self._flush()
        if self._to_abort:
            self._drop_aborted()
        if self.memory.total > self.memory.budget:
            self._evict_for_memory()
        self._expire_timers(time.monotonic())
        if self.links is not None:
            self._service_links(time.monotonic())

    def _on_events(self, events: List[Tuple[selectors.SelectorKey, int]]) -> None:
        """The read step: act on what select() found, for at most STEP_BUDGET (the rest
        are still ready at the next select(), which then does not wait)."""
        started = self._now
        self._events_left = False
        for index, (key, mask) in enumerate(events):
            if (index % EVENTS_BETWEEN_CLOCK_READS == EVENTS_BETWEEN_CLOCK_READS - 1
                    and time.monotonic() - started > STEP_BUDGET):
                self._events_left = True
                return
            conn = key.data
            if conn is None:
                self._on_acceptable()
            elif conn is self._wake_r:
                self._drain_wakeup()
            elif conn is self.udp_sock:
                self._on_datagrams(mask)
            elif conn.state is not _CLOSED and conn.state is not _ABORTING:
                # (an earlier event this tick may have closed or dropped it)
                if mask & selectors.EVENT_READ:
                    self._on_readable(conn)
                if mask & selectors.EVENT_WRITE:
                    self._want_flush(conn)

    def _next_timeout(self, cap: Optional[float]) -> Optional[float]:
        """How long the next select() may wait: not at all while a backlog waits for its turn;
        otherwise until the first timer is due, and at most `cap` (None: no bound)."""
        if (self.scheduler.has_backlog or self._lost or self._events_left or self._to_abort
                or self._to_flush):
            return 0
        deadlines = [self._lingering[0][0]] if self._lingering else []
        if self._throttled:
            deadlines.append(self._throttled[0][0])
        if self._accept_paused_until:
            deadlines.append(self._accept_paused_until)
        deadlines.extend(timer[0] for timer in self._periodic)
        if self.links is not None:
            links_due = self.links.links_deadline()
            if links_due is not None:
                deadlines.append(links_due)
        if self.udp is not None:
            endpoint_due = self.udp.next_deadline()
            if endpoint_due is not None:
                deadlines.append(endpoint_due)
            if self._udp_closing:
                deadlines.append(self._udp_closing[0][0])
        due = min(deadlines) if deadlines else None
        if due is None:
            return cap
        until_due = max(0.0, due - time.monotonic())
        return until_due if cap is None else min(cap, until_due)

    def call_every(self, seconds: float, func: Callable[[], None]) -> None:
        """Call func() every `seconds` from the loop, between ticks (e.g. to log statistics)."""
        self._periodic.append([time.monotonic() + seconds, seconds, func])

    def stop(self) -> None:
        """Ask run_forever() to return after this tick; no further request is handled.
        Safe to call from a signal handler."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass                            # the wake-up is already pending, or we are closed

    def stop_on_signals(self, signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        """Make these signals stop the loop cleanly (main thread only)."""
        for signum in signums:
            signal.signal(signum, lambda _signum, _frame: self.stop())

    def close(self) -> None:
        """Close every connection (sending what the kernel takes at once) and the listener."""
        for conn in list(self.conns.values()):
            if conn.out_bytes and conn.sock is not None:
                try:
                    conn.sock.send(b"".join(conn.out))
                except OSError:
                    pass
            self._teardown(conn, reason="closed: the server is stopping", tell_app=False)
        if self.udp is not None and self.udp_sock is not None:
            self._send_datagrams(self.udp.datagrams_to_send(time.monotonic()))   # the RESETs
            self.udp_sock.close()
        if self.links is not None:
            self._close_links(goodbye=True)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
        self.selector.close()

    # -- input ---------------------------------------------------------------------------------

    def _on_acceptable(self) -> None:
        """Accept the connections the kernel has queued, until accept() would block or, in a
        flood, BACKLOG of them (the rest wait for the next tick, as asyncio does)."""
        for _ in range(BACKLOG):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue                    # it went away while queued: next
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    accepted = self._accept_with_the_reserve()
                    if accepted is not None:
                        sock, addr = accepted
                        self._serve_accepted(sock, addr)
                        continue
                if exc.errno in _ACCEPT_ERRORS:     # out of descriptors or memory
                    LOGGER.warning("accept failed (%s); retrying in %.1fs", exc,
                                   ACCEPT_RETRY_DELAY)
                    self.selector.unregister(self.listener)
                    self._accept_paused_until = time.monotonic() + ACCEPT_RETRY_DELAY
                else:                       # a network error of one pending connection
                    LOGGER.warning("accept failed: %s", exc)
                return
            self._serve_accepted(sock, addr)

    def _accept_with_the_reserve(self) -> Optional[Tuple[socket.socket, Any]]:
        """Every descriptor is taken: free the reserve, accept one connection with it, and
        make room for it by closing the longest-idle connection that never completed a
        request (or, if there is none, close the new one at once: it learns it cannot be
        served instead of hanging). Then take the reserve again. None if this cannot help."""
        if self._reserve_fd is None:
            return None
        os.close(self._reserve_fd)
        self._reserve_fd = None
        try:
            sock, addr = self.listener.accept()
        except OSError:
            self._reserve_fd = _open_reserve()
            return None
        if self._unproven:
            _conn_id, (_since, idle) = self._unproven.popitem(last=False)
            self._teardown(idle, logging.WARNING, "evicted: every descriptor is taken, and it "
                           "was the longest idle of those that never completed a request")
            self._reserve_fd = _open_reserve()
            return sock, addr
        sock.close()
        self.log_budget.log(logging.WARNING, "refused a connection from %s: every descriptor "
                            "is held by connections that have completed requests", addr[0])
        self._reserve_fd = _open_reserve()
        return None

    def _serve_accepted(self, sock: socket.socket, addr: Any) -> None:
        """Serve a connection that accept() returned."""
        try:
            # We already gather a tick's output into one send(): Nagle would only add delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # One string per address, not one per connection (58 bytes each, 10 000 times).
            local_ip = sys.intern(sock.getsockname()[0])
        except OSError as exc:              # reset before we got to it
            LOGGER.debug("dropping a connection that failed at once: %s", exc)
            sock.close()
            return
        conn_id = self.add_connection(sock, local_ip, sys.intern(addr[0]))
        self.log_budget.log(logging.INFO, "conn %d: open from %s:%d", conn_id, addr[0], addr[1])

    def add_connection(self, sock: socket.socket, local_ip: str, peer_ip: str = "") -> int:
        """Serve a connected socket (accepted here, or a socketpair end in a test)."""
        sock.setblocking(False)
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        conn = Connection(sock, conn_id)
        conn.peer_ip = peer_ip
        conn.credit_bytes = self.limits.burst_bytes
        conn.credit_requests = self.limits.request_burst
        conn.credited_at = self._now
        self.conns[conn_id] = conn
        self._unproven[conn_id] = (self._now, conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        self._guarded(conn, self.app.connection_made, conn_id, local_ip, peer_ip)
        return conn_id

    def _on_readable(self, conn: Connection) -> None:
        """Read once from `conn` and hand the bytes to the app (requests are handled later in
        the tick). A connection whose earlier input is not all handled is not read from: its
        data waits in the kernel, whose window then slows the sender down."""
        if conn.scheduled or conn.throttled or conn.waiting:
            return
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:             # ECONNRESET and friends: the peer is gone
            self._drop(conn, logging.INFO, "recv failed: %s" % exc)
            return
        if not data:
            self._on_peer_closed(conn)
            return
        if conn.state is not _OPEN:
            return                          # closing: what it sends now is dropped
        if conn.conn_id in self._unproven:
            self._unproven[conn.conn_id] = (self._now, conn)    # idle no longer
            self._unproven.move_to_end(conn.conn_id)
        self._received(conn, data)

    def _received(self, conn: Connection, data: bytes) -> None:
        """Give what `conn` sent (read from its socket, or from its UDP session's stream) to
        the app, give it a turn, and charge its byte bucket (flood control)."""
        self._guarded(conn, self.app.data_received, conn.conn_id, data)
        if conn.state is not _OPEN:         # (the app may have failed and dropped it)
            return
        self.scheduler.schedule(conn)
        rate = self.limits.bytes_per_second
        if rate:
            self._refill(conn)
            conn.credit_bytes -= len(data)
            if conn.credit_bytes < 0:
                self._throttle(conn, -conn.credit_bytes / rate)

    def _count_input(self, conn: Connection) -> None:
        """Bring the memory budget's count of `conn`'s unhandled input up to date."""
        held = self.app.pending_input(conn.conn_id)
        self.memory.input += held - conn.in_bytes
        conn.in_bytes = held
        if conn.sock is None:
            self._udp_interest(conn)        # its stream is taken again once this is low

    # -- requests ------------------------------------------------------------------------------

    def _process_input(self) -> None:
        """Give each scheduled connection its turn, in the Scheduler's order and with its
        number of requests; send the fresh connections' replies before the backlogs' turns."""
        scheduler = self.scheduler
        for conn, limit in scheduler.turns(after_fresh=self._flush):
            if self._take_turn(conn, limit):
                scheduler.requeue(conn)     # the next select() will not wait

    def _take_turn(self, conn: Connection, limit: int) -> bool:
        """One turn of `conn`: handle up to `limit` of its requests, unless none may be handled
        now (we are stopping, it is no longer OPEN, its reads are paused, it is throttled).
        True if it may have more."""
        if self._stopping:
            return False                    # KILL_SERVICE: what came after it is not served
        if conn.state is not _OPEN or conn.throttled or conn.waiting:
            return False                    # requeued when it may go on (throttle end, Resume)
        if conn.reads_paused:               # it is requeued by _send on resuming; what it sent
            self._guarded(conn, self._count_input, conn)    # before the pause counts now
            return False
        more = self._guarded(conn, self._handle_requests, conn, limit)
        return bool(more)

    def _handle_requests(self, conn: Connection, limit: int) -> bool:
        """Handle up to `limit` of `conn`'s requests; True if it may have more."""
        rate = self.limits.requests_per_second
        if rate:
            self._refill(conn)
            allowed = int(conn.credit_requests)
            if allowed < 1:                 # its bucket is dry: come back when it is not
                self._throttle(conn, (1 - conn.credit_requests) / rate)
                return False
            limit = min(limit, allowed)
        next_actions = self.app.maybe_next_actions
        more = True
        handled = 0
        while handled < limit:
            actions = next_actions(conn.conn_id)
            if actions is None:
                more = False
                break
            handled += 1
            self.apply(actions)
            if conn.state is not _OPEN or conn.reads_paused or conn.waiting or self._stopping:
                more = conn.state is _OPEN and not conn.waiting
                break
        if rate:
            conn.credit_requests -= handled
        if handled and self._unproven:
            self._unproven.pop(conn.conn_id, None)          # it has completed a request
        if conn.state is not _CLOSED:
            self._count_input(conn)         # what it holds now counts against the budget
        return more

    # -- flood control -------------------------------------------------------------------------

    def _refill(self, conn: Connection) -> None:
        """Top up `conn`'s buckets for the time since they were last looked at."""
        elapsed = self._now - conn.credited_at
        if elapsed > 0:
            limits = self.limits
            conn.credited_at = self._now
            conn.credit_bytes = min(limits.burst_bytes,
                                    conn.credit_bytes + elapsed * limits.bytes_per_second)
            conn.credit_requests = min(limits.request_burst,
                                       conn.credit_requests + elapsed * limits.requests_per_second)

    def _throttle(self, conn: Connection, seconds: float) -> None:
        """Neither read from `conn` nor give it turns for `seconds` (its bucket refills)."""
        if not conn.throttled:
            conn.throttled = True
            self.throttles += 1
            heapq.heappush(self._throttled, (self._now + seconds, conn.conn_id, conn))
            self._update_interest(conn)

    def _end_throttles(self, now: float) -> None:
        """Read from, and give turns to, the throttled connections whose time is up."""
        throttled = self._throttled
        while throttled and throttled[0][0] <= now:
            _until, _conn_id, conn = heapq.heappop(throttled)
            if conn.state is _CLOSED:
                continue
            conn.throttled = False
            self._update_interest(conn)
            self.scheduler.requeue(conn)    # it may hold requests it was not given a turn for

    def _guarded(self, conn: Optional[Connection], func: Callable[..., Any], *args: Any) -> Any:
        """Call func(*args) on behalf of `conn` (None: of connections already gone) and return
        what it returns (None if it raised).

        This is the server's one catch-all. An exception here is our own bug (in the app or in
        this module), never the peer's fault, which the app answers with an error reply: log
        it with its traceback and drop that one connection; the server goes on."""
        try:
            return func(*args)
        except Exception as exc:
            who = "internal error" if conn is None else "conn %d: internal error" % conn.conn_id
            where = getattr(func, "__qualname__", func)
            then = "" if conn is None else "; dropping the connection"
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            kind = (type(exc).__name__, frame.filename, frame.lineno)
            if self._now - self._tracebacks.get(kind, -TRACEBACK_INTERVAL) >= TRACEBACK_INTERVAL:
                self._tracebacks[kind] = self._now
                LOGGER.exception("%s in %s%s", who, where, then)
            else:
                self.log_budget.log(logging.ERROR, "%s in %s (%s: %s, as logged with its "
                                    "traceback within %.0f s)%s", who, where,
                                    type(exc).__name__, exc, TRACEBACK_INTERVAL, then)
            if conn is not None:
                self._teardown(conn, logging.ERROR, "dropped after an internal error")
            return None

    # -- actions -------------------------------------------------------------------------------

    def apply(self, actions: List[Action]) -> None:
        """Carry out the app's actions, in order."""
        for action in actions:
            kind = type(action)
            if kind is Broadcast:
                self.write_many(action.conn_ids, action.data)
            elif kind is Send:
                self.write_many((action.conn_id,), action.data)
            elif kind is Close:
                self.close_connection(action.conn_id)
            elif kind is Shutdown:
                self.stop()
            elif kind is Callback:
                self._set_callback(action)
            elif kind is Wait or kind is Resume:
                self._wait(action.conn_id, kind is Wait)
            else:
                raise TypeError("unknown action %r" % (action,))

    def _wait(self, conn_id: int, waiting: bool) -> None:
        """A Wait (`waiting`) or a Resume: stop or start reading from and serving `conn_id`."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.waiting is waiting:
            return
        conn.waiting = waiting
        if conn.state is _OPEN:
            self._update_interest(conn)
            if not waiting:
                self.scheduler.requeue(conn)    # it may hold requests read before the Wait

    def write_many(self, conn_ids: Sequence[int], data: bytes) -> None:
        """Queue the same `data` for each connection; it is sent at the end of this tick.

        Small data is copied onto the end of each connection's own buffer (`tail`); data of
        SHARE_MIN bytes or more is queued by reference, the same object for every connection
        (_write_shared). This loop runs once per delivered message, so it is written for speed:
        no method call per connection, and locals for everything it touches.
        """
        size = len(data)
        if size >= SHARE_MIN:
            self._write_shared(conn_ids, data)
            return
        conns = self.conns
        to_flush = self._to_flush
        skipped = 0
        for conn_id in conn_ids:
            conn = conns.get(conn_id)
            if conn is None or conn.state is not _OPEN:
                skipped += 1                # it has gone, or is closing: nothing more for it
                continue
            if not conn.flush_pending:
                conn.flush_pending = True
                to_flush.append(conn)
            tail = conn.tail
            if tail is None:
                tail = conn.tail = bytearray()
                conn.out.append(tail)
            tail += data
            queued = conn.out_bytes + size
            conn.out_bytes = queued
            if queued > HIGH_WATER:
                self._over_high_water(conn)
        queued = len(conn_ids) - skipped
        self.deliveries += queued
        self.memory.output += size * queued

    def _write_shared(self, conn_ids: Sequence[int], data: bytes) -> None:
        """write_many() for large data: every connection queues the same object."""
        holders = 0
        for conn_id in conn_ids:
            conn = self.conns.get(conn_id)
            if conn is None or conn.state is not _OPEN:
                continue
            self._want_flush(conn)
            conn.out.append(data)
            conn.tail = None
            conn.out_bytes += len(data)
            holders += 1
            if conn.out_bytes > HIGH_WATER:
                self._over_high_water(conn)
        if holders:
            self.deliveries += holders
            self._hold(data, holders)

    def _hold(self, data: bytes, holders: int) -> None:
        """`holders` connections now queue `data` by reference: it is counted once."""
        entry = self._shared.get(id(data))
        if entry is None:
            self._shared[id(data)] = [data, holders]
            self.memory.output += len(data)
        else:
            entry[1] += holders

    def _release(self, chunk: Any) -> None:
        """One holder is done with a shared object (or a memoryview of one)."""
        data = chunk.obj if type(chunk) is memoryview else chunk
        entry = self._shared[id(data)]
        entry[1] -= 1
        if not entry[1]:
            del self._shared[id(data)]
            self.memory.output -= len(data)

    def _over_high_water(self, conn: Connection) -> None:
        if conn.out_bytes > OUTPUT_CAP:
            self._drop(conn, logging.WARNING, "evicted: the output queued for it passed "
                       "OUTPUT_CAP (%d bytes): it does not read" % OUTPUT_CAP)
        elif conn.sock is not None:
            conn.reads_paused = True        # until it drains below LOW_WATER (_send)
        elif conn.out_bytes > UDP_HIGH_WATER:
            conn.reads_paused = True        # until below UDP_LOW_WATER (_count_udp_buffers)
            self._udp_interest(conn)

    def close_connection(self, conn_id: int) -> None:
        """Close a connection once its queued output is sent (idempotent)."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.state is not _OPEN:
            return
        conn.state = _CLOSING
        self._want_flush(conn)

    # -- output --------------------------------------------------------------------------------

    def _want_flush(self, conn: Connection) -> None:
        """Send to `conn` at the end of this tick (write_many does the same, inline)."""
        if not conn.flush_pending:
            conn.flush_pending = True
            self._to_flush.append(conn)

    def _flush(self) -> None:
        """Tell the app of connections lost and send what each connection got this tick
        (_flush_connections; a UDP session's goes into its stream), then send the UDP
        endpoint's datagrams and act on its events, which may bring more of both (a session
        over: its rooms are told)."""
        self._flush_connections()
        if self.udp is not None:
            for _ in range(UDP_OUTPUT_ROUNDS):
                if not self._udp_output():
                    break
                self._flush_connections()

    def _flush_connections(self) -> None:
        """Tell the app of connections lost (at most twice LOST_PER_CALL), then send what each
        connection got this tick, one send() each; again while either brings more. Those not
        told of yet are, in the next tick's flush (which does not wait). Sending stops once it
        has taken STEP_BUDGET (a storm of departures makes thousands of send()s fail): the
        rest is sent first thing in the next tick's flush."""
        calls = 0
        started = time.monotonic()
        while self._to_flush or (self._lost and calls < 2):
            if self._lost and calls < 2:        # at most 2 * LOST_PER_CALL in one flush
                self._tell_app_lost()
                calls += 1
            batch, self._to_flush = self._to_flush, []
            for index, conn in enumerate(batch):
                if (index % EVENTS_BETWEEN_CLOCK_READS == EVENTS_BETWEEN_CLOCK_READS - 1
                        and time.monotonic() - started > STEP_BUDGET):
                    self._to_flush[:0] = batch[index:]      # still flush_pending: next tick
                    return
                conn.flush_pending = False
                if conn.sock is None:
                    self._send_udp(conn)
                elif conn.state is _OPEN or conn.state is _CLOSING:
                    self._send(conn)

    def _send(self, conn: Connection) -> None:
        """One send() of what is queued for `conn`, then what follows from what is left: the
        close goes on, reading resumes, or the selector watches for writability."""
        out = conn.out
        if conn.out_bytes:
            try:
                if len(out) == 1:
                    sent = conn.sock.send(out[0])
                else:                       # scatter-gather: the whole queue, one system call
                    sent = _sendmsg(conn.sock, out[:MAX_IOV])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:          # EPIPE, ECONNRESET: the peer is gone
                self._drop(conn, logging.INFO, "send failed: %s" % exc)
                return
            if sent:
                self._consume(conn, sent)
        if not conn.out_bytes and conn.state is _CLOSING:
            self._finish_close(conn)
            return
        if conn.reads_paused and conn.out_bytes <= LOW_WATER and conn.state is _OPEN:
            conn.reads_paused = False
            self.scheduler.requeue(conn)    # the app may hold requests read before the pause
        self._update_interest(conn)

    def _consume(self, conn: Connection, sent: int) -> None:
        """Drop the first `sent` bytes of `conn`'s queue: they are in the kernel now."""
        out = conn.out
        if sent == conn.out_bytes and conn.tail is not None and len(out) == 1:
            # The usual case: its one buffer, all of it sent. The buffer stays, empty, as the
            # tail the next tick's output is copied onto (a new one each tick cost 4% here).
            conn.tail.clear()
            conn.out_bytes = 0
            self.memory.output -= sent
            return
        conn.out_bytes -= sent
        memory = self.memory
        done = 0                            # buffers sent whole, dropped at the end in one go
        while sent:
            head = out[done]
            size = len(head)
            if sent < size:                 # part of this one: keep the rest
                if type(head) is bytearray:
                    del head[:sent]         # O(1): a bytearray drops its head in place
                    memory.output -= sent
                else:
                    out[done] = memoryview(head)[sent:]
                break
            done += 1
            sent -= size
            if type(head) is bytearray:
                memory.output -= size
                if head is conn.tail:
                    conn.tail = None
            else:
                self._release(head)
        del out[:done]

    def _drop_output(self, conn: Connection) -> None:
        """Forget everything queued for `conn` (it is closed, or aborted)."""
        for chunk in conn.out:
            if type(chunk) is bytearray:
                self.memory.output -= len(chunk)
            else:
                self._release(chunk)
        conn.out.clear()
        conn.tail = None
        conn.out_bytes = 0

    def _update_interest(self, conn: Connection) -> None:
        """Watch for writability only while output is queued; for input unless reads are
        paused or the peer has closed its side."""
        if conn.sock is None:
            self._udp_interest(conn)
            return
        reading = not (conn.reads_paused or conn.peer_closed or conn.throttled or conn.waiting)
        events = selectors.EVENT_READ if reading else 0
        if conn.out_bytes:
            events |= selectors.EVENT_WRITE
        if events != conn.events:           # (the selector takes no empty set of events)
            if not events:
                self.selector.unregister(conn.sock)
            elif not conn.events:
                self.selector.register(conn.sock, events, conn)
            else:
                self.selector.modify(conn.sock, events, conn)
            conn.events = events

    def _drop(self, conn: Connection, level: int, reason: str) -> None:
        """Drop `conn`: from now on it is neither read from, written to nor sent to
        (ABORTING), the app is told it is gone (in this tick's flush), and its socket is torn
        down when the tick has time for it (_drop_aborted). Tearing a socket down costs tens of
        microseconds: thousands of them at once (a storm of resets, 2 000 stalled members
        passing the cap together) must not make one long tick. Safe in the middle of a
        broadcast."""
        if conn.state is _ABORTING or conn.state is _CLOSED:
            return
        conn.state = _ABORTING
        if conn.events and conn.sock is not None:   # no more events: it is not read again
            self.selector.unregister(conn.sock)
            conn.events = 0
        self._to_abort.append((conn, level, reason))
        self._report_lost(conn)

    def _drop_aborted(self) -> None:
        """Tear down the dropped (ABORTING) connections, for at most STEP_BUDGET; the rest
        wait for the next tick (nothing is read from or sent to them meanwhile)."""
        started = time.monotonic()
        while self._to_abort and time.monotonic() - started <= STEP_BUDGET:
            conn, level, reason = self._to_abort.pop()
            self._teardown(conn, level, reason)

    # -- closing -------------------------------------------------------------------------------

    def _on_peer_closed(self, conn: Connection) -> None:
        """The peer has closed its side: it sends nothing more. What we owe it is still sent
        (as asyncio's close() does: a client may send DISCONNECT and shut down its side before
        reading), then the connection ends; meanwhile its rooms are told it left."""
        conn.peer_closed = True
        if not conn.out_bytes or not (conn.state is _OPEN or conn.state is _CLOSING):
            self._teardown(conn, reason="closed by the peer")
            return
        conn.state = _CLOSING
        self._update_interest(conn)         # writability only
        self._report_lost(conn)

    def _finish_close(self, conn: Connection) -> None:
        """All output is sent: send our FIN, tell the app the connection is gone, and linger
        until the peer closes too (or LINGER_TIMEOUT passes); see LINGER_TIMEOUT for why."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._teardown(conn, reason="shutdown failed: %s" % exc)
            return
        if conn.peer_closed:                # its FIN came first: nothing is left to wait for
            self._teardown(conn, reason="closed; the peer had closed first")
            return
        conn.state = _LINGERING
        conn.reads_paused = False           # it is read from (and its input dropped) to the end
        self._update_interest(conn)
        self._lingering.append((time.monotonic() + LINGER_TIMEOUT, conn))
        self._report_lost(conn)

    def _expire_timers(self, now: float) -> None:
        """The timers that are due: let go of the lingering connections whose time is up, and
        accept again once an accept pause is over."""
        lingering = self._lingering
        while lingering and lingering[0][0] <= now:
            _deadline, conn = lingering.popleft()
            self._teardown(conn, reason="closed (the peer had not closed in %g s)"
                           % LINGER_TIMEOUT)
        self._end_throttles(now)
        if self._unproven and len(self.conns) >= self._crowded_at:
            self._close_idle_unproven(now)
        if self.udp is not None:
            self._expire_udp_timers(now)
        for timer in self._periodic:
            if timer[0] <= now:
                timer[0] = now + timer[1]
                self._guarded(None, timer[2])
        if self._accept_paused_until and self._accept_paused_until <= now:
            self._accept_paused_until = 0.0
            self.selector.register(self.listener, selectors.EVENT_READ, None)

    def _close_idle_unproven(self, now: float) -> None:
        """Descriptors are scarce: close the connections idle for UNPROVEN_TIMEOUT that never
        completed a request (longest idle first: the order of _unproven)."""
        unproven = self._unproven
        while unproven:
            since, conn = next(iter(unproven.values()))
            if now - since < UNPROVEN_TIMEOUT:
                return
            self._teardown(conn, logging.WARNING, "closed: idle for %g s without completing a "
                           "request while descriptors are scarce" % UNPROVEN_TIMEOUT)

    def _teardown(self, conn: Connection, level: int = logging.INFO, reason: str = "closed",
                  tell_app: bool = True) -> None:
        """Forget a connection, once: unregister, close, log why (rate-limited), and tell the
        app if it has not been told yet (it announces the leaves to the rooms). Later events
        for it are ignored."""
        if conn.state is _CLOSED:
            return
        conn.state = _CLOSED
        del self.conns[conn.conn_id]
        self.memory.input -= conn.in_bytes
        conn.in_bytes = 0
        if type(conn) is UdpConnection:
            self._forget_session(conn, reason)
        else:
            try:
                self.selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()
        self._drop_output(conn)
        self._unproven.pop(conn.conn_id, None)
        self.log_budget.log(level, "conn %d (%s): %s", conn.conn_id, conn.peer_ip or "local",
                            reason)
        if tell_app:
            self._report_lost(conn)

    def _report_lost(self, conn: Connection) -> None:
        """Note, once, that `conn` is gone. The app is told in this tick's flush, together
        with every other connection lost meanwhile (_tell_app_lost)."""
        if not conn.reported_lost:
            conn.reported_lost = True
            self._lost.append(conn)

    def _tell_app_lost(self) -> None:
        """Tell the app which connections are gone, up to LOST_PER_CALL in one call, and carry
        out its answer.

        One call for a storm of departures: the app takes every one of them out of its rooms
        before it announces any, so nothing is built for members that are themselves gone, and
        a room's announcements can go out as one shared message. Telling it one by one made
        8 000 members resetting at once cost 8 000 announcements to 8 000 members."""
        lost, self._lost = self._lost[:LOST_PER_CALL], self._lost[LOST_PER_CALL:]
        actions = self._guarded(None, self.app.connections_lost, [c.conn_id for c in lost])
        if actions:
            self.apply(actions)

    def _evict_for_memory(self) -> None:
        """The connections' buffers hold more than the budget: drop the connections that hold
        the most, largest first, until they do not (at most EVICTIONS_PER_TICK now)."""
        memory = self.memory
        largest = heapq.nlargest(EVICTIONS_PER_TICK, self.conns.values(), key=_bytes_held)
        for conn in largest:
            if memory.total <= memory.budget:
                break
            self.evictions += 1
            self._teardown(conn, logging.WARNING, "evicted for the memory budget: buffers hold "
                           "%d bytes, the budget is %d, and it held the most (%d of output, %d "
                           "of input)" % (memory.total, memory.budget, conn.out_bytes,
                                          conn.in_bytes))
        self._flush()                       # the evicted connections' rooms are told now

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- UDP sessions (docs/UDP.md) -------------------------------------------------------------
    # The endpoint (sansio/udp.py) is a state machine: datagrams and the time go in; datagrams to
    # send, stream bytes and events come out. Here a session becomes a UdpConnection: its stream
    # bytes go to the app as a TCP connection's would, and through the same Scheduler and flood
    # control; what the app queues for it goes into its stream (_send_udp); its end is a
    # connection lost.

    def _on_datagrams(self, mask: int) -> None:
        """The UDP socket is ready: send the backlog if it is writable; read at most
        UDP_READS_PER_TICK datagrams into the endpoint, and act on what they bring."""
        if mask & selectors.EVENT_WRITE:
            self._send_datagrams(())
        if not mask & selectors.EVENT_READ:
            return
        sock, endpoint, now = self.udp_sock, self.udp, self._now
        for _ in range(UDP_READS_PER_TICK):
            try:
                # One byte more than the largest datagram: a longer one arrives cut, at 1 201
                # bytes, and the endpoint drops it as too long.
                data, addr = sock.recvfrom(udp_wire.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:          # an ICMP error some systems report: one datagram
                LOGGER.debug("udp: recvfrom failed: %s", exc)
                continue
            endpoint.datagram_received(data, addr, now)
        self._on_udp_events(endpoint.events())

    def _on_udp_events(self, events: List[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is udp_stream.StreamData:
                self._on_stream_data(event)
            elif kind is udp_stream.SessionOpened:
                self._open_session(event)
            elif kind is udp_stream.SessionClosed:
                conn = self._udp_conns.get(event.session_id)
                if conn is not None:
                    self._teardown(conn, reason="UDP session over: %s" % event.reason)
            else:                           # CallbackValidated, CallbackFailed
                LOGGER.debug("udp: %r", event)

    def _open_session(self, event: udp_stream.SessionOpened) -> None:
        """A UDP session is confirmed: serve it as a new connection."""
        conn = UdpConnection(self._next_conn_id, event.session_id)
        self._next_conn_id += 1
        conn.credit_bytes = self.limits.burst_bytes
        conn.credit_requests = self.limits.request_burst
        conn.credited_at = self._now
        self.conns[conn.conn_id] = conn
        self._udp_conns[event.session_id] = conn
        addr = event.source_addr
        conn.peer_ip = sys.intern(addr[0])     # (for the log lines about it)
        self._guarded(conn, self.app.connection_made, conn.conn_id,
                      self._udp_local_ip(addr), conn.peer_ip)
        self.log_budget.log(logging.INFO, "conn %d: UDP session from %s:%d", conn.conn_id,
                            addr[0], addr[1])

    def _udp_local_ip(self, peer: Any) -> str:
        """Our address as `peer` sees it, for HELO and JOINED: the UDP socket's, or when that
        is a wildcard, the one the kernel would send to `peer` from (a connected datagram
        socket learns it without sending anything)."""
        bound = self.udp_sock.getsockname()[0]
        if not ipaddress.ip_address(bound).is_unspecified:
            return sys.intern(bound)
        try:
            with socket.socket(self.udp_sock.family, socket.SOCK_DGRAM) as probe:
                probe.connect(peer)
                return sys.intern(probe.getsockname()[0])
        except OSError:
            return sys.intern(bound)

    def _on_stream_data(self, event: udp_stream.StreamData) -> None:
        """Stream bytes of a session, in order: as _on_readable's bytes of a TCP connection."""
        conn = self._udp_conns.get(event.session_id)
        if conn is None or conn.state is not _OPEN:
            return                          # closing: what it sends now is dropped
        self._received(conn, event.data)
        if conn.state is _OPEN:
            self._guarded(conn, self._count_input, conn)

    def _udp_interest(self, conn: Connection) -> None:
        """Take a session's incoming stream, or have the endpoint discard it for now (the peer
        retransmits it) while the app holds more than UDP_INPUT_HIGH_WATER of its input.

        While its reads are paused or it is throttled, it gets no turns, as a TCP connection
        would, but its stream is still taken up to that bound, as a TCP connection's kernel
        buffer still takes data. Discarding at once would cost more: every discarded segment
        looks lost to the peer, whose retransmission timer backs off (to 10 s), so a session
        paused for a moment would stall for seconds after it."""
        self.udp.set_receiving(conn.session_id, conn.in_bytes <= UDP_INPUT_HIGH_WATER)

    def _send_udp(self, conn: UdpConnection) -> None:
        """_send for a UDP session: what is queued goes into its stream (the endpoint cuts it
        into datagrams, sent in _udp_output). A Close closes the session once all of it is
        acknowledged (docs/UDP.md, "Teardown"), so DISCONNECT's announcements arrive first; the
        app is told it is gone now, as for TCP once our FIN is sent."""
        if conn.state is not _OPEN and conn.state is not _CLOSING:
            return
        endpoint, now, memory = self.udp, self._now, self.memory
        for chunk in conn.out:              # bytearrays of copied output, shared bytes
            endpoint.send_stream(conn.session_id, chunk, now)
            if type(chunk) is bytearray:
                memory.output -= len(chunk)
            else:
                self._release(chunk)
        conn.out.clear()
        conn.tail = None
        conn.out_bytes = conn.endpoint_out
        self._count_udp_buffers(conn)
        if conn.state is _CLOSING:
            endpoint.close_session(conn.session_id, now)
            conn.state = _LINGERING
            self._udp_closing.append((now + UDP_CLOSE_TIMEOUT, conn))
            self._report_lost(conn)

    def _count_udp_buffers(self, conn: UdpConnection) -> None:
        """Bring the budget's count of what the endpoint holds for `conn` up to date, and let
        it be read again once its output has drained below UDP_LOW_WATER."""
        sent, held = self.udp.session_buffers(conn.session_id)
        grown = sent - conn.endpoint_out
        conn.endpoint_out = sent
        conn.out_bytes += grown
        self.memory.output += grown
        self.memory.input += held - conn.endpoint_in
        conn.endpoint_in = held
        if conn.reads_paused and conn.out_bytes <= UDP_LOW_WATER and conn.state is _OPEN:
            conn.reads_paused = False
            self.scheduler.requeue(conn)    # the app may hold requests read before the pause
            self._udp_interest(conn)

    def _udp_output(self) -> bool:
        """Send the endpoint's datagrams, update the budget for the sessions they concern, and
        act on its events. True if that gave connections something to flush or report."""
        endpoint = self.udp
        self._send_datagrams(endpoint.datagrams_to_send(self._now))
        conns = self._udp_conns
        for session_id in endpoint.touched_sessions():
            conn = conns.get(session_id)
            if conn is not None:
                self._count_udp_buffers(conn)
        events = endpoint.events()
        if events:
            self._on_udp_events(events)
        return bool(self._to_flush or self._lost)

    def _send_datagrams(self, datagrams: Iterable[Tuple[bytes, Any]]) -> None:
        """sendto() the backlog, then `datagrams`. What the kernel will not take now waits for
        the socket to be writable (at most UDP_SEND_BACKLOG of it; the newest past that are
        dropped, and the endpoint sends them again)."""
        pending = self._udp_backlog
        pending.extend(datagrams)
        sock = self.udp_sock
        while pending:
            data, addr = pending[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:          # no route to it, say: that datagram is lost
                self.udp_dropped += 1
                self.log_budget.log(logging.DEBUG, "udp: sendto %s failed: %s", addr, exc)
            pending.popleft()
        while len(pending) > UDP_SEND_BACKLOG:
            pending.pop()
            self.udp_dropped += 1
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
        if events != self._udp_events:
            self.selector.modify(sock, events, sock)
            self._udp_events = events

    def _expire_udp_timers(self, now: float) -> None:
        """The endpoint's timers (retransmission, keepalive, timeouts) when due, and the UDP
        closes that have taken longer than UDP_CLOSE_TIMEOUT."""
        self._now = now
        closing = self._udp_closing
        expired = False
        while closing and closing[0][0] <= now:
            _deadline, conn = closing.popleft()
            if conn.state is not _CLOSED:
                self._teardown(conn, reason="UDP close not confirmed in %g s" % UDP_CLOSE_TIMEOUT)
                expired = True
        endpoint_due = self.udp.next_deadline()
        if endpoint_due is not None and endpoint_due <= now:
            self.udp.timer(now)
            expired = True
        if expired:
            self._flush()

    def _set_callback(self, action: Callback) -> None:
        """A JOIN named a callback address: over UDP the session's stream goes there once it is
        validated (docs/UDP.md, "Callback addresses"). A TCP connection's replies go back on it,
        so there it means nothing; so does an address that is not an IP literal and a port, or
        is of the other IP version than our socket."""
        conn = self.conns.get(action.conn_id)
        if type(conn) is not UdpConnection or conn.state is not _OPEN:
            return
        try:
            addr = action.address
            if addr is not None:
                version = 6 if self.udp_sock.family == socket.AF_INET6 else 4
                if ipaddress.ip_address(addr[0]).version != version:
                    raise ValueError("not an IPv%d address" % version)
                if version == 6:
                    addr = (addr[0], addr[1], 0, 0)   # as recvfrom() names IPv6 peers
        except ValueError as exc:
            self.log_budget.log(logging.DEBUG, "conn %d: callback %s ignored: %s",
                                conn.conn_id, action.address, exc)
            return
        self.udp.set_callback(conn.session_id, addr, self._now)

    def _forget_session(self, conn: UdpConnection, reason: str) -> None:
        """_teardown's part for a UDP session: its endpoint buffers leave the budget, and the
        session ends with RESET unless it is already over."""
        del self._udp_conns[conn.session_id]
        self.memory.output -= conn.endpoint_out
        self.memory.input -= conn.endpoint_in
        conn.out_bytes -= conn.endpoint_out
        conn.endpoint_out = conn.endpoint_in = 0
        self.udp.abort_session(conn.session_id, reason, self._now)

    # -- links (sansio.actions.Links) -------------------------------------------------------------

    def _on_link_events(self, events: List[Tuple[selectors.SelectorKey, int]]) -> None:
        """The read step for the app's links, before any client's: in the app's order of links
        (the subscriber first), read everything ready, up to LINK_READS_PER_TICK each."""
        ready = {key.data.name: mask for key, mask in events if key.data.__class__ is _Link}
        for name in self.links.links:
            if name in ready and name in self._links:
                self._on_link_ready(self._links[name], ready[name])

    def _on_link_ready(self, link: _Link, mask: int) -> None:
        links = self.links
        if not link.connected:
            error = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._link_failed(link, "connect failed: %s" % os.strerror(error))
                return
            link.connected = True
            self._guarded(None, links.link_up, link.name, self._now)
            self._after_link_calls()
            return
        if mask & selectors.EVENT_WRITE:
            self._send_link(link)
        if not mask & selectors.EVENT_READ:
            return
        for _ in range(LINK_READS_PER_TICK):
            try:
                data = link.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._link_failed(link, "recv failed: %s" % exc)
                return
            if not data:
                self._link_failed(link, "closed by the other side")
                return
            self._guarded(None, links.link_data, link.name, data, self._now)
            if self._links.get(link.name) is not link:
                break                       # the app reset its links meanwhile
        self._after_link_calls()

    def _service_links(self, now: float) -> None:
        """The links' part of the timers step: open them when the app wants, run its timer when
        due, and send what it has for them (the commands this tick's requests made)."""
        links = self.links
        for name in links.links_wanted(now):
            if name not in self._links:
                self._open_link(name, now)
        due = links.links_deadline()
        if due is not None and now >= due:
            self._guarded(None, links.links_timer, now)
        self._after_link_calls()

    def _after_link_calls(self) -> None:
        """After the app handled link input or time: carry out its actions, close the links if
        it asked for that, send what it has for them."""
        actions = self._guarded(None, self.links.link_actions)
        if actions:
            self.apply(actions)
        for name in self.links.links_to_close():
            self._close_link(name)
        for link in list(self._links.values()):
            if link.connected:
                self._send_link(link)

    def _open_link(self, name: str, now: float) -> None:
        host, port = self.links.bus_address
        self.links.link_opening(name, now)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
        except OSError as exc:
            # Every descriptor is taken (clients took the ones a dropped link let go): the app
            # retries later, with its backoff, as for a refused connection.
            self._guarded(None, self.links.link_failed, name, "no socket: %s" % exc, now)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = self._links[name] = _Link(name, sock)
        self.selector.register(sock, link.events, link)
        error = sock.connect_ex((host, port))
        if error not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._link_failed(link, "connect failed: %s" % os.strerror(error))

    def _send_link(self, link: _Link) -> None:
        link.out += self.links.link_output(link.name)
        if link.out:
            try:
                sent = link.sock.send(link.out)
                del link.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._link_failed(link, "send failed: %s" % exc)
                return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.out else 0)
        if events != link.events:
            self.selector.modify(link.sock, events, link)
            link.events = events

    def _link_failed(self, link: _Link, why: str) -> None:
        self._close_link(link.name)
        self._guarded(None, self.links.link_failed, link.name, why, self._now)
        self._after_link_calls()

    def _close_link(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is not None:
            self.selector.unregister(link.sock)
            link.sock.close()

    def _close_links(self, goodbye: bool = False) -> None:
        """Close every link (and first, with `goodbye`, send the app's last words, best
        effort: the loop is ending)."""
        if goodbye and "cmd" in self._links and self._links["cmd"].connected:
            link = self._links["cmd"]
            try:        # what the kernel has not taken yet first: Redis reads one byte stream
                link.sock.send(bytes(link.out) + self.links.links_goodbye())
            except OSError:
                pass
        for name in list(self._links):
            self._close_link(name)
