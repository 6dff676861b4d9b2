"""The UDP transport: one reliable, ordered byte stream per session, as a pure state machine.

Boundary: this module opens no socket and reads no clock (the h11 "sans-IO" design). Whoever
drives it hands in datagrams with their source address and the current time, and takes out
datagrams to send with their destination, stream bytes delivered in order, events, and the time
at which `timer()` wants to be called next. docs/UDP.md is the wire contract; this docstring is
the theory of operation, and the two use the same names.

    datagram_received(data, addr, now) --> sessions --> events(): SessionOpened, StreamData,
    send_stream(session_id, data, now) -->             SessionClosed, CallbackValidated, ...
    timer(now)                         -->          datagrams_to_send(): [(bytes, addr), ...]
                                                    next_deadline(): when to call timer()

What a session gives the chat protocol is what a TCP connection gives it: the same text
messages, as a byte stream, every byte exactly once and in order, so the chat layer's Framer
and parser are shared unchanged. The parts, in the order a session meets them:

1. Handshake (stateless cookie; QUIC Retry, RFC 9000 s8.1; DTLS HelloVerifyRequest). The
   client sends HELLO, padded to 1 200 bytes. The server answers RETRY carrying a cookie: an
   HMAC over the source address, the client's nonce and a coarse timestamp, under a random key
   made when the process starts. The server keeps nothing for that address. The client repeats
   HELLO with the cookie; a cookie that checks out proves the client receives at its source
   address, and only then does the server create a session and answer ACCEPT with a 128-bit
   random token. The token, not the source address, names the session in every later datagram:
   someone off the path who knows a JOIN_ID and a callback address cannot act for the session.

2. Callback validation (anti-reflection; RFC 9000 s8.2 path validation, s8 amplification
   limit). JOIN_CHATROOM's CLIENT_IP/PORT may name another address for the session's stream;
   the chat layer passes it to `set_callback()`. No stream byte goes there until that address
   has shown it wants them. While validation is pending, the server sets a flag in the
   session's datagrams; the client then sends KNOCK from the callback address, the server
   answers with a PROBE holding a random challenge sent to the callback address, and the
   session holder ECHOes the challenge (from anywhere). Until an address is validated the
   server sends it at most 3x the bytes it received from it (so a silent victim receives
   nothing at all), PROBEs are rate-limited per address and globally, and pending callbacks are
   capped. Meanwhile new stream data waits (at most CALLBACK_TIMEOUT), then the session's
   stream carries on to its validated source address.

3. Delivery (ideas from KCP and TCP; RFC 6298, RFC 9002). The stream is cut into segments of at
   most MAX_PAYLOAD bytes, numbered 0, 1, 2... Each DATA datagram is one segment. The receiver
   delivers segments in order, holds out-of-order ones (at most RECV_WINDOW of them), and
   acknowledges with a cumulative ACK (the next segment it needs) plus SACK ranges of what it
   holds beyond that. The sender keeps at most `cwnd` segments in flight (a congestion window
   counted in datagrams), and retransmits a segment when its retransmission timer (RTO,
   RFC 6298) expires or when three segments sent after it have been acknowledged while it was
   not (KCP's fast retransmit). A duplicate ACK, carrying nothing new, never causes a
   retransmission (TFTP's Sorcerer's Apprentice bug, RFC 1350 / RFC 1123 s4.2.3.1).

4. Liveness. A session that has heard nothing from its peer for KEEPALIVE_IDLE sends PING
   (which the peer answers with ACK) every PING_INTERVAL; one that has heard nothing for
   IDLE_TIMEOUT is closed: SessionClosed, which the chat layer treats like a broken TCP
   connection.

5. Teardown. `close_session()` sends everything queued first; once the peer has acknowledged
   every byte, CLOSE goes out and the session ends at CLOSE_ACK (or after MAX_CLOSE_SENDS
   tries). RESET ends a session at once (a send buffer over its cap, for instance).

Plugging it into a reactor (one UDP socket bound to the TCP address and port):

    on readable:  for each recvfrom(): endpoint.datagram_received(data, addr, now)
    on a tick:    endpoint.timer(now) once next_deadline() has passed
    then:         for each event: SessionOpened -> a new connection (connection_made);
                  StreamData -> the Framer (data_received); SessionClosed -> connection_lost.
                  The chat layer's actions: Send -> send_stream(); Close -> close_session();
                  a JOIN naming CLIENT_IP/PORT -> set_callback(callback_address(...)) BEFORE
                  the JOINED_CHATROOM reply is queued.
    finally:      sendto() every datagrams_to_send(); take events() again (a flush can end a
                  session); sleep at most until next_deadline().
    budget:       buffered_bytes() counts toward the global memory bound.

Module layout: wire constants and encoding; ReliableStream (one session's
sequence numbers, acks, windows and timers, shared by both ends); _Session (liveness and
teardown around a stream); ServerEndpoint; ClientEndpoint.
"""
import bisect
import hashlib
import heapq
import hmac
import ipaddress
import secrets
import struct
from typing import Dict, List, NamedTuple, Optional, Set, Tuple, Union

from policy.bucket import TokenBucket

Address = Tuple  # what the socket layer gives: (host, port) or (host, port, flowinfo, scope)

# ---------------------------------------------------------------------------------------------
# The wire (docs/UDP.md, "Datagram layout")
# ---------------------------------------------------------------------------------------------

# First byte of every datagram: 0xC is this protocol's mark, 1 its version. A datagram with any
# other first byte is dropped, so a future version 2 can never be misread as version 1.
VERSION = 0xC1

# The fixed header, all integers big-endian:
#   version, type, flags, sack_count, token[16], seq, ack, window, body_length
HEADER = struct.Struct("!BBBB16sIIHH")
HEADER_SIZE = HEADER.size                   # 32
SACK_RANGE = struct.Struct("!II")           # [start, end) of segments held beyond `ack`
COOKIE_TIME = struct.Struct("!I")

# Datagram types.
HELLO = 1         # client -> server: open a session (padded to MAX_DATAGRAM)
RETRY = 2         # server -> client: here is a cookie, say HELLO again with it
ACCEPT = 3        # server -> client: the session exists, its token is in the header
REJECT = 4        # server -> client: no room for another session
DATA = 5          # either way: one stream segment
ACK = 6           # either way: cumulative ack and SACK ranges
PING = 7          # either way: are you there? (answered with ACK)
CLOSE = 8         # either way: I have nothing more to send and you have acked all I sent
CLOSE_ACK = 9     # either way: answer to CLOSE; the session is over
RESET = 10        # either way: the session is over at once
KNOCK = 11        # callback address -> server: I want this session's stream
PROBE = 12        # server -> callback address: a challenge for the session holder
ECHO = 13         # client -> server: the challenge, back through the session
TYPE_NAMES = {HELLO: "HELLO", RETRY: "RETRY", ACCEPT: "ACCEPT", REJECT: "REJECT", DATA: "DATA",
              ACK: "ACK", PING: "PING", CLOSE: "CLOSE", CLOSE_ACK: "CLOSE_ACK", RESET: "RESET",
              KNOCK: "KNOCK", PROBE: "PROBE", ECHO: "ECHO"}
# Types that carry a token; the rest carry the zero token.
_SESSION_TYPES = frozenset((DATA, ACK, PING, CLOSE, CLOSE_ACK, RESET, ECHO))

# Header flag, server -> client: this session has a callback waiting for validation; the
# client should KNOCK from its callback address.
FLAG_CALLBACK_PENDING = 0x01

TOKEN_SIZE = 16          # 128 bits from `secrets`: unguessable, as QUIC's connection ids
ZERO_TOKEN = bytes(TOKEN_SIZE)
NONCE_SIZE = 8           # the client's random handshake nonce, echoed in RETRY/ACCEPT/REJECT
MAC_SIZE = 16            # HMAC-SHA256 truncated to 128 bits
COOKIE_SIZE = COOKIE_TIME.size + MAC_SIZE   # timestamp + mac = 20
CHALLENGE_SIZE = 16

