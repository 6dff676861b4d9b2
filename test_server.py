"""End to end: the real server (Server.py) in a subprocess on an ephemeral port, talked to over
127.0.0.1 as clients would.

The layers below it are tested on their own in tests/:
tests/test_wire.py (Framer, parse_request), tests/test_rooms.py (the room table),
tests/test_protocol.py (requests in, actions out) and tests/test_hub.py (real sockets, a fake
app, ticked by hand).

Run the whole suite from the repository's top folder with `python3 -m unittest -v`. Every wait
has a timeout; no result depends on a sleep.
"""
import collections
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest
from typing import Tuple

from policy.watermarks import OUTPUT_CAP
from sansio.replies import (ChatMessage, ErrorReply, HeloReply, JoinedReply, LeftReply,
                            ReplyReader, Unparsed)
from sansio.wire import MAX_REQUEST_BYTES, ErrorCode
from tools.kit import ServerProcess

# ---------------------------------------------------------------------------------------------
# 5. End to end: the real server (Server.py) as a subprocess, spoken to over TCP
# ---------------------------------------------------------------------------------------------
# These tests start `Server.py 127.0.0.1 0` and talk to it as a client would, checking the wire
# format of docs/PROTOCOL.md (Parts 2 and 3) byte for byte. They complement the in-memory protocol,
# rooms and reactor tests: what they add is the whole process (argument parsing, the listening
# line on stdout, signals, exit status) and real sockets (segmentation, resets, backpressure).
#
# Rules these tests keep:
# - Every wait has a bounded timeout and fails with what was expected and what arrived.
# - Nothing relies on a sleep for correctness. "Nothing else arrived" is checked after a
#   synchronisation point: the client sends a HELO and the very next message must be its reply
#   (the server handles a connection's requests in order and queues its output in order, so
#   anything owed to that connection before the HELO was handled would come first). In a few
#   places a short `expect_silence` follows such a point as well.
# - One server per test class where tests do not interfere (each test uses its own room names);
#   a fresh server for tests that end it or need a different configuration.
# - Only 127.0.0.1.

REPO = os.path.dirname(os.path.abspath(__file__))
HOST = "127.0.0.1"
STUDENT_ID = "12345678"
STARTUP_TIMEOUT = 10.0      # Server.py --help: interpreter start + imports, generous when loaded
TIMEOUT = 3.0               # the default bound on any one wait for a message
SILENCE = 0.2               # how long expect_silence listens (only after a sync point)
EXIT_TIMEOUT = 2.0          # KILL_SERVICE / SIGTERM must end the process within this
FLOOD_TIMEOUT = 10.0        # the slow-reader test's whole flood must be delivered within this
SENDER_LEAD = 400           # its sender's chats (1 KB each) at most ahead of what the reader took


# ---------------------------------------------------------------------------------------------
# What clients send and what the server answers, as bytes
# ---------------------------------------------------------------------------------------------

def _b(text) -> bytes:
    return text if isinstance(text, bytes) else str(text).encode("utf-8")


def join_request(room, name) -> bytes:
    return b"JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n" % (_b(room), _b(name))


def chat_request(ref, join_id, name, text) -> bytes:
    return b"CHAT: %s\nJOIN_ID: %s\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (
        _b(ref), _b(join_id), _b(name), _b(text))


def leave_request(ref, join_id, name) -> bytes:
    return b"LEAVE_CHATROOM: %s\nJOIN_ID: %s\nCLIENT_NAME: %s\n" % (_b(ref), _b(join_id), _b(name))


def disconnect_request(name) -> bytes:
    return b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: %s\n" % _b(name)


def helo_reply(text, port, student_id=STUDENT_ID) -> bytes:
    return b"HELO %s\nIP:%s\nPort:%d\nStudentID:%s\n" % (_b(text), _b(HOST), port, _b(student_id))


def joined_reply(room, port, ref, join_id) -> bytes:
    return b"JOINED_CHATROOM: %s\nSERVER_IP: %s\nPORT: %d\nROOM_REF: %d\nJOIN_ID: %d\n" % (
        _b(room), _b(HOST), port, ref, join_id)


def left_reply(ref, join_id) -> bytes:
    return b"LEFT_CHATROOM: %d\nJOIN_ID: %d\n" % (ref, join_id)


def wire_chat(ref, name, text) -> bytes:
    return b"CHAT: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (ref, _b(name), _b(text))


def joined_announcement(ref, name) -> bytes:
    return wire_chat(ref, name, "%s has joined this chatroom." % name)


def left_announcement(ref, name) -> bytes:
    return wire_chat(ref, name, "%s has left this chatroom." % name)


# ---------------------------------------------------------------------------------------------
# Reading the server's output: protocol's ReplyReader cuts it, each reply kept with its bytes
# ---------------------------------------------------------------------------------------------
# The reader is the protocol's own (by way of tools/kit.py, which carries a fix for it); the
# expected bytes above are not, so assertions compare the raw bytes of each reply with them and
# a wrong builder or reader cannot vouch for itself.

_KINDS = {HeloReply: "HELO", JoinedReply: "JOINED_CHATROOM",
          LeftReply: "LEFT_CHATROOM", ErrorReply: "ERROR_CODE",
          ChatMessage: "CHAT"}


class Message:
    """One message from the server: `kind` (its first line's keyword), `raw` (its bytes as
    received) and `reply` (what ReplyReader made of them)."""
    __slots__ = ("kind", "raw", "reply")

    def __init__(self, reply, raw: bytes) -> None:
        self.kind = _KINDS[type(reply)]
        self.raw = raw
        self.reply = reply

    @property
    def text(self) -> str:
        return self.reply.message

    def __repr__(self) -> str:
        return "<%s %r>" % (self.kind, self.raw)


class ServerSpokeGarbage(AssertionError):
    pass


def take_messages(reader: ReplyReader) -> list:
    """Every whole reply the reader holds, each with the bytes it was made of."""
    out = []
    pending = reader.pending()
    while True:
        reply = reader.maybe_next_reply()
        if reply is None:
            return out
        rest = reader.pending()
        raw = pending[:len(pending) - len(rest)]
        pending = rest
        if isinstance(reply, Unparsed):
            raise ServerSpokeGarbage("the server sent something no reply looks like (%s): %r"
                                     % (reply.reason, raw[:200]))
        out.append(Message(reply, raw))


