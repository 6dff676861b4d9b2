"""Many connections at once: N clients in R rooms, all joined; then one chat in every room must
reach all N members. Reports how long each step took and what a connection costs the server.

    python3 -m tools.many --spawn                                  # 10000 clients, 100 rooms
    python3 -m tools.many --spawn --connections 2000 --rooms 20
    python3 -m tools.many --port 8080 --connections 1000 --rooms 10

Steps, all clients in one loop (tools/kit.py; nonblocking connects, at most --window being set
up at once so that the server's listen backlog never overflows):
1. connect N clients; each sends JOIN_CHATROOM for room i % R as it connects (client i is
   "m<i>", the room "many-<r>"). Timed from the first connect: until every client is
   connected, until every JOINED_CHATROOM has arrived, and until every join announcement has
   (room r's n members between them receive n(n+1)/2: each its own and those of everyone who
   joined after it), so the server's output queues are empty again. ROOM_REFs must be one per
   room and distinct, JOIN_IDs distinct.
2. the server's RSS (with --spawn): per connection = (RSS now - RSS before connecting) / N;
3. the first member of every room sends one CHAT; timed until all N members have it; then a
   last look (DUPLICATE_WAIT) for duplicates: every member must have it exactly once;
4. everyone closes; a HELO must still be answered; the server's RSS once more.
Each step may take at most --seconds. The flood of announcements is counted with
ReplyReader.count_chats(), a few searches in C per read.

Open files: each side needs N + a few descriptors. This process raises its soft RLIMIT_NOFILE
to the hard limit, and Server.py does the same as it starts; the summary reports the limits
found and, with --spawn, the server's own.
"""
import argparse
import sys
import time
from typing import Callable, Dict, List, Optional

from protocol import JOINED_TEXT, ChatMessage, JoinedReply, chat_request, join_request
from tools import kit

DEFAULT_CONNECTIONS = 10000
DEFAULT_ROOMS = 100                # or one room per connection, for fewer connections
# Connections being set up at once: below the server's listen backlog (reactor.py asks for
# 1024, itself capped by net.core.somaxconn), so the kernel never has to drop a SYN.
DEFAULT_WINDOW = 1000
DEFAULT_STEP_SECONDS = 120.0       # the longest any one step may take
DUPLICATE_WAIT = 0.5               # after the last chat arrived: time for a duplicate to show
SPARE_FILES = 64                   # descriptors needed beyond one per connection
JOINED_SUFFIX = JOINED_TEXT % ""


class Member(kit.Member):
    """Client `index` in room "many-<room_index>", and what it has received."""

    def __init__(self, index: int, room_index: int) -> None:
        super().__init__("many-%d" % room_index, "m%d" % index)
        self.index = index
        self.room_index = room_index
        self.connected = False
        self.lost = False
        self.announcements = 0
        self.finals = 0


