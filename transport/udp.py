"""UDP (docs/UDP.md): the endpoint driver. The sans-IO ServerEndpoint (sansio/udp_server.py), a state
machine with no socket and no clock, does the reliability; this module owns its socket and its
one loop timer, re-armed from the endpoint's next_deadline() after every tick (aioquic's
adapter shape), and makes each of its sessions a connection to the hub (UdpSession) like a TCP
one: same turns, same flood control, same memory budget and OUTPUT_CAP. A Close is a graceful
close of the session; a session that ends (timeout, RESET) is a connection lost.
"""
import collections
import errno
import ipaddress
import logging
import socket
import sys
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from policy.watermarks import HIGH_WATER, OUTPUT_CAP, WaterMarks
from reactor import EVENT_READ, EVENT_WRITE, Timer
from sansio import udp_server, udp_stream, udp_wire
from transport.conn import CLOSING, LINGERING, NO_OUTPUT, OPEN, Connection
from transport.tcp import READ_SIZE, listening_socket

LOGGER = logging.getLogger(__name__)

# Datagrams read per tick at most, so that a flood of them cannot make a tick long (TCP reads
# are bounded the same way: one recv() per connection per tick). Reading one costs ~3 us when it
# is dropped or queued (a HELLO: answered at the flush, sansio/udp_server.py), so 1 024 are ~3 ms:
# enough to drain what the kernel holds between two ticks under a flood of 100 000/s and more,
# for what the kernel drops when its buffer is full falls on every sender alike, established
# sessions too. (256 a tick, with every HELLO answered as it was read: 20 000 reads/s under a
# HELLO flood, and a session's round trip p99 of seconds.)
UDP_READS_PER_TICK = 1024
# Sessions whose datagrams are sent in one flush (the endpoint's datagrams_to_send), so that
# a broadcast to thousands of UDP members is spread over ticks, as the hub spreads the
# flushing of TCP connections (STEP_BUDGET): a session's flush costs ~10 us, so 256 are ~3 ms.
# The rest go first next tick, which comes at once (the timer is armed for now).
UDP_FLUSHES_PER_TICK = 128
# Session timers run per tick (the endpoint's timer()), for the same reason: 2 000 stalled
# sessions sent the same broadcast time out together; ~5 us each. The rest stay due, so the
# loop's timer fires again at once.
UDP_TIMERS_PER_TICK = 256
# Datagrams kept for the next tick when the kernel's send buffer is full (EAGAIN). Past it the
# newest are dropped, as a congested network would: the reliability layer takes them as lost
# and sends them again, so a full send buffer costs a retransmission, never unbounded memory.
UDP_SEND_BACKLOG = 4096
# The kernel buffers asked for the UDP socket (it may give less): one socket carries every
# session, so it should absorb a burst from many of them between two ticks.
UDP_SOCKET_BUFFER = 4 * 1024 * 1024
# A UDP session's output counts against its water marks, OUTPUT_CAP and the memory budget like a
# TCP connection's queue, including what the endpoint holds unacknowledged. Up to a whole receive
# window of it (64 x 1 168 bytes) is in flight for a session that keeps up, so its reads pause
# above HIGH_WATER plus that window, and resume below a quarter of it.
UDP_HIGH_WATER = HIGH_WATER + udp_stream.RECV_WINDOW * udp_stream.MAX_PAYLOAD
UDP_LOW_WATER = UDP_HIGH_WATER // 4
UDP_MARKS = WaterMarks(UDP_HIGH_WATER, UDP_LOW_WATER, OUTPUT_CAP)
# A UDP session's input held by the app, not yet handled, above which its stream is not taken
# for now (the peer sends it again later): a TCP connection's unhandled input is bounded by
# not reading it, a datagram session's by this. Twice READ_SIZE: more than any incomplete
# request can hold (the Framer refuses one longer than 64 KiB), so it never waits for itself.
UDP_INPUT_HIGH_WATER = 2 * READ_SIZE
# How long a UDP session we close (DISCONNECT) may take to deliver what it was sent and hear
# CLOSE_ACK before it is reset. The endpoint bounds a close too (MAX_CLOSE_SENDS, the idle
# timeout), but a peer that answers PINGs and never acknowledges data must not hold it for ever.
UDP_CLOSE_TIMEOUT = 30.0
# Tries at binding TCP and UDP to the same port when PORT is 0: the kernel picks a free TCP port,
# whose UDP twin may be taken.
BIND_TRIES = 16


def bind_udp(family: int, host: str, port: int) -> socket.socket:
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


