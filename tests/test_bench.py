"""bench/compare.py end to end: a tiny fanout against all three servers, one round.

What a user sees: every server named in the table, with a ratio to the first and nothing
missing, and the JSON line saying the same. Everything runs on 127.0.0.1 on free ports; every
wait is bounded (compare.py's own, and the timeout of the run as a whole).
"""
import json
import os
import re
import subprocess
import sys
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARE = os.path.join(TOP, "bench", "compare.py")
SERVERS = ("project", "asyncio", "threaded")


class CompareTest(unittest.TestCase):

    def test_tiny_fanout_names_every_server_with_a_ratio_and_nothing_missing(self):
        # The project's server on 127.0.0.1, not start.sh's 0.0.0.0: tests stay on loopback.
        argv = [sys.executable, COMPARE, "--rooms", "2", "--members", "3", "--messages", "5",
                "--repeat", "1", "--timeout", "20",
                "--server", "project=%s Server.py 127.0.0.1 {port}" % sys.executable,
                "--server", "asyncio=%s -m bench.asyncio_peer {port}" % sys.executable,
                "--server", "threaded=%s -m bench.threaded_peer {port}" % sys.executable]
        done = subprocess.run(argv, cwd=TOP, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=50)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        lines = done.stdout.strip().splitlines()
        for name in SERVERS:
            row = [line for line in lines if re.match(r"rooms2x3\s+%s\s" % name, line)]
            self.assertEqual(len(row), 1, done.stdout)
            # ... deliveries/s, p50, p99, missing (0), ratio (min..max)
            self.assertRegex(row[0], r"\s0\s+\d+\.\d\d \(\d+\.\d\d\.\.\d+\.\d\d\)$")
        summary = json.loads(lines[-1])["results"]["rooms2x3"]
        self.assertEqual(sorted(summary), sorted(SERVERS))
        for name in SERVERS:
            self.assertEqual(summary[name]["missing"], 0)
            self.assertEqual(summary[name]["failed_rounds"], 0)
            self.assertGreater(summary[name]["ratio"], 0)
        self.assertEqual(summary["project"]["ratio"], 1.0)


if __name__ == "__main__":
    unittest.main()


class CarryOutTest(unittest.TestCase):

    def test_a_join_naming_a_callback_is_answered_by_the_peers_dispatch(self):
        from sansio.actions import carry_out
        from protocol import ChatProtocol
        app = ChatProtocol(port=1, student_id="1")
        app.connection_made(1, "127.0.0.1", "127.0.0.1")
        app.data_received(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 10.0.0.9\nPORT: 5000\nCLIENT_NAME: a\n")
        written = []
        carry_out(app.maybe_next_actions(1), lambda c, d: written.append(d), None, None)
        self.assertTrue(written[0].startswith(b"JOINED_CHATROOM: r\n"))
