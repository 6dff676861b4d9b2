"""Tests of tools/chat_client.py.

Most are end to end: the real server (Server.py) runs as a subprocess on an ephemeral port of
127.0.0.1, the client runs as a subprocess driven through its standard input, and a raw-socket
client ("bob") sees exactly the bytes the server sends. Two tests use a stub server in a thread
to make the server fail (ERROR_CODE, an unexpected close). A few test the client's sans-IO core
in memory.

Synchronisation: the client's output is read only once it has exited (communicate). When a
step must wait for the client, the test waits for what bob receives from the server instead;
no test sleeps. Every wait is bounded by TIMEOUT, and every process a test starts is ended by
its cleanup: the server by kit.ServerProcess.stop() (SIGTERM, then SIGKILL, by its pid).

The full-screen mode is tested the same way through a pseudo-terminal (pty): the client draws
with curses for TERM=xterm into it, VirtualTerminal below reads the drawing back into rows of
text, and each step waits (bounded) until the screen shows what a user would then see.
"""
import codecs
import fcntl
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import unicodedata
import unittest
from typing import Callable, List, Optional, Tuple

from sansio.replies import ChatMessage, ErrorReply, JoinedReply, LeftReply, ReplyReader, Unparsed
from sansio.wire import MAX_REQUEST_BYTES, Framer, chat_request, join_request
from tools import chat_client, kit
from tools.chat_client import ChatClient, Print, Send

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = [sys.executable, "-m", "tools.chat_client"]      # run from REPO_ROOT
# The longest any single wait may take. A passing test waits milliseconds; this only bounds how
# long a broken one hangs.
TIMEOUT = 5.0
# The child processes' standard streams are UTF-8, whatever the locale running the tests.
CHILD_ENV = dict(os.environ, PYTHONIOENCODING="utf-8")


# -- what the server sends, written out independently of the code under test ----

def joined(room: str, port: int, ref: int, join_id: int) -> str:
    return ("JOINED_CHATROOM: %s\nSERVER_IP: 127.0.0.1\nPORT: %d\nROOM_REF: %d\nJOIN_ID: %d\n"
            % (room, port, ref, join_id))


def chat(ref: int, name: str, text: str) -> str:
    return "CHAT: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (ref, name, text)


def joined_note(ref: int, name: str) -> str:
    return chat(ref, name, "%s has joined this chatroom." % name)


def left_note(ref: int, name: str) -> str:
    return chat(ref, name, "%s has left this chatroom." % name)


# -- helpers ----------------------------------------------------------------------------------