def bind_tcp_and_udp(host: str, port: int) -> Tuple[socket.socket, socket.socket]:
    """A TCP socket and a UDP socket bound to the same IP and port (with port 0, one the kernel
    picked for TCP whose UDP twin is free)."""
    for attempt in range(BIND_TRIES):
        tcp = listening_socket(host, port)
        try:
            return tcp, bind_udp(tcp.family, host, tcp.getsockname()[1])
        except OSError as exc:
            tcp.close()
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == BIND_TRIES - 1:
                raise
    raise AssertionError("unreachable")


class UdpSession(Connection):
    """A UDP session as the hub sees it: what is queued for it goes into its stream at the end
    of the tick, by reference (a broadcast's shared bytes stay one object in every stream);
    `out_bytes` also counts what the endpoint holds for it unacknowledged (`endpoint_out`), so
    that its water marks, OUTPUT_CAP and its share of the memory budget treat it as a TCP
    connection's queue; `transport_in` is its out-of-order input the endpoint holds, counted in
    its share too (policy/memory.py, bytes_held).

    The budget's total counts each shared object once, as the hub does for TCP: the session
    keeps its hold on one (hub.shared) until the peer has acknowledged all of it, and counts
    only its copied output itself (`endpoint_copied`)."""
    __slots__ = ("udp", "session_id", "endpoint_out", "transport_in", "endpoint_copied",
                 "queued", "shared_held", "shared_bytes", "close_timer")
    marks = UDP_MARKS

    def __init__(self, udp: "UdpTransport", conn_id: int, session_id: int, peer_ip: str) -> None:
        super().__init__(udp.hub, conn_id, peer_ip)
        self.udp = udp
        self.session_id = session_id
        self.endpoint_out = 0
        self.transport_in = 0
        self.endpoint_copied = 0            # what of endpoint_out the budget counts for it alone
        self.queued = 0                     # stream bytes given to the endpoint, ever
        # The shared objects in its stream not yet acknowledged, each with where it ends in
        # the stream; shared_bytes is their size.
        self.shared_held: Deque[Tuple[int, bytes]] = collections.deque()
        self.shared_bytes = 0
        self.close_timer: Optional[Timer] = None

    def pause_reading(self) -> None:
        self.reads_paused = True            # until below UDP_LOW_WATER (count_buffers)
        self.update_interest()

    def update_interest(self) -> None:
        """Take its incoming stream, or have the endpoint discard it for now (the peer
        retransmits it) while the app holds more than UDP_INPUT_HIGH_WATER of its input.

        While its reads are paused or it is throttled, it gets no turns, as a TCP connection
        would, but its stream is still taken up to that bound, as a TCP connection's kernel
        buffer still takes data. Discarding at once would cost more: every discarded segment
        looks lost to the peer, whose retransmission timer backs off (to 10 s), so a session
        paused for a moment would stall for seconds after it."""
        self.udp.endpoint.set_receiving(self.session_id, self.in_bytes <= UDP_INPUT_HIGH_WATER)

    def input_counted(self) -> None:
        self.update_interest()              # its stream is taken again once this is low

    def flush(self) -> None:
        """What is queued goes into its stream (the endpoint cuts it into datagrams, sent in
        UdpTransport.flush). A Close closes the session once all of it is acknowledged
        (docs/UDP.md, "Teardown"), so DISCONNECT's announcements arrive first; the app is told
        it is gone now, as for TCP once our FIN is sent."""
        if self.state is not OPEN and self.state is not CLOSING:
            return
        hub = self.hub
        if self.out:
            self._to_stream()
        self.count_buffers()
        if self.state is CLOSING:
            self.udp.endpoint.close_session(self.session_id, hub.loop.now)
            self.state = LINGERING
            self.close_timer = hub.loop.call_later(UDP_CLOSE_TIMEOUT, self._close_over)
            hub.report_lost(self)

    def _to_stream(self) -> None:
        """Hand its queue to its stream: copied output (bytearrays) leaves the budget's output
        until count_buffers() counts it as the stream's; shared bytes keep their hold."""
        endpoint, now, hub = self.udp.endpoint, self.hub.loop.now, self.hub
        memory, shared, sid = hub.memory, hub.shared, self.session_id
        queued = self.queued
        for chunk in self.out:              # bytearrays of copied output, shared bytes
            copied = type(chunk) is bytearray
            if copied:
                memory.output -= len(chunk)
            if endpoint.send_stream(sid, chunk, now):
                queued += len(chunk)
                if not copied:
                    self.shared_held.append((queued, chunk))
                    self.shared_bytes += len(chunk)
            elif not copied:
                shared.release(chunk)
        self.queued = queued
        self.out = NO_OUTPUT
        self.tail = None
        self.out_bytes = self.endpoint_out

    def _close_over(self) -> None:
        self.hub.teardown(self, reason="UDP close not confirmed in %g s" % UDP_CLOSE_TIMEOUT)

    def count_buffers(self) -> None:
        """Bring the budget's count of what the endpoint holds for it up to date, and let it be
        read again once its output has drained below UDP_LOW_WATER."""
        counts = self.udp.endpoint.session_counts(self.session_id)
        acked, held = (self.queued, 0) if counts is None else counts
        memory, shared = self.hub.memory, self.shared_held
        while shared and shared[0][0] <= acked:
            chunk = shared.popleft()[1]
            self.shared_bytes -= len(chunk)
            self.hub.shared.release(chunk)
        out = self.queued - acked
        shared_out = self.shared_bytes      # less what of the first is acknowledged
        if shared:
            shared_out -= max(0, acked - (shared[0][0] - len(shared[0][1])))
        memory.output += out - shared_out - self.endpoint_copied
        self.endpoint_copied = out - shared_out
        self.out_bytes += out - self.endpoint_out
        self.endpoint_out = out
        memory.input += held - self.transport_in
        self.transport_in = held
        if self.reads_paused:
            self.maybe_resume()

    def release(self, reason: str) -> None:
        """Teardown's part: its endpoint buffers leave the budget, and the session ends with
        RESET unless it is already over."""
        udp, memory = self.udp, self.hub.memory
        del udp.sessions[self.session_id]
        memory.output -= self.endpoint_copied
        memory.input -= self.transport_in
        self.out_bytes -= self.endpoint_out
        self.endpoint_out = self.transport_in = self.endpoint_copied = self.shared_bytes = 0
        while self.shared_held:
            self.hub.shared.release(self.shared_held.popleft()[1])
        self.hub.loop.cancel(self.close_timer)
        udp.endpoint.abort_session(self.session_id, reason, self.hub.loop.now)
        udp.rearm()                         # (teardowns may come after this tick's flush)

    def callback(self, address: Optional[Tuple[str, int]]) -> None:
        """Its stream goes to `address` once validated (docs/UDP.md, "Callback addresses"),
        unless that is of the other IP version than our socket."""
        if address is not None:
            version = 6 if self.udp.sock.family == socket.AF_INET6 else 4
            if ipaddress.ip_address(address[0]).version != version:
                self.hub.log_budget.log(LOGGER, logging.DEBUG, "conn %d: callback %s:%d "
                                        "ignored: not an IPv%d address", self.conn_id,
                                        address[0], address[1], version)
                return
            if version == 6:
                address = (address[0], address[1], 0, 0)  # as recvfrom() names IPv6 peers
        self.udp.endpoint.set_callback(self.session_id, address, self.hub.loop.now)
        self.udp.rearm()


