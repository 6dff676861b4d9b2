"""Tests of tools/loadgen.py: that the tool counts right, not how fast anything is.

The parser tests run in memory. The scenario tests run each scenario tiny, in this process,
against the real server (Server.py as a subprocess on an ephemeral port of 127.0.0.1), and check
the JSON summary and the exit status. Two tests use a stand-in server that loses messages or
is not there at all, to check that the tool notices and fails.

Every wait is bounded (TIMEOUT, and the tool's own --timeout and --stall); the server is
stopped by KILL_SERVICE, then by its pid if it is still alive.
"""
import contextlib
import io
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import List, Tuple

from tools import loadgen
from tools.loadgen import ChatCounter, split_messages

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.path.join(REPO_ROOT, "tools", "loadgen.py")
# The longest any single wait may take. A passing test waits milliseconds; this only bounds how
# long a broken one hangs.
TIMEOUT = 5.0


def chat(ref: int, name: str, text: str) -> bytes:
    """A CHAT message as the server sends it (PROTOCOL.md), written out independently."""
    return ("CHAT: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (ref, name, text)).encode()


def run_loadgen(*argv: str) -> Tuple[int, dict, str]:
    """Run loadgen.main(argv) here; return (exit status, JSON summary, standard error)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = loadgen.main(list(argv))
    lines = out.getvalue().splitlines()
    if len(lines) != 1:
        raise AssertionError("expected one JSON line on stdout, got %r" % out.getvalue())
    return status, json.loads(lines[0]), err.getvalue()


# -- the parser -----------------------------------------------------------------------------------

class SplitMessagesTest(unittest.TestCase):

    STREAM = (b"JOINED_CHATROOM: room one\nSERVER_IP: 127.0.0.1\nPORT: 8080\nROOM_REF: 3\n"
              b"JOIN_ID: 7\n" + chat(3, "ann", "ann has joined this chatroom.")
              + chat(3, "bob", "two\nlines") + b"ERROR_CODE: 6\nERROR_DESCRIPTION: not a member\n"
              + b"LEFT_CHATROOM: 3\nJOIN_ID: 7\n")

    def test_every_kind_of_message_is_cut_where_it_ends(self):
        messages, rest = split_messages(self.STREAM)
        self.assertEqual(rest, b"")
        self.assertEqual([m.kind for m in messages],
                         ["JOINED_CHATROOM", "CHAT", "CHAT", "ERROR_CODE", "LEFT_CHATROOM"])
        joined, announcement, two_lines, error, left = messages
        self.assertEqual(joined.fields["JOINED_CHATROOM"], "room one")
        self.assertEqual((joined.number("ROOM_REF"), joined.number("JOIN_ID")), (3, 7))
        self.assertTrue(announcement.is_chat(3, "ann", "ann has joined this chatroom."))
        self.assertTrue(two_lines.is_chat(3, "bob", "two\nlines"))
        self.assertEqual(error.number("ERROR_CODE"), 6)
        self.assertEqual(left.number("JOIN_ID"), 7)

    def test_a_stream_split_anywhere_gives_the_same_messages(self):
        whole, _ = split_messages(self.STREAM)
        for cut in range(1, len(self.STREAM)):
            first, rest = split_messages(self.STREAM[:cut])
            second, rest = split_messages(rest + self.STREAM[cut:])
            self.assertEqual(first + second, whole, "cut at %d" % cut)
            self.assertEqual(rest, b"")


class ChatCounterTest(unittest.TestCase):

    def feed_in_pieces(self, counter: ChatCounter, stream: bytes, cut: int) -> int:
        return counter.feed(stream[:cut]) + counter.feed(stream[cut:])

    def test_counts_each_message_once_wherever_the_stream_is_split(self):
        stream = chat(4, "ann", "x 1") + chat(4, "bob", "x 2") + chat(4, "ann", "x 3")
        for cut in range(len(stream) + 1):
            counter = ChatCounter(4)
            self.assertEqual(self.feed_in_pieces(counter, stream, cut), 3, "cut at %d" % cut)
            self.assertEqual(counter.leftover(), [])

    def test_does_not_take_a_blank_line_for_a_message(self):
        # Blank lines between messages are not messages (counting b"\n\n" would say 3).
        counter = ChatCounter(4)
        self.assertEqual(counter.feed(chat(4, "ann", "x 1") + b"\n\n" + chat(4, "bob", "x 2")), 2)
        self.assertEqual(counter.leftover(), [])

    def test_an_error_between_chats_is_reported_not_counted(self):
        error = b"ERROR_CODE: 6\nERROR_DESCRIPTION: not a member\n"
        counter = ChatCounter(4)
        self.assertEqual(counter.feed(chat(4, "ann", "x 1") + error + chat(4, "bob", "x 2")), 2)
        self.assertEqual([m.kind for m in counter.leftover()], ["ERROR_CODE"])

    def test_a_message_of_another_room_is_reported_not_counted(self):
        counter = ChatCounter(4)
        self.assertEqual(counter.feed(chat(4, "ann", "x 1") + chat(44, "bob", "x 2")), 1)
        self.assertEqual([m.raw for m in counter.leftover()],
                         ["CHAT: 44\nCLIENT_NAME: bob\nMESSAGE: x 2"])

    def test_an_unfinished_message_at_the_end_is_reported(self):
        counter = ChatCounter(4)
        self.assertEqual(counter.feed(chat(4, "ann", "x 1") + b"CHAT: 4\nCLIENT_NA"), 1)
        self.assertEqual(len(counter.leftover()), 1)


class ArgumentsTest(unittest.TestCase):

    def test_common_options_go_before_or_after_the_scenario(self):
        before = loadgen.parse_args(["--port", "9", "--timeout", "7", "fanout", "--rooms", "2"])
        after = loadgen.parse_args(["fanout", "--rooms", "2", "--port", "9", "--timeout", "7"])
        for args in (before, after):
            self.assertEqual((args.host, args.port, args.timeout, args.rooms),
                             ("127.0.0.1", 9, 7.0, 2))


# -- the scenarios, against the real server ------------------------------------------------------

class ScenarioTest(unittest.TestCase):
    """Each scenario, tiny, against one server started for the class."""

    server: subprocess.Popen
    port: int

    @classmethod
    def setUpClass(cls):
        cls.server_log = tempfile.TemporaryFile()
        cls.server = subprocess.Popen(
            [sys.executable, "Server.py", "127.0.0.1", "0", "--log-level", "warning"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=cls.server_log)
        try:
            cls.port = cls._read_port()
        except BaseException:
            cls._stop_server()
            raise

    @classmethod
    def _read_port(cls) -> int:
        """The port from the server's first line, 'listening on 127.0.0.1:PORT'."""
        line = b""
        deadline = time.monotonic() + TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(cls.server.stdout, selectors.EVENT_READ)
            while b"\n" not in line:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise RuntimeError("the server printed no address within %gs" % TIMEOUT)
                data = os.read(cls.server.stdout.fileno(), 4096)
                if not data:
                    cls.server_log.seek(0)
                    raise RuntimeError("the server exited: %r" % cls.server_log.read())
                line += data
        prefix = b"listening on 127.0.0.1:"
        if not line.startswith(prefix):
            raise RuntimeError("unexpected first line from the server: %r" % line)
        return int(line[len(prefix):line.index(b"\n")])

    @classmethod
    def tearDownClass(cls):
        cls._stop_server()

    @classmethod
    def _stop_server(cls):
        try:
            with socket.create_connection(("127.0.0.1", cls.port), timeout=TIMEOUT) as sock:
                sock.sendall(b"KILL_SERVICE\n")
            cls.server.wait(TIMEOUT)
        except (AttributeError, OSError, subprocess.TimeoutExpired):
            pass
        if cls.server.poll() is None:
            cls.server.kill()
            cls.server.wait(TIMEOUT)
        cls.server.stdout.close()
        cls.server_log.close()

    def run_scenario(self, *argv: str) -> dict:
        status, summary, stderr = run_loadgen(*argv, "--port", str(self.port), "--timeout", "10")
        self.assertTrue(summary["ok"], "%s\n%s" % (json.dumps(summary, indent=1), stderr))
        self.assertEqual(status, 0)
        self.assertEqual((summary["failed"], summary["timed_out"], summary["stalled"]),
                         (0, False, False))
        return summary

    def test_fanout_counts_every_delivery_and_times_the_probe(self):
        summary = self.run_scenario("fanout", "--rooms", "2", "--members", "3",
                                    "--messages", "5")
        self.assertEqual(summary["expected"], 2 * 3 * 3 * 5)
        self.assertEqual(summary["delivered"], summary["expected"])
        self.assertEqual((summary["missing"], summary["extra"], summary["probes_lost"]), (0, 0, 0))
        self.assertGreaterEqual(summary["probes"], 1)
        self.assertIsNotNone(summary["probe_p99_ms"])

    def test_connections_joins_everybody_and_reaches_every_member(self):
        summary = self.run_scenario("connections", "--count", "50", "--rooms", "3")
        self.assertEqual((summary["connected"], summary["joined"], summary["delivered"]),
                         (50, 50, 50))
        self.assertEqual(summary["missing"], 0)
        self.assertGreaterEqual(summary["nofile_soft"], summary["nofile_soft_before"])

    def test_churn_gets_every_reply_it_is_owed(self):
        summary = self.run_scenario("churn", "--clients", "10", "--seconds", "1",
                                    "--reply-timeout", "3")
        self.assertTrue(summary["all_replies_received"])
        self.assertGreater(summary["replies_expected"], 0)
        self.assertEqual(summary["replies_received"], summary["replies_expected"])
        kinds = summary["by_kind"]
        self.assertEqual(summary["operations"], sum(kinds.values()))
        self.assertGreater(kinds["connect"], 0)
        self.assertGreater(kinds["chat"], 0)


# -- the tool notices when the server gets it wrong ----------------------------------------------

class ForgetfulServer:
    """Answers each connection's JOIN as the protocol says (JOINED_CHATROOM and the joiner's
    own announcement; every joiner gets a room of its own) and then swallows everything: no chat
    is ever delivered."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        self.threads: List[threading.Thread] = []
        self.rooms: List[str] = []
        self.lock = threading.Lock()
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _addr = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._answer_join_then_swallow(conn)
        except OSError:
            pass                            # the client reset the connection (churn does)
        finally:
            conn.close()

    def _answer_join_then_swallow(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        data = b""
        while data.count(b"\n") < 4 and not self.stopping:
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                return
            data += chunk
        lines = data.decode().split("\n")
        room, name = lines[0].split(":", 1)[1].strip(), lines[3].split(":", 1)[1].strip()
        with self.lock:
            self.rooms.append(room)
            ref = len(self.rooms) - 1
        conn.sendall(("JOINED_CHATROOM: %s\nSERVER_IP: 127.0.0.1\nPORT: %d\nROOM_REF: %d\n"
                      "JOIN_ID: %d\n" % (room, self.port, ref, ref + 1)).encode()
                     + chat(ref, name, "%s has joined this chatroom." % name))
        while not self.stopping:
            try:
                if not conn.recv(65536):
                    return
            except socket.timeout:
                continue

    def stop(self) -> None:
        self.stopping = True
        self.accepter.join(TIMEOUT)
        for thread in self.threads:
            thread.join(TIMEOUT)
        self.listener.close()


class FailureDetectionTest(unittest.TestCase):

    def test_fanout_reports_lost_deliveries_and_fails(self):
        server = ForgetfulServer()
        self.addCleanup(server.stop)
        status, summary, _ = run_loadgen(
            "fanout", "--port", str(server.port), "--rooms", "2", "--members", "1",
            "--messages", "3", "--stall", "0.3", "--timeout", "5")
        self.assertEqual(status, 1)
        self.assertEqual((summary["expected"], summary["delivered"], summary["missing"]),
                         (6, 0, 6))
        self.assertTrue(summary["stalled"])
        self.assertGreater(summary["probes_lost"], 0)
        self.assertFalse(summary["ok"])

    def test_churn_reports_replies_that_never_come(self):
        server = ForgetfulServer()
        self.addCleanup(server.stop)
        status, summary, _ = run_loadgen(
            "churn", "--port", str(server.port), "--clients", "3", "--seconds", "0.2",
            "--reply-timeout", "0.3", "--timeout", "5")
        self.assertEqual(status, 1)
        self.assertEqual(summary["failures"], {"timeout": 3})    # each one's first chat
        self.assertEqual(summary["by_kind"]["join"], 3)
        self.assertFalse(summary["all_replies_received"])
        self.assertFalse(summary["ok"])

    def test_churn_against_nothing_retries_at_a_bounded_rate(self):
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            status, summary, _ = run_loadgen(
                "churn", "--port", str(placeholder.getsockname()[1]), "--clients", "2",
                "--seconds", "0.3", "--reply-timeout", "1", "--timeout", "5")
        self.assertEqual(status, 1)
        self.assertEqual(list(summary["failures"]), ["connect_failed"])
        # one try per client at once, then one every CHURN_RETRY_DELAY
        self.assertLessEqual(summary["failures"]["connect_failed"],
                             2 * (0.3 / loadgen.CHURN_RETRY_DELAY + 2))
        self.assertEqual(summary["operations"], 0)

    def test_a_server_that_is_not_there_fails_fast_from_the_command_line(self):
        # A bound socket that does not listen: connecting to its port is refused at once.
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            port = placeholder.getsockname()[1]
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, LOADGEN, "connections", "--port", str(port), "--count", "3",
                 "--timeout", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                timeout=TIMEOUT)
        self.assertLess(time.monotonic() - started, TIMEOUT)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        summary = json.loads(proc.stdout)
        self.assertEqual((summary["connected"], summary["failures"]), (0, {"connect_failed": 3}))
        self.assertFalse(summary["ok"])


if __name__ == "__main__":
    unittest.main()
