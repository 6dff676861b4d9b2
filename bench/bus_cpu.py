#!/usr/bin/env python3
"""What a bus node costs in CPU per chat, and what that projects to for 1, 2, 4 and 8 nodes.

    python3 -m bench.bus_cpu [--load 100x5] [--load 10x20] [--messages 60] [--window 8]
                             [--repeat 3] [--timeout 60] [--pin] [--full] [--json]

(from the repository's top folder; needs redis-server on this machine)

Each load is R rooms of M members, every member sending K chats (--messages) to its room with at
most WINDOW of its own on their way, as bench/bus_load.py does (its Member is reused). Every
member receives every chat of its room: R x M x M x K deliveries, each one counted; `missing`
is what never came, `extra` what came more than once (both must be 0). While the chats go, a
member counts what comes rather than parsing it (CountingMember): a tenth of the client's CPU
a delivery, so the client no longer limits the rate and the nodes run flat out, as they would
each on a core of its own (a node's CPU per chat grows when it idles between smaller ticks).
Five set-ups, each started fresh per round on free ports of 127.0.0.1 with flood control off:
    alone         one Server.py without --bus
    alone-2       two of them, without --bus: the rooms of bus-2-local, each server on its own
                  (what two nodes sharing the nodes' core cost without any bus: see below)
    bus-1         one Server.py with --bus
    bus-2-spread  two nodes; the members of every room spread over both (member i on node i % 2)
    bus-2-local   two nodes; all members of room r on node r % 2
CPU is read around the chats only (after every member has joined and the join announcements
have stopped, until the last delivery): utime + stime of each node from /proc/PID/stat, and
Redis's used_cpu_sys + used_cpu_user from INFO cpu. The machine's cores are shared by the
nodes, Redis and this client, so deliveries/s measures the whole machine; CPU per chat is what
a node or Redis would need on a core of its own, and the projection is built from that. --pin
(Linux, two cores or more) keeps the nodes on the last core and this client and Redis on the
others, so that what a node costs is not what it shares a core with (two nodes share theirs).

Each figure of a set-up is the median of its rounds, taken figure by figure.

The projection (per load, from those medians; its assumptions are stated again in
docs/CLUSTER.md, "What it costs"):
  node CPU per chat, summed over the nodes, with N nodes = C1 + (N - 1) x E, where C1 is bus-1's
  and E what one more node adds to a chat: in the local layout nothing but the joins and
  leaves (a node reads the chats of rooms where it has members only), E = bus-2-local - bus-1;
  in the spread layout it also reads every batch and delivers its own members' share,
  E = bus-2-spread - bus-1 (the deliveries themselves are the same total, spread over the
  nodes). From both, what two nodes cost more than one on the same load without any bus,
  alone-2 - alone, is taken off: with --pin the two share one core and switch between them,
  which the projection's nodes, each on a core of its own, do not. By default the two-node
  set-ups carry the same load as the one-node ones, half of it each: each node then idles
  between smaller ticks, and a bus node sends and reads smaller batches; --full gives them
  twice the rooms, so that each node carries what one node carries alone, as in the
  projection. Each node on a core of its own and the chats spread evenly:
  chats/s = N x 1e6 / (C1 + (N - 1) x E).
  Redis on its one core: chats/s = 1e6 / (R1 + (N - 1) x S), R1 bus-1's Redis CPU per chat, S
  what one more subscriber adds (measured the same way from the two-node set-ups).
  deliveries/s = M x min(node chats/s, Redis chats/s); one node alone (no bus) on one core is
  M x 1e6 / C_alone, and every projection is also given as a ratio to it.
"""
import argparse
import json
import os
import selectors
import statistics
import sys
import time
from typing import Dict, List, Optional, Tuple

from bench.bus_load import Member
from tools.kit import HOST, ServerProcess

SETUPS = ("alone", "alone-2", "bus-1", "bus-2-spread", "bus-2-local")
LOADS = ("100x5", "10x20")        # rooms x members: many cheap rooms, and wider fan-out
PROJECT_N = (1, 2, 4, 8)
MAX_N = 1024                      # where the search for Redis's limit gives up
QUIET = 0.3                       # seconds without a byte that end the join phase and the drain
CHAT_TEXT = "x" * 40
TICK = os.sysconf("SC_CLK_TCK")   # /proc/PID/stat counts CPU in these


def process_cpu_s(pid: int) -> float:
    """utime + stime of process `pid` in seconds (fields 14 and 15 of /proc/PID/stat; the
    command name in field 2 may hold spaces, so fields are counted after its closing ')')."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def redis_cpu_s(redis) -> float:
    """Redis's used_cpu_sys + used_cpu_user from INFO cpu, in seconds."""
    info = redis.command("INFO", "cpu").decode()
    values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(values["used_cpu_sys"]) + float(values["used_cpu_user"])