class UdpTransport:
    """The one UDP socket that carries every session, its endpoint, and its timer."""
    stale = False

    def __init__(self, hub: Any, sock: socket.socket,
                 idle_timeout: float = udp_stream.IDLE_TIMEOUT) -> None:
        self.hub = hub
        self.sock = sock
        self.endpoint = udp_server.ServerEndpoint(idle_timeout=idle_timeout)
        self.sessions: Dict[int, UdpSession] = {}     # by session id
        # Datagrams the kernel would not take yet (UDP_SEND_BACKLOG).
        self._backlog: Deque[Tuple[bytes, Any]] = collections.deque()
        self._events = EVENT_READ
        self._timer: Optional[Timer] = None
        self._timer_due: Optional[float] = None
        self.dropped = 0                              # datagrams not sent (backlog, errors)
        hub.loop.register(sock, EVENT_READ, self)
        hub.add_flusher(self.flush)

    def on_readable(self) -> None:
        """Read at most UDP_READS_PER_TICK datagrams into the endpoint, and act on what they
        bring."""
        sock, endpoint, now = self.sock, self.endpoint, self.hub.loop.now
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
        self._on_events(endpoint.events())

    def on_writable(self) -> None:
        self._send_datagrams(())

    def flush(self) -> bool:
        """The hub's flusher: send the endpoint's datagrams, update the budget for the
        sessions they concern, act on its events, and re-arm the timer. True if that gave
        connections something to flush or report."""
        endpoint, hub = self.endpoint, self.hub
        self._send_datagrams(endpoint.datagrams_to_send(hub.loop.now, UDP_FLUSHES_PER_TICK))
        sessions = self.sessions
        for session_id in endpoint.touched_sessions():
            conn = sessions.get(session_id)
            if conn is not None:
                conn.count_buffers()
        events = endpoint.events()
        if events:
            self._on_events(events)
        self.rearm()
        return hub.has_output()

    def rearm(self) -> None:
        """One loop timer, at the endpoint's next deadline (aioquic's get_timer()), or now if
        a flush left datagrams for the next tick."""
        endpoint = self.endpoint
        due = self.hub.loop.now if endpoint.flush_pending else endpoint.next_deadline()
        if due != self._timer_due:
            loop = self.hub.loop
            loop.cancel(self._timer)
            self._timer = None if due is None else loop.call_at(due, self._on_timer)
            self._timer_due = due

    def _on_timer(self) -> None:
        """The endpoint's timers (retransmission, keepalive, timeouts): what they send goes in
        this tick's flush."""
        self._timer = self._timer_due = None
        self.endpoint.timer(self.hub.loop.now, UDP_TIMERS_PER_TICK)

    def _on_events(self, events: List[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is udp_stream.StreamData:
                self._on_stream_data(event)
            elif kind is udp_stream.SessionOpened:
                self._open_session(event)
            elif kind is udp_stream.SessionClosed:
                conn = self.sessions.get(event.session_id)
                if conn is not None:
                    self.hub.teardown(conn, reason="UDP session over: %s" % event.reason)
            else:                           # CallbackValidated, CallbackFailed
                LOGGER.debug("udp: %r", event)

    def _open_session(self, event: Any) -> None:
        """A UDP session is confirmed: serve it as a new connection."""
        hub, addr = self.hub, event.source_addr
        conn = UdpSession(self, hub.new_conn_id(), event.session_id, sys.intern(addr[0]))
        self.sessions[event.session_id] = conn
        hub.add(conn, self._local_ip(addr), unproven=False)
        hub.log_budget.log(LOGGER, logging.INFO, "conn %d: UDP session from %s:%d",
                           conn.conn_id, addr[0], addr[1])

    def _local_ip(self, peer: Any) -> str:
        """Our address as `peer` sees it, for HELO and JOINED: the UDP socket's, or when that
        is a wildcard, the one the kernel would send to `peer` from (a connected datagram
        socket learns it without sending anything)."""
        bound = self.sock.getsockname()[0]
        if not ipaddress.ip_address(bound).is_unspecified:
            return sys.intern(bound)
        try:
            with socket.socket(self.sock.family, socket.SOCK_DGRAM) as probe:
                probe.connect(peer)
                return sys.intern(probe.getsockname()[0])
        except OSError:
            return sys.intern(bound)

    def _on_stream_data(self, event: Any) -> None:
        """Stream bytes of a session, in order: as a TCP connection's bytes read."""
        conn = self.sessions.get(event.session_id)
        if conn is None or conn.state is not OPEN:
            return                          # closing: what it sends now is dropped
        hub = self.hub
        hub.received(conn, event.data)
        if conn.state is OPEN:
            hub.guarded(conn, hub.count_input, conn)

    def _send_datagrams(self, datagrams: Iterable[Tuple[bytes, Any]]) -> None:
        """sendto() the backlog, then `datagrams`. What the kernel will not take now waits for
        the socket to be writable (at most UDP_SEND_BACKLOG of it; the newest past that are
        dropped, and the endpoint sends them again)."""
        pending = self._backlog
        pending.extend(datagrams)
        sock = self.sock
        while pending:
            data, addr = pending[0]
            try:
                sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:          # no route to it, say: that datagram is lost
                self.dropped += 1
                self.hub.log_budget.log(LOGGER, logging.DEBUG, "udp: sendto %s failed: %s",
                                        addr, exc)
            pending.popleft()
        while len(pending) > UDP_SEND_BACKLOG:
            pending.pop()
            self.dropped += 1
        events = EVENT_READ | (EVENT_WRITE if pending else 0)
        if events != self._events:
            self.hub.loop.modify(sock, events, self)
            self._events = events

    def close(self) -> None:
        """Send the RESETs of the sessions the hub's close ended, and close the socket."""
        if self.sock.fileno() == -1:
            return
        self._send_datagrams(self.endpoint.datagrams_to_send(self.hub.loop.time()))
        self.hub.loop.unregister(self.sock)
        self.sock.close()
