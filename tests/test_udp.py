"""The UDP transport (sansio/udp.py): the wire, the handshake, callback validation, delivery over a
seeded lossy link with a simulated clock, timers and limits; and one smoke test on real sockets.

Everything but the last test runs in memory: a `Net` carries datagrams between a ClientEndpoint
and a ServerEndpoint with loss, duplication, delay and reordering drawn from a seeded random
generator, and `Sim` advances a simulated clock straight to the next event, so a minute of
protocol time costs microseconds and every failure replays from its seed.
"""
import heapq
import random
import select
import socket
import time
import unittest
from collections import defaultdict

from sansio import udp
from sansio.udp import (ACCEPT, ACK, CLOSE, DATA, ECHO, HELLO, KNOCK, PING, PROBE, RESET, RETRY,
                     REJECT, CallbackFailed, CallbackValidated, ClientEndpoint, ReliableStream,
                     ServerEndpoint, SessionClosed, SessionOpened, StreamData)

SERVER = ("10.0.0.1", 9000)
CLIENT = ("10.0.0.2", 40000)
CALLBACK = ("10.0.0.2", 40001)     # the client's second socket
VICTIM = ("10.9.9.9", 53)          # somebody else's address

MAX_STEPS = 200000                 # bound on every simulation loop


class Net:
    """A lossy, duplicating, reordering link shared by every address."""

    def __init__(self, rng, loss=0.0, dup=0.0, delay=0.01, jitter=0.0):
        self.rng, self.loss, self.dup, self.delay, self.jitter = rng, loss, dup, delay, jitter
        self.heap = []
        self.count = 0
        self.cut = False           # drop everything (a vanished peer)

    def send(self, now, src, dst, data):
        if self.cut or self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            self.count += 1
            when = now + self.delay + self.rng.random() * self.jitter
            heapq.heappush(self.heap, (when, self.count, src, dst, bytes(data)))

    def next_time(self):
        return self.heap[0][0] if self.heap else None

    def due(self, now):
        out = []
        while self.heap and self.heap[0][0] <= now:
            out.append(heapq.heappop(self.heap)[2:])
        return out


class Sim:
    """One client and one server over a Net, with a simulated clock, and a record of what each
    side delivered and of the bytes the server exchanged with every address."""

    def __init__(self, seed=0, loss=0.0, dup=0.0, delay=0.01, jitter=0.0, start=1000.0):
        self.rng = random.Random(seed)
        self.net = Net(self.rng, loss, dup, delay, jitter)
        self.now = start
        self.server = ServerEndpoint()
        self.client = ClientEndpoint(SERVER, self.now)
        self.server_got = defaultdict(bytearray)
        self.client_got = bytearray()
        self.server_events = []
        self.client_events = []
        self.sid = None
        self.on_server_event = None      # hook(sim, event)
        self.sent_to = defaultdict(int)          # server -> addr, bytes
        self.received_from = defaultdict(int)    # addr -> server, bytes
        self.datagrams_to = defaultdict(int)
        self.validated = set()
        self.over_budget = []            # (addr, sent, received) seen before validation
        self.log = []                    # (time, src, dst, type) of everything sent
        self.wakeups = []                # extra times step() must stop at (scheduled sends)
        self.max_datagram = 0

    # --- moving datagrams ---

    def _server_sends(self, data, addr):
        self.max_datagram = max(self.max_datagram, len(data))
        kind = data[1]
        if kind == ACCEPT:
            self.validated.add(addr)     # the cookie proved this address
        self.sent_to[addr] += len(data)
        self.datagrams_to[addr] += 1
        if addr not in self.validated and \
                self.sent_to[addr] > udp.AMPLIFICATION_FACTOR * self.received_from[addr]:
            self.over_budget.append((addr, self.sent_to[addr], self.received_from[addr]))
        self.log.append((self.now, SERVER, addr, kind))
        self.net.send(self.now, SERVER, addr, data)

    def client_sends(self, data, src=CLIENT):
        self.max_datagram = max(self.max_datagram, len(data))
        self.log.append((self.now, src, SERVER, data[1]))
        self.net.send(self.now, src, SERVER, data)

    def flush(self):
        for data, addr in self.client.datagrams_to_send(self.now):
            self.assertEqual(addr, SERVER)
            self.client_sends(data)
        for data in self.client.knocks_to_send():
            self.client_sends(data, CALLBACK)
        for event in self.client.events():
            self.client_events.append((self.now, event))
            if isinstance(event, StreamData):
                self.client_got += event.data
        for _ in range(2):      # what the events' hook sends, and events from the flush
            for event in self.server.events():
                self.server_events.append((self.now, event))
                if isinstance(event, SessionOpened):
                    self.sid = event.session_id
                elif isinstance(event, StreamData):
                    self.server_got[event.session_id] += event.data
                elif isinstance(event, CallbackValidated):
                    self.validated.add(event.addr)
                if self.on_server_event is not None:
                    self.on_server_event(self, event)
            for data, addr in self.server.datagrams_to_send(self.now):
                self._server_sends(data, addr)

    @staticmethod
    def assertEqual(a, b):
        assert a == b, (a, b)

    def deliver(self, src, dst, data):
        if dst == SERVER:
            self.received_from[src] += len(data)
            self.server.datagram_received(data, src, self.now)
        elif dst in (CLIENT, CALLBACK):
            self.client.datagram_received(data, src, self.now)
        # anything else (a victim) just receives it: counted in datagrams_to

    def step(self):
        """Deliver what is due, run due timers, flush; then move the clock to the next event.
        False when nothing is left to happen."""
        for src, dst, data in self.net.due(self.now):
            self.deliver(src, dst, data)
        for endpoint in (self.server, self.client):
            deadline = endpoint.next_deadline()
            if deadline is not None and deadline <= self.now:
                endpoint.timer(self.now)
        self.flush()
        times = [t for t in (self.net.next_time(), self.server.next_deadline(),
                             self.client.next_deadline()) if t is not None]
        times += [t for t in self.wakeups if t > self.now]
        if not times:
            return False
        self.now = max(self.now, min(times))
        return True

    def run_until(self, predicate, timeout=120.0):
        """Step until predicate() holds; False if simulated `timeout` seconds pass first."""
        end = self.now + timeout
        for _ in range(MAX_STEPS):
            if predicate():
                return True
            if self.now > end or not self.step():
                return predicate()
        raise AssertionError("simulation did not settle in %d steps" % MAX_STEPS)

    def advance(self, seconds):
        """Run for `seconds` of simulated time."""
        end = self.now + seconds
        for _ in range(MAX_STEPS):
            times = [t for t in (self.net.next_time(), self.server.next_deadline(),
                                 self.client.next_deadline()) if t is not None]
            if not times or min(times) > end:
                self.now = end
                return
            self.step()
        raise AssertionError("simulation did not settle in %d steps" % MAX_STEPS)

    def open(self, timeout=60.0):
        ok = self.run_until(lambda: self.sid is not None and self.client.state == "open",
                            timeout)
        assert ok, "handshake did not complete"
        return self.sid

    def closed_events(self, events):
        return [e for _, e in events if isinstance(e, SessionClosed)]