class Client:
    """A test client on one TCP connection. Every wait is bounded and fails with a message
    that says what was expected and what arrived."""

    _helo_counter = 0

    def __init__(self, port: int, label: str = "client", nodelay: bool = False,
                 rcvbuf: int = 0) -> None:
        self.port = port
        self.label = label
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:      # before connect(), so that the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect((HOST, port))
        except BaseException:
            sock.close()
            raise
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._reader = ReplyReader()
        self._pending = collections.deque()           # parsed, not yet consumed
        self._history = collections.deque(maxlen=8)   # recently consumed, for error messages
        self.eof = False
        self.reset = False

    # -- sending -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.settimeout(TIMEOUT)       # not whatever the last read left behind
        self.sock.sendall(data)

    def send_bytewise(self, data: bytes) -> None:
        """One send() per byte (with TCP_NODELAY, each usually its own segment)."""
        self.sock.settimeout(TIMEOUT)
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])

    def chat(self, ref, text, join_id=0, name="whoever") -> None:
        self.send(chat_request(ref, join_id, name, text))

    def leave(self, ref, join_id, name="whoever") -> None:
        self.send(leave_request(ref, join_id, name))

    # -- receiving -----------------------------------------------------------------------------

    def _recv_some(self, timeout: float) -> bool:
        """One recv(), waiting at most `timeout`. False if nothing came in time."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.eof = self.reset = True
            return True
        if not data:
            self.eof = True
            return True
        self._reader.receive_data(data)
        self._pending.extend(take_messages(self._reader))
        return True

    def take_ready(self) -> list:
        """Read what is ready (waiting at most a millisecond) and return every complete message
        received so far: for pumping several clients from one selector."""
        if not self.eof:
            self._recv_some(0.001)
        messages = list(self._pending)
        self._pending.clear()
        return messages

    def _describe(self) -> str:
        return ("recently received: %s; queued: %s; partial bytes: %r; %s"
                % (list(self._history) or "nothing", list(self._pending) or "nothing",
                   self._reader.pending()[:300],
                   "connection reset" if self.reset else
                   "connection closed by server" if self.eof else "connection open"))

    def fail(self, what: str) -> None:
        raise AssertionError("%s: %s (%s)" % (self.label, what, self._describe()))

    def next_message(self, timeout: float = TIMEOUT, waiting_for: str = "a message") -> Message:
        deadline = time.monotonic() + timeout
        while not self._pending:
            if self.eof:
                self.fail("connection ended while waiting for %s" % waiting_for)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail("timed out after %.1fs waiting for %s" % (timeout, waiting_for))
            self._recv_some(remaining)
        msg = self._pending.popleft()
        self._history.append(msg)
        return msg

    def read_until(self, until, timeout: float = TIMEOUT) -> list:
        """Read messages until `until` of them have arrived (an int) or until one satisfies
        `until(msg)` (a predicate); return them all, the matching one last."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            if isinstance(until, int) and len(got) >= until:
                return got
            remaining = deadline - time.monotonic()
            what = ("%d messages (have %d)" % (until, len(got)) if isinstance(until, int)
                    else "a message matching %s (have %d others)"
                    % (getattr(until, "__name__", until), len(got)))
            if remaining <= 0:
                self.fail("timed out after %.1fs waiting for %s" % (timeout, what))
            msg = self.next_message(remaining, what)
            got.append(msg)
            if not isinstance(until, int) and until(msg):
                return got

    def expect_message(self, expected: bytes, timeout: float = TIMEOUT) -> Message:
        """The next message must be exactly `expected`."""
        msg = self.next_message(timeout, "%r" % expected)
        if msg.raw != expected:
            self.fail("expected %r, got %r" % (expected, msg.raw))
        return msg

    def expect_kind(self, kind: str, timeout: float = TIMEOUT) -> Message:
        msg = self.next_message(timeout, "a %s message" % kind)
        if msg.kind != kind:
            self.fail("expected a %s message, got %r" % (kind, msg.raw))
        return msg

    def expect_error(self, code: int, timeout: float = TIMEOUT) -> Message:
        """The next message must be ERROR_CODE `code` with a non-empty description."""
        msg = self.next_message(timeout, "ERROR_CODE %d" % code)
        lines = msg.raw.split(b"\n")
        if (msg.kind != "ERROR_CODE" or len(lines) != 3 or not lines[0][12:].isdigit()
                or not lines[0].startswith(b"ERROR_CODE: ")
                or not lines[1].startswith(b"ERROR_DESCRIPTION: ")):
            self.fail("expected ERROR_CODE: %d / ERROR_DESCRIPTION: ..., got %r" % (code, msg.raw))
        if msg.reply.code != code:
            self.fail("expected ERROR_CODE %d, got %r" % (code, msg.raw))
        if not msg.reply.description.strip():
            self.fail("ERROR_DESCRIPTION is empty in %r" % msg.raw)
        return msg

    def expect_silence(self, seconds: float = SILENCE) -> None:
        """Nothing arrives for `seconds` (use only after a synchronisation point)."""
        if self._pending or self._reader.pending():
            self.fail("expected silence, but data was already waiting")
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._recv_some(remaining):
                self.fail("expected silence for %.1fs, but something arrived" % seconds)

    def expect_closed(self, timeout: float = TIMEOUT) -> None:
        """The server closes the connection (orderly, with FIN) and sends nothing more first."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if self._pending:
                self.fail("expected the connection to be closed, got %r" % self._pending[0])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.fail("timed out after %.1fs waiting for the server to close" % timeout)
            self._recv_some(remaining)
        if self._pending or self._reader.pending():
            self.fail("expected the connection to be closed with nothing more sent")
        if self.reset:
            self.fail("the server reset the connection instead of closing it")

    # -- request/reply pairs -------------------------------------------------------------------

    def helo(self, text: str = "text") -> Message:
        self.send(b"HELO %s\n" % _b(text))
        return self.expect_message(helo_reply(text, self.port))

    def sync(self) -> None:
        """A synchronisation point: everything the server owed this connection before it
        handled this HELO would arrive first, so the next message must be the HELO reply."""
        Client._helo_counter += 1
        self.helo("sync %d" % Client._helo_counter)

    def join(self, room, name, announce: bool = True):
        """JOIN and check the JOINED reply field by field; then (unless announce is False)
        the joiner's own announcement. Returns (ROOM_REF, JOIN_ID)."""
        self.send(join_request(room, name))
        msg = self.expect_kind("JOINED_CHATROOM")
        ref, join_id = msg.reply.ref, msg.reply.join_id
        if ref < 0 or join_id < 0:
            self.fail("ROOM_REF and JOIN_ID must be non-negative: %r" % msg.raw)
        expected = joined_reply(room, self.port, ref, join_id)
        if msg.raw != expected:
            self.fail("expected %r, got %r" % (expected, msg.raw))
        if announce:
            self.expect_message(joined_announcement(ref, name))
        return ref, join_id

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# The server process
# ---------------------------------------------------------------------------------------------

def start_server(*arguments: str, student_id=STUDENT_ID, **options) -> ServerProcess:
    """Server.py on 127.0.0.1 and a port the kernel picks (tools/kit.py: the one ServerProcess
    of the repository), with this file's StudentID unless told otherwise."""
    return ServerProcess(*arguments, student_id=student_id, **options)


