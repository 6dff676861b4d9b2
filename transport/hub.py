"""The hub: the connection table, and the one place the app (sansio.actions.App) is driven.

Boundary: it knows connections (transport/conn.py) by their integer ids and verbs, never which
transport carries one; it knows the app by the App contract, never chat. Transports hand it what
they read (received), and it gives each connection its turns (policy/scheduler.py), carries out
the app's actions, and at the end of each tick flushes: the departures in one call, then each
connection's new output in one send. Its end_of_tick() is the loop's end-of-tick hook.

The write path is asyncio's (selector_events.py), with the send moved to the end of the tick as
Redis does (handleClientsWithPendingWrites): nothing is sent while a request is being handled;
at the end of the tick each connection with output is sent to at once; only a remainder the
kernel would not take stays queued (transport/tcp.py). Output of SHARE_MIN bytes or more is
queued by reference, one object for all the members of a broadcast, and counted once.

The one catch-all (guarded): an exception from the app, or from our own code on behalf of one
connection, is our bug: it is logged with its traceback and drops that connection, never the
server.
"""
import collections
import itertools
import logging
import time
import traceback
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from policy.flood import InputLimits
from policy.logbudget import TRACEBACK_INTERVAL, LogBudget
from policy.memory import MEMORY_BUDGET, PILE_UP, Memory
from policy.reserve import Holders, Unproven
from policy.scheduler import READS_LEFT_TARGET, STEP_BUDGET, TICK_TARGET, Scheduler
from policy.watermarks import HIGH_WATER
from reactor import Loop
from sansio.actions import Action, App, Broadcast, Callback, Close, Resume, Send, Shutdown, Wait
from transport.batch import BroadcastBatch
from transport.conn import CLOSED, OPEN, Connection, SharedOutput

LOGGER = logging.getLogger(__name__)

# Output of at least this many bytes is queued by reference: every member of a broadcast holds
# the same bytes object, and sendmsg() gathers a connection's queue in one system call. Smaller
# output (nearly every chat) is copied onto the end of the member's own buffer, which costs less
# than a reference would when it is sent. So a 64 KiB chat to 2 000 members costs 64 KiB, not
# 128 MB, and a departure announced to a whole room is one object, however large the room.
SHARE_MIN = 2048
# The most lost connections the app is told of in one call: each costs it ~20 us (leaving its
# rooms), so 8 000 at once would be one long tick; the rest are told in the next ticks.
LOST_PER_CALL = 250
# The most work one such call may carry, in the app's units (App.departure_cost; for the chat,
# one per connection and one per room it was in, each a leave built and delivered): what a
# departure costs is its memberships, not the connection. 250 connections in 256 rooms each were
# 64 000 leaves in one call, 128 000 in one flush (300 ms to 8 s of one tick); 2 048 cost
# ~10 ms. A connection costing more than this alone is told of alone.
LOST_WORK_PER_CALL = 2048
# The flush reads the clock before each send but the first: one send may copy megabytes (a
# member that does not read, whose kernel buffers have grown), so 32 sends between two reads of
# the clock made one flush of 2 000 stalled members take 240 ms, where STEP_BUDGET is 5 ms.
# A read of the clock costs 50 ns; a send, microseconds.
# Past its deadline the flush still sends queues of at most this many bytes: a send of a few
# small messages costs microseconds, never a megabyte's copy, and leaving them queued only
# piled a join storm's announcements up (10 000 members in rooms of 100: up to 5 MB queued
# between ticks, whose peak the RSS kept: 2 000..3 300 bytes per idle connection after).
# So only while more than PILED_UP bytes of output are queued in all: below that, leaving output
# for the next tick's flush costs little memory and lets it go in fewer sends (room1x100).
CHEAP_SEND = 4096
PILED_UP = 1024 * 1024
# Rounds of "flush the connections, then the flushers (the UDP endpoint's datagrams and
# events)" per tick: an event (a session over) can bring output (its rooms told), which can end
# another session (over its cap).
FLUSH_ROUNDS = 8