def open_sessions(server, count, now):
    """Open `count` confirmed sessions on `server` by hand, from distinct addresses."""
    sids = []
    for i in range(count):
        addr, nonce = ("10.3.0.%d" % (i % 250), 3000 + i), b"%08d" % i
        server.datagram_received(udp.encode(HELLO, body=nonce, pad_to=1200), addr, now)
        cookie = udp.decode(server.datagrams_to_send(now)[0][0]).body[8:]
        server.datagram_received(udp.encode(HELLO, body=nonce + cookie, pad_to=1200), addr, now)
        token = udp.decode(server.datagrams_to_send(now)[0][0]).token
        server.datagram_received(udp.encode(PING, token, window=64), addr, now)
        server.datagrams_to_send(now)
        (opened,) = server.events()
        sids.append(opened.session_id)
    return sids


def random_bytes(rng, size):
    return bytes(rng.getrandbits(8) for _ in range(size)) if size < 64 else \
        rng.getrandbits(8 * size).to_bytes(size, "big")


# ---------------------------------------------------------------------------------------------
# The wire
# ---------------------------------------------------------------------------------------------

class WireTests(unittest.TestCase):

    def test_header_is_32_bytes_big_endian_in_the_documented_order(self):
        token = bytes(range(16))
        data = udp.encode(DATA, token, seq=0x01020304, ack=0x05060708, window=64, body=b"hi",
                          flags=1, sack_count=0)
        self.assertEqual(udp.HEADER_SIZE, 32)
        self.assertEqual(data[:4], bytes([0xC1, 5, 1, 0]))
        self.assertEqual(data[4:20], token)
        self.assertEqual(data[20:32], bytes.fromhex("01020304 05060708 0040 0002"))
        self.assertEqual(data[32:], b"hi")
        parsed = udp.decode(data + bytes(10))      # padding is ignored
        self.assertEqual((parsed.kind, parsed.seq, parsed.ack, parsed.window, parsed.body),
                         (DATA, 0x01020304, 0x05060708, 64, b"hi"))

    def test_decode_refuses_what_is_not_ours(self):
        good = udp.encode(PING, bytes(range(16)))
        self.assertIsNone(udp.decode(b"\xC2" + good[1:]))                 # other version
        self.assertIsNone(udp.decode(good[:31]))                            # short
        self.assertIsNone(udp.decode(good[:30] + b"\x00\x05"))              # body past end
        self.assertIsNone(udp.decode(good + bytes(udp.MAX_DATAGRAM)))       # too long
        self.assertIsNone(udp.decode(udp.encode(DATA, bytes(range(16)))))   # DATA, no bytes

    def test_an_empty_data_is_dropped_without_an_ack_or_keeping_the_session_alive(self):
        server = udp.ServerEndpoint(idle_timeout=10.0)
        (sid,) = open_sessions(server, 1, 100.0)
        token = server._sessions[sid].token
        addr = ("10.3.0.0", 3000)
        for t in range(1, 30):              # an empty DATA every 0.5 s, past the idle timeout
            now = 100.0 + t * 0.5
            server.datagram_received(udp.encode(DATA, token, window=64), addr, now)
            self.assertEqual([d for d in server.datagrams_to_send(now)
                              if udp.decode(d[0]).kind == udp.ACK], [], "no ACK for it")
            server.timer(now)
            server.datagrams_to_send(now)
        closed = [e for e in server.events() if isinstance(e, SessionClosed)]
        self.assertEqual([e.session_id for e in closed], [sid], "it did not keep the session")

    def test_callback_address_from_join_fields(self):
        self.assertIsNone(udp.callback_address("0", "0"))
        self.assertIsNone(udp.callback_address("10.1.2.3", "0"))
        self.assertEqual(udp.callback_address(" 10.1.2.3 ", "5000 "), ("10.1.2.3", 5000))
        self.assertEqual(udp.callback_address("::1", "7"), ("::1", 7))
        for ip, port in (("example.com", "1"), ("10.1.2.3", "65536"), ("10.1.2.3", "-1"),
                         ("10.1.2.3", "x")):
            with self.assertRaises(ValueError):
                udp.callback_address(ip, port)


# ---------------------------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------------------------

