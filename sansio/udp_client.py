"""The client side of the UDP transport: one session with one server, as a pure state machine
(docs/UDP.md sections 4 and 6, the client's part).

Boundary: no socket, no clock, as sansio/udp_server.py. The handshake starts at construction;
the driver hands in every datagram from the server with the time, sends what
`datagrams_to_send()` returns from the session socket and what `knocks_to_send()` returns from
its callback socket, and calls `timer()` at `next_deadline()`. The session itself (stream,
liveness, teardown) is sansio/udp_stream.py's, the same as the server's.

The client's own rules: HELLO at 0, 1, 3, 5 ... s until RETRY, ACCEPT or REJECT (at most
MAX_RETRIES_FOLLOWED RETRYs followed, given up after HANDSHAKE_TIMEOUT); then PING until the
server answers with the token (the confirmation); KNOCK while the server flags a callback as
pending (at most MAX_KNOCKS per callback); ECHO every PROBE's challenge through the session.
"""
import secrets
from typing import Dict, List, Optional, Tuple

from sansio.udp_session import Session
from sansio.udp_stream import (INITIAL_RTO, RECV_WINDOW, SEND_BUFFER_CAP, SessionClosed,
                               SessionEvent, SessionOpened, StreamData)
from sansio.udp_wire import (ACCEPT, CHALLENGE_SIZE, COOKIE_SIZE, ECHO, FLAG_CALLBACK_PENDING,
                             HELLO, HELLO_SIZE, KNOCK, KNOCK_INTERVAL, NONCE_SIZE, PROBE, REJECT,
                             RETRY, SESSION_TYPES, ZERO_TOKEN, Address, Datagram, decode, encode)

# --- limits (docs/UDP.md, "Limits") ----------------------------------------------------------
# The client KNOCKs at most this many times per callback (every KNOCK_INTERVAL), within the
# server's CALLBACK_TIMEOUT.
MAX_KNOCKS = 10
# The client's handshake: HELLO is repeated after INITIAL_RTO, doubling up to
# HANDSHAKE_MAX_INTERVAL (at 0, 1, 3, 5, 7 ... s; RETRY starts the doubling again), and the
# handshake is given up HANDSHAKE_TIMEOUT after it began. A 1 200-byte HELLO every 2 s costs
# nothing, and many tries make the handshake survive heavy loss (at 30 % loss each try has
# about an even chance). At most MAX_RETRIES_FOLLOWED RETRYs are followed.
HANDSHAKE_MAX_INTERVAL = 2.0
HANDSHAKE_TIMEOUT = 30.0
MAX_RETRIES_FOLLOWED = 3


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
        self._session: Optional[Session] = None
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
        self._events: List[SessionEvent] = []
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
        if not session.queue_or_abort(bytes(data)):   # (held, not copied: ours alone)
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
            # docs/UDP.md section 2: ACCEPT alone carries a token (the new one), the rest zero.
            if (dgram.token == ZERO_TOKEN) != (dgram.kind == ACCEPT):
                self._on_unsessioned(dgram, now)
            return
        session = self._session
        if session is None or dgram.token != session.token or dgram.kind not in SESSION_TYPES:
            return
        self._confirmed = True
        self._confirm_deadline = None
        pending = bool(dgram.flags & FLAG_CALLBACK_PENDING)
        if pending and not self.callback_pending:
            self._knocks_sent = 0               # a new callback to validate
        self.callback_pending = pending
        # The client hears only from the server's address (checked above) and takes any
        # datagram with its token as a sign of life; the server is stricter (section 7).
        session.handle(dgram.kind, dgram.sack_count, dgram.seq, dgram.ack, dgram.window,
                       dgram.body, now)
        session.heard(now)
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

    def events(self) -> List[SessionEvent]:
        events, self._events = self._events, []
        return events

    def buffered_bytes(self) -> int:
        if self._session is None:
            return len(self._early)
        return self._session.stream.send_buffered() + self._session.stream.held_bytes

    def stats(self) -> Dict[str, object]:
        return {} if self._session is None else self._session.stats()

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
        elif dgram.kind == ACCEPT:
            session = self._session = Session(dgram.token, now)
            if self._hello_sends == 1:          # Karn: only an unrepeated HELLO gives an RTT
                session.stream.rtt_sample(now - self._hello_sent_at)
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