# --- limits (docs/UDP.md, "Limits") ----------------------------------------------------------
# Largest UDP payload either side sends or accepts. 1 200 bytes is QUIC's floor (RFC 9000
# s14): it passes every IPv6 path (minimum MTU 1 280) and nearly every IPv4 one, so we never
# rely on IP fragmentation. Larger datagrams are dropped unread.
MAX_DATAGRAM = 1200
MAX_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE    # stream bytes per DATA datagram: 1 168
# HELLO is padded to exactly MAX_DATAGRAM (QUIC pads its first Initial the same way): the
# server's answers (RETRY, REJECT: 60 bytes or less) are then far smaller than what provoked
# them, and a path that cannot carry full-size datagrams fails in the handshake, not later.
HELLO_SIZE = MAX_DATAGRAM
# A cookie is accepted for this many seconds after it was made (and never from the future).
# Long enough for a retransmitted HELLO on a slow path, short enough that a cookie seen once is
# soon worth nothing.
COOKIE_LIFETIME = 10

# Segments the receiver holds beyond the next one it needs, and so the most a sender may have
# outstanding. 64 x 1 168 bytes = 73 KiB: a whole 64 KiB chat message (protocol.py,
# MAX_REQUEST_BYTES) fits in one window, and out-of-order data per session is bounded by it.
RECV_WINDOW = 64
# Congestion window, in datagrams (RFC 9002 s7.2): start at 4 (RFC 9002 allows 10; chat
# messages are small and a new session should not burst), never below 2 (kMinimumWindow),
# never above the receive window.
INITIAL_CWND = 4
MIN_CWND = 2
MAX_CWND = RECV_WINDOW
# Retransmit a segment once this many segments sent after it are acknowledged while it is not
# (TCP's three duplicate ACKs, RFC 5681; RFC 9002's kPacketThreshold = 3; KCP's "resend").
FAST_RETRANSMIT_SKIPS = 3
# ... or once a segment sent after it has been acknowledged and this many RTTs have passed since
# it was sent (RFC 9002 s6.1.2, kTimeThreshold = 9/8 of max(SRTT, latest RTT)). With a window
# too small for three later segments, as after any loss or in chat traffic, the packet
# threshold alone leaves every loss to the RTO. Measured (bench/udp_load.py, ten members, 10 %
# loss, four seeds): 6.7 s median with it, 32 s without.
LOSS_TIME_THRESHOLD = 9.0 / 8.0
# Retransmission timeout (RFC 6298). Initial RTO 1 s (RFC 6298 s2.1), not RFC 9002's 333 ms
# initial RTT: a chat does not need the first round trip to be fast, and being conservative
# before any RTT is measured costs nothing but avoids spurious retransmissions on slow mobile
# paths. The floor is 50 ms: RFC 6298's 1 s is known to be far too conservative (s2.4 lets us
# choose), and Linux TCP's 200 ms covers delayed ACKs, which neither end here does (an ACK goes
# out with its batch: one server tick, 20 ms as a rule); RFC 9002's probe timeout has no floor
# but the peer's max_ack_delay (25 ms by default) on top of the RTT estimate. With 200 ms, every
# lost chat segment cost 200 ms, and ten members chatting at 10 % loss got 1 200 deliveries/s
# instead of 7 000 to 14 000 (bench/udp_load.py). The cap 10 s (RFC 6298 allows 60 s, but a
# peer silent for IDLE_TIMEOUT is given up anyway, and a lower cap means more tries in that
# time).
INITIAL_RTO = 1.0
MIN_RTO = 0.05
MAX_RTO = 10.0
CLOCK_GRANULARITY = 0.001   # G in RFC 6298 s2: we are given float seconds
# Keepalive (docs/UDP.md, "Liveness"): after KEEPALIVE_IDLE seconds without hearing from the
# peer, PING every PING_INTERVAL; after IDLE_TIMEOUT of silence the peer is gone. A vanished
# peer is noticed in 45 s (< 60 s), and an idle session costs one PING and one ACK per 15 s.
KEEPALIVE_IDLE = 15.0
PING_INTERVAL = 5.0
IDLE_TIMEOUT = 45.0
# A server may be given a shorter idle timeout (tests: a killed client noticed in seconds); its
# keepalive timers keep these proportions (15 s and 5 s of 45 s), so a live but quiet client is
# still pinged, and answers, well before the timeout.
KEEPALIVE_FRACTION = KEEPALIVE_IDLE / IDLE_TIMEOUT
PING_FRACTION = PING_INTERVAL / IDLE_TIMEOUT
# CLOSE is sent at most this many times (RTO, doubling) before the session ends unconfirmed.
MAX_CLOSE_SENDS = 4
# Queued and unacknowledged stream bytes per session. Passing it ends the session with RESET,
# as reactor.OUTPUT_CAP does for a TCP connection: 1 MiB is ~15 000 chat messages, a reader
# that far behind is stalled, not slow.
SEND_BUFFER_CAP = 1024 * 1024
# SACK ranges per ACK: 16 x 8 bytes. The lowest ranges are the ones fast retransmit needs.
MAX_SACK_RANGES = 16
# Segment numbers are 32 bits and never wrap: a session that would need more (4 TiB) ends.
MAX_SEQ = 2 ** 32 - 1 - RECV_WINDOW

# Sessions per server endpoint. Each costs at most ~1.1 MB (send cap + receive window) and a
# few hundred bytes when idle; 10 000 matches the TCP side's descriptor budget.
MAX_SESSIONS = 10000
# Sessions accepted but not yet confirmed (no datagram with their token seen yet), and how long
# after the last ACCEPT they may stay so. Only a client that passed the cookie check gets here,
# but it could still open sessions it never uses. A valid HELLO finding the table full gets no
# answer (it is retried), unlike one finding MAX_SESSIONS (REJECT). 30 s = HANDSHAKE_TIMEOUT: a
# client still trying to confirm is never forgotten under it.
MAX_UNCONFIRMED_SESSIONS = 256
UNCONFIRMED_TIMEOUT = 30.0
# Callbacks waiting for validation, and how long one may wait before the session gives up on it
# and keeps its stream on its source address.
MAX_PENDING_CALLBACKS = 1024
CALLBACK_TIMEOUT = 10.0
# Anti-amplification (RFC 9000 s8): to an address not yet validated, at most this many times
# the bytes received from it.
AMPLIFICATION_FACTOR = 3
# PROBEs per address: a burst of 3, then one per 2 s; and for the whole endpoint 200 per second.
# So even spoofed KNOCKs make one address receive a few small datagrams, and the endpoint as a
# whole reflects at most ~10 KB/s of PROBEs.
PROBE_BURST = 3
PROBE_RATE = 0.5
PROBE_GLOBAL_BURST = 200
PROBE_GLOBAL_RATE = 200.0
# The client's side of validation: KNOCK at most once a second, at most 10 times per callback.
KNOCK_INTERVAL = 1.0
MAX_KNOCKS = 10
# The client's handshake: HELLO is repeated after INITIAL_RTO, doubling up to
# HANDSHAKE_MAX_INTERVAL (at 0, 1, 3, 5, 7 ... s; RETRY starts the doubling again), and the
# handshake is given up HANDSHAKE_TIMEOUT after it began. A 1 200-byte HELLO every 2 s costs
# nothing, and many tries make the handshake survive heavy loss (at 30 % loss each try has
# about an even chance). At most MAX_RETRIES_FOLLOWED RETRYs are followed.
HANDSHAKE_MAX_INTERVAL = 2.0
HANDSHAKE_TIMEOUT = 30.0
MAX_RETRIES_FOLLOWED = 3