class ServerTestCase(unittest.TestCase):
    """One server for the whole class. Each test's clients are closed after it, and the test
    fails if the server died or logged a traceback while it ran."""

    server = None
    server_arguments: Tuple[str, ...] = ()      # for Server.py, on top of the usual ones

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = start_server(*cls.server_arguments)
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.server is not None:
            cls.server.stop()

    def setUp(self) -> None:
        self._stderr_mark = self.server.log_size()
        self.addCleanup(self._check_server_health)

    def _check_server_health(self) -> None:
        log = self.server.log(self._stderr_mark)
        self.assertIsNone(self.server.proc.poll(),
                          "the server exited (status %s); stderr:\n%s"
                          % (self.server.proc.returncode, log))
        self.assertNotIn("Traceback", log, "the server logged an exception:\n" + log)

    def client(self, label: str = "client", **kwargs) -> Client:
        c = Client(self.port, label, **kwargs)
        self.addCleanup(c.close)
        return c

    def room(self, tag: str = "room") -> str:
        """A room name no other test uses."""
        return "%s/%s" % (self._testMethodName, tag)


# ---------------------------------------------------------------------------------------------
# HELO and configuration
# ---------------------------------------------------------------------------------------------

class HeloTests(ServerTestCase):

    def test_helo_reply_is_exact(self):
        c = self.client()
        c.send(b"HELO text\n")
        c.expect_message(b"HELO text\nIP:127.0.0.1\nPort:%d\nStudentID:12345678\n" % self.port)

    def test_helo_echoes_the_whole_line(self):
        c = self.client()
        c.send(b"HELO BASE_TEST with spaces\n")
        c.expect_message(helo_reply("BASE_TEST with spaces", self.port))

    def test_unknown_message_gets_no_reply(self):
        c = self.client()
        c.send(b"HELLO_THERE\n")
        c.send(b"HELO after unknown\n")
        c.expect_message(helo_reply("after unknown", self.port))
        # the same in one segment, and an unknown message that looks like a field line
        c.send(b"HELLO_THERE\nSOMETHING_ELSE: 1\nHELO again\n")
        c.expect_message(helo_reply("again", self.port))
        c.expect_silence()


class ProcessTests(unittest.TestCase):
    """Tests that need their own server process (configuration, ending the process)."""

    def start_server(self, *arguments: str, **kwargs) -> ServerProcess:
        server = start_server(*arguments, **kwargs)
        self.addCleanup(server.stop)
        return server

    def helo_student_id(self, server: ServerProcess) -> str:
        c = Client(server.port)
        self.addCleanup(c.close)
        c.send(b"HELO x\n")
        return c.expect_kind("HELO").reply.student_id

    def test_operators_see_peers_closes_and_a_stats_line(self):
        server = self.start_server("--stats-interval", "1", log_level="info")
        c = Client(server.port)
        c.send(b"JOIN_CHATROOM: ops\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: o\n")
        c.expect_kind("JOINED_CHATROOM")
        c.close()
        deadline = time.monotonic() + 5
        log = ""
        while time.monotonic() < deadline:
            log = server.log()
            if "stats:" in log and "closed by the peer" in log:
                break
            time.sleep(0.05)                # polling a file, bounded by the deadline above
        self.assertRegex(log, r"conn \d+: open from 127\.0\.0\.1:\d+")
        self.assertRegex(log, r"conn \d+ \(127\.0\.0\.1\): closed by the peer")
        self.assertRegex(log, r"stats: \d+ connections, \d+ rooms, \d+ memberships, \d+ "
                              r"deliveries/s, \d+ bytes of output queued")

    def test_student_id_from_environment_when_no_option(self):
        env = dict(os.environ, STUDENT_ID="87654321")
        server = self.start_server(student_id=None, env=env)
        self.assertEqual(self.helo_student_id(server), "87654321")

    def test_student_id_option_overrides_environment(self):
        env = dict(os.environ, STUDENT_ID="87654321")
        server = self.start_server(student_id="11112222", env=env)
        self.assertEqual(self.helo_student_id(server), "11112222")

    def test_student_id_has_documented_default(self):
        import Server
        env = {k: v for k, v in os.environ.items() if k != "STUDENT_ID"}
        server = self.start_server(student_id=None, env=env)
        self.assertEqual(self.helo_student_id(server), Server.DEFAULT_STUDENT_ID)

    def test_a_full_unread_stderr_pipe_does_not_stop_the_server(self):
        # The server has one thread: a blocking write to a pipe nobody reads would stop it.
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        try:
            # (no request limit: 5 000 requests at once would wait for flood control)
            server = self.start_server("--request-rate", "0", log_level="debug",
                                       stderr=write_end)
        finally:
            os.close(write_end)
        c = Client(server.port)
        self.addCleanup(c.close)
        c.send(b"UNKNOWN_LINE_LOGGED_AT_DEBUG\n" * 5000)   # ~600 KB of log: ten full pipes
        c.send(b"HELO still here\n")
        c.expect_message(helo_reply("still here", server.port))

    def test_first_two_rooms_of_a_fresh_server_are_refs_0_and_1(self):
        # Not a hard rule of the contract, but what the course's test client saw.
        server = self.start_server()
        c = Client(server.port)
        self.addCleanup(c.close)
        self.assertEqual(c.join("room1", "a")[0], 0)
        self.assertEqual(c.join("room2", "a")[0], 1)

    def test_kill_service_exits_0_promptly_and_closes_everything(self):
        server = self.start_server()
        idle = Client(server.port, "idle")
        self.addCleanup(idle.close)
        idle.join("kill-room", "idle")
        killer = Client(server.port, "killer")
        self.addCleanup(killer.close)
        killer.helo()
        started = time.monotonic()
        killer.send(b"KILL_SERVICE\n")
        try:
            status = server.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("KILL_SERVICE did not end the server within %.0fs" % EXIT_TIMEOUT)
        elapsed = time.monotonic() - started
        self.assertEqual(status, 0, "exit status; stderr:\n" + server.log())
        # docs/PROTOCOL.md: "promptly (well under a second when idle)"
        self.assertLess(elapsed, 1.0, "KILL_SERVICE took %.2fs to end the process" % elapsed)
        with self.assertRaises(ConnectionRefusedError,
                               msg="the listening port still accepts after KILL_SERVICE"):
            socket.create_connection((HOST, server.port), timeout=TIMEOUT).close()
        idle.expect_closed()
        killer.expect_closed()

    @unittest.skipUnless(hasattr(signal, "SIGTERM") and os.name == "posix", "POSIX signals")
    def test_sigterm_exits_0(self):
        server = self.start_server()
        c = Client(server.port)
        self.addCleanup(c.close)
        c.helo()        # it is up and serving
        server.proc.send_signal(signal.SIGTERM)
        try:
            status = server.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("SIGTERM did not end the server within %.0fs" % EXIT_TIMEOUT)
        self.assertEqual(status, 0, "exit status; stderr:\n" + server.log())
        c.expect_closed()

    def test_server_help_exits_0(self):
        done = subprocess.run([sys.executable, "Server.py", "--help"], cwd=REPO,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=STARTUP_TIMEOUT)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"usage", done.stdout.lower())

    @unittest.skipUnless(os.name == "posix", "start.sh is a bash script")
    def test_start_sh_without_port_prints_usage_and_fails(self):
        done = subprocess.run(["bash", os.path.join(REPO, "start.sh")], cwd=REPO,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=STARTUP_TIMEOUT)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn(b"usage", (done.stdout + done.stderr).lower())


