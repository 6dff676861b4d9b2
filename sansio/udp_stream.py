"""One UDP session's reliable, ordered byte stream, the same at both ends, and the limits and
events of the session around it (sansio/udp_session.py: liveness and teardown) (docs/UDP.md
sections 5, 7 and 8).

Boundary: no socket, no clock, no addresses of its own; the endpoints (sansio/udp_server.py,
sansio/udp_client.py) hand in datagrams and the time and take out datagrams to send. What a
session gives the chat protocol is what a TCP connection gives it: the same text messages, as a
byte stream, every byte exactly once and in order.

1. Delivery (ideas from KCP and TCP; RFC 6298, RFC 9002). The stream is cut into segments of at
   most MAX_PAYLOAD bytes, numbered 0, 1, 2... Each DATA datagram is one segment. The receiver
   delivers segments in order, holds out-of-order ones (at most RECV_WINDOW of them), and
   acknowledges with a cumulative ACK (the next segment it needs) plus SACK ranges of what it
   holds beyond that. The sender keeps at most `cwnd` segments in flight (a congestion window
   counted in datagrams), and retransmits a segment when its retransmission timer (RTO,
   RFC 6298) expires, when three segments sent after it have been acknowledged while it was
   not (KCP's fast retransmit), or when one sent after it was acknowledged 9/8 of an RTT after
   it was sent (RFC 9002's time threshold). A duplicate ACK, carrying nothing new, never causes
   a retransmission (TFTP's Sorcerer's Apprentice bug, RFC 1350 / RFC 1123 s4.2.3.1).

2. Liveness. A session that has heard nothing from its peer for KEEPALIVE_IDLE sends PING
   (which the peer answers with ACK) every PING_INTERVAL; one that has heard nothing for
   IDLE_TIMEOUT is over: SessionClosed, which the chat layer treats like a broken TCP
   connection. What counts as hearing from it is the endpoint's call (`heard()`): the client
   takes any datagram with its token, the server only those that advance the session
   (`handle()` says which) from the session's own address.

3. Teardown. A close sends everything queued first; once the peer has acknowledged every byte,
   CLOSE goes out and the session ends at CLOSE_ACK (or after MAX_CLOSE_SENDS tries). RESET
   ends a session at once (a send buffer over its cap, for instance).

Layout: the limits; the events both endpoints report; ReliableStream (sequence numbers, acks,
windows, RTO, RTT). Session (a stream plus liveness and teardown) is sansio/udp_session.py.
"""
import bisect
import collections
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Tuple, Union

from sansio.udp_wire import MAX_PAYLOAD, SACK_RANGE, Address

# --- limits (docs/UDP.md, "Limits") ----------------------------------------------------------
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
# What a held out-of-order segment costs besides its payload: its bytes object's header (33
# bytes) and its entry in the dict that holds it (measured with tracemalloc, Python 3.11: 1 236
# bytes per held 1 168-byte segment). The memory budget counts it (held_cost()).
HELD_SEGMENT_OVERHEAD = 72
# SACK ranges per ACK: 16 x 8 bytes. The lowest ranges are the ones fast retransmit needs.
MAX_SACK_RANGES = 16
# Segment numbers are 32 bits and never wrap: a session that would need more (4 TiB) ends.
MAX_SEQ = 2 ** 32 - 1 - RECV_WINDOW


# ---------------------------------------------------------------------------------------------
# Events, at either end (the server adds its own, sansio/udp_server.py)
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


# What either endpoint reports (the server adds CallbackValidated and CallbackFailed: its Event).
SessionEvent = Union[SessionOpened, StreamData, SessionClosed]


# ---------------------------------------------------------------------------------------------
# The reliable stream: segments, acks, windows, RTO
# ---------------------------------------------------------------------------------------------

class _Segment:
    """One numbered piece of the outgoing stream, kept until the peer acknowledges it: `data`
    is its bytes, or a memoryview of the bytes object queued (shared, never copied); `start`
    is where it begins in the stream."""

    __slots__ = ("seq", "data", "start", "sent_at", "sends", "skips", "in_flight", "order")

    def __init__(self, seq: int, data: Any, start: int) -> None:
        self.seq = seq
        self.data = data
        self.start = start
        self.sent_at = 0.0
        self.sends = 0          # how many times sent; Karn: sample the RTT only when 1
        self.skips = 0          # later segments acked since it was last sent (fast retransmit)
        self.in_flight = False  # sent and believed to be in the network (not acked, not lost)
        self.order = 0          # the stream's transmission count when it was last sent


