"""Attacks on the server's UDP transport that one address or a few can make (docs/UDP.md sections
4, 6, 7 and 9), each run against a real server and judged PASS or FAIL by what a user sees.

    python3 -m tools.attack_udp CASE [--port P] [options]       (see --help)

Without --port it starts its own server (Server.py of this checkout, or of --server-dir) on an
ephemeral port of 127.0.0.1 and stops it at the end, by its pid. Everything it sends goes to
127.0.0.1 from 127.0.0.0/8 addresses (several, for "many addresses": Linux answers for the whole
block on the loopback device). Every case is bounded by --seconds and by its counts.

Cases (CASE):
  lockout    --sessions sessions from --addresses addresses, kept alive by answering the
             server's PINGs, then --newcomers clients from other addresses each try to open a
             session and say HELO. PASS: every newcomer gets its HELO reply.
  replay     a client joins a room over UDP, chats, and vanishes; every datagram it sent is
             replayed from another address. PASS: a TCP member in the room sees it leave within
             the idle timeout (--idle-timeout, which a spawned server is given) of its silence.
  callbacks  --sessions sessions from --addresses addresses each JOIN naming a callback that
             never knocks, holding the pending-callback table; then a client from another
             address JOINs naming its own callback and knocks. PASS: the JOIN's reply reaches it
             at its callback (the callback was validated, not refused).

  stalled    --sessions UDP sessions from --addresses addresses join a room and then stop
             acknowledging, while a TCP member posts --chats chats of 60 000 characters there;
             a TCP probe chats in another room meanwhile. PASS: the server's memory (RSS, its
             peak) grows by at most 256 MiB and the probe's round trip p99 is at most 100 ms.
  held       --sessions UDP sessions from --addresses addresses each send segments 1..63 of a
             stream whose segment 0 never comes (held out of order), past a server started
             with --memory-budget; 200 idle TCP members are in a room. PASS: no idle TCP member
             is evicted (each sees a chat posted after the attack).
  flood      --flooders processes send HELLOs (--kind hello) or garbage (--kind garbage), --rate
             a second each or as fast as they can, from --addresses addresses for
             --flood-seconds, while an established
             UDP member chats with itself and newcomers from other addresses open sessions.
             PASS: the member's round trip p99 is at most 100 ms and every newcomer's HELO is
             answered within 1 s.

Output: one line of figures per step, then "PASS CASE: ..." or "FAIL CASE: ..."; exit status 0
on PASS, 1 on FAIL, 2 on a usage error.
"""
import argparse
import os
import select
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from sansio.udp_wire import MAX_PAYLOAD

from sansio.replies import ChatMessage, JoinedReply, ReplyReader
from sansio.udp_client import ClientEndpoint
from sansio.udp_stream import SessionClosed, StreamData
from sansio.udp_wire import (ACCEPT, ACK, DATA, HELLO, HELLO_SIZE, PING, REJECT, RESET, RETRY,
                             decode, encode)
from sansio.wire import LEFT_TEXT, chat_request, helo_request, join_request
from tools import kit

HOST = "127.0.0.1"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Handshakes one attacking address keeps in flight: under the server's 64 unconfirmed sessions
# per address (and all of them under its 256 in all), so none is left unanswered for long.
IN_FLIGHT_PER_ADDRESS = 48
IN_FLIGHT_TOTAL = 200
RESEND_AFTER = 1.0              # an unanswered HELLO or unacknowledged DATA goes again
MAX_SENDS = 6                   # ... at most this many times
STALL = 3.0                     # seconds without a new session: the attack has got what it can
TICK = 0.02                     # the longest select() wait
RECV_BATCH = 2000               # datagrams read from one socket per round
MIB = 1024 * 1024
RSS_GROWTH_LIMIT = 256 * MIB    # stalled: what the server's memory may grow by
P99_LIMIT = 0.100               # stalled, flood: the round trip a user may wait, 99 % of the time
HANDSHAKE_LIMIT = 1.0           # flood: a newcomer's HELO answered within this
BIG_CHAT = 60000                # characters of a stalled case's chat (a request under 64 KiB)
IDLE_MEMBERS = 200              # held: idle TCP members that must not be evicted