# ---------------------------------------------------------------------------------------------
# Joining
# ---------------------------------------------------------------------------------------------

class JoinTests(ServerTestCase):

    def test_joined_reply_fields_are_exact_then_own_announcement(self):
        c = self.client()
        room = self.room()
        c.send(join_request(room, "alice"))
        msg = c.expect_kind("JOINED_CHATROOM")
        self.assertEqual(msg.reply.room, room)
        self.assertEqual(msg.reply.server_ip, HOST)
        self.assertEqual(msg.reply.port, self.port)
        ref, join_id = msg.reply.ref, msg.reply.join_id
        self.assertEqual(msg.raw, joined_reply(room, self.port, ref, join_id))
        c.expect_message(b"CHAT: %d\nCLIENT_NAME: alice\n"
                         b"MESSAGE: alice has joined this chatroom.\n\n" % ref)
        c.sync()

    def test_room_refs_are_distinct_per_room_and_stable(self):
        a, b = self.client("a"), self.client("b")
        ref1, _ = a.join(self.room("one"), "a")
        ref2, _ = a.join(self.room("two"), "a")
        self.assertNotEqual(ref1, ref2)
        self.assertEqual(b.join(self.room("two"), "b")[0], ref2)
        self.assertEqual(b.join(self.room("one"), "b")[0], ref1)
        # a room keeps its ref after everybody has left it
        a.leave(ref1, 0, "a")
        b.leave(ref1, 0, "b")
        c = self.client("c")
        self.assertEqual(c.join(self.room("one"), "c")[0], ref1)

    def test_room_names_are_case_sensitive_and_may_hold_spaces_and_unicode(self):
        c = self.client()
        names = [self.room("Café"), self.room("café"), self.room("a room with spaces ✓")]
        refs = [c.join(name, "x")[0] for name in names]
        self.assertEqual(len(set(refs)), 3, refs)

    def test_join_id_is_per_connection(self):
        a, b = self.client("a"), self.client("b")
        _, a1 = a.join(self.room("one"), "a")
        _, a2 = a.join(self.room("two"), "a")
        _, b1 = b.join(self.room("one"), "b")
        a.read_until(1)     # b's announcement in room one
        _, b2 = b.join(self.room("three"), "b")
        self.assertEqual(a1, a2)
        self.assertEqual(b1, b2)
        self.assertNotEqual(a1, b1)

    def test_joining_twice_gives_same_reply_and_no_second_announcement(self):
        a, b = self.client("a"), self.client("b")
        room = self.room()
        ref, join_id = a.join(room, "a")
        b.join(room, "b")
        a.expect_message(joined_announcement(ref, "b"))
        a.send(join_request(room, "a"))
        a.expect_message(joined_reply(room, self.port, ref, join_id))
        a.sync()
        b.sync()
        # a is in the room once: one copy of each chat
        b.chat(ref, "once")
        b.expect_message(wire_chat(ref, "b", "once"))
        a.expect_message(wire_chat(ref, "b", "once"))
        a.sync()


# ---------------------------------------------------------------------------------------------
# Chat
# ---------------------------------------------------------------------------------------------

class ChatTests(ServerTestCase):

    def test_second_joiner_is_announced_to_both(self):
        a, b = self.client("a"), self.client("b")
        room = self.room()
        ref, _ = a.join(room, "a")
        b.join(room, "b")                   # b sees its own announcement
        a.expect_message(joined_announcement(ref, "b"))
        a.sync()
        b.sync()

    def test_chat_reaches_every_member_including_sender_exactly_once(self):
        a, b = self.client("a"), self.client("b")
        room = self.room()
        ref, ja = a.join(room, "a")
        b.join(room, "b")
        a.expect_message(joined_announcement(ref, "b"))
        a.chat(ref, "hello, b", ja, "a")
        a.expect_message(wire_chat(ref, "a", "hello, b"))
        b.expect_message(wire_chat(ref, "a", "hello, b"))
        a.sync()
        b.sync()

    def test_fifty_messages_from_one_sender_arrive_in_order_to_all(self):
        a, b = self.client("a"), self.client("b")
        room = self.room()
        ref, ja = a.join(room, "a")
        b.join(room, "b")
        a.expect_message(joined_announcement(ref, "b"))
        texts = ["message %d of 50" % i for i in range(50)]
        for text in texts:
            a.chat(ref, text, ja, "a")
        for member in (a, b):
            got = [m.raw for m in member.read_until(len(texts))]
            self.assertEqual(got, [wire_chat(ref, "a", t) for t in texts], member.label)
            member.sync()                  # and nothing more: each exactly once

    def test_chat_in_one_room_is_not_seen_in_another(self):
        a, b, c = self.client("a in both"), self.client("b in one"), self.client("c in two")
        ref1, ja = a.join(self.room("one"), "a")
        ref2, _ = a.join(self.room("two"), "a")
        b.join(self.room("one"), "b")
        c.join(self.room("two"), "c")
        a.read_until(2)                     # b's and c's announcements
        a.chat(ref1, "for room one", ja, "a")
        a.expect_message(wire_chat(ref1, "a", "for room one"))
        b.expect_message(wire_chat(ref1, "a", "for room one"))
        c.sync()                            # a's chat was handled before this HELO
        a.chat(ref2, "for room two", ja, "a")
        a.expect_message(wire_chat(ref2, "a", "for room two"))
        c.expect_message(wire_chat(ref2, "a", "for room two"))
        b.sync()

    def test_multiline_message_relayed_byte_for_byte(self):
        a, b = self.client("a"), self.client("b")
        room = self.room()
        ref, ja = a.join(room, "a")
        b.join(room, "b")
        a.expect_message(joined_announcement(ref, "b"))
        text = ("first line\n  second line, indented\nthird: has a colon\nCHAT: 0\n"
                "JOIN_CHATROOM: not a request\n\ttabbed ünïcødé ✓ 🎉 and trailing\t  x")
        a.chat(ref, text, ja, "a")
        expected = wire_chat(ref, "a", text)
        self.assertEqual(b.next_message().raw, expected)
        self.assertEqual(a.next_message().raw, expected)
        a.sync()


# ---------------------------------------------------------------------------------------------
# Leaving and disconnecting
# ---------------------------------------------------------------------------------------------

