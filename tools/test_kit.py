"""Tests of tools/kit.py, and of what every tool promises because it is built on it: one summary
schema, and a fast, one-line failure when nothing listens at the address it is given.

Every wait is bounded (TIMEOUT); the only server started is stopped by its pid.
"""
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from tools import kit

TIMEOUT = 10.0
TOOLS = ("fuzz", "soak", "many", "loadgen")
RUNNABLE = TOOLS + ("chat_client", "attack", "relay")     # every tool with a command line
COMMON_KEYS = ["tool", "ok", "verdict", "elapsed", "failed", "failures", "failure_examples"]


def unused_port() -> int:
    """A port nothing listens on (bound for a moment, then closed)."""
    with socket.socket() as sock:
        sock.bind((kit.HOST, 0))
        return sock.getsockname()[1]


class NoServerTest(unittest.TestCase):

    def test_every_tool_fails_within_five_seconds_with_one_line_and_a_summary(self):
        port = unused_port()
        for tool in TOOLS:
            with self.subTest(tool=tool):
                argv = [sys.executable, "-m", "tools." + tool, "--port", str(port)]
                if tool == "loadgen":
                    argv += ["fanout"]
                started = time.monotonic()
                done = subprocess.run(argv, cwd=kit.REPO_ROOT, stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=TIMEOUT)
                self.assertLess(time.monotonic() - started, 5.0)
                self.assertNotEqual(done.returncode, 0)
                lines = done.stderr.decode().splitlines()
                self.assertEqual(len(lines), 1, done.stderr)
                self.assertIn("no server at 127.0.0.1:%d" % port, lines[0])
                summary = json.loads(done.stdout)
                self.assertEqual(list(summary)[:len(COMMON_KEYS)], COMMON_KEYS)
                self.assertEqual((summary["tool"], summary["ok"], summary["failures"]),
                                 (tool, False, {"no_server": 1}))


class RunAsScriptTest(unittest.TestCase):

    def test_every_runnable_tool_runs_as_a_script_from_another_folder(self):
        # How people run a script: python3 path/to/tools/NAME.py, from wherever they are.
        with tempfile.TemporaryDirectory() as elsewhere:
            for tool in RUNNABLE:
                with self.subTest(tool=tool):
                    script = os.path.join(kit.REPO_ROOT, "tools", tool + ".py")
                    done = subprocess.run([sys.executable, script, "--help"], cwd=elsewhere,
                                          stdin=subprocess.DEVNULL, capture_output=True,
                                          timeout=TIMEOUT)
                    self.assertEqual((done.returncode, done.stderr), (0, b""))
                    self.assertIn(b"usage:", done.stdout)


class ReportTest(unittest.TestCase):

    def test_failures_are_counted_by_kind_with_a_few_examples_each(self):
        report = kit.Report("t", stream=io.StringIO())
        for i in range(kit.MAX_EXAMPLES + 3):
            report.fail("lost", "message %d" % i)
        report.fail("hang", "x" * 1000)
        summary = report.summary({"figure": 1}, "headline")
        self.assertEqual(list(summary)[:len(COMMON_KEYS)], COMMON_KEYS)
        self.assertEqual(summary["failures"], {"hang": 1, "lost": kit.MAX_EXAMPLES + 3})
        self.assertEqual(len(summary["failure_examples"]["lost"]), kit.MAX_EXAMPLES)
        self.assertLess(len(summary["failure_examples"]["hang"][0]), 1000)
        self.assertEqual((summary["ok"], summary["failed"], summary["figure"]),
                         (False, kit.MAX_EXAMPLES + 4, 1))
        self.assertTrue(summary["verdict"].startswith("FAIL: "), summary["verdict"])

    def test_no_failures_is_a_pass(self):
        summary = kit.Report("t", stream=io.StringIO()).summary({}, "all good")
        self.assertEqual((summary["ok"], summary["verdict"]), (True, "PASS: all good"))


class ServerProcessTest(unittest.TestCase):

    def test_starts_on_a_free_port_reports_memory_and_stops_by_pid(self):
        server = kit.ServerProcess()
        self.addCleanup(server.stop)
        ok, _seconds, problem = kit.helo_check(server.host, server.port, TIMEOUT)
        self.assertTrue(ok, problem)
        self.assertGreater(server.rss_kb(), 0)
        self.assertIsNotNone(server.open_file_limit())
        server.stop()
        self.assertFalse(server.alive())
        self.assertEqual(server.proc.returncode, 0)     # SIGTERM: a clean stop
        server.stop()                                   # idempotent


if __name__ == "__main__":
    unittest.main()