def encode(kind: int, token: bytes = ZERO_TOKEN, seq: int = 0, ack: int = 0,
           window: int = 0, body: bytes = b"", flags: int = 0, sack_count: int = 0,
           pad_to: int = 0) -> bytes:
    """One datagram: the header, the body, then zero padding up to `pad_to` bytes."""
    datagram = HEADER.pack(VERSION, kind, flags, sack_count, token, seq, ack, window,
                           len(body)) + body
    if len(datagram) < pad_to:
        datagram += bytes(pad_to - len(datagram))
    return datagram


class Datagram(NamedTuple):
    """A parsed datagram (for tests and tools; the endpoints unpack the header in place)."""
    kind: int
    flags: int
    sack_count: int
    token: bytes
    seq: int
    ack: int
    window: int
    body: bytes


def decode(data: bytes) -> Optional[Datagram]:
    """The datagram in `data`, or None if it is not one of ours (wrong version, too short, too
    long, a body length past its end, or a DATA with no stream bytes: docs/UDP.md section 2).
    Padding after the body is ignored."""
    if not HEADER_SIZE <= len(data) <= MAX_DATAGRAM or data[0] != VERSION:
        return None
    _, kind, flags, sacks, token, seq, ack, window, length = HEADER.unpack_from(data)
    if HEADER_SIZE + length > len(data) or (kind == DATA and not length):
        return None
    return Datagram(kind, flags, sacks, token, seq, ack, window,
                    bytes(data[HEADER_SIZE:HEADER_SIZE + length]))


def callback_address(client_ip: str, port: str) -> Optional[Tuple[str, int]]:
    """The callback address a JOIN_CHATROOM names, for `ServerEndpoint.set_callback`: None when
    it means "my source address" (CLIENT_IP 0 or PORT 0, as the protocol's "0 for TCP").
    Raises ValueError for anything that is not an IP literal and a port 0..65535 (no host
    names: resolving one would block the loop and let a JOIN aim us anywhere)."""
    client_ip, port = client_ip.strip(), port.strip()
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("PORT must be an integer 0..65535")
    if client_ip == "0" or int(port) == 0:
        return None
    return (str(ipaddress.ip_address(client_ip)), int(port))


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------

class SessionOpened(NamedTuple):
    """A client completed the handshake and sent its first datagram: a new 'connection'."""
    session_id: int
    source_addr: Address


class StreamData(NamedTuple):
    """Stream bytes, in order, exactly once: give them to the Framer."""
    session_id: int
    data: bytes


class SessionClosed(NamedTuple):
    """The session is over (`reason` says why); the chat layer treats it as a closed TCP
    connection. Every SessionOpened is followed by exactly one SessionClosed."""
    session_id: int
    reason: str


class CallbackValidated(NamedTuple):
    """The session's stream now goes to `addr`."""
    session_id: int
    addr: Address


class CallbackFailed(NamedTuple):
    """`addr` was not validated (timed out, or too many pending); the stream stays where it was."""
    session_id: int
    addr: Address
    reason: str


Event = Union[SessionOpened, StreamData, SessionClosed, CallbackValidated, CallbackFailed]


# ---------------------------------------------------------------------------------------------
# The reliable stream: segments, acks, windows, RTO
# ---------------------------------------------------------------------------------------------

class _Segment:
    """One numbered piece of the outgoing stream, kept until the peer acknowledges it."""

    __slots__ = ("seq", "data", "sent_at", "sends", "skips", "in_flight", "order")

    def __init__(self, seq: int, data: bytes) -> None:
        self.seq = seq
        self.data = data
        self.sent_at = 0.0
        self.sends = 0          # how many times sent; Karn: sample the RTT only when 1
        self.skips = 0          # later segments acked since it was last sent (fast retransmit)
        self.in_flight = False  # sent and believed to be in the network (not acked, not lost)
        self.order = 0          # the stream's transmission count when it was last sent


