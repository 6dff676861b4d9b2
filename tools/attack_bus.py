"""Attacks on a group of bus nodes: two Server.py nodes sharing one throw-away Redis, each case
measured and judged against its target (docs/CLUSTER.md, "Under attack").

    python3 -m tools.attack_bus departure --members 4000
    python3 -m tools.attack_bus rooms --seconds 60 --max-rooms 5000
    python3 -m tools.attack_bus stall --stall 11
    python3 -m tools.attack_bus all --quick
    python3 -m tools.attack_bus departure --server-dir /path/to/another/checkout

Each run starts its own redis-server (tests/redis_server.py: 127.0.0.1, a free port, nothing on
disk) and two nodes on free ports of 127.0.0.1 (--bus, --bus-prefix of the run), and ends them
all by their pids. Needs redis-server on this machine. Every wait is bounded.

Scenarios (--quick: the small sizes the unit tests use):
  departure  --members (2000; quick 300) members of one room on node A reset at once (SO_LINGER
             0), while --remain (10) members of that room on node B must hear every leave,
             once each, and an unrelated probe on node A times its own chat's echo (one in
             flight, one every 20 ms). Target: probe max <= 200 ms, every leave heard on B.
  rooms      for --seconds (60; quick 5), --connections (100; quick 10) connections on each
             node JOIN fresh room names (of 200 characters) and LEAVE them, as fast as each
             node's room-creation limits let them, with --max-rooms (5000; quick 200) as both
             nodes' --bus-max-rooms. Figures: rooms created, each node's RSS growth.
             Target: growth <= 20 MiB on each node (what the group keeps is bounded, so must
             each node's memory be).
  stall      --members (50; quick 10) idle members of one room, half on each node; Redis is
             stopped (SIGSTOP: it serves nobody, as DEBUG SLEEP) for --stall seconds (11), then
             watched for --watch seconds (15). Target: no member hears a join or a leave (none
             happened); then a chat from node A reaches every member on node B.
  all        each scenario at its --quick size, a fresh group each.

The probe is tools/attack.py's, in a process of its own. On a machine shared with other work,
latency figures move with the load: rerun a failed latency alone before reading much into it.
"""
import argparse
import collections
import os
import signal
import sys
if not __package__:   # run as a script (python3 tools/X.py) from any folder: find the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import time
from typing import Callable, Dict, List, Optional, Tuple

from sansio.replies import ChatMessage
from sansio.wire import chat_request
from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisProcess
from tools import kit
from tools.attack import (LOOP_WAIT, PROBE_MAX_TARGET_MS, AttackServer, Crowd, CrowdMember, Probe,
                          RoomFlood, RoomsConn, check_probe, mib, run_tag)

TOOL = "attack_bus"
# The join announcements the members may owe unread while joining (about 70 bytes each, so some
# 14 MB queued at most): 4 000 members of one room owe 8 million, and joined all at once the
# server, faster than this one process reads, queued past its memory budget (and cut the
# members furthest behind, as it should) before the departure could be measured.
JOIN_WINDOW = 200_000
# rooms: each node's RSS may grow this much over the run (the filed target).
ROOM_GROWTH_TARGET_MIB = 20.0
# rooms: the length of the room names created (the protocol allows 256 characters).
ROOM_NAME_CHARS = 200
# departure: after every leave is heard, the probe goes on this long (a tick still running).
AFTER_STORM = 0.5
# stall: how long a chat sent after the watch may take to reach node B's members.
CHAT_AFTER_STALL_SECONDS = 10.0
# scenario -> option -> (default, quick default)
SIZES: Dict[str, Dict[str, Tuple[float, float]]] = {
    "departure": {"members": (2000, 300), "remain": (10, 5), "seconds": (120.0, 30.0)},
    "rooms": {"seconds": (60.0, 5.0), "connections": (100, 10), "max_rooms": (5000, 200)},
    "stall": {"members": (50, 10), "stall": (11.0, 11.0), "watch": (15.0, 15.0)},
}
SCENARIOS = tuple(SIZES)


class Node:
    """One node of the group, as tools/attack.py's Crowd and RoomFlood want a target."""

    def __init__(self, server: AttackServer) -> None:
        self.server = server
        self.host, self.port = server.host, server.port
        self.address = kit.resolve(self.host, self.port)

    def rss_kb(self) -> Optional[int]:
        return self.server.rss_kb()