class Many(kit.Handler):
    def __init__(self, args: argparse.Namespace, target: kit.Target, report: kit.Report) -> None:
        self.args = args
        self.report = report
        self.server = target.server
        self.host, self.port = target.host, target.port
        self.loop = kit.Loop(target.address, self, concurrency=args.window)
        self.members = [Member(i, i % args.rooms) for i in range(args.connections)]
        self.refs: Dict[int, int] = {}              # room index -> ROOM_REF
        self.join_ids: set = set()
        self.finals: Dict[int, ChatMessage] = {}    # room index -> its chat, once sent
        self.step = "connections"

    # -- the loop's handler ----------------------------------------------------------------------

    def connected(self, member: Member) -> None:
        member.connected = True
        self.loop.send(member, join_request(member.room, member.name))

    def connect_failed(self, member: Member, exc: OSError) -> None:
        self.report.fail("connect_failed", "client %d: %s" % (member.index, exc))
        member.lost = True

    def closed(self, member: Member, exc: Optional[OSError]) -> None:
        self.report.fail("closed_by_server", "client %d during %s: %s"
                         % (member.index, self.step, exc or "closed"))
        member.lost = True

    def received(self, member: Member) -> None:
        reader = member.reader
        while True:
            if member.ref is not None:
                member.announcements += reader.count_chats(member.ref, JOINED_SUFFIX)
                final = self.finals.get(member.room_index)
                if final is not None:
                    member.finals += reader.count_chats(member.ref, final.message)
            reply = reader.maybe_next_reply()
            if reply is None:
                return
            if member.ref is None and isinstance(reply, JoinedReply):
                self._joined(member, reply)
            elif (isinstance(reply, ChatMessage) and reply.ref == member.ref
                  and reply.message.endswith(JOINED_SUFFIX)):
                member.announcements += 1
            elif member.ref is not None and reply == self.finals.get(member.room_index):
                member.finals += 1
            else:
                self.report.fail("unexpected_message", "client %d got %r"
                                 % (member.index, reply))

    def _joined(self, member: Member, reply: JoinedReply) -> None:
        if reply.room != member.room:
            self.report.fail("wrong_reply", "client %d joined %s, got %r"
                             % (member.index, member.room, reply))
            return
        member.ref, member.join_id = reply.ref, reply.join_id
        if self.refs.setdefault(member.room_index, reply.ref) != reply.ref:
            self.report.fail("two_refs", "room %s has ROOM_REFs %d and %d"
                             % (member.room, self.refs[member.room_index], reply.ref))
        if reply.join_id in self.join_ids:
            self.report.fail("join_id_twice", "JOIN_ID %d given twice" % reply.join_id)
        self.join_ids.add(reply.join_id)

    # -- the steps -------------------------------------------------------------------------------

    def run_step(self, step: str, done: Callable[[], bool]) -> Optional[float]:
        """Run the loop until done(); return the seconds it took, or None after --seconds."""
        self.step = step
        started = time.monotonic()
        if self.loop.run_until(done, self.args.seconds,
                               lambda: self.report.progress(self.progress_line)):
            return round(time.monotonic() - started, 3)
        self.report.fail("timeout", "%s: not done within %g s" % (step, self.args.seconds))
        return None

    def progress_line(self) -> str:
        members = self.members
        rss = self.server.rss_kb() if self.server else None
        return ("%s: %d connected, %d joined, %d got the chat%s"
                % (self.step, sum(m.connected for m in members),
                   sum(m.ref is not None for m in members), sum(m.finals for m in members),
                   ", server RSS %d kB" % rss if rss else ""))

    def run(self) -> Dict[str, object]:
        args, members, n = self.args, self.members, len(self.members)
        rss = {"before": self.server.rss_kb() if self.server else None}
        room_sizes = [0] * args.rooms
        for member in members:
            room_sizes[member.room_index] += 1
        owed = [size * (size + 1) // 2 for size in room_sizes]

        def live() -> List[Member]:
            return [m for m in members if not m.lost]

        def all_announced() -> bool:
            got = [0] * args.rooms
            for member in members:
                got[member.room_index] += member.announcements
            return got == owed

        # 1. connect and join
        for member in members:
            self.loop.connect(member)
        figures: Dict[str, object] = {"connections": n, "rooms": args.rooms}
        figures["connect_seconds"] = self.run_step(
            "connections", lambda: all(m.connected or m.lost for m in members))
        figures["join_seconds"] = self.run_step(
            "JOINED_CHATROOM replies", lambda: all(m.ref is not None for m in live()))
        figures["announce_seconds"] = self.run_step("join announcements", all_announced)
        # from the first connect, as the step names say: until joined, until announced
        for later, earlier in (("join_seconds", "connect_seconds"),
                               ("announce_seconds", "join_seconds")):
            if figures[later] is not None and figures[earlier] is not None:
                figures[later] = round(figures[later] + figures[earlier], 3)
        figures["joined"] = sum(1 for m in members if m.ref is not None)
        if len(set(self.refs.values())) != len(self.refs):
            self.report.fail("two_refs", "two rooms share a ROOM_REF: %r" % self.refs)
        rss["after_joins"] = self.server.rss_kb() if self.server else None

        # 2. one chat in every room, from its first member
        for member in live():
            if member.ref is not None and member.room_index not in self.finals:
                final = ChatMessage(member.ref, member.name, "many-final %d" % member.room_index)
                self.finals[member.room_index] = final
                self.loop.send(member, chat_request(final.ref, member.join_id, member.name,
                                                    final.message))
        figures["chat_seconds"] = self.run_step(
            "the chats", lambda: all(m.finals >= 1 for m in live()))
        end = time.monotonic() + DUPLICATE_WAIT
        self.run_step("a last look for duplicates", lambda: time.monotonic() >= end)
        counts = [m.finals for m in members]
        figures.update(chat_received_once=counts.count(1), chat_missing=counts.count(0),
                       chat_duplicated=sum(1 for c in counts if c > 1))
        if figures["chat_missing"] or figures["chat_duplicated"]:
            self.report.fail("chat_not_once", "%d members never got their room's chat, %d got "
                             "it more than once" % (counts.count(0), figures["chat_duplicated"]))
        rss["after_chat"] = self.server.rss_kb() if self.server else None

        # 3. everyone goes; the server must still answer
        self.loop.close_all()
        ok, _seconds, problem = kit.helo_check(self.host, self.port, args.seconds)
        if not ok:
            self.report.fail("no_helo_after_close", problem)
        time.sleep(0.2)                     # let the server finish closing everything
        if self.server:
            rss["after_close"] = self.server.rss_kb()
            rss["peak"] = self.server.status_kb("VmHWM")
            if rss["before"] and rss["after_joins"]:
                figures["server_rss_bytes_per_connection"] = round(
                    (rss["after_joins"] - rss["before"]) * 1024.0 / n)
        figures["server_rss_kb"] = rss
        return figures


def run_many(args: argparse.Namespace, target: kit.Target, report: kit.Report):
    limits = kit.os_limits()
    _before, soft = kit.raise_nofile_limit()
    limits["nofile_soft_raised_to"] = soft
    if target.server is not None:
        limits["server_open_files_soft_hard"] = target.server.open_file_limit()
    if soft < args.connections + SPARE_FILES:
        report.fail("fd_limit", "%d connections need %d open files, and the limit is %d (hard "
                    "%s): raise it (ulimit -n) or ask for fewer"
                    % (args.connections, args.connections + SPARE_FILES, soft,
                       limits["nofile_hard"]))
        return {"limits": limits}, ""
    figures = Many(args, target, report).run()
    figures["limits"] = limits
    per_connection = figures.get("server_rss_bytes_per_connection")
    return figures, ("%d connections joined in %s s, every member reached in %s s%s"
                     % (figures["joined"], figures["announce_seconds"], figures["chat_seconds"],
                        ", %s bytes of server RSS each" % per_connection
                        if per_connection else ""))


OPTIONS: List[kit.Option] = [
    ("--connections", int, DEFAULT_CONNECTIONS, "clients", 1, None),
    ("--rooms", int, None, "rooms, the clients spread evenly (None: %d, or one per client if "
     "there are fewer)" % DEFAULT_ROOMS, 1, None),
    ("--window", int, DEFAULT_WINDOW, "connections being set up at once", 1, None)]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser, args = kit.parse_tool_args(
        "many", __doc__, (DEFAULT_STEP_SECONDS, "the longest any one step may take"), OPTIONS,
        argv)
    if args.rooms is None:
        args.rooms = min(DEFAULT_ROOMS, args.connections)
    if args.rooms > args.connections:
        parser.error("--rooms must be at most --connections")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    return kit.main("many", parse_args, run_many, argv)


if __name__ == "__main__":
    sys.exit(main())
