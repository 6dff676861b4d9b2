"""The server side of the UDP transport: one UDP socket, any number of sessions, as a pure state
machine (docs/UDP.md sections 4, 6 and 9).

Boundary: this module opens no socket and reads no clock (the h11 "sans-IO" design). Whoever
drives it hands in datagrams with their source address and the current time, and takes out
datagrams to send with their destination, stream bytes delivered in order, events, and the time
at which `timer()` wants to be called next.

    datagram_received(data, addr, now) --> sessions --> events(): SessionOpened, StreamData,
    send_stream(session_id, data, now) -->             SessionClosed, CallbackValidated, ...
    timer(now)                         -->          datagrams_to_send(): [(bytes, addr), ...]
                                                    next_deadline(): when to call timer()

What this module adds to the sessions of sansio/udp_stream.py, in the order a session meets it:

1. Handshake (stateless cookie; QUIC Retry, RFC 9000 s8.1; DTLS HelloVerifyRequest). The
   client sends HELLO, padded to 1 200 bytes. The server answers RETRY carrying a cookie
   (sansio/udp_wire.py, make_cookie) and keeps nothing for that address. The client repeats
   HELLO with the cookie; a cookie that checks out proves the client receives at its source
   address, and only then does the server create a session and answer ACCEPT with a 128-bit
   random token. The token, not the source address, names the session in every later datagram:
   someone off the path who knows a JOIN_ID and a callback address cannot act for the session.

2. Callback validation (anti-reflection; sansio/udp_callbacks.py). JOIN_CHATROOM's
   CLIENT_IP/PORT may name another address for the session's stream; the chat layer passes it
   to `set_callback()`. No stream byte goes there until that address has shown it wants them
   (KNOCK, PROBE, ECHO). Meanwhile new stream data waits (at most CALLBACK_TIMEOUT), then the
   session's stream carries on to its validated source address.

3. Many addresses (docs/UDP.md sections 4, 7, 9). Sessions, handshakes and pending callbacks
   are capped per IP (policy/admission.py); a full table makes room for a newcomer at the cost
   of the IP holding the most. Only datagrams from the session's own address that advance it
   keep it alive, so replayed datagrams cannot.

Plugging it into a reactor (one UDP socket bound to the TCP address and port):

    on readable:  for each recvfrom(): endpoint.datagram_received(data, addr, now)
    on a tick:    endpoint.timer(now) once next_deadline() has passed
    then:         for each event: SessionOpened -> a new connection (connection_made);
                  StreamData -> the Framer (data_received); SessionClosed -> connection_lost.
                  The chat layer's actions: Send -> send_stream(); Close -> close_session();
                  Callback(conn_id, address) -> set_callback(address), BEFORE the
                  JOINED_CHATROOM reply it comes with is queued.
    finally:      sendto() every datagrams_to_send(); take events() again (a flush can end a
                  session); sleep at most until next_deadline().
    budget:       buffered_bytes() counts toward the global memory bound.
"""
import heapq
import itertools
import secrets
from typing import Dict, List, Optional, Set, Tuple, Union

from policy.admission import REFUSE, WAIT, Admission
from policy.bucket import TokenBucket
from policy.fairqueue import FairQueue
from sansio.udp_callbacks import (CallbackFailed, CallbackValidated, Callbacks,
                                  PendingCallback)
from sansio.udp_session import Session
from sansio.udp_stream import IDLE_TIMEOUT, SessionClosed, SessionOpened, StreamData
from sansio.udp_wire import (ACCEPT, ACK, COOKIE_SIZE, DATA, ECHO, FLAG_CALLBACK_PENDING,
                             HEADER, HEADER_SIZE, HELLO, HELLO_SIZE, KNOCK, KNOCK_INTERVAL,
                             MAX_DATAGRAM, NONCE_SIZE, REJECT, RETRY, SESSION_TYPES, TOKEN_SIZE,
                             VERSION, ZERO_TOKEN, Address, cookie_ok, encode, make_cookie)