class Group:
    """A throw-away Redis and two nodes of `server_dir` on it (options added to each)."""

    def __init__(self, server_dir: str, options: List[str]) -> None:
        self.redis = RedisProcess()
        self.nodes: List[Node] = []
        prefix = "attack-" + run_tag()
        try:
            for _ in range(2):
                self.nodes.append(Node(AttackServer(
                    server_dir, ["--bus", self.redis.url, "--bus-prefix", prefix] + options,
                    "warning")))
        except BaseException:
            self.stop()
            raise

    def logs(self) -> List[str]:
        return [node.server.log() for node in self.nodes]

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()
        self.redis.stop()


def poll_both(crowds: List[Crowd], seconds: float, is_done: Callable[[], bool]) -> bool:
    """Read every crowd's connections until is_done() or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not is_done():
        if time.monotonic() >= deadline:
            return False
        for crowd in crowds:
            crowd.loop.poll(LOOP_WAIT)
    return True


def join_both(crowds: List[Crowd], sides: List[List[CrowdMember]], seconds: float,
              report) -> bool:
    """Join each crowd's members in turn (node A's, then node B's), then read node A's
    announcements of node B's joins: every count starts from zero."""
    for crowd, members in zip(crowds, sides):
        if crowd.join(members, seconds, window=JOIN_WINDOW) is None:
            return False
    first, later = sides
    owed = len(first) * len(later)
    if not poll_both(crowds, seconds, lambda: sum(m.counted for m in first) >= owed):
        report.fail("join_timeout", "node A's members did not hear node B's joins")
        return False
    for member in first + later:
        member.counted = 0
    return True


# ---------------------------------------------------------------------------------------------
# departure: node A's members reset at once; node B hears every leave; node A's probe
# ---------------------------------------------------------------------------------------------

def scenario_departure(args: argparse.Namespace, group: Group, report):
    node_a, node_b = group.nodes
    tag = run_tag()
    room = "depart-" + tag
    crowds = [Crowd(node_a, report), Crowd(node_b, report)]
    goers = [CrowdMember(room, "go%d" % i) for i in range(args.members)]
    stayers = [CrowdMember(room, "stay%d" % i) for i in range(args.remain)]
    figures: Dict[str, object] = {"members": args.members, "remain": args.remain}
    if not join_both(crowds, [goers, stayers], args.seconds, report):
        return figures, "could not join"
    crowds[1].suffix = None
    probe = Probe(node_a.host, node_a.port, "probe-" + tag)
    probe.ready.wait(10)
    time.sleep(0.3)
    started = time.monotonic()
    for member in goers:
        crowds[0].loop.close(member, reset=True)

    def all_told() -> bool:
        return all(m.lost or len(m.lefts) >= len(goers) for m in stayers)
    told = poll_both(crowds[1:], args.seconds, all_told)
    storm_end = time.monotonic()
    figures["storm_seconds"] = round(storm_end - started, 3)
    if not told:
        report.fail("storm_timeout", "not every member on node B heard every leave within %g s"
                    % args.seconds)
    poll_both(crowds[1:], AFTER_STORM, lambda: False)       # (a leave told twice shows)
    missing = sum(sum(1 for g in goers if m.lefts.get(g.name, 0) == 0) for m in stayers)
    doubled = sum(sum(c - 1 for c in m.lefts.values() if c > 1) for m in stayers)
    figures.update(leaves_missing=missing, leaves_duplicated=doubled)
    if missing or doubled:
        report.fail("leaves_not_once", "node B's members: %d leaves missing, %d duplicated"
                    % (missing, doubled))
    probe.stop()
    figures.update(probe.figures(started, storm_end + AFTER_STORM))
    check_probe(report, figures, probe, None, PROBE_MAX_TARGET_MS)
    for crowd in crowds:
        crowd.loop.close_all()
    return figures, ("%d members of node A reset: node B told in %s s; node A's probe p99 %s "
                     "ms, max %s ms (target <= %g)" % (
                         args.members, figures["storm_seconds"], figures.get("probe_p99_ms"),
                         figures.get("probe_max_ms"), PROBE_MAX_TARGET_MS))


# ---------------------------------------------------------------------------------------------
# rooms: room creation at the limits; each node's memory
# ---------------------------------------------------------------------------------------------

