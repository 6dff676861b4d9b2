"""A single-threaded event loop over `selectors`: sockets in, bytes to an app, actions out.

Boundary: this module knows nothing of chat commands. It accepts connections, reads bytes and
hands them to an *app* (protocol.ChatProtocol), asks the app for the actions of each complete
request, and carries the actions out: queue bytes for a connection, close it, stop. The app
names connections by integer ids and never sees a socket.

One tick of the loop (`run_once`), in the order Redis's ae.c uses, reads before writes:

    1. select()                 which sockets are ready (no wait if input is left over)
    2. on_acceptable            accept every pending connection
       on_readable              recv() once per ready connection, give the bytes to the app
    3. process input            some of each connection's requests (see TICK_TARGET); their
                                actions append bytes to output buffers
    4. flush                    one send() per connection with new output: everything queued
                                for it this tick leaves in one system call (when backlogs are
                                being worked through, replies to the connections without one
                                are sent first, between the two parts of step 3)

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
nobody else down.

The app must provide:
    connection_made(conn_id, local_ip) -> None
    data_received(conn_id, data) -> None
    maybe_next_actions(conn_id) -> list of actions, or None when no request is complete
    connection_lost(conn_id) -> list of actions
"""
import collections
import errno
import logging
import selectors
import signal
import socket
import sys
import time
from typing import Deque, Dict, Iterable, List, Optional, Tuple

from protocol import Action, Broadcast, Close, Send, Shutdown

LOGGER = logging.getLogger(__name__)

# --- limits (README, "Limits") ------------------------------------------------------------------
# Bytes asked of recv() at once. 64 KiB is what the kernel usually has ready on loopback, and a
# connection's unhandled input stays below this plus one partial request (see _on_readable).
READ_SIZE = 64 * 1024
# Fairness. Requests are handled in ticks, and what a tick's requests produce is sent at its end,
# so a reply waits about as long as a tick takes: one flooding client must never own a tick.
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
MIN_REQUESTS_PER_TICK = 1
MAX_REQUESTS_PER_TICK = 64
# Stop reading from a peer whose own unsent output passes HIGH_WATER and start again below
# LOW_WATER (asyncio's defaults: 64 KiB and a quarter of it).
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
# Disconnect a peer whose unsent output passes this (Redis: client-output-buffer-limit). 1 MiB
# is ~15 000 chat messages: a reader that far behind is stalled, not slow.
OUTPUT_CAP = 1024 * 1024
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

# A connection's life: _OPEN; _CLOSING (a Close: sending what is queued); _LINGERING (all sent
# and our FIN gone: waiting for the peer's, up to LINGER_TIMEOUT); _CLOSED.
_OPEN, _CLOSING, _LINGERING, _CLOSED = 0, 1, 2, 3
_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Connection:
    """One client connection as the reactor sees it: a socket and two buffers' worth of state.

    The input buffer lives in the app (its framer); `out` is the output queue.
    """
    __slots__ = ("sock", "conn_id", "out", "state", "events", "paused", "scheduled",
                 "flush_pending", "reported_lost")

    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.conn_id = conn_id
        self.out = bytearray()          # unsent output, oldest first
        self.state = _OPEN              # _OPEN, _CLOSING, _LINGERING, _CLOSED (see above)
        self.events = selectors.EVENT_READ
        self.paused = False             # reads stopped: our output to it is above HIGH_WATER
        # On _fresh or _backlog: the app may hold complete requests from it, which are handled
        # before anything more is read from it (so its unhandled input stays bounded).
        self.scheduled = False
        self.flush_pending = False      # it is on the reactor's list to flush this tick
        self.reported_lost = False      # the app has been told it is gone (connection_lost)