def log_internal_error(log_budget: LogBudget, conn: Optional[Connection],
                       func: Callable[..., Any], exc: Exception) -> None:
    """Log an exception Hub.guarded caught: with its traceback, unless one from the same
    place was logged within TRACEBACK_INTERVAL (then one line, within the log budget)."""
    who = "internal error" if conn is None else "conn %d: internal error" % conn.conn_id
    where = getattr(func, "__qualname__", func)
    then = "" if conn is None else "; dropping the connection"
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    if log_budget.traceback_due((type(exc).__name__, frame.filename, frame.lineno)):
        LOGGER.exception("%s in %s%s", who, where, then)
    else:
        log_budget.log(LOGGER, logging.ERROR, "%s in %s (%s: %s, as logged with its traceback "
                       "within %.0f s)%s", who, where, type(exc).__name__, exc,
                       TRACEBACK_INTERVAL, then)


def next_departures(pending: Deque[Connection], cost: Optional[Callable[[int], int]]) -> List[int]:
    """Take the ids of the next lost connections to tell the app of in one call, from the
    front of `pending`: at least one, at most LOST_PER_CALL, and no more once their cost (the
    app's departure_cost; 1 each without it) reaches LOST_WORK_PER_CALL."""
    lost: List[int] = []
    work = 0
    while pending and len(lost) < LOST_PER_CALL and work < LOST_WORK_PER_CALL:
        conn_id = pending.popleft().conn_id
        lost.append(conn_id)
        work += 1 if cost is None else cost(conn_id)
    return lost