class LeaveTests(ServerTestCase):

    def two_in_a_room(self, tag="room"):
        a, b = self.client("a"), self.client("b")
        room = self.room(tag)
        ref, ja = a.join(room, "a")
        _, jb = b.join(room, "b")
        a.expect_message(joined_announcement(ref, "b"))
        return a, b, ref, ja, jb

    def test_leave_replies_then_own_announcement_and_others_told(self):
        a, b, ref, ja, _ = self.two_in_a_room()
        a.leave(ref, ja, "a")
        a.expect_message(left_reply(ref, ja))
        a.expect_message(left_announcement(ref, "a"))
        b.expect_message(left_announcement(ref, "a"))
        a.sync()
        b.sync()

    def test_leave_twice_gives_same_reply(self):
        a, b, ref, ja, _ = self.two_in_a_room()
        a.leave(ref, ja, "a")
        a.expect_message(left_reply(ref, ja))
        a.expect_message(left_announcement(ref, "a"))
        b.expect_message(left_announcement(ref, "a"))
        a.leave(ref, ja, "a")
        a.expect_message(left_reply(ref, ja))
        a.sync()                            # no second announcement to the leaver...
        b.sync()                            # ...nor to the room

    def test_no_chat_of_a_room_after_leaving_it(self):
        a, b, ref, ja, jb = self.two_in_a_room()
        a.leave(ref, ja, "a")
        a.expect_message(left_reply(ref, ja))
        a.expect_message(left_announcement(ref, "a"))
        b.expect_message(left_announcement(ref, "a"))
        b.chat(ref, "after a left", jb, "b")
        b.expect_message(wire_chat(ref, "b", "after a left"))   # the server has handled it
        a.expect_silence()
        a.sync()

    def test_leaver_keeps_its_other_rooms_and_its_connection(self):
        a, b, ref, ja, _ = self.two_in_a_room()
        other, _ = a.join(self.room("other"), "a2")
        c = self.client("c")
        c.join(self.room("other"), "c")
        a.expect_message(joined_announcement(other, "c"))
        a.leave(ref, ja, "a")
        a.expect_message(left_reply(ref, ja))
        a.expect_message(left_announcement(ref, "a"))
        c.chat(other, "still here?")
        c.expect_message(wire_chat(other, "c", "still here?"))
        a.expect_message(wire_chat(other, "c", "still here?"))
        a.chat(other, "yes", ja, "a")
        a.expect_message(wire_chat(other, "a2", "yes"))
        c.expect_message(wire_chat(other, "a2", "yes"))
        a.helo()

    def test_disconnect_announces_in_ascending_ref_order_then_closes(self):
        watcher, d = self.client("watcher"), self.client("d")
        low, _ = watcher.join(self.room("low"), "w")
        high, _ = watcher.join(self.room("high"), "w")
        self.assertLess(low, high)
        d.join(self.room("high"), "d")      # joined in descending order on purpose
        d.join(self.room("low"), "d")
        watcher.read_until(2)
        d.send(disconnect_request("d"))
        d.expect_message(left_announcement(low, "d"))
        d.expect_message(left_announcement(high, "d"))
        d.expect_closed()
        watcher.expect_message(left_announcement(low, "d"))
        watcher.expect_message(left_announcement(high, "d"))
        watcher.sync()

    def test_requests_after_disconnect_are_dropped_and_close_is_orderly(self):
        # The server must not reset the connection because input it will never handle is
        # still unread: a RST could destroy the announcements the client is owed.
        watcher, d = self.client("watcher"), self.client("d")
        ref, _ = watcher.join(self.room(), "w")
        d.join(self.room(), "d")
        watcher.expect_message(joined_announcement(ref, "d"))
        before = 300                        # several ticks' worth, so that...
        d.send(b"HELO before\n" * before + disconnect_request("d") + b"HELO after\n" * 50)
        try:
            d.send(b"HELO late\n" * 2000)  # ...this is likely still unread at the close
        except OSError:
            pass                            # the server has closed already: also fine
        for _ in range(before):
            d.expect_message(helo_reply("before", self.port))
        d.expect_message(left_announcement(ref, "d"))
        d.expect_closed()
        watcher.expect_message(left_announcement(ref, "d"))
        watcher.sync()

    def test_disconnect_with_no_rooms_just_closes(self):
        d = self.client("d")
        d.send(disconnect_request("d"))
        d.expect_closed()

    def test_closing_without_disconnect_announces_leave(self):
        a, b, ref, _, _ = self.two_in_a_room()
        a.close()
        b.expect_message(left_announcement(ref, "a"))
        b.sync()

    def test_connection_reset_mid_request_announces_leave_and_server_goes_on(self):
        a, b, ref, ja, _ = self.two_in_a_room()
        a.send(b"CHAT: %d\nJOIN_ID: %d\nCLIENT_NA" % (ref, ja))
        a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()                           # RST, not FIN
        b.expect_message(left_announcement(ref, "a"))
        b.sync()
        self.client("newcomer").helo()


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------

