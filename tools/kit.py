"""What every live-server tool shares (fuzz, soak, many, loadgen) and the end-to-end tests use.

- ServerProcess: Server.py in a child process on 127.0.0.1 and a port the kernel picks.
- Loop, Conn: nonblocking client connections on one selector, read by ReplyReader.
- Prober, Like: a client whose replies are predicted and checked in order (fuzz, soak, churn).
- Crowd: members that connect and join their rooms, then chat in them (many, loadgen).
- Report: failures by kind with a few examples each, progress lines, and at the end a one-line
  verdict (standard error) and a one-line JSON summary (standard output), in every tool
      {"tool", "ok", "verdict", "elapsed", "failed", "failures": {kind: count},
       "failure_examples": {kind: [text, ...]}, ...the tool's own figures}
  `ok` is true exactly when `failures` is empty; exit status 0 then, 1 otherwise (2: usage).
- Tool, run_tool: the command line (--spawn or --host/--port, --seed, --seconds, --quiet, the
  tool's options from a table); with nothing listening there, one line of failure within
  CONNECT_CHECK_TIMEOUT. raise_nofile_limit, enough_files: how many connections fit.

Run tools from the repository's top folder: `python3 -m tools.NAME --help`.
"""
import argparse
import collections
import contextlib
import errno
import json
import os
import random
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from sansio.replies import (ChatMessage, ErrorReply, HeloReply, JoinedReply, LeftReply, Reply,
                            ReplyReader)
from sansio.wire import (JOINED_TEXT, LEFT_TEXT, ErrorCode, chat_request, disconnect_request,
                         helo_request, join_request, leave_request)

HOST = "127.0.0.1"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_SCRIPT = os.path.join(REPO_ROOT, "Server.py")
# Seconds for a spawned server to print its "listening on" line (interpreter start and imports,
# generous for a loaded machine), and for it to exit after SIGTERM before it gets SIGKILL.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# Seconds a tool given --host/--port waits for a TCP connection before it gives up on the run:
# well inside the promise that a tool with no server to talk to fails within 5 s.
CONNECT_CHECK_TIMEOUT = 3.0
# Bytes asked of one recv() and offered to one send(). Large, so that a busy connection's
# replies arrive hundreds at a time and the tool stays cheaper per message than the server.
RECV_SIZE = 256 * 1024
SEND_SIZE = 256 * 1024
# Nonblocking connects in flight at once: a few hundred keeps the server's accept backlog
# (reactor.py asks for 1024) from overflowing, which would turn connects into 1 s SYN retries.
CONNECT_CONCURRENCY = 256
POLL_WAIT = 0.05                # the longest select() wait of a loop waiting for something
PROGRESS_INTERVAL = 2.0         # seconds between progress lines
MAX_EXAMPLES = 5                # failure examples kept per kind
MAX_EXAMPLE_CHARS = 300         # an example is cut to this: a whole 64 KiB reply helps nobody
# A crowd in which a member was lost after joining cannot see its announcements add up; it
# stops waiting for them after this many quiet seconds instead.
SETTLE = 0.5
JOINED_SUFFIX = JOINED_TEXT % ""    # " has joined this chatroom."
SPARE_FILES = 64                    # descriptors a tool needs beyond one per connection


def replies(reader: ReplyReader) -> Iterator[Reply]:
    """Every whole reply `reader` holds, one at a time (stop early: the rest stay for later)."""
    return iter(reader.maybe_next_reply, None)


# --- Clients whose replies are predicted -----------------------------------------------------

CLOSE = "the server's close"        # owed last, after a DISCONNECT's leave announcements


class Like:
    """A reply of type `kind` with these `fields`, compared with == (either way round); a field
    given as a function is asked at that moment (a room's ref, unknown when the JOIN is sent)."""

    def __init__(self, kind: type, **fields) -> None:
        self.kind, self.fields = kind, fields

    def values(self) -> Dict[str, object]:
        return {key: value() if callable(value) else value for key, value in self.fields.items()}

    def __eq__(self, reply) -> bool:
        return isinstance(reply, self.kind) and all(
            getattr(reply, key) == value for key, value in self.values().items())

    def __repr__(self) -> str:
        return "%s(%s)" % (self.kind.__name__,
                           ", ".join("%s=%r" % item for item in self.values().items()))


