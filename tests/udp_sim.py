"""A simulated lossy network for the UDP layer's in-memory tests (sansio/udp_*.py).

A `Net` carries datagrams between a ClientEndpoint and a ServerEndpoint with loss, duplication,
delay and reordering drawn from a seeded random generator, and `Sim` advances a simulated clock
straight to the next event, so a minute of protocol time costs microseconds and every failure
replays from its seed. Helpers only: no tests here.
"""
import heapq
import random
from collections import defaultdict
from typing import NamedTuple

from sansio import udp_callbacks, udp_wire
from sansio.udp_client import ClientEndpoint
from sansio.udp_server import CallbackValidated, ServerEndpoint
from sansio.udp_stream import SessionClosed, SessionOpened, StreamData
from sansio.udp_wire import ACCEPT, HELLO, PING

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
                self.sent_to[addr] > udp_callbacks.AMPLIFICATION_FACTOR * self.received_from[addr]:
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
        server.datagram_received(udp_wire.encode(HELLO, body=nonce, pad_to=1200), addr, now)
        cookie = udp_wire.decode(server.datagrams_to_send(now)[0][0]).body[8:]
        hello = udp_wire.encode(HELLO, body=nonce + cookie, pad_to=1200)
        server.datagram_received(hello, addr, now)
        token = udp_wire.decode(server.datagrams_to_send(now)[0][0]).token
        server.datagram_received(udp_wire.encode(PING, token, window=64), addr, now)
        server.datagrams_to_send(now)
        (opened,) = server.events()
        sids.append(opened.session_id)
    return sids


class Handshake(NamedTuple):
    kind: object        # the answer to the HELLO with the cookie (ACCEPT, REJECT), None if none
    sid: object         # the session's id once confirmed, else None
    token: object
    events: list        # every event the server reported meanwhile
    sent: list          # every datagram the server sent meanwhile, to anyone: (bytes, addr)


def open_from(server, addr, now, nonce=b"N" * 8, confirm=True):
    """A handshake from `addr` by hand, confirmed with a PING unless `confirm` is False."""
    server.datagram_received(udp_wire.encode(HELLO, body=nonce, pad_to=1200), addr, now)
    sent = server.datagrams_to_send(now)
    cookie = [udp_wire.decode(d) for d, to in sent if to == addr][-1].body[8:]
    server.datagram_received(udp_wire.encode(HELLO, body=nonce + cookie, pad_to=1200), addr, now)
    sent += server.datagrams_to_send(now)
    answers = [udp_wire.decode(d) for d, to in sent if to == addr][1:]
    kind = answers[-1].kind if answers else None
    token = answers[-1].token if kind == ACCEPT else None
    sid = None
    if token is not None and confirm:
        server.datagram_received(udp_wire.encode(PING, token, window=64), addr, now)
        sent += server.datagrams_to_send(now)
    events = server.events()
    opened = [e.session_id for e in events if isinstance(e, SessionOpened)]
    if opened and confirm:
        sid = opened[-1]
    return Handshake(kind, sid, token, events, sent)


def random_bytes(rng, size):
    return bytes(rng.getrandbits(8) for _ in range(size)) if size < 64 else \
        rng.getrandbits(8 * size).to_bytes(size, "big")


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