# --- limits (docs/UDP.md, "Limits") ----------------------------------------------------------
# Sessions per server endpoint. Each costs at most ~1.1 MB (send cap + receive window) and a
# few hundred bytes when idle; 10 000 matches the TCP side's descriptor budget.
MAX_SESSIONS = 10000
# Sessions accepted but not yet confirmed (no datagram with their token seen yet), and how long
# after the last ACCEPT they may stay so. Only a client that passed the cookie check gets here,
# but it could still open sessions it never uses. A valid HELLO finding the table full gets no
# answer (it is retried), unlike one finding MAX_SESSIONS (REJECT). 30 s = the client's
# HANDSHAKE_TIMEOUT (sansio/udp_client.py): a client still trying to confirm is never forgotten
# under it.
MAX_UNCONFIRMED_SESSIONS = 256
UNCONFIRMED_TIMEOUT = 30.0
# Per address (the IP alone: ports cost an attacker nothing), so one host cannot take a whole
# table. Sessions: above the few thousand the project's tools and benchmarks open from one
# address, yet three addresses are needed to fill MAX_SESSIONS (reclaiming does the rest); past
# it, REJECT. Unconfirmed: a quarter of the table (a client confirms within a round trip);
# past it, no answer. (Pending callbacks: sansio/udp_callbacks.py.)
MAX_SESSIONS_PER_ADDRESS = 4096
MAX_UNCONFIRMED_PER_ADDRESS = 64
# HELLOs are answered at the flush (the driver flushes once a tick), not as they are read, so
# established sessions' datagrams never wait behind a handshake; they are taken fairly, one per
# address per round, and addresses left out go first at the next flush (policy/fairqueue.py),
# so 60 addresses sending 146 000 HELLOs/s between them cannot crowd out a newcomer's. An
# answer costs ~10 us and its sendto() as much: at most HANDSHAKE_RATE a second (a fiftieth
# of a core, 1 000 sessions opened a second), in bursts of HANDSHAKE_BURST (a client opening
# a thousand sessions at once is served at once), at most HANDSHAKES_PER_FLUSH in one flush
# (~5 ms). The queue holds what one tick's reads can bring (transport/udp.py,
# UDP_READS_PER_TICK); a HELLO past any of these is dropped (the client sends it again).
HANDSHAKE_RATE = 2000.0
HANDSHAKE_BURST = 2048
HANDSHAKES_PER_FLUSH = 256
HELLO_QUEUE = 1024