class Reactor:
    """Listens on one address and runs `app` for every connection, on one thread.

    `app` may be given after construction (as Server.py does), once `address` tells the real
    port that binding to port 0 picked.
    """

    def __init__(self, host: str, port: int, app=None, backlog: int = BACKLOG) -> None:
        self.app = app
        self.selector = selectors.DefaultSelector()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(backlog)
        self.listener.setblocking(False)
        self.address: Tuple[str, int] = self.listener.getsockname()[:2]
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        # A socket pair to wake select() from a signal handler (asyncio's self-pipe).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self.conns: Dict[int, Connection] = {}
        self._next_conn_id = 1
        self._fresh: List[Connection] = []        # read this tick, nothing left from before
        self._backlog: List[Connection] = []      # requests may be left over from last tick
        self._to_flush: List[Connection] = []     # got output this tick
        self._to_abort: List[Connection] = []     # passed OUTPUT_CAP while output was queued
        self._lingering: Deque[Tuple[float, Connection]] = collections.deque()  # by deadline
        self._accept_paused_until = 0.0
        self._running = False
        self._stopping = False              # stop() was called: handle no more requests
        # The share of a connection with a backlog (see TICK_TARGET); it adapts from here.
        self.requests_per_tick = 4

    # -- the loop ------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Run ticks until stop() is called (by a Shutdown action or a signal), then close."""
        self._running = True
        try:
            while self._running:
                self.run_once(MAX_WAIT)
        finally:
            self.close()

    def run_once(self, timeout: Optional[float] = None) -> None:
        """One tick: wait up to `timeout` for sockets, read, handle requests, write."""
        if self._backlog:
            timeout = 0
        elif self._lingering:
            until_first = max(0.0, self._lingering[0][0] - time.monotonic())
            timeout = until_first if timeout is None else min(timeout, until_first)
        if self._accept_paused_until:
            until_accepting = self._accept_paused_until - time.monotonic()
            if until_accepting <= 0:
                self._accept_paused_until = 0.0
                self.selector.register(self.listener, selectors.EVENT_READ, None)
            elif timeout is None or timeout > until_accepting:
                timeout = until_accepting
        for key, mask in self.selector.select(timeout):
            conn = key.data
            if conn is None:
                self._on_acceptable()
            elif conn is self._wake_r:
                self._drain_wakeup()
            elif conn.state != _CLOSED:    # an earlier event this tick may have closed it
                if mask & selectors.EVENT_READ:
                    self._on_readable(conn)
                if mask & selectors.EVENT_WRITE and not conn.flush_pending:
                    conn.flush_pending = True
                    self._to_flush.append(conn)
        self._process_input()
        self._flush()
        self._end_lingering(time.monotonic())

    def stop(self) -> None:
        """Ask run_forever() to return after this tick; no further request is handled.
        Safe to call from a signal handler."""
        self._running = False
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
            if conn.out:
                try:
                    conn.sock.send(conn.out)
                except OSError:
                    pass
            self._teardown(conn, tell_app=False)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self.selector.close()

    # -- events --------------------------------------------------------------------------------

    def _on_acceptable(self) -> None:
        """Accept the connections the kernel has queued, until accept() would block or, in a
        flood, BACKLOG of them (the rest wait for the next tick, as asyncio does)."""
        for _ in range(BACKLOG):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue                    # it went away while queued: next
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRORS:     # out of descriptors or memory
                    LOGGER.warning("accept failed (%s); retrying in %.1fs", exc,
                                   ACCEPT_RETRY_DELAY)
                    self.selector.unregister(self.listener)
                    self._accept_paused_until = time.monotonic() + ACCEPT_RETRY_DELAY
                else:                       # a network error of one pending connection
                    LOGGER.warning("accept failed: %s", exc)
                return
            try:
                # We already gather a tick's output into one send(): Nagle would only add delay.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # One string per address, not one per connection (58 bytes each, 10 000 times).
                local_ip = sys.intern(sock.getsockname()[0])
            except OSError as exc:          # reset before we got to it
                LOGGER.debug("dropping a connection that failed at once: %s", exc)
                sock.close()
                continue
            self.add_connection(sock, local_ip)

    def add_connection(self, sock: socket.socket, local_ip: str) -> int:
        """Serve a connected socket (accepted here, or a socketpair end in a test)."""
        sock.setblocking(False)
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        conn = Connection(sock, conn_id)
        self.conns[conn_id] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)
        self.app.connection_made(conn_id, local_ip)
        LOGGER.debug("conn %d: open", conn_id)
        return conn_id

    def _on_readable(self, conn: Connection) -> None:
        """Read once from `conn` and hand the bytes to the app (requests are handled later in
        the tick). A connection whose earlier input is not all handled is not read from: its
        data waits in the kernel, whose window then slows the sender down."""
        if conn.scheduled:
            return
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:             # ECONNRESET and friends: the peer is gone
            LOGGER.debug("conn %d: recv failed: %s", conn.conn_id, exc)
            self._teardown(conn)
            return
        if not data:
            self._on_peer_closed(conn)
            return
        if conn.state != _OPEN:
            return                          # closing: what it sends now is dropped
        self._guarded(conn, self.app.data_received, conn.conn_id, data)
        if conn.state == _OPEN and not conn.scheduled:
            conn.scheduled = True
            self._fresh.append(conn)

    def _process_input(self) -> None:
        """Handle requests: up to MAX_REQUESTS_PER_TICK for each connection read this tick
        with no backlog, and send what they produced; then `requests_per_tick` for each
        connection with a backlog; then adapt that share to the time it all took."""
        fresh, backlog = self._fresh, self._backlog
        if not fresh and not backlog:
            return
        self._fresh, self._backlog = [], []
        started = time.monotonic()
        share = self.requests_per_tick
        for conn in fresh:      # the full limit while the tick is young, then the share
            young = time.monotonic() - started < TICK_TARGET
            self._take_turn(conn, MAX_REQUESTS_PER_TICK if young else share)
        if fresh and backlog:
            self._flush()       # their replies need not wait for the backlogs to be worked on
        share_used_up = False
        for conn in backlog:
            share_used_up |= self._take_turn(conn, share)
        elapsed = time.monotonic() - started
        if elapsed > TICK_TARGET:
            self.requests_per_tick = max(MIN_REQUESTS_PER_TICK, share // 2)
        elif share_used_up and elapsed < TICK_TARGET / 2:
            self.requests_per_tick = min(MAX_REQUESTS_PER_TICK, share + max(1, share // 4))

    def _take_turn(self, conn: Connection, limit: int) -> bool:
        """Handle up to `limit` of a scheduled connection's requests. If it may have more it
        goes on the backlog and True is returned."""
        if self._stopping:
            return False                    # KILL_SERVICE: what came after it is not served
        if conn.state != _OPEN or conn.paused:
            conn.scheduled = False          # a paused one is put back by _send on resuming
            return False
        more = self._guarded(conn, self._handle_requests, conn, limit)
        if more:
            self._backlog.append(conn)      # the next select() will not wait
        else:
            conn.scheduled = False
        self._abort_over_cap()
        return more

    def _handle_requests(self, conn: Connection, limit: int) -> bool:
        """Handle up to `limit` of `conn`'s requests; True if it may have more."""
        next_actions = self.app.maybe_next_actions
        for _ in range(limit):
            actions = next_actions(conn.conn_id)
            if actions is None:
                return False
            self.apply(actions)
            if conn.state != _OPEN or conn.paused or self._stopping:
                return conn.state == _OPEN
        return True

    def _guarded(self, conn: Connection, func, *args):
        """Call func(*args) for `conn`. An exception there is our bug, not the peer's: log it
        and drop that one connection; the server goes on (the one catch-all in the server)."""
        try:
            return func(*args)
        except Exception:
            LOGGER.exception("conn %d: internal error; dropping the connection", conn.conn_id)
            self._teardown(conn)
            return False

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
            else:
                raise TypeError("unknown action %r" % (action,))

    def write_many(self, conn_ids: Iterable[int], data: bytes) -> None:
        """Queue the same `data` for each connection; it is sent at the end of this tick.

        This loop runs once per delivered message, so it is written for speed: no method call
        per connection, and locals for everything it touches.
        """
        conns = self.conns
        to_flush = self._to_flush
        for conn_id in conn_ids:
            conn = conns.get(conn_id)
            if conn is None or conn.state != _OPEN:
                continue                    # it has gone, or is closing: nothing more for it
            if not conn.flush_pending:
                conn.flush_pending = True
                to_flush.append(conn)
            out = conn.out
            out += data
            if len(out) > HIGH_WATER:
                self._over_high_water(conn)

    def _over_high_water(self, conn: Connection) -> None:
        if len(conn.out) > OUTPUT_CAP:
            # Not torn down here: we may be in the middle of a broadcast. See _abort_over_cap.
            conn.state = _CLOSING
            self._to_abort.append(conn)
        else:
            conn.paused = True              # stop reading from it until it drains (_send)

    def close_connection(self, conn_id: int) -> None:
        """Close a connection once its queued output is sent (idempotent)."""
        conn = self.conns.get(conn_id)
        if conn is None or conn.state != _OPEN:
            return
        conn.state = _CLOSING
        if not conn.flush_pending:
            conn.flush_pending = True
            self._to_flush.append(conn)

    # -- output --------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send what each connection got this tick, one send() each."""
        while self._to_flush:
            batch, self._to_flush = self._to_flush, []
            for conn in batch:
                conn.flush_pending = False
                if conn.state != _CLOSED:
                    self._send(conn)
            self._abort_over_cap()

    def _send(self, conn: Connection) -> None:
        out = conn.out
        if out:
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:          # EPIPE, ECONNRESET: the peer is gone
                LOGGER.debug("conn %d: send failed: %s", conn.conn_id, exc)
                self._teardown(conn)
                return
            del out[:sent]
        if not out and conn.state == _CLOSING:
            self._finish_close(conn)
            return
        if conn.paused and len(out) <= LOW_WATER and conn.state == _OPEN:
            conn.paused = False
            if not conn.scheduled:          # the app may hold requests read before the pause
                conn.scheduled = True
                self._backlog.append(conn)
        self._update_interest(conn)

    def _update_interest(self, conn: Connection) -> None:
        """Watch for writability only while output is queued; for input unless paused."""
        events = 0 if conn.paused else selectors.EVENT_READ
        if conn.out:
            events |= selectors.EVENT_WRITE
        if events != conn.events:           # never 0: a paused connection has output queued
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    def _abort_over_cap(self) -> None:
        """Disconnect the peers whose output passed OUTPUT_CAP (their rooms are told)."""
        while self._to_abort:
            conn = self._to_abort.pop()
            LOGGER.warning("conn %d: output passed %d bytes; disconnecting", conn.conn_id,
                           OUTPUT_CAP)
            self._teardown(conn)

    # -- closing -------------------------------------------------------------------------------

    def _on_peer_closed(self, conn: Connection) -> None:
        """The peer has closed its side: it sends nothing more. What we owe it is still sent
        (as asyncio's close() does: a client may send DISCONNECT and shut down its side before
        reading), then the connection ends; meanwhile its rooms are told it left."""
        LOGGER.debug("conn %d: closed by peer", conn.conn_id)
        if not conn.out or conn.state not in (_OPEN, _CLOSING):
            self._teardown(conn)
            return
        conn.state = _CLOSING
        conn.paused = True                  # nothing more to read: watch for writability only
        self._update_interest(conn)
        self._report_lost(conn)

    def _finish_close(self, conn: Connection) -> None:
        """All output is sent: send our FIN, tell the app the connection is gone, and linger
        until the peer closes too (or LINGER_TIMEOUT passes); see LINGER_TIMEOUT for why."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._teardown(conn)
            return
        conn.state = _LINGERING
        conn.paused = False                 # it is read from (and its input dropped) to the end
        self._update_interest(conn)
        self._lingering.append((time.monotonic() + LINGER_TIMEOUT, conn))
        self._report_lost(conn)

    def _end_lingering(self, now: float) -> None:
        """Let go of the lingering connections whose time is up."""
        while self._lingering and self._lingering[0][0] <= now:
            _deadline, conn = self._lingering.popleft()
            self._teardown(conn)

    def _teardown(self, conn: Connection, tell_app: bool = True) -> None:
        """Forget a connection, once: unregister, close, and tell the app if it has not been
        told yet (it announces the leaves to the rooms). Later events for it are ignored."""
        if conn.state == _CLOSED:
            return
        conn.state = _CLOSED
        del self.conns[conn.conn_id]
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.out = bytearray()
        LOGGER.debug("conn %d: closed", conn.conn_id)
        if tell_app:
            self._report_lost(conn)

    def _report_lost(self, conn: Connection) -> None:
        """Tell the app, once, that `conn` is gone, and carry out what it answers."""
        if conn.reported_lost:
            return
        conn.reported_lost = True
        try:
            actions = self.app.connection_lost(conn.conn_id)
        except Exception:                   # our bug: the other connections go on
            LOGGER.exception("conn %d: internal error while it left", conn.conn_id)
            return
        self.apply(actions)

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
