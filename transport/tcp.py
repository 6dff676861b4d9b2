"""TCP: the connection (a socket, read and written) and the listener (accept, with the
descriptor reserve).

The write path is asyncio's (selector_events.py): the hub queues output during the tick and
calls flush() at its end; flush() sends at once what is queued (sendmsg() for several
buffers: the whole queue in one system call), keeps only the remainder the kernel would not
take, and watches the socket for writability only while something is queued.

Closing is asyncio's close() with a lingering close after it: a Close sends what is queued, then
our FIN; the connection then reads and drops the peer's input until the peer closes too
(LINGER_TIMEOUT), so that unread input never turns our close into a RST. A connection's life is
a State (transport/conn.py): OPEN, then either CLOSING and LINGERING, or ABORTING; CLOSED at the
end of every path.
"""
import _socket
import errno
import logging
import os
import socket
import sys
from typing import Any, List, Optional, Tuple

from policy import reserve
from reactor import EVENT_READ, EVENT_WRITE
from transport.conn import CLOSING, LINGERING, NO_OUTPUT, OPEN, Connection

LOGGER = logging.getLogger(__name__)

# Bytes asked of recv() at once. 64 KiB is what the kernel usually has ready on loopback, and a
# connection's unhandled input stays below this plus one partial request (see on_readable).
READ_SIZE = 64 * 1024
# A connection's output buffer, all of it sent, is kept for the next tick's output if it held
# more than this many bytes (a busy connection's, most ticks), else dropped (about 110 bytes of
# every idle connection: the buffer, its bytes, the queue's slot).
KEEP_TAIL_ABOVE = 256
# The most buffers one sendmsg() is given (Linux's IOV_MAX is 1024).
MAX_IOV = 1024
# Pending connections the kernel may hold for us between two ticks; also the most accepted in
# one tick.
BACKLOG = 1024
# After accept() fails for lack of file descriptors, stop accepting for this long rather than
# spin on a listening socket that stays readable.
ACCEPT_RETRY_DELAY = 0.1
# After we have sent everything and our FIN, how long we keep reading (and dropping) what the
# peer still sends, waiting for its own FIN. Closing a socket with unread input makes the kernel
# answer RST instead of FIN, and a peer that is told "reset" may lose what it has not read yet.
LINGER_TIMEOUT = 2.0

_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# What _accept_with_the_reserve returns when no connection was waiting after all: accept() says
# EMFILE when the descriptor table is full whether or not one waits, and that is no reason to
# stop accepting for ACCEPT_RETRY_DELAY.
NOTHING_PENDING = "nothing pending"

if hasattr(socket.socket, "sendmsg"):
    def _sendmsg(sock: socket.socket, buffers: List[Any]) -> int:
        return sock.sendmsg(buffers)
else:                                   # no scatter-gather here (Windows): join, then send
    def _sendmsg(sock: socket.socket, buffers: List[Any]) -> int:
        return sock.send(b"".join(buffers))