class RawClient:
    """A client on a plain socket, to see exactly what the server sends to somebody else."""

    def __init__(self, test: unittest.TestCase, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.join_id: Optional[int] = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        test.addCleanup(self.sock.close)
        self.test = test
        self.unread = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8"))

    def expect(self, text: str) -> None:
        """Read exactly `text` next (within TIMEOUT) and fail on anything else."""
        want = text.encode("utf-8")
        deadline = time.monotonic() + TIMEOUT
        while len(self.unread) < len(want):
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = self.sock.recv(65536)        # socket.timeout when the deadline passes
            if not data:
                break
            self.unread += data
        got, self.unread = self.unread[:len(want)], self.unread[len(want):]
        self.test.assertEqual(got.decode("utf-8", "replace"), text)

    def join(self, room: str, ref: int, join_id: int) -> None:
        self.send("JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n"
                  % (room, self.name))
        self.expect(joined(room, self.port, ref, join_id) + joined_note(ref, self.name))
        self.join_id = join_id

    def say(self, ref: int, text: str) -> None:
        """Post `text` and wait for the server's copy. Every member gets a chat in the same
        tick, so when this returns the server has sent it to every member; and since bob
        reads exactly his copy next, nothing else reached bob before it."""
        self.send("CHAT: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n"
                  % (ref, self.join_id, self.name, text))
        self.expect(chat(ref, self.name, text))


class StubServer:
    """A listening socket on 127.0.0.1 that reads the first request of its one connection and
    then sends `reply` (and waits for the client to close) or, with no reply, closes."""

    def __init__(self, test: unittest.TestCase, reply: Optional[bytes]) -> None:
        self.reply = reply
        self.first_request: Optional[bytes] = None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        test.addCleanup(self._close)

    def _serve(self) -> None:
        conn, _addr = self.listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            framer = Framer()
            frame = None
            while frame is None:
                data = conn.recv(4096)
                if not data:
                    return
                framer.receive_data(data)
                frame = framer.maybe_next_frame()
            self.first_request = frame
            if self.reply is not None:
                conn.sendall(self.reply)
                while conn.recv(4096):          # until the client closes its end
                    pass

    def _close(self) -> None:
        self.thread.join(TIMEOUT)
        self.listener.close()


def end_process(proc: subprocess.Popen) -> None:
    """Kill `proc` by its pid if it is still running; reap it; close its pipes."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(TIMEOUT)
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:                 # stdin: unsent input to a dead process
                    pass


class ClientTestCase(unittest.TestCase):

    def start_client(self, port: int, name: str = "alice", stdin=subprocess.PIPE,
                     args: Tuple[str, ...] = ()) -> subprocess.Popen:
        proc = subprocess.Popen(
            CLIENT + ["127.0.0.1", str(port), "--name", name, *args],
            cwd=REPO_ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=CHILD_ENV)
        self.addCleanup(end_process, proc)
        return proc

    def finish(self, proc: subprocess.Popen, script: str = "") -> Tuple[int, str, str]:
        """Write `script` to the client, end its input, wait for it to exit."""
        out, err = proc.communicate(script.encode("utf-8") if proc.stdin else None,
                                    timeout=TIMEOUT)
        return proc.returncode, out.decode("utf-8"), err.decode("utf-8")

    def assert_lines_in_order(self, text: str, expected: List[str]) -> None:
        lines = text.splitlines()
        at = 0
        for want in expected:
            try:
                at = lines.index(want, at) + 1
            except ValueError:
                self.fail("line %r not found (in this order) in:\n%s" % (want, text))


# -- against the real server ------------------------------------------------------------------

class ChatClientWithServerTest(ClientTestCase):

    def setUp(self) -> None:
        self.server = kit.ServerProcess(env=CHILD_ENV)
        self.addCleanup(self.server.stop)
        self.port = self.server.port
        self.bob = RawClient(self, self.port, "bob")

    def test_join_chat_both_ways_rooms_leave_and_quit(self) -> None:
        bob = self.bob
        bob.join("room1", ref=0, join_id=1)
        alice = self.start_client(self.port)
        alice.stdin.write(b"/join room1\n")
        alice.stdin.flush()
        bob.expect(joined_note(0, "alice"))
        alice.stdin.write(b"hello bob\n")
        alice.stdin.flush()
        bob.expect(chat(0, "alice", "hello bob"))
        bob.say(0, "hi alice")
        alice.stdin.write(b"/rooms\n/leave room1\n")
        alice.stdin.flush()
        bob.expect(left_note(0, "alice"))
        bob.say(0, "alice will not see this")

        status, out, err = self.finish(alice, "/quit\n")

        self.assertEqual((status, err), (0, ""))
        server_order = [
            "* joined [room1]: ROOM_REF 0, JOIN_ID 2, server 127.0.0.1:%d" % self.port,
            "[room1] alice: alice has joined this chatroom.",
            "[room1] alice: hello bob",
            "[room1] bob: hi alice",
            "* left [room1]: ROOM_REF 0",
            "[room1] alice: alice has left this chatroom.",
            "* disconnected",
        ]
        self.assert_lines_in_order(out, server_order)
        self.assert_lines_in_order(out, [server_order[0], "* [room1] ROOM_REF 0 (plain lines go "
                                         "here)", server_order[4]])
        self.assertNotIn("alice will not see this", out)
        self.assertEqual(len(out.splitlines()), len(server_order) + 1)

    def test_end_of_input_quits_after_lines_queued_behind_joins(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        bob.join("b", ref=1, join_id=1)
        alice = self.start_client(self.port)

        # All at once, then end of input: each line must wait for the JOINED it depends on.
        status, out, err = self.finish(alice, "/join a\n/join b\nto b\n/msg a to a\n")

        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "alice") + joined_note(1, "alice")
                   + chat(1, "alice", "to b") + chat(0, "alice", "to a")
                   + left_note(0, "alice") + left_note(1, "alice"))    # DISCONNECT: ref order
        self.assert_lines_in_order(out, ["[b] alice: to b", "[a] alice: to a",
                                         "[a] alice: alice has left this chatroom.",
                                         "[b] alice: alice has left this chatroom.",
                                         "* disconnected"])

    def test_msg_picks_the_longest_room_name_and_leave_changes_the_default_room(self) -> None:
        bob = self.bob
        bob.join("my", ref=0, join_id=1)
        bob.join("my room", ref=1, join_id=1)
        alice = self.start_client(self.port)

        status, out, err = self.finish(alice, "/join my\n/join my room\n/msg my room hi\n"
                                              "/msg my roomy\n/leave my room\nplain line\n")

        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "alice") + joined_note(1, "alice")
                   + chat(1, "alice", "hi") + chat(0, "alice", "roomy")
                   + left_note(1, "alice") + chat(0, "alice", "plain line")
                   + left_note(0, "alice"))
        self.assertIn("[my room] alice: hi\n", out)

    def test_local_mistakes_are_explained_and_nothing_is_sent(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)

        status, out, err = self.finish(alice, "posting before joining\n/leave a\n/frobnicate\n"
                                              "/join\n/msg a hi\n/join a\n/leave nowhere\n"
                                              "/msg nowhere hi\n/msg a\nstill running\n")

        self.assertEqual(status, 0)
        # bob reads exactly these, in a row: none of the mistakes reached the server.
        bob.expect(joined_note(0, "alice") + chat(0, "alice", "still running")
                   + left_note(0, "alice"))
        self.assertEqual(err.splitlines(), [
            "join a room first (/join ROOM), then type to post to it",
            "/leave: you are not in [a]; /rooms lists your rooms",
            "unknown command /frobnicate; /help lists the commands",
            "/join needs a room name: /join ROOM",
            "/msg ROOM TEXT: ROOM must be a room you are in (/rooms lists them), followed by "
            "the text",
            "/leave: you are not in [nowhere]; /rooms lists your rooms",
            "/msg ROOM TEXT: ROOM must be a room you are in (/rooms lists them), followed by "
            "the text",
            "/msg ROOM TEXT: ROOM must be a room you are in (/rooms lists them), followed by "
            "the text",
        ])
        self.assertIn("[a] alice: still running\n", out)

    def test_quit_exits_zero_while_input_is_still_open(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)
        alice.stdin.write(b"/join a\n/quit\nnot after quit\n")
        alice.stdin.flush()

        self.assertEqual(alice.wait(TIMEOUT), 0)

        bob.expect(joined_note(0, "alice") + left_note(0, "alice"))
        bob.say(0, "sync")          # bob's next bytes are his own: "not after quit" never came
        status, out, err = self.finish(alice)
        self.assertEqual(err, "")
        self.assertTrue(out.endswith("[a] alice: alice has left this chatroom.\n"
                                     "* disconnected\n"), out)

    def test_script_redirected_from_a_file(self) -> None:
        # A regular file as standard input: epoll (DefaultSelector on Linux) would refuse it.
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        with tempfile.TemporaryFile() as script:
            script.write(b"/join a\nfrom a file\n")
            script.seek(0)
            alice = self.start_client(self.port, stdin=script)
            status, out, err = self.finish(alice)
        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "alice") + chat(0, "alice", "from a file")
                   + left_note(0, "alice"))

    def test_multi_line_chat_is_indented_and_control_characters_are_defused(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)
        alice.stdin.write(b"/join a\n")
        alice.stdin.flush()
        bob.expect(joined_note(0, "alice"))
        bob.say(0, "line one\nline two \x1b[31mred?\u202e\u200b\u2028\nline three")

        status, out, err = self.finish(alice)

        self.assertEqual((status, err), (0, ""))
        self.assertIn("[a] bob: line one\n"
                      "    line two \ufffd[31mred?\ufffd\ufffd\ufffd\n"
                      "    line three\n", out)

    def test_name_and_room_with_unicode_and_spaces(self) -> None:
        bob = self.bob
        bob.join("salle café", ref=0, join_id=1)
        alice = self.start_client(self.port, name="Zoë K")
        status, out, err = self.finish(alice, "/join salle café\n/msg salle café ça va ?\n")
        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "Zoë K") + chat(0, "Zoë K", "ça va ?")
                   + left_note(0, "Zoë K"))
        self.assertIn("[salle café] Zoë K: ça va ?\n", out)

    def test_a_temporary_error_is_shown_and_the_session_goes_on(self) -> None:
        # More new rooms at once than one connection may create (50, then 5 a second): some
        # JOINs get ERROR_CODE 13, which says "wait", and the client carries on.
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)
        joins = "".join("/join new%d\n" % i for i in range(80))

        status, out, err = self.finish(alice, joins + "/join a\nstill here\n")

        self.assertEqual(status, 0, err)
        self.assertIn("ERROR 13: ", err)
        self.assertEqual([line for line in err.splitlines() if not line.startswith("ERROR 13: ")],
                         [])
        bob.expect(joined_note(0, "alice") + chat(0, "alice", "still here"))
        self.assert_lines_in_order(out, ["[a] alice: still here", "* disconnected"])

    def test_a_message_too_long_for_a_request_is_refused_before_sending(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)

        status, out, err = self.finish(alice, "/join a\n" + "x" * MAX_REQUEST_BYTES
                                       + "\nshort one\n")

        self.assertEqual(status, 0)
        self.assertTrue(err.startswith("not sent: the message is 65536 bytes of UTF-8, and a "
                                       "request may be at most 65536 bytes"), err)
        # bob reads exactly these, in a row: the long one never reached the server.
        bob.expect(joined_note(0, "alice") + chat(0, "alice", "short one")
                   + left_note(0, "alice"))


# -- against a stub server, to make the server fail -------------------------------------------

class ChatClientFailureTest(ClientTestCase):

    def test_error_code_is_printed_and_exits_1(self) -> None:
        stub = StubServer(self, reply=b"ERROR_CODE: 3\nERROR_DESCRIPTION: nope\n")
        alice = self.start_client(stub.port)
        status, out, err = self.finish(alice, "/join a\n")
        self.assertEqual((status, out, err), (1, "", "ERROR 3: nope\n"))
        self.assertEqual(stub.first_request,
                         b"JOIN_CHATROOM: a\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice")

    def test_unexpected_close_is_reported_and_exits_nonzero(self) -> None:
        stub = StubServer(self, reply=None)
        alice = self.start_client(stub.port)
        status, out, err = self.finish(alice, "/join a\n")
        self.assertNotEqual(status, 0)
        self.assertEqual(err, "the server closed the connection unexpectedly\n")

    def test_unreachable_server_exits_1(self) -> None:
        with socket.socket() as sock:           # a port that nobody listens on, once closed
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        alice = self.start_client(port)
        status, out, err = self.finish(alice)
        self.assertEqual(status, 1)
        self.assertTrue(err.startswith("cannot connect to 127.0.0.1:%d" % port), err)

    def test_a_name_the_server_would_refuse_is_refused_before_connecting(self) -> None:
        with socket.socket() as sock:           # nothing listens: connecting would fail
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        for name, says in (("x" * 257, "--name is 257 characters; at most 256, please"),
                           ("eve\u202etxt", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
                           ("a\x1bb", "U+001B"), ("   ", "--name must not be empty")):
            with self.subTest(says=says):
                status, out, err = self.finish(self.start_client(port, name=name))
                self.assertEqual(status, 2)
                self.assertIn(says, err)
                self.assertNotIn("cannot connect", err)

    def test_help_explains_usage_commands_and_exit_status(self) -> None:
        proc = subprocess.run(CLIENT + ["--help"], cwd=REPO_ROOT,
                              capture_output=True, timeout=TIMEOUT, env=CHILD_ENV)
        self.assertEqual(proc.returncode, 0)
        text = proc.stdout.decode("utf-8")
        for words in ("host", "port", "--name", "--plain", "/join ROOM", "/leave ROOM", "/rooms",
                      "/room ROOM",
                      "/msg ROOM TEXT", "the longest wins", "/quit", "end of input",
                      "exit status", "ERROR code: description", "13 (rooms",
                      "15 (servers"):
            self.assertIn(words, text)


# -- the full-screen mode, through a pseudo-terminal ------------------------------------------

class VirtualTerminal:
    """Just enough of an xterm to read back what curses draws for TERM=xterm: printing with
    auto-wrap, cursor addressing and motion, erasing, inserting and deleting characters and
    lines, scrolling regions and repeats (rep). Attributes, colours and modes change nothing
    that shows as text and are skipped. `raw` keeps every byte received."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.cells = [self.blank() for _ in range(rows)]
        self.y = self.x = 0
        self.top, self.bottom = 0, rows - 1          # the scrolling region
        self.saved = (0, 0)
        self.last = " "                              # the last character printed, for rep
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = ""                            # an escape sequence cut by a read
        self.raw = bytearray()

    def blank(self) -> List[str]:
        return [" "] * self.cols

    def row(self, y: int) -> str:
        return "".join(self.cells[y]).rstrip()

    def text(self) -> str:
        return "\n".join(self.row(y) for y in range(self.rows))

    @property
    def cursor(self) -> Tuple[int, int]:
        return self.y, min(self.x, self.cols - 1)

    def resize(self, rows: int, cols: int) -> None:
        self.cells = [(row + [" "] * cols)[:cols] for row in self.cells[:rows]]
        self.rows, self.cols = rows, cols
        self.cells += [self.blank() for _ in range(rows - len(self.cells))]
        self.top, self.bottom = 0, rows - 1
        self.y, self.x = min(self.y, rows - 1), min(self.x, cols - 1)

    def feed(self, data: bytes) -> None:
        self.raw += data
        text, self.pending = self.pending + self.decoder.decode(data), ""
        at = 0
        while at < len(text):
            if text[at] == "\x1b":
                end = self._escape_end(text, at)
                if end is None:
                    self.pending = text[at:]
                    return
                self._escape(text[at:end])
                at = end
            else:
                self._char(text[at])
                at += 1

    @staticmethod
    def _escape_end(text: str, at: int) -> Optional[int]:
        """Where the escape sequence at text[at] ends, or None if it is not all here yet."""
        if at + 1 >= len(text):
            return None
        kind = text[at + 1]
        if kind == "[":                              # CSI: parameters, then a final byte
            for end in range(at + 2, len(text)):
                if "\x40" <= text[end] <= "\x7e":
                    return end + 1
            return None
        if kind == "]":                              # OSC: up to BEL or ESC backslash
            for end in range(at + 2, len(text)):
                if text[end] == "\x07":
                    return end + 1
                if text[end:end + 2] == "\x1b\\":
                    return end + 2
            return None
        if kind in "()*+#":                          # character sets: one more character
            return at + 3 if at + 2 < len(text) else None
        return at + 2

    def _escape(self, sequence: str) -> None:
        kind = sequence[1]
        if kind == "[":
            self._csi(sequence[2:-1], sequence[-1])
        elif kind == "7":
            self.saved = (self.y, self.x)
        elif kind == "8":
            self.y, self.x = self.saved
        elif kind == "M":                            # reverse index
            if self.y == self.top:
                self._scroll_down(1)
            else:
                self.y = max(0, self.y - 1)
        elif kind == "D":
            self._index()
        elif kind == "E":
            self.x = 0
            self._index()

    def _char(self, char: str) -> None:
        if char == "\r":
            self.x = 0
        elif char == "\n":
            self._index()
        elif char == "\b":
            self.x = max(0, min(self.x, self.cols - 1) - 1)
        elif char == "\t":
            self.x = min(self.cols - 1, (self.x // 8 + 1) * 8)
        elif char >= " " and char != "\x7f":
            self._put(char)

    def _put(self, char: str) -> None:
        width = 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if unicodedata.combining(char):
            return
        if self.x + width > self.cols:               # auto-wrap, as xterm (am, xenl)
            self.x = 0
            self._index()
        self.cells[self.y][self.x] = char
        if width == 2:
            self.cells[self.y][self.x + 1] = ""
        self.x += width
        self.last = char

    def _index(self) -> None:
        if self.y == self.bottom:
            self._scroll_up(1)
        elif self.y < self.rows - 1:
            self.y += 1

    def _scroll_up(self, count: int, at: Optional[int] = None) -> None:
        for _ in range(count):
            del self.cells[self.top if at is None else at]
            self.cells.insert(self.bottom, self.blank())

    def _scroll_down(self, count: int, at: Optional[int] = None) -> None:
        for _ in range(count):
            del self.cells[self.bottom]
            self.cells.insert(self.top if at is None else at, self.blank())

    def _csi(self, params: str, final: str) -> None:
        if params[:1] in ("?", ">", "!", "="):       # private modes and resets: no text
            return
        numbers = [int(p) if p.isdigit() else 0 for p in params.split(";")] if params else []

        def arg(index: int, default: int = 1) -> int:
            return (numbers[index] if index < len(numbers) else 0) or default

        row = self.cells[self.y]
        x = min(self.x, self.cols - 1)
        if final in "Hf":
            self.y, self.x = min(self.rows, arg(0)) - 1, min(self.cols, arg(1)) - 1
        elif final == "A":
            self.y = max(0, self.y - arg(0))
        elif final == "B":
            self.y = min(self.rows - 1, self.y + arg(0))
        elif final == "C":
            self.x = min(self.cols - 1, x + arg(0))
        elif final == "D":
            self.x = max(0, x - arg(0))
        elif final in "G`":
            self.x = min(self.cols, arg(0)) - 1
        elif final == "d":
            self.y = min(self.rows, arg(0)) - 1
        elif final == "K":
            start, end = {0: (x, self.cols), 1: (0, x + 1)}.get(arg(0, 0), (0, self.cols))
            row[start:end] = [" "] * (end - start)
        elif final == "J":
            mode = arg(0, 0)
            if mode == 0:
                row[x:] = [" "] * (self.cols - x)
                lines = range(self.y + 1, self.rows)
            elif mode == 1:
                row[:x + 1] = [" "] * (x + 1)
                lines = range(0, self.y)
            else:
                lines = range(self.rows)
            for y in lines:
                self.cells[y] = self.blank()
        elif final == "X":
            end = min(self.cols, x + arg(0))
            row[x:end] = [" "] * (end - x)
        elif final == "P":
            count = min(arg(0), self.cols - x)
            self.cells[self.y] = row[:x] + row[x + count:] + [" "] * count
        elif final == "@":
            self.cells[self.y] = (row[:x] + [" "] * arg(0) + row[x:])[:self.cols]
        elif final == "L" and self.top <= self.y <= self.bottom:
            self._scroll_down(arg(0), at=self.y)
        elif final == "M" and self.top <= self.y <= self.bottom:
            self._scroll_up(arg(0), at=self.y)
        elif final == "S":
            self._scroll_up(arg(0))
        elif final == "T":
            self._scroll_down(arg(0))
        elif final == "r":
            self.top, self.bottom = arg(0) - 1, min(self.rows, arg(1, self.rows)) - 1
            self.y = self.x = 0
        elif final == "b":                           # rep: the last character, again
            for _ in range(arg(0)):
                self._put(self.last)
        # "m" (attributes, colours), "h" and "l" (modes), "t" (window): nothing shows


# The terminal the full-screen client is tested in: what curses reads, what the tests decode.
PTY_ENV = dict(CHILD_ENV, TERM="xterm", LC_ALL="C.UTF-8", LANG="C.UTF-8")
for _variable in ("LINES", "COLUMNS"):              # they would override the pty's size
    PTY_ENV.pop(_variable, None)
# Keys as xterm sends them once curses has switched it to its application keypad mode.
LEFT, UP, HOME, END, DELETE = "\x1bOD", "\x1bOA", "\x1bOH", "\x1bOF", "\x1b[3~"
# What curses sends to leave the alternate screen: the screen is restored after it.
LEAVE_ALTERNATE_SCREEN = b"\x1b[?1049l"


def set_window_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyClient:
    """chat_client in a pseudo-terminal of rows x cols, and a VirtualTerminal reading it."""

    def __init__(self, test: unittest.TestCase, port: int, name: str, rows: int = 24,
                 cols: int = 80, term: str = "xterm", args: Tuple[str, ...] = ()) -> None:
        self.test = test
        master, slave = os.openpty()
        set_window_size(slave, rows, cols)
        # A session of its own: the test's terminal and its signals stay out of it.
        self.proc = subprocess.Popen(CLIENT + ["127.0.0.1", str(port), "--name", name, *args],
                                     cwd=REPO_ROOT, stdin=slave, stdout=slave, stderr=slave,
                                     env=dict(PTY_ENV, TERM=term), start_new_session=True)
        os.close(slave)
        self.master = master
        self.screen = VirtualTerminal(rows, cols)
        self.closed = False                 # the client's end of the pty is gone
        test.addCleanup(self.end)

    def end(self) -> None:
        """Kill the client by its pid if it still runs; reap it; close the pty."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        os.close(self.master)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode("utf-8"))

    def read_some(self, timeout: float) -> None:
        if self.closed or not select.select([self.master], [], [], max(0.0, timeout))[0]:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:                     # EIO: the client has exited and closed its end
            data = b""
        if not data:
            self.closed = True
        self.screen.feed(data)

    def wait_for(self, what: str, ready: Callable[[VirtualTerminal], bool]) -> None:
        """Read the client's output until ready(screen) holds; fail after TIMEOUT."""
        deadline = time.monotonic() + TIMEOUT
        while not ready(self.screen):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                self.test.fail("the screen never showed %s; it shows:\n%s"
                               % (what, self.screen.text()))
            self.read_some(remaining)

    def wait_for_row(self, pattern: str) -> None:
        """Some row matches the regular expression `pattern` whole."""
        self.wait_for(repr(pattern), lambda screen: any(
            re.fullmatch(pattern, screen.row(y)) for y in range(screen.rows)))

    def wait_for_input(self, text: str, cursor: Optional[int] = None) -> None:
        """The bottom row is `text`, and the cursor is on it at `cursor` (its end if None)."""
        column = len(text) if cursor is None else cursor

        def ready(screen: VirtualTerminal) -> bool:
            return (screen.row(screen.rows - 1) == text.rstrip()
                    and screen.cursor == (screen.rows - 1, column))
        self.wait_for("the input line %r, cursor at %d" % (text, column), ready)

    def wait_for_exit(self) -> Tuple[int, str]:
        """The exit status, and the text the client wrote once the screen was restored."""
        deadline = time.monotonic() + TIMEOUT
        while not self.closed and time.monotonic() < deadline:
            self.read_some(deadline - time.monotonic())
        status = self.proc.wait(max(0.0, deadline - time.monotonic()))
        raw = bytes(self.screen.raw)
        self.test.assertIn(LEAVE_ALTERNATE_SCREEN, raw)
        restored = VirtualTerminal(self.screen.rows, self.screen.cols)
        restored.feed(raw.rpartition(LEAVE_ALTERNATE_SCREEN)[2])
        return status, restored.text()


STAMP = r"\d\d:\d\d "                                # the time in front of each line


class FullScreenTest(unittest.TestCase):

    def setUp(self) -> None:
        self.server = kit.ServerProcess(env=CHILD_ENV)
        self.addCleanup(self.server.stop)
        self.port = self.server.port
        self.bob = RawClient(self, self.port, "bob")
        self.bob.join("room1", ref=0, join_id=1)

    def start(self, rows: int = 24, cols: int = 80) -> PtyClient:
        alice = PtyClient(self, self.port, "alice", rows, cols)
        alice.wait_for_row(r" connected \| alice @ 127\.0\.0\.1:%d \| no room: /join ROOM"
                           % self.port)
        alice.wait_for_input("> ")
        alice.type("/join room1\r")
        alice.wait_for_row(STAMP + re.escape("[room1] alice: alice has joined this chatroom."))
        alice.wait_for_input("[room1] ")
        self.bob.expect(joined_note(0, "alice"))
        return alice

    def test_typing_a_message_arriving_mid_line_editing_history_and_quit(self) -> None:
        bob = self.bob
        alice = self.start()
        alice.type("hello wrld")
        alice.wait_for_input("[room1] hello wrld")

        bob.say(0, "hi alice")      # arrives while alice is half-way through her line
        alice.wait_for_row(STAMP + re.escape("[room1] bob: hi alice"))
        alice.wait_for_input("[room1] hello wrld")      # untouched, cursor still at its end

        alice.type(LEFT * 3 + "o")
        alice.wait_for_input("[room1] hello world", cursor=len("[room1] hello wo"))
        alice.type("\r")
        bob.expect(chat(0, "alice", "hello world"))
        alice.wait_for_input("[room1] ")

        alice.type("abXc" + LEFT + LEFT + DELETE + HOME + DELETE + END + "\x7f")
        alice.wait_for_input("[room1] b")
        alice.type("\x15junk words\x17")                # Ctrl-U, then Ctrl-W
        alice.wait_for_input("[room1] junk ")
        alice.type("\x01\x0b" + "second\r")             # Ctrl-A, Ctrl-K: empty again
        bob.expect(chat(0, "alice", "second"))

        alice.type(UP + UP)                             # history: the line before "second"
        alice.wait_for_input("[room1] hello world")
        alice.type("\r")
        bob.expect(chat(0, "alice", "hello world"))
        alice.wait_for_row(STAMP + re.escape("[room1] alice: second"))

        alice.type("/quit\r")
        status, after = alice.wait_for_exit()
        self.assertEqual(status, 0)
        self.assertIn("* disconnected", after)          # said again on the restored screen
        bob.expect(left_note(0, "alice"))

    def test_hostile_characters_from_others_never_reach_the_terminal(self) -> None:
        alice = self.start()
        self.bob.say(0, "see \u202egnp.exe \x1b]0;pwned\x07 zero\u200bwidth\u2028end")
        alice.wait_for_row(STAMP + re.escape("[room1] bob: see \ufffdgnp.exe \ufffd]0;pwned"
                                             "\ufffd zero\ufffdwidth\ufffdend"))
        for raw in ("\u202e", "\x1b]0;", "\x07", "\u200b", "\u2028"):
            self.assertNotIn(raw.encode("utf-8"), bytes(alice.screen.raw))

    def test_a_resize_redraws_the_layout_to_the_new_size(self) -> None:
        alice = self.start(rows=24, cols=80)
        alice.type("still here")
        alice.wait_for_input("[room1] still here")
        set_window_size(alice.master, 12, 40)
        alice.screen.resize(12, 40)                     # as the terminal itself would
        os.kill(alice.proc.pid, signal.SIGWINCH)        # the kernel tells a controlling tty's
        alice.wait_for("the status line on row 10", lambda screen: screen.row(10).startswith(
            " connected | alice @ 127.0.0.1:%d" % self.port))
        alice.wait_for_input("[room1] still here")


class FullScreenFailureTest(unittest.TestCase):

    def test_a_terminal_that_cannot_move_its_cursor_gets_the_line_mode(self) -> None:
        server = kit.ServerProcess(env=CHILD_ENV)
        self.addCleanup(server.stop)
        alice = PtyClient(self, server.port, "alice", cols=120, term="dumb")
        alice.wait_for_row(re.escape("* no full screen (the terminal (TERM=dumb) cannot move "
                                     "its cursor): the line mode"))
        alice.wait_for_row(">")                         # the line mode's prompt
        alice.type("/quit\r")
        self.assertEqual(alice.proc.wait(TIMEOUT), 0)

    def test_error_code_ends_the_client_and_stays_readable(self) -> None:
        stub = StubServer(self, reply=b"ERROR_CODE: 3\nERROR_DESCRIPTION: nope\n")
        alice = PtyClient(self, stub.port, "alice")
        alice.wait_for_input("> ")
        alice.type("/join a\r")
        status, after = alice.wait_for_exit()
        self.assertEqual(status, 1)
        self.assertIn("ERROR 3: nope", after)
        self.assertEqual(stub.first_request,
                         b"JOIN_CHATROOM: a\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice")


# -- the sans-IO core, in memory ----------------------------------------------------------------

class ChatClientCoreTest(unittest.TestCase):

    def test_reader_reassembles_replies_fed_a_byte_at_a_time(self) -> None:
        stream = (b"JOINED_CHATROOM: my room\r\nSERVER_IP: 10.0.0.1\nPORT: 80\nROOM_REF: 3\n"
                  b"JOIN_ID: 9\n" + chat(3, "bob", "two\nlines").encode()
                  + b"LEFT_CHATROOM: 3\nJOIN_ID: 9\nERROR_CODE: 6\nERROR_DESCRIPTION: no: really\n"
                  + b"SOMETHING_NEW\n")
        reader = ReplyReader()
        messages = []
        for i in range(len(stream)):
            reader.receive_data(stream[i:i + 1])
            message = reader.maybe_next_reply()
            while message is not None:
                messages.append(message)
                message = reader.maybe_next_reply()
        self.assertEqual(messages[:4], [
            JoinedReply("my room", "10.0.0.1", 80, 3, 9),
            ChatMessage(3, "bob", "two\nlines"),
            LeftReply(3, 9),
            ErrorReply(6, "no: really"),
        ])
        self.assertIsInstance(messages[4], Unparsed)
        self.assertEqual(messages[4].text, "SOMETHING_NEW")
        self.assertEqual(ChatClient("alice").message_received(messages[4]),
                         [Print("* the server says: SOMETHING_NEW")])

    def test_lines_typed_during_a_join_wait_for_its_reply(self) -> None:
        client = ChatClient("alice")
        self.assertEqual(client.line_typed("/join a"),
                         [Send(join_request("a", "alice"))])
        self.assertEqual(client.line_typed("hello"), [])
        self.assertFalse(client.ready_for_input())
        reply = ReplyReader()
        reply.receive_data(joined("a", 80, 7, 4).encode())
        actions = client.message_received(reply.maybe_next_reply())
        self.assertEqual(actions[1:], [Send(chat_request(7, 4, "alice", "hello"))])
        self.assertIsInstance(actions[0], Print)
        self.assertTrue(client.ready_for_input())

    def test_temporary_errors_go_on_and_the_others_end_the_client(self) -> None:
        client = ChatClient("alice")
        client.line_typed("/join a")
        self.assertEqual(client.line_typed("hello"), [])        # waits for the JOIN's answer
        reader = ReplyReader()
        reader.receive_data(b"ERROR_CODE: 15\nERROR_DESCRIPTION: try again\n"
                            b"ERROR_CODE: 13\nERROR_DESCRIPTION: wait\n"
                            b"ERROR_CODE: 6\nERROR_DESCRIPTION: not a member\n")
        # the JOIN is refused for now: the line behind it runs (no room yet, so it is explained)
        self.assertEqual(client.message_received(reader.maybe_next_reply()), [
            chat_client.PrintError("ERROR 15: try again"),
            chat_client.PrintError("join a room first (/join ROOM), then type to post to it")])
        self.assertTrue(client.ready_for_input())
        self.assertEqual(client.message_received(reader.maybe_next_reply()),
                         [chat_client.PrintError("ERROR 13: wait")])
        self.assertEqual(client.message_received(reader.maybe_next_reply()),
                         [chat_client.PrintError("ERROR 6: not a member"), chat_client.Exit(1)])

    def test_a_message_too_long_is_refused_and_one_that_fits_is_sent(self) -> None:
        client = ChatClient("alice")
        reply = ReplyReader()
        reply.receive_data(joined("a", 80, 0, 1).encode())
        client.message_received(reply.maybe_next_reply())
        overhead = len(chat_request(0, 1, "alice", ""))
        fits = "\u00e9" * ((MAX_REQUEST_BYTES - overhead) // 2)   # 2 bytes each
        self.assertEqual(client.line_typed(fits),
                         [Send(chat_request(0, 1, "alice", fits))])
        [refused] = client.line_typed(fits + "\u00e9")
        self.assertIsInstance(refused, chat_client.PrintError)
        self.assertIn("%d of them for your text" % (MAX_REQUEST_BYTES - overhead),
                      refused.text)

    def test_malformed_reply_exits_1(self) -> None:
        client = ChatClient("alice")
        reader = ReplyReader()
        reader.receive_data(b"CHAT: zero\nCLIENT_NAME: bob\nMESSAGE: hi\n\n")
        actions = client.message_received(reader.maybe_next_reply())
        self.assertEqual(actions[-1], chat_client.Exit(1))


    def test_room_and_tab_change_where_plain_lines_go(self) -> None:
        client = ChatClient("alice")
        for room, ref in (("a", 0), ("b", 1), ("c", 2)):
            reply = ReplyReader()
            reply.receive_data(joined(room, 80, ref, 4).encode())
            client.message_received(reply.maybe_next_reply())
        self.assertEqual(client.current, "c")           # the room joined last
        self.assertEqual(client.line_typed("/room a"), [Print("* plain lines go to [a]")])
        self.assertEqual(client.line_typed("hi"),
                         [Send(chat_request(0, 4, "alice", "hi"))])
        self.assertEqual(client.line_typed("/room nowhere"), [chat_client.PrintError(
            "/room: you are not in [nowhere]; /rooms lists your rooms")])
        client.cycle_room(1)
        self.assertEqual(client.current, "b")
        client.cycle_room(-2)
        self.assertEqual(client.current, "c")           # round the end
        self.assertIn(Print("* [c] ROOM_REF 2 (plain lines go here)"), client.line_typed("/rooms"))

    def test_leaving_the_current_room_goes_back_to_the_room_joined_last(self) -> None:
        client = ChatClient("alice")
        reply = ReplyReader()
        reply.receive_data((joined("a", 80, 0, 4) + joined("b", 80, 1, 4) + joined("c", 80, 2, 4)
                            + "LEFT_CHATROOM: 0\nJOIN_ID: 4\n" + "LEFT_CHATROOM: 2\nJOIN_ID: 4\n"
                            ).encode())
        for _ in range(3):
            client.message_received(reply.maybe_next_reply())
        client.line_typed("/room a")
        client.message_received(reply.maybe_next_reply())    # a, the current room, is left
        self.assertEqual(client.current, "c")
        client.message_received(reply.maybe_next_reply())    # and then c
        self.assertEqual(client.current, "b")


if __name__ == "__main__":
    unittest.main()