def scenario_rooms(args: argparse.Namespace, group: Group, report):
    tag = run_tag()
    before = [node.rss_kb() for node in group.nodes]
    # Room names of ROOM_NAME_CHARS: a node keeps the name of every room it hears of.
    pad = "x" * max(0, ROOM_NAME_CHARS - len(tag) - 20)
    floods = [RoomFlood(node, report, 1 << 60, "%s-%s-%s" % (tag, name, pad))  # (bounded by time)
              for node, name in zip(group.nodes, "ab")]
    for flood in floods:
        for _ in range(args.connections):
            flood.loop.connect(RoomsConn())
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for flood in floods:
            flood.loop.poll(LOOP_WAIT)
        report.progress(lambda: "rooms: %d created, codes %s, RSS %s MiB" % (
            sum(f.created for f in floods), [dict(f.codes) for f in floods],
            [mib(n.rss_kb()) for n in group.nodes]))
    for flood in floods:
        flood.loop.run_until(lambda: False, 0.5, wait=LOOP_WAIT)    # the last LEAVEs
    after = [node.rss_kb() for node in group.nodes]
    created = sum(flood.created for flood in floods)
    codes = sum((flood.codes for flood in floods), collections.Counter())
    for flood in floods:
        flood.loop.close_all()
    growth = [None if b is None or a is None else mib(a - b) for b, a in zip(before, after)]
    figures: Dict[str, object] = {
        "seconds": args.seconds, "connections": args.connections, "max_rooms": args.max_rooms,
        "rooms_created": created, "error_codes": {str(k): v for k, v in sorted(codes.items())},
        "rss_before_mib": [mib(kb) for kb in before], "rss_after_mib": [mib(kb) for kb in after],
        "rss_growth_mib": growth}
    for code, count in codes.items():
        if code != 13:                      # (13: the room-creation limits, waited out)
            report.fail("error_%d" % code, "%d JOINs got ERROR_CODE %d" % (count, code))
    for name, grew in zip("AB", growth):
        if grew is not None and grew > ROOM_GROWTH_TARGET_MIB:
            report.fail("memory_growth", "node %s grew %.1f MiB over %d rooms created, target "
                        "<= %g MiB" % (name, grew, created, ROOM_GROWTH_TARGET_MIB))
    return figures, ("%d rooms created in %g s on both nodes with --bus-max-rooms %d: nodes "
                     "grew %s MiB (target <= %g)" % (
                         created, args.seconds, args.max_rooms,
                         " and ".join(map(str, growth)), ROOM_GROWTH_TARGET_MIB))


# ---------------------------------------------------------------------------------------------
# stall: Redis serves nobody for a while; nobody may hear a join or leave that did not happen
# ---------------------------------------------------------------------------------------------

def scenario_stall(args: argparse.Namespace, group: Group, report):
    room = "stall-" + run_tag()
    crowds = [Crowd(node, report) for node in group.nodes]
    half = args.members // 2
    sides = [[CrowdMember(room, "a%d" % i) for i in range(half)],
             [CrowdMember(room, "b%d" % i) for i in range(args.members - half)]]
    figures: Dict[str, object] = {"members": args.members, "stall_seconds": args.stall,
                                  "watch_seconds": args.watch}
    if not join_both(crowds, sides, 30.0, report):
        return figures, "could not join"
    chats: List[Tuple[CrowdMember, object]] = []
    for crowd in crowds:
        crowd.on_other = lambda member, reply: chats.append((member, reply))
    os.kill(group.redis.proc.pid, signal.SIGSTOP)
    try:
        poll_both(crowds, args.stall, lambda: False)
    finally:
        os.kill(group.redis.proc.pid, signal.SIGCONT)
    poll_both(crowds, args.watch, lambda: False)
    members = sides[0] + sides[1]
    joins = sum(m.counted for m in members)
    leaves = sum(sum(m.lefts.values()) for m in members)
    reaped = sum(log.count("declared") for log in group.logs())
    figures.update(false_joins=joins, false_leaves=leaves, nodes_declared_dead=reaped)
    if joins or leaves:
        report.fail("false_announcements", "after a %g s stall of Redis, members heard %d joins "
                    "and %d leaves that did not happen" % (args.stall, joins, leaves))
    sender = sides[0][0]
    crowds[0].loop.send(sender, chat_request(sender.ref, sender.join_id, sender.name,
                                             "after the stall"))

    def heard() -> bool:
        return len({id(m) for m, r in chats if isinstance(r, ChatMessage)
                    and r.message == "after the stall" and m in sides[1]}) == len(sides[1])
    if not poll_both(crowds, CHAT_AFTER_STALL_SECONDS, heard):
        report.fail("no_chat_after", "a chat from node A did not reach node B's members "
                    "within %g s of the watch: %r" % (CHAT_AFTER_STALL_SECONDS, chats[-3:]))
    for crowd in crowds:
        crowd.loop.close_all()
    return figures, ("Redis stalled %g s: %d false joins, %d false leaves heard by %d idle "
                     "members (target 0), %d node(s) declared dead" % (
                         args.stall, joins, leaves, args.members, reaped))


