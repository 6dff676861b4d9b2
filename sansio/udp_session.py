"""A UDP session at either end: its ReliableStream (sansio/udp_stream.py) plus liveness and
teardown (docs/UDP.md sections 7 and 8; the limits are udp_stream's). The endpoints
(sansio/udp_server.py, sansio/udp_client.py) hand it the datagrams carrying its token and the
time, and take out the datagrams it owes. No socket, no clock, no addresses of its own.
"""
from typing import Dict, List, Optional

from sansio.udp_stream import (IDLE_TIMEOUT, KEEPALIVE_FRACTION, MAX_CLOSE_SENDS, MAX_RTO,
                               MAX_SEQ, PING_FRACTION, RECV_WINDOW, SEND_BUFFER_CAP,
                               ReliableStream, parse_sacks)
from sansio.udp_wire import (ACK, CLOSE, CLOSE_ACK, DATA, ECHO, HEADER, PING, RESET, SACK_RANGE,
                             VERSION, Address, encode)



class Session:
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
               now: float) -> bool:
        """Take one datagram carrying the session's token. Returns whether it *advances* the
        session: a new segment in the window, an ack of segments not acknowledged before, or a
        PING (docs/UDP.md section 7). It does not touch `last_recv`: the endpoint decides, with
        the datagram's address, whether to call `heard()`."""
        stream = self.stream
        if kind == DATA:
            advanced = stream.is_new(seq) if body else False
            advanced = stream.on_ack(ack, window, (), now) > 0 or advanced
            if body:
                data = stream.receive(seq, body)
                if data and not self.close_requested:
                    self.delivered.append(data)
            return advanced
        if kind == ACK:
            return stream.on_ack(ack, window, parse_sacks(body, sacks) if sacks else (),
                                 now) > 0
        if kind in (PING, ECHO):
            stream.ack_pending = True        # PING and ECHO are answered with an ACK
            return stream.on_ack(ack, window, (), now) > 0 or kind == PING
        if kind == CLOSE:
            if seq == stream.recv_next:      # we have every segment the peer sent
                self.close_ack_due = True
                self.closed = "closed by peer"
        elif kind == CLOSE_ACK:
            if self.close_sends:
                self.closed = "closed"
        elif kind == RESET:
            self.closed = "reset by peer"
        return False

    def heard(self, now: float) -> None:
        """The peer is alive: the idle and keepalive timers start again from `now`."""
        self.last_recv = now

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

    def stats(self, **extra) -> Dict[str, object]:
        """The session's numbers (window, RTT, retransmissions) and `extra`, for tests and logs."""
        stream = self.stream
        stats = {"cwnd": stream.cwnd, "ssthresh": stream.ssthresh, "srtt": stream.srtt,
                 "rto": stream.current_rto(), "in_flight": stream.in_flight,
                 "retransmissions": stream.retransmissions,
                 "fast_retransmits": stream.fast_retransmits, "rto_timeouts": stream.rto_timeouts,
                 "cwnd_cuts": stream.cwnd_cuts, "send_buffered": stream.send_buffered(),
                 "held_bytes": stream.held_bytes}
        stats.update(extra)
        return stats
