"""Many connections at once: N clients in R rooms, all joined; then one chat in every room must
reach all N members. Reports how long each step took and what a connection costs the server.

    python3 -m tools.many --spawn                                  # 10000 clients, 100 rooms
    python3 -m tools.many --spawn --connections 2000 --rooms 20
    python3 -m tools.many --port 8080 --connections 1000 --rooms 10

The steps, each within --seconds, all clients in one loop and one kit.Crowd (nonblocking
connects, at most --window at once, so that the server's listen backlog never overflows):
1. client i ("m<i>") connects and joins room "many-<i % R>". Timed from the first connect:
   until every client is connected, every JOINED_CHATROOM and every join announcement has come
   (a room of n owes n(n+1)/2, counted with ReplyReader.count_chats()), so the server's output
   queues are empty again. A room keeps one ROOM_REF of its own; JOIN_IDs are all distinct.
2. the server's RSS (with --spawn): per connection = (RSS now - RSS before connecting) / N;
3. the first member of every room sends one CHAT; timed until all N members have it; then a
   last look (DUPLICATE_WAIT) for duplicates: every member must have it exactly once;
4. everyone closes; a HELO must still be answered; the server's RSS once more.

Open files: each side needs N + a few; this process raises its soft RLIMIT_NOFILE to the hard
limit (as Server.py does), and the summary reports the limits (with --spawn, the server's too).
"""
import argparse
import os
import sys
if not __package__:   # run as a script (python3 tools/X.py) from any folder: find the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import time
from typing import Dict, List

from sansio.replies import ChatMessage
from sansio.wire import chat_request
from tools import kit

DEFAULT_CONNECTIONS = 10000
DEFAULT_ROOMS = 100                # or one room per connection, for fewer connections
# Connections being set up at once: below the server's listen backlog (reactor.py asks for
# 1024, itself capped by net.core.somaxconn), so the kernel never has to drop a SYN.
DEFAULT_WINDOW = 1000
DEFAULT_STEP_SECONDS = 120.0       # the longest any one step may take
DUPLICATE_WAIT = 0.5               # after the last chat arrived: time for a duplicate to show


class Many:
    """One run: `connections` members in `rooms` rooms ("PREFIX-<i % R>") on one kit.Crowd,
    and the steps of the module docstring; `wait` is how kit.Waiter bounds each step (loadgen's
    connections scenario brings its own)."""

    def __init__(self, target: kit.Target, report: kit.Report, connections: int, rooms: int,
                 window: int = kit.CONNECT_CONCURRENCY, prefix: str = "many", **wait) -> None:
        self.target, self.report, self.rooms = target, report, rooms
        self.loop = kit.Loop(target.address, concurrency=window)
        self.members = [kit.Member("%s-%d" % (prefix, i % rooms), "m%d" % i)
                        for i in range(connections)]
        self.crowd = kit.Crowd(self.loop, self.members, report)
        self.wait = kit.Waiter(self.loop, report, lambda: report.progress(self.progress_line),
                               **wait)

    def progress_line(self) -> str:
        rss = self.target.rss_kb()
        return self.crowd.progress_line() + (", server RSS %d kB" % rss if rss else "")

    def run(self, helo_timeout: float) -> Dict[str, object]:
        crowd, target = self.crowd, self.target
        rss = {"before": target.rss_kb()}
        # 1. connect and join
        joined = crowd.join(self.wait)
        figures: Dict[str, object] = {"connections": len(self.members), "rooms": self.rooms}
        figures.update(crowd.join_figures(), chat_seconds=None, delivered=0,
                       missing=len(self.members), extra=0)
        rss["after_joins"] = target.rss_kb()

        # 2. one chat in every room, from its first member (member r is the first of room r)
        if joined:
            senders = [m for m in self.members[:self.rooms] if m.ref is not None and not m.failed]
            texts = {m: "hello %s from %s" % (m.room, m.name) for m in senders}
            sends = {m: chat_request(m.ref, m.join_id, m.name, text) for m, text in texts.items()}
            expected = {m.room: ChatMessage(m.ref, m.name, text) for m, text in texts.items()}
            started = time.monotonic()
            if crowd.chat(self.wait, 1, sends, expected):
                figures["chat_seconds"] = round(time.monotonic() - started, 3)
            end = time.monotonic() + DUPLICATE_WAIT
            self.wait("a last look for duplicates", lambda: time.monotonic() >= end)
            figures.update(crowd.tally(self.members))
            rss["after_chat"] = target.rss_kb()

        # 3. everyone goes; the server must still answer
        self.loop.close_all()
        ok, _seconds, problem = kit.helo_check(target.host, target.port, helo_timeout)
        if not ok:
            self.report.fail("no_helo_after_close", problem)
        time.sleep(0.2)                     # let the server finish closing everything
        if target.server:
            rss["after_close"] = target.rss_kb()
            rss["peak"] = target.server.status_kb("VmHWM")
            if rss["before"] and rss["after_joins"]:
                figures["server_rss_bytes_per_connection"] = round(
                    (rss["after_joins"] - rss["before"]) * 1024.0 / len(self.members))
        figures["server_rss_kb"] = rss
        return figures

    def headline(self, figures: Dict[str, object]) -> str:
        per_connection = figures.get("server_rss_bytes_per_connection")
        return ("%d connections joined in %s s, every member reached in %s s%s"
                % (figures["joined"], figures["announce_seconds"], figures["chat_seconds"],
                   ", %s bytes of server RSS each" % per_connection if per_connection else ""))


def run_many(args: argparse.Namespace, target: kit.Target, report: kit.Report):
    limits = kit.enough_files(report, args.connections)
    if target.server is not None:
        limits["server_open_files_soft_hard"] = target.server.open_file_limit()
    if report.failed:
        return {"limits": limits}, ""
    many = Many(target, report, args.connections, args.rooms, args.window, seconds=args.seconds)
    figures = dict(many.run(args.seconds), limits=limits)
    return figures, many.headline(figures)


OPTIONS: List[kit.Option] = [
    ("--connections", int, DEFAULT_CONNECTIONS, "clients", 1, None),
    ("--rooms", int, None, "rooms (None: %d, at most one per client)" % DEFAULT_ROOMS, 1, None),
    ("--window", int, DEFAULT_WINDOW, "connections being set up at once", 1, None)]


def check_rooms(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.rooms is None:
        args.rooms = min(DEFAULT_ROOMS, args.connections)
    if args.rooms > args.connections:
        parser.error("--rooms must be at most --connections")


TOOL = kit.Tool("many", __doc__, run_many, OPTIONS,
                (DEFAULT_STEP_SECONDS, "the longest any one step may take"), check=check_rooms)
parse_args, main = TOOL.parse_args, TOOL.main

if __name__ == "__main__":
    sys.exit(main())