class Prober:
    """Client `name`, whose every request's replies are predicted and then checked in order.
    Requests go out through send(bytes); `refs` (room -> ROOM_REF as far as known: its own, or
    shared) addresses rooms; `here` (ip, port), if given, is what a JOINED_CHATROOM must name.
        owed     what the server owes it, in order: Likes, and CLOSE after a DISCONNECT
        member   the rooms the server will have it in once it has handled all sent so far
        rooms    the ROOM_REFs it is in as the replies read go (from its own join announcement
                 to its own leave announcement): only there may another client's chat come
        join_id  the JOIN_ID of its JOINED_CHATROOM replies (None before the first)
        leaves_seen  (ref, name) of every other client's leave announcement it has read
    """

    def __init__(self, name: str, send: Callable[[bytes], None], refs: Dict[str, int],
                 here: Optional[Tuple[str, int]] = None) -> None:
        self.name, self.send, self.refs = name, send, refs
        self.here = {} if here is None else {"server_ip": here[0], "port": here[1]}
        self.owed: Deque[object] = collections.deque()
        self.member: Set[str] = set()
        self.rooms: Set[int] = set()
        self.join_id: Optional[int] = None
        self.leaves_seen: Set[Tuple[int, str]] = set()
        self.checked = 0                    # owed replies that came

    def own(self, room: str, text: str) -> Like:
        """Its own chat or announcement `text` in `room` (whose ref may come later)."""
        return Like(ChatMessage, ref=lambda: self.refs.get(room), client_name=self.name,
                    message=text)

    def helo(self, text: str) -> None:
        self.send(helo_request(text))
        self.owed.append(Like(HeloReply, line="HELO " + text))

    def join(self, room: str) -> None:
        self.send(join_request(room, self.name))
        self.owed.append(Like(JoinedReply, room=room, **self.here))
        if room not in self.member:
            self.member.add(room)
            self.owed.append(self.own(room, JOINED_TEXT % self.name))

    def leave(self, room: str, join_id: Optional[int] = None) -> None:
        """LEAVE_CHATROOM of `room` (its ref known) with `join_id` (None: its own)."""
        ref, join_id = self.refs[room], self.join_id if join_id is None else join_id
        self.send(leave_request(ref, join_id, self.name))
        # the server's JOIN_ID; the request's only if it never joined
        self.owed.append(Like(LeftReply, ref=ref, join_id=lambda: join_id
                              if self.join_id is None else self.join_id))
        if room in self.member:
            self.member.discard(room)
            self.owed.append(self.own(room, LEFT_TEXT % self.name))

    def chat(self, room: str, text: str, join_id: Optional[int] = None,
             name: Optional[str] = None) -> None:
        """CHAT `text` to `room` (its ref known), the request naming `join_id` and `name` (None:
        its own; the server uses neither): echoed if a member, else ERROR_CODE 6."""
        self.send(chat_request(self.refs[room], self.join_id if join_id is None else join_id,
                               name or self.name, text))
        self.owed.append(self.own(room, text) if room in self.member else
                         Like(ErrorReply, code=ErrorCode.NOT_A_MEMBER))

    def disconnect(self) -> bool:
        """DISCONNECT, if the order of its leave announcements can be predicted now (every
        room's ref is known)."""
        if any(room not in self.refs for room in self.member):
            return False
        self.send(disconnect_request(self.name))
        for room in sorted(self.member, key=self.refs.get):
            self.owed.append(self.own(room, LEFT_TEXT % self.name))
        self.member.clear()
        self.owed.append(CLOSE)
        return True

    def take(self, reply: Reply) -> Optional[str]:
        """Check the next reply read: None if it is right, else what is wrong."""
        if isinstance(reply, ChatMessage) and reply.client_name != self.name:
            if reply.ref not in self.rooms:
                return "a chat of room %d, which it is not in: %r" % (reply.ref, reply)
            if reply.message == LEFT_TEXT % reply.client_name:
                self.leaves_seen.add((reply.ref, reply.client_name))
            return None
        if not self.owed:
            return "unexpected %r" % (reply,)
        want = self.owed.popleft()
        if want is CLOSE or reply != want:
            return "expected %r, got %r" % (want, reply)
        self.checked += 1
        if isinstance(reply, JoinedReply):
            self.join_id = reply.join_id
            self.refs.setdefault(reply.room, reply.ref)
        elif isinstance(reply, ChatMessage) and reply.message == JOINED_TEXT % self.name:
            self.rooms.add(reply.ref)
        elif isinstance(reply, ChatMessage) and reply.message == LEFT_TEXT % self.name:
            self.rooms.discard(reply.ref)
        return None

    def closed(self) -> Optional[str]:
        """The server closed the connection: None if that is all it still owed."""
        if list(self.owed) == [CLOSE]:
            self.owed.clear()
            self.checked += 1
            return None
        return ("the server closed the connection with %d replies owed: %r"
                % (len(self.owed), list(self.owed)[:3]))


# --- The server under test -------------------------------------------------------------------

class ServerError(Exception):
    """The server could not be started, or nothing listens at the address given."""


def _proc_fields(path: str, prefix: str) -> Optional[List[str]]:
    """The words of the first line of /proc file `path` that starts with `prefix`, or None."""
    try:
        with open(path) as lines:
            return next((line.split() for line in lines if line.startswith(prefix)), None)
    except OSError:
        return None


def read_line(proc: "subprocess.Popen", timeout: float, limit: int = 500) -> bytes:
    """A child's first line of standard output (with its newline), waited for at most `timeout`
    seconds; what came before the wait ended, EOF or `limit` bytes otherwise. Read a byte at a
    time, so nothing after the line is taken from the pipe (select() still sees the rest)."""
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n") and len(line) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
            break
        byte = os.read(proc.stdout.fileno(), 1)
        if not byte:
            break
        line += byte
    return line


def require_server_dir(parser: argparse.ArgumentParser, server_dir: str) -> None:
    """Refuse --server-dir (a usage error) unless it is a checkout holding a Server.py."""
    if not os.path.isfile(os.path.join(server_dir, "Server.py")):
        parser.error("--server-dir %s holds no Server.py" % server_dir)


