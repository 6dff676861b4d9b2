"""A UDP client for the chat server, written from docs/UDP.md alone, as a check of that document.

It knows nothing of the server's code: every constant and rule here is one the document states,
and the section it comes from is named next to it. It is deliberately simple (blocking sockets
polled with a selector, a fixed congestion window) but keeps every rule a receiver can observe:
cumulative acknowledgements with SACK ranges, a 64-segment receive window, retransmission on a
timer and on a later segment's acknowledgement, the stateless-cookie handshake, callback
validation (KNOCK, PROBE, ECHO), CLOSE / CLOSE_ACK and RESET.

For tests it can lose datagrams on purpose: `drop_out(datagram, attempt)` and
`drop_in(datagram, arrival)` decide, deterministically, which datagrams it does not send or
pretends never arrived; and it counts every byte it sends and receives, per local socket.
"""
import os
import selectors
import socket
import struct
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

# Section 2: the header.
HEADER = struct.Struct("!BBBB16sIIHH")
VERSION = 0xC1
CALLBACK_PENDING = 0x01
ZERO_TOKEN = bytes(16)
MAX_DATAGRAM = 1200                     # section 1: larger datagrams are dropped unread
MAX_SEGMENT = MAX_DATAGRAM - HEADER.size  # section 5: 1168 stream bytes per DATA
WINDOW = 64                             # section 2: both ends always send 64
MAX_SACK_RANGES = 16                    # section 5

# Section 3: the types.
HELLO, RETRY, ACCEPT, REJECT, DATA, ACK, PING, CLOSE, CLOSE_ACK, RESET, KNOCK, PROBE, ECHO = \
    range(1, 14)
TYPE_NAMES = {1: "HELLO", 2: "RETRY", 3: "ACCEPT", 4: "REJECT", 5: "DATA", 6: "ACK",
              7: "PING", 8: "CLOSE", 9: "CLOSE_ACK", 10: "RESET", 11: "KNOCK", 12: "PROBE",
              13: "ECHO"}
ZERO_TOKEN_TYPES = (HELLO, RETRY, REJECT, KNOCK, PROBE)
ACK_ELICITING = (DATA, PING, ECHO)
CARRIES_ACK = (DATA, ACK, PING, ECHO)   # section 2: the `ack` and `window` fields

# Section 4: the handshake's timers (HELLO at 0, 1, 3, 5 ... s; at most 3 RETRYs followed).
NONCE_SIZE = 8
COOKIE_SIZE = 20
HELLO_FIRST_RETRY = 1.0
HELLO_INTERVAL = 2.0
MAX_RETRIES_FOLLOWED = 3
CONFIRM_PING_MAX_INTERVAL = 2.0

# Section 5: the RTO (RFC 6298) and the time threshold.
INITIAL_RTO = 1.0
MIN_RTO = 0.05
MAX_RTO = 10.0
TIME_THRESHOLD = 9 / 8
CWND = 8                                # fixed: "a receiver cannot tell them apart"

# Sections 6 to 8.
KNOCK_INTERVAL = 1.0
MAX_KNOCKS = 10
KEEPALIVE_AFTER = 15.0                  # section 7: PING after 15 s of silence ...
KEEPALIVE_INTERVAL = 5.0                # ... then every 5 s while still silent
CLOSE_ATTEMPTS = 4


class Datagram(NamedTuple):
    type: int
    flags: int
    token: bytes
    seq: int
    ack: int
    window: int
    body: bytes
    sacks: Tuple[Tuple[int, int], ...]

    def name(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))


def encode(kind: int, token: bytes = ZERO_TOKEN, seq: int = 0, ack: int = 0,
           window: int = 0, body: bytes = b"", sacks=(), pad_to: int = 0,
           flags: int = 0, version: int = VERSION) -> bytes:
    """One datagram's bytes: the header, the body (SACK ranges for an ACK), zero padding."""
    if kind == ACK:
        body = b"".join(struct.pack("!II", start, end) for start, end in sacks)
    raw = HEADER.pack(version, kind, flags, len(sacks) if kind == ACK else 0, token,
                      seq, ack, window, len(body)) + body
    return raw + bytes(max(0, pad_to - len(raw)))