class ReliableStream:
    """Both directions of one session's stream, with no addresses and no clock of its own.

    Sending: `queue()` appends bytes; `poll(now)` returns the segments to (re)send now, as the
    windows allow; `on_ack()` takes the peer's cumulative ack and SACK ranges; `on_timer(now)`
    runs the retransmission timer. Receiving: `receive()` takes one segment and returns the
    bytes that are now in order; `ack_pending` says an ACK is owed.
    """

    def __init__(self) -> None:
        # --- sending
        self.send_buffer = bytearray()      # not yet cut into segments
        self.unacked: Dict[int, _Segment] = {}   # by seq, ascending (inserted in order)
        self.unacked_bytes = 0
        self.next_seq = 0                   # seq of the next new segment
        self.peer_ack = 0                   # the peer's cumulative ack: it has all below
        self.peer_window = RECV_WINDOW
        self.in_flight = 0                  # segments with in_flight set
        self.cwnd = float(INITIAL_CWND)
        self.ssthresh = float(MAX_CWND)
        self.recovery_until = 0             # cut cwnd at most once per window of data
        self.srtt: Optional[float] = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO
        self.backoff = 0                    # RTO doublings since the last RTT sample
        self.rto_deadline: Optional[float] = None
        self.transmissions = 0              # every (re)send numbered, like QUIC packet numbers
        self.largest_acked_order = 0        # the latest transmission the peer acknowledged
        self.latest_rtt: Optional[float] = None
        self.loss_deadline: Optional[float] = None  # when a segment passes the time threshold
        # --- receiving
        self.recv_next = 0                  # the next segment we need
        self.held: Dict[int, bytes] = {}    # out of order, within RECV_WINDOW
        self.held_bytes = 0
        self.ack_pending = False
        # False while the app is not taking this session's input (its flood control or a
        # backlog): DATA is then discarded, unacknowledged, and the peer's retransmission
        # timer brings it again later, as a full TCP receive window slows a sender.
        self.receiving = True
        # --- counters, for tests and logs
        self.retransmissions = 0
        self.fast_retransmits = 0
        self.rto_timeouts = 0
        self.cwnd_cuts = 0

    # --- sending ---------------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        self.send_buffer += data

    def send_buffered(self) -> int:
        """Bytes the peer has not acknowledged yet (queued or in segments)."""
        return len(self.send_buffer) + self.unacked_bytes

    def all_acked(self) -> bool:
        return not self.send_buffer and not self.unacked

    def current_rto(self) -> float:
        return min(self.rto * (1 << self.backoff), MAX_RTO)

    def poll(self, now: float, hold_new: bool = False) -> List[_Segment]:
        """The segments to send now: lost ones first (lowest seq first), then new ones, as long
        as fewer than `cwnd` are in flight and new ones stay inside the peer's window.
        Retransmissions count against the window like new data (no retransmission storms)."""
        budget = int(self.cwnd) - self.in_flight
        out: List[_Segment] = []
        if budget <= 0:
            return out
        if self.in_flight < len(self.unacked):          # some are marked lost
            for seg in self.unacked.values():
                if not seg.in_flight:
                    self._transmit(seg, now)
                    self.retransmissions += 1
                    out.append(seg)
                    budget -= 1
                    if not budget:
                        break
        limit = self.peer_ack + min(self.peer_window, RECV_WINDOW)
        while budget > 0 and self.send_buffer and not hold_new and self.next_seq < limit:
            data = bytes(self.send_buffer[:MAX_PAYLOAD])
            del self.send_buffer[:MAX_PAYLOAD]      # O(1): bytearray trims from the front
            seg = _Segment(self.next_seq, data)
            self.next_seq += 1
            self.unacked[seg.seq] = seg
            self.unacked_bytes += len(data)
            self._transmit(seg, now)
            out.append(seg)
            budget -= 1
        if out and self.rto_deadline is None:
            self.rto_deadline = now + self.current_rto()
        return out

    def _transmit(self, seg: _Segment, now: float) -> None:
        seg.in_flight = True
        seg.sends += 1
        seg.sent_at = now
        seg.skips = 0
        self.transmissions += 1
        seg.order = self.transmissions
        self.in_flight += 1

    def on_ack(self, ack: int, window: int, ranges, now: float) -> None:
        """The peer has every segment below `ack`, and those in the [start, end) `ranges`.
        Only newly acknowledged segments have any effect: a duplicate ACK changes nothing and
        so can never trigger a retransmission (the Sorcerer's Apprentice lesson)."""
        if ack > self.next_seq or ack < self.peer_ack:
            return                          # acks what we never sent, or older than we know
        self.peer_window = window
        newly: List[_Segment] = []
        pop = self.unacked.pop
        if ack > self.peer_ack:
            for seq in range(self.peer_ack, ack):
                seg = pop(seq, None)
                if seg is not None:
                    newly.append(seg)
            self.peer_ack = ack
        for start, end in ranges:
            for seq in range(max(start, ack), min(end, self.next_seq)):
                seg = pop(seq, None)
                if seg is not None:
                    newly.append(seg)
        if not newly:
            return
        latest = newly[0]                   # the most recent transmission this ACK covers
        for seg in newly:
            self.unacked_bytes -= len(seg.data)
            if seg.in_flight:
                self.in_flight -= 1
            if seg.order > latest.order:
                latest = seg
            # Window growth (RFC 9002 s7.3): slow start below ssthresh, then additive increase
            # of one datagram per window acknowledged.
            if self.cwnd < self.ssthresh:
                self.cwnd += 1.0
            else:
                self.cwnd += 1.0 / self.cwnd
        if self.cwnd > MAX_CWND:
            self.cwnd = float(MAX_CWND)
        # One RTT sample per ACK, from the most recent transmission it newly acknowledges, and
        # only if that is the most recent the peer has acknowledged at all (RFC 9002 s5.1) and
        # was sent once (Karn's rule, RFC 6298 s3: which send was acknowledged is unknowable).
        # Any older segment this ACK covers may have arrived long ago, its own ACK lost: timed
        # from its send, it would count a retransmission timeout or two into the RTT, the RTO
        # would grow from it, the next timeout wait longer and give a still larger sample, up
        # to MAX_RTO (measured: a 10 ms path at 10 % loss reached SRTT 2.6 s and RTO 10 s).
        if latest.order > self.largest_acked_order:
            self.largest_acked_order = latest.order
            if latest.sends == 1:
                self._rtt_sample(now - latest.sent_at)
                self.backoff = 0            # Karn: keep the backed-off RTO until a sample
        self._detect_losses(newly, now)
        # RFC 6298 s5.3: restart the timer when new data is acknowledged.
        self.rto_deadline = now + self.current_rto() if self.in_flight else None

    def _detect_losses(self, newly: List[_Segment], now: float) -> None:
        """KCP's fast retransmit: a segment still missing after FAST_RETRANSMIT_SKIPS segments
        sent after it were acknowledged is taken as lost and sent again at once; so is one
        sent LOSS_TIME_THRESHOLD RTTs before a segment sent after it that was acknowledged
        (RFC 9002 s6.1.2), and `loss_deadline` says when the next one would be. "After" counts
        transmissions, not sequence numbers (RFC 9002 s6.1.1 counts packet numbers, which a
        retransmission renews): segments acked that were sent before a retransmission say
        nothing about whether the retransmission arrived. `newly` may be empty (the loss
        timer)."""
        self.loss_deadline = None
        if not self.unacked:
            return
        acked = sorted(seg.order for seg in newly)
        rtt = max(self.srtt, self.latest_rtt or 0.0) if self.srtt is not None else INITIAL_RTO
        threshold = max(LOSS_TIME_THRESHOLD * rtt, CLOCK_GRANULARITY)
        for seg in self.unacked.values():
            if not seg.in_flight or seg.order >= self.largest_acked_order:
                continue
            if acked:
                seg.skips += len(acked) - bisect.bisect_right(acked, seg.order)
            lost_at = seg.sent_at + threshold
            if seg.skips < FAST_RETRANSMIT_SKIPS and now < lost_at:
                if self.loss_deadline is None or lost_at < self.loss_deadline:
                    self.loss_deadline = lost_at
                continue
            seg.in_flight = False           # lost: poll() sends it again first
            seg.skips = 0
            self.in_flight -= 1
            self.fast_retransmits += 1
            if seg.seq >= self.recovery_until:
                # One cut per window of data (RFC 6582's recovery point): halve, as TCP's fast
                # recovery and RFC 9002 s7.3.2 do.
                self.ssthresh = max(self.cwnd / 2.0, float(MIN_CWND))
                self.cwnd = self.ssthresh
                self.recovery_until = self.next_seq
                self.cwnd_cuts += 1

    def _rtt_sample(self, rtt: float) -> None:
        """RFC 6298 s2: SRTT and RTTVAR with alpha = 1/8, beta = 1/4; RTO = SRTT + 4 RTTVAR."""
        rtt = max(rtt, 0.0)
        self.latest_rtt = rtt
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2.0
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(max(self.srtt + max(CLOCK_GRANULARITY, 4.0 * self.rttvar), MIN_RTO),
                       MAX_RTO)

    def on_timer(self, now: float) -> bool:
        """Run the retransmission timer; True if it expired. On expiry (RFC 6298 s5.4-5.6):
        double the RTO (up to MAX_RTO), take every segment in flight as lost, and drop the
        window to MIN_CWND (RFC 9002 s7.6), so the resend is a trickle, not a burst."""
        if self.loss_deadline is not None and now >= self.loss_deadline:
            self._detect_losses([], now)    # not a timeout: the window is not collapsed
        if self.rto_deadline is None or now < self.rto_deadline:
            return False
        self.rto_timeouts += 1
        if self.rto * (1 << self.backoff) < MAX_RTO:
            self.backoff += 1
        self.ssthresh = max(self.cwnd / 2.0, float(MIN_CWND))
        self.cwnd = float(MIN_CWND)
        self.recovery_until = self.next_seq
        self.cwnd_cuts += 1
        for seg in self.unacked.values():
            seg.in_flight = False
            seg.skips = 0
        self.in_flight = 0
        self.rto_deadline = None
        return True

    # --- receiving -------------------------------------------------------------------------

    def receive(self, seq: int, payload: bytes) -> bytes:
        """Take one segment; return the stream bytes it makes deliverable (b"" if none).
        Duplicates and segments beyond the window are dropped, but still acknowledged; so is
        every segment while `receiving` is False."""
        self.ack_pending = True
        if not self.receiving:
            return b""
        held = self.held
        if seq == self.recv_next:
            nxt = seq + 1
            if not held or nxt not in held:
                self.recv_next = nxt
                return payload
            parts = [payload]
            while nxt in held:
                part = held.pop(nxt)
                self.held_bytes -= len(part)
                parts.append(part)
                nxt += 1
            self.recv_next = nxt
            return b"".join(parts)
        if self.recv_next < seq < self.recv_next + RECV_WINDOW and seq not in held:
            held[seq] = payload
            self.held_bytes += len(payload)
        return b""

    def sack_ranges(self) -> List[Tuple[int, int]]:
        """Up to MAX_SACK_RANGES [start, end) ranges of held segments, lowest first."""
        if not self.held:
            return []
        ranges: List[Tuple[int, int]] = []
        keys = sorted(self.held)
        start = prev = keys[0]
        for seq in keys[1:]:
            if seq != prev + 1:
                ranges.append((start, prev + 1))
                if len(ranges) == MAX_SACK_RANGES:
                    return ranges
                start = seq
            prev = seq
        ranges.append((start, prev + 1))
        return ranges