class ServerProcess:
    """Server.py in a child process on 127.0.0.1 and a port the kernel picked, logging to a
    temporary file (no chatty log can fill and stall it; log() reads it) unless `stderr`.
    `server_dir`: the Server.py of another checkout (to measure "before"), its tree left as it
    is (no bytecode written); `wrapper`: interpreter arguments before the script (attack.py's
    open-file limit)."""

    def __init__(self, *options: str, student_id: Optional[str] = None,
                 log_level: str = "warning", env: Optional[Dict[str, str]] = None,
                 stderr=None, server_dir: Optional[str] = None,
                 wrapper: Sequence[str] = ()) -> None:
        script = SERVER_SCRIPT
        if server_dir is not None:
            script = os.path.join(server_dir, "Server.py")
            env = dict(os.environ if env is None else env, PYTHONDONTWRITEBYTECODE="1")
        command = [sys.executable, *wrapper, script, HOST, "0", "--log-level", log_level]
        if student_id is not None:
            command += ["--student-id", student_id]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command + list(options), cwd=server_dir or REPO_ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log if stderr is None else stderr, env=env)
        self.pid, self.host = self.proc.pid, HOST
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        """The port of the first line, "listening on 127.0.0.1:PORT"."""
        line = read_line(self.proc, START_TIMEOUT, limit=200)
        if not line.endswith(b"\n"):
            try:
                self.proc.wait(0.1 if self.proc.poll() is None else STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise ServerError("Server.py printed no listening line within %g s (got %r)"
                                  % (START_TIMEOUT, line)) from None
            raise ServerError("Server.py exited (status %s) before listening: %s"
                              % (self.proc.returncode, self.log()[-500:]))
        prefix = b"listening on %s:" % HOST.encode()
        digits = line[len(prefix):].strip()
        if not line.startswith(prefix) or not digits.isdigit():
            raise ServerError("unexpected first line from Server.py: %r" % line)
        return int(digits)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status_kb(self, key: str) -> Optional[int]:
        """A kB figure of /proc/PID/status: VmRSS (memory in use now), VmHWM (the peak)."""
        fields = _proc_fields("/proc/%d/status" % self.pid, key + ":")
        return int(fields[1]) if fields and len(fields) > 1 and fields[1].isdigit() else None

    def rss_kb(self) -> Optional[int]:
        return self.status_kb("VmRSS")

    def open_file_limit(self) -> Optional[str]:
        """The server's own open-file limit from /proc/PID/limits, as "soft hard"."""
        fields = _proc_fields("/proc/%d/limits" % self.pid, "Max open files")
        return " ".join(fields[3:5]) if fields else None

    def log_size(self) -> int:
        self._log.seek(0, os.SEEK_END)
        return self._log.tell()

    def log(self, start: int = 0) -> str:
        """What the server has logged, from byte `start` on."""
        if self._log.closed:
            return ""
        self._log.seek(start)
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL after STOP_TIMEOUT; this child only. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc.stdout.close()
        self._log.close()


def resolve(host: str, port: int) -> Tuple[int, tuple]:
    """(address family, socket address) of host:port: the first that getaddrinfo gives."""
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
        host, port, 0, socket.SOCK_STREAM)[0]
    return family, sockaddr