def decode(raw: bytes) -> Optional[Datagram]:
    """The datagram in `raw`, or None for one a receiver must drop (section 2's list)."""
    if not HEADER.size <= len(raw) <= MAX_DATAGRAM:
        return None
    version, kind, flags, sack_count, token, seq, ack, window, length = \
        HEADER.unpack_from(raw)
    if version != VERSION or kind not in TYPE_NAMES or HEADER.size + length > len(raw):
        return None
    if (token == ZERO_TOKEN) != (kind in ZERO_TOKEN_TYPES):
        return None
    body = raw[HEADER.size:HEADER.size + length]
    sacks = ()
    if kind == ACK:
        if sack_count > MAX_SACK_RANGES or length < 8 * sack_count:
            return None
        sacks = tuple(struct.unpack_from("!II", body, 8 * i) for i in range(sack_count))
    return Datagram(kind, flags, token, seq, ack, window, body, sacks)


class Segment:
    __slots__ = ("data", "sent_at", "sends", "order")

    def __init__(self, data: bytes):
        self.data = data
        self.sent_at = 0.0
        self.sends = 0
        self.order = 0                  # transmission order of its latest send


class HandshakeFailed(Exception):
    pass


class UdpClient:
    """One session with the server at `server` (an (ip, port) pair), over its own socket."""

    def __init__(self, server: Tuple[str, int], bind_ip: str = "127.0.0.1"):
        self.server = server
        self.sock = self._socket(bind_ip)
        self.callback_sock = None       # type: Optional[socket.socket]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.token = ZERO_TOKEN
        self.nonce = os.urandom(NONCE_SIZE)
        self.confirmed = False          # some datagram with our token has arrived
        self.closed = None              # type: Optional[str]  # why the session ended
        # Sending (section 5).
        self.pending = bytearray()      # stream bytes not yet cut into segments
        self.next_seq = 0
        self.in_flight = {}             # type: Dict[int, Segment]
        self.peer_ack = 0
        self.peer_window = WINDOW
        self.sends = 0                  # transmissions so far, for transmission order
        self.srtt = None                # type: Optional[float]
        self.rttvar = 0.0
        self.latest_rtt = 0.0
        self.rto = INITIAL_RTO
        # Receiving.
        self.advertised_window = WINDOW  # section 11's minimal client advertises 1
        self.rcv_next = 0
        self.held = {}                  # type: Dict[int, bytes]
        self.received = bytearray()     # the stream from the server, in order
        self.ack_owed = False
        self.last_heard = time.monotonic()
        self.last_ping = float("-inf")
        self.companions = []            # type: List[UdpClient]  # kept running by pump()
        # Callback validation (section 6).
        self.knocking = True            # tests turn it off to watch an unvalidated callback
        self.knocks = 0
        self.last_knock = float("-inf")
        # For tests: deliberate loss and a record of the wire.
        self.drop_out = lambda datagram, attempt: False  # type: Callable[[Datagram, int], bool]
        self.drop_in = lambda datagram, arrival: False   # type: Callable[[Datagram, int], bool]
        self.attempts = {}              # type: Dict[Tuple[int, int], int]
        self.arrivals = {}              # type: Dict[Tuple[int, int], int]
        self.wire = []                  # type: List[Tuple[str, str, Datagram]]
        self.wire_times = []            # type: List[float]  # when each entry of `wire` was
        self.bytes_out = {}             # type: Dict[str, int]  # per local socket
        self.bytes_in = {}              # type: Dict[str, int]

    @staticmethod
    def _socket(ip: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, 0))
        sock.setblocking(False)
        return sock

    @property
    def address(self) -> Tuple[str, int]:
        return self.sock.getsockname()

    def add_callback_socket(self) -> Tuple[str, int]:
        """A second local socket, to be named as JOIN's callback; its address."""
        self.callback_sock = self._socket(self.address[0])
        self.selector.register(self.callback_sock, selectors.EVENT_READ)
        return self.callback_sock.getsockname()

    def close_sockets(self) -> None:
        self.selector.close()
        self.sock.close()
        if self.callback_sock is not None:
            self.callback_sock.close()

    # -- the wire --

    def _note(self, way: str, sock: socket.socket, datagram: Datagram) -> None:
        self.wire.append((way, "%s:%d" % sock.getsockname(), datagram))
        self.wire_times.append(time.monotonic())

    def _send(self, raw: bytes, sock: Optional[socket.socket] = None) -> None:
        sock = sock or self.sock
        datagram = decode(raw)
        if datagram is not None:
            key = (datagram.type, datagram.seq)
            attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
            if self.drop_out(datagram, attempt):
                self._note("dropped-out", sock, datagram)
                return
            self._note("out", sock, datagram)
        name = "%s:%d" % sock.getsockname()
        self.bytes_out[name] = self.bytes_out.get(name, 0) + len(raw)
        sock.sendto(raw, self.server)

    def _session(self, kind: int, seq: int = 0, body: bytes = b"") -> bytes:
        window = self.advertised_window if kind in CARRIES_ACK else 0
        ack = self.rcv_next if kind in CARRIES_ACK else 0
        return encode(kind, self.token, seq, ack, window, body)

    def _receive_batch(self, timeout: float) -> List[Tuple[socket.socket, Datagram]]:
        """Every datagram waiting (after waiting at most `timeout` for the first), decoded,
        from the server's address only (section 1)."""
        batch = []
        for key, _ in self.selector.select(max(0.0, timeout)):
            sock = key.fileobj
            for _ in range(256):        # bounded: what one batch takes from one socket
                try:
                    raw, source = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionRefusedError:  # an ICMP error from an earlier send
                    continue
                if source[:2] != tuple(self.server):
                    continue
                name = "%s:%d" % sock.getsockname()
                self.bytes_in[name] = self.bytes_in.get(name, 0) + len(raw)
                datagram = decode(raw)
                if datagram is None:
                    continue
                key2 = (datagram.type, datagram.seq)
                arrival = self.arrivals[key2] = self.arrivals.get(key2, 0) + 1
                if self.drop_in(datagram, arrival):
                    self._note("dropped-in", sock, datagram)
                    continue
                self._note("in", sock, datagram)
                batch.append((sock, datagram))
        return batch

    # -- the handshake (section 4) --

    def connect(self, timeout: float = 30.0) -> None:
        """HELLO, RETRY, HELLO with the cookie, ACCEPT; then PING until confirmed."""
        start = time.monotonic()
        cookie = b""
        retries = 0
        interval = HELLO_FIRST_RETRY
        hello_sent_at = None            # type: Optional[float]
        hello_sends = 0
        while self.token == ZERO_TOKEN:
            now = time.monotonic()
            if now - start > timeout:
                raise HandshakeFailed("no ACCEPT in %.1f s" % timeout)
            if hello_sent_at is None or now - hello_sent_at >= interval:
                if hello_sent_at is not None:
                    interval = HELLO_INTERVAL
                self._send(encode(HELLO, body=self.nonce + cookie, pad_to=MAX_DATAGRAM))
                hello_sent_at, hello_sends = now, hello_sends + 1
            for _, got in self._receive_batch(hello_sent_at + interval - now):
                if got.body[:NONCE_SIZE] != self.nonce:
                    continue
                if got.type == RETRY and len(got.body) == NONCE_SIZE + COOKIE_SIZE:
                    retries += 1
                    if retries > MAX_RETRIES_FOLLOWED:
                        raise HandshakeFailed("more than %d RETRYs" % MAX_RETRIES_FOLLOWED)
                    cookie = got.body[NONCE_SIZE:]
                    hello_sent_at, interval, hello_sends = None, HELLO_FIRST_RETRY, 0
                    break
                if got.type == REJECT:
                    raise HandshakeFailed("REJECT: the server is full")
                if got.type == ACCEPT:
                    self.token = got.token
                    if hello_sends == 1:  # section 5: an RTT sample from a HELLO sent once
                        self._rtt_sample(time.monotonic() - hello_sent_at)
                    break
        self._confirm(start + timeout)

    def _confirm(self, deadline: float) -> None:
        interval = self.rto
        while not self.confirmed:
            if time.monotonic() > deadline:
                raise HandshakeFailed("the session was never confirmed")
            self._send(self._session(PING))
            self.pump(min(interval, deadline - time.monotonic()), until=lambda: self.confirmed)
            interval = min(2 * interval, CONFIRM_PING_MAX_INTERVAL)

    # -- the stream (section 5) --

    def send(self, data: bytes) -> None:
        """Queue `data` on the stream and send what the windows allow at once."""
        self.pending += data
        self._transmit()

    def pump(self, duration: float, until: Callable[[], bool] = lambda: False,
             alone: bool = False) -> bool:
        """Run the session for at most `duration` seconds or until `until()`; its result.
        Every receive pass takes what is waiting, even with `duration` 0. Unless `alone`,
        the sessions in `companions` are kept running meanwhile (each pass at most 20 ms)."""
        deadline = time.monotonic() + duration
        while True:
            self._transmit()
            if until() or self.closed:
                return until()
            now = time.monotonic()
            wait = max(0.0, min(deadline, self._next_timer(now)) - now)
            others = [] if alone else [c for c in self.companions if c is not self]
            if others:
                wait = min(wait, 0.02)
            for sock, got in self._receive_batch(wait):
                self._handle(sock, got)
            self._timers()
            self._transmit()            # what the batch's acknowledgements let go
            if self.ack_owed and not self.closed:
                self._send(encode(ACK, self.token, 0, self.rcv_next, self.advertised_window,
                                  sacks=self._sack_ranges()))
                self.ack_owed = False
            for other in others:
                if not other.closed:
                    other.pump(0, alone=True)
            if time.monotonic() >= deadline:
                return until()

    def read_until(self, marker: bytes, timeout: float) -> bytes:
        """Everything received so far once it holds `marker` (else an AssertionError)."""
        if not self.pump(timeout, until=lambda: marker in self.received):
            raise AssertionError("%r not received in %.1f s (closed: %s); got %r"
                                 % (marker, timeout, self.closed, bytes(self.received[-300:])))
        return bytes(self.received)

    def _handle(self, sock: socket.socket, got: Datagram) -> None:
        if got.type == PROBE and len(got.body) == 16:   # section 6 step 4
            if self.token != ZERO_TOKEN:
                self._send(self._session(ECHO, body=got.body))
            return
        if got.token != self.token or self.token == ZERO_TOKEN:
            return                      # section 1: an unknown token gets no answer
        self.confirmed = True
        self.last_heard = time.monotonic()
        if got.flags & CALLBACK_PENDING:
            self._knock()
        if got.type in CARRIES_ACK:
            self._acknowledged(got)
        if got.type in ACK_ELICITING:
            self.ack_owed = True
        if got.type == DATA and got.body:
            self._data(got.seq, got.body)
        elif got.type == CLOSE and got.seq == self.rcv_next:   # section 8
            self._send(self._session(CLOSE_ACK))
            self.closed = "closed by peer"
        elif got.type == CLOSE_ACK:
            self.closed = "closed"
        elif got.type == RESET:
            self.closed = "reset by peer"

    def _data(self, seq: int, body: bytes) -> None:
        if self.rcv_next < seq < self.rcv_next + self.advertised_window:
            self.held.setdefault(seq, body)
        elif seq == self.rcv_next:
            self.received += body
            self.rcv_next += 1
            while self.rcv_next in self.held:
                self.received += self.held.pop(self.rcv_next)
                self.rcv_next += 1

    def _sack_ranges(self) -> Tuple[Tuple[int, int], ...]:
        ranges = []                     # type: List[List[int]]
        for seq in sorted(self.held):
            if ranges and ranges[-1][1] == seq:
                ranges[-1][1] = seq + 1
            else:
                ranges.append([seq, seq + 1])
        return tuple((start, end) for start, end in ranges[:MAX_SACK_RANGES])

    def _acknowledged(self, got: Datagram) -> None:
        if got.ack < self.peer_ack or got.ack > self.next_seq:
            return                      # section 5: ignored, and its SACK ranges too
        self.peer_ack, self.peer_window = got.ack, got.window
        newly = [seq for seq in self.in_flight if seq < got.ack
                 or any(start <= seq < end for start, end in got.sacks)]
        if not newly:
            return                      # a duplicate ACK never causes a retransmission
        newest = max(newly, key=lambda seq: self.in_flight[seq].order)
        segment = self.in_flight[newest]
        if segment.sends == 1:          # Karn's rule
            self._rtt_sample(time.monotonic() - segment.sent_at)
        for seq in newly:
            del self.in_flight[seq]
        now = time.monotonic()          # the time threshold: lost if a later one was acked
        for seq, other in self.in_flight.items():
            if other.order < segment.order and \
                    now - other.sent_at >= TIME_THRESHOLD * max(self.srtt or 0.0,
                                                                self.latest_rtt):
                other.sent_at = float("-inf")   # due at once, in _transmit

    def _rtt_sample(self, rtt: float) -> None:
        self.latest_rtt = rtt
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + max(0.001, 4 * self.rttvar)))

    def _transmit(self) -> None:
        """Resend what is due (lowest first), then new segments within both windows."""
        if self.token == ZERO_TOKEN or self.closed:
            return
        now = time.monotonic()
        for seq in sorted(self.in_flight):
            segment = self.in_flight[seq]
            if now - segment.sent_at >= self.rto:
                if segment.sent_at != float("-inf"):
                    self.rto = min(MAX_RTO, 2 * self.rto)   # an expiry, not a fast resend
                self._send_segment(seq, segment)
        limit = self.peer_ack + min(self.peer_window, WINDOW)
        while self.pending and self.next_seq < limit and len(self.in_flight) < CWND:
            segment = Segment(bytes(self.pending[:MAX_SEGMENT]))
            del self.pending[:MAX_SEGMENT]
            self.in_flight[self.next_seq] = segment
            self._send_segment(self.next_seq, segment)
            self.next_seq += 1

    def _send_segment(self, seq: int, segment: Segment) -> None:
        segment.sends += 1
        self.sends += 1
        segment.order = self.sends
        segment.sent_at = time.monotonic()
        self._send(self._session(DATA, seq, segment.data))
        self.ack_owed = False           # the DATA carries the same ack

    def _timers(self) -> None:
        now = time.monotonic()
        if self.token != ZERO_TOKEN and now - self.last_heard >= KEEPALIVE_AFTER \
                and now - self.last_ping >= KEEPALIVE_INTERVAL:
            self._send(self._session(PING))
            self.last_ping = now

    def _next_timer(self, now: float) -> float:
        due = [segment.sent_at + self.rto for segment in self.in_flight.values()]
        if self.callback_sock is not None and 0 < self.knocks < MAX_KNOCKS:
            due.append(self.last_knock + KNOCK_INTERVAL)
        return max(now, min(due, default=now + 0.5))

    # -- callback validation (section 6) --

    def _knock(self) -> None:
        """A KNOCK from the callback socket, at most every 1 s and 10 times in all."""
        now = time.monotonic()
        if self.callback_sock is None or not self.knocking or self.knocks >= MAX_KNOCKS \
                or now - self.last_knock < KNOCK_INTERVAL:
            return
        self.knocks += 1
        self.last_knock = now
        self._send(encode(KNOCK), self.callback_sock)

    # -- teardown (section 8) --

    def close(self, timeout: float = 10.0) -> str:
        """Send everything, wait until it is acknowledged, then CLOSE until CLOSE_ACK."""
        self.pump(timeout, until=lambda: not self.pending and not self.in_flight)
        interval = self.rto
        for _ in range(CLOSE_ATTEMPTS):
            if self.closed:
                break
            self._send(self._session(CLOSE, seq=self.next_seq))
            self.pump(interval, until=lambda: self.closed is not None)
            interval *= 2
        self.closed = self.closed or "close unconfirmed"
        return self.closed

    def reset(self) -> None:
        self._send(self._session(RESET))
        self.closed = "reset"