def node_for(setup: str, room: int, member: int, nodes: List[ServerProcess]) -> ServerProcess:
    if setup == "bus-2-spread":
        return nodes[member % len(nodes)]
    return nodes[room % len(nodes)]


def node_count(setup: str) -> int:
    return 2 if setup.endswith("-2") or setup.startswith("bus-2") else 1


def start_nodes(setup: str, redis_url: str, prefix: str) -> List[ServerProcess]:
    options = ["--no-udp", "--input-rate", "0", "--request-rate", "0"]
    if setup.startswith("bus"):
        options += ["--bus", redis_url, "--bus-prefix", prefix]
    nodes: List[ServerProcess] = []
    try:
        for _ in range(node_count(setup)):
            nodes.append(ServerProcess(*options))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


class CountingMember(Member):
    """A Member that, once counting() is called (every member has joined and the join
    announcements are over), counts what comes instead of parsing it: from then on every message
    is a CHAT of its room, its own are those naming it, and each ends at its first blank line."""
    _counting = False

    def counting(self) -> None:
        self._counting, self._tail = True, b""
        self._own = b"\nCLIENT_NAME: %s\n" % self.name.encode()

    def on_readable(self) -> List[float]:
        if not self._counting:
            return super().on_readable()
        data = self._tail + self.read()
        end = data.rfind(b"\n\n") + 2          # the end of the messages whole so far
        if end < 2:
            self._tail = data
            return []
        whole, self._tail = data[:end], data[end:]
        self.received += whole.count(b"CHAT: ")
        self.in_flight -= whole.count(self._own)
        return []


def pump(members: List[Member], selector, window: int, wait: float) -> List[Member]:
    """One turn of the client: top up `members`' windows, send, read what came (at most `wait`
    seconds). The members that read something."""
    for member in members:
        member.send_chats(window, CHAT_TEXT)
        member.flush()
    ready = [key.data for key, _mask in selector.select(wait)]
    for member in ready:
        member.on_readable()
    return ready


def join_phase(members: List[Member], selector, deadline: float) -> None:
    """Until every member has its ROOM_REF and nothing has come for QUIET seconds (the join
    announcements are over), so the chats' CPU is measured alone."""
    quiet_since = time.monotonic()
    while True:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError("the members did not all join in time")
        if pump(members, selector, 0, 0.05):
            quiet_since = now
        elif all(m.ref is not None for m in members) and now - quiet_since >= QUIET:
            return


def chat_phase(members: List[Member], selector, window: int, expected: int,
               deadline: float) -> int:
    """Until `expected` deliveries came or the deadline passed; how many came. Each turn tops
    up only the members that read something (their chats came back), or all of them after a
    turn when nothing came: a loop over hundreds of members a turn was most of the client."""
    for member in members:
        member.counting()
    received, turn = 0, members
    while received < expected and time.monotonic() < deadline:
        turn = pump(turn, selector, window, 0.01) or members
        received = sum(member.received for member in members)
    return received


def cpu_now(nodes: List[ServerProcess], redis) -> Tuple[float, float, float]:
    """CPU seconds so far: the nodes' together, Redis's (0 without one), this client's."""
    times = os.times()
    return (sum(process_cpu_s(node.pid) for node in nodes),
            redis_cpu_s(redis) if redis is not None else 0.0, times.user + times.system)


def one_round(load: Tuple[int, int], setup: str, args: argparse.Namespace, redis,
              prefix: str) -> Dict[str, float]:
    rooms, size = load
    if getattr(args, "full", False) and node_count(setup) > 1:
        rooms *= 2                      # each of the two nodes carries what one node does
    nodes = start_nodes(setup, redis.url, prefix)
    members: List[CountingMember] = []
    try:
        for node in nodes if getattr(args, "node_cpus", None) else ():
            os.sched_setaffinity(node.pid, args.node_cpus)
        members = [CountingMember(node_for(setup, r, i, nodes).port, "room%d" % r,
                                  "m%d-%d" % (r, i), args.messages)
                   for r in range(rooms) for i in range(size)]
        selector = selectors.DefaultSelector()
        for member in members:
            selector.register(member.sock, selectors.EVENT_READ, member)
        deadline = time.monotonic() + args.timeout
        join_phase(members, selector, deadline)
        expected = rooms * size * size * args.messages
        bus = redis if setup.startswith("bus") else None
        before, started = cpu_now(nodes, bus), time.monotonic()
        received = chat_phase(members, selector, args.window, expected, deadline)
        took = time.monotonic() - started
        after = cpu_now(nodes, bus)
        while received >= expected and time.monotonic() < deadline and pump(
                members, selector, 0, QUIET):
            received = sum(member.received for member in members)   # late extras, if any
        return figures(rooms * size * args.messages, size, expected, received, took,
                       [b - a for a, b in zip(before, after)])
    finally:
        for member in members:
            member.sock.close()
        for node in nodes:
            node.stop()


