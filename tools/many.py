#!/usr/bin/env python3
"""Many connections at once: N clients in R rooms, all joined; then one chat in every room must
reach all N members. Reports how long each step took and what a connection costs the server.

    python3 tools/many.py --spawn                                  # 10000 clients, 100 rooms
    python3 tools/many.py --spawn --connections 2000 --rooms 20
    python3 tools/many.py --port 8080 --connections 1000 --rooms 10
    python3 tools/many.py --help

Steps, all clients in one `selectors` loop (nonblocking connect, at most --window connections
being set up at once so the server's listen backlog never overflows):
1. connect N clients; each sends JOIN_CHATROOM for room i % R as it connects (client i is
   "m<i>", the room "many-<r>"). Timed: until every client is connected, until every
   JOINED_CHATROOM has arrived, and until every join announcement has arrived (room r's members
   between them receive n(n+1)/2 of them: each its own and those of everyone who joined after
   it), so the server's output queues are empty again;
2. the server's RSS (with --spawn): per connection = (RSS now - RSS before connecting) / N;
3. the first member of every room sends one CHAT; timed until all N members have it; then a
   short wait, and every member must have received it exactly once;
4. everyone closes; the server's RSS once more.
It also checks that the ROOM_REFs are one per room and distinct, and the JOIN_IDs distinct.

To read the flood of join announcements fast enough, this tool does not parse every message:
it counts fixed markers in each connection's byte stream (JOINED_CHATROOM, " has joined this
chatroom.", the final chat's text), across reads, and parses only the JOINED_CHATROOM reply at
the start of each stream.

Open files: each side needs N + a few descriptors. This process raises its soft
RLIMIT_NOFILE to the hard limit, and Server.py does the same as it starts; the summary reports
the limits found (ulimit -n soft and hard, net.core.somaxconn, ...) and, with --spawn, the
server's own from /proc/PID/limits.

Output: progress on standard error, a JSON summary on standard output. Exit status 0 when every
client joined and every member got its room's chat exactly once; 1 otherwise; 2 for bad
arguments or too low an open-file limit.
"""
import argparse
import errno
import json
import os
import re
import resource
import selectors
import socket
import sys
import time
from typing import Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)      # for `tools` however this is started

from tools.harness import (  # noqa: E402 (needs the path above)
    HOST, add_target_arguments, ServerProcess, helo_check, os_limits, raise_nofile_limit)

DEFAULT_CONNECTIONS = 10000
DEFAULT_ROOMS = 100
# Connections being set up at once: below the server's listen backlog (reactor.BACKLOG, 1024,
# itself capped by net.core.somaxconn), so the kernel never has to drop a SYN.
DEFAULT_WINDOW = 1000
STEP_TIMEOUT = 120.0               # the longest any one step may take
DUPLICATE_WAIT = 0.5               # after the last chat arrived: time for a duplicate to show
SPARE_FILES = 64                   # descriptors needed beyond one per connection
READ_SIZE = 64 * 1024
PROGRESS_EVERY = 2.0
MAX_TICKS = 10 ** 8

JOINED = b"JOINED_CHATROOM: "
ANNOUNCED = b" has joined this chatroom.\n\n"
FINAL = b"MESSAGE: many-final "
MARKERS = (JOINED, ANNOUNCED, FINAL)
TAIL = max(len(m) for m in MARKERS) - 1
HEAD = 300                          # bytes kept from the start of each stream (its JOINED reply)


class Member:
    """One client connection and the counts of markers seen in what it received."""
    __slots__ = ("index", "room", "sock", "out", "connected", "tail", "head", "counts",
                 "closed", "events", "attempts")

    def __init__(self, index: int, room: int) -> None:
        self.index = index
        self.room = room
        self.sock: Optional[socket.socket] = None
        self.out = b""
        self.connected = False
        self.tail = b""
        self.head = b""
        self.counts = [0, 0, 0]            # JOINED, ANNOUNCED, FINAL
        self.closed = False
        self.events = 0
        self.attempts = 0

    def count(self, data: bytes) -> None:
        """Count markers in `data`, including those that started in the previous read: an
        occurrence is counted once, in the read where it ends."""
        joined = self.tail + data
        for i, marker in enumerate(MARKERS):
            self.counts[i] += joined.count(marker, max(0, len(self.tail) - len(marker) + 1))
        self.tail = joined[-TAIL:]
        if len(self.head) < HEAD:
            self.head = (self.head + data)[:HEAD]