Event = Union[SessionOpened, StreamData, SessionClosed, CallbackValidated, CallbackFailed]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class _ServerSession(Session):
    def __init__(self, session_id: int, token: bytes, source: Address, nonce: bytes,
                 now: float, idle_timeout: float) -> None:
        super().__init__(token, now, idle_timeout)
        self.session_id = session_id
        self.source = source            # validated by the cookie; ACKs and control go here
        self.dest = source              # where the stream goes: source or a validated callback
        self.validated: Set = {source}
        self.pending: Optional[PendingCallback] = None
        self.nonce = nonce
        self.confirmed = False          # a datagram with the token has arrived
        self.proven = False             # it has delivered stream data (a request)
        self.ping_unanswered = False    # our keepalive PING went out; its answer advances us
        self.accepted_at = now      # the last ACCEPT sent
        self.registered = float("inf")  # the deadline we have an entry for in the timer heap

    def maybe_heard(self, addr: Address, kind: int, advanced: bool, now: float) -> bool:
        """Liveness (docs/UDP.md section 7): a datagram from `addr` that `advanced` the session
        or not. Only the session's own addresses count, and only what a replay cannot bring:
        something new, or the one answer to our PING. True if the peer was heard from."""
        if addr != self.source and addr != self.dest:
            return False
        if not advanced and not (kind == ACK and self.ping_unanswered):
            return False
        self.heard(now)
        self.ping_unanswered = False
        return True

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
        self._hellos: FairQueue[str, Tuple[bytes, bytes, Address]] = FairQueue(
            HELLO_QUEUE, HANDSHAKES_PER_FLUSH)
        self._handshakes = TokenBucket(HANDSHAKE_BURST, HANDSHAKE_RATE, 0.0)
        self._admission: Admission[_ServerSession] = Admission(
            MAX_SESSIONS_PER_ADDRESS, MAX_UNCONFIRMED_SESSIONS, MAX_UNCONFIRMED_PER_ADDRESS)
        self.callbacks = Callbacks()
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
        self.reclaimed = 0              # sessions and callbacks ended to make way for others

    # --- the interface ---------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram from `addr`. Anything malformed or unknown is dropped silently."""
        self._now = now
        size = len(data)
        unvalidated = self.callbacks.unvalidated.get(addr)      # (inline: the hot path)
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
                self._hellos.offer(addr[0], (data, body, addr))     # answered at the flush
            elif kind == KNOCK and unvalidated is not None:
                unvalidated.send_probes(self.callbacks.probe_bucket, now, self._out)
            else:
                self.dropped += 1
            return
        session = self._by_token.get(token)
        if session is None or kind not in SESSION_TYPES:
            self.dropped += 1               # a forged or stale token: no answer at all
            return
        advanced = not session.confirmed
        if advanced:
            session.confirmed = True
            self._admission.confirmed(session.source[0], session)
            self._events.append(SessionOpened(session.session_id, session.source))
        if kind == ECHO:
            advanced = self._on_echo(session, body) or advanced
        advanced = session.handle(kind, sacks, seq, ack, window, body, now) or advanced
        if session.maybe_heard(addr, kind, advanced, now):
            self._admission.heard(session.source[0], session)
        self._touched[session.session_id] = None
        if session.delivered:
            if not session.proven:
                session.proven = True
                self._admission.proved(session.source[0], session)
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
        self._dirty[session] = None         # (not touched: the caller knows what it queued)
        return True

    def set_receiving(self, session_id: int, receiving: bool) -> None:
        """Take the session's incoming stream (True, the default) or discard it, so that the
        peer retransmits it later (False: the app is not taking this session's input now)."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.stream.receiving = receiving

    def set_callback(self, session_id: int, addr: Optional[Address], now: float) -> None:
        """The chat layer parsed a JOIN naming `addr` (None: "my source address", see
        sansio.wire.maybe_callback_address). Call it before queueing the JOIN's reply. The
        stream moves there once the address is validated; until then new stream data waits."""
        self._now = now
        session = self._sessions.get(session_id)
        if session is None or session.closed is not None:
            return
        if session.pending is not None and session.pending.addr == addr:
            return
        callbacks = self.callbacks
        callbacks.drop(session)
        if addr is None or addr in session.validated:
            session.dest = session.source if addr is None else addr
            self._touch(session)
            return
        refusal = callbacks.maybe_refusal(session.source[0])
        if refusal is None and callbacks.full and not self._reclaim_callback():
            refusal = "too many pending callbacks"
        if refusal is not None:
            self._events.append(CallbackFailed(session_id, addr, refusal))
        else:
            callbacks.add(session, addr, now)
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

    def timer(self, now: float, limit: Optional[int] = None) -> None:
        """Run every timer that is due (retransmission, keepalive, timeouts), or with `limit`,
        at most that many (the rest stay due: next_deadline() says so)."""
        self._now = now
        heap = self._heap
        due: List[Tuple[float, int]] = []
        while heap and heap[0][0] <= now and (limit is None or len(due) < limit):
            due.append(heapq.heappop(heap))     # due ones first: the new ones they push wait
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
                self.callbacks.drop(session)
                self._events.append(CallbackFailed(sid, pending.addr, "not validated in time"))
            elif pending is not None and now >= pending.nudge_at:
                pending.nudge_at = now + KNOCK_INTERVAL
                session.stream.ack_pending = True
            session.on_timer(now)
            self._touch(session)

    def next_deadline(self) -> Optional[float]:
        """The time at which `timer()` should next be called, or None if never; with HELLOs
        waiting, no later than HANDSHAKE_RATE lets the next be answered (at the flush)."""
        heap, when = self._heap, None      # type: List[Tuple[float, int]], Optional[float]
        while heap:
            first, sid = heap[0]
            session = self._sessions.get(sid)
            if session is not None and session.registered == first:
                when = first
                break
            heapq.heappop(heap)
        if self._hellos.size:
            ready = self._handshakes.at + self._handshakes.seconds_until(1.0)
            when = ready if when is None else min(when, ready)
        return when

    def datagrams_to_send(self, now: Optional[float] = None,
                          limit: Optional[int] = None) -> List[Tuple[bytes, Address]]:
        """Every datagram owed now, each with its destination, in order; with `limit`, those
        of at most that many sessions (the rest come first next time: `flush_pending`)."""
        if now is not None:
            self._now = now
        now = self._now
        if self._hellos.size:
            bucket = self._handshakes.refill(now)
            hellos = self._hellos.take(min(HANDSHAKES_PER_FLUSH, int(bucket.tokens)))
            bucket.tokens -= len(hellos)
            for data, body, addr in hellos:
                self._on_hello(data, body, addr, now)
        out = self._out
        dirty = self._dirty
        if limit is None or len(dirty) <= limit:
            self._dirty = {}
        else:                               # the first `limit`; the rest keep their places
            dirty = dict.fromkeys(itertools.islice(dirty, limit))
            for session in dirty:
                del self._dirty[session]
        for session in dirty:
            if session.session_id not in self._sessions:
                continue
            if session.ping_due:
                session.ping_unanswered = True
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

    @property
    def flush_pending(self) -> bool:
        """Sessions owe datagrams now that the last datagrams_to_send() left for the next (its
        `limit`). (HELLOs left waiting are next_deadline()'s.)"""
        return bool(self._dirty)

    def events(self) -> List[Event]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def buffered_bytes(self, session_id: Optional[int] = None) -> int:
        """Bytes held for one session (or all): unacknowledged output plus out-of-order input.
        For the reactor's global memory budget."""
        sessions = self._sessions.values() if session_id is None else \
            [self._sessions[session_id]] if session_id in self._sessions else []
        return sum(s.stream.send_buffered() + s.stream.held_bytes for s in sessions)

    def session_counts(self, session_id: int) -> Optional[Tuple[int, int]]:
        """(stream bytes the peer acknowledged without a gap, out-of-order input held) of one
        session, in bytes; None if there is no such session. What a session holds of its
        output is what was queued less the first: the reactor's memory accounting."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        stream = session.stream
        return stream.acked_offset(), stream.held_cost()

    def touched_sessions(self) -> List[int]:
        """The sessions whose buffers may have changed size since the last call."""
        touched, self._touched = self._touched, {}
        return list(touched)

    def session_ids(self) -> List[int]:
        return list(self._sessions)

    def session_stats(self, session_id: int) -> Dict[str, object]:
        """A session's numbers (window, RTT, retransmissions), for tests and logs."""
        session = self._sessions[session_id]
        return session.stats(dest=session.dest, source=session.source,
                      callback_pending=session.pending is not None)

    @property
    def unconfirmed_count(self) -> int:
        return self._admission.unconfirmed

    @property
    def pending_callback_count(self) -> int:
        return self.callbacks.count

    # --- handshake -------------------------------------------------------------------------

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
        if not cookie or not cookie_ok(self._cookie_key, cookie, addr, nonce, now):
            # Stateless: whatever HELLO this is, the answer is a fresh cookie, 60 bytes for
            # 1 200 received, and nothing is remembered.
            fresh = make_cookie(self._cookie_key, addr, nonce, int(now))
            self._out.append((encode(RETRY, body=nonce + fresh), addr))
            return
        refusal = self._admission.refusal(addr[0])
        if refusal is None and len(self._sessions) >= MAX_SESSIONS \
                and not self._reclaim_session():
            refusal = REFUSE
        if refusal is not None:
            if refusal == WAIT:             # a burst of handshakes: the next HELLO retries
                self.dropped += 1
            else:
                self._out.append((encode(REJECT, body=nonce), addr))
            return
        token = secrets.token_bytes(TOKEN_SIZE)
        while token in self._by_token or token == ZERO_TOKEN:   # 2**-128: never, but cheap
            token = secrets.token_bytes(TOKEN_SIZE)
        session = _ServerSession(self._next_id, token, addr, nonce, now, self.idle_timeout)
        self._next_id += 1
        self._sessions[session.session_id] = session
        self._by_token[token] = session
        self._by_hello[(addr, nonce)] = session
        self._admission.added(addr[0], session)
        self._out.append((encode(ACCEPT, token, body=nonce), addr))
        self._schedule(session)

    # --- callback validation ---------------------------------------------------------------

    def _on_echo(self, session: _ServerSession, body: bytes) -> bool:
        """An ECHO: True if its challenge validated the session's pending callback."""
        pending = session.pending
        if not self.callbacks.echo_ok(session, body):
            return False
        self.callbacks.drop(session)
        session.validated.add(pending.addr)
        session.dest = pending.addr
        self._events.append(CallbackValidated(session.session_id, pending.addr))
        return True

    # --- reclaiming ------------------------------------------------------------------------
    # A full table must not lock out everybody else: a newcomer takes the place of something
    # held by the address that holds the most (so an address flooding the table pays for its
    # newcomers, and an address with one session keeps it while any other holds more).

    def _reclaim_session(self) -> bool:
        """End one session to make way for a new one: of the address holding the most, the one
        never proven (no stream data delivered; the oldest of those), else the one heard from
        longest ago. RESET goes to it; the chat layer sees it closed. False if there is none."""
        victim = self._admission.maybe_victim()
        if victim is None:
            return False
        victim.abort("reclaimed for a newcomer")
        self.reclaimed += 1
        self._finish(victim)
        return True

    def _reclaim_callback(self) -> bool:
        """Give up the oldest pending callback of the address holding the most (CallbackFailed
        for it; its stream stays where it was). False if none is pending."""
        victim = self.callbacks.maybe_victim()
        if victim is None:
            return False
        addr = victim.pending.addr
        self.callbacks.drop(victim)
        self.reclaimed += 1
        self._events.append(CallbackFailed(victim.session_id, addr, "reclaimed for a newcomer"))
        self._touch(victim)
        return True

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
        self.callbacks.drop(session)
        if self._sessions.pop(session.session_id, None) is None:
            return
        del self._by_token[session.token]
        self._by_hello.pop((session.source, session.nonce), None)
        self._admission.removed(session.source[0], session, session.confirmed)
        self._dirty.pop(session, None)