class ReliableStream:
    """Both directions of one session's stream, with no addresses and no clock of its own.

    Sending: `queue()` appends bytes, by reference (a bytes object queued in many streams is
    held once, and each segment of it is a memoryview of it); `poll(now)` returns the segments
    to (re)send now, as the windows allow; `on_ack()` takes the peer's cumulative ack and SACK
    ranges; `on_timer(now)` runs the retransmission timer. Receiving: `receive()` takes one segment and returns the
    bytes that are now in order; `ack_pending` says an ACK is owed.
    """

    def __init__(self) -> None:
        # --- sending
        # Queued, not yet cut into segments: the objects queue() was given, the first from
        # `send_head` on; `send_pending` bytes in all; `cut` bytes of the stream were cut.
        self.send_chunks: Deque[Any] = collections.deque()
        self.send_head = 0
        self.send_pending = 0
        self.cut = 0
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

    def queue(self, data: Any) -> None:
        """Append `data` (bytes, or a bytearray nobody changes any more) to the stream; it is
        held, not copied."""
        if data:
            self.send_chunks.append(data)
            self.send_pending += len(data)

    def send_buffered(self) -> int:
        """Bytes the peer has not acknowledged yet (queued or in segments)."""
        return self.send_pending + self.unacked_bytes

    def acked_offset(self) -> int:
        """How many bytes from the stream's start the peer has acknowledged without a gap: what
        lies before is held by no segment any more."""
        for seg in self.unacked.values():   # (the lowest seq first)
            return seg.start
        return self.cut

    def all_acked(self) -> bool:
        return not self.send_pending and not self.unacked

    def _cut(self) -> Any:
        """The next segment's bytes, taken from the queue: a memoryview of a queued bytes
        object when the segment lies inside one (a broadcast's bytes stay one object however
        many streams hold them), else a copy joined from the chunks."""
        chunks, head = self.send_chunks, self.send_head
        first = chunks[0]
        if type(first) is bytes and len(first) - head >= MAX_PAYLOAD:
            if len(first) == MAX_PAYLOAD:
                data: Any = chunks.popleft()
            else:
                data = memoryview(first)[head:head + MAX_PAYLOAD]
                head += MAX_PAYLOAD
                if head == len(first):
                    chunks.popleft()
                    head = 0
        else:
            parts = []
            want = MAX_PAYLOAD
            while want and chunks:
                first = chunks[0]
                part = first[head:head + want]
                parts.append(part)
                want -= len(part)
                head += len(part)
                if head == len(first):
                    chunks.popleft()
                    head = 0
            data = b"".join(parts)
        self.send_head = head
        self.send_pending -= len(data)
        return data

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
        while budget > 0 and self.send_pending and not hold_new and self.next_seq < limit:
            data = self._cut()
            seg = _Segment(self.next_seq, data, self.cut)
            self.cut += len(data)
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

    def on_ack(self, ack: int, window: int, ranges, now: float) -> int:
        """The peer has every segment below `ack`, and those in the [start, end) `ranges`.
        Only newly acknowledged segments have any effect: a duplicate ACK changes nothing and
        so can never trigger a retransmission (the Sorcerer's Apprentice lesson). Returns how
        many segments it newly acknowledged."""
        if ack > self.next_seq or ack < self.peer_ack:
            return 0                        # acks what we never sent, or older than we know
        self.peer_window = window
        newly = self._take_acked(ack, ranges)
        if not newly:
            return 0
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
                self.rtt_sample(now - latest.sent_at)
                self.backoff = 0            # Karn: keep the backed-off RTO until a sample
        self._detect_losses(newly, now)
        # RFC 6298 s5.3: restart the timer when new data is acknowledged.
        self.rto_deadline = now + self.current_rto() if self.in_flight else None
        return len(newly)

    def _take_acked(self, ack: int, ranges) -> List[_Segment]:
        """Remove from `unacked` and return the segments this ACK newly acknowledges: those
        below `ack` (which becomes `peer_ack`), then those in its SACK ranges."""
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
        return newly

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

    def rtt_sample(self, rtt: float) -> None:
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

    def is_new(self, seq: int) -> bool:
        """True if segment `seq` is inside the receive window and neither delivered nor held:
        a segment this end has not received before (docs/UDP.md section 7, "advances")."""
        return self.recv_next <= seq < self.recv_next + RECV_WINDOW and seq not in self.held

    def receive(self, seq: int, payload: bytes) -> bytes:
        """Take one segment; return the stream bytes it makes deliverable (b"" if none).
        Segments already received and segments beyond the window are dropped, but still
        acknowledged; so is every segment while `receiving` is False."""
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

    def held_cost(self) -> int:
        """What the segments held out of order cost in memory, in bytes."""
        return self.held_bytes + len(self.held) * HELD_SEGMENT_OVERHEAD

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


def parse_sacks(body: bytes, count: int) -> List[Tuple[int, int]]:
    count = min(count, MAX_SACK_RANGES, len(body) // SACK_RANGE.size)
    return [SACK_RANGE.unpack_from(body, i * SACK_RANGE.size) for i in range(count)]