class Hub:
    """The connections of one server and the app that answers them.

    `app` may be given after construction (as Server.py does, once the listener's port is
    known). `open_file_limit` sizes the descriptor reserve's notion of crowded."""

    def __init__(self, loop: Loop, app: Optional[App] = None,
                 memory_budget: int = MEMORY_BUDGET, limits: Optional[InputLimits] = None,
                 open_file_limit: int = 1024) -> None:
        self.loop = loop
        self.app = app
        self.conns: Dict[int, Connection] = {}
        self._conn_ids = itertools.count(1)     # 1, 2, ...: never reused
        self.scheduler = Scheduler(time.monotonic)
        self.limits = limits if limits is not None else InputLimits()
        self.memory = Memory(memory_budget)
        self.unproven = Unproven(open_file_limit)
        self.holders = Holders()            # connections holding a descriptor (transport/tcp.py)
        self.log_budget = LogBudget(time.monotonic)
        self._to_flush: List[Connection] = []     # got output this tick
        self._flush_later: List[Connection] = []  # what a flush had no time for, sent after
        # ABORTING, to be torn down as time allows (drop_aborted): (conn, log level, why).
        self._to_abort: List[Tuple[Connection, int, str]] = []
        self._lost: Deque[Connection] = collections.deque()     # gone; told in the flush
        self.shared = SharedOutput(self.memory)   # output queued by reference (SHARE_MIN)
        self._flushers: List[Callable[[], bool]] = []
        self.deliveries = 0                       # messages queued for connections, ever
        self.evictions = 0                        # connections dropped for the memory budget
        self.throttles = 0                        # how often a connection was throttled
        loop.at_end_of_tick(self.end_of_tick, busy=self.busy)

    # -- connections come and go ---------------------------------------------------------------

    def new_conn_id(self) -> int:
        return next(self._conn_ids)

    def add(self, conn: Connection, local_ip: str, unproven: bool = True) -> None:
        """Serve `conn` (its transport made it): the app is told (connection_made)."""
        now = self.loop.now
        conn.start_metering(self.limits, now)     # (its flood control's buckets)
        self.conns[conn.conn_id] = conn
        if unproven:
            self.unproven.add(conn, now)
        self.guarded(conn, self.app.connection_made, conn.conn_id, local_ip, conn.peer_ip)

    def add_flusher(self, flusher: Callable[[], bool]) -> None:
        """Call flusher() after each round of the flush (the UDP endpoint sends its datagrams
        there); it says whether it gave connections more to flush or report."""
        self._flushers.append(flusher)

    def received(self, conn: Connection, data: bytes) -> None:
        """What `conn` sent: to the app; a turn for it; its byte bucket charged."""
        self.guarded(conn, self.app.data_received, conn.conn_id, data)
        if conn.state is not OPEN:          # (the app may have failed and dropped it)
            return
        self.scheduler.schedule(conn, len(data))
        wait = conn.charge_bytes(len(data), self.loop.now)
        if wait:
            self.throttle(conn, wait)

    def count_input(self, conn: Connection) -> None:
        """Bring the memory budget's count of `conn`'s unhandled input up to date."""
        held = self.app.pending_input(conn.conn_id)
        self.memory.input += held - conn.in_bytes
        conn.in_bytes = held
        conn.input_counted()

    # -- the tick ------------------------------------------------------------------------------

    def busy(self) -> bool:
        """Work is left for the next tick: the loop's select() must not wait."""
        return bool(self.scheduler.has_backlog or self._to_abort or self.has_output())

    def has_output(self) -> bool:
        """Connections have output to flush, or departures to report."""
        return bool(self._to_flush or self._flush_later or self._lost)

    def end_of_tick(self) -> None:
        """The hub's part of a tick: the turns (and a flush whenever their output piles up), the
        flush, teardowns of dropped connections (STEP_BUDGET), evictions past the memory budget."""
        scheduler, memory, started = self.scheduler, self.memory, time.monotonic()
        target = READS_LEFT_TARGET if self.loop.events_left else TICK_TARGET
        for conn, limit in scheduler.turns(self.flush, target):
            if self._take_turn(conn, limit):
                scheduler.requeue(conn)     # the next select() will not wait
            if memory.output - memory.flushed_at > PILE_UP:    # (a join storm's peak)
                self.flush()
        self.flush(max(STEP_BUDGET, 2 * (time.monotonic() - started)))   # sending costs more
        if self._to_abort:
            self.drop_aborted()
        if self.memory.over_budget:
            self._evict_for_memory()

    def _take_turn(self, conn: Connection, limit: int) -> bool:
        """One turn of `conn`: handle up to `limit` of its requests, unless none may be handled
        now (we are stopping, it is no longer OPEN, its reads are paused, it is throttled).
        True if it may have more."""
        if self.loop.stopping:
            return False                    # KILL_SERVICE: what came after it is not served
        if conn.state is not OPEN or conn.throttled or conn.waiting:
            return False                    # requeued when it may go on (throttle end, Resume)
        if conn.reads_paused:               # requeued on resuming; what it sent before the
            self.guarded(conn, self.count_input, conn)      # pause counts now
            return False
        return bool(self.guarded(conn, self._handle_requests, conn, limit))

    def _handle_requests(self, conn: Connection, limit: int) -> bool:
        """Handle up to `limit` of `conn`'s requests; True if it may have more."""
        meter = conn                        # (its own flood meter: policy/flood.py)
        allowed = meter.requests_allowed(self.loop.now)
        if allowed is not None:
            if allowed < 1:                 # its bucket is dry: come back when it is not
                self.throttle(conn, meter.wait_for_a_request())
                return False
            limit = min(limit, allowed)
        next_actions = self.app.maybe_next_actions
        apply = self.apply
        loop = self.loop
        conn_id = conn.conn_id
        more = True
        handled = 0
        batch = BroadcastBatch(self.write_many, conn, SHARE_MIN)    # (transport/batch.py)
        took = batch.took
        try:
            while handled < limit:
                actions = next_actions(conn_id)
                if actions is None:
                    more = False
                    break
                handled += 1
                if not actions or took(actions):
                    continue                # nothing applied: nothing to check (with --bus, a
                                            # chat on its way to Redis has no action yet)
                apply(actions)
                if conn.state is not OPEN or conn.reads_paused or conn.waiting or loop.stopping:
                    more = conn.state is OPEN and not conn.waiting
                    break
        finally:
            batch.write()
        meter.charge_requests(handled)
        if handled and self.unproven:
            self.unproven.forget(conn_id)               # it has completed a request
        if conn.state is not CLOSED:
            self.count_input(conn)          # what it holds now counts against the budget
        return more

    # -- flood control -------------------------------------------------------------------------

    def throttle(self, conn: Connection, seconds: float) -> None:
        """Neither read from `conn` nor give it turns for `seconds` (its bucket refills)."""
        if not conn.throttled:
            conn.throttled = True
            self.throttles += 1
            self.loop.call_at(self.loop.now + seconds, self._end_throttle, conn)
            conn.update_interest()

    def _end_throttle(self, conn: Connection) -> None:
        if conn.state is CLOSED:
            return
        conn.throttled = False
        conn.update_interest()
        self.scheduler.requeue(conn)        # it may hold requests it was not given a turn for

    # -- the one catch-all ---------------------------------------------------------------------

    def guarded(self, conn: Optional[Connection], func: Callable[..., Any], *args: Any) -> Any:
        """Call func(*args) on behalf of `conn` (None: of connections already gone) and return
        what it returns (None if it raised).

        This is the server's one catch-all. An exception here is our own bug (in the app or in
        the server), never the peer's fault, which the app answers with an error reply: log it
        with its traceback and drop that one connection; the server goes on."""
        try:
            return func(*args)
        except Exception as exc:
            log_internal_error(self.log_budget, conn, func, exc)
            if conn is not None:
                self.teardown(conn, logging.ERROR, "dropped after an internal error")
            return None

    # -- actions -------------------------------------------------------------------------------

    def apply(self, actions: List[Action]) -> None:
        """Carry out the app's actions, in order."""
        for action in actions:
            kind = type(action)
            if kind is Broadcast:
                self.write_many(action.conn_ids, action.data, action.messages)
            elif kind is Send:
                self.write_many((action.conn_id,), action.data)
            elif kind is Close:
                self.close_connection(action.conn_id)
            elif kind is Shutdown:
                self.loop.stop("the app's Shutdown")
            elif kind is Callback:
                self._callback(action)
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
        if conn.state is OPEN:
            conn.update_interest()
            if not waiting:
                self.scheduler.requeue(conn)    # it may hold requests read before the Wait

    def _callback(self, action: Callback) -> None:
        conn = self.conns.get(action.conn_id)
        if conn is None or conn.state is not OPEN:
            return
        conn.callback(action.address)

    def write_many(self, conn_ids: Sequence[int], data: bytes, messages: int = 1) -> None:
        """Queue the same `data` (`messages` messages) for each connection; it is sent at the
        end of this tick.

        Small data is copied onto the end of each connection's own buffer (`tail`); data of
        SHARE_MIN bytes or more is queued by reference, the same object for every connection
        (_write_shared). This loop runs once per delivered message, so it is written for speed:
        no method call per connection, and locals for everything it touches.
        """
        size = len(data)
        if size >= SHARE_MIN:
            self._write_shared(conn_ids, data, messages)
            return
        conns = self.conns
        to_flush = self._to_flush
        skipped = 0
        for conn_id in conn_ids:
            conn = conns.get(conn_id)
            if conn is None or conn.state is not OPEN:
                skipped += 1                # it has gone, or is closing: nothing more for it
                continue
            if not conn.flush_pending:
                conn.flush_pending = True
                to_flush.append(conn)
            tail = conn.tail
            if tail is None:
                tail = conn.tail = bytearray()
                conn.queue(tail)
            tail += data
            queued = conn.out_bytes + size
            conn.out_bytes = queued
            if queued > HIGH_WATER:         # (the lowest high mark of any transport)
                conn.over_high_water()
        queued = len(conn_ids) - skipped
        self.deliveries += queued * messages
        self.memory.output += size * queued

    def _write_shared(self, conn_ids: Sequence[int], data: bytes, messages: int = 1) -> None:
        """write_many() for large data: every connection queues the same object."""
        holders = 0
        for conn_id in conn_ids:
            conn = self.conns.get(conn_id)
            if conn is None or conn.state is not OPEN:
                continue
            self.want_flush(conn)
            conn.queue(data)
            conn.tail = None
            conn.out_bytes += len(data)
            holders += 1
            if conn.out_bytes > HIGH_WATER:
                conn.over_high_water()
        if holders:
            self.deliveries += holders * messages
            self.shared.hold(data, holders)

    def close_connection(self, conn_id: int) -> None:
        """Close a connection once its queued output is sent (idempotent). One that waits for
        the app (a DISCONNECT's leaves on the bus) waits no more: its peer's FIN must be read."""
        conn = self.conns.get(conn_id)
        if conn is not None:
            conn.waiting = False
            conn.close()

    # -- the flush -----------------------------------------------------------------------------

    def want_flush(self, conn: Connection) -> None:
        """Flush `conn` at the end of this tick (write_many does the same, inline)."""
        if not conn.flush_pending:
            conn.flush_pending = True
            self._to_flush.append(conn)

    def flush(self, budget: float = STEP_BUDGET) -> None:
        """Tell the app of connections lost, flush what each connection got (_flush_connections),
        then the flushers (UDP datagrams and events), which may bring more; all in one `budget`."""
        deadline = time.monotonic() + budget
        self._flush_connections(deadline)
        for _ in range(FLUSH_ROUNDS):
            more = False
            for flusher in self._flushers:
                more |= flusher()
            if not more or time.monotonic() > deadline:
                break
            self._flush_connections(deadline)
        self.memory.flushed()

    def _flush_connections(self, deadline: float) -> None:
        """Tell the app of connections lost (in at most two calls), then flush each connection
        with new output, one send each; again while either brings more. The rest waits for
        the next tick's flush, which does not wait: past the `deadline` only queues of at most
        CHEAP_SEND bytes are sent (a storm of departures makes thousands of send()s fail)."""
        calls = 0
        while self._to_flush or self._flush_later or (self._lost and calls < 2):
            if self._lost and calls < 2:        # at most twice LOST_WORK_PER_CALL in one flush
                self._tell_app_lost()
                calls += 1
            # New output first: a reply must not wait behind sends to thousands of members that
            # do not read (each may copy a megabyte), whose output joins their queues instead.
            batch, self._to_flush = self._to_flush + self._flush_later, []
            later = self._flush_later = []
            cheap = CHEAP_SEND if self.memory.output > PILED_UP else 0
            for index, conn in enumerate(batch):
                if conn.out_bytes > cheap and index and time.monotonic() > deadline:
                    later.append(conn)              # still flush_pending: later
                    continue
                conn.flush_pending = False
                conn.flush()
            if later:
                return

    # -- departures ----------------------------------------------------------------------------

    def aborted(self, conn: Connection, level: int, reason: str) -> None:
        """`conn` was just aborted (Connection.abort): tear it down when the tick has time for
        it (drop_aborted), and tell the app in this tick's flush."""
        self._to_abort.append((conn, level, reason))
        self.report_lost(conn)

    def drop_aborted(self) -> None:
        """Tear down the dropped (ABORTING) connections, for at most STEP_BUDGET; the rest
        wait for the next tick (nothing is read from or sent to them meanwhile)."""
        started = time.monotonic()
        while self._to_abort and time.monotonic() - started <= STEP_BUDGET:
            conn, level, reason = self._to_abort.pop()
            self.teardown(conn, level, reason)

    def teardown(self, conn: Connection, level: int = logging.INFO, reason: str = "closed",
                 tell_app: bool = True) -> None:
        """Forget a connection, once: its transport lets go of it, its buffers leave the
        budget, why is logged (within the log budget), and the app is told if it has not been
        yet (it announces the leaves to the rooms). Later events for it are ignored."""
        if conn.state is CLOSED:
            return
        conn.state = CLOSED
        conn.stale = True
        del self.conns[conn.conn_id]
        self.memory.input -= conn.in_bytes
        conn.in_bytes = 0
        conn.release(reason)
        self.shared.drop_queue(conn)
        self.unproven.forget(conn.conn_id)
        self.log_budget.log(LOGGER, level, "conn %d (%s): %s", conn.conn_id,
                            conn.peer_ip or "local", reason)
        if tell_app:
            self.report_lost(conn)

    def report_lost(self, conn: Connection) -> None:
        """Note, once, that `conn` is gone. The app is told in this tick's flush, together
        with every other connection lost meanwhile (_tell_app_lost)."""
        if not conn.reported_lost:
            conn.reported_lost = True
            self._lost.append(conn)

    def _tell_app_lost(self) -> None:
        """Tell the app which connections are gone, up to LOST_PER_CALL of them and
        LOST_WORK_PER_CALL of work in one call (at least one), and carry out its answer. One call
        for many: the app takes them all out of their rooms before it announces any (one by one,
        8 000 members resetting at once cost 8 000 announcements to 8 000 members)."""
        lost = next_departures(self._lost, getattr(self.app, "departure_cost", None))
        actions = self.guarded(None, self.app.connections_lost, lost)
        if actions:
            self.apply(actions)

    def _evict_for_memory(self) -> None:
        """The connections' buffers hold more than the budget: drop the connections that hold
        the most, largest first, until they do not (policy/memory.py)."""
        memory = self.memory
        for conn in memory.eviction_candidates(self.conns.values()):
            if not memory.over_budget:
                break
            self.evictions += 1
            self.teardown(conn, logging.WARNING, "evicted for the memory budget: buffers hold "
                          "%d bytes, the budget is %d, and it held the most (%d of output, %d "
                          "of input)" % (memory.total, memory.budget, conn.out_bytes,
                                         conn.in_bytes + conn.transport_in))
        self.flush()                        # the evicted connections' rooms are told now

    def close(self) -> None:
        """The server stops: each connection sends what the kernel takes at once, and goes."""
        for conn in list(self.conns.values()):
            if conn.out_bytes:
                conn.send_last()
            self.teardown(conn, reason="closed: the server is stopping", tell_app=False)
