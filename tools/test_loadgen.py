"""Tests of tools/loadgen.py: that the tool counts right, not how fast anything is.

The argument tests run in memory. (Reading the server's output is sansio.replies.ReplyReader's job,
tested in tests/test_wire.py.) The scenario tests run each scenario tiny, in this process,
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
import socket
import subprocess
import sys
import threading
import time
import unittest
from typing import List, Tuple

from tools import kit, loadgen

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The longest any single wait may take. A passing test waits milliseconds; this only bounds how
# long a broken one hangs.
TIMEOUT = 5.0


def chat(ref: int, name: str, text: str) -> bytes:
    """A CHAT message as the server sends it, written out independently."""
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


# -- the command line ----------------------------------------------------------------------------

class ArgumentsTest(unittest.TestCase):

    def test_common_options_go_before_or_after_the_scenario(self):
        before = loadgen.parse_args(["--port", "9", "--timeout", "7", "fanout", "--rooms", "2"])
        after = loadgen.parse_args(["fanout", "--rooms", "2", "--port", "9", "--timeout", "7"])
        for args in (before, after):
            self.assertEqual((args.host, args.port, args.timeout, args.rooms),
                             ("127.0.0.1", 9, 7.0, 2))

    def test_help_lists_every_option_with_its_default_and_the_examples_line_by_line(self):
        proc = subprocess.run([sys.executable, "-m", "tools.loadgen", "--help"], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        text = proc.stdout.decode()
        for example in ("python3 -m tools.loadgen --port 8080 fanout --rooms 10",
                        "python3 -m tools.loadgen --port 8080 connections --count 2000",
                        "python3 -m tools.loadgen --spawn churn --clients 20"):
            self.assertIn("\n    " + example, text)
        for option in ("--timeout", "--stall", "--seed", "--spawn"):
            self.assertRegex(text, r"%s[^\n]*\n?[^\n]*\(default: " % option)
        for _run, _summary, options in loadgen.SCENARIOS.values():
            for option, _type, default, _help, _least, _most in options:
                self.assertRegex(text, r"%s .*\((required|default: %s)\)" % (option, default))


# -- the scenarios, against the real server ------------------------------------------------------

class ScenarioTest(unittest.TestCase):
    """Each scenario, tiny, against one server started for the class."""

    @classmethod
    def setUpClass(cls):
        cls.server = kit.ServerProcess()
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def run_scenario(self, *argv: str) -> dict:
        status, summary, stderr = run_loadgen(*argv, "--port", str(self.port), "--timeout", "10")
        self.assertTrue(summary["ok"], "%s\n%s" % (json.dumps(summary, indent=1), stderr))
        self.assertEqual(status, 0)
        self.assertEqual((summary["tool"], summary["failed"], summary["failures"],
                          summary["timed_out"], summary["stalled"]),
                         ("loadgen", 0, {}, False, False))
        return summary

    def test_fanout_counts_every_delivery_and_times_the_probe(self):
        summary = self.run_scenario("fanout", "--rooms", "2", "--members", "3",
                                    "--messages", "5")
        self.assertEqual(summary["expected"], 2 * 3 * 3 * 5)
        self.assertEqual(summary["delivered"], summary["expected"])
        self.assertEqual((summary["missing"], summary["extra"], summary["probes_lost"]), (0, 0, 0))
        self.assertGreaterEqual(summary["probes"], 1)
        self.assertIsNotNone(summary["probe_p99_ms"])
        self.assertGreater(summary["deliveries_per_s"], 0)
        self.assertTrue(summary["verdict"].startswith("PASS: "), summary["verdict"])

    def test_fanout_spawns_its_own_server(self):
        status, summary, _ = run_loadgen("--spawn", "fanout", "--rooms", "1", "--members", "2",
                                         "--messages", "2", "--timeout", "10")
        self.assertEqual((status, summary["ok"], summary["spawned"]), (0, True, True))
        self.assertEqual(summary["delivered"], 1 * 2 * 2 * 2)

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

    def test_churn_whose_server_goes_away_retries_at_a_bounded_rate(self):
        # The up-front check passes (something listens), then nothing does: every connect of
        # the run is refused.
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            placeholder.listen(1)
            args = loadgen.parse_args([
                "churn", "--port", str(placeholder.getsockname()[1]), "--clients", "2",
                "--seconds", "0.3", "--reply-timeout", "1", "--timeout", "5", "--quiet"])
            target = kit.Target(args)
        # closed now: nothing listens on the port any more
        report = kit.Report("loadgen", quiet=True)
        figures, _headline = loadgen.run_churn(args, target, report)
        summary = report.summary(figures, "")
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
                [sys.executable, "-m", "tools.loadgen", "connections", "--port", str(port),
                 "--count", "3", "--timeout", "5"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, timeout=TIMEOUT)
        self.assertLess(time.monotonic() - started, TIMEOUT)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)
        self.assertIn(b"no server at 127.0.0.1:%d" % port, proc.stderr)
        summary = json.loads(proc.stdout)
        self.assertEqual(summary["failures"], {"no_server": 1})
        self.assertFalse(summary["ok"])


if __name__ == "__main__":
    unittest.main()