def figures(chats: int, size: int, expected: int, received: int, took: float,
            cpu: List[float]) -> Dict[str, float]:
    node_s, redis_s, client_s = cpu
    return {"deliveries_per_s": min(received, expected) / took, "seconds": took,
            "missing": max(0, expected - received), "extra": max(0, received - expected),
            "node_us_per_chat": 1e6 * node_s / chats,
            "node_us_per_delivery": 1e6 * node_s / (chats * size),
            "redis_us_per_chat": 1e6 * redis_s / chats,
            "client_us_per_chat": 1e6 * client_s / chats}


def medians(runs: List[Dict[str, float]]) -> Dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def paired(runs: Dict[str, List[Dict[str, float]]]) -> Dict[str, float]:
    """Each set-up's node CPU per chat against alone's in the same round, the median over the
    rounds: the machine's speed drifts from round to round more than within one. (Every
    round of alone took a clock tick or more.)"""
    return {setup: statistics.median(run["node_us_per_chat"] / alone["node_us_per_chat"]
                                     for run, alone in zip(runs[setup], runs["alone"]))
            for setup in SETUPS[1:] if setup in runs}


def capacity(n: int, node_us: float, node_extra: float, redis_us: float,
             redis_extra: float) -> Tuple[float, float]:
    """Chats/s of n nodes, each on a core of its own, and of one Redis (see the docstring)."""
    nodes = n * 1e6 / (node_us + (n - 1) * node_extra)
    redis = 1e6 / (redis_us + (n - 1) * redis_extra) if redis_us > 0 else float("inf")
    return nodes, redis


def project(summary: Dict[str, Dict[str, float]], size: int) -> Dict[str, object]:
    """The projection table of one load, for the local and the spread layout."""
    if not all(row["node_us_per_chat"] > 0 for row in summary.values()):
        return {"alone_deliveries_per_s_one_core": None, "layouts": {}}   # under one tick
    one, alone = summary["bus-1"], summary["alone"]
    alone_rate = size * 1e6 / alone["node_us_per_chat"]
    shared_core = summary.get("alone-2", alone)["node_us_per_chat"] - alone["node_us_per_chat"]
    layouts = {}
    for layout in ("local", "spread"):
        two = summary["bus-2-" + layout]
        extra = max(0.0, two["node_us_per_chat"] - one["node_us_per_chat"] - shared_core)
        redis_extra = max(0.0, two["redis_us_per_chat"] - one["redis_us_per_chat"])
        costs = (one["node_us_per_chat"], extra, one["redis_us_per_chat"], redis_extra)
        rows = {}
        for n in PROJECT_N:
            nodes, redis = capacity(n, *costs)
            rows[n] = {"deliveries_per_s": size * min(nodes, redis),
                       "ratio_to_alone": size * min(nodes, redis) / alone_rate,
                       "limit": "redis" if redis < nodes else "nodes"}
        redis_limit = next((n for n in range(1, MAX_N + 1)
                            if capacity(n, *costs)[1] <= capacity(n, *costs)[0]), None)
        layouts[layout] = {"node_us_extra_per_node": extra, "shared_core_us": shared_core,
                           "redis_us_extra_per_node": redis_extra,
                           "rows": rows, "redis_limit_from_n": redis_limit}
    return {"alone_deliveries_per_s_one_core": alone_rate, "layouts": layouts}