class FramingTests(ServerTestCase):

    def exercise(self, send, nl=b"\n"):
        """Join, chat (two lines), leave and HELO through `send`, with line ends `nl`."""
        a, b = self.client("a", nodelay=True), self.client("b")
        room = self.room()
        ref, _ = b.join(room, "b")
        send(a, join_request(room, "a").replace(b"\n", nl))
        msg = a.expect_kind("JOINED_CHATROOM")
        ja = msg.reply.join_id
        self.assertEqual(msg.raw, joined_reply(room, self.port, ref, ja))
        a.expect_message(joined_announcement(ref, "a"))
        b.expect_message(joined_announcement(ref, "a"))
        send(a, chat_request(ref, ja, "a", "two\nlines").replace(b"\n", nl))
        a.expect_message(wire_chat(ref, "a", "two\nlines"))
        b.expect_message(wire_chat(ref, "a", "two\nlines"))
        send(a, leave_request(ref, ja, "a").replace(b"\n", nl))
        a.expect_message(left_reply(ref, ja))
        a.expect_message(left_announcement(ref, "a"))
        b.expect_message(left_announcement(ref, "a"))
        send(a, b"HELO split" + nl)
        a.expect_message(helo_reply("split", self.port))

    def test_requests_split_byte_by_byte(self):
        self.exercise(Client.send_bytewise)

    def test_crlf_requests_split_byte_by_byte(self):
        self.exercise(Client.send_bytewise, b"\r\n")

    def test_crlf_line_endings_everywhere(self):
        self.exercise(Client.send, b"\r\n")

    def test_crlf_split_between_cr_and_lf(self):
        # Each reply shows the server has read the segment that ended in a lone CR; its LF
        # then arrives in a segment of its own.
        a = self.client(nodelay=True)
        a.send(b"HELO one\r\nHELO two\r")
        a.expect_message(helo_reply("one", self.port))
        a.send(b"\n")
        a.expect_message(helo_reply("two", self.port))
        ref, ja = a.join(self.room(), "a")
        request = chat_request(ref, ja, "a", "x\ny").replace(b"\n", b"\r\n")
        for cut in (1, 2, 3):               # inside the final CRLF CRLF, at every place
            with self.subTest(cut=cut):
                a.send(b"HELO cut\r\n" + request[:-cut])
                a.expect_message(helo_reply("cut", self.port))
                a.send(request[-cut:])
                a.expect_message(wire_chat(ref, "a", "x\ny"))
        a.sync()

    def test_several_requests_in_one_segment(self):
        a, b = self.client("a"), self.client("b")
        room = self.room()
        ref, _ = b.join(room, "b")
        a.send(b"HELO first\n" + join_request(room, "a") + chat_request(ref, 0, "a", "one")
               + chat_request(ref, 0, "a", "two\nlines") + b"HELO middle\n"
               + leave_request(ref, 0, "a") + b"HELO last\n")
        a.expect_message(helo_reply("first", self.port))
        self.assertEqual(a.expect_kind("JOINED_CHATROOM").reply.ref, ref)
        a.expect_message(joined_announcement(ref, "a"))
        a.expect_message(wire_chat(ref, "a", "one"))
        a.expect_message(wire_chat(ref, "a", "two\nlines"))
        a.expect_message(helo_reply("middle", self.port))
        # (which JOIN_ID a LEFT_CHATROOM carries when the request quoted a wrong one is not
        # settled by the contract: only the ROOM_REF is checked)
        self.assertEqual(a.expect_kind("LEFT_CHATROOM").reply.ref, ref)
        a.expect_message(left_announcement(ref, "a"))
        a.expect_message(helo_reply("last", self.port))
        for expected in (joined_announcement(ref, "a"), wire_chat(ref, "a", "one"),
                         wire_chat(ref, "a", "two\nlines"), left_announcement(ref, "a")):
            b.expect_message(expected)
        b.sync()

    def test_blank_lines_between_requests_are_ignored(self):
        a = self.client()
        room = self.room()
        a.send(b"\n\nHELO one\n\n\r\n\n" + join_request(room, "a") + b"\n\n")
        a.expect_message(helo_reply("one", self.port))
        ref = a.expect_kind("JOINED_CHATROOM").reply.ref
        a.expect_message(joined_announcement(ref, "a"))
        a.send(b"\n" + chat_request(ref, 0, "a", "hi") + b"\n\n\n" + b"HELO two\n")
        a.expect_message(wire_chat(ref, "a", "hi"))
        a.expect_message(helo_reply("two", self.port))

    def test_field_values_are_trimmed(self):
        a = self.client()
        room = self.room()
        a.send(b"JOIN_CHATROOM:   %s  \nCLIENT_IP:0 \nPORT:  0\t\nCLIENT_NAME:  a \n" % _b(room))
        msg = a.expect_kind("JOINED_CHATROOM")
        ref, ja = msg.reply.ref, msg.reply.join_id
        self.assertEqual(msg.raw, joined_reply(room, self.port, ref, ja))
        a.expect_message(joined_announcement(ref, "a"))
        # the course's test client: "CHAT: 0 " with trailing spaces
        a.send(b"CHAT: %d \nJOIN_ID: %d \nCLIENT_NAME: a \nMESSAGE:   hi there  \n\n" % (ref, ja))
        a.expect_message(wire_chat(ref, "a", "hi there"))
        a.send(b"LEAVE_CHATROOM: %d \nJOIN_ID:%d  \nCLIENT_NAME: a \n" % (ref, ja))
        a.expect_message(left_reply(ref, ja))
        a.expect_message(left_announcement(ref, "a"))


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class ErrorTests(ServerTestCase):

    def joined(self, tag="room", name="m"):
        c = self.client(name)
        ref, join_id = c.join(self.room(tag), name)
        return c, ref, join_id

    def test_missing_field_is_error_1(self):
        c, ref, jid = self.joined()
        cases = [
            # a blank line cuts a fixed-length request short
            b"JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\n\n" % _b(self.room()),
            b"LEAVE_CHATROOM: %d\nJOIN_ID: %d\n\n" % (ref, jid),
            b"DISCONNECT: 0\nPORT: 0\n\n",
            b"CHAT: %d\nJOIN_ID: %d\nCLIENT_NAME: m\n\n" % (ref, jid),   # no MESSAGE
        ]
        for request in cases:
            with self.subTest(request=request):
                c.send(request)
                c.expect_error(ErrorCode.MALFORMED_REQUEST)
                c.sync()

    def test_misnamed_or_misordered_field_is_error_1(self):
        c, ref, jid = self.joined()
        cases = [
            b"JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nNAME: m\n" % _b(self.room()),
            b"JOIN_CHATROOM: %s\nPORT: 0\nCLIENT_IP: 0\nCLIENT_NAME: m\n" % _b(self.room()),
            b"LEAVE_CHATROOM: %d\nJOIN-ID: %d\nCLIENT_NAME: m\n" % (ref, jid),
            b"DISCONNECT: 0\nPORT 0\nCLIENT_NAME: m\n",
            b"CHAT: %d\nJOIN_ID: %d\nCLIENT_NAME: m\nMESAGE: typo\n\n" % (ref, jid),
        ]
        for request in cases:
            with self.subTest(request=request):
                c.send(request)
                c.expect_error(ErrorCode.MALFORMED_REQUEST)
                c.sync()

    def test_non_integer_ref_or_join_id_is_error_2(self):
        c, ref, jid = self.joined()
        cases = [
            chat_request("abc", jid, "m", "x"),
            chat_request("-1", jid, "m", "x"),
            chat_request(ref, "one", "m", "x"),
            leave_request("1.5", jid, "m"),
            leave_request(ref, "", "m"),
        ]
        for request in cases:
            with self.subTest(request=request):
                c.send(request)
                c.expect_error(ErrorCode.BAD_INTEGER)
                c.sync()

    def test_empty_room_name_is_error_3(self):
        c = self.client()
        c.send(join_request("", "m"))
        c.expect_error(ErrorCode.EMPTY_ROOM_NAME)
        c.send(join_request("   ", "m"))
        c.expect_error(ErrorCode.EMPTY_ROOM_NAME)
        c.sync()

    def test_empty_client_name_is_error_4(self):
        c, ref, jid = self.joined()
        for request in (join_request(self.room("other"), ""), chat_request(ref, jid, "", "x"),
                        leave_request(ref, jid, " "), disconnect_request("")):
            with self.subTest(request=request):
                c.send(request)
                c.expect_error(ErrorCode.EMPTY_CLIENT_NAME)
                c.sync()

    def test_unknown_room_ref_is_error_5_for_chat_and_leave(self):
        c, _, jid = self.joined()
        for request in (chat_request(987654321, jid, "m", "x"), leave_request(987654321, jid, "m")):
            with self.subTest(request=request):
                c.send(request)
                c.expect_error(ErrorCode.UNKNOWN_ROOM)
                c.sync()

    def test_digit_strings_too_long_for_int_are_still_integers(self):
        # Python refuses int() of more than 4300 digits (3.11+, 3.8.14+); such a ref is still an
        # integer that names no room (5), and a JOIN_ID that does not match must not be
        # rejected (docs/PROTOCOL.md, Identity): the CHAT goes out.
        c, ref, jid = self.joined()
        huge = "9" * 5000
        c.send(chat_request(huge, jid, "m", "x"))
        c.expect_error(ErrorCode.UNKNOWN_ROOM)
        c.send(leave_request(huge, jid, "m"))
        c.expect_error(ErrorCode.UNKNOWN_ROOM)
        c.send(chat_request(ref, huge, "m", "huge JOIN_ID"))
        c.expect_message(wire_chat(ref, "m", "huge JOIN_ID"))
        c.sync()

    def test_chat_to_a_room_not_joined_is_error_6(self):
        member, ref, jid = self.joined("room", "member")
        outsider = self.client("outsider")
        outsider.chat(ref, "let me in", jid, "member")
        outsider.expect_error(ErrorCode.NOT_A_MEMBER)
        outsider.sync()
        member.sync()                       # nothing was broadcast

    def test_invalid_utf8_is_error_7(self):
        c = self.client()
        c.send(b"HELO \xff\xfe\n")
        c.expect_error(ErrorCode.INVALID_UTF8)
        c.send(b"JOIN_CHATROOM: \xc3\x28\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: m\n")
        c.expect_error(ErrorCode.INVALID_UTF8)
        c.sync()

    def test_invalid_utf8_in_chat_body_is_error_7_and_relays_nothing(self):
        a, ref, ja = self.joined("room", "a")
        b = self.client("b")
        b.join(self.room("room"), "b")
        a.expect_message(joined_announcement(ref, "b"))
        a.send(chat_request(ref, ja, "a", b"bad \xed\xa0\x80 surrogate and \xff"))
        a.expect_error(ErrorCode.INVALID_UTF8)
        a.sync()
        b.sync()                            # a's request was handled before b's HELO
        b.expect_silence()
        a.chat(ref, "good", ja, "a")        # and a can still chat
        b.expect_message(wire_chat(ref, "a", "good"))

    def test_request_longer_than_limit_is_error_8_then_closed(self):
        c = self.client()
        c.send(b"HELO " + b"x" * MAX_REQUEST_BYTES + b"\n")
        c.expect_error(ErrorCode.REQUEST_TOO_LONG)
        c.expect_closed()
        # the same for a request with no line end at all, and a CHAT whose text never ends
        for request in (b"y" * (MAX_REQUEST_BYTES + 1),
                        chat_request(0, 0, "m", "z" * MAX_REQUEST_BYTES)[:-2]):
            with self.subTest(length=len(request)):
                c = self.client()
                c.send(request)
                c.expect_error(ErrorCode.REQUEST_TOO_LONG)
                c.expect_closed()
        self.client().helo()                # the server goes on

    def test_member_disconnected_for_overlong_request_is_announced_as_leaving(self):
        big, ref, _ = self.joined("room", "big")
        watcher = self.client("watcher")
        watcher.join(self.room("room"), "w")
        big.expect_message(joined_announcement(ref, "w"))
        big.send(b"y" * (MAX_REQUEST_BYTES + 1))
        big.expect_error(ErrorCode.REQUEST_TOO_LONG)
        big.expect_closed()
        watcher.expect_message(left_announcement(ref, "big"))
        watcher.sync()

    def test_request_just_under_the_limit_is_served(self):
        c = self.client()
        text = "x" * (MAX_REQUEST_BYTES - len("HELO ") - 1)
        c.send(b"HELO %s\n" % _b(text))
        c.expect_message(helo_reply(text, self.port))

    def test_error_codes_are_distinct(self):
        c, ref, jid = self.joined()
        other = self.client("other")
        other_ref, _ = other.join(self.room("not mine"), "o")
        cases = {
            "malformed": b"LEAVE_CHATROOM: %d\nJOIN-ID: %d\nCLIENT_NAME: m\n" % (ref, jid),
            "bad integer": chat_request("abc", jid, "m", "x"),
            "empty room name": join_request("", "m"),
            "empty client name": join_request(self.room("x"), ""),
            "unknown room": chat_request(987654321, jid, "m", "x"),
            "not a member": chat_request(other_ref, jid, "m", "x"),
            "invalid utf-8": b"HELO \xff\n",
        }
        codes = {}
        for what, request in cases.items():
            c.send(request)
            msg = c.expect_kind("ERROR_CODE")
            self.assertTrue(msg.reply.description.strip(), msg.raw)
            codes[what] = msg.reply.code
        big = self.client("big")
        big.send(b"y" * (MAX_REQUEST_BYTES + 1))
        codes["too long"] = big.expect_kind("ERROR_CODE").reply.code
        self.assertEqual(len(set(codes.values())), len(codes), codes)
        c.sync()