def _parse_sacks(body: bytes, count: int) -> List[Tuple[int, int]]:
    count = min(count, MAX_SACK_RANGES, len(body) // SACK_RANGE.size)
    return [SACK_RANGE.unpack_from(body, i * SACK_RANGE.size) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# A session: a stream plus liveness and teardown (shared by both ends)
# ---------------------------------------------------------------------------------------------

class _Session:
    """One session's state at either end, around its ReliableStream. `handle()` takes one
    datagram carrying its token; `flush()` writes what is owed; `on_timer()` runs the timers;
    `closed` becomes the reason once the session is over."""

    def __init__(self, token: bytes, now: float, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.token = token
        self.stream = ReliableStream()
        self.idle_timeout = idle_timeout
        self.keepalive_idle = idle_timeout * KEEPALIVE_FRACTION
        self.ping_interval = idle_timeout * PING_FRACTION
        self.last_recv = now
        self.last_ping = now - self.ping_interval
        self.ping_due = False
        self.close_requested = False
        self.close_sends = 0
        self.close_deadline: Optional[float] = None
        self.close_ack_due = False
        self.reset_due = False
        self.closed: Optional[str] = None
        self.delivered: List[bytes] = []     # stream bytes for the endpoint's events

    def handle(self, kind: int, sacks: int, seq: int, ack: int, window: int, body: bytes,
               now: float) -> None:
        self.last_recv = now
        stream = self.stream
        if kind == DATA:
            stream.on_ack(ack, window, (), now)
            if body:
                data = stream.receive(seq, body)
                if data and not self.close_requested:
                    self.delivered.append(data)
        elif kind == ACK:
            stream.on_ack(ack, window, _parse_sacks(body, sacks) if sacks else (), now)
        elif kind in (PING, ECHO):
            stream.on_ack(ack, window, (), now)
            stream.ack_pending = True        # PING and ECHO are answered with an ACK
        elif kind == CLOSE:
            if seq == stream.recv_next:      # we have every segment the peer sent
                self.close_ack_due = True
                self.closed = "closed by peer"
        elif kind == CLOSE_ACK:
            if self.close_sends:
                self.closed = "closed"
        elif kind == RESET:
            self.closed = "reset by peer"

    def deadline(self) -> float:
        """When on_timer() next has something to do (it may be called earlier or later)."""
        when = min(self.last_recv + self.idle_timeout,
                   max(self.last_recv + self.keepalive_idle, self.last_ping + self.ping_interval))
        if self.stream.rto_deadline is not None and self.stream.rto_deadline < when:
            when = self.stream.rto_deadline
        if self.stream.loss_deadline is not None and self.stream.loss_deadline < when:
            when = self.stream.loss_deadline
        if self.close_deadline is not None and self.close_deadline < when:
            when = self.close_deadline
        return when

    def on_timer(self, now: float) -> None:
        # Each test is written exactly as deadline() computes it: with floats, "now - last >=
        # T" can be false at now == last + T, and the timer would fire for ever.
        if now >= self.last_recv + self.idle_timeout:
            self.closed = "peer timed out"
            return
        self.stream.on_timer(now)
        if self.close_deadline is not None and now >= self.close_deadline:
            self.close_deadline = None
            if self.close_sends >= MAX_CLOSE_SENDS:
                self.closed = "close unconfirmed"
                return
            self.close_sends = -self.close_sends     # negative: due to be sent again
        if (now >= self.last_recv + self.keepalive_idle
                and now >= self.last_ping + self.ping_interval):
            self.ping_due = True
            self.last_ping = now

    def flush(self, now: float, out: list, data_addr: Address, ack_addr: Address,
              flags: int = 0, hold_new: bool = False) -> None:
        """Append to `out` every datagram owed now: DATA to `data_addr`, the rest (ACK, PING,
        CLOSE, CLOSE_ACK, RESET) to `ack_addr`."""
        token, stream = self.token, self.stream
        if self.reset_due:
            out.append((encode(RESET, token, flags=flags), ack_addr))
            self.reset_due = False
            return
        if self.close_ack_due:
            out.append((encode(CLOSE_ACK, token, flags=flags), ack_addr))
            self.close_ack_due = False
        if self.closed is not None:
            return
        ack = stream.recv_next
        piggybacked = False
        if stream.next_seq >= MAX_SEQ:
            self.abort("sequence space exhausted")
            out.append((encode(RESET, token, flags=flags), ack_addr))
            self.reset_due = False
            return
        for seg in stream.poll(now, hold_new):
            out.append((HEADER.pack(VERSION, DATA, flags, 0, token, seg.seq, ack, RECV_WINDOW,
                                    len(seg.data)) + seg.data, data_addr))
            piggybacked = piggybacked or data_addr == ack_addr
        if stream.ack_pending:
            ranges = stream.sack_ranges()
            if ranges or not piggybacked:
                body = b"".join(SACK_RANGE.pack(start, end) for start, end in ranges)
                out.append((encode(ACK, token, 0, ack, RECV_WINDOW, body, flags, len(ranges)),
                            ack_addr))
            stream.ack_pending = False
        if self.ping_due:
            out.append((encode(PING, token, 0, ack, RECV_WINDOW, flags=flags), ack_addr))
            self.ping_due = False
        if self.close_requested and stream.all_acked() and self.close_sends <= 0:
            out.append((encode(CLOSE, token, stream.next_seq, flags=flags), ack_addr))
            self.close_sends = -self.close_sends + 1
            self.close_deadline = now + min(stream.current_rto() * (1 << self.close_sends - 1),
                                            MAX_RTO)

    def abort(self, reason: str) -> None:
        """End now; the next flush() sends RESET."""
        if self.closed is None:
            self.closed = reason
            self.reset_due = True

    def queue_or_abort(self, data: bytes) -> bool:
        """Queue stream bytes; if they would take the unacknowledged bytes past
        SEND_BUFFER_CAP, abort the session instead (and say False)."""
        if self.stream.send_buffered() + len(data) > SEND_BUFFER_CAP:
            self.abort("send buffer over cap")
            return False
        self.stream.queue(data)
        return True


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class _PendingCallback:
    """A callback address named by the chat layer, not yet validated for this session."""

    __slots__ = ("addr", "challenge", "deadline", "nudge_at")

    def __init__(self, addr: Address, challenge: bytes, now: float) -> None:
        self.addr, self.challenge = addr, challenge
        self.deadline = now + CALLBACK_TIMEOUT
        # Until validated, the session's source gets a (flagged) ACK every KNOCK_INTERVAL, so
        # a client that missed the flag still learns it should knock.
        self.nudge_at = now + KNOCK_INTERVAL


class _UnvalidatedAddress:
    """What the server knows of one address some session wants as its callback: bytes in and
    out (the 3x budget), its PROBE rate limit, and the sessions waiting on it."""

    __slots__ = ("received", "sent", "bucket", "sessions")

    def __init__(self, now: float) -> None:
        self.received = 0
        self.sent = 0
        self.bucket = TokenBucket(PROBE_BURST, PROBE_RATE, now)
        self.sessions: Dict["_ServerSession", None] = {}   # an ordered set


class _ServerSession(_Session):
    def __init__(self, session_id: int, token: bytes, source: Address, nonce: bytes,
                 now: float, idle_timeout: float) -> None:
        super().__init__(token, now, idle_timeout)
        self.session_id = session_id
        self.source = source            # validated by the cookie; ACKs and control go here
        self.dest = source              # where the stream goes: source or a validated callback
        self.validated: Set = {source}
        self.pending: Optional[_PendingCallback] = None
        self.nonce = nonce
        self.confirmed = False          # a datagram with the token has arrived
        self.accepted_at = now      # the last ACCEPT sent
        self.registered = float("inf")  # the deadline we have an entry for in the timer heap

    def deadline(self) -> float:
        when = super().deadline()
        if not self.confirmed:
            when = min(when, self.accepted_at + UNCONFIRMED_TIMEOUT)
        if self.pending is not None:
            when = min(when, self.pending.deadline, self.pending.nudge_at)
        return when


class ServerEndpoint:
    """The server side of one UDP socket: any number of sessions (up to MAX_SESSIONS).

    Feed it `datagram_received(data, addr, now)` and `timer(now)` (at `next_deadline()`);
    give it stream bytes with `send_stream(session_id, data, now)`; after each batch of calls,
    send what `datagrams_to_send()` returns and handle what `events()` returns.
    """

    def __init__(self, cookie_key: Optional[bytes] = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        # A fresh random key per process: cookies from before a restart are worthless.
        self._cookie_key = cookie_key or secrets.token_bytes(32)
        self.idle_timeout = idle_timeout    # a peer silent this long is gone (IDLE_TIMEOUT)
        self._sessions: Dict[int, _ServerSession] = {}
        self._by_token: Dict[bytes, _ServerSession] = {}
        self._by_hello: Dict[Tuple, _ServerSession] = {}   # (addr, nonce): repeat ACCEPT
        self._unconfirmed = 0
        self._unvalidated: Dict[Address, _UnvalidatedAddress] = {}
        self._pending_count = 0
        self._probe_bucket: Optional[TokenBucket] = None
        self._next_id = 1
        self._now = 0.0
        # Sessions with something to flush: a dict as an ordered set, so that the order of
        # datagrams_to_send() is reproducible.
        self._dirty: Dict[_ServerSession, None] = {}
        self._heap: List[Tuple[float, int]] = []
        self._out: List[Tuple[bytes, Address]] = []
        self._events: List[Event] = []
        # Sessions whose buffers may have changed size since touched_sessions() was last
        # called (a datagram or stream bytes for them), for the reactor's memory accounting.
        self._touched: Dict[int, None] = {}
        self.dropped = 0                # datagrams ignored (malformed, unknown token, ...)

    # --- the interface ---------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram from `addr`. Anything malformed or unknown is dropped silently."""
        self._now = now
        size = len(data)
        unvalidated = self._unvalidated.get(addr)
        if unvalidated is not None:
            unvalidated.received += size
        if not HEADER_SIZE <= size <= MAX_DATAGRAM or data[0] != VERSION:
            self.dropped += 1
            return
        _, kind, _, sacks, token, seq, ack, window, length = HEADER.unpack_from(data)
        if HEADER_SIZE + length > size or (kind == DATA and not length):
            self.dropped += 1               # (decode()'s rules, inline: this is the hot path)
            return
        body = data[HEADER_SIZE:HEADER_SIZE + length]
        if token == ZERO_TOKEN:
            if kind == HELLO:
                self._on_hello(data, body, addr, now)
            elif kind == KNOCK and unvalidated is not None:
                self._send_probes(unvalidated, now)
            else:
                self.dropped += 1
            return
        session = self._by_token.get(token)
        if session is None or kind not in _SESSION_TYPES:
            self.dropped += 1               # a forged or stale token: no answer at all
            return
        if not session.confirmed:
            session.confirmed = True
            self._unconfirmed -= 1
            self._events.append(SessionOpened(session.session_id, session.source))
        if kind == ECHO:
            self._on_echo(session, body)
        session.handle(kind, sacks, seq, ack, window, body, now)
        self._touched[session.session_id] = None
        if session.delivered:
            sid = session.session_id
            self._events.extend(StreamData(sid, chunk) for chunk in session.delivered)
            session.delivered.clear()
        self._touch(session)

    def send_stream(self, session_id: int, data: bytes, now: float) -> bool:
        """Queue stream bytes for a session. False if there is no such open session; a session
        whose unacknowledged bytes would pass SEND_BUFFER_CAP is reset and closed instead."""
        self._now = now
        session = self._sessions.get(session_id)
        if session is None or session.closed is not None or session.close_requested:
            return False
        if not session.queue_or_abort(data):
            self._touch(session)
            return False
        self._dirty[session] = None
        self._touched[session_id] = None
        return True

    def set_receiving(self, session_id: int, receiving: bool) -> None:
        """Take the session's incoming stream (True, the default) or discard it, so that the
        peer retransmits it later (False: the app is not taking this session's input now)."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.stream.receiving = receiving

    def set_callback(self, session_id: int, addr: Optional[Address], now: float) -> None:
        """The chat layer parsed a JOIN naming `addr` (None: "my source address", see
        `callback_address`). Call it before queueing the JOIN's reply. The stream moves there
        once the address is validated; until then new stream data waits."""
        self._now = now
        session = self._sessions.get(session_id)
        if session is None or session.closed is not None:
            return
        if session.pending is not None and session.pending.addr == addr:
            return
        self._drop_pending(session)
        if addr is None or addr in session.validated:
            session.dest = session.source if addr is None else addr
        elif self._pending_count >= MAX_PENDING_CALLBACKS:
            self._events.append(CallbackFailed(session_id, addr, "too many pending callbacks"))
        else:
            session.pending = _PendingCallback(addr, secrets.token_bytes(CHALLENGE_SIZE), now)
            self._pending_count += 1
            state = self._unvalidated.get(addr)
            if state is None:
                state = self._unvalidated[addr] = _UnvalidatedAddress(now)
            state.sessions[session] = None
            session.stream.ack_pending = True    # tell the client now (FLAG_CALLBACK_PENDING)
        self._touch(session)

    def close_session(self, session_id: int, now: float) -> None:
        """Close after everything queued has been delivered and acknowledged (DISCONNECT)."""
        self._now = now
        session = self._sessions.get(session_id)
        if session is not None and session.closed is None:
            session.close_requested = True
            self._touch(session)

    def abort_session(self, session_id: int, reason: str, now: float) -> None:
        """Close now, discarding what is queued; the peer gets RESET."""
        self._now = now
        session = self._sessions.get(session_id)
        if session is not None:
            session.abort(reason)
            self._touch(session)

    def timer(self, now: float) -> None:
        """Run every timer that is due (retransmission, keepalive, timeouts)."""
        self._now = now
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:       # take the due entries first: handling them
            due.append(heapq.heappop(heap))     # pushes new ones, never run in this call
        for when, sid in due:
            session = self._sessions.get(sid)
            if session is None or session.registered != when:
                continue                    # stale entry
            session.registered = float("inf")
            if not session.confirmed and now >= session.accepted_at + UNCONFIRMED_TIMEOUT:
                self._remove(session)       # never opened: nothing to report
                continue
            pending = session.pending
            if pending is not None and now >= pending.deadline:
                self._drop_pending(session)
                self._events.append(CallbackFailed(sid, pending.addr, "not validated in time"))
            elif pending is not None and now >= pending.nudge_at:
                pending.nudge_at = now + KNOCK_INTERVAL
                session.stream.ack_pending = True
            session.on_timer(now)
            self._touch(session)

    def next_deadline(self) -> Optional[float]:
        """The time at which `timer()` should next be called, or None if never."""
        heap = self._heap
        while heap:
            when, sid = heap[0]
            session = self._sessions.get(sid)
            if session is not None and session.registered == when:
                return when
            heapq.heappop(heap)
        return None

    def datagrams_to_send(self, now: Optional[float] = None) -> List[Tuple[bytes, Address]]:
        """Every datagram owed now, each with its destination, in order."""
        if now is not None:
            self._now = now
        now = self._now
        out = self._out
        dirty, self._dirty = self._dirty, {}
        for session in dirty:
            if session.session_id not in self._sessions:
                continue
            pending = session.pending
            session.flush(now, out, session.dest, session.source,
                          FLAG_CALLBACK_PENDING if pending is not None else 0,
                          hold_new=pending is not None)
            if session.closed is not None:
                self._finish(session)
            else:
                self._schedule(session)
        self._out = []
        return out

    def events(self) -> List[Event]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def buffered_bytes(self, session_id: Optional[int] = None) -> int:
        """Bytes held for one session (or all): unacknowledged output plus out-of-order input.
        For the reactor's global memory budget."""
        if session_id is not None:
            session = self._sessions.get(session_id)
            return 0 if session is None else (session.stream.send_buffered()
                                              + session.stream.held_bytes)
        return sum(s.stream.send_buffered() + s.stream.held_bytes
                   for s in self._sessions.values())

    def session_buffers(self, session_id: int) -> Tuple[int, int]:
        """(unacknowledged output, out-of-order input held) of one session, in bytes; (0, 0)
        if there is no such session."""
        session = self._sessions.get(session_id)
        if session is None:
            return 0, 0
        return session.stream.send_buffered(), session.stream.held_bytes

    def touched_sessions(self) -> List[int]:
        """The sessions whose buffers may have changed size since the last call."""
        touched, self._touched = self._touched, {}
        return list(touched)

    def session_ids(self) -> List[int]:
        return list(self._sessions)

    def session_stats(self, session_id: int) -> Dict[str, object]:
        """A session's numbers (window, RTT, retransmissions), for tests and logs."""
        session = self._sessions[session_id]
        return _stats(session, dest=session.dest, source=session.source,
                      callback_pending=session.pending is not None)

    @property
    def unconfirmed_count(self) -> int:
        return self._unconfirmed

    @property
    def pending_callback_count(self) -> int:
        return self._pending_count

    # --- handshake -------------------------------------------------------------------------

    def _cookie(self, addr: Address, nonce: bytes, stamp: int) -> bytes:
        when = COOKIE_TIME.pack(stamp & 0xFFFFFFFF)
        message = when + nonce + repr(tuple(addr)).encode("utf-8")
        return when + hmac.new(self._cookie_key, message, hashlib.sha256).digest()[:MAC_SIZE]

    def _cookie_ok(self, cookie: bytes, addr: Address, nonce: bytes, now: float) -> bool:
        (stamp,) = COOKIE_TIME.unpack_from(cookie)
        age = (int(now) & 0xFFFFFFFF) - stamp
        if not 0 <= age <= COOKIE_LIFETIME:
            return False
        return hmac.compare_digest(cookie, self._cookie(addr, nonce, stamp))

    def _on_hello(self, data: bytes, body: bytes, addr: Address, now: float) -> None:
        if len(data) != HELLO_SIZE or len(body) not in (NONCE_SIZE, NONCE_SIZE + COOKIE_SIZE):
            self.dropped += 1
            return
        nonce = bytes(body[:NONCE_SIZE])
        session = self._by_hello.get((addr, nonce))
        if session is not None:                     # our ACCEPT was lost: say it again
            if not session.confirmed:
                session.accepted_at = now
            self._out.append((encode(ACCEPT, session.token, body=nonce), addr))
            return
        cookie = bytes(body[NONCE_SIZE:])
        if not cookie or not self._cookie_ok(cookie, addr, nonce, now):
            # Stateless: whatever HELLO this is, the answer is a fresh cookie, 60 bytes for
            # 1 200 received, and nothing is remembered.
            fresh = self._cookie(addr, nonce, int(now))
            self._out.append((encode(RETRY, body=nonce + fresh), addr))
            return
        if len(self._sessions) >= MAX_SESSIONS:
            self._out.append((encode(REJECT, body=nonce), addr))
            return
        if self._unconfirmed >= MAX_UNCONFIRMED_SESSIONS:
            # A burst of handshakes, not a full server: no answer, the client's next HELLO
            # (in 1 to 2 s) will find room.
            self.dropped += 1
            return
        token = secrets.token_bytes(TOKEN_SIZE)
        while token in self._by_token or token == ZERO_TOKEN:   # 2**-128: never, but cheap
            token = secrets.token_bytes(TOKEN_SIZE)
        session = _ServerSession(self._next_id, token, addr, nonce, now, self.idle_timeout)
        self._next_id += 1
        self._sessions[session.session_id] = session
        self._by_token[token] = session
        self._by_hello[(addr, nonce)] = session
        self._unconfirmed += 1
        self._out.append((encode(ACCEPT, token, body=nonce), addr))
        self._schedule(session)

    # --- callback validation ---------------------------------------------------------------

    def _send_probes(self, state: _UnvalidatedAddress, now: float) -> None:
        """A KNOCK from an address sessions are waiting on: PROBE it for each of them, within
        the 3x budget and both rate limits."""
        if self._probe_bucket is None:
            self._probe_bucket = TokenBucket(PROBE_GLOBAL_BURST, PROBE_GLOBAL_RATE, now)
        for session in list(state.sessions):
            probe = encode(PROBE, body=session.pending.challenge)
            if state.sent + len(probe) > AMPLIFICATION_FACTOR * state.received:
                return
            if not state.bucket.take(now) or not self._probe_bucket.take(now):
                return
            state.sent += len(probe)
            self._out.append((probe, session.pending.addr))

    def _on_echo(self, session: _ServerSession, body: bytes) -> None:
        pending = session.pending
        if pending is None or not hmac.compare_digest(bytes(body[:CHALLENGE_SIZE]),
                                                      pending.challenge):
            return
        self._drop_pending(session)
        session.validated.add(pending.addr)
        session.dest = pending.addr
        self._events.append(CallbackValidated(session.session_id, pending.addr))

    def _drop_pending(self, session: _ServerSession) -> None:
        pending = session.pending
        if pending is None:
            return
        session.pending = None
        self._pending_count -= 1
        state = self._unvalidated.get(pending.addr)
        if state is not None:
            state.sessions.pop(session, None)
            if not state.sessions:
                del self._unvalidated[pending.addr]

    # --- bookkeeping -----------------------------------------------------------------------

    def _touch(self, session: _ServerSession) -> None:
        """After any change to a session: finish it if it is over (its last datagram, RESET or
        CLOSE_ACK, is queued at once), or mark it for the next flush."""
        if session.closed is not None:
            self._finish(session)
        else:
            self._dirty[session] = None
            self._schedule(session)

    def _schedule(self, session: _ServerSession) -> None:
        """Make sure the timer heap has an entry no later than the session's deadline. Later
        deadlines need no new entry: the old one fires early and reschedules (lazy)."""
        when = session.deadline()
        if when < session.registered:
            session.registered = when
            heapq.heappush(self._heap, (when, session.session_id))
            if len(self._heap) > 4 * len(self._sessions) + 64:
                self._heap = [(s.registered, s.session_id) for s in self._sessions.values()
                              if s.registered != float("inf")]
                heapq.heapify(self._heap)

    def _finish(self, session: _ServerSession) -> None:
        """The session is over: send its last words, forget it, tell the chat layer."""
        if session.reset_due or session.close_ack_due:
            session.flush(self._now, self._out, session.dest, session.source)
        if session.confirmed:
            self._events.append(SessionClosed(session.session_id, session.closed or "closed"))
        self._remove(session)

    def _remove(self, session: _ServerSession) -> None:
        self._drop_pending(session)
        if self._sessions.pop(session.session_id, None) is None:
            return
        del self._by_token[session.token]
        self._by_hello.pop((session.source, session.nonce), None)
        if not session.confirmed:
            self._unconfirmed -= 1
        self._dirty.pop(session, None)


def _stats(session: _Session, **extra) -> Dict[str, object]:
    stream = session.stream
    stats = {"cwnd": stream.cwnd, "ssthresh": stream.ssthresh, "srtt": stream.srtt,
             "rto": stream.current_rto(), "in_flight": stream.in_flight,
             "retransmissions": stream.retransmissions,
             "fast_retransmits": stream.fast_retransmits, "rto_timeouts": stream.rto_timeouts,
             "cwnd_cuts": stream.cwnd_cuts, "send_buffered": stream.send_buffered(),
             "held_bytes": stream.held_bytes}
    stats.update(extra)
    return stats


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------

class ClientEndpoint:
    """The client side of one session with the server at `server_addr`.

    The handshake starts at construction. `send_stream()` may be called at once (bytes wait
    for the session). Datagrams from the server, whichever local socket got them (the session
    socket or a separate callback socket), go to `datagram_received()`; `datagrams_to_send()`
    are sent from the session socket, `knocks_to_send()` from the callback socket, all to
    `server_addr`. Events carry session_id 0.
    """

    SESSION_ID = 0

    def __init__(self, server_addr: Address, now: float) -> None:
        self.server_addr = server_addr
        self.state = "handshake"                 # then "open", then "closed"
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._cookie = b""
        self._retries_followed = 0
        self._hello_sends = 0
        self._handshake_started = now
        self._hello_sent_at = now
        self._hello_deadline = now
        self._session: Optional[_Session] = None
        self._early = bytearray()                # stream bytes queued before the session
        self._close_early = False
        self._confirmed = False                  # the server has answered with our token
        self._confirm_deadline: Optional[float] = None
        self._confirm_sends = 0
        self.callback_pending = False            # the server's FLAG_CALLBACK_PENDING
        self._knocks_sent = 0
        self._last_knock: Optional[float] = None
        self._now = now
        self._out: List[Tuple[bytes, Address]] = []
        self._knocks: List[bytes] = []
        self._events: List[Event] = []
        self._send_hello(now)

    # --- the interface ---------------------------------------------------------------------

    def send_stream(self, data: bytes, now: float) -> bool:
        """Queue stream bytes. False if the session is closed or closing; over
        SEND_BUFFER_CAP the session is reset and closed."""
        self._now = now
        if self.state == "closed" or self._close_early:
            return False
        if self._session is None:
            if len(self._early) + len(data) > SEND_BUFFER_CAP:
                self._end("send buffer over cap")
                return False
            self._early += data
            return True
        session = self._session
        if session.close_requested:
            return False
        if not session.queue_or_abort(data):
            self._flush_and_check(now)
            return False
        return True

    def close(self, now: float) -> None:
        """Close after everything queued is delivered (CLOSE, then CLOSE_ACK)."""
        self._now = now
        if self._session is not None:
            self._session.close_requested = True
        elif self.state == "handshake":
            self._close_early = True

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        self._now = now
        if addr != self.server_addr or self.state == "closed":
            return
        dgram = decode(data)
        if dgram is None:
            return
        if dgram.kind in (RETRY, ACCEPT, REJECT, PROBE):
            self._on_unsessioned(dgram, now)
            return
        session = self._session
        if session is None or dgram.token != session.token or dgram.kind not in _SESSION_TYPES:
            return
        self._confirmed = True
        self._confirm_deadline = None
        pending = bool(dgram.flags & FLAG_CALLBACK_PENDING)
        if pending and not self.callback_pending:
            self._knocks_sent = 0               # a new callback to validate
        self.callback_pending = pending
        session.handle(dgram.kind, dgram.sack_count, dgram.seq, dgram.ack, dgram.window,
                       dgram.body, now)
        self._maybe_knock(now)
        self._deliver()
        if session.closed is not None:
            self._flush_and_check(now)

    def timer(self, now: float) -> None:
        self._now = now
        if self.state == "handshake":
            if now >= self._hello_deadline:
                if now >= self._handshake_started + HANDSHAKE_TIMEOUT:
                    self._end("handshake timed out")
                else:
                    self._send_hello(now)
            return
        session = self._session
        if session is None or self.state == "closed":
            return
        if not self._confirmed and self._confirm_deadline is not None \
                and now >= self._confirm_deadline:
            session.ping_due = True
            self._confirm_sends += 1
            self._confirm_deadline = now + min(
                session.stream.current_rto() * (1 << min(self._confirm_sends, 8)),
                HANDSHAKE_MAX_INTERVAL)
        session.on_timer(now)
        self._maybe_knock(now)
        if session.closed is not None:
            self._flush_and_check(now)

    def next_deadline(self) -> Optional[float]:
        if self.state == "handshake":
            return self._hello_deadline
        if self.state == "closed" or self._session is None:
            return None
        when = self._session.deadline()
        if self._confirm_deadline is not None:
            when = min(when, self._confirm_deadline)
        if self.callback_pending and self._knocks_sent < MAX_KNOCKS \
                and self._last_knock is not None:
            when = min(when, self._last_knock + KNOCK_INTERVAL)
        return when

    def datagrams_to_send(self, now: Optional[float] = None) -> List[Tuple[bytes, Address]]:
        if now is not None:
            self._now = now
        session = self._session
        if session is not None and self.state == "open":
            session.flush(self._now, self._out, self.server_addr, self.server_addr)
            if session.closed is not None:
                self._end(session.closed)
        out, self._out = self._out, []
        return out

    def knocks_to_send(self) -> List[bytes]:
        """KNOCK datagrams to send from the callback socket to `server_addr` (empty if the
        server is not waiting for a callback)."""
        knocks, self._knocks = self._knocks, []
        return knocks

    def events(self) -> List[Event]:
        events, self._events = self._events, []
        return events

    def buffered_bytes(self) -> int:
        if self._session is None:
            return len(self._early)
        return self._session.stream.send_buffered() + self._session.stream.held_bytes

    def stats(self) -> Dict[str, object]:
        return {} if self._session is None else _stats(self._session)

    # --- internals -------------------------------------------------------------------------

    def _send_hello(self, now: float) -> None:
        body = self._nonce + self._cookie
        self._out.append((encode(HELLO, body=body, pad_to=HELLO_SIZE), self.server_addr))
        self._hello_sends += 1
        self._hello_sent_at = now
        self._hello_deadline = now + min(INITIAL_RTO * (1 << min(self._hello_sends - 1, 8)),
                                         HANDSHAKE_MAX_INTERVAL)
        if self._hello_deadline > self._handshake_started + HANDSHAKE_TIMEOUT:
            self._hello_deadline = self._handshake_started + HANDSHAKE_TIMEOUT

    def _on_unsessioned(self, dgram: Datagram, now: float) -> None:
        if dgram.kind == PROBE and self._session is not None and self.state == "open":
            if len(dgram.body) == CHALLENGE_SIZE:
                stream = self._session.stream
                self._out.append((encode(ECHO, self._session.token, 0, stream.recv_next,
                                         RECV_WINDOW, dgram.body), self.server_addr))
            return
        if self.state != "handshake" or dgram.body[:NONCE_SIZE] != self._nonce:
            return
        if dgram.kind == RETRY and len(dgram.body) == NONCE_SIZE + COOKIE_SIZE:
            if self._retries_followed >= MAX_RETRIES_FOLLOWED:
                return
            self._retries_followed += 1
            self._cookie = dgram.body[NONCE_SIZE:]
            self._hello_sends = 0
            self._send_hello(now)
        elif dgram.kind == ACCEPT and dgram.token != ZERO_TOKEN:
            session = self._session = _Session(dgram.token, now)
            if self._hello_sends == 1:          # Karn: only an unrepeated HELLO gives an RTT
                session.stream._rtt_sample(now - self._hello_sent_at)
            self.state = "open"
            session.stream.queue(bytes(self._early))
            self._early = bytearray()
            session.close_requested = self._close_early
            session.ping_due = True             # confirm the session even with nothing to say
            self._confirm_deadline = now + session.stream.current_rto()
            self._events.append(SessionOpened(self.SESSION_ID, self.server_addr))
        elif dgram.kind == REJECT:
            self._end("refused by server")

    def _maybe_knock(self, now: float) -> None:
        if not self.callback_pending or self._knocks_sent >= MAX_KNOCKS:
            return
        if self._last_knock is None or now >= self._last_knock + KNOCK_INTERVAL:
            self._knocks.append(encode(KNOCK))
            self._knocks_sent += 1
            self._last_knock = now

    def _deliver(self) -> None:
        session = self._session
        if session is not None and session.delivered:
            self._events.extend(StreamData(self.SESSION_ID, d) for d in session.delivered)
            session.delivered.clear()

    def _flush_and_check(self, now: float) -> None:
        session = self._session
        if session is not None:
            session.flush(now, self._out, self.server_addr, self.server_addr)
            if session.closed is not None:
                self._end(session.closed)

    def _end(self, reason: str) -> None:
        if self.state != "closed":
            self.state = "closed"
            self._events.append(SessionClosed(self.SESSION_ID, reason))