RUNNERS = {"departure": scenario_departure, "rooms": scenario_rooms, "stall": scenario_stall}


def sized(args: argparse.Namespace, scenario: str, quick: bool) -> argparse.Namespace:
    """A copy of `args` with every option the command line left unset given the scenario's
    size (its --quick size if `quick`)."""
    chosen = argparse.Namespace(**vars(args))
    for option, (full, small) in SIZES[scenario].items():
        if getattr(chosen, option) is None:
            setattr(chosen, option, type(full)(small if quick else full))
    return chosen


def run_scenario(scenario: str, args: argparse.Namespace, report) -> Dict[str, object]:
    """One scenario on a fresh group: its figures, with "ok" and "headline"."""
    before = report.failed
    options = ["--bus-max-rooms", str(args.max_rooms)] if scenario == "rooms" else []
    group = Group(args.server_dir, options)
    try:
        figures, headline = RUNNERS[scenario](args, group, report)
        for name, node in zip("AB", group.nodes):
            if not node.server.alive():
                report.fail("node_exited", "node %s: %s" % (name, node.server.log()[-500:]))
    finally:
        group.stop()
    figures = dict({"scenario": scenario, "server_dir": args.server_dir}, **figures)
    figures.update(ok=report.failed == before, headline=headline)
    report.note("%s: %s: %s" % (scenario, "PASS" if figures["ok"] else "FAIL", headline))
    return figures


def run(args: argparse.Namespace) -> Dict[str, object]:
    report = kit.Report(TOOL, quiet=args.quiet)
    if not REDIS_SERVER:
        report.fail("no_redis", SKIP_REASON)
        return report.summary({}, "not run")
    kit.raise_nofile_limit()
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = {name: run_scenario(name, sized(args, name, args.quick or args.scenario == "all"),
                                  report) for name in chosen}
    passed = sum(1 for figures in results.values() if figures["ok"])
    return report.summary({"scenarios": results}, "%d of %d scenarios passed"
                          % (passed, len(results)))


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tools." + TOOL, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("scenario", choices=SCENARIOS + ("all",))
    add("--quick", action="store_true", help="the small sizes (as the unit tests use)")
    add("--members", type=int, default=None, help="departure: members of node A that reset; "
        "stall: idle members, half on each node")
    add("--remain", type=int, default=None, help="departure: members on node B")
    add("--seconds", type=float, default=None, help="departure: the longest a step may take; "
        "rooms: how long rooms are created")
    add("--connections", type=int, default=None, help="rooms: connections creating rooms")
    add("--max-rooms", type=int, default=None, help="rooms: the nodes' --bus-max-rooms")
    add("--stall", type=float, default=None, help="stall: seconds Redis serves nobody")
    add("--watch", type=float, default=None, help="stall: seconds watched after it")
    add("--server-dir", default=kit.REPO_ROOT, help="the checkout whose Server.py the nodes "
        "run (default: this one)")
    add("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    for option in ("members", "remain", "seconds", "connections", "max_rooms", "stall", "watch"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            parser.error("--%s must be more than 0" % option.replace("_", "-"))
    if args.members is not None and args.members < 2 and args.scenario == "stall":
        parser.error("--members must be at least 2 for stall (one on each node)")
    kit.require_server_dir(parser, args.server_dir)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Run one scenario (or all) and print its verdict and summary; 0 when it passed."""
    return kit.emit(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
