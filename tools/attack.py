"""Attacks on the chat server, one scenario per case of "hold up under attack at scale", each
measuring what that case measures and judging it against the case's target.

    python3 -m tools.attack stalled --spawn                    # 2000 stalled members, 10 s flood
    python3 -m tools.attack departure --spawn --members 8000 --then kill
    python3 -m tools.attack flood --spawn --seconds 20
    python3 -m tools.attack rooms --spawn --count 100000
    python3 -m tools.attack descriptors --spawn --nofile 1024
    python3 -m tools.attack blank --port 8080
    python3 -m tools.attack all --spawn --quick
    python3 -m tools.attack stalled --spawn --server-dir /path/to/another/checkout

Scenarios (defaults are the sizes docs/ROBUSTNESS.md reports; --quick makes each small):
  stalled      N members (--members, 2000) in one room that never read (SO_RCVBUF of 4096
               bytes) while one member floods 64000-byte chats as fast as it can for
               --seconds (10). Figures: the server's RSS growth (peak minus RSS when the flood
               starts, from /proc: needs --spawn), what was posted, members cut, and an
               unrelated probe's echo latency in its own room. Target: growth <= 256 MiB.
  departure    N members (--members, 4000) of one room reset at once (SO_LINGER 0), while
               --remain (50) members stay. Figures: the probe's latency during the storm
               (targets p99 <= 100 ms, max <= 200 ms), how long until every remaining member
               had every leave, and that each got each leave exactly once. --then kill sends
               KILL_SERVICE and --then sigterm sends SIGTERM (needs --spawn) as the storm
               starts, and times how long the server takes to end (target <= 1 s).
  flood        one member floods 64000-byte chats for --seconds (20); a member reading
               --read-rate bytes/s (1 MB/s, token-bucket paced reads) and one reading as fast as
               it can must both stay (never closed) and receive every chat the server accepted,
               in order.
  rooms        --count (100000) JOINs with fresh names from --connections (100) connections,
               each leaving every room it joined; then a new room must be creatable (ERROR_CODE
               9 fails; 13, the room-creation limit, is waited out for up to 10 s).
               Figures: rooms created per second, every ERROR_CODE seen, the server's RSS.
  descriptors  every descriptor of the server held by idle connections that never send a byte
               (its open-file limit plus --extra more, queued in its backlog); a new client must
               then get its HELO reply within 2 s. With --spawn the server is started
               with an open-file limit of --nofile (1024); with --port, give --hold.
  blank        --connections (100) connections sending only newlines as fast as they can for
               --seconds (10); target: the probe's p99 <= 100 ms.
  digits       --connections (4) threads each send --count (200) requests whose ROOM_REF or
               JOIN_ID has 5001 digits (leading zeros too): every one must get an ERROR_CODE
               or a LEFT_CHATROOM, the connection must stay, and (with --spawn, logging at
               info) the log must hold no traceback. Figure: log bytes per connection.
  disconnect   one connection joins --rooms (256) rooms with the widest names (256 four-byte
               characters, CLIENT_NAME too), then sends DISCONNECT: it must receive a leave
               announcement for every room it was in before the server closes it.
  names        JOINs whose room name or CLIENT_NAME carries a terminal escape sequence, a bidi
               override, a zero-width character, DEL, a C1 control...: each must get
               ERROR_CODE 12, and a plain name must still be joined.
  idlers       every descriptor of the server held by connections that each got their HELO
               reply (so they have completed a request), then idle, from --addresses (16)
               source addresses (127.0.0.2 onwards); with --spawn, --nofile (1024) plus --extra
               (16) of them. Then 5 new clients, one after the other, must each get their HELO
               reply within 2 s.
  departures   --addresses (20) source addresses, --connections (40) connections each, each
               connection in --rooms (256) rooms shared with 7 others (rooms of 8, as the
               per-address limits allow); then every one of them resets at once (SO_LINGER 0).
               A stayer per group of 8, in its 256 rooms, must hear every leave. Targets:
               the probe's p99 <= 100 ms while they join, its max <= 200 ms during the
               resets, and the server's RSS grows <= 256 MiB from the resets (needs --spawn).
               Figures: the CPU seconds the build-up took, of this tool with its probe (the
               attacker) and of the server (with --spawn), which share the machine's cores.
  all          each scenario at its --quick size, one after the other (a fresh server each with
               --spawn; descriptors is left out with --port unless --hold is given).

Flood control: the server meters each connection's input (its --input-rate and --request-rate).
With --spawn, --input-rate and --request-rate here are passed on to it (0: no limit), as is
--memory-budget; a server started without them uses its defaults. The server of --server-dir
(another checkout) is started the same way; options it does not know make it fail to start.
Safety: with --spawn, the server's RSS is watched every 0.1 s and the server is
killed (by its pid) if it passes --rss-limit-mib; the run then fails with "rss_limit".
The probe is a process of its own (so this one's work does not delay it): one chat in flight
at a time, one every 20 ms, in a room of its own; an echo later than 5 s counts as lost.
"""
import argparse
import collections
import contextlib
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
if not __package__:   # run as a script (python3 tools/X.py) from any folder: find the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from sansio.replies import ChatMessage, ErrorReply, JoinedReply, LeftReply, ReplyReader
from sansio.wire import (JOINED_TEXT, LEFT_TEXT, chat_request, disconnect_request, helo_request,
                         join_request, kill_request, leave_request)
from tools import kit

TOOL = "attack"
SCENARIOS = ("stalled", "departure", "flood", "rooms", "descriptors", "blank", "digits",
             "disconnect", "names", "idlers", "departures")
# The text of a flood chat: 64 000 bytes, as large as a request may be (64 KiB with its header)
# less some room; it ends with FLOOD_MARK, so that flood chats are counted at C speed.
CHAT_BYTES = 64000
FLOOD_MARK = " end-of-flood-chat"
# Receive buffer of a stalled member: small, so that the kernel holds little for it and the
# server has to hold the rest.
STALLED_RCVBUF = 4096
# The probe: one chat in flight at a time, one every PROBE_INTERVAL; an echo later than
# PROBE_TIMEOUT counts as lost (and as PROBE_TIMEOUT of latency).
PROBE_INTERVAL = 0.020
PROBE_TIMEOUT = 5.0
# The targets each scenario is judged against (docs/ROBUSTNESS.md).
STALLED_GROWTH_TARGET_MIB = 256
PROBE_P99_TARGET_MS = 100.0
PROBE_MAX_TARGET_MS = 200.0
STOP_TARGET_SECONDS = 1.0
HELO_DEADLINE = 2.0
NOT_PRINTABLE_CODE = 12
TOO_MANY_ROOMS_CODE = 9
CREATING_ROOMS_TOO_FAST_CODE = 13
# rooms: how long the last check waits out ERROR_CODE 13 (the room-creation limits refill).
ROOM_RETRY_SECONDS = 10.0
ROOM_RETRY_DELAY = 0.25
# digits: this many digits, past the 4300 at which int() refuses a string (Python 3.11 on).
DIGITS = 5001
# disconnect: names of 256 four-byte characters (emoticons, U+1F600 to U+1F64F).
WIDE_NAME_CHARS = 256
EMOJI_BASE, EMOJI_COUNT = 0x1F600, 80
# disconnect: rooms are created by helper connections, ROOMS_PER_HELPER each, below the
# server's room-creation burst per connection; the attacking connection then joins them.
ROOMS_PER_HELPER = 40
# How long one blocking reply may take, for the scenarios that talk one request at a time.
REPLY_TIMEOUT = 10.0
MONITOR_INTERVAL = 0.1
DEFAULT_RSS_LIMIT_MIB = 6144
# descriptors: how long the idle connections get to connect (those past the server's backlog
# wait in SYN retries) and to settle before the new client tries.
HOLD_CONNECT_SECONDS = 15.0
HOLD_SETTLE = 0.5
# departure: after the storm, the probe goes on this long (a tick still running shows).
AFTER_STORM = 0.5
LOOP_WAIT = 0.005                   # select() wait of the busy loops
JOINED_SUFFIX = JOINED_TEXT % ""
LEFT_SUFFIX = LEFT_TEXT % ""

# scenario -> option -> (default, quick default)
SIZES: Dict[str, Dict[str, Tuple[float, float]]] = {
    "stalled": {"members": (2000, 50), "seconds": (10.0, 1.0)},
    "departure": {"members": (4000, 200), "remain": (50, 10), "seconds": (120.0, 30.0)},
    "flood": {"seconds": (20.0, 1.0)},
    "rooms": {"count": (100000, 500), "connections": (100, 10), "seconds": (600.0, 30.0)},
    "descriptors": {"nofile": (1024, 128), "extra": (100, 20)},
    "blank": {"connections": (100, 10), "seconds": (10.0, 1.0)},
    "digits": {"connections": (4, 2), "count": (200, 5)},
    "disconnect": {"rooms": (256, 32)},
    "names": {},
    "idlers": {"nofile": (1024, 128), "extra": (16, 8), "addresses": (16, 4)},
    "departures": {"addresses": (20, 2), "connections": (40, 16), "rooms": (256, 32),
                   "seconds": (300.0, 60.0)},
}


def run_tag() -> str:
    """Distinguishes this run's rooms from those of other runs on the same server."""
    return "%d-%d" % (os.getpid(), int(time.time() * 1000) % 10 ** 8)


def mib(kb: Optional[int]) -> Optional[float]:
    return None if kb is None else round(kb / 1024.0, 1)


def cpu_seconds(pid: Optional[int] = None) -> Optional[float]:
    """User plus system CPU of process `pid` (None: this one, every thread), in seconds; None if
    it cannot be read. Another process's from /proc/PID/stat (fields 14 and 15, counted after
    the command name's closing ')', which may hold spaces)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        with open("/proc/%d/stat" % pid) as stat:
            utime, stime = stat.read().rsplit(")", 1)[1].split()[11:13]
    except (OSError, ValueError):
        return None
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def cpu_now(target: "AttackTarget", probe: "Probe") -> Tuple[Optional[float], Optional[float]]:
    """(the attacker's CPU seconds so far: this process and its probe child; the server's, if
    spawned), for the CPU a phase took: the two share the machine's cores."""
    probe_cpu = cpu_seconds(probe.proc.pid)
    ours = None if probe_cpu is None else cpu_seconds() + probe_cpu
    return ours, None if target.server is None else cpu_seconds(target.server.pid)


def cpu_taken(before: Tuple[Optional[float], Optional[float]],
              after: Tuple[Optional[float], Optional[float]]) -> Dict[str, Optional[float]]:
    """The figures of the CPU taken between two cpu_now() readings."""
    attacker, server = ((None if a is None or b is None else round(b - a, 2))
                        for a, b in zip(before, after))
    return {"attacker_cpu_s": attacker, "server_cpu_s": server}


