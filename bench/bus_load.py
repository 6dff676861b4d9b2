#!/usr/bin/env python3
"""Deliveries per second, and an unrelated client's latency, on one node and across nodes.

    python3 -m bench.bus_load [--rooms 10] [--members 10] [--messages 200] [--window 8]
                              [--repeat 3] [--timeout 120] [--probe-apart]

(from the repository's top folder; needs redis-server on this machine)

For each of three set-ups, started fresh each round on free ports of 127.0.0.1 with flood
control off (the bus is measured, not the limits):
    alone    one Server.py without --bus (the embedded default)
    bus-1    one Server.py with --bus (every request goes through Redis and back)
    bus-2    two Server.py sharing a throw-away redis-server; the members of every room are
             spread over both (member i on node i % 2)
ROOMS rooms of MEMBERS members each; every member sends MESSAGES chats to its room, keeping at
most WINDOW of its own on their way (sent, not yet back to it): a closed loop, as people chat.
Nobody chats before every member has joined (see top_up): then every member receives every chat
of its room, deliveries = ROOMS x MEMBERS x MEMBERS x MESSAGES, counted from the first chat sent
to the last one delivered. Meanwhile a probe client alone in a room of its own on the first node
sends a chat every PROBE_EVERY and times its return: what an unrelated user feels. Prints, per
set-up, the median over the rounds of deliveries/s and of the probe's p50/p99, with each round's
figures, then a JSON line. The clients share the machine with the servers and Redis: on a small
machine they may be what limits the rate.

The probe shares this client's loop with every member: with hundreds of members, its chat
waits behind their reading, and its round trip measures this loop as much as the server (one
node alone shows the same). --probe-apart runs the probe in a process of its own (probe_apart),
counting its chats sent between the first chat and the last delivery: what the server makes
an unrelated user wait, with the load the same.
"""
import argparse
import json
import multiprocessing
import selectors
import socket
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

from sansio.replies import ChatMessage, JoinedReply, ReplyReader
from sansio.wire import chat_request, join_request
from tools.kit import HOST, ServerProcess

PROBE_EVERY = 0.02           # seconds between the probe's chats
SETUPS = ("alone", "bus-1", "bus-2")