# ---------------------------------------------------------------------------------------------
# Identity is the connection
# ---------------------------------------------------------------------------------------------

class IdentityTests(ServerTestCase):

    def two_in_a_room(self):
        a, b = self.client("a"), self.client("b")
        room = self.room()
        ref, ja = a.join(room, "alice")
        _, jb = b.join(room, "bob")
        a.expect_message(joined_announcement(ref, "bob"))
        return a, b, ref, ja, jb

    def test_chat_quoting_another_join_id_and_name_goes_out_under_own_name(self):
        a, b, ref, ja, jb = self.two_in_a_room()
        b.chat(ref, "who am I?", ja, "alice")
        b.expect_message(wire_chat(ref, "bob", "who am I?"))
        a.expect_message(wire_chat(ref, "bob", "who am I?"))

    def test_leave_and_disconnect_announce_the_joined_name_not_the_quoted_one(self):
        a, b, ref, ja, jb = self.two_in_a_room()
        a.leave(ref, ja, "mallory")
        a.expect_message(left_reply(ref, ja))
        a.expect_message(left_announcement(ref, "alice"))
        b.expect_message(left_announcement(ref, "alice"))
        b.send(disconnect_request("mallory"))
        b.expect_message(left_announcement(ref, "bob"))
        b.expect_closed()
        a.sync()

    def test_non_member_quoting_a_member_join_id_cannot_post(self):
        a, b, ref, ja, _ = self.two_in_a_room()
        intruder = self.client("intruder")
        intruder.join(self.room("elsewhere"), "eve")     # it has a JOIN_ID of its own
        intruder.chat(ref, "as alice", ja, "alice")
        intruder.expect_error(ErrorCode.NOT_A_MEMBER)
        intruder.sync()
        a.sync()
        b.sync()

    def test_non_member_quoting_a_member_join_id_cannot_make_it_leave(self):
        a, b, ref, ja, jb = self.two_in_a_room()
        intruder = self.client("intruder")
        intruder.leave(ref, ja, "alice")
        reply = intruder.expect_kind("LEFT_CHATROOM")    # the usual reply, and nothing else
        self.assertEqual(reply.reply.ref, ref, reply.raw)
        intruder.sync()
        a.sync()                                         # no leave announced to anybody
        b.sync()
        b.chat(ref, "alice, still there?", jb, "bob")
        b.expect_message(wire_chat(ref, "bob", "alice, still there?"))
        a.expect_message(wire_chat(ref, "bob", "alice, still there?"))