# ---------------------------------------------------------------------------------------------
# The server: spawned from any checkout, with an open-file limit if asked; watched
# ---------------------------------------------------------------------------------------------

# Run as `python3 -c WRAPPER N script args...`: set the open-file limit (soft and hard) to N,
# then become the server (exec: the same pid, which the tool then watches and stops).
WRAPPER = ("import os, resource, sys; n = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
           "os.execv(sys.executable, [sys.executable] + sys.argv[2:])")


class AttackServer(kit.ServerProcess):
    """kit.ServerProcess for the Server.py of any checkout (`server_dir`), optionally with an
    open-file limit of `nofile`; everything else (the port, /proc figures, stop) is the kit's."""

    def __init__(self, server_dir: str, options: List[str], log_level: str,
                 nofile: Optional[int] = None) -> None:
        super().__init__(*options, log_level=log_level, server_dir=server_dir,
                         wrapper=() if nofile is None else ("-c", WRAPPER, str(nofile)))


class Monitor(threading.Thread):
    """Samples the server's RSS every MONITOR_INTERVAL; kills the server (its pid) past
    `limit_kb`. `peak_kb` is the highest sample since the last reset()."""

    def __init__(self, server: kit.ServerProcess, limit_kb: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.limit_kb = limit_kb
        self.peak_kb = 0
        self.killed_at_kb: Optional[int] = None
        self._stop_event = threading.Event()

    def reset(self) -> None:
        self.peak_kb = self.server.rss_kb() or 0

    def run(self) -> None:
        while not self._stop_event.wait(MONITOR_INTERVAL) and self.server.alive():
            rss = self.server.rss_kb()
            if rss is None:
                continue
            self.peak_kb = max(self.peak_kb, rss)
            if rss > self.limit_kb and self.killed_at_kb is None:
                self.killed_at_kb = rss
                self.server.proc.kill()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(MONITOR_INTERVAL * 10)


class AttackTarget:
    """The server of a run: spawned (AttackServer, watched by a Monitor) or at --host/--port."""

    def __init__(self, args: argparse.Namespace, log_level: str = "warning",
                 nofile: Optional[int] = None) -> None:
        self.server: Optional[AttackServer] = None
        self.monitor: Optional[Monitor] = None
        if args.spawn:
            options: List[str] = []
            for flag in ("input_rate", "request_rate", "memory_budget"):
                value = getattr(args, flag)
                if value is not None:
                    options += ["--" + flag.replace("_", "-"), str(value)]
            self.server = AttackServer(args.server_dir, options, args.server_log_level
                                       or log_level, nofile)
            self.host, self.port = self.server.host, self.server.port
            self.monitor = Monitor(self.server, args.rss_limit_mib * 1024)
            self.monitor.start()
        else:
            self.host, self.port = args.host, args.port
            kit.check_listening(self.host, self.port)
        try:
            self.address = kit.resolve(self.host, self.port)
        except (OSError, UnicodeError) as exc:
            self.stop()
            raise kit.ServerError("cannot resolve %s: %s" % (self.host, exc)) from None

    def rss_kb(self) -> Optional[int]:
        return self.server.rss_kb() if self.server else None

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.server is not None:
            self.server.stop()


class Scoped:
    """A report that names every failure `SCENARIO.kind` (for `all`)."""

    def __init__(self, report: kit.Report, scenario: str) -> None:
        self.report = report
        self.prefix = scenario + "."

    def fail(self, kind: str, detail: str) -> None:
        self.report.fail(self.prefix + kind, detail)

    def progress(self, describe: Callable[[], str]) -> None:
        self.report.progress(describe)     # the lines name their scenario already

    def note(self, line: str) -> None:
        self.report.note(line)


# ---------------------------------------------------------------------------------------------
# The probe: an unrelated client timing its own echoes, in a process of its own
# ---------------------------------------------------------------------------------------------

def wait_for(sock: socket.socket, reader: ReplyReader, wanted: Callable, deadline: float):
    """Read `sock` into `reader` until a reply for which wanted() is true (returned; the
    replies before it are dropped) or the deadline (None)."""
    while True:
        for reply in kit.replies(reader):
            if wanted(reply):
                return reply
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            data = sock.recv(kit.RECV_SIZE)
        except socket.timeout:
            return None
        if not data:
            raise OSError("the server closed the connection")
        reader.receive_data(data)


def probe_loop(host: str, port: int, room: str, emit: Callable[[str], None],
               stopping: threading.Event) -> None:
    """Join `room`, then until `stopping`: post a chat, wait for its echo, emit
    "sample POSTED SECONDS LOST" (LOST 1: no echo within PROBE_TIMEOUT), and post the next
    PROBE_INTERVAL after the last was posted. Emits "ready" once joined, "error TEXT" if the
    connection fails."""
    reader = ReplyReader()
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(join_request(room, "probe"))
            joined = wait_for(sock, reader, lambda r: isinstance(r, JoinedReply),
                              time.monotonic() + PROBE_TIMEOUT)
            if joined is None:
                emit("error the probe's JOIN got no JOINED_CHATROOM")
                return
            emit("ready")
            seq = 0
            while not stopping.is_set():
                seq += 1
                text = "probe %d" % seq
                posted = time.monotonic()
                sock.sendall(chat_request(joined.ref, joined.join_id, "probe", text))
                echo = wait_for(sock, reader, lambda r: isinstance(r, ChatMessage)
                                and r.message == text, posted + PROBE_TIMEOUT)
                emit("sample %r %r %d" % (posted, time.monotonic() - posted, echo is None))
                stopping.wait(max(0.0, posted + PROBE_INTERVAL - time.monotonic()))
    except OSError as exc:
        emit("error %s: %s" % (type(exc).__name__, exc))


def probe_child() -> None:
    """The probe process: `python3 -c "from tools.attack import probe_child; probe_child()"
    HOST PORT ROOM`. Lines of probe_loop on standard output; it stops when standard input
    ends (its parent closed it, or died)."""
    host, port, room = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    stopping = threading.Event()

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    worker = threading.Thread(target=probe_loop, args=(host, port, room, emit, stopping),
                              daemon=True)
    worker.start()
    sys.stdin.read()
    stopping.set()
    worker.join(PROBE_TIMEOUT + 1)


class Probe:
    """probe_loop in a child process (so that this process's own work does not delay it: no
    shared interpreter lock), its lines collected by a thread. time.monotonic() is the system's
    monotonic clock, so the child's times compare with ours."""

    def __init__(self, host: str, port: int, room: str) -> None:
        self.samples: List[Tuple[float, float]] = []     # (posted at, seconds to its echo)
        self.lost = 0
        self.error: Optional[str] = None
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tools.attack import probe_child; probe_child()",
             host, str(port), room], cwd=kit.REPO_ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, universal_newlines=True)
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            kind, _space, rest = line.rstrip("\n").partition(" ")
            if kind == "sample":
                posted, took, lost = rest.split()
                self.samples.append((float(posted), float(took)))
                self.lost += int(lost)
            elif kind == "ready":
                self.ready.set()
            elif kind == "error":
                self.error = rest
        self.ready.set()

    def stop(self) -> None:
        """End the child (closing its standard input; by its pid if it does not go)."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(PROBE_TIMEOUT + 2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(PROBE_TIMEOUT)
        self._collector.join(PROBE_TIMEOUT)
        self.proc.stdout.close()

    def figures(self, since: float = 0.0, until: float = float("inf")) -> Dict[str, object]:
        """probe_p50_ms/p99/max of the echoes posted between `since` and `until`."""
        chosen = [took for posted, took in list(self.samples) if since <= posted <= until]
        figures: Dict[str, object] = kit.latency_summary("probe", chosen)
        figures.update(probes=len(chosen), probes_lost=self.lost)
        return figures


def start_probe(target: AttackTarget, report, tag: str) -> Probe:
    probe = Probe(target.host, target.port, "attack-probe-" + tag)
    probe.ready.wait(PROBE_TIMEOUT + 2)
    if probe.error:
        report.fail("probe", probe.error)
    return probe


def check_probe(report, figures: Dict[str, object], probe: Probe,
                p99_target: Optional[float], max_target: Optional[float]) -> None:
    if probe.error:
        report.fail("probe", probe.error)
    if probe.lost:
        report.fail("probe_lost", "%d probe chats got no echo within %g s"
                    % (probe.lost, PROBE_TIMEOUT))
    for key, target in (("probe_p99_ms", p99_target), ("probe_max_ms", max_target)):
        value = figures.get(key)
        if target is not None and value is not None and value > target:
            report.fail(key.replace("_ms", "_over_target"), "%s %.1f ms, target <= %g ms"
                        % (key, value, target))


class Feeder:
    """Keeps connections supplied with the same bytes, as fast as the server takes them: one
    more copy of `data` for each open one whose queue is shorter than kit.SEND_SIZE, and a
    count of what has left for the kernel."""

    def __init__(self, loop: kit.Loop, conns: List[kit.Conn], data: bytes) -> None:
        self.loop, self.conns, self.data = loop, conns, data
        self.copies = 0                     # copies of `data` queued so far

    def top_up(self) -> None:
        for conn in self.conns:
            if conn.state == kit.OPEN and len(conn.out) < kit.SEND_SIZE:
                self.loop.send(conn, self.data)
                self.copies += 1

    def sent(self) -> int:
        """Bytes handed to the kernel so far."""
        return self.copies * len(self.data) - sum(len(conn.out) for conn in self.conns)


# ---------------------------------------------------------------------------------------------
# A crowd: members of one room on a kit.Loop, joined with their announcements counted
# ---------------------------------------------------------------------------------------------

class CrowdMember(kit.Member):
    def __init__(self, room: str, name: str) -> None:
        super().__init__(room, name)
        self.lost = False
        self.counted = 0                    # chats ending with the crowd's `suffix`
        self.lefts: Dict[str, int] = collections.Counter()   # leave announcements, by name
        self.rcvbuf: Optional[int] = None   # SO_RCVBUF to set as it connects (None: the OS's)


class Crowd(kit.Handler):
    """Members on one kit.Loop. Each sends its JOIN as it connects; join() returns once every
    member has its JOINED_CHATROOM and every join announcement has arrived (a room that ends
    with n members owes n(n+1)/2). Chats ending with `suffix` are counted (at C speed) into
    member.counted; leave announcements by name into member.lefts; other replies go to
    `on_other`."""

    def __init__(self, target: AttackTarget, report) -> None:
        self.loop = kit.Loop(target.address, self)
        self.report = report
        self.members: List[CrowdMember] = []
        self.suffix: Optional[str] = JOINED_SUFFIX
        self.joined = 0
        self.closed_by_server = 0
        self.on_other: Callable[[CrowdMember, object], None] = self._unexpected
        self.expect_close = False

    def connected(self, member: CrowdMember) -> None:
        if member.rcvbuf:
            member.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, member.rcvbuf)
        self.loop.send(member, join_request(member.room, member.name))

    def connect_failed(self, member: CrowdMember, exc: OSError) -> None:
        member.lost = True
        self.report.fail("connect_failed", "%s: %s" % (member.name, exc))

    def closed(self, member: CrowdMember, exc: Optional[OSError]) -> None:
        member.lost = True
        self.closed_by_server += 1
        if not self.expect_close:
            self.report.fail("closed_by_server", "%s: %s" % (member.name, exc or "closed"))

    def received(self, member: CrowdMember) -> None:
        reader = member.reader
        while True:
            if member.ref is not None and self.suffix is not None:
                member.counted += reader.count_chats(member.ref, self.suffix)
            reply = reader.maybe_next_reply()
            if reply is None:
                return
            if member.ref is None and isinstance(reply, JoinedReply) and reply.room == member.room:
                member.ref, member.join_id = reply.ref, reply.join_id
                self.joined += 1
            elif isinstance(reply, ChatMessage) and reply.ref == member.ref and (
                    self.suffix is not None and reply.message.endswith(self.suffix)):
                member.counted += 1
            elif isinstance(reply, ChatMessage) and reply.message.endswith(LEFT_SUFFIX):
                member.lefts[reply.client_name] += 1
            else:
                self.on_other(member, reply)

    def _unexpected(self, member: CrowdMember, reply: object) -> None:
        kind = "error_reply" if isinstance(reply, ErrorReply) else "unexpected_reply"
        self.report.fail(kind, "%s got %r" % (member.name, reply))

    def join(self, members: List[CrowdMember], seconds: float,
             window: Optional[int] = None) -> Optional[float]:
        """Connect and join `members`; the seconds it took, or None (a failure) after
        `seconds`. With a `window`, a member connects only while fewer join announcements
        than that are owed and not yet read: 4 000 members joining one room at once owe 8
        million, and a server that announces faster than this one process reads piles them
        up past its memory budget, which then (rightly) cuts the members furthest behind."""
        pending = collections.deque(members)
        sizes = collections.Counter(m.room for m in self.members)
        self.members += members
        started = time.monotonic()
        announced = [0]                     # announcements owed to the members since then

        def feed() -> None:
            unread = announced[0] - sum(m.counted for m in self.members)
            while pending and (window is None or unread < window):
                member = pending.popleft()
                sizes[member.room] += 1
                announced[0] += sizes[member.room]
                unread += sizes[member.room]
                self.loop.connect(member)
        feed()
        owed = sum(n * (n + 1) // 2 for n in
                   collections.Counter(m.room for m in self.members).values())

        def done() -> bool:
            return (all(m.ref is not None or m.lost for m in self.members)
                    and sum(m.counted for m in self.members) >= owed)

        def progress() -> str:
            return ("joining: %d/%d joined, %d/%d join announcements"
                    % (self.joined, len(self.members), sum(m.counted for m in self.members),
                       owed))
        def tick() -> None:
            feed()
            self.report.progress(progress)
        if self.loop.run_until(done, seconds, tick, wait=0.02):
            for member in self.members:
                member.counted = 0
            return round(time.monotonic() - started, 3)
        self.report.fail("join_timeout", progress() + " after %g s" % seconds)
        return None

    def stop_reading(self, member: CrowdMember) -> None:
        """The member reads no more (the kit's Conn.reading; the loop stops watching it)."""
        member.reading = False
        if member.state == kit.OPEN:
            self.loop._update_interest(member)


# ---------------------------------------------------------------------------------------------
# 1. stalled: members that never read, one flooder; the server's memory
# ---------------------------------------------------------------------------------------------

def flood_chat(ref: int, join_id: int, name: str, seq: int = 0) -> bytes:
    text = "flood %d " % seq
    return chat_request(ref, join_id, name, text + "x" * (CHAT_BYTES - len(text)
                                                           - len(FLOOD_MARK)) + FLOOD_MARK)


def scenario_stalled(args: argparse.Namespace, target: AttackTarget, report):
    tag = run_tag()
    room = "stall-" + tag
    crowd = Crowd(target, report)
    members = [CrowdMember(room, "s%d" % i) for i in range(args.members)]
    for member in members:
        member.rcvbuf = STALLED_RCVBUF
    flooder = CrowdMember(room, "flooder")
    figures: Dict[str, object] = {"members": args.members, "chat_bytes": CHAT_BYTES}
    figures["join_seconds"] = crowd.join(members + [flooder], 300.0)
    if figures["join_seconds"] is None or flooder.ref is None:
        return figures, "could not join"
    for member in members:
        crowd.stop_reading(member)
    crowd.suffix = FLOOD_MARK
    crowd.expect_close = True               # stalled members may be cut: counted, not failures
    probe = start_probe(target, report, tag)
    time.sleep(0.2)
    server = target.server
    rss_before = target.rss_kb()
    hwm_before = server.status_kb("VmHWM") if server else None
    if target.monitor:
        target.monitor.reset()
    feeder = Feeder(crowd.loop, [flooder], flood_chat(flooder.ref, flooder.join_id,
                                                       flooder.name))
    posted_bytes = feeder.sent
    started = time.monotonic()

    def top_up() -> None:
        feeder.top_up()
        report.progress(lambda: "flooding: %.1f MB posted, flooder has %d echoes, server RSS "
                        "%s MiB, probe p99 %s ms"
                        % (posted_bytes() / 1e6, flooder.counted, mib(target.rss_kb()),
                           probe.figures(started).get("probe_p99_ms")))
    crowd.loop.run_until(lambda: flooder.lost or (target.monitor is not None and
                                                  target.monitor.killed_at_kb is not None),
                         args.seconds, top_up, wait=LOOP_WAIT)
    flood_seconds = time.monotonic() - started
    time.sleep(MONITOR_INTERVAL * 2)
    probe.stop()
    figures.update(probe.figures(started))
    check_probe(report, figures, probe, None, None)
    figures.update(flood_seconds=round(flood_seconds, 3), posted_bytes=posted_bytes(),
                   posted_mb_per_s=round(posted_bytes() / 1e6 / flood_seconds, 2),
                   flooder_echoes=flooder.counted,
                   accepted_mb=round(flooder.counted * CHAT_BYTES / 1e6, 2),
                   flooder_cut=flooder.lost,
                   members_cut=sum(flooder.lefts.values()))
    if server:
        peak = max(target.monitor.peak_kb, target.rss_kb() or 0)
        hwm = server.status_kb("VmHWM")
        if hwm is not None and hwm_before is not None and hwm > hwm_before:
            peak = max(peak, hwm)
        figures.update(server_rss_before_mib=mib(rss_before), server_rss_peak_mib=mib(peak),
                       server_rss_growth_mib=mib(peak - (rss_before or 0)))
        if target.monitor.killed_at_kb is not None:
            report.fail("rss_limit", "server killed at %s MiB RSS (--rss-limit-mib %d)"
                        % (mib(target.monitor.killed_at_kb), args.rss_limit_mib))
        elif figures["server_rss_growth_mib"] > STALLED_GROWTH_TARGET_MIB:
            report.fail("rss_growth_over_target", "server RSS grew %s MiB, target <= %d MiB"
                        % (figures["server_rss_growth_mib"], STALLED_GROWTH_TARGET_MIB))
    else:
        figures["server_rss_growth_mib"] = None     # not measurable without --spawn
    crowd.loop.close_all()
    return figures, ("%d stalled members, %.1f MB of chats handled (%.1f MB sent) in %.1f s: "
                     "server RSS +%s MiB, probe p99 %s ms max %s ms"
                     % (args.members, figures["accepted_mb"], posted_bytes() / 1e6,
                        flood_seconds,
                        figures["server_rss_growth_mib"], figures.get("probe_p99_ms"),
                        figures.get("probe_max_ms")))


# ---------------------------------------------------------------------------------------------
# 2. departure: many members of one room reset at once
# ---------------------------------------------------------------------------------------------

def wait_for_exit(target: AttackTarget, control: socket.socket, started: float,
                  seconds: float) -> Optional[float]:
    """Seconds from `started` until the server has ended: its process exited (spawned) or the
    control connection closed; None if not within `seconds`."""
    deadline = started + seconds
    if target.server is not None:
        while time.monotonic() < deadline:
            if not target.server.alive():
                return time.monotonic() - started
            time.sleep(0.001)
        return None
    control.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            if not control.recv(kit.RECV_SIZE):
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def scenario_departure(args: argparse.Namespace, target: AttackTarget, report):
    tag = run_tag()
    room = "depart-" + tag
    crowd = Crowd(target, report)
    goers = [CrowdMember(room, "go%d" % i) for i in range(args.members)]
    stayers = [CrowdMember(room, "stay%d" % i) for i in range(args.remain)]
    figures: Dict[str, object] = {"members": args.members, "remain": args.remain,
                                  "then": args.then}
    figures["join_seconds"] = crowd.join(goers + stayers, args.seconds)
    if figures["join_seconds"] is None:
        return figures, "could not join"
    crowd.suffix = None
    control = socket.create_connection((target.host, target.port), timeout=REPLY_TIMEOUT)
    probe = start_probe(target, report, tag)
    time.sleep(0.3)
    started = time.monotonic()
    for member in goers:
        crowd.loop.close(member, reset=True)
    reset_seconds = time.monotonic() - started
    crowd.expect_close = args.then != "none"
    figures["reset_seconds"] = round(reset_seconds, 3)
    stop_seconds = None
    if args.then == "kill":
        control.sendall(kill_request())
    elif args.then == "sigterm":
        target.server.proc.send_signal(signal.SIGTERM)
    if args.then != "none":
        stop_seconds = wait_for_exit(target, control, started, args.seconds)
        figures["stop_seconds"] = None if stop_seconds is None else round(stop_seconds, 3)
        if stop_seconds is None:
            report.fail("did_not_stop", "the server was still running %g s after %s"
                        % (args.seconds, args.then))
        elif stop_seconds > STOP_TARGET_SECONDS:
            report.fail("slow_stop", "the server took %.2f s to end after %s, target <= %g s"
                        % (stop_seconds, args.then, STOP_TARGET_SECONDS))
        storm_end = time.monotonic()
    else:
        names = [m.name for m in goers]

        def all_told() -> bool:
            return all(m.lost or len(m.lefts) >= len(names) for m in stayers)
        told = crowd.loop.run_until(all_told, args.seconds, lambda: report.progress(
            lambda: "storm: %d/%d remaining members have every leave"
            % (sum(len(m.lefts) >= len(names) for m in stayers), len(stayers))),
            wait=LOOP_WAIT)
        storm_end = time.monotonic()
        figures["storm_seconds"] = round(storm_end - started, 3)
        if not told:
            report.fail("storm_timeout", "not every remaining member had every leave "
                        "within %g s" % args.seconds)
        crowd.loop.run_until(lambda: False, AFTER_STORM, wait=LOOP_WAIT)  # a twice-told leave
        missing = sum(sum(1 for n in names if m.lefts.get(n, 0) == 0) for m in stayers)
        doubled = sum(sum(c - 1 for c in m.lefts.values() if c > 1) for m in stayers)
        strangers = sum(sum(1 for n in m.lefts if not n.startswith("go")) for m in stayers)
        figures.update(leaves_missing=missing, leaves_duplicated=doubled,
                       leaves_of_stayers=strangers,
                       stayers_cut=sum(1 for m in stayers if m.lost))
        if missing or doubled or strangers:
            report.fail("leaves_not_once", "remaining members: %d leaves missing, %d "
                        "duplicated, %d of members who did not leave"
                        % (missing, doubled, strangers))
    time.sleep(AFTER_STORM if args.then == "none" else 0)
    probe.stop()
    figures.update(probe.figures(started, storm_end + AFTER_STORM))
    if args.then == "none":                 # (else the probe ends with the server: not judged)
        check_probe(report, figures, probe, PROBE_P99_TARGET_MS, PROBE_MAX_TARGET_MS)
    control.close()
    crowd.loop.close_all()
    if args.then != "none":
        return figures, ("%d members reset; the server ended %s s after %s"
                         % (args.members, figures.get("stop_seconds"), args.then.upper()))
    return figures, ("%d members reset: remaining members told in %s s, probe p99 %s ms max "
                     "%s ms" % (args.members, figures["storm_seconds"],
                                figures.get("probe_p99_ms"), figures.get("probe_max_ms")))


# ---------------------------------------------------------------------------------------------
# 3. flood: one flooder, a 1 MB/s reader and a fast reader in one room
# ---------------------------------------------------------------------------------------------

# flood: the paced reader's token bucket holds this many seconds of its rate, and it reads
# once it may take READ_CHUNK bytes (or the whole bucket, if smaller).
READ_BURST_SECONDS = 0.1
READ_CHUNK = 16 * 1024
# flood: the flooder's send buffer, a few chats.
FLOODER_SNDBUF = 4 * CHAT_BYTES


class Reader:
    """A member of the flooded room on a plain nonblocking socket, reading at most `rate`
    bytes a second (a token bucket of READ_BURST_SECONDS) or, with rate 0, as fast as it can;
    it checks that the flood chats arrive in order, none missing."""

    def __init__(self, name: str, rate: float) -> None:
        self.name = name
        self.rate = rate
        self.burst = rate * READ_BURST_SECONDS
        self.tokens = float(self.burst)
        self.at = time.monotonic()
        self.sock: Optional[socket.socket] = None
        self.reader = ReplyReader()
        self.ref: Optional[int] = None
        self.join_id: Optional[int] = None
        self.next_seq = 0
        self.bytes = 0
        self.closed: Optional[str] = None
        self.closed_at: Optional[float] = None
        self.out_of_order = 0

    def connect(self, target: AttackTarget, room: str) -> None:
        self.sock = socket.create_connection((target.host, target.port), timeout=REPLY_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(join_request(room, self.name))
        while self.ref is None:
            data = self.sock.recv(kit.RECV_SIZE)
            if not data:
                raise OSError("closed before JOINED_CHATROOM")
            self.reader.receive_data(data)
            for reply in kit.replies(self.reader):
                if isinstance(reply, JoinedReply):
                    self.ref, self.join_id = reply.ref, reply.join_id
                    break
        self.sock.setblocking(False)

    def may_read(self) -> bool:
        if self.closed:
            return False
        if not self.rate:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens >= min(READ_CHUNK, self.burst)

    def lost(self, why: str) -> None:
        self.closed = why
        self.closed_at = time.monotonic()

    def read(self, report) -> None:
        size = kit.RECV_SIZE if not self.rate else int(min(kit.RECV_SIZE, self.tokens))
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost("%s: %s" % (type(exc).__name__, exc))
            return
        if not data:
            self.lost("closed by the server")
            return
        self.tokens -= len(data)
        self.bytes += len(data)
        self.reader.receive_data(data)
        for reply in kit.replies(self.reader):
            if not isinstance(reply, ChatMessage) or not reply.message.startswith("flood "):
                continue                    # join announcements of the others
            seq = int(reply.message.split(" ", 2)[1])
            if seq != self.next_seq:
                self.out_of_order += 1
                if self.out_of_order <= kit.MAX_EXAMPLES:
                    report.fail("out_of_order", "%s got flood chat %d, expected %d"
                                % (self.name, seq, self.next_seq))
            self.next_seq = seq + 1


def scenario_flood(args: argparse.Namespace, target: AttackTarget, report):
    room = "flood-" + run_tag()
    flooder = Reader("flooder", 0)
    slow = Reader("slow", args.read_rate)
    fast = Reader("fast", 0)
    readers = (slow, fast)
    for member in (slow, fast, flooder):
        member.connect(target, room)
    # little queued in the kernel: what the flooder has sent is nearly what the server has read
    flooder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, FLOODER_SNDBUF)
    out = bytearray()
    sent_chats = 0
    seq = 0
    selector = selectors.DefaultSelector()
    started = time.monotonic()
    flood_end = started + args.seconds
    drain_end = flood_end + max(5.0, 2 * args.seconds)
    flooding = True
    try:
        while time.monotonic() < drain_end:
            now = time.monotonic()
            if flooding and now >= flood_end:
                flooding = False
            if flooding and len(out) < kit.SEND_SIZE:
                chunk = flood_chat(flooder.ref, flooder.join_id, flooder.name, seq)
                out += chunk
                seq += 1
            if not flooding and not out and all(
                    r.closed or r.next_seq >= sent_chats for r in readers + (flooder,)):
                break
            interest = []
            for member in readers + (flooder,):
                events = selectors.EVENT_READ if member.may_read() else 0
                if member is flooder and out:
                    events |= selectors.EVENT_WRITE
                if events:
                    interest.append((member, events))
            for member, events in interest:
                selector.register(member.sock, events, member)
            ready = selector.select(LOOP_WAIT)
            for member, events in interest:
                selector.unregister(member.sock)
            for key, mask in ready:
                member = key.data
                if mask & selectors.EVENT_WRITE and out:
                    try:
                        sent = member.sock.send(out[:kit.SEND_SIZE])
                        del out[:sent]
                        # whole chats sent: those whose last byte has left
                        sent_chats = seq - (len(out) + len(chunk) - 1) // len(chunk)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError as exc:
                        member.lost("%s: %s" % (type(exc).__name__, exc))
                if mask & selectors.EVENT_READ:
                    member.read(report)
            if flooder.closed:
                break
            report.progress(lambda: "flood: %d chats posted; slow has %d, fast %d, the "
                            "flooder's echo %d%s" % (sent_chats, slow.next_seq, fast.next_seq,
                                                     flooder.next_seq,
                                                     "" if flooding else " (draining)"))
    finally:
        selector.close()
    echoed = flooder.next_seq
    figures: Dict[str, object] = {
        "seconds": args.seconds, "read_rate": args.read_rate, "chats_posted": sent_chats,
        "chats_echoed": echoed, "posted_mb_per_s": round(sent_chats * CHAT_BYTES / 1e6
                                                         / args.seconds, 2)}
    for member in readers:
        figures[member.name + "_received"] = member.next_seq
        figures[member.name + "_cut"] = member.closed
        if member.closed:
            figures[member.name + "_cut_seen_after_s"] = round(member.closed_at - started, 3)
            report.fail("reader_cut", "%s reader: %s after %d chats (seen %.2f s in)"
                        % (member.name, member.closed, member.next_seq,
                           member.closed_at - started))
        elif member.next_seq < echoed:
            report.fail("chats_missing", "%s reader got %d of %d chats"
                        % (member.name, member.next_seq, echoed))
    if flooder.closed:
        figures["flooder_cut"] = flooder.closed
    for member in readers + (flooder,):
        if member.sock is not None:
            member.sock.close()
    return figures, ("%d chats of %d bytes posted in %g s (%s MB/s): slow reader %s, fast "
                     "reader %s" % (sent_chats, CHAT_BYTES, args.seconds,
                                    figures["posted_mb_per_s"],
                                    "cut" if slow.closed else "got %d" % slow.next_seq,
                                    "cut" if fast.closed else "got %d" % fast.next_seq))


# ---------------------------------------------------------------------------------------------
# 4. rooms: fresh names until the table would be full; can rooms still be created?
# ---------------------------------------------------------------------------------------------

class RoomsConn(kit.Conn):
    def __init__(self) -> None:
        super().__init__()
        self.ref: Optional[int] = None
        self.join_id: Optional[int] = None
        self.lost = False


class RoomFlood(kit.Handler):
    """Each connection: JOIN a fresh name; on JOINED_CHATROOM, LEAVE it; on LEFT_CHATROOM or an
    ERROR_CODE, the next JOIN; until `count` JOINs are answered."""

    def __init__(self, target: AttackTarget, report, count: int, tag: str) -> None:
        self.loop = kit.Loop(target.address, self)
        self.report = report
        self.count = count
        self.tag = tag
        self.issued = 0
        self.answered = 0
        self.created = 0
        self.refs: set = set()
        self.codes: Dict[int, int] = collections.Counter()

    def _next(self, conn: RoomsConn) -> None:
        if self.issued < self.count:
            self.loop.send(conn, join_request("room-%s-%d" % (self.tag, self.issued), "r"))
            self.issued += 1

    def connected(self, conn: RoomsConn) -> None:
        self._next(conn)

    def connect_failed(self, conn: RoomsConn, exc: OSError) -> None:
        conn.lost = True
        self.report.fail("connect_failed", str(exc))

    def closed(self, conn: RoomsConn, exc: Optional[OSError]) -> None:
        conn.lost = True
        self.report.fail("closed_by_server", "%s" % (exc or "closed"))

    def received(self, conn: RoomsConn) -> None:
        for reply in kit.replies(conn.reader):
            if isinstance(reply, JoinedReply):
                self.answered += 1
                if reply.ref not in self.refs:
                    self.refs.add(reply.ref)
                    self.created += 1
                self.loop.send(conn, leave_request(reply.ref, reply.join_id, "r"))
            elif isinstance(reply, ErrorReply):
                self.answered += 1
                self.codes[reply.code] += 1
                self._next(conn)
            elif isinstance(reply, LeftReply):
                self._next(conn)
            elif not isinstance(reply, ChatMessage):    # its own join and leave: expected
                self.report.fail("unexpected_reply", repr(reply))


def join_fresh_room(target: AttackTarget, name: str) -> Tuple[Optional[object], int, float]:
    """JOIN `name` on a new connection, waiting out ERROR_CODE 13 for ROOM_RETRY_SECONDS:
    (the last reply, how many 13s, seconds taken)."""
    started = time.monotonic()
    tries = 0
    reply = None
    with socket.create_connection((target.host, target.port), timeout=REPLY_TIMEOUT) as sock:
        reader = ReplyReader()
        while time.monotonic() - started < ROOM_RETRY_SECONDS:
            sock.sendall(join_request(name, "late"))
            reply = None
            while reply is None:
                for candidate in kit.replies(reader):
                    if isinstance(candidate, (JoinedReply, ErrorReply)):
                        reply = candidate
                        break
                if reply is None:
                    data = sock.recv(kit.RECV_SIZE)
                    if not data:
                        return "closed by the server", tries, time.monotonic() - started
                    reader.receive_data(data)
            if not (isinstance(reply, ErrorReply) and reply.code == CREATING_ROOMS_TOO_FAST_CODE):
                break
            tries += 1
            time.sleep(ROOM_RETRY_DELAY)
    return reply, tries, time.monotonic() - started


def scenario_rooms(args: argparse.Namespace, target: AttackTarget, report):
    tag = run_tag()
    rss_before = target.rss_kb()
    flood = RoomFlood(target, report, args.count, tag)
    conns = [RoomsConn() for _ in range(args.connections)]
    started = time.monotonic()
    for conn in conns:
        flood.loop.connect(conn)

    def done() -> bool:
        return flood.answered >= args.count or all(c.lost for c in conns)
    finished = flood.loop.run_until(done, args.seconds, lambda: report.progress(
        lambda: "rooms: %d/%d JOINs answered, %d rooms created, codes %s, server RSS %s MiB"
        % (flood.answered, args.count, flood.created, dict(flood.codes),
           mib(target.rss_kb()))), wait=LOOP_WAIT)
    elapsed = time.monotonic() - started
    if not finished:
        report.fail("timeout", "%d of %d JOINs answered within %g s"
                    % (flood.answered, args.count, args.seconds))
    # let the last LEAVEs be handled, then everyone leaves
    flood.loop.run_until(lambda: False, 0.2, wait=LOOP_WAIT)
    rss_after = target.rss_kb()
    flood.loop.close_all()
    time.sleep(0.2)
    reply, retries, seconds = join_fresh_room(target, "room-%s-after" % tag)
    figures: Dict[str, object] = {
        "joins": args.count, "connections": args.connections, "answered": flood.answered,
        "rooms_created": flood.created, "seconds": round(elapsed, 3),
        "rooms_created_per_s": round(flood.created / elapsed, 1) if elapsed else None,
        "error_codes": {str(k): v for k, v in sorted(flood.codes.items())},
        "server_rss_before_mib": mib(rss_before), "server_rss_after_mib": mib(rss_after),
        "server_rss_growth_mib": None if rss_before is None or rss_after is None
        else mib(rss_after - rss_before),
        "new_room_reply": repr(reply), "new_room_waited_13": retries,
        "new_room_seconds": round(seconds, 3)}
    for code in flood.codes:
        if code not in (CREATING_ROOMS_TOO_FAST_CODE,):
            report.fail("error_%d" % code, "%d JOINs got ERROR_CODE %d"
                        % (flood.codes[code], code))
    if isinstance(reply, ErrorReply) and reply.code == TOO_MANY_ROOMS_CODE:
        report.fail("locked_out", "after everyone left, a new room still gets ERROR_CODE %d: "
                    "%s" % (reply.code, reply.description))
    elif not isinstance(reply, JoinedReply):
        report.fail("no_new_room", "after everyone left, a new room got %r" % (reply,))
    return figures, ("%d JOINs: %d rooms created (%s/s), codes %s; then a new room: %s"
                     % (flood.answered, flood.created, figures["rooms_created_per_s"],
                        figures["error_codes"],
                        "joined" if isinstance(reply, JoinedReply) else reply))


# ---------------------------------------------------------------------------------------------
# 5. descriptors: every descriptor held by idle connections; is a new client served?
# ---------------------------------------------------------------------------------------------

class Holder(kit.Handler):
    """Connections that never send a byte (and never read); counts what happened to them."""

    def __init__(self, target: AttackTarget) -> None:
        self.loop = kit.Loop(target.address, self)
        self.connected_count = 0
        self.failed = 0
        self.closed_count = 0
        self.errors: Dict[str, int] = collections.Counter()

    def connected(self, conn: kit.Conn) -> None:
        self.connected_count += 1

    def connect_failed(self, conn: kit.Conn, exc: OSError) -> None:
        self.failed += 1
        self.errors[str(exc)] += 1

    def closed(self, conn: kit.Conn, exc: Optional[OSError]) -> None:
        self.closed_count += 1


def scenario_descriptors(args: argparse.Namespace, target: AttackTarget, report):
    figures: Dict[str, object] = {}
    if target.server is not None:
        limit = target.server.open_file_limit()
        figures["server_open_files_soft_hard"] = limit
        soft = int(limit.split()[0]) if limit and limit.split()[0].isdigit() else args.nofile
        hold = soft + args.extra
    elif args.hold:
        hold = args.hold
    else:
        report.fail("usage", "descriptors with --port needs --hold (the server's open-file "
                    "limit plus a few)")
        return figures, ""
    _before, mine = kit.raise_nofile_limit()
    if mine < hold + 64:
        report.fail("fd_limit", "holding %d connections needs %d open files here; the limit "
                    "is %d" % (hold, hold + 64, mine))
        return figures, ""
    holder = Holder(target)
    conns = [kit.Conn() for _ in range(hold)]
    for conn in conns:                      # they read (to see the server close them), never send
        holder.loop.connect(conn)
    holder.loop.run_until(lambda: holder.connected_count + holder.failed >= hold,
                          HOLD_CONNECT_SECONDS, lambda: report.progress(
                              lambda: "holding: %d/%d connected" % (holder.connected_count,
                                                                    hold)), wait=0.02)
    holder.loop.run_until(lambda: False, HOLD_SETTLE, wait=0.02)
    ok, seconds, problem = kit.helo_check(target.host, target.port, HELO_DEADLINE, "late")
    holder.loop.run_until(lambda: False, 0.1, wait=0.02)
    figures.update(hold=hold, held_connected=holder.connected_count,
                   held_connect_failed=holder.failed, held_closed_by_server=holder.closed_count,
                   connect_errors=dict(holder.errors), new_client_served=ok,
                   new_client_seconds=round(seconds, 3))
    if not ok:
        report.fail("new_client_not_served", "with %d idle connections held: %s"
                    % (holder.connected_count, problem))
    holder.loop.close_all()
    return figures, ("%d idle connections held (%d closed by the server): a new client %s in "
                     "%.2f s" % (holder.connected_count, holder.closed_count,
                                 "was served" if ok else "was NOT served", seconds))


# ---------------------------------------------------------------------------------------------
# 6. blank: connections sending only newlines
# ---------------------------------------------------------------------------------------------

class Blank(kit.Handler):
    def __init__(self, target: AttackTarget, report) -> None:
        self.loop = kit.Loop(target.address, self)
        self.report = report
        self.up = 0
        self.cut = 0

    def connected(self, conn: kit.Conn) -> None:
        self.up += 1

    def connect_failed(self, conn: kit.Conn, exc: OSError) -> None:
        self.report.fail("connect_failed", str(exc))

    def closed(self, conn: kit.Conn, exc: Optional[OSError]) -> None:
        self.cut += 1

    def received(self, conn: kit.Conn) -> None:
        for reply in kit.replies(conn.reader):
            self.report.fail("unexpected_reply", repr(reply))


def scenario_blank(args: argparse.Namespace, target: AttackTarget, report):
    tag = run_tag()
    blank = Blank(target, report)
    conns = [kit.Conn() for _ in range(args.connections)]
    for conn in conns:
        blank.loop.connect(conn)
    blank.loop.run_until(lambda: blank.up >= len(conns), 30.0, wait=0.02)
    probe = start_probe(target, report, tag)
    feeder = Feeder(blank.loop, conns, b"\n" * kit.SEND_SIZE)
    sent = feeder.sent

    def top_up() -> None:
        feeder.top_up()
        report.progress(lambda: "blank lines: %.0f MB sent, probe p99 %s ms"
                        % (sent() / 1e6, probe.figures(started).get("probe_p99_ms")))
    started = time.monotonic()
    blank.loop.run_until(lambda: False, args.seconds, top_up, wait=LOOP_WAIT)
    elapsed = time.monotonic() - started
    probe.stop()
    figures: Dict[str, object] = {"connections": args.connections, "seconds": round(elapsed, 3),
                                  "newline_bytes_sent": sent(),
                                  "newline_mb_per_s": round(sent() / 1e6 / elapsed, 1),
                                  "connections_cut": blank.cut}
    figures.update(probe.figures(started))
    check_probe(report, figures, probe, PROBE_P99_TARGET_MS, None)
    blank.loop.close_all()
    return figures, ("%d connections sent %.0f MB of newlines in %.1f s: probe p50 %s ms, p99 "
                     "%s ms, max %s ms" % (args.connections, sent() / 1e6, elapsed,
                                          figures["probe_p50_ms"], figures["probe_p99_ms"],
                                          figures["probe_max_ms"]))


# ---------------------------------------------------------------------------------------------
# 7. digits: numbers of 5001 digits
# ---------------------------------------------------------------------------------------------

def digit_requests(ref: int) -> List[Tuple[str, bytes]]:
    """(what it is, the request): each must get an ERROR_CODE or a LEFT_CHATROOM."""
    zeros = "0" * (DIGITS - 1) + "1"
    nines = "9" * DIGITS
    mixed = "0" * 1000 + "7" * (DIGITS - 1000)
    def leave(room: str, join_id: str) -> bytes:
        return ("LEAVE_CHATROOM: %s\nJOIN_ID: %s\nCLIENT_NAME: d\n" % (room, join_id)).encode()
    def chat(room: str, join_id: str) -> bytes:
        return ("CHAT: %s\nJOIN_ID: %s\nCLIENT_NAME: d\nMESSAGE: hi\n\n"
                % (room, join_id)).encode()
    return [("LEAVE, ROOM_REF of leading zeros", leave(zeros, "1")),
            ("LEAVE, ROOM_REF of nines", leave(nines, "1")),
            ("CHAT, ROOM_REF of nines", chat(nines, "1")),
            ("CHAT, ROOM_REF of leading zeros", chat(zeros, "1")),
            ("LEAVE, JOIN_ID of %d digits" % DIGITS, leave(str(ref), mixed)),
            ("CHAT, JOIN_ID of %d digits" % DIGITS, chat(str(ref), nines))]


def digits_attacker(target: AttackTarget, requests: List[Tuple[str, bytes]], count: int,
                    results: Dict[str, object], lock: threading.Lock) -> None:
    """Send `count` requests (cycling through `requests`), one at a time, each waiting for its
    ERROR_CODE or LEFT_CHATROOM; a connection the server closes is counted and replaced."""
    sock: Optional[socket.socket] = None
    reader = ReplyReader()
    tally: Dict[str, int] = collections.Counter()
    problems: List[str] = []
    try:
        for index in range(count):
            what, request = requests[index % len(requests)]
            if sock is None:
                sock = socket.create_connection((target.host, target.port), REPLY_TIMEOUT)
                reader = ReplyReader()
                tally["connections"] += 1
            sock.sendall(request)
            reply = None
            deadline = time.monotonic() + REPLY_TIMEOUT
            while reply is None and time.monotonic() < deadline:
                for candidate in kit.replies(reader):
                    if isinstance(candidate, (ErrorReply, LeftReply)):
                        reply = candidate
                        break
                    problems.append("%s: unexpected %r" % (what, candidate))
                if reply is not None:
                    break
                try:
                    data = sock.recv(kit.RECV_SIZE)
                except OSError as exc:
                    data = b""
                    problems.append("%s: %s" % (what, exc))
                if not data:
                    break
                reader.receive_data(data)
            if reply is None:
                tally["no_reply"] += 1
                problems.append("%s: the connection closed (or %g s passed) without an "
                                "ERROR_CODE or LEFT_CHATROOM" % (what, REPLY_TIMEOUT))
                sock.close()
                sock = None
            elif isinstance(reply, ErrorReply):
                tally["error_%d" % reply.code] += 1
            else:
                tally["left"] += 1
    except OSError as exc:
        problems.append("%s: %s" % (type(exc).__name__, exc))
    finally:
        if sock is not None:
            sock.close()
        with lock:
            for key, value in tally.items():
                results[key] = results.get(key, 0) + value
            results.setdefault("problems", []).extend(problems)


def scenario_digits(args: argparse.Namespace, target: AttackTarget, report):
    tag = run_tag()
    owner = socket.create_connection((target.host, target.port), REPLY_TIMEOUT)
    owner_reader = ReplyReader()
    owner.sendall(join_request("digits-" + tag, "owner"))
    joined = wait_for(owner, owner_reader, lambda r: isinstance(r, JoinedReply),
                         time.monotonic() + REPLY_TIMEOUT)
    if joined is None:
        report.fail("setup", "the room's owner got no JOINED_CHATROOM")
        return {}, ""
    log_before = target.server.log_size() if target.server else 0
    results: Dict[str, object] = {}
    lock = threading.Lock()
    threads = [threading.Thread(target=digits_attacker, daemon=True,
                                args=(target, digit_requests(joined.ref), args.count, results,
                                      lock)) for _ in range(args.connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
            report.progress(lambda: "digits: attackers running")
            if time.monotonic() - started > args.count * REPLY_TIMEOUT + 10:
                break
    elapsed = time.monotonic() - started
    owner.close()
    problems = results.pop("problems", [])
    for problem in problems:
        report.fail("no_error_code", problem)
    figures: Dict[str, object] = {"attackers": args.connections, "requests": args.count
                                  * args.connections, "digits": DIGITS,
                                  "seconds": round(elapsed, 3), "replies": results}
    if target.server is not None:
        time.sleep(0.2)                     # the log of the last closes
        log = target.server.log(log_before)
        connections = max(1, int(results.get("connections", 1)))
        figures.update(log_bytes=len(log.encode()), log_bytes_per_connection=round(
            len(log.encode()) / connections), log_bytes_per_s=round(len(log.encode())
                                                                    / elapsed),
            tracebacks=log.count("Traceback"))
        if figures["tracebacks"]:
            report.fail("traceback_logged", "%d tracebacks in the server's log, e.g. %s"
                        % (figures["tracebacks"], log[log.find("Traceback"):][:200]))
    return figures, ("%d requests with %d-digit numbers: replies %s, %s log bytes per "
                     "connection" % (figures["requests"], DIGITS, dict(results),
                                     figures.get("log_bytes_per_connection")))


# ---------------------------------------------------------------------------------------------
# 8. disconnect: DISCONNECT from the most rooms with the widest names
# ---------------------------------------------------------------------------------------------

def wide_name(index: int, filler: int = 0) -> str:
    """WIDE_NAME_CHARS four-byte characters, distinct for each index."""
    digits = []
    for _ in range(3):
        index, digit = divmod(index, EMOJI_COUNT)
        digits.append(chr(EMOJI_BASE + digit))
    return "".join(digits) + chr(EMOJI_BASE + filler) * (WIDE_NAME_CHARS - 3)


def send_and_wait(sock: socket.socket, reader: ReplyReader, request: bytes, wanted):
    sock.sendall(request)
    return wait_for(sock, reader, wanted, time.monotonic() + REPLY_TIMEOUT)


def scenario_disconnect(args: argparse.Namespace, target: AttackTarget, report):
    tag = run_tag()
    names = [wide_name(i, filler=hash(tag) % EMOJI_COUNT) for i in range(args.rooms)]
    client_name = chr(EMOJI_BASE + 66) * WIDE_NAME_CHARS
    def is_answer(reply) -> bool:
        return isinstance(reply, (JoinedReply, ErrorReply))
    # helpers create the rooms (joining an existing room is never rate-limited), then go
    for start in range(0, len(names), ROOMS_PER_HELPER):
        with socket.create_connection((target.host, target.port), REPLY_TIMEOUT) as helper:
            reader = ReplyReader()
            for name in names[start:start + ROOMS_PER_HELPER]:
                reply = send_and_wait(helper, reader, join_request(name, "helper"), is_answer)
                if not isinstance(reply, JoinedReply):
                    report.fail("room_not_created", "a helper's JOIN got %r" % (reply,))
        report.progress(lambda: "disconnect: %d rooms created" % min(len(names), start))
    sock = socket.create_connection((target.host, target.port), REPLY_TIMEOUT)
    reader = ReplyReader()
    joined: List[int] = []
    refused: Dict[int, int] = collections.Counter()
    for name in names:
        reply = send_and_wait(sock, reader, join_request(name, client_name), is_answer)
        if isinstance(reply, JoinedReply):
            joined.append(reply.ref)
        elif isinstance(reply, ErrorReply):
            refused[reply.code] += 1
        else:
            report.fail("no_join_reply", "JOIN of room %d: %r" % (len(joined), reply))
            break
    for _ in kit.replies(reader):           # our join announcements
        pass
    started = time.monotonic()
    sock.sendall(disconnect_request(client_name))
    leaves: Dict[int, int] = collections.Counter()
    ended = "timeout"
    sock.settimeout(REPLY_TIMEOUT)
    try:
        while True:
            data = sock.recv(kit.RECV_SIZE)
            if not data:
                ended = "closed"
                break
            reader.receive_data(data)
            for reply in kit.replies(reader):
                if isinstance(reply, ChatMessage) and reply.message == LEFT_TEXT % client_name:
                    leaves[reply.ref] += 1
    except socket.timeout:
        pass
    except OSError as exc:
        ended = "%s: %s" % (type(exc).__name__, exc)
    seconds = time.monotonic() - started
    sock.close()
    got = sum(1 for ref in joined if leaves.get(ref))
    figures: Dict[str, object] = {
        "rooms": args.rooms, "joined": len(joined), "join_refused": dict(refused),
        "name_bytes": len(names[0].encode()), "leaves_received": got,
        "leaves_duplicated": sum(c - 1 for c in leaves.values() if c > 1),
        "ended": ended, "seconds": round(seconds, 3)}
    if got < len(joined) or figures["leaves_duplicated"]:
        report.fail("leaves_missing", "DISCONNECT from %d rooms: %d leave announcements "
                    "received, %d duplicated (connection %s)"
                    % (len(joined), got, figures["leaves_duplicated"], ended))
    if ended != "closed":
        report.fail("not_closed", "after DISCONNECT the connection ended: %s" % ended)
    return figures, ("DISCONNECT from %d rooms with %d-byte names: %d leave announcements "
                     "received" % (len(joined), figures["name_bytes"], got))


# ---------------------------------------------------------------------------------------------
# 9. names: control and format characters
# ---------------------------------------------------------------------------------------------

UNPRINTABLE_NAMES = [
    ("ESC CSI colour", "\x1b[31mred"), ("ESC OSC title", "\x1b]0;owned\x07"),
    ("BEL", "ring\x07"), ("NUL", "nul\x00"), ("CR inside", "a\rb"), ("TAB inside", "a\tb"),
    ("DEL", "del\x7f"), ("C1 CSI", "c1\x9b31m"), ("C1 NEL", "next\x85line"),
    ("RLO bidi override", "\u202eevil"), ("LRI bidi isolate", "\u2066iso"),
    ("ZWSP zero width space", "zero\u200bwidth"), ("ZWJ zero width joiner", "a\u200db"),
    ("BOM", "\ufeffbom"), ("soft hyphen", "soft\u00adhyphen"),
    ("Arabic letter mark", "mark\u061c"), ("line separator", "line\u2028sep"),
    ("paragraph separator", "para\u2029sep")]


def scenario_names(args: argparse.Namespace, target: AttackTarget, report):
    tag = run_tag()
    sock = socket.create_connection((target.host, target.port), REPLY_TIMEOUT)
    reader = ReplyReader()
    def is_answer(reply) -> bool:
        return isinstance(reply, (JoinedReply, ErrorReply))
    outcomes: Dict[str, str] = {}
    refused = 0
    for what, bad in UNPRINTABLE_NAMES:
        for field, request in (("room", join_request("names-%s-%s" % (tag, bad), "n")),
                               ("CLIENT_NAME", join_request("names-" + tag, bad))):
            reply = send_and_wait(sock, reader, request, is_answer)
            key = "%s in %s" % (what, field)
            if isinstance(reply, ErrorReply) and reply.code == NOT_PRINTABLE_CODE:
                refused += 1
                outcomes[key] = "ERROR_CODE 12"
            else:
                outcomes[key] = repr(reply)
                report.fail("not_refused", "%s: %r" % (key, reply))
    plain = send_and_wait(sock, reader, join_request("names-plain-" + tag, "plain name"),
                          is_answer)
    if not isinstance(plain, JoinedReply):
        report.fail("plain_name_refused", "a plain JOIN got %r" % (plain,))
    sock.close()
    total = 2 * len(UNPRINTABLE_NAMES)
    return ({"joins": total, "refused_with_12": refused, "outcomes": outcomes},
            "%d of %d JOINs with unprintable names got ERROR_CODE 12" % (refused, total))


# ---------------------------------------------------------------------------------------------
# 10. idlers and 11. departures: many source addresses (127.0.0.2, 127.0.0.3, ...)
# ---------------------------------------------------------------------------------------------

# departures: connections join their rooms in groups of this many, so a room has this many
# attacking members (the filed measurement had ~7.6 per room)
GROUP = 8
SWARM_TAIL = 64                         # bytes kept between reads, so no marker is cut in two
SWARM_CONNECT_TIMEOUT = 5.0
STAYERS_PER_ADDRESS = 64                # (within the memberships an address may hold)
STORM_QUIET = 1.0                       # departures, when JOINs were refused: the storm is over
NEWCOMERS = 5                           # idlers: new clients that must each be served
HELO_MARK = b"HELO "
JOINED_MARK = b"JOINED_CHATROOM:"
ERROR_MARK = b"ERROR_CODE:"
LEFT_MARK = (LEFT_TEXT % "").encode()


def source_address(index: int) -> str:
    """The index-th attacking source address: 127.0.0.2 onwards (127.0.0.1 is the probe's)."""
    index += 2
    return "127.%d.%d.%d" % (index >> 16 & 255, index >> 8 & 255, index & 255)


class SwarmConn:
    __slots__ = ("sock", "source", "counts", "tail", "closed")

    def __init__(self, sock: socket.socket, source: str) -> None:
        self.sock, self.source = sock, source
        self.counts: Dict[bytes, int] = collections.Counter()
        self.tail = b""
        self.closed = False


class Swarm:
    """Raw connections from chosen source addresses on one selector. Each is given its requests
    as it connects; what it receives is not parsed, only the markers in `marks` counted (at C
    speed: bytes.count), so a swarm of thousands keeps up with the server."""

    def __init__(self, target: AttackTarget, marks: Tuple[bytes, ...]) -> None:
        self.address = (target.host, target.port)
        self.marks = marks
        self.selector = selectors.DefaultSelector()
        self.conns: List[SwarmConn] = []
        self.failed: Dict[str, int] = collections.Counter()

    def open(self, source: str, requests: bytes) -> Optional[SwarmConn]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((source, 0))
            sock.settimeout(SWARM_CONNECT_TIMEOUT)
            sock.connect(self.address)
            sock.sendall(requests)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self.failed[type(exc).__name__] += 1
            return None
        conn = SwarmConn(sock, source)
        self.conns.append(conn)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def poll(self, timeout: float) -> None:
        for key, _mask in self.selector.select(timeout):
            conn = key.data
            try:
                data = conn.sock.recv(kit.RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._forget(conn)
                continue
            data = conn.tail + data
            for mark in self.marks:
                conn.counts[mark] += data.count(mark) - conn.tail.count(mark)
            conn.tail = data[-SWARM_TAIL:]

    def run_until(self, done: Callable[[], bool], seconds: float,
                  progress: Optional[Callable[[], None]] = None) -> bool:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                return False
            self.poll(LOOP_WAIT)
            if progress is not None:
                progress()
        return True

    def total(self, mark: bytes) -> int:
        return sum(conn.counts[mark] for conn in self.conns)

    def _forget(self, conn: SwarmConn) -> None:
        if not conn.closed:
            conn.closed = True
            self.selector.unregister(conn.sock)
            conn.sock.close()

    def close_all(self, reset: bool = False) -> None:
        """Close every connection (with reset: SO_LINGER 0, each sends RST, all at once)."""
        for conn in self.conns:
            if reset and not conn.closed:
                with contextlib.suppress(OSError):
                    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
            self._forget(conn)
        self.selector.close()


def scenario_idlers(args: argparse.Namespace, target: AttackTarget, report):
    """Case 7: every descriptor held by connections that each got a HELO reply (proven), then
    idle, from --addresses addresses; NEWCOMERS new clients must each be served in 2 s."""
    figures: Dict[str, object] = {}
    if target.server is None and not args.hold:
        report.fail("usage", "idlers with --port needs --hold (the server's open-file limit "
                    "plus a few)")
        return figures, ""
    hold = args.hold or args.nofile + args.extra
    kit.raise_nofile_limit()
    swarm = Swarm(target, (HELO_MARK,))
    for index in range(hold):
        swarm.open(source_address(index % args.addresses), helo_request("idle %d" % index))
    swarm.run_until(lambda: swarm.total(HELO_MARK) + sum(c.closed for c in swarm.conns)
                    >= len(swarm.conns), HOLD_CONNECT_SECONDS)
    proven = swarm.total(HELO_MARK)
    served = []
    for index in range(NEWCOMERS):
        ok, seconds, problem = kit.helo_check(target.host, target.port, HELO_DEADLINE, "new")
        served.append(round(seconds, 3) if ok else None)
        if not ok:
            report.fail("newcomer_not_served", "newcomer %d of %d: %s" % (index + 1, NEWCOMERS,
                                                                          problem))
        swarm.poll(0)
    figures.update(hold=hold, addresses=args.addresses, held_connected=len(swarm.conns),
                   held_proven=proven, connect_failures=dict(swarm.failed),
                   held_closed_by_server=sum(c.closed for c in swarm.conns),
                   newcomers=NEWCOMERS, newcomers_served=sum(s is not None for s in served),
                   newcomer_seconds=served)
    swarm.close_all()
    return figures, ("%d proven idlers from %d addresses (%d answered HELO): %d of %d "
                     "newcomers served within %g s" % (len(swarm.conns), args.addresses,
                                                        proven, figures["newcomers_served"],
                                                        NEWCOMERS, HELO_DEADLINE))


def group_joins(tag: str, group: int, member: int, rooms: int, share: bool) -> bytes:
    """The JOINs of member `member` of `group` in the group's `rooms` rooms: its own share of
    them (`share`: joined first, creating them, so the group's creations are spread over its
    members, each within its per-connection burst), or the others (once those exist)."""
    first, end = member * rooms // GROUP, (member + 1) * rooms // GROUP
    chosen = [i for i in range(rooms) if (first <= i < end) == share]
    return b"".join(join_request("dep-%s-%d-%d" % (tag, group, i), "g%dm%d" % (group, member))
                    for i in chosen)


def scenario_departures(args: argparse.Namespace, target: AttackTarget, report):
    """Case 8: --addresses addresses, --connections each, every one in --rooms rooms shared
    with its group of GROUP; then every attacking connection resets at once. A stayer per
    group (in the group's rooms) must hear every leave."""
    tag = run_tag()
    kit.raise_nofile_limit()
    swarm = Swarm(target, (JOINED_MARK, ERROR_MARK, LEFT_MARK))
    figures: Dict[str, object] = {"addresses": args.addresses, "per_address": args.connections,
                                  "rooms_each": args.rooms}
    probe = start_probe(target, report, tag)
    rss_before = target.rss_kb()
    cpu_before = cpu_now(target, probe)
    started = time.monotonic()
    groups = args.connections // GROUP
    members = [(address * groups + group, member) for address in range(args.addresses)
               for group in range(groups) for member in range(GROUP)]
    for group, member in members:                       # their shares: the rooms created
        swarm.open(source_address(group // groups), group_joins(tag, group, member,
                                                                args.rooms, True))
    wanted = len(members) * args.rooms // GROUP

    def answered() -> bool:
        return swarm.total(JOINED_MARK) + swarm.total(ERROR_MARK) >= wanted

    def progress() -> None:
        report.progress(lambda: "joining: %d/%d joined, server RSS %s MiB"
                        % (swarm.total(JOINED_MARK), wanted, mib(target.rss_kb())))
    joined = swarm.run_until(answered, args.seconds, progress)
    for conn, (group, member) in zip(list(swarm.conns), members):     # the rest of the rooms
        conn.sock.settimeout(SWARM_CONNECT_TIMEOUT)
        conn.sock.sendall(group_joins(tag, group, member, args.rooms, False))
        conn.sock.setblocking(False)
    # A stayer per group (no share: it creates no room), STAYERS_PER_ADDRESS to an address
    stayers = [swarm.open(source_address(args.addresses + group // STAYERS_PER_ADDRESS),
                          group_joins(tag, group, GROUP, args.rooms, False))
               for group in range(args.addresses * groups)]
    wanted = (len(members) + len(stayers)) * args.rooms
    joined = joined and swarm.run_until(answered, args.seconds, progress)
    built = time.monotonic()
    figures.update(probe.figures(started, built), **cpu_taken(cpu_before, cpu_now(target, probe)))
    figures = {("build_" + k if k.startswith("probe_") or k.endswith("_cpu_s") else k): v
               for k, v in figures.items()}
    figures.update(connections=len(swarm.conns) - len(stayers),
                   memberships=(len(swarm.conns) - len(stayers)) * args.rooms,
                   joined=swarm.total(JOINED_MARK), join_errors=swarm.total(ERROR_MARK),
                   build_seconds=round(built - started, 3), connect_failures=dict(swarm.failed),
                   server_rss_built_mib=mib(target.rss_kb()),
                   server_rss_build_growth_mib=mib((target.rss_kb() or 0) - (rss_before or 0)))
    if not joined:
        report.fail("join_timeout", "%d of %d joins answered after %g s"
                    % (swarm.total(JOINED_MARK), wanted, args.seconds))
    build_p99 = figures["build_probe_p99_ms"]
    if build_p99 is not None and build_p99 > PROBE_P99_TARGET_MS:
        report.fail("build_probe_p99_over_target", "probe_p99_ms %.1f ms while they joined, "
                    "target <= %g ms" % (build_p99, PROBE_P99_TARGET_MS))
    return _reset_swarm(args, target, report, swarm, stayers, probe, figures)


def _reset_swarm(args, target, report, swarm: Swarm, stayers: List[Optional[SwarmConn]],
                 probe: Probe, figures: Dict[str, object]):
    """departures, second half: every attacking connection resets at once; the figures of the
    storm (the probe's latency, the server's RSS growth, how long until the stayers are told)."""
    if target.monitor:
        target.monitor.reset()
    rss_before = target.rss_kb()
    owed = GROUP * args.rooms
    goers = [conn for conn in swarm.conns if conn not in stayers]
    started = time.monotonic()
    for conn in goers:
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        swarm._forget(conn)
    heard = [0, started]                # leaves the stayers had, and since when

    def done() -> bool:
        """Every stayer has every leave; or, when JOINs were refused (so what is owed is not
        known), the stayers have heard nothing new for STORM_QUIET seconds."""
        told = sum(s.counts[LEFT_MARK] for s in stayers if s)
        if told != heard[0]:
            heard[:] = [told, time.monotonic()]
        if figures["join_errors"] and time.monotonic() - heard[1] > STORM_QUIET:
            return True
        return all(s is None or s.closed or s.counts[LEFT_MARK] >= owed for s in stayers)
    told = swarm.run_until(done, args.seconds, lambda: report.progress(
        lambda: "storm: stayers told %d/%d leaves" % (heard[0], owed * len(stayers))))
    storm_end = heard[1] if figures["join_errors"] else time.monotonic()
    swarm.run_until(lambda: False, AFTER_STORM)
    probe.stop()
    storm = probe.figures(started, storm_end + AFTER_STORM)
    worst = max((took, posted) for posted, took in probe.samples if posted >= started)
    storm["probe_max_posted_s"] = round(worst[1] - started, 3)    # after the resets began
    figures.update(storm, storm_seconds=round(storm_end - started, 3),
                   leaves_told=sum(s.counts[LEFT_MARK] for s in stayers if s),
                   leaves_owed=owed * len(stayers))
    if not told or (figures["join_errors"] and not args.allow_refusals):
        report.fail("storm_timeout" if not told else "joins_refused", "%d JOINs refused; "
                    "the stayers had %d of %d leaves after %g s"
                    % (figures["join_errors"], figures["leaves_told"], figures["leaves_owed"],
                       time.monotonic() - started))
    check_probe(report, storm, probe, None, PROBE_MAX_TARGET_MS)
    if target.server is not None:
        peak = max(target.monitor.peak_kb, target.rss_kb() or 0)
        figures.update(server_rss_storm_peak_mib=mib(peak),
                       server_rss_storm_growth_mib=mib(peak - (rss_before or 0)))
        if figures["server_rss_storm_growth_mib"] > STALLED_GROWTH_TARGET_MIB:
            report.fail("rss_growth_over_target", "server RSS grew %s MiB in the storm, target "
                        "<= %d MiB" % (figures["server_rss_storm_growth_mib"],
                                       STALLED_GROWTH_TARGET_MIB))
    swarm.close_all()
    return figures, ("%d connections from %d addresses, %d memberships: build-up probe p99 %s "
                     "ms (in %s s; CPU: attacker %s s, server %s s); reset: stayers told in %s "
                     "s, probe max %s ms, server RSS +%s MiB"
                     % (figures["connections"], args.addresses, figures["memberships"],
                        figures.get("build_probe_p99_ms"), figures["build_seconds"],
                        figures["build_attacker_cpu_s"], figures["build_server_cpu_s"],
                        figures["storm_seconds"],
                        figures.get("probe_max_ms"), figures.get("server_rss_storm_growth_mib")))


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

RUNNERS = {"stalled": scenario_stalled, "departure": scenario_departure,
           "flood": scenario_flood, "rooms": scenario_rooms,
           "descriptors": scenario_descriptors, "blank": scenario_blank,
           "digits": scenario_digits, "disconnect": scenario_disconnect,
           "names": scenario_names, "idlers": scenario_idlers,
           "departures": scenario_departures}


def sized(args: argparse.Namespace, scenario: str, quick: bool) -> argparse.Namespace:
    """A copy of `args` with every option the command line left unset given the scenario's
    size (its --quick size if `quick`)."""
    chosen = argparse.Namespace(**vars(args))
    chosen.scenario = scenario
    for option, (full, small) in SIZES[scenario].items():
        if getattr(chosen, option) is None:
            value = small if quick else full
            setattr(chosen, option, type(full)(value))
    for option, default in (("members", 0), ("remain", 0), ("count", 0), ("connections", 0),
                            ("rooms", 0), ("nofile", 0), ("extra", 0), ("seconds", 10.0),
                            ("addresses", 1)):
        if getattr(chosen, option) is None:
            setattr(chosen, option, default)
    return chosen


def run_scenario(scenario: str, args: argparse.Namespace, report) -> Dict[str, object]:
    """One scenario against its target (spawned for it, or --host/--port): its figures."""
    log_level = "info" if scenario == "digits" else "warning"
    nofile = args.nofile if scenario in ("descriptors", "idlers") and args.spawn else None
    try:
        target = AttackTarget(args, log_level, nofile)
    except kit.ServerError as exc:
        report.fail("no_server", str(exc))
        return {}
    ends_server = scenario == "departure" and args.then != "none"
    try:
        figures, headline = RUNNERS[scenario](args, target, report)
        if target.server is not None and not target.server.alive() and not ends_server:
            report.fail("server_exited", "status %s; log: %s" % (
                target.server.proc.returncode, target.server.log()[-1000:]))
        if target.server is not None and target.monitor.peak_kb:
            figures.setdefault("server_rss_peak_sampled_mib", mib(target.monitor.peak_kb))
    finally:
        target.stop()
    figures = dict({"scenario": scenario, "host": target.host, "port": target.port,
                    "spawned": target.server is not None,
                    "server_dir": args.server_dir if target.server else None}, **figures)
    figures["headline"] = headline
    return figures


def run(args: argparse.Namespace) -> Dict[str, object]:
    report = kit.Report(TOOL, quiet=args.quiet)
    kit.raise_nofile_limit()
    if args.scenario != "all":
        chosen = sized(args, args.scenario, args.quick)
        figures = run_scenario(args.scenario, chosen, report)
        headline = str(figures.pop("headline", ""))
        return report.summary(dict({"seed": args.seed}, **figures), headline)
    results: Dict[str, object] = {}
    for scenario in SCENARIOS:
        if scenario in ("descriptors", "idlers") and not args.spawn and not args.hold:
            results[scenario] = "left out: with --port it needs --hold"
            continue
        chosen = sized(args, scenario, True)
        chosen.then = "none"
        before = report.failed
        figures = run_scenario(scenario, chosen, Scoped(report, scenario))
        figures["ok"] = report.failed == before
        results[scenario] = figures
        report.note("%s: %s%s" % (scenario, "PASS" if figures["ok"] else "FAIL",
                                   ": " + str(figures.get("headline", ""))))
    ran = [r for r in results.values() if isinstance(r, dict)]
    passed = sum(1 for r in ran if r.get("ok"))
    return report.summary({"seed": args.seed, "scenarios": results},
                          "%d of %d scenarios passed%s" % (
                              passed, len(ran), "" if len(ran) == len(results)
                              else " (%d left out)" % (len(results) - len(ran))))


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    tool = kit.Tool(TOOL, __doc__, None, [], epilog=__doc__.split("\n\n", 2)[2])
    parser = tool.parser()
    parser.add_argument("scenario", choices=SCENARIOS + ("all",), help="what to attack with")
    add = parser.add_argument
    add("--seconds", type=float, default=None,
        help="how long to flood (stalled, flood, blank), or the longest a step may take "
             "(departure, rooms); None: the scenario's size")
    add("--quick", action="store_true", help="the small sizes (as the unit tests use)")
    add("--members", type=int, default=None, help="stalled, departure: members that stall or "
        "reset")
    add("--remain", type=int, default=None, help="departure: members that stay and must hear "
        "every leave")
    add("--then", choices=("none", "kill", "sigterm"), default="none",
        help="departure: as the storm starts, stop the server and time it")
    add("--count", type=int, default=None, help="rooms: JOINs; digits: requests per attacker")
    add("--connections", type=int, default=None, help="rooms, blank: connections; digits: "
        "attacking threads; departures: connections per address (a multiple of %d)" % GROUP)
    add("--rooms", type=int, default=None, help="disconnect: rooms to be in; departures: "
        "rooms each connection joins")
    add("--allow-refusals", action="store_true", help="departures: JOINs refused (past the "
        "server's membership limits) are expected, not a failure")
    add("--addresses", type=int, default=None, help="idlers, departures: source addresses "
        "to attack from (127.0.0.2 onwards)")
    add("--read-rate", type=int, default=1000000, help="flood: bytes/s of the paced reader")
    add("--nofile", type=int, default=None, help="descriptors, idlers with --spawn: the "
        "server's open-file limit")
    add("--extra", type=int, default=None, help="descriptors, idlers with --spawn: idle "
        "connections beyond the server's open-file limit (waiting in its backlog)")
    add("--hold", type=int, default=None, help="descriptors, idlers with --port: idle "
        "connections to open")
    add("--server-dir", default=None, help="with --spawn: the checkout whose Server.py is "
        "started (None: this one)")
    add("--server-log-level", default=None, choices=("debug", "info", "warning", "error"),
        help="with --spawn: the server's --log-level "
        "(None: info for digits, which measures the log, else warning)")
    add("--input-rate", type=int, default=None, help="with --spawn: the server's --input-rate "
        "(None: its default; 0: no limit)")
    add("--request-rate", type=int, default=None, help="with --spawn: the server's "
        "--request-rate (None: its default; 0: no limit)")
    add("--memory-budget", type=int, default=None, help="with --spawn: the server's "
        "--memory-budget in MiB (None: its default)")
    add("--rss-limit-mib", type=int, default=DEFAULT_RSS_LIMIT_MIB,
        help="with --spawn: kill the server past this RSS")
    args = parser.parse_args(argv)
    tool.check_args(parser, args)
    for option in ("members", "count", "connections", "rooms", "nofile", "hold", "read_rate",
                   "addresses"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error("--%s must be at least 1" % option.replace("_", "-"))
    for option in ("remain", "extra"):
        if getattr(args, option) is not None and getattr(args, option) < 0:
            parser.error("--%s must not be negative" % option)
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be more than 0")
    if args.then == "sigterm" and not args.spawn:
        parser.error("--then sigterm needs --spawn (a signal goes only to a server we started)")
    args.server_dir = args.server_dir or kit.REPO_ROOT
    kit.require_server_dir(parser, args.server_dir)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    return kit.emit(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