def open_file_limit() -> int:
    """The process's soft limit on open descriptors (the reserve's notion of crowded)."""
    try:
        import resource
    except ImportError:                     # not on this OS: assume the common default
        return 1024
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _accept(listening: socket.socket) -> Tuple[Any, Any]:
    """listening.accept(), but the new socket is of the C type alone (_socket.socket), with
    every method a TcpConnection calls: 48 bytes, where socket.socket's Python layer (its io
    references, a weakref slot, the garbage collector's header) makes 96 (480 KB of 10 000
    connections). Raises what accept() raises."""
    fd, addr = listening._accept()
    return _socket.socket(listening.family, listening.type, listening.proto, fileno=fd), addr


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class TcpConnection(Connection):
    """A client connection over TCP: the socket, and what the selector watches it for."""
    __slots__ = ("sock", "events", "peer_closed", "write_blocked")

    def __init__(self, hub: Any, sock: socket.socket, conn_id: int, peer_ip: str) -> None:
        super().__init__(hub, conn_id, peer_ip)
        self.sock = sock
        self.events = EVENT_READ            # what the selector watches it for
        self.peer_closed = False            # it sent its FIN: nothing more to read, ever
        self.write_blocked = False          # a remainder waits for writability (see flush)

    def on_readable(self) -> None:
        """Read once and hand the bytes to the hub (requests are handled later in the tick). A
        connection whose earlier input is not all handled is not read from: its data waits in
        the kernel, whose window then slows the sender down."""
        if self.scheduled or self.throttled or self.waiting:
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:             # ECONNRESET and friends: the peer is gone
            self.abort(logging.INFO, "recv failed: %s" % exc)
            return
        if not data:
            self._on_peer_closed()
            return
        if self.state is not OPEN:
            return                          # closing: what it sends now is dropped
        hub = self.hub
        if self.conn_id in hub.unproven:
            hub.unproven.touched(self, hub.loop.now)        # idle no longer
        hub.received(self, data)

    def on_writable(self) -> None:
        if self.write_blocked:              # it waited for this (see flush)
            self.write_blocked = self.flush_pending = False
        self.hub.want_flush(self)           # (nothing if it is on the hub's list already)

    def flush(self) -> None:
        """One send() of what is queued, then what follows from what is left: the close goes
        on, reading resumes, or the selector watches for writability."""
        if self.state is not OPEN and self.state is not CLOSING:
            return
        out = self.out
        if self.out_bytes:
            try:
                if len(out) == 1:
                    sent = self.sock.send(out[0])
                else:                       # scatter-gather: the whole queue, one system call
                    sent = _sendmsg(self.sock, out[:MAX_IOV])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:          # EPIPE, ECONNRESET: the peer is gone
                self.abort(logging.INFO, "send failed: %s" % exc)
                return
            if sent:
                self._consume(sent)
            # A remainder waits for writability (on_writable), as asyncio's write() does:
            # output queued meanwhile only joins it, and the hub does not try this socket
            # again every tick (2 000 members that do not read made every flush try each of
            # them, and an unrelated client's reply waited behind them all).
            self.write_blocked = self.flush_pending = self.out_bytes > 0
        if not self.out_bytes and self.state is CLOSING:
            self._finish_close()
            return
        if self.reads_paused:
            self.maybe_resume()
        self.update_interest()

    def _consume(self, sent: int) -> None:
        """Drop the first `sent` bytes of the queue: they are in the kernel now."""
        out = self.out
        memory = self.hub.memory
        if sent == self.out_bytes and self.tail is not None and len(out) == 1:
            # The usual case: its one buffer, all of it sent. The buffer stays, empty, as the
            # tail the next tick's output is copied onto (a new one each tick cost 4% here),
            # unless it held little: a connection sent a message or two a tick makes few new
            # ones, and one that has gone quiet (10 000 idle members) keeps none.
            if sent > KEEP_TAIL_ABOVE:
                self.tail.clear()
            else:
                self.out = NO_OUTPUT
                self.tail = None
            self.out_bytes = 0
            memory.output -= sent
            return
        self.out_bytes -= sent
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
                if head is self.tail:
                    self.tail = None
            else:
                self.hub.shared.release(head)
        if done < len(out):
            del out[:done]
        else:                               # all of it sent: no queue kept
            self.out = NO_OUTPUT

    def update_interest(self) -> None:
        """Watch for writability only while output is queued; for input unless reads are
        paused, throttled, waiting, or the peer has closed its side."""
        reading = not (self.reads_paused or self.peer_closed or self.throttled or self.waiting)
        events = EVENT_READ if reading else 0
        if self.out_bytes:
            events |= EVENT_WRITE
        if events != self.events:           # (the selector takes no empty set of events)
            loop = self.hub.loop
            if not events:
                loop.unregister(self.sock)
            elif not self.events:
                loop.register(self.sock, events, self)
            else:
                loop.modify(self.sock, events, self)
            self.events = events

    def stop_events(self) -> None:
        if self.events:                     # no more events: it is not read again
            self.hub.loop.unregister(self.sock)
            self.events = 0

    def _on_peer_closed(self) -> None:
        """The peer has closed its side: it sends nothing more. What we owe it is still sent
        (as asyncio's close() does: a client may send DISCONNECT and shut down its side before
        reading), then the connection ends; meanwhile its rooms are told it left."""
        self.peer_closed = True
        if not self.out_bytes or not (self.state is OPEN or self.state is CLOSING):
            self.hub.teardown(self, reason="closed by the peer")
            return
        self.state = CLOSING
        self.update_interest()              # writability only
        self.hub.report_lost(self)

    def _finish_close(self) -> None:
        """All output is sent: send our FIN, tell the app the connection is gone, and linger
        until the peer closes too (or LINGER_TIMEOUT passes); see LINGER_TIMEOUT for why."""
        hub = self.hub
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            hub.teardown(self, reason="shutdown failed: %s" % exc)
            return
        if self.peer_closed:                # its FIN came first: nothing is left to wait for
            hub.teardown(self, reason="closed; the peer had closed first")
            return
        self.state = LINGERING
        self.reads_paused = False           # it is read from (and its input dropped) to the end
        self.update_interest()
        hub.loop.call_later(LINGER_TIMEOUT, self._linger_over)
        hub.report_lost(self)

    def _linger_over(self) -> None:
        self.hub.teardown(self, reason="closed (the peer had not closed in %g s)"
                          % LINGER_TIMEOUT)

    def release(self, reason: str) -> None:
        # Unwatched only if it still is: an aborted one is not, and the selector's KeyError for
        # an unknown socket formats the socket (~15 us, for each of thousands reset at once).
        self.stop_events()
        self.sock.close()
        self.hub.holders.remove(self)

    def send_last(self) -> None:
        try:
            self.sock.send(b"".join(self.out))
        except OSError:
            pass


def _open_reserve() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None                         # no descriptor to spare even now: do without