# ---------------------------------------------------------------------------------------------
# Load: slow readers and many clients
# ---------------------------------------------------------------------------------------------

def _kernel_send_buffer_max() -> int:
    """The most a server socket's kernel send buffer can grow to (Linux autotuning)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


class LoadTests(ServerTestCase):
    # The sender floods as fast as it can: without flood control, so that what is measured is
    # the stalled member's cut, not the sender being slowed down (tests/test_hub.py).
    server_arguments = ("--input-rate", "0", "--request-rate", "0")

    def test_client_that_never_reads_does_not_stall_the_room(self):
        room = self.room()
        stalled = self.client("never reads", rcvbuf=4096)
        sender, reader = self.client("sender"), self.client("reader")
        ref, _ = stalled.join(room, "stalled", announce=False)   # it never reads, from here on
        _, js = sender.join(room, "sender")
        reader.join(room, "reader")
        sender.expect_message(joined_announcement(ref, "reader"))
        # Enough traffic that the stalled member's backlog surely passes OUTPUT_CAP, whatever
        # the kernel buffers (its receive window is small; the server's send buffer is not).
        size = 1000
        count = (OUTPUT_CAP + _kernel_send_buffer_max() + (1 << 20)) // size + 1
        texts = ["%06d %s" % (i, "x" * (size - 7)) for i in range(count)]
        requests = [chat_request(ref, js, "sender", t) for t in texts]
        sender_error = []
        # The thread writes through its own socket object on the same connection, so that the
        # main thread's reads (and their timeouts) do not interfere with its sendall(). It keeps
        # at most SENDER_LEAD chats ahead of what the reader has taken: the reader, this test's
        # own Python, must not fall OUTPUT_CAP behind because the machine paused this process
        # (a server dropping a reader that far behind is right); the stalled member falls
        # behind all the same.
        sending = sender.sock.dup()
        self.addCleanup(sending.close)
        sending.settimeout(FLOOD_TIMEOUT)
        taken = threading.Condition()
        reader_has = [0]                    # chats the reader has taken (main thread's count)
        step = 100

        def send_all():
            try:
                for start in range(0, count, step):
                    with taken:
                        if not taken.wait_for(lambda: reader_has[0] >= start - SENDER_LEAD,
                                              FLOOD_TIMEOUT):
                            return          # the main thread reports what did not come
                    sending.sendall(b"".join(requests[start:start + step]))
            except OSError as exc:          # reported by the main thread
                sender_error.append(exc)

        thread = threading.Thread(target=send_all, daemon=True)
        started = time.monotonic()
        thread.start()
        got = {sender: [], reader: []}
        deadline = started + FLOOD_TIMEOUT
        expected_leave = left_announcement(ref, "stalled")

        def tally(messages):
            leaves = sum(m.raw == expected_leave for m in messages)
            return "%d chats and %d leaves" % (len(messages) - leaves, leaves)

        with selectors.DefaultSelector() as sel:
            for c in got:
                sel.register(c.sock, selectors.EVENT_READ, c)
            while len(got[reader]) < count + 1 or len(got[sender]) < count + 1:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or sender_error:
                    self.fail("after %.1fs, of %d chats and the stalled member's leave the "
                              "sender got %s and the reader %s; sender error: %s"
                              % (time.monotonic() - started, count, tally(got[sender]),
                                 tally(got[reader]), sender_error or "none"))
                for key, _ in sel.select(min(remaining, 1.0)):
                    c = key.data
                    got[c] += c.take_ready()
                    if c.eof:
                        c.fail("connection ended during the flood")
                    if c is reader:
                        with taken:
                            reader_has[0] = len(got[reader])
                            taken.notify()
        thread.join(TIMEOUT)
        for c, messages in got.items():
            leaves = [m for m in messages if m.raw == expected_leave]
            chats = [m.text for m in messages if m.raw != expected_leave]
            self.assertEqual(len(leaves), 1, "%s: the stalled member's leave was not announced "
                                             "exactly once" % c.label)
            self.assertEqual(len(chats), count, c.label)
            self.assertTrue(chats == texts, "%s: chats lost, duplicated or reordered" % c.label)
        reader.sync()
        sender.sync()

    def test_three_hundred_clients_in_ten_rooms(self):
        n_clients, n_rooms = 300, 10
        started = time.monotonic()
        clients = [self.client("c%d" % i) for i in range(n_clients)]
        rooms = [self.room("r%d" % k) for k in range(n_rooms)]
        for i, c in enumerate(clients):             # every JOIN sent before any reply is read
            c.send(join_request(rooms[i % n_rooms], "c%d" % i))
        refs, join_ids = {}, set()
        for i, c in enumerate(clients):
            msg = c.expect_kind("JOINED_CHATROOM")
            ref, jid = msg.reply.ref, msg.reply.join_id
            self.assertEqual(msg.raw, joined_reply(rooms[i % n_rooms], self.port, ref, jid))
            self.assertEqual(refs.setdefault(i % n_rooms, ref), ref)
            join_ids.add(jid)
            c.expect_message(joined_announcement(ref, "c%d" % i))
        self.assertEqual(len(join_ids), n_clients, "JOIN_IDs are not distinct")
        self.assertEqual(len(set(refs.values())), n_rooms, "ROOM_REFs are not distinct")
        # Every join has been handled: one chat per room must now reach all of its members,
        # preceded only by the announcements of those who joined after them, in one order.
        for k in range(n_rooms):
            clients[k].chat(refs[k], "hello room %d" % k)
        orders = {}
        for i, c in enumerate(clients):
            k = i % n_rooms
            hello = wire_chat(refs[k], "c%d" % k, "hello room %d" % k)
            msgs = c.read_until(lambda m, hello=hello: m.raw == hello)
            later = [m.reply.client_name for m in msgs[:-1]]
            for m in msgs[:-1]:
                self.assertEqual(m.raw, joined_announcement(refs[k], m.reply.client_name), c.label)
            orders.setdefault(k, []).append(["c%d" % i] + later)
        for k, seen in orders.items():
            full = max(seen, key=len)
            self.assertEqual(len(full), n_clients // n_rooms, "room %d" % k)
            for order in seen:
                start = full.index(order[0])
                self.assertEqual(order, full[start:], "room %d: announcements out of order" % k)
        clients[0].sync()
        self.assertLess(time.monotonic() - started, 10.0)


if __name__ == "__main__":
    unittest.main()