class HandshakeTests(unittest.TestCase):

    def hello(self, cookie=b"", nonce=b"N" * 8):
        return udp.encode(HELLO, body=nonce + cookie, pad_to=udp.HELLO_SIZE)

    def retry_cookie(self, server, addr, now, nonce=b"N" * 8):
        server.datagram_received(self.hello(nonce=nonce), addr, now)
        (data, to), = server.datagrams_to_send(now)
        dgram = udp.decode(data)
        self.assertEqual((dgram.kind, to, dgram.body[:8]), (RETRY, addr, nonce))
        return dgram.body[8:]

    def test_handshake_datagrams_in_order(self):
        sim = Sim()
        sid = sim.open()
        kinds = [(src, kind) for _, src, _, kind in sim.log]
        self.assertEqual(kinds[:6], [(CLIENT, HELLO), (SERVER, RETRY), (CLIENT, HELLO),
                                     (SERVER, ACCEPT), (CLIENT, PING), (SERVER, ACK)])
        self.assertEqual(sim.sent_to[CLIENT], 60 + 40 + 32)      # RETRY, ACCEPT, ACK
        self.assertEqual(sim.received_from[CLIENT], 1200 + 1200 + 32)
        self.assertEqual([type(e) for _, e in sim.server_events], [SessionOpened])
        self.assertEqual(sim.server_events[0][1], SessionOpened(sid, CLIENT))
        self.assertEqual([e for _, e in sim.client_events],
                         [SessionOpened(ClientEndpoint.SESSION_ID, SERVER)])

    def test_server_keeps_no_state_before_the_cookie(self):
        server = ServerEndpoint()
        for i in range(500):
            addr = ("10.1.%d.%d" % (i // 250, i % 250), 1000 + i)
            server.datagram_received(self.hello(nonce=b"%08d" % i), addr, 5.0)
        replies = server.datagrams_to_send(5.0)
        self.assertEqual(len(replies), 500)
        self.assertTrue(all(len(d) <= 60 for d, _ in replies))    # 60 bytes for 1 200
        self.assertEqual(server.session_ids(), [])
        self.assertEqual((server._by_hello, server._by_token, server._unvalidated,
                          server._heap), ({}, {}, {}, []))

    def test_short_or_odd_hello_gets_no_answer(self):
        server = ServerEndpoint()
        server.datagram_received(udp.encode(HELLO, body=b"N" * 8, pad_to=1199), CLIENT, 1.0)
        server.datagram_received(udp.encode(HELLO, body=b"N" * 9, pad_to=1200), CLIENT, 1.0)
        server.datagram_received(b"\xC1\x01" + bytes(1198), CLIENT, 1.0)   # no nonce
        self.assertEqual(server.datagrams_to_send(1.0), [])

    def test_valid_cookie_opens_a_session_once(self):
        server = ServerEndpoint()
        cookie = self.retry_cookie(server, CLIENT, 100.0)
        for _ in range(3):                       # repeated HELLO: the same ACCEPT, one session
            server.datagram_received(self.hello(cookie), CLIENT, 101.0)
        replies = [udp.decode(d) for d, _ in server.datagrams_to_send(101.0)]
        self.assertEqual([r.kind for r in replies], [ACCEPT] * 3)
        self.assertEqual(len({r.token for r in replies}), 1)
        self.assertEqual(len(server.session_ids()), 1)
        self.assertEqual(len(replies[0].token), 16)

    def test_cookie_from_another_address_is_refused(self):
        server = ServerEndpoint()
        cookie = self.retry_cookie(server, CLIENT, 100.0)
        server.datagram_received(self.hello(cookie), ("10.0.0.3", 40000), 100.5)
        server.datagram_received(self.hello(cookie), ("10.0.0.2", 40002), 100.5)
        server.datagram_received(self.hello(cookie, nonce=b"M" * 8), CLIENT, 100.5)
        kinds = [udp.decode(d).kind for d, _ in server.datagrams_to_send(100.5)]
        self.assertEqual(kinds, [RETRY, RETRY, RETRY])
        self.assertEqual(server.session_ids(), [])

    def test_cookie_too_old_or_from_the_future_is_refused(self):
        server = ServerEndpoint()
        cookie = self.retry_cookie(server, CLIENT, 100.0)
        server.datagram_received(self.hello(cookie), CLIENT, 100.0 + udp.COOKIE_LIFETIME + 1)
        server.datagram_received(self.hello(cookie), CLIENT, 98.0)
        kinds = [udp.decode(d).kind for d, _ in server.datagrams_to_send(120.0)]
        self.assertEqual(kinds, [RETRY, RETRY])
        self.assertEqual(server.session_ids(), [])
        other = ServerEndpoint()                 # another process: another key
        other.datagram_received(self.hello(cookie), CLIENT, 100.0)
        self.assertEqual(udp.decode(other.datagrams_to_send(100.0)[0][0]).kind, RETRY)

    def test_handshake_survives_loss(self):
        for seed in range(40):
            sim = Sim(seed, loss=0.3, dup=0.1, jitter=0.05)
            sim.open(timeout=udp.HANDSHAKE_TIMEOUT)

    def test_handshake_gives_up(self):
        sim = Sim()
        sim.net.cut = True
        sim.run_until(lambda: sim.client.state == "closed", 60.0)
        self.assertEqual(sim.closed_events(sim.client_events),
                         [SessionClosed(0, "handshake timed out")])
        hellos = [t for t, src, _, kind in sim.log if kind == HELLO]
        self.assertEqual([t - hellos[0] for t in hellos], [0, 1] + list(range(3, 30, 2)))
        self.assertAlmostEqual(sim.client_events[-1][0] - hellos[0], udp.HANDSHAKE_TIMEOUT)

    def test_full_server_rejects(self):
        server = ServerEndpoint()
        for i in range(udp.MAX_UNCONFIRMED_SESSIONS + 5):
            addr = ("10.2.0.%d" % (i % 200), 2000 + i)
            cookie = self.retry_cookie(server, addr, 10.0)
            server.datagram_received(self.hello(cookie), addr, 10.0)
            kinds = [udp.decode(d).kind for d, _ in server.datagrams_to_send(10.0)]
            self.assertEqual(kinds, [ACCEPT] if i < udp.MAX_UNCONFIRMED_SESSIONS else [])
        self.assertEqual(server.unconfirmed_count, udp.MAX_UNCONFIRMED_SESSIONS)
        server.timer(10.0 + udp.UNCONFIRMED_TIMEOUT)      # never confirmed: forgotten quietly
        self.assertEqual((server.session_ids(), server.events()), ([], []))
        self.assertEqual(server.unconfirmed_count, 0)

    def test_client_sees_reject(self):
        sim = Sim()
        udp_max = udp.MAX_SESSIONS
        udp.MAX_SESSIONS = 0
        try:
            sim.run_until(lambda: sim.client.state == "closed", 10.0)
        finally:
            udp.MAX_SESSIONS = udp_max
        self.assertEqual(sim.closed_events(sim.client_events),
                         [SessionClosed(0, "refused by server")])
        self.assertIn(REJECT, [kind for _, _, _, kind in sim.log])


# ---------------------------------------------------------------------------------------------
# The token is the identity
# ---------------------------------------------------------------------------------------------

class TokenTests(unittest.TestCase):

    def test_forged_token_is_ignored(self):
        sim = Sim()
        sid = sim.open()
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: bytes(sim.server_got[sid]) == b"JOIN_CHATROOM: r\n")
        sim.flush()
        rng = random.Random(7)
        before = list(sim.server_events)
        dropped = sim.server.dropped
        # From the client's own address, with everything but the token right.
        for kind in (DATA, CLOSE, RESET, PING, ACK, ECHO):
            token = rng.getrandbits(128).to_bytes(16, "big")
            data = udp.encode(kind, token, seq=1, ack=0, window=64,
                              body=b"CHAT: 0\nJOIN_ID: 0\nCLIENT_NAME: x\nMESSAGE: hi\n\n")
            sim.server.datagram_received(data, CLIENT, sim.now)
        self.assertEqual(sim.server.datagrams_to_send(sim.now), [])
        self.assertEqual(sim.server.events(), [])
        self.assertEqual(sim.server_events, before)
        self.assertEqual(sim.server.dropped, dropped + 6)
        self.assertEqual(sim.server.session_ids(), [sid])

    def test_token_not_address_names_the_session(self):
        sim = Sim()
        sid = sim.open()
        token = sim.client._session.token
        # The same token from another address still reaches the session (and only it)
        data = udp.encode(DATA, token, seq=0, ack=0, window=64, body=b"HELO x\n")
        sim.server.datagram_received(data, ("10.7.7.7", 1), sim.now)
        self.assertEqual(sim.server.events(), [StreamData(sid, b"HELO x\n")])
        # ...and the ACK goes to the session's validated source, not to that address.
        self.assertEqual({a for _, a in sim.server.datagrams_to_send(sim.now)}, {CLIENT})


# ---------------------------------------------------------------------------------------------
# Delivery: exactly once, in order, both ways, over a bad link
# ---------------------------------------------------------------------------------------------

def exchange(seed, loss, dup, jitter, up_sizes, down_sizes, spread=2.0, close=False):
    """Open a session, send messages of the given sizes both ways at random times, and return
    the Sim once both sides have everything (asserting they do, within bounded time)."""
    sim = Sim(seed, loss=loss, dup=dup, delay=0.005 + sim_rng_delay(seed), jitter=jitter)
    rng = sim.rng
    up = [random_bytes(rng, n) for n in up_sizes]
    down = [random_bytes(rng, n) for n in down_sizes]
    up_at = sorted(sim.now + rng.random() * spread for _ in up)
    sid = sim.open()
    down_at = sorted(sim.now + rng.random() * spread for _ in down)
    want_up, want_down = b"".join(up), b"".join(down)
    pending_up, pending_down = list(zip(up_at, up)), list(zip(down_at, down))
    end = sim.now + 300.0
    for _ in range(MAX_STEPS):
        while pending_up and pending_up[0][0] <= sim.now:
            assert sim.client.send_stream(pending_up.pop(0)[1], sim.now)
        while pending_down and pending_down[0][0] <= sim.now:
            assert sim.server.send_stream(sid, pending_down.pop(0)[1], sim.now)
        if not pending_up and not pending_down and bytes(sim.server_got[sid]) == want_up \
                and bytes(sim.client_got) == want_down:
            break
        assert sim.now < end, "not delivered in time (seed %d)" % seed
        sim.wakeups = [t for t, _ in pending_up[:1] + pending_down[:1]]
        sim.step()
    else:
        raise AssertionError("exchange did not finish (seed %d)" % seed)
    if close:
        sim.server.close_session(sid, sim.now)
        sim.run_until(lambda: sim.client.state == "closed"
                      and sim.closed_events(sim.server_events), 120.0)
    return sim, sid, want_up, want_down


def sim_rng_delay(seed):
    return random.Random(seed ^ 0x5EED).random() * 0.1


class DeliveryTests(unittest.TestCase):

    def test_two_thousand_randomized_runs_small_messages(self):
        master = random.Random(2024)
        total_retransmits = 0
        for run in range(2000):
            seed = master.getrandbits(32)
            rng = random.Random(seed)
            loss = rng.choice((0.0, 0.05, 0.15, 0.3))
            dup = rng.choice((0.0, 0.05, 0.2))
            jitter = rng.choice((0.0, 0.02, 0.2))
            up = [rng.randint(1, 300) for _ in range(rng.randint(1, 6))]
            down = [rng.randint(1, 300) for _ in range(rng.randint(1, 6))]
            if rng.random() < 0.1:
                up.append(rng.randint(1100, 3000))     # a few crossing the 1 168-byte line
            sim, sid, want_up, want_down = exchange(seed, loss, dup, jitter, up, down)
            self.assertEqual(bytes(sim.server_got[sid]), want_up, seed)
            self.assertEqual(bytes(sim.client_got), want_down, seed)
            self.assertEqual(sim.over_budget, [], seed)
            self.assertLessEqual(sim.max_datagram, udp.MAX_DATAGRAM)
            total_retransmits += sim.server.session_stats(sid)["retransmissions"]
        self.assertGreater(total_retransmits, 0)    # the link really was lossy

    def test_64_kib_messages_both_ways_over_a_bad_link(self):
        for seed, loss, dup, jitter in ((1, 0.1, 0.05, 0.05), (2, 0.3, 0.1, 0.2),
                                        (3, 0.0, 0.3, 0.3), (4, 0.2, 0.0, 0.0)):
            size = 64 * 1024 + 40
            sim, sid, want_up, want_down = exchange(seed, loss, dup, jitter, [size, size, 7],
                                                    [size, 5, size], close=True)
            self.assertEqual(bytes(sim.server_got[sid]), want_up)
            self.assertEqual(bytes(sim.client_got), want_down)
            self.assertEqual(sim.closed_events(sim.client_events),
                             [SessionClosed(0, "closed by peer")])
            self.assertEqual(len(sim.closed_events(sim.server_events)), 1)
            self.assertLessEqual(sim.max_datagram, udp.MAX_DATAGRAM)

    def test_fragmentation_at_the_1200_byte_bound(self):
        sim = Sim()
        sid = sim.open()
        for size, segments in ((udp.MAX_PAYLOAD, 1), (udp.MAX_PAYLOAD + 1, 2),
                               (64 * 1024, -(-64 * 1024 // udp.MAX_PAYLOAD))):
            sim.log.clear()
            got = len(sim.client_got)
            sim.server.send_stream(sid, b"x" * size, sim.now)
            sim.run_until(lambda: len(sim.client_got) == got + size)
            data_sizes = [kind for _, src, _, kind in sim.log if src == SERVER and kind == DATA]
            self.assertEqual(len(data_sizes), segments, size)
        self.assertEqual(udp.MAX_PAYLOAD, 1168)
        self.assertEqual(sim.max_datagram, 1200)

    def test_graceful_close_drains_what_is_queued_first(self):
        sim = Sim(5, loss=0.2, dup=0.1, jitter=0.05)
        sid = sim.open()
        farewell = b"CHAT: 0\nCLIENT_NAME: a\nMESSAGE: a has left this chatroom.\n\n" * 3000
        sim.server.send_stream(sid, farewell, sim.now)
        sim.server.close_session(sid, sim.now)
        self.assertFalse(sim.server.send_stream(sid, b"late", sim.now))
        sim.run_until(lambda: sim.client.state == "closed", 120.0)
        self.assertEqual(bytes(sim.client_got), farewell)
        self.assertEqual(sim.closed_events(sim.client_events),
                         [SessionClosed(0, "closed by peer")])
        sim.run_until(lambda: sim.closed_events(sim.server_events), 60.0)
        self.assertIn(sim.closed_events(sim.server_events)[0].reason,
                      ("closed", "close unconfirmed"))

    def test_client_close(self):
        sim = Sim()
        sid = sim.open()
        sim.client.send_stream(b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: a\n", sim.now)
        sim.client.close(sim.now)
        sim.run_until(lambda: sim.client.state == "closed", 30.0)
        self.assertEqual(bytes(sim.server_got[sid]), b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: a\n")
        self.assertEqual(sim.closed_events(sim.server_events),
                         [SessionClosed(sid, "closed by peer")])
        self.assertEqual(sim.closed_events(sim.client_events), [SessionClosed(0, "closed")])


# ---------------------------------------------------------------------------------------------
# Callback validation and anti-amplification
# ---------------------------------------------------------------------------------------------

def join_sets_callback(addr):
    """A stand-in for the chat layer: on the JOIN's bytes, set the callback, then reply."""
    def hook(sim, event):
        if isinstance(event, StreamData) and b"JOIN_CHATROOM" in event.data:
            sim.server.set_callback(event.session_id, addr, sim.now)
            sim.server.send_stream(event.session_id, b"JOINED_CHATROOM: r\n", sim.now)
    return hook


class CallbackTests(unittest.TestCase):

    def test_callback_is_validated_then_receives_the_stream(self):
        validated = 0
        for seed in range(30):
            sim = Sim(seed, loss=0.2 if seed else 0.0, dup=0.1, jitter=0.05)
            sim.on_server_event = join_sets_callback(CALLBACK)
            sid = sim.open()
            sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
            ok = sim.run_until(lambda: b"JOINED" in sim.client_got, 60.0)
            self.assertTrue(ok, seed)
            events = [e for _, e in sim.server_events]
            if CallbackValidated(sid, CALLBACK) in events:
                # no DATA reached the callback before it was validated
                validated_at = [t for t, e in sim.server_events
                                if e == CallbackValidated(sid, CALLBACK)][0]
                early = [t for t, _, dst, kind in sim.log
                         if dst == CALLBACK and kind == DATA and t < validated_at]
                self.assertEqual(early, [])
                self.assertTrue(any(dst == CALLBACK and kind == DATA
                                    for _, _, dst, kind in sim.log), seed)
                validated += 1
            else:   # validation lost too often: the stream went on to the source
                self.assertIn(CallbackFailed(sid, CALLBACK, "not validated in time"), events)
            self.assertEqual(sim.over_budget, [], seed)
        self.assertGreaterEqual(validated, 27)

    def test_validation_on_a_clean_link_is_knock_probe_echo(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(CALLBACK)
        sid = sim.open()
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: b"JOINED" in sim.client_got, 10.0)
        flow = [(src, dst, kind) for _, src, dst, kind in sim.log
                if kind in (KNOCK, PROBE, ECHO) or (kind == DATA and src == SERVER)]
        self.assertEqual(flow, [(CALLBACK, SERVER, KNOCK), (SERVER, CALLBACK, PROBE),
                                (CLIENT, SERVER, ECHO), (SERVER, CALLBACK, DATA)])
        # before validation the callback got one 48-byte PROBE for one 32-byte KNOCK
        self.assertEqual((sim.received_from[CALLBACK], sim.datagrams_to[CALLBACK] - 1), (32, 1))
        self.assertEqual(bytes(sim.client_got), b"JOINED_CHATROOM: r\n")
        self.assertIn(CallbackValidated(sid, CALLBACK), [e for _, e in sim.server_events])

    def test_join_naming_a_victim_costs_it_nothing(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(VICTIM)
        sid = sim.open()
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: b"JOINED" in sim.client_got, 30.0)   # falls back to the source
        sim.advance(120.0)
        self.assertEqual(sim.datagrams_to[VICTIM], 0)
        self.assertIn(CallbackFailed(sid, VICTIM, "not validated in time"),
                      [e for _, e in sim.server_events])
        # the client's knocks went from its own callback socket, not the victim's
        self.assertEqual(sim.datagrams_to[CALLBACK], 0)

    def test_spoofed_knocks_cost_a_victim_a_few_small_datagrams(self):
        sim = Sim()
        sid = sim.open()
        # the attacker's session names the victim, then spoofs KNOCKs from the victim
        sim.server.set_callback(sid, VICTIM, sim.now)
        start = sim.now
        knock = udp.encode(KNOCK, pad_to=1200)
        for i in range(2000):                     # 20 s of 100 spoofed KNOCKs/s
            sim.now = start + i * 0.01
            sim.deliver(VICTIM, SERVER, knock)
            sim.flush()
        seconds = sim.now - start
        self.assertEqual(sim.over_budget, [])
        limit = udp.PROBE_BURST + udp.PROBE_RATE * seconds + 1
        self.assertLessEqual(sim.datagrams_to[VICTIM], limit)
        self.assertGreater(sim.datagrams_to[VICTIM], 0)
        self.assertLessEqual(sim.sent_to[VICTIM], sim.datagrams_to[VICTIM] * 48)

    def test_probe_never_exceeds_three_times_what_the_address_sent(self):
        sim = Sim()
        sid = sim.open()
        sim.server.set_callback(sid, VICTIM, sim.now)
        sim.flush()
        tiny = udp.encode(KNOCK)                   # 32 bytes: budget 96, one PROBE is 48
        sent_before = sim.sent_to[VICTIM]
        sim.deliver(VICTIM, SERVER, tiny)
        sim.flush()
        self.assertEqual(sim.datagrams_to[VICTIM] - sent_before, 1)   # one per session
        sim.now += 10                              # the bucket is full again (3)
        for _ in range(5):
            sim.deliver(VICTIM, SERVER, tiny)
        sim.flush()
        self.assertEqual(sim.over_budget, [])
        self.assertEqual(sim.datagrams_to[VICTIM] - sent_before, 1 + udp.PROBE_BURST)
        self.assertLessEqual(sim.sent_to[VICTIM], 3 * sim.received_from[VICTIM])

    def test_one_knock_buys_at_most_three_times_its_size(self):
        server = ServerEndpoint()
        sids = open_sessions(server, 3, 50.0)
        for sid in sids:                           # three sessions wait on one address
            server.set_callback(sid, VICTIM, 50.0)
        server.datagrams_to_send(50.0)
        server.datagram_received(udp.encode(KNOCK), VICTIM, 50.0)     # 32 bytes in
        probes = [d for d, a in server.datagrams_to_send(50.0) if a == VICTIM]
        self.assertEqual([len(d) for d in probes], [48, 48])         # 96 = 3 x 32: not 3
        self.assertEqual(len({d[32:] for d in probes}), 2)           # one challenge each

    def test_pending_callbacks_are_capped(self):
        sim = Sim()
        sid = sim.open()
        old = udp.MAX_PENDING_CALLBACKS
        udp.MAX_PENDING_CALLBACKS = 0
        try:
            sim.server.set_callback(sid, VICTIM, sim.now)
        finally:
            udp.MAX_PENDING_CALLBACKS = old
        self.assertEqual(sim.server.events(),
                         [CallbackFailed(sid, VICTIM, "too many pending callbacks")])
        self.assertEqual(sim.server.pending_callback_count, 0)

    def test_source_address_or_zero_needs_no_validation(self):
        sim = Sim()
        sid = sim.open()
        sim.server.set_callback(sid, CLIENT, sim.now)
        sim.server.set_callback(sid, None, sim.now)
        self.assertEqual(sim.server.pending_callback_count, 0)
        sim.server.send_stream(sid, b"JOINED_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: sim.client_got == b"JOINED_CHATROOM: r\n", 5.0)


# ---------------------------------------------------------------------------------------------
# Timers: RTO, Karn, fast retransmit, window
# ---------------------------------------------------------------------------------------------

def stream_with_segments(count, now=0.0):
    stream = ReliableStream()
    stream.cwnd = float(count)
    stream.queue(b"s" * (udp.MAX_PAYLOAD * count))
    sent = stream.poll(now)
    assert len(sent) == count
    return stream


class TimerTests(unittest.TestCase):

    def test_rfc6298_numbers(self):
        stream = ReliableStream()
        self.assertEqual(stream.current_rto(), 1.0)              # initial RTO
        stream._rtt_sample(0.1)
        self.assertAlmostEqual(stream.srtt, 0.1)
        self.assertAlmostEqual(stream.rttvar, 0.05)
        self.assertAlmostEqual(stream.rto, 0.3)                  # SRTT + 4 RTTVAR
        stream._rtt_sample(0.3)
        self.assertAlmostEqual(stream.rttvar, 0.75 * 0.05 + 0.25 * 0.2)
        self.assertAlmostEqual(stream.srtt, 0.875 * 0.1 + 0.125 * 0.3)
        stream = ReliableStream()
        stream._rtt_sample(0.001)
        self.assertEqual(stream.rto, udp.MIN_RTO)
        stream._rtt_sample(100.0)
        self.assertEqual(stream.rto, udp.MAX_RTO)

    def test_rto_backs_off_exponentially_to_the_cap_and_resends_one_window(self):
        stream = stream_with_segments(10)
        expected = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
        now = 0.0
        for rto in expected:
            self.assertAlmostEqual(stream.rto_deadline - now, rto)
            now = stream.rto_deadline
            self.assertTrue(stream.on_timer(now))
            self.assertEqual(stream.cwnd, udp.MIN_CWND)          # back to the minimum
            resent = stream.poll(now)
            self.assertEqual(len(resent), udp.MIN_CWND)          # no retransmission storm
            self.assertEqual([s.seq for s in resent], [0, 1])
        self.assertEqual(stream.rto_timeouts, len(expected))

    def test_time_threshold_resends_a_loss_with_fewer_than_three_after_it(self):
        # RFC 9002 s6.1.2: segment 0 lost, segment 1 (the only one after it) acknowledged.
        stream = ReliableStream()
        stream._rtt_sample(0.1)
        stream.cwnd = 2.0
        stream.queue(b"s" * (2 * udp.MAX_PAYLOAD))
        self.assertEqual(len(stream.poll(0.0)), 2)
        stream.on_ack(0, 64, [(1, 2)], 0.1)                  # SACK of 1 at one RTT: too soon
        self.assertEqual(stream.poll(0.1), [])
        self.assertAlmostEqual(stream.loss_deadline, 9 / 8 * 0.1)
        self.assertFalse(stream.on_timer(stream.loss_deadline))   # not a timeout ...
        resent = stream.poll(stream.loss_deadline)                # ... but 0 is sent again
        self.assertEqual([seg.seq for seg in resent], [0])
        self.assertEqual(stream.rto_timeouts, 0)
        self.assertEqual(stream.cwnd, udp.MIN_CWND)           # halved once, as a fast retransmit

    def test_karns_rule_no_sample_from_a_retransmitted_segment(self):
        stream = stream_with_segments(1)
        stream.on_timer(1.0)
        stream.poll(1.0)                                          # sent twice now
        stream.on_ack(1, 64, (), 1.05)
        self.assertIsNone(stream.srtt)
        self.assertEqual(stream.current_rto(), 2.0)              # backoff kept (Karn)
        stream.queue(b"x")
        stream.poll(2.0)
        stream.on_ack(2, 64, (), 2.1)
        self.assertAlmostEqual(stream.srtt, 0.1)
        self.assertEqual(stream.backoff, 0)

    def test_no_rtt_sample_from_a_segment_acknowledged_after_a_later_one(self):
        # RFC 9002 s5.1: segment 0 arrived at once but its ACK was lost; segment 1's ACK said
        # only "1" (SACK). The ACK that finally covers 0, seconds later, says nothing about the
        # path's RTT: timed from 0's send it would be 2 s, and the RTO would grow with it.
        stream = stream_with_segments(2)
        stream.on_ack(0, 64, [(1, 2)], 0.01)
        self.assertAlmostEqual(stream.srtt, 0.01)
        stream.on_ack(2, 64, (), 2.0)
        self.assertAlmostEqual(stream.srtt, 0.01)
        self.assertEqual(stream.rto, udp.MIN_RTO)

    def test_no_rtt_sample_from_a_segment_a_timeout_left_unsent(self):
        # Three segments at 0, all taken as lost at the timeout (1 s); the window lets only 0
        # and 1 go again. Then one ACK covers all three: 2 arrived the first time, 1 s ago.
        # The ACK answers the retransmissions, so it gives no sample at all (Karn), and 2's
        # "RTT" of 1.01 s must not become the estimate.
        stream = stream_with_segments(3)
        self.assertTrue(stream.on_timer(1.0))
        self.assertEqual([seg.seq for seg in stream.poll(1.0)], [0, 1])
        stream.on_ack(3, 64, (), 1.01)
        self.assertIsNone(stream.srtt)
        stream.queue(b"x")
        stream.poll(1.5)
        stream.on_ack(4, 64, (), 1.52)                   # a segment sent once: the sample
        self.assertAlmostEqual(stream.srtt, 0.02)

    def test_rtt_estimate_stays_near_the_path_at_ten_percent_loss(self):
        # A 10 ms path losing 10 % each way, 300 KB in bulk. Timing segments whose ACK came
        # late (after a timeout's retransmission) fed timeouts into the estimate: with seed 6
        # SRTT climbed to 2.6 s, the RTO to its 10 s cap, and the transfer took 89 s.
        for seed in range(1, 13):
            sim = Sim(seed, loss=0.1, delay=0.005)
            sid = sim.open()
            started = sim.now
            sim.server.send_stream(sid, b"y" * 300000, sim.now)
            highest = [0.0]

            def delivered():
                highest[0] = max(highest[0], sim.server.session_stats(sid)["srtt"] or 0.0)
                return len(sim.client_got) == 300000
            self.assertTrue(sim.run_until(delivered, 60.0), seed)
            self.assertLess(highest[0], 0.05, seed)          # five times the path's RTT
            self.assertLess(sim.now - started, 10.0, seed)

    def test_no_retransmission_on_duplicate_ack(self):
        stream = stream_with_segments(6)
        stream.on_ack(0, 64, [(1, 2)], 0.1)                       # seg 0 missing, 1 acked
        for _ in range(50):                                       # the same ACK, again
            stream.on_ack(0, 64, [(1, 2)], 0.2)
            stream.on_ack(0, 64, (), 0.2)
        self.assertEqual(stream.poll(0.2), [])
        self.assertEqual((stream.retransmissions, stream.fast_retransmits), (0, 0))
        self.assertEqual(stream.unacked[0].skips, 1)

    def test_fast_retransmit_after_three_later_segments_and_window_halves(self):
        stream = stream_with_segments(8)
        stream.on_ack(0, 64, [(1, 3)], 0.1)                       # 2 later acked
        self.assertEqual(stream.fast_retransmits, 0)
        before = stream.cwnd
        stream.on_ack(0, 64, [(1, 4)], 0.1)                       # the third
        self.assertEqual(stream.fast_retransmits, 1)
        self.assertAlmostEqual(stream.cwnd, max((before + 1) / 2, udp.MIN_CWND))
        resent = stream.poll(0.1)
        self.assertEqual([s.seq for s in resent][:1], [0])
        # a second loss in the same window does not halve again
        cwnd = stream.cwnd
        stream.on_ack(0, 64, [(1, 4), (5, 8)], 0.15)             # seg 4 is now skipped 3x
        self.assertEqual(stream.fast_retransmits, 2)
        self.assertGreaterEqual(stream.cwnd, cwnd)

    def test_window_grows_additively_and_shrinks_on_loss_in_a_session(self):
        sim = Sim(11, loss=0.15, jitter=0.02)
        sid = sim.open()
        sim.server.send_stream(sid, b"y" * 400000, sim.now)
        sim.run_until(lambda: len(sim.client_got) == 400000, 300.0)
        stats = sim.server.session_stats(sid)
        self.assertGreater(stats["cwnd_cuts"], 0)
        self.assertGreater(stats["retransmissions"], 0)
        self.assertLessEqual(stats["cwnd"], udp.MAX_CWND)
        # clean link: the window reaches its cap and never shrinks
        clean = Sim(12)
        sid = clean.open()
        clean.server.send_stream(sid, b"y" * 400000, clean.now)
        clean.run_until(lambda: len(clean.client_got) == 400000, 300.0)
        stats = clean.server.session_stats(sid)
        self.assertEqual((stats["cwnd_cuts"], stats["retransmissions"]), (0, 0))
        self.assertGreater(stats["cwnd"], 20)


# ---------------------------------------------------------------------------------------------
# Liveness
# ---------------------------------------------------------------------------------------------

class LivenessTests(unittest.TestCase):

    def test_idle_session_is_kept_alive_with_few_pings(self):
        sim = Sim()
        sim.open()
        sim.log.clear()
        sim.advance(600.0)
        self.assertEqual(sim.closed_events(sim.server_events), [])
        self.assertEqual(sim.client.state, "open")
        pings = [t for t, _, _, kind in sim.log if kind == PING]
        self.assertLessEqual(len(pings), 600 / udp.KEEPALIVE_IDLE + 2)
        self.assertGreaterEqual(len(pings), 600 / udp.KEEPALIVE_IDLE - 2)

    def test_vanished_peer_is_gone_within_60_seconds_both_ways(self):
        for loss in (0.0, 0.3):
            sim = Sim(3, loss=loss)
            sid = sim.open()
            sim.server.send_stream(sid, b"z" * 5000, sim.now)     # and some data in flight
            sim.client.send_stream(b"w" * 5000, sim.now)
            sim.step()
            sim.net.cut = True
            cut = sim.now
            sim.run_until(lambda: sim.closed_events(sim.server_events)
                          and sim.client.state == "closed", 120.0)
            (s_at, s_ev), = [(t, e) for t, e in sim.server_events
                             if isinstance(e, SessionClosed)]
            (c_at, c_ev), = [(t, e) for t, e in sim.client_events
                             if isinstance(e, SessionClosed)]
            self.assertEqual((s_ev.reason, c_ev.reason), ("peer timed out",) * 2)
            self.assertLess(s_at - cut, 60.0)
            self.assertLess(c_at - cut, 60.0)
            self.assertGreaterEqual(s_at - cut, udp.IDLE_TIMEOUT - 1.0)

    def test_pings_start_after_15_seconds_of_silence(self):
        sim = Sim()
        sim.open()
        sim.net.cut = True
        sim.log.clear()
        start = sim.now
        sim.advance(44.0)
        pings = [round(t - start) for t, src, _, kind in sim.log if kind == PING]
        self.assertTrue(pings and min(pings) >= 14, pings)
        self.assertLessEqual(len(pings), 2 * 7)


# ---------------------------------------------------------------------------------------------
# Limits under a flood
# ---------------------------------------------------------------------------------------------

class FloodTests(unittest.TestCase):

    def test_out_of_order_flood_is_bounded_by_the_window(self):
        sim = Sim()
        sid = sim.open()
        token = sim.client._session.token
        for seq in range(1, 5000):                 # seq 0 never arrives
            data = udp.encode(DATA, token, seq=seq, ack=0, window=64, body=b"q" * 1168)
            sim.server.datagram_received(data, CLIENT, sim.now)
        sim.flush()
        held = sim.server.session_stats(sid)["held_bytes"]
        self.assertLessEqual(held, udp.RECV_WINDOW * udp.MAX_PAYLOAD)
        self.assertLessEqual(sim.server.buffered_bytes(), udp.RECV_WINDOW * udp.MAX_PAYLOAD)
        self.assertEqual(bytes(sim.server_got[sid]), b"")

    def test_send_buffer_over_cap_resets_the_session(self):
        sim = Sim()
        sid = sim.open()
        sim.net.cut = True                          # the client stops acknowledging
        chunk = b"m" * 60000
        sent = 0
        for _ in range(100):
            if not sim.server.send_stream(sid, chunk, sim.now):
                break
            sent += len(chunk)
            sim.flush()
        sim.flush()
        self.assertLessEqual(sent, udp.SEND_BUFFER_CAP)
        self.assertGreater(sent, udp.SEND_BUFFER_CAP - len(chunk) - 1)
        self.assertEqual(sim.closed_events(sim.server_events),
                         [SessionClosed(sid, "send buffer over cap")])
        self.assertEqual(sim.server.buffered_bytes(), 0)
        self.assertEqual(sim.log[-1][3], RESET)

    def test_garbage_flood_changes_nothing(self):
        sim = Sim()
        sid = sim.open()
        rng = random.Random(99)
        for i in range(5000):
            size = rng.randint(0, 1300)
            data = bytes([0xC1, rng.randint(0, 20)]) + random_bytes(rng, size)
            sim.server.datagram_received(data[:size], ("10.5.%d.1" % (i % 200), i), sim.now)
        replies = sim.server.datagrams_to_send(sim.now)
        self.assertEqual([e for e in sim.server.events()], [])
        self.assertEqual(sim.server.session_ids(), [sid])
        self.assertTrue(all(len(d) <= 60 for d, _ in replies))      # RETRYs at most
        self.assertEqual(sim.server._unvalidated, {})


# ---------------------------------------------------------------------------------------------
# Real sockets
# ---------------------------------------------------------------------------------------------

class RealSocketSmokeTest(unittest.TestCase):

    def test_echo_over_loopback(self):
        server_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(server_sock.close)
        self.addCleanup(client_sock.close)
        server_sock.bind(("127.0.0.1", 0))
        client_sock.bind(("127.0.0.1", 0))
        server_addr = server_sock.getsockname()
        server = ServerEndpoint()
        client = ClientEndpoint(server_addr, time.monotonic())
        message = b"CHAT: 0\nJOIN_ID: 0\nCLIENT_NAME: a\nMESSAGE: " + b"x" * 70000 + b"\n\n"
        client.send_stream(message, time.monotonic())
        echoed = bytearray()
        deadline = time.monotonic() + 5.0
        while len(echoed) < len(message) and time.monotonic() < deadline:
            now = time.monotonic()
            for data, addr in server.datagrams_to_send(now):
                server_sock.sendto(data, addr)
            for data, addr in client.datagrams_to_send(now):
                client_sock.sendto(data, addr)
            waits = [d - now for d in (server.next_deadline(), client.next_deadline()) if d]
            ready, _, _ = select.select([server_sock, client_sock], [], [],
                                        max(0.0, min(waits + [0.05])))
            now = time.monotonic()
            for sock in ready:
                data, addr = sock.recvfrom(2048)
                if sock is server_sock:
                    server.datagram_received(data, addr, now)
                else:
                    client.datagram_received(data, addr, now)
            server.timer(now)
            client.timer(now)
            for event in server.events():
                if isinstance(event, StreamData):
                    server.send_stream(event.session_id, event.data, now)
            for event in client.events():
                if isinstance(event, StreamData):
                    echoed += event.data
        self.assertEqual(bytes(echoed), message)


if __name__ == "__main__":
    unittest.main()