class TcpListener:
    """The listening socket: accepts connections and gives them to the hub, keeping one
    descriptor in reserve (policy/reserve.py says who makes way for a new connection)."""
    stale = False

    def __init__(self, hub: Any, sock: socket.socket, backlog: int = BACKLOG) -> None:
        self.hub = hub
        self.sock = sock
        sock.listen(backlog)
        sock.setblocking(False)
        self.address: Tuple[str, int] = sock.getsockname()[:2]
        self._reserve_fd = _open_reserve()
        hub.loop.register(sock, EVENT_READ, self)
        hub.loop.at_end_of_tick(self._close_idle_unproven)

    def on_readable(self) -> None:
        """Accept the connections the kernel has queued, until accept() would block or, in a
        flood, BACKLOG of them (the rest wait for the next tick, as asyncio does)."""
        for _ in range(BACKLOG):
            try:
                sock, addr = _accept(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue                    # it went away while queued: next
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    accepted = self._accept_with_the_reserve()
                    if accepted is NOTHING_PENDING:
                        return              # (Linux says EMFILE before it looks at the queue)
                    if accepted is not None:
                        self._serve_accepted(*accepted)
                        continue
                if exc.errno in _ACCEPT_ERRORS:     # out of descriptors or memory
                    LOGGER.warning("accept failed (%s); retrying in %.1fs", exc,
                                   ACCEPT_RETRY_DELAY)
                    self.hub.loop.unregister(self.sock)
                    self.hub.loop.call_later(ACCEPT_RETRY_DELAY, self._accept_again)
                else:                       # a network error of one pending connection
                    LOGGER.warning("accept failed: %s", exc)
                return
            self._serve_accepted(sock, addr)

    def on_writable(self) -> None:
        pass

    def _accept_again(self) -> None:
        if self.sock.fileno() != -1:
            self.hub.loop.register(self.sock, EVENT_READ, self)

    def _accept_with_the_reserve(self) -> Any:
        """Every descriptor is taken: free the reserve, accept one connection with it, and
        make room for it by closing the connection that makes way (_make_way; if there is
        none, close the new one at once: it learns it cannot be served instead of hanging).
        Then take the reserve again. Returns (socket, address); NOTHING_PENDING if no
        connection was waiting; None if this cannot help."""
        if self._reserve_fd is None:
            return None
        os.close(self._reserve_fd)
        self._reserve_fd = None
        try:
            sock, addr = _accept(self.sock)
        except (BlockingIOError, InterruptedError):
            self._reserve_fd = _open_reserve()
            return NOTHING_PENDING
        except OSError:
            self._reserve_fd = _open_reserve()
            return None
        made_way = self._make_way()
        self._reserve_fd = _open_reserve()
        if made_way:
            return sock, addr
        sock.close()
        self.hub.log_budget.log(LOGGER, logging.WARNING, "refused a connection from %s: every "
                                "descriptor is taken, and by no client connection", addr[0])
        return None

    def _make_way(self) -> bool:
        """Close the connection that makes way for a new one (policy/reserve.py): the longest
        idle that never completed a request, else the one heard from longest ago of the address
        holding the most. False if there is none."""
        hub = self.hub
        conn = hub.unproven.maybe_make_way()
        if conn is not None:
            why = "it was the longest idle of those that never completed a request"
        else:
            conn = hub.holders.maybe_make_way(lambda held: held.last_heard())
            if conn is None:
                return False
            why = ("its address held the most connections (%d), and it was heard from longest "
                   "ago of them" % hub.holders.held_by(conn.peer_ip))
        hub.teardown(conn, logging.WARNING, "evicted: every descriptor is taken, and " + why)
        return True

    def _serve_accepted(self, sock: socket.socket, addr: Any) -> None:
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
        self.hub.log_budget.log(LOGGER, logging.INFO, "conn %d: open from %s:%d", conn_id,
                                addr[0], addr[1])

    def add_connection(self, sock: socket.socket, local_ip: str, peer_ip: str = "") -> int:
        """Serve a connected socket (accepted here, or a socketpair end in a test)."""
        sock.setblocking(False)
        hub = self.hub
        conn = TcpConnection(hub, sock, hub.new_conn_id(), peer_ip)
        hub.loop.register(sock, EVENT_READ, conn)
        hub.holders.add(conn)
        hub.add(conn, local_ip)
        return conn.conn_id

    def _close_idle_unproven(self) -> None:
        """Descriptors are scarce: close the connections that never completed a request and
        have been idle for UNPROVEN_TIMEOUT (longest idle first)."""
        hub = self.hub
        if not hub.unproven:
            return
        for conn in hub.unproven.idle_too_long(hub.loop.now, len(hub.conns)):
            hub.teardown(conn, logging.WARNING, "closed: idle for %g s without completing a "
                         "request while descriptors are scarce" % reserve.UNPROVEN_TIMEOUT)

    def close(self) -> None:
        self.hub.loop.unregister(self.sock)
        self.sock.close()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