class Server(kit.ServerProcess):
    """kit.ServerProcess, but Server.py of `server_dir` (another checkout, to measure "before")."""

    def __init__(self, server_dir: str, options: List[str]) -> None:
        super().__init__(*options, server_dir=server_dir)


def udp_socket(pump: "Pump", ip: str) -> socket.socket:
    """A nonblocking UDP socket on `ip` and a port the kernel picks, closed by pump.close()."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pump.owned.append(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((ip, 0))
    sock.setblocking(False)
    return sock


class Pump:
    """One select() loop over every socket of a case: readers by socket, and tick functions
    called every round (timers, retransmissions)."""

    def __init__(self) -> None:
        self.readers: Dict[socket.socket, Callable[[bytes, tuple], None]] = {}
        self.ticks: List[Callable[[float], None]] = []
        self.owned: List[socket.socket] = []        # every socket of the case, to close

    def close(self) -> None:
        for sock in self.owned:
            sock.close()

    def run(self, done: Callable[[], bool], seconds: float) -> bool:
        """Until done() or `seconds` pass; says done()."""
        deadline = time.monotonic() + seconds
        while not done():
            now = time.monotonic()
            if now >= deadline:
                return done()
            ready, _, _ = select.select(list(self.readers), [], [], min(TICK, deadline - now))
            for sock in ready:
                for _ in range(RECV_BATCH):
                    try:
                        data, addr = sock.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:         # ICMP unreachable from an earlier send
                        continue
                    self.readers[sock](data, addr)
            now = time.monotonic()
            for tick in self.ticks:
                tick(now)
        return True


class Peer:
    """A well-behaved client (sansio.udp_client.ClientEndpoint) on a socket of its own address,
    with an optional callback socket; it keeps what it sent (for replays) and its stream."""

    def __init__(self, pump: Pump, server: tuple, ip: str, callback_ip: Optional[str] = None):
        self.server, self.pump = server, pump
        self.endpoint = ClientEndpoint(server, time.monotonic())
        self.sock = udp_socket(pump, ip)
        self.callback = udp_socket(pump, callback_ip) if callback_ip else None
        self.sent: List[bytes] = []
        self.stream = bytearray()
        self.data_at: Dict[str, int] = {"source": 0, "callback": 0}   # DATA datagrams received
        self.closed: Optional[str] = None
        self.answered_at: Optional[float] = None    # when its stream first brought something
        pump.readers[self.sock] = lambda data, addr: self._got(data, addr, "source")
        if self.callback is not None:
            pump.readers[self.callback] = lambda data, addr: self._got(data, addr, "callback")
        pump.ticks.append(self.tick)

    def _got(self, data: bytes, addr: tuple, where: str) -> None:
        if addr != self.server:
            return
        if len(data) > 32 and data[1] == DATA:
            self.data_at[where] += 1
        self.endpoint.datagram_received(data, addr, time.monotonic())

    def tick(self, now: float) -> None:
        if self.closed is not None:
            return
        deadline = self.endpoint.next_deadline()
        if deadline is not None and deadline <= now:
            self.endpoint.timer(now)
        for data, addr in self.endpoint.datagrams_to_send(now):
            self.sent.append(data)
            self.sock.sendto(data, addr)
        for data in self.endpoint.knocks_to_send():
            self.callback.sendto(data, self.server)
        for event in self.endpoint.events():
            if isinstance(event, StreamData):
                self.stream += event.data
                self.answered_at = self.answered_at or now
            elif isinstance(event, SessionClosed):
                self.closed = event.reason

    def send(self, data: bytes) -> None:
        self.endpoint.send_stream(data, time.monotonic())

    def vanish(self) -> None:
        """Stop at once, as a killed process: no CLOSE, no more datagrams."""
        self.closed = "vanished"
        for sock in (self.sock, self.callback):
            if sock is not None:
                self.pump.readers.pop(sock, None)
                sock.close()


class _Handshake:
    __slots__ = ("sent_at", "sends", "cookie")

    def __init__(self, now: float) -> None:
        self.sent_at, self.sends, self.cookie = now, 0, b""


class _RawSession:
    """One attacking session: its socket, the server's stream (in order only), and the one
    DATA it sends (None: none) until acknowledged."""
    __slots__ = ("sock", "recv_next", "data", "acked", "sent_at", "sends")

    def __init__(self, sock: int, data: Optional[bytes], now: float) -> None:
        self.sock, self.recv_next, self.data = sock, 0, data
        self.acked, self.sent_at, self.sends = False, now, 0


class Swarm:
    """Many sessions from a few addresses, made by hand: pipelined handshakes, PINGs answered,
    and optionally one DATA each (`first_data(i)`) resent until acknowledged."""

    def __init__(self, pump: Pump, server: tuple, ips: List[str],
                 first_data: Optional[Callable[[int], bytes]] = None,
                 held_segments: int = 0) -> None:
        self.server, self.first_data = server, first_data
        self.held_segments = held_segments      # sent out of order (1..N) once accepted
        self.stalled = False                    # True: acknowledge nothing any more
        self.socks = [udp_socket(pump, ip) for ip in ips]
        self.handshakes: Dict[Tuple[int, bytes], _Handshake] = {}    # by (socket, nonce)
        self.in_flight = [0] * len(ips)                              # handshakes per socket
        self.sessions: Dict[bytes, _RawSession] = {}                 # by token
        self.wanted = self.started = self.rejected = self.reset = self.given_up = 0
        self.last_new = time.monotonic()
        for index, sock in enumerate(self.socks):
            pump.readers[sock] = lambda data, addr, i=index: self._got(i, data, addr)
        pump.ticks.append(self.tick)

    def open(self, count: int) -> None:
        self.wanted += count

    def settled(self) -> bool:
        return (self.started >= self.wanted and not self.handshakes) \
            or time.monotonic() - self.last_new > STALL

    def all_acked(self) -> bool:
        return all(session.acked for session in self.sessions.values())

    def tick(self, now: float) -> None:
        for key, shake in list(self.handshakes.items()):
            if now - shake.sent_at >= RESEND_AFTER:
                if shake.sends >= MAX_SENDS:
                    self._forget(key)
                    self.given_up += 1
                else:
                    self._hello(key, shake, now)
        for index in range(len(self.socks)):
            while self.started < self.wanted and len(self.handshakes) < IN_FLIGHT_TOTAL \
                    and self.in_flight[index] < IN_FLIGHT_PER_ADDRESS:
                key = (index, b"%08d" % self.started)
                self.started += 1
                self.in_flight[index] += 1
                self.handshakes[key] = _Handshake(now)
                self._hello(key, self.handshakes[key], now)
        for token, session in self.sessions.items():
            if session.data is not None and not session.acked and session.sends < MAX_SENDS \
                    and now - session.sent_at >= RESEND_AFTER:
                self._send_data(token, session, now)

    def _forget(self, key: Tuple[int, bytes]) -> None:
        del self.handshakes[key]
        self.in_flight[key[0]] -= 1

    def _hello(self, key: Tuple[int, bytes], shake: _Handshake, now: float) -> None:
        shake.sent_at, shake.sends = now, shake.sends + 1
        hello = encode(HELLO, body=key[1] + shake.cookie, pad_to=HELLO_SIZE)
        self.socks[key[0]].sendto(hello, self.server)

    def _send_data(self, token: bytes, session: _RawSession, now: float) -> None:
        session.sent_at, session.sends = now, session.sends + 1
        data = encode(DATA, token, 0, session.recv_next, 64, session.data)
        self.socks[session.sock].sendto(data, self.server)

    def _got(self, index: int, data: bytes, addr: tuple) -> None:
        dgram = decode(data)
        if dgram is None or addr != self.server:
            return
        now = time.monotonic()
        if dgram.kind not in (RETRY, ACCEPT, REJECT):
            self._in_session(dgram)
            return
        key = (index, bytes(dgram.body[:8]))
        shake = self.handshakes.get(key)
        if shake is None:
            return
        if dgram.kind == RETRY:
            shake.cookie = bytes(dgram.body[8:28])
            self._hello(key, shake, now)
            return
        self._forget(key)
        if dgram.kind == REJECT:
            self.rejected += 1
        elif dgram.token not in self.sessions:
            self._accepted(index, dgram.token, now)

    def _accepted(self, index: int, token: bytes, now: float) -> None:
        first = self.first_data(len(self.sessions)) if self.first_data else None
        session = self.sessions[token] = _RawSession(index, first, now)
        self.last_new = now
        self.socks[index].sendto(encode(PING, token, 0, 0, 64), self.server)   # confirm it
        if first is not None:
            self._send_data(token, session, now)
        payload = b"h" * MAX_PAYLOAD
        for seq in range(1, 1 + self.held_segments):    # segment 0 never comes
            self.socks[index].sendto(encode(DATA, token, seq, 0, 64, payload), self.server)

    def _in_session(self, dgram) -> None:
        session = self.sessions.get(dgram.token)
        if session is None or self.stalled:
            return
        if dgram.kind == RESET:                 # reclaimed for somebody else
            self.reset += 1
            del self.sessions[dgram.token]
            return
        session.acked = session.acked or dgram.ack >= 1
        if dgram.kind == DATA and dgram.seq == session.recv_next:
            session.recv_next += 1
        if dgram.kind in (PING, DATA):          # answered, so the session stays alive
            ack = encode(ACK, dgram.token, 0, session.recv_next, 64)
            self.socks[session.sock].sendto(ack, self.server)


class TcpMember:
    """A member over TCP: its replies, read whenever the pump runs."""

    def __init__(self, pump: Pump, port: int, room: str, name: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5.0)
        pump.owned.append(self.sock)
        self.sock.setblocking(False)
        self.reader = ReplyReader()
        self.replies: List[object] = []
        self.sock.sendall(join_request(room, name))
        pump.ticks.append(self.tick)

    def tick(self, now: float) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        self.reader.receive_data(data)
        self.replies.extend(kit.replies(self.reader))

    def saw(self, text: str) -> bool:
        return any(isinstance(r, ChatMessage) and r.message == text for r in self.replies)


class RoundTrips:
    """A member chatting with itself in a room of its own, one chat at a time every `every`
    seconds: the round trip of each (sent to seen), as a user would feel it. `send` queues
    bytes for the server; `stream` is what has come back."""

    def __init__(self, pump: Pump, send: Callable[[bytes], None],
                 stream: Callable[[], bytes], every: float = 0.02) -> None:
        self.send, self.stream, self.every = send, stream, every
        self.reader = ReplyReader()
        self.seen = 0                           # bytes of stream() read
        self.joined: Optional[JoinedReply] = None
        self.sent_at: Optional[float] = None
        self.next_at = 0.0
        self.count = 0
        self.times: List[float] = []
        self.on = False                         # measuring: chats go out
        pump.ticks.append(self.tick)

    def tick(self, now: float) -> None:
        data = self.stream()
        if len(data) > self.seen:
            self.reader.receive_data(bytes(data[self.seen:]))
            self.seen = len(data)
            for reply in kit.replies(self.reader):
                if isinstance(reply, JoinedReply):
                    self.joined = reply
                elif isinstance(reply, ChatMessage) and self.sent_at is not None \
                        and reply.message == "rt%d" % self.count:
                    self.times.append(now - self.sent_at)
                    self.sent_at = None
        if self.on and self.joined is not None and self.sent_at is None and now >= self.next_at:
            self.count += 1
            self.sent_at, self.next_at = now, now + self.every
            self.send(chat_request(self.joined.ref, self.joined.join_id, "rt", "rt%d" % self.count))

    def p99(self) -> float:
        """The 99th percentile round trip; one still unanswered counts as its time so far."""
        times = sorted(self.times + ([time.monotonic() - self.sent_at] if self.sent_at else []))
        return times[min(len(times) - 1, int(len(times) * 0.99))] if times else float("inf")


class TcpStream:
    """A TCP connection whose bytes read are kept in `stream`, read whenever the pump runs."""

    def __init__(self, pump: Pump, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5.0)
        pump.owned.append(self.sock)
        self.sock.setblocking(False)
        self.stream = bytearray()
        pump.ticks.append(self.tick)

    def tick(self, now: float) -> None:
        try:
            self.stream += self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:                         # reset: the server dropped it
            self.stream += b"\0RESET"

    def send(self, data: bytes) -> None:
        """All of `data`, waiting for the kernel to take it (at most 5 s)."""
        self.sock.settimeout(5.0)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)


def tcp_round_trips(pump: Pump, port: int, room: str) -> RoundTrips:
    """RoundTrips over TCP, joined to `room`."""
    conn = TcpStream(pump, port)
    conn.send(join_request(room, "rt"))
    return RoundTrips(pump, conn.send, lambda: conn.stream)


def udp_round_trips(pump: Pump, server: tuple, ip: str, room: str) -> RoundTrips:
    """RoundTrips over UDP (a Peer from `ip`), joined to `room`."""
    peer = Peer(pump, server, ip)
    peer.send(join_request(room, "rt"))
    return RoundTrips(pump, peer.send, lambda: peer.stream)


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

def case_lockout(args, pump: Pump, port: int, say: Callable[[str], None]) -> Tuple[bool, str]:
    server = (HOST, port)
    swarm = Swarm(pump, server, ["127.0.0.%d" % (2 + i) for i in range(args.addresses)])
    swarm.open(args.sessions)
    started = time.monotonic()
    pump.run(swarm.settled, args.seconds / 2)
    say("attack: %d sessions held from %d addresses in %.2f s; %d REJECTed, %d unanswered"
        % (len(swarm.sessions), args.addresses, time.monotonic() - started, swarm.rejected,
           swarm.given_up))
    newcomers = [Peer(pump, server, "127.0.1.%d" % (1 + i)) for i in range(args.newcomers)]
    for i, peer in enumerate(newcomers):
        peer.send(helo_request("newcomer%d" % i))
    opened_before = swarm.started
    swarm.open(max(100, args.sessions // 10))       # and the attack goes on meanwhile
    started = time.monotonic()
    pump.run(lambda: all(p.stream or p.closed for p in newcomers), args.seconds / 2)
    took = time.monotonic() - started
    pump.run(swarm.settled, args.seconds / 4)
    served = sum(1 for p in newcomers if p.stream.startswith(b"HELO newcomer") and not p.closed)
    refused = sum(1 for p in newcomers if p.closed == "refused by server")
    say("newcomers: %d of %d served in %.2f s and still open after %d more attacking "
        "handshakes, %d refused; attack sessions reclaimed: %d"
        % (served, len(newcomers), took, swarm.started - opened_before, refused, swarm.reset))
    return served == len(newcomers), "%d of %d newcomers from other addresses served" % (
        served, len(newcomers))


def case_replay(args, pump: Pump, port: int, say: Callable[[str], None]) -> Tuple[bool, str]:
    server = (HOST, port)
    room = "attack-udp-replay"
    watcher = TcpMember(pump, port, room, "watcher")
    victim = Peer(pump, server, HOST)
    victim.send(join_request(room, "victim"))
    pump.run(lambda: b"JOINED_CHATROOM" in victim.stream, 10.0)
    reader = ReplyReader()
    reader.receive_data(bytes(victim.stream))
    joined = [r for r in kit.replies(reader) if isinstance(r, JoinedReply)]
    if not joined:
        return False, "the victim could not join over UDP"
    victim.send(chat_request(joined[0].ref, joined[0].join_id, "victim", "hello"))
    pump.run(lambda: watcher.saw("hello"), 10.0)
    captured = list(victim.sent)
    victim.vanish()
    silent = time.monotonic()
    left = LEFT_TEXT % "victim"
    replayer = udp_socket(pump, "127.0.0.66")
    sends = [0]

    def replay(now: float) -> None:
        if now - silent < args.replay_seconds and sends[0] < (now - silent) / 0.1:
            replayer.sendto(captured[sends[0] % len(captured)], server)
            sends[0] += 1
    pump.ticks.append(replay)
    limit = args.idle_timeout * 1.2 + 2.0
    pump.run(lambda: watcher.saw(left), min(args.seconds, args.replay_seconds + limit + 5))
    if not watcher.saw(left):
        return False, "no leave seen (replays for %.0f s, %d datagrams)" % (
            args.replay_seconds, sends[0])
    took = time.monotonic() - silent
    say("replayed %d captured datagrams from 127.0.0.66; leave announced %.1f s after the victim "
        "went silent (idle timeout %g s)" % (sends[0], took, args.idle_timeout))
    return took <= limit, "leave announced after %.1f s, limit %.1f s" % (took, limit)


def case_callbacks(args, pump: Pump, port: int, say: Callable[[str], None]) -> Tuple[bool, str]:
    server = (HOST, port)
    room = "attack-udp-callbacks"

    def join(i: int) -> bytes:
        return join_request(room, "hog%d" % i, "127.0.0.99", 20000 + i)
    swarm = Swarm(pump, server, ["127.0.0.%d" % (2 + i) for i in range(args.addresses)], join)
    swarm.open(args.sessions)
    started = time.monotonic()
    pump.run(lambda: swarm.settled() and swarm.all_acked(), 20.0)
    acked = sum(1 for session in swarm.sessions.values() if session.acked)
    say("attack: %d sessions from %d addresses, %d JOINs naming a silent callback acknowledged, "
        "in %.2f s" % (len(swarm.sessions), args.addresses, acked, time.monotonic() - started))
    legit = Peer(pump, server, "127.0.1.200", callback_ip="127.0.1.201")
    cb_port = legit.callback.getsockname()[1]
    legit.send(join_request(room, "legit", "127.0.1.201", cb_port))
    asked = time.monotonic()
    pump.run(lambda: b"JOINED_CHATROOM" in legit.stream, 9.0)
    took = time.monotonic() - asked
    say("legit: JOIN answered %s in %.2f s; DATA at its callback %d, at its source %d"
        % ("yes" if legit.stream else "no", took, legit.data_at["callback"],
           legit.data_at["source"]))
    ok = b"JOINED_CHATROOM" in legit.stream and legit.data_at["callback"] > 0
    return ok, "the newcomer's callback was %s" % ("validated" if ok else "not used")


def case_stalled(args, pump: Pump, port: int, say: Callable[[str], None]) -> Tuple[bool, str]:
    server = (HOST, port)
    room = "attack-udp-stalled"

    def join(i: int) -> bytes:
        return join_request(room, "stall%d" % i)
    swarm = Swarm(pump, server, ["127.0.0.%d" % (2 + i) for i in range(args.addresses)], join)
    swarm.open(args.sessions)
    pump.run(lambda: swarm.settled() and swarm.all_acked(), 30.0)
    probe = tcp_round_trips(pump, port, "attack-udp-probe")
    poster = TcpStream(pump, port)
    poster.send(join_request(room, "poster"))
    pump.run(lambda: b"JOINED_CHATROOM" in poster.stream and probe.joined is not None, 10.0)
    if probe.joined is None:
        return False, "the probe could not join"
    ref = int(poster.stream.split(b"ROOM_REF: ")[1].split(b"\n")[0])
    swarm.stalled = True
    rss_before = args.server.rss_kb() if args.server else None
    probe.on = True
    text = "x" * BIG_CHAT
    for i in range(args.chats):
        poster.send(chat_request(ref, 0, "poster", text))
        pump.run(lambda: False, 0.1)
    pump.run(lambda: False, 2.0)
    probe.on = False
    peak = args.server.status_kb("VmHWM") if args.server else None
    growth = (peak - rss_before) * 1024 if peak and rss_before else None
    say("attack: %d sessions from %d addresses joined and stalled; %d chats of %d characters "
        "posted" % (len(swarm.sessions), args.addresses, args.chats, BIG_CHAT))
    say("server: RSS %s, peak %s, growth %s; probe: %d round trips, p99 %.1f ms"
        % (_mib(rss_before and rss_before * 1024), _mib(peak and peak * 1024), _mib(growth),
           len(probe.times), probe.p99() * 1000))
    ok = growth is not None and growth <= RSS_GROWTH_LIMIT and probe.p99() <= P99_LIMIT
    return ok, "memory grew by %s (limit %s), probe p99 %.1f ms (limit %.0f ms)" % (
        _mib(growth), _mib(RSS_GROWTH_LIMIT), probe.p99() * 1000, P99_LIMIT * 1000)


def _mib(size: Optional[int]) -> str:
    return "n/a" if size is None else "%.0f MiB" % (size / MIB)


def case_held(args, pump: Pump, port: int, say: Callable[[str], None]) -> Tuple[bool, str]:
    server = (HOST, port)
    room = "attack-udp-held"
    idle = [TcpStream(pump, port) for _ in range(IDLE_MEMBERS)]
    for i, member in enumerate(idle):
        member.send(join_request(room, "idle%d" % i))
    poster = TcpStream(pump, port)
    poster.send(join_request(room, "poster"))
    pump.run(lambda: all(b"JOINED_CHATROOM" in m.stream for m in idle + [poster]), 20.0)
    swarm = Swarm(pump, server, ["127.0.0.%d" % (2 + i) for i in range(args.addresses)],
                  held_segments=63)
    swarm.open(args.sessions)
    pump.run(swarm.settled, 30.0)
    pump.run(lambda: False, 2.0)                # the server holds their segments, and evicts
    ref = int(poster.stream.split(b"ROOM_REF: ")[1].split(b"\n")[0])
    poster.send(chat_request(ref, 0, "poster", "still here?"))
    pump.run(lambda: all(b"still here?" in m.stream for m in idle), 10.0)
    kept = sum(1 for m in idle if b"still here?" in m.stream)
    opened = len(swarm.sessions) + swarm.reset
    say("attack: %d sessions from %d addresses, each sending 63 segments out of order "
        "(%.0f MiB in all); UDP sessions reset: %d" % (
            opened, args.addresses, opened * 63 * MAX_PAYLOAD / MIB, swarm.reset))
    say("idle TCP members still served: %d of %d" % (kept, len(idle)))
    return kept == len(idle), "%d of %d idle TCP members evicted" % (len(idle) - kept, len(idle))


def case_flood(args, pump: Pump, port: int, say: Callable[[str], None]) -> Tuple[bool, str]:
    server = (HOST, port)
    member = udp_round_trips(pump, server, HOST, "attack-udp-flood")
    pump.run(lambda: member.joined is not None, 10.0)
    if member.joined is None:
        return False, "the member could not join over UDP"
    flooders = start_flooders(args, port)
    try:
        member.on = True
        newcomers: List[Tuple[float, Peer]] = []
        started = time.monotonic()
        while time.monotonic() - started < args.flood_seconds:
            peer = Peer(pump, server, "127.0.1.%d" % (1 + len(newcomers)))
            peer.send(helo_request("newcomer%d" % len(newcomers)))
            newcomers.append((time.monotonic(), peer))
            pump.run(lambda: False, min(1.0, args.flood_seconds / 4))
        member.on = False
        pump.run(lambda: all(p.stream for _, p in newcomers), HANDSHAKE_LIMIT * 2)
    finally:
        sent = stop_flooders(flooders)
    took = [_answered_after(at, peer) for at, peer in newcomers]
    say("flood: %d %s datagrams in %.0f s from %d addresses (%.0f/s)" % (
        sent, args.kind, args.flood_seconds, args.addresses, sent / args.flood_seconds))
    say("member: %d round trips, p99 %.1f ms; newcomers: %s s" % (
        len(member.times), member.p99() * 1000, ", ".join("%.2f" % t for t in took)))
    worst = max(took) if took else float("inf")
    ok = member.p99() <= P99_LIMIT and worst <= HANDSHAKE_LIMIT
    return ok, "member p99 %.1f ms (limit %.0f ms), slowest newcomer %.2f s (limit %.0f s)" % (
        member.p99() * 1000, P99_LIMIT * 1000, worst, HANDSHAKE_LIMIT)


def _answered_after(asked: float, peer: Peer) -> float:
    return peer.answered_at - asked if peer.answered_at else float("inf")


def start_flooders(args, port: int) -> List[subprocess.Popen]:
    """--flooders processes, each sending from its share of --addresses for --flood-seconds."""
    procs = []
    for n in range(args.flooders):
        ips = ["127.0.2.%d" % (1 + i) for i in range(args.addresses) if i % args.flooders == n]
        command = [sys.executable, "-m", "tools.attack_udp", "_flood", args.kind, str(port),
                   str(args.flood_seconds), str(args.rate)] + ips
        procs.append(subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL))
    return procs


def stop_flooders(procs: List[subprocess.Popen]) -> int:
    """Wait for each (they stop by themselves), killing one that does not; datagrams sent."""
    sent = 0
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=10.0)
            sent += int(out.strip() or 0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return sent


def flood_main(kind: str, port: int, seconds: float, rate: float, ips: List[str]) -> int:
    """One flooding process: datagrams to 127.0.0.1:port from `ips`, `rate` a second (0: as
    fast as it can), for `seconds`; prints how many it sent."""
    socks = []
    for ip in ips:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, 0))
        socks.append(sock)
    if kind == "hello":
        data = encode(HELLO, body=b"floodnon", pad_to=HELLO_SIZE)
    else:
        data = os.urandom(200)
    target, sent = (HOST, port), 0
    started = time.monotonic()
    deadline = started + seconds
    try:
        while time.monotonic() < deadline:
            if rate and sent > (time.monotonic() - started) * rate:
                time.sleep(0.001)
                continue
            for _ in range(16):
                for sock in socks:
                    try:
                        sock.sendto(data, target)
                        sent += 1
                    except OSError:
                        pass
    finally:
        for sock in socks:
            sock.close()
    print(sent, flush=True)
    return 0


CASES = {"lockout": case_lockout, "replay": case_replay, "callbacks": case_callbacks,
         "stalled": case_stalled, "held": case_held, "flood": case_flood}
DEFAULTS = {"lockout": (10000, 1), "callbacks": (1100, 10), "replay": (0, 0),
            "stalled": (2000, 10), "held": (2000, 10), "flood": (0, 60)}


def parse(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tools.attack_udp",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--port", type=int, help="attack the server on 127.0.0.1:PORT "
                        "(default: start one)")
    parser.add_argument("--server-dir", default=REPO_ROOT, help="the checkout whose Server.py "
                        "is started (default: this one)")
    parser.add_argument("--sessions", type=int, help="attacking sessions (lockout 10000, "
                        "callbacks 1100; at most 20000)")
    parser.add_argument("--addresses", type=int, help="attacking addresses, 127.0.0.2 on "
                        "(lockout 1, callbacks 10; at most 200)")
    parser.add_argument("--newcomers", type=int, default=6, help="lockout: clients from other "
                        "addresses (default 6)")
    parser.add_argument("--idle-timeout", type=float, default=45.0, help="replay: the server's "
                        "UDP idle timeout (a started server is given it; default 45)")
    parser.add_argument("--replay-seconds", type=float, help="replay: how long the replays go "
                        "on (default twice the idle timeout)")
    parser.add_argument("--chats", type=int, default=40, help="stalled: chats posted "
                        "(default 40)")
    parser.add_argument("--memory-budget", type=int, help="held: the started server's budget "
                        "in MiB (default its own, 128)")
    parser.add_argument("--kind", choices=("hello", "garbage"), default="hello",
                        help="flood: what is sent (default hello)")
    parser.add_argument("--flooders", type=int, default=2, help="flood: sending processes "
                        "(default 2)")
    parser.add_argument("--flood-seconds", type=float, default=10.0, help="flood: how long "
                        "(default 10)")
    parser.add_argument("--rate", type=float, default=0.0, help="flood: datagrams a second "
                        "per process (default 0: as fast as it can)")
    parser.add_argument("--seconds", type=float, default=240.0, help="bound on the whole run")
    args = parser.parse_args(argv)
    sessions, addresses = DEFAULTS[args.case]
    args.sessions = min(args.sessions if args.sessions is not None else sessions, 20000)
    args.addresses = max(1, min(args.addresses if args.addresses is not None else addresses,
                                200))
    if args.replay_seconds is None:
        args.replay_seconds = 2 * args.idle_timeout
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_flood"]:                  # one of case flood's sending processes
        return flood_main(argv[1], int(argv[2]), float(argv[3]), float(argv[4]), argv[5:])
    args = parse(argv)
    kit.raise_nofile_limit()
    server = None
    if args.port is None:
        options = ["--udp-idle-timeout", str(args.idle_timeout)] if args.case == "replay" else []
        if args.memory_budget:
            options += ["--memory-budget", str(args.memory_budget)]
        server = Server(args.server_dir, options)
    args.server = server
    port = args.port if server is None else server.port
    pump = Pump()
    try:
        ok, summary = CASES[args.case](args, pump, port, lambda line: print(line, flush=True))
    finally:
        pump.close()
        if server is not None:
            server.stop()
    print("%s %s: %s" % ("PASS" if ok else "FAIL", args.case, summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