class Many:
    def __init__(self, opts: argparse.Namespace, port: int,
                 server: Optional[ServerProcess]) -> None:
        self.opts = opts
        self.port = port
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.members = [Member(i, i % opts.rooms) for i in range(opts.connections)]
        self.problems: List[str] = []
        self.started = time.monotonic()
        self.next_progress = self.started + PROGRESS_EVERY

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    # -- connections -------------------------------------------------------------------------

    def _start_connect(self, member: Member) -> None:
        member.attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((HOST, self.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(err, os.strerror(err))
        member.sock = sock
        member.events = selectors.EVENT_WRITE
        self.selector.register(sock, selectors.EVENT_WRITE, member)

    def _set_events(self, member: Member) -> None:
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if member.out else 0)
        if want != member.events:
            self.selector.modify(member.sock, want, member)
            member.events = want

    def _on_connected(self, member: Member) -> bool:
        """The connect finished: True if it worked (then JOIN is queued)."""
        err = member.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.selector.unregister(member.sock)
            member.sock.close()
            member.sock = None
            member.events = 0
            if member.attempts < 3:
                return False
            self.problem("client %d: connect failed: %s" % (member.index, os.strerror(err)))
            member.closed = True
            return False
        member.connected = True
        member.out = ("JOIN_CHATROOM: many-%d\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: m%d\n"
                      % (member.room, member.index)).encode()
        return True

    def _flush(self, member: Member) -> None:
        try:
            sent = member.sock.send(member.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(member, "send failed: %s" % exc)
            return
        member.out = member.out[sent:]

    def _read(self, member: Member) -> None:
        try:
            data = member.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data = b""
            reason = str(exc)
        else:
            reason = "closed by the server"
        if not data:
            self._lost(member, reason)
            return
        member.count(data)

    def _lost(self, member: Member, reason: str) -> None:
        self.problem("client %d: %s" % (member.index, reason))
        self.selector.unregister(member.sock)
        member.sock.close()
        member.closed = True
        member.events = 0

    # -- the loop ----------------------------------------------------------------------------

    def run_until(self, done, what: str, pending: Optional[List[Member]] = None) -> Optional[float]:
        """Run the loop (starting queued connects, at most --window at a time) until done();
        return the seconds it took, or None after STEP_TIMEOUT."""
        started = time.monotonic()
        deadline = started + STEP_TIMEOUT
        connecting = 0
        pending = pending or []
        for _ in range(MAX_TICKS):
            while pending and connecting < self.opts.window:
                member = pending.pop()
                try:
                    self._start_connect(member)
                    connecting += 1
                except OSError as exc:
                    self.problem("client %d: connect failed at once: %s" % (member.index, exc))
                    member.closed = True
            if not pending and done():
                return time.monotonic() - started
            now = time.monotonic()
            if now >= deadline:
                self.problem("timed out after %g s waiting for %s" % (STEP_TIMEOUT, what))
                return None
            if now >= self.next_progress and not self.opts.quiet:
                self.next_progress = now + PROGRESS_EVERY
                self.progress(what)
            for key, mask in self.selector.select(min(0.05, deadline - now)):
                member = key.data
                if member.closed:
                    continue
                if not member.connected:
                    connecting -= 1
                    if not self._on_connected(member):
                        if not member.closed:
                            pending.append(member)        # try again
                        continue
                    self._flush(member)
                elif mask & selectors.EVENT_READ:
                    self._read(member)
                if mask & selectors.EVENT_WRITE and member.out and not member.closed:
                    self._flush(member)
                if not member.closed:
                    self._set_events(member)
        return None

    def progress(self, what: str) -> None:
        connected = sum(m.connected for m in self.members)
        joined = sum(m.counts[0] for m in self.members)
        final = sum(m.counts[2] for m in self.members)
        rss = self.server.rss_kb() if self.server else None
        print("many: %6.1fs %s: %d connected, %d joined, %d got the chat%s"
              % (time.monotonic() - self.started, what, connected, joined, final,
                 ", server RSS %d kB" % rss if rss else ""), file=sys.stderr, flush=True)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> Dict[str, object]:
        opts = self.opts
        members = self.members
        n = len(members)
        result: Dict[str, object] = {"connections": n, "rooms": opts.rooms}
        rss = {"before": self.server.rss_kb() if self.server else None}
        room_sizes = [0] * opts.rooms
        for member in members:
            room_sizes[member.room] += 1
        live = lambda: [m for m in members if not m.closed]  # noqa: E731

        # 1. connect and join
        pending = list(reversed(members))                # pop() takes client 0 first
        result["connect_seconds"] = self.run_until(
            lambda: all(m.connected or m.closed for m in members), "connections", pending)
        result["join_seconds"] = self.run_until(
            lambda: all(m.counts[0] >= 1 for m in live()), "JOINED_CHATROOM replies")
        want = [size * (size + 1) // 2 for size in room_sizes]

        def all_announced() -> bool:
            got = [0] * opts.rooms
            for m in members:
                got[m.room] += m.counts[1]
            return got == want
        result["announce_seconds"] = self.run_until(all_announced, "join announcements")
        if result["join_seconds"] is not None:
            result["join_seconds"] += result["connect_seconds"] or 0
        if result["announce_seconds"] is not None and result["join_seconds"] is not None:
            result["announce_seconds"] += result["join_seconds"]
        for key in ("connect_seconds", "join_seconds", "announce_seconds"):
            if result[key] is not None:
                result[key] = round(result[key], 3)
        result["joined"] = sum(1 for m in members if m.counts[0] == 1)
        rss["after_joins"] = self.server.rss_kb() if self.server else None
        refs = self.check_joined_replies()

        # 2. one chat in every room, from its first member
        first: Dict[int, Member] = {}
        for member in members:
            if not member.closed and member.room not in first:
                first[member.room] = member
        for room, member in first.items():
            ref = refs.get(room)
            if ref is None:
                continue
            member.out += ("CHAT: %d\nJOIN_ID: 0\nCLIENT_NAME: m%d\nMESSAGE: many-final %d\n\n"
                           % (ref, member.index, room)).encode()
            self._flush(member)
            if not member.closed:
                self._set_events(member)
        result["chat_seconds"] = self.run_until(
            lambda: all(m.counts[2] >= 1 for m in live()), "the chats")
        self._settle(DUPLICATE_WAIT)
        if result["chat_seconds"] is not None:
            result["chat_seconds"] = round(result["chat_seconds"], 3)
        counts = [m.counts[2] for m in members]
        result["chat_received_once"] = counts.count(1)
        result["chat_missing"] = counts.count(0)
        result["chat_duplicated"] = sum(1 for c in counts if c > 1)
        rss["after_chat"] = self.server.rss_kb() if self.server else None

        # 3. everyone goes
        for member in members:
            if member.sock is not None and not member.closed:
                if member.events:
                    self.selector.unregister(member.sock)
                member.sock.close()
                member.closed = True
        ok, seconds, problem = helo_check(self.port, STEP_TIMEOUT)   # the closes are handled
        if not ok:
            self.problem("after the clients closed: %s" % problem)
        time.sleep(0.2)
        rss["after_close"] = self.server.rss_kb() if self.server else None
        if self.server:
            rss["peak"] = self.server.status_kb("VmHWM")
            if rss["before"] and rss["after_joins"]:
                per_conn = (rss["after_joins"] - rss["before"]) * 1024.0 / n
                result["server_rss_bytes_per_connection"] = round(per_conn)
        result["server_rss_kb"] = rss
        result["problems"] = self.problems
        result["ok"] = (not self.problems and result["joined"] == n
                        and result["chat_received_once"] == n)
        return result

    def _settle(self, seconds: float) -> None:
        """Keep reading for `seconds` (so that a duplicate would be counted)."""
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end, "late duplicates")

    def check_joined_replies(self) -> Dict[int, int]:
        """ROOM_REF per room from the JOINED_CHATROOM replies (one per room, distinct) and
        JOIN_IDs (distinct). Returns room index -> ROOM_REF."""
        refs: Dict[int, int] = {}
        join_ids = set()
        pattern = re.compile(rb"^JOINED_CHATROOM: many-(\d+)\nSERVER_IP: [^\n]*\nPORT: \d+\n"
                             rb"ROOM_REF: (\d+)\nJOIN_ID: (\d+)\n")
        for member in self.members:
            if member.closed:
                continue
            match = pattern.match(member.head)
            if not match or int(match.group(1)) != member.room:
                self.problem("client %d: unexpected start of stream %r"
                             % (member.index, member.head[:120]))
                continue
            ref, join_id = int(match.group(2)), int(match.group(3))
            if refs.setdefault(member.room, ref) != ref:
                self.problem("room many-%d has two ROOM_REFs" % member.room)
            if join_id in join_ids:
                self.problem("JOIN_ID %d given twice" % join_id)
            join_ids.add(join_id)
        if len(set(refs.values())) != len(refs):
            self.problem("two rooms share a ROOM_REF")
        return refs


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Open many connections at once in many rooms, check that one chat per "
                    "room reaches every member, and report the times and the server's memory "
                    "per connection. Prints a JSON summary.")
    add_target_arguments(parser, "use")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                        help="clients (default %d)" % DEFAULT_CONNECTIONS)
    parser.add_argument("--rooms", type=int, default=DEFAULT_ROOMS,
                        help="rooms, the clients spread evenly (default %d)" % DEFAULT_ROOMS)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                        help="connections being set up at once (default %d)" % DEFAULT_WINDOW)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    opts = parser.parse_args(argv)
    if opts.connections < 1 or not 1 <= opts.rooms <= opts.connections or opts.window < 1:
        parser.error("need --connections >= --rooms >= 1 and --window >= 1")
    return opts


def main(argv: Optional[List[str]] = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    limits = os_limits()
    raise_nofile_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits.update({"nofile_soft_raised_to": soft})
    if soft < opts.connections + SPARE_FILES:
        print("many: %d connections need %d open files, and the limit is %d (hard %d): "
              "raise it (ulimit -n) or ask for fewer" % (opts.connections,
                                                        opts.connections + SPARE_FILES, soft,
                                                        hard), file=sys.stderr)
        return 2
    server = ServerProcess() if opts.spawn else None
    try:
        if server is not None:
            limits["server_open_files_soft_hard"] = server.open_file_limit()
        many = Many(opts, server.port if server else opts.port, server)
        result = many.run()
        if server is not None and not server.alive():
            result["ok"] = False
            result["problems"].append("the server exited: %s" % server.log_tail())
    finally:
        if server is not None:
            server.stop()
    result["limits"] = limits
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