def check_listening(host: str, port: int) -> None:
    """Raise ServerError unless host:port accepts a connection within CONNECT_CHECK_TIMEOUT."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_CHECK_TIMEOUT).close()
    except (OSError, UnicodeError) as exc:
        raise ServerError("no server at %s:%s: %s" % (host, port, exc)) from None


def first_reply(sock: socket.socket, deadline: float) -> Union[Reply, str]:
    """The first reply a blocking `sock` reads before `deadline` (time.monotonic()), or what
    happened instead: "closed", "no reply within N s", or the error."""
    called = time.monotonic()
    reader = ReplyReader()
    try:
        while True:
            reply = reader.maybe_next_reply()
            if reply is not None:
                return reply
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(RECV_SIZE)
            if not data:
                return "closed"
            reader.receive_data(data)
    except socket.timeout:
        return "no reply within %.3g s" % (time.monotonic() - called)
    except OSError as exc:
        return "%s: %s" % (type(exc).__name__, exc)


def helo_check(host: str, port: int, timeout: float,
               text: str = "health") -> Tuple[bool, float, str]:
    """One HELO on a new connection: (the right reply came in time, seconds, what went wrong)."""
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(helo_request(text))
            reply = first_reply(sock, started + timeout)
    except OSError as exc:
        reply = "%s: %s" % (type(exc).__name__, exc)
    ok = isinstance(reply, HeloReply) and reply.line == "HELO " + text and reply.port == port
    problem = "" if ok else reply if isinstance(reply, str) else "bad reply %r" % (reply,)
    return ok, time.monotonic() - started, problem


# --- Client connections on one selector ------------------------------------------------------

QUEUED, CONNECTING, OPEN, CLOSED = "queued", "connecting", "open", "closed"


class Conn:
    """One client connection: a nonblocking socket, its unsent output, a ReplyReader."""

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self.state = QUEUED
        self.out = bytearray()
        self.events = 0
        self.reader = ReplyReader()
        self.reading = True                 # False: a client that never reads
        self.close_when_sent: Optional[str] = None   # "close" or "reset" once `out` is sent


class Member(Conn):
    """A client connection that joins `room` as `name`; `ref` and `join_id` once JOINED."""

    def __init__(self, room: str, name: str) -> None:
        super().__init__()
        self.room, self.name = room, name
        self.ref: Optional[int] = None
        self.join_id: Optional[int] = None
        self.announced = False          # its own join announcement has arrived
        self.failed = False             # it will never be a member: do not wait for it
        self.got = 0                    # chats counted in the chat phase


class Handler:
    """What a Loop tells its handler; a handler overrides what it cares about."""

    def connected(self, conn: Conn) -> None:
        """The connection is up."""

    def connect_failed(self, conn: Conn, exc: OSError) -> None:
        """It could not be made (it is closed)."""

    def received(self, conn: Conn) -> None:
        """Bytes arrived: conn.reader has them."""

    def closed(self, conn: Conn, exc: Optional[OSError]) -> None:
        """The server closed it (exc None) or it broke; it is closed."""


class Loop:
    """Every client connection of a run, on one selector, connected without blocking (at most
    `concurrency` at a time); the `handler` is told what happens (see Handler). send() sends at
    once what the kernel takes (at most send_limit() bytes per send() when set) and queues the
    rest. last_activity: the last connect made or bytes received; last_sent: the last sent."""

    def __init__(self, address: Tuple[int, tuple], handler=None,
                 send_limit: Optional[Callable[[], int]] = None,
                 concurrency: int = CONNECT_CONCURRENCY) -> None:
        self.family, self.sockaddr = address
        self.handler, self.send_limit, self.concurrency = handler, send_limit, concurrency
        self.selector = selectors.DefaultSelector()
        self.queued: collections.deque = collections.deque()
        self.connecting = 0
        self.conns: set = set()             # every connection not yet closed
        self.last_activity = self.last_sent = time.monotonic()

    def connect(self, conn: Conn) -> None:
        """Make `conn` connect at the next poll() at which fewer than `concurrency` are
        connecting."""
        conn.state = QUEUED
        self.conns.add(conn)
        self.queued.append(conn)

    def _start_queued_connects(self) -> None:
        while self.queued and self.connecting < self.concurrency:
            conn = self.queued.popleft()
            if conn.state != QUEUED:
                continue                    # closed while it waited
            try:
                conn.sock = socket.socket(self.family, socket.SOCK_STREAM)
                conn.sock.setblocking(False)
                err = conn.sock.connect_ex(self.sockaddr)
            except OSError as exc:          # EMFILE and friends
                self._connect_failed(conn, exc)
                continue
            if err == 0:
                self._connected(conn)
            elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                conn.state = CONNECTING
                self.connecting += 1
                conn.events = selectors.EVENT_WRITE
                self.selector.register(conn.sock, conn.events, conn)
            else:
                self._connect_failed(conn, OSError(err, os.strerror(err)))

    def _connected(self, conn: Conn) -> None:
        if conn.state == CONNECTING:
            self.connecting -= 1
        conn.state = OPEN
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_activity = time.monotonic()
        self._update_interest(conn)
        self.handler.connected(conn)
        if conn.state == OPEN and (conn.out or conn.close_when_sent):
            self._flush(conn)

    def _connect_failed(self, conn: Conn, exc: OSError) -> None:
        self._forget(conn)
        self.handler.connect_failed(conn, exc)

    def send(self, conn: Conn, data: bytes) -> None:
        """Send `data` on `conn` now as far as the kernel takes it; queue the rest."""
        conn.out += data
        if conn.state == OPEN:
            self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        limit = self.send_limit() if self.send_limit else SEND_SIZE
        try:
            sent = conn.sock.send(conn.out[:limit])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:              # EPIPE, ECONNRESET: the server has gone
            self._lost(conn, exc)
            return
        if sent:
            self.last_sent = time.monotonic()
            del conn.out[:sent]
        if not conn.out and conn.close_when_sent:
            self.close(conn, reset=conn.close_when_sent == "reset")
        else:
            self._update_interest(conn)

    def _update_interest(self, conn: Conn) -> None:
        events = ((selectors.EVENT_READ if conn.reading else 0)
                  | (selectors.EVENT_WRITE if conn.out else 0))
        if events != conn.events:
            if not events:
                self.selector.unregister(conn.sock)
            elif conn.events:
                self.selector.modify(conn.sock, events, conn)
            else:
                self.selector.register(conn.sock, events, conn)
            conn.events = events

    def read(self, conn: Conn) -> None:
        """recv() once from `conn` into its reader, and tell the handler."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(conn, exc)
            return
        if not data:
            self._lost(conn, None)
            return
        self.last_activity = time.monotonic()
        conn.reader.receive_data(data)
        self.handler.received(conn)

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for events, and handle every one that is ready."""
        self._start_queued_connects()
        if not self.selector.get_map():
            time.sleep(timeout)             # select() with nothing registered fails on some OSes
            return
        for key, mask in self.selector.select(timeout):
            conn = key.data
            if conn.state == CONNECTING:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._connect_failed(conn, OSError(err, os.strerror(err)))
                else:
                    self._connected(conn)
                continue
            if conn.state == OPEN and mask & selectors.EVENT_READ:
                self.read(conn)
            if conn.state == OPEN and mask & selectors.EVENT_WRITE and conn.out:
                self._flush(conn)

    def close(self, conn: Conn, reset: bool = False) -> None:
        """Close `conn` (idempotent). With reset, the kernel sends RST instead of FIN: the
        client vanishes without a goodbye."""
        if reset and conn.sock is not None and conn.state in (CONNECTING, OPEN):
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._forget(conn)

    def _lost(self, conn: Conn, exc: Optional[OSError]) -> None:
        self._forget(conn)
        self.handler.closed(conn, exc)

    def _forget(self, conn: Conn) -> None:
        if conn.state == CLOSED:
            return
        if conn.state == CONNECTING:
            self.connecting -= 1
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        if conn.sock is not None:
            conn.sock.close()
        conn.state = CLOSED
        self.conns.discard(conn)

    def close_all(self) -> None:
        for conn in list(self.conns):
            self._forget(conn)
        self.selector.close()

    def run_until(self, is_done: Callable[[], bool], seconds: float,
                  tick: Optional[Callable[[], None]] = None, wait: float = POLL_WAIT) -> bool:
        """Poll until is_done() (True) or `seconds` pass (False); tick() after every poll."""
        return self.wait_for(is_done, time.monotonic() + seconds, tick=tick, wait=wait) == "done"

    def wait_for(self, is_done: Callable[[], bool], deadline: float,
                 stall: Optional[float] = None, nap: float = 0.0,
                 tick: Optional[Callable[[], None]] = None, wait: float = POLL_WAIT) -> str:
        """Poll until is_done() ("done"), `deadline` (time.monotonic(): "timed out") or `stall`
        seconds without progress ("stalled"). A `nap` before each poll lets replies pile up,
        for fewer and larger reads; tick() after it."""
        while not is_done():
            now = time.monotonic()
            if now >= deadline:
                return "timed out"
            if stall is not None and now - self.last_activity > stall:
                return "stalled"
            if nap:
                time.sleep(nap)
            self.poll(max(0.0, min(wait, deadline - now)))
            if tick is not None:
                tick()
        return "done"


class RefBook:
    """What JOINED_CHATROOM replies said, checked as they come: a room keeps one ROOM_REF, no
    two share one ("rooms"); a connection keeps one JOIN_ID, no two share one ("join_ids")."""

    def __init__(self, report: "Report") -> None:
        self.report = report
        self.refs: Dict[str, int] = {}              # room -> ROOM_REF
        self.rooms_by_ref: Dict[int, str] = {}
        self.join_ids: Dict[str, int] = {}          # connection's name -> JOIN_ID
        self.owners: Dict[int, str] = {}            # JOIN_ID -> connection's name

    def learn(self, reply: JoinedReply, who: str) -> None:
        """Check `reply`, read by the connection named `who`, and learn from it."""
        room, ref, join_id = reply.room, reply.ref, reply.join_id
        if self.refs.setdefault(room, ref) != ref:
            self.report.fail("rooms", "room %r has ROOM_REFs %d and %d"
                             % (room[:60], self.refs[room], ref))
        if self.rooms_by_ref.setdefault(ref, room) != room:
            self.report.fail("rooms", "rooms %r and %r share ROOM_REF %d"
                             % (self.rooms_by_ref[ref][:60], room[:60], ref))
        if self.join_ids.setdefault(who, join_id) != join_id:
            self.report.fail("join_ids", "%s: JOIN_ID changed from %d to %d"
                             % (who, self.join_ids[who], join_id))
        if self.owners.setdefault(join_id, who) != who:
            self.report.fail("join_ids", "JOIN_ID %d given to two connections" % join_id)


# --- A crowd of members: connect, join, chat -------------------------------------------------

class Waiter:
    """How a tool runs `loop` for a step: wait(step, is_done) polls as Loop.wait_for (or until(
    is_done, deadline)) does, for at most `seconds` (or the call's), never past `deadline`: True
    if the step finished, else a failure of the kind of its `outcome` ("timed_out"...)."""

    def __init__(self, loop: Loop, report: "Report", tick: Optional[Callable[[], None]] = None,
                 seconds: float = float("inf"), deadline: float = float("inf"),
                 stall: Optional[float] = None, nap: float = 0.0, wait: float = POLL_WAIT,
                 until: Optional[Callable[[Callable[[], bool], float], str]] = None) -> None:
        self.report, self.seconds, self.deadline = report, seconds, deadline
        self.until = until or (lambda is_done, end: loop.wait_for(is_done, end, stall, nap,
                                                                  tick, wait))
        self.outcome = "done"

    def __call__(self, step: str, is_done: Callable[[], bool],
                 seconds: Optional[float] = None) -> bool:
        seconds = self.seconds if seconds is None else seconds
        self.outcome = self.until(is_done, min(self.deadline, time.monotonic() + seconds))
        if self.outcome != "done":
            self.report.fail(self.outcome.replace(" ", "_"), "%s: %s" % (step, self.outcome))
        return self.outcome == "done"


class Crowd(Handler):
    """Members that connect and JOIN their rooms (join()), then perhaps chat (chat()). A room
    of n owes n(n+1)/2 join announcements (the k-th joiner's goes to k members), whatever the
    order of JOINs; their replies are checked by a RefBook."""

    def __init__(self, loop: Loop, members: List[Member], report: "Report") -> None:
        self.loop, self.members, self.report = loop, members, report
        self.step = "the joins"
        self.started = time.monotonic()
        self.connected_count = self.joined = 0
        self.unjoined_failed = 0            # members that failed before their JOINED came
        self.unresolved = len(members)      # neither joined-and-announced nor failed
        self.room_sizes: Dict[str, int] = collections.Counter()
        self.announcements_owed = self.announcements = 0
        self.lost_after_join = False
        self.connects_done_at: Optional[float] = None
        self.last_joined_at: Optional[float] = None
        self.announced_at: Optional[float] = None
        self.book = RefBook(report)
        self.quota: Optional[int] = None    # chats each owed member must get (see chat())
        self.expected: Dict[str, ChatMessage] = {}
        self.owed: Set[Member] = set()
        self.waiting = 0                    # owed members still short of the quota
        self.delivered = 0
        self.chat_started: Optional[float] = None
        self.last_delivery_at: Optional[float] = None
        self.finished_at: Optional[float] = None    # when the last owed member had its quota

    def _wait(self, wait: Waiter, step: str, is_done: Callable[[], bool]) -> bool:
        self.step = step
        return wait(step, is_done)

    def join(self, wait: Waiter) -> bool:
        """Connect and JOIN every member; wait for the connects, the JOINED_CHATROOMs and the
        announcements, a step each; True if all three finished."""
        self.loop.handler = self
        self.started = time.monotonic()
        for member in self.members:
            self.loop.connect(member)
        done = (self._wait(wait, "connections", lambda: self.connects_done_at is not None)
                and self._wait(wait, "JOINED_CHATROOM replies",
                               lambda: self.joined + self.unjoined_failed >= len(self.members))
                and self._wait(wait, "join announcements", self.all_announced))
        self.announced_at = time.monotonic()
        if self.announcements != self.announcements_owed:
            self.report.fail("announcements", "%d join announcements delivered, %d owed"
                             % (self.announcements, self.announcements_owed))
        return done

    def all_announced(self) -> bool:
        """Every member has its own announcement or failed, and all that are owed have come
        (or, with a member lost, the announcements have been quiet for SETTLE seconds)."""
        return not self.unresolved and (self.announcements >= self.announcements_owed or (
            self.lost_after_join and time.monotonic() - self.loop.last_activity > SETTLE))

    def join_figures(self) -> Dict[str, object]:
        """How many connected and joined, and the seconds each of join()'s steps took."""
        end = self.announced_at or time.monotonic()
        return {"connected": self.connected_count, "joined": self.joined,
                "connect_seconds": round((self.connects_done_at or end) - self.started, 3),
                "join_seconds": round((self.last_joined_at or end) - self.started, 3),
                "announce_seconds": round(end - self.started, 3)}

    def chat(self, wait: Waiter, quota: int, sends: Dict[Member, bytes],
             expected: Optional[Dict[str, ChatMessage]] = None) -> bool:
        """Send each member in `sends` its chats; wait until every member of those rooms has
        `quota` chats of its room (True) or the wait gives up (False). With `expected` (room ->
        chat), each must be that chat; without, any chat of the room counts (count_chats())."""
        rooms = {member.room for member in sends}
        self.owed = {m for m in self.members if m.ref is not None and not m.failed
                     and m.room in rooms}
        self.quota, self.expected, self.waiting = quota, expected or {}, len(self.owed)
        for member in self.members:
            member.got = 0
        self.chat_started = self.last_delivery_at = self.loop.last_activity = time.monotonic()
        for member, data in sends.items():
            self.loop.send(member, data)
        return self._wait(wait, "the chats", lambda: self.waiting <= 0)

    def tally(self, members: List[Member]) -> Dict[str, int]:
        """Chats delivered, missing and extra (short of or beyond each member's quota; each a
        failure, as is anything left unread)."""
        missing = sum(max(0, self.quota - member.got) for member in members)
        extra = sum(max(0, member.got - self.quota) for member in members)
        for member in members:
            if member.reader.pending().strip(b"\n"):
                self.report.fail("unexpected_message", "%s: unfinished at the end: %r"
                                 % (member.name, member.reader.pending()[:120]))
        if missing or extra:
            self.report.fail("missing" if missing else "extra", "%d deliveries missing, %d extra,"
                             " of %d" % (missing, extra, self.quota * len(members)))
        return {"delivered": self.delivered, "missing": missing, "extra": extra}

    def progress_line(self) -> str:
        return ("%s: %d/%d connected, %d joined, %d announcements, %d chats delivered"
                % (self.step, self.connected_count, len(self.members), self.joined,
                   self.announcements, self.delivered))

    # -- the loop's handler --------------------------------------------------------------------

    def connected(self, member: Member) -> None:
        self.connected_count += 1
        self._maybe_all_connected()
        self.loop.send(member, join_request(member.room, member.name))

    def connect_failed(self, member: Member, exc: OSError) -> None:
        self.report.fail("connect_failed", "%s: %s" % (member.name, exc))
        self._fail(member)
        self._maybe_all_connected()

    def _maybe_all_connected(self) -> None:
        if self.connects_done_at is None and not self.loop.queued and not self.loop.connecting:
            self.connects_done_at = time.monotonic()

    def closed(self, member: Member, exc: Optional[OSError]) -> None:
        self.report.fail("closed_by_server", "%s during %s (%s)"
                         % (member.name, self.step, exc or "closed"))
        if member in self.owed and member.got < self.quota and not member.failed:
            self.waiting -= 1               # it never will: do not wait for it
        self._fail(member)

    def _fail(self, member: Member) -> None:
        if member.ref is not None:
            self.lost_after_join = True
        elif not member.failed:
            self.unjoined_failed += 1
        if not member.failed and not (member.ref is not None and member.announced):
            self.unresolved -= 1
        member.failed = True

    def received(self, member: Member) -> None:
        """Joining (no quota yet): replies to the JOIN and announcements; then chats."""
        reader = member.reader
        while True:
            if self.quota is None and member.announced and not member.failed:
                # in a room of n, up to n more announcements follow: counted at C speed
                self.announcements += reader.count_chats(member.ref, JOINED_SUFFIX)
            elif self.quota is not None and not self.expected:
                self._count(member, reader.count_chats(member.ref))
            reply = reader.maybe_next_reply()
            if reply is None:
                return
            if self.quota is None:
                self._join_reply(member, reply)
            elif reply == self.expected.get(member.room):
                self._count(member, 1)
            else:
                self.report.fail("unexpected_message", "%s got %r" % (member.name, reply))

    def _join_reply(self, member: Member, reply: Reply) -> None:
        if member.ref is None:
            if isinstance(reply, JoinedReply) and reply.room == member.room:
                member.ref, member.join_id = reply.ref, reply.join_id
                self.joined += 1
                self.last_joined_at = time.monotonic()
                self.room_sizes[member.room] += 1
                self.announcements_owed += self.room_sizes[member.room]
                self.book.learn(reply, member.name)
                return
            kind = ("error_reply" if isinstance(reply, ErrorReply)
                    else "unexpected_message")
            self.report.fail(kind, "%s got %r instead of JOINED_CHATROOM" % (member.name, reply))
            self._fail(member)
        elif (isinstance(reply, ChatMessage) and reply.ref == member.ref
              and reply.message.endswith(JOINED_SUFFIX)):
            self.announcements += 1
            if not member.announced and reply == ChatMessage(member.ref, member.name,
                                                             JOINED_TEXT % member.name):
                member.announced = True
                if not member.failed:
                    self.unresolved -= 1
        else:
            self.report.fail("unexpected_message", "%s got %r while joining"
                             % (member.name, reply))

    def _count(self, member: Member, chats: int) -> None:
        if chats:
            self.delivered += chats
            self.last_delivery_at = time.monotonic()
            member.got += chats
            if member in self.owed and member.got - chats < self.quota <= member.got:
                self.waiting -= 1
                if not self.waiting:
                    self.finished_at = self.last_delivery_at


# --- The report: failures, progress, verdict, summary ----------------------------------------

class Report:
    """Failures by kind (a few examples each), progress lines, and the summary a tool ends with."""

    def __init__(self, tool: str, quiet: bool = False, stream=None) -> None:
        self.tool, self.quiet = tool, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.next_progress = self.started + PROGRESS_INTERVAL
        self.counts: Dict[str, int] = collections.Counter()
        self.examples: Dict[str, List[str]] = {}

    def fail(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(detail if len(detail) <= MAX_EXAMPLE_CHARS
                            else detail[:MAX_EXAMPLE_CHARS] + "...")

    @property
    def failed(self) -> int:
        return sum(self.counts.values())

    def progress(self, describe: Callable[[], str]) -> None:
        """A progress line, if one is due (describe() is only called then)."""
        now = time.monotonic()
        if now >= self.next_progress:
            self.next_progress = now + PROGRESS_INTERVAL
            if not self.quiet:
                self.note("%6.1fs %s" % (now - self.started, describe()))

    def note(self, line: str) -> None:
        self.stream.write("%s: %s\n" % (self.tool, line))
        self.stream.flush()

    def summary(self, figures: Dict[str, object], headline: str) -> Dict[str, object]:
        """The JSON summary: the common keys first, then the tool's figures."""
        ok = not self.counts
        if ok:
            verdict = "PASS: " + headline
        else:
            kind, examples = next(iter(self.examples.items()))
            if self.failed == 1:
                verdict = "FAIL: %s: %s" % (kind, examples[0])
            else:
                kinds = ", ".join("%s %d" % item for item in sorted(self.counts.items()))
                verdict = "FAIL: %d failures (%s), e.g. %s: %s" % (self.failed, kinds, kind,
                                                                   examples[0])
            if headline:
                verdict += "; " + headline
        return dict({
            "tool": self.tool, "ok": ok, "verdict": verdict.replace("\n", " "),
            "elapsed": round(time.monotonic() - self.started, 3), "failed": self.failed,
            "failures": dict(sorted(self.counts.items())),
            "failure_examples": {kind: self.examples[kind] for kind in sorted(self.examples)}},
            **figures)


def emit(summary: Dict[str, object]) -> int:
    """Print the verdict (standard error) and the summary (one JSON line); the exit status."""
    print("%s: %s" % (summary["tool"], summary["verdict"]), file=sys.stderr, flush=True)
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0 if summary["ok"] else 1


# --- The command line ------------------------------------------------------------------------

class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written, and every option's default after its help."""


# An option: (flag, type, default, help, least, most); least and most may be None. A type of
# bool makes an on/off switch.
Option = Tuple[str, Callable, object, str, Optional[float], Optional[float]]
# The options of every tool; Tool puts --seconds after --seed, for a tool that has it.
COMMON: List[Option] = [
    ("--spawn", bool, False, "start Server.py on %s and a free port for this run, and stop it "
     "after (instead of --port)" % HOST, None, None),
    ("--host", str, HOST, "the server's address", None, None),
    ("--port", int, None, "the port of a server already running (instead of --spawn)", 1, 65535),
    ("--seed", int, None, "random seed (None: a fresh one, reported in the summary)", None, None),
    ("--quiet", bool, False, "no progress lines", None, None)]


class Tool:
    """`python3 -m tools.NAME`: run(args, target, report) (see run_tool) with the common
    arguments (--spawn | --host/--port, --seed, --quiet, and --seconds when `seconds` gives its
    default and help) and its `options` (each checked against its bounds); check(parser, args)
    may refuse more. With `scenarios` ({name: (run, a line of help, its own options)}), the
    first word names one: its options follow it (a default of None makes one required), the
    common ones go either side of it, and its run is the tool's."""

    def __init__(self, name: str, doc: str, run: Optional[Callable], options: List[Option],
                 seconds: Optional[Tuple[float, str]] = None,
                 check: Callable[[argparse.ArgumentParser, argparse.Namespace], None]
                 = lambda parser, args: None,
                 scenarios: Optional[Dict[str, Tuple[Callable, str, List[Option]]]] = None,
                 epilog: str = "") -> None:
        self.name, self.doc, self.run, self.options = name, doc, run, options
        self.seconds, self.check = seconds, check
        self.scenarios, self.epilog = scenarios or {}, epilog

    def parser(self) -> argparse.ArgumentParser:
        """The parser: the docstring's first paragraph, then the examples (the second), then
        each option and its default, and each scenario's options."""
        first, examples = self.doc.split("\n\n")[:2]
        parser = argparse.ArgumentParser(prog="python3 -m tools." + self.name,
                                         formatter_class=HelpFormatter,
                                         description=first + "\n\nexamples:\n" + examples)
        self.add_common(parser)
        lines = []                          # the epilog's help of each scenario's options
        if self.scenarios:
            subparsers = parser.add_subparsers(dest="scenario", metavar="SCENARIO")
            subparsers.required = True
            lines.append("scenario options (after the scenario's name):")
        for name, (_run, summary, options) in self.scenarios.items():
            sub = subparsers.add_parser(name, help=summary, formatter_class=HelpFormatter)
            self.add_common(sub, suppress=True)
            lines.append("  %s: %s" % (name, summary))
            for flag, kind, default, text, _least, _most in options:
                sub.add_argument(flag, type=kind, default=default, required=default is None,
                                 help=text)
                lines.append("    %-18s %s (%s)" % (flag, text, "required" if default is None
                                                   else "default: %s" % default))
        parser.epilog = "\n".join(lines + [self.epilog]) or None
        return parser

    def common(self) -> List[Option]:
        """COMMON (with --seconds, if the tool has it) and the tool's own options."""
        seconds = [("--seconds", float) + self.seconds + (0, None)] if self.seconds else []
        return COMMON[:4] + seconds + COMMON[4:] + self.options

    def add_common(self, parser: argparse.ArgumentParser, suppress: bool = False) -> None:
        """The common() options. With `suppress`, they get no defaults here: a subcommand's
        copy then never overrides a value given before its name."""
        for flag, kind, value, text, _least, _most in self.common():
            default = argparse.SUPPRESS if suppress else value
            if kind is bool:
                parser.add_argument(flag, action="store_true", default=default, help=text)
            else:
                parser.add_argument(flag, type=kind, default=default, help=text)

    def check_args(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        """A usage error unless exactly one of --spawn and --port is given, and every option lies
        within its least and most; then what check() refuses. A fresh seed unless given one."""
        if args.spawn == (args.port is not None):
            parser.error("give exactly one of --spawn and --port")
        if args.seed is None:
            args.seed = random.SystemRandom().randrange(1 << 31)
        scenario = self.scenarios[args.scenario][2] if self.scenarios else []
        for flag, _kind, _default, _text, least, most in self.common() + scenario:
            value = getattr(args, flag[2:].replace("-", "_"))
            if value is not None and ((least is not None and value < least)
                                      or (most is not None and value > most)):
                parser.error("%s must be %s" % (flag, " and ".join(
                    text % bound for text, bound in (("at least %s", least), ("at most %s", most))
                    if bound is not None)))
        self.check(parser, args)

    def parse_args(self, argv: Optional[List[str]] = None) -> argparse.Namespace:
        parser = self.parser()
        args = parser.parse_args(argv)
        self.check_args(parser, args)
        return args

    def main(self, argv: Optional[List[str]] = None) -> int:
        """Parse, run, print the verdict and the summary; the exit status."""
        args = self.parse_args(argv)
        run = self.scenarios[args.scenario][0] if self.scenarios else self.run
        return emit(run_tool(self.name, run, args))


class Target:
    """The server a run talks to: spawned for it (--spawn), or at --host/--port (which must
    accept a connection within CONNECT_CHECK_TIMEOUT)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.server: Optional[ServerProcess] = None
        if args.spawn:
            self.server = ServerProcess()
            self.host, self.port = self.server.host, self.server.port
        else:
            self.host, self.port = args.host, args.port
            check_listening(self.host, self.port)
        try:
            self.address = resolve(self.host, self.port)
        except (OSError, UnicodeError) as exc:
            self.stop()
            raise ServerError("cannot resolve %s: %s" % (self.host, exc)) from None

    def rss_kb(self) -> Optional[int]:
        """The spawned server's memory in use now (None if it was not spawned, or has gone)."""
        return self.server.rss_kb() if self.server is not None else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def run_tool(tool: str, run: Callable, args: argparse.Namespace) -> Dict[str, object]:
    """The summary of run(args, target, report) -> (figures, headline) against the arguments'
    target; a spawned server dead by the end is a failure ("server_exited", with its log)."""
    report = Report(tool, quiet=getattr(args, "quiet", False))
    try:
        target = Target(args)
    except ServerError as exc:
        report.fail("no_server", str(exc))
        return report.summary({"seed": getattr(args, "seed", None)}, "")
    try:
        figures, headline = run(args, target, report)
        if target.server is not None and not target.server.alive():
            report.fail("server_exited", "status %s; log: %s"
                        % (target.server.proc.returncode, target.server.log()[-1000:]))
    finally:
        target.stop()
    figures = dict({"seed": args.seed, "host": target.host, "port": target.port,
                    "spawned": target.server is not None}, **figures)
    return report.summary(figures, headline)


# --- Limits of the machine, and figures ------------------------------------------------------

def raise_nofile_limit() -> Tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit if it can; (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # RLIM_INFINITY (macOS): the kernel caps it lower; ask for plenty
    target = max(soft, 1 << 20) if hard == resource.RLIM_INFINITY else hard
    for attempt in (target, 1 << 16, 10240):
        if attempt <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (attempt, hard))
            return soft, attempt
        except (ValueError, OSError):
            continue
    return soft, soft


# What else decides how many connections this machine lets one process make at once.
PROC_LIMITS = {"somaxconn": "/proc/sys/net/core/somaxconn",
               "tcp_max_syn_backlog": "/proc/sys/net/ipv4/tcp_max_syn_backlog",
               "ip_local_port_range": "/proc/sys/net/ipv4/ip_local_port_range",
               "file_max": "/proc/sys/fs/file-max"}


def enough_files(report: Report, connections: int) -> Dict[str, object]:
    """The open-file limits ("nofile_soft", "nofile_hard") and PROC_LIMITS (as "32768 60999"),
    then raise_nofile_limit() ("nofile_soft_raised_to"); an "fd_limit" failure unless
    `connections` and SPARE_FILES more descriptors fit under the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits: Dict[str, object] = {"nofile_soft": soft, "nofile_hard": hard}
    for key, path in PROC_LIMITS.items():
        limits[key] = " ".join(_proc_fields(path, "") or ()) or None
    limits["nofile_soft_raised_to"] = soft = raise_nofile_limit()[1]
    if soft < connections + SPARE_FILES:
        report.fail("fd_limit", "%d connections need %d open files, and the limit is %d (hard "
                    "%s): raise it (ulimit -n) or ask for fewer"
                    % (connections, connections + SPARE_FILES, soft, hard))
    return limits


def latency_summary(prefix: str, latencies: List[float]) -> Dict[str, Optional[float]]:
    """PREFIX_p50_ms, PREFIX_p99_ms and PREFIX_max_ms of a list of seconds: the value below
    which that fraction of them lie (nearest rank), None if there are none."""
    values = sorted(latencies)
    summary: Dict[str, Optional[float]] = {}
    for name, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        rank = min(len(values) - 1, int(len(values) * fraction))
        summary["%s_%s_ms" % (prefix, name)] = round(values[rank] * 1000, 2) if values else None
    return summary