def print_load(name: str, summary: Dict[str, Dict[str, float]],
               projection: Dict[str, object]) -> None:
    alone = dict(summary["alone"], node_us_per_chat=summary["alone"]["node_us_per_chat"] or 1e-9)
    print("%s (medians)     deliveries/s  vs alone  node µs/chat  µs/delivery  redis µs/chat"
          "  vs alone CPU  missing extra" % name)
    for setup in SETUPS:
        row = summary[setup]
        print("  %-13s %12.0f  %8.2f  %12.1f  %11.2f  %13.1f  %12.2f  %7d %5d"
              % (setup, row["deliveries_per_s"],
                 row["deliveries_per_s"] / alone["deliveries_per_s"], row["node_us_per_chat"],
                 row["node_us_per_delivery"], row["redis_us_per_chat"],
                 row["node_us_per_chat"] / alone["node_us_per_chat"], row["missing"],
                 row["extra"]))
    if not projection["layouts"]:
        print("  no projection: a node's CPU in under one clock tick (%g s); raise --messages"
              % (1 / TICK))
        return
    print("  projection, each node on a core of its own (one node alone on one core: %.0f "
          "deliveries/s)" % projection["alone_deliveries_per_s_one_core"])
    layouts = projection["layouts"]
    print("  %3s  %14s %8s %6s  %14s %8s %6s"
          % ("N", "local deliv/s", "x alone", "limit", "spread deliv/s", "x alone", "limit"))
    for n in PROJECT_N:
        cells = [(layouts[layout]["rows"][n]["deliveries_per_s"],
                  layouts[layout]["rows"][n]["ratio_to_alone"], layouts[layout]["rows"][n]["limit"])
                 for layout in ("local", "spread")]
        print("  %3d  %14.0f %8.2f %6s  %14.0f %8.2f %6s" % ((n,) + cells[0] + cells[1]))
    for layout, table in layouts.items():
        limit = table["redis_limit_from_n"]
        print("  %-6s each added node: +%.1f node µs and +%.1f Redis µs per chat; %s"
              % (layout, table["node_us_extra_per_node"], table["redis_us_extra_per_node"],
                 "Redis is the limit from N=%d" % limit if limit
                 else "Redis is not the limit up to N=%d" % MAX_N))
    print("  (two nodes on one core cost %+.1f µs a chat more than one without any bus "
          "(alone-2 - alone): taken off each added node's)"
          % layouts["local"]["shared_core_us"])


def parse_load(text: str) -> Tuple[int, int]:
    rooms, _, members = text.partition("x")
    if not (rooms.isdigit() and members.isdigit() and int(rooms) and int(members)):
        raise argparse.ArgumentTypeError("a load is ROOMSxMEMBERS, such as 100x5")
    return int(rooms), int(members)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--load", type=parse_load, action="append",
                        help="ROOMSxMEMBERS, repeatable (default: %s)" % " ".join(LOADS))
    parser.add_argument("--messages", type=int, default=60, help="chats per member (60)")
    parser.add_argument("--window", type=int, default=8,
                        help="a member's own chats on their way at most (8)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per set-up (3)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one round may take at most (60)")
    parser.add_argument("--pin", action="store_true",
                        help="the nodes on the last core, this client and Redis on the others")
    parser.add_argument("--full", action="store_true",
                        help="twice the rooms for the two-node set-ups, so that each node "
                             "carries the load one node carries alone")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    args.load = args.load or [parse_load(load) for load in LOADS]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tests.redis_server import REDIS_SERVER, RedisProcess     # the tests' throw-away Redis
    if not REDIS_SERVER:
        print("bus_cpu: redis-server is not installed here", file=sys.stderr)
        return 2
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2:
            print("bus_cpu: --pin needs Linux and two cores or more", file=sys.stderr)
            return 2
        args.node_cpus = {cpus[-1]}
        os.sched_setaffinity(0, cpus[:-1])          # this client, and Redis (started below)
    redis = RedisProcess()
    results: Dict[str, Dict[str, object]] = {}
    try:
        for rooms, size in args.load:
            name = "rooms%dx%d" % (rooms, size)
            runs: Dict[str, List[Dict[str, float]]] = {setup: [] for setup in SETUPS}
            for round_ in range(args.repeat):
                for setup in SETUPS:
                    run = one_round((rooms, size), setup, args, redis,
                                    "cpu%s%d%s" % (name, round_, setup))
                    runs[setup].append(run)
                    print("%s round %d %-13s %9.0f deliveries/s, node %.1f µs/chat, redis %.1f "
                          "µs/chat, missing %d" % (name, round_ + 1, setup,
                                                   run["deliveries_per_s"],
                                                   run["node_us_per_chat"],
                                                   run["redis_us_per_chat"], run["missing"]),
                          file=sys.stderr)
            summary = {setup: medians(runs[setup]) for setup in SETUPS}
            projection = project(summary, size)
            print_load(name, summary, projection)
            ratios = paired(runs) if all(run["node_us_per_chat"] > 0 for run in runs["alone"]) \
                else {}
            if ratios:
                print("  node CPU vs alone, round by round (the median): %s" % ", ".join(
                    "%s %.2f" % ratio for ratio in ratios.items()))
            results[name] = {"median": summary, "projection": projection, "rounds": runs,
                             "paired_vs_alone": ratios}
    finally:
        redis.stop()
    if args.json:
        print(json.dumps({"args": {"loads": ["%dx%d" % load for load in args.load],
                                   "messages": args.messages, "window": args.window,
                                   "repeat": args.repeat, "pin": args.pin, "full": args.full},
                          "results": results}))
    lost = any(run["missing"] or run["extra"] for result in results.values()
               for runs in result["rounds"].values() for run in runs)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