class Member:
    """One client connection: joins its room, sends its chats, counts what comes back."""

    def __init__(self, port: int, room: str, name: str, messages: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setblocking(False)
        self.room, self.name, self.left = room, name, messages
        self.reader = ReplyReader()
        self.ref: Optional[int] = None
        self.join_id = 0
        self.in_flight = 0        # own chats sent, not yet back
        self.received = 0         # chats of the room (announcements not counted)
        self.out = bytearray(join_request(room, name))
        self.sent_at: List[float] = []

    def send_chats(self, window: int, text: str) -> None:
        while self.ref is not None and self.left and self.in_flight < window:
            self.out += chat_request(self.ref, self.join_id, self.name, text)
            self.left -= 1
            self.in_flight += 1
            self.sent_at.append(time.monotonic())

    def flush(self) -> None:
        if self.out:
            try:
                sent = self.sock.send(self.out)
                del self.out[:sent]
            except BlockingIOError:
                pass

    def read(self) -> bytes:
        """What is there to read (b"" if nothing); raises if the server closed the connection."""
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return b""
        if not data:
            raise RuntimeError("%s: the server closed the connection" % self.name)
        return data

    def on_readable(self) -> List[float]:
        """Read what is there; the round trips of own chats that came back."""
        data = self.read()
        if not data:
            return []
        self.reader.receive_data(data)
        trips = []
        while True:
            reply = self.reader.maybe_next_reply()
            if reply is None:
                return trips
            if isinstance(reply, JoinedReply):
                self.ref, self.join_id = reply.ref, reply.join_id
            elif isinstance(reply, ChatMessage) and not reply.message.endswith(" chatroom."):
                self.received += 1
                if reply.client_name == self.name:
                    self.in_flight -= 1
                    trips.append(time.monotonic() - self.sent_at.pop(0))


def top_up(members: List[Member], window: int, text: str) -> bool:
    """Top up every member's window of chats, once every member has its ROOM_REF; whether they
    all have. Not before: a member receives the chats of its room numbered after its own join
    (docs/PROTOCOL.md section 8), so a chat sent while another member was still joining never
    reaches that one, and the deliveries counted above never all come. On a loaded machine with
    two nodes, one node's members joined and sent a window of chats before some of the other
    node's joins reached Redis: runs ended a few deliveries short, every one a chat numbered
    before its receiver's join, none lost."""
    if not all(member.ref is not None for member in members):
        return False
    for member in members:
        member.send_chats(window, text)
    return True


def probe_apart(port: int, stop, out, timeout: float) -> None:
    """The probe in a process of its own (--probe-apart): its chats every PROBE_EVERY until
    `stop` is set (or `timeout` passed), each as (when sent, round trip), sent through `out`."""
    probe = Member(port, "probe-room", "probe", 10 ** 9)
    selector = selectors.DefaultSelector()
    selector.register(probe.sock, selectors.EVENT_READ)
    samples: List[Tuple[float, float]] = []
    next_probe = time.monotonic()
    deadline = next_probe + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_probe and probe.ref is not None and not probe.in_flight:
            probe.left = 1
            probe.send_chats(1, "probe")
            next_probe = now + PROBE_EVERY
        probe.flush()
        if selector.select(0.005):
            came = time.monotonic()
            samples += [(came - trip, trip) for trip in probe.on_readable()]
    probe.sock.close()
    out.send(samples)


class _ProbeApart:
    """probe_apart() run, and its samples collected, from one_round()."""

    def __init__(self, port: int, timeout: float) -> None:
        self.stop = multiprocessing.Event()
        self.receiver, sender = multiprocessing.Pipe(False)
        self.child = multiprocessing.Process(target=probe_apart, daemon=True,
                                             args=(port, self.stop, sender, timeout))
        self.child.start()

    def trips(self, start: float, end: float) -> List[float]:
        """The round trips of its chats sent between `start` and `end`."""
        self.stop.set()
        samples = self.receiver.recv() if self.receiver.poll(10.0) else []
        self.child.join(5.0)
        if self.child.is_alive():
            self.child.terminate()
            self.child.join(5.0)
        return [trip for sent, trip in samples if start <= sent <= end]


def one_round(setup: str, args: argparse.Namespace, redis_port: Optional[int],
              prefix: str) -> Dict[str, float]:
    options = ["--no-udp", "--input-rate", "0", "--request-rate", "0"]
    if setup != "alone":
        options += ["--bus", "redis://%s:%d" % (HOST, redis_port), "--bus-prefix", prefix]
    nodes = [ServerProcess(*options) for _ in range(2 if setup == "bus-2" else 1)]
    try:
        members = [Member(nodes[i % len(nodes)].port, "room%d" % r, "m%d-%d" % (r, i),
                          args.messages)
                   for r in range(args.rooms) for i in range(args.members)]
        apart = _ProbeApart(nodes[0].port, args.timeout) if args.probe_apart else None
        probe = None if apart else Member(nodes[0].port, "probe-room", "probe", 10 ** 9)
        everyone = members + ([probe] if probe else [])
        selector = selectors.DefaultSelector()
        for member in everyone:
            selector.register(member.sock, selectors.EVENT_READ, member)
        expected = args.rooms * args.members * args.members * args.messages
        text = "x" * 40
        probe_trips: List[float] = []
        opened = next_probe = time.monotonic()
        deadline = opened + args.timeout
        started: Optional[float] = None         # when the first chat was sent
        received = 0
        while received < expected:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError("%s: %d of %d deliveries within %g s"
                                   % (setup, received, expected, args.timeout))
            if top_up(members, args.window, text) and started is None:
                started = now
            if probe and now >= next_probe and probe.ref is not None and not probe.in_flight:
                probe.left = 1
                probe.send_chats(1, "probe")
                next_probe = now + PROBE_EVERY
            for member in everyone:
                member.flush()
            for key, _mask in selector.select(0.01):
                trips = key.data.on_readable()
                if key.data is probe:
                    probe_trips += trips
            received = sum(member.received for member in members)
        ended = time.monotonic()
        took = ended - (opened if started is None else started)
        if apart:
            probe_trips = apart.trips(opened if started is None else started, ended)
        for member in everyone:
            member.sock.close()
        probe_trips.sort()
        count = len(probe_trips)        # (none if the chats took under one PROBE_EVERY)
        return {"deliveries_per_s": expected / took,
                "probe_p50_ms": 1000 * probe_trips[count // 2] if count else None,
                "probe_p99_ms": 1000 * probe_trips[int(count * 0.99)] if count else None,
                "probe_samples": count}
    finally:
        for node in nodes:
            node.stop()


def _median(values: List[Optional[float]]) -> Optional[float]:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def _ms(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.1f" % value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--probe-apart", action="store_true",
                        help="the probe in a process of its own (see above)")
    args = parser.parse_args(argv)
    from tests.redis_server import REDIS_SERVER, RedisProcess     # the tests' throw-away Redis
    if not REDIS_SERVER:
        print("bus_load: redis-server is not installed here", file=sys.stderr)
        return 2
    redis = RedisProcess()
    results: Dict[str, List[Dict[str, float]]] = {setup: [] for setup in SETUPS}
    try:
        for round_ in range(args.repeat):
            for setup in SETUPS:
                result = one_round(setup, args, redis.port, "bench%d%s" % (round_, setup))
                results[setup].append(result)
                print("round %d %-6s %9.0f deliveries/s, probe p50 %s ms, p99 %s ms (%d)"
                      % (round_ + 1, setup, result["deliveries_per_s"],
                         _ms(result["probe_p50_ms"]), _ms(result["probe_p99_ms"]),
                         result["probe_samples"]), file=sys.stderr)
    finally:
        redis.stop()
    summary = {}
    for setup in SETUPS:
        runs = results[setup]
        summary[setup] = {key: _median([run[key] for run in runs])
                          for key in ("deliveries_per_s", "probe_p50_ms", "probe_p99_ms")}
        print("%-6s median %9.0f deliveries/s (%.2f of alone), probe p50 %s ms, p99 %s ms"
              % (setup, summary[setup]["deliveries_per_s"],
                 summary[setup]["deliveries_per_s"] / summary["alone"]["deliveries_per_s"],
                 _ms(summary[setup]["probe_p50_ms"]), _ms(summary[setup]["probe_p99_ms"])))
    print(json.dumps({"args": vars(args), "median": summary, "rounds": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
