"""Tests of tools/attack_udp.py: each case, small, against a server this test starts (Server.py
of this checkout on 127.0.0.1 and a port the kernel picks), must PASS; the same cases against
the server before per-address limits are what docs/UDP.md's limits table answers.

The tool runs in this process (its main()), bounded by its own --seconds and counts; the server
it starts is stopped by its pid at the end of every run, pass or fail.
"""
import contextlib
import io
import re
import unittest
from typing import List, Tuple

from tools import attack_udp


def run_case(*argv: str) -> Tuple[int, List[str]]:
    """attack_udp.main(argv) here: (exit status, the lines it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = attack_udp.main(list(argv) + ["--seconds", "60"])
    return status, out.getvalue().splitlines()


class QuickCasesTest(unittest.TestCase):

    def check(self, case: str, *options: str) -> List[str]:
        status, lines = run_case(case, *options)
        self.assertTrue(lines and lines[-1].startswith("PASS %s: " % case), lines)
        self.assertEqual(status, 0)
        return lines

    def test_one_address_is_held_to_its_cap_and_newcomers_are_served(self):
        lines = self.check("lockout", "--sessions", "4200", "--newcomers", "3")
        held, rejected = re.search(r"(\d+) sessions held .* (\d+) REJECTed", lines[0]).groups()
        self.assertEqual((int(held), int(rejected)), (4096, 104))
        self.assertIn("3 of 3 served", lines[1])

    def test_replays_from_elsewhere_do_not_keep_a_vanished_client(self):
        self.check("replay", "--idle-timeout", "2", "--replay-seconds", "6")

    def test_a_newcomer_gets_its_callback_with_the_table_held(self):
        lines = self.check("callbacks", "--sessions", "1100", "--addresses", "10")
        self.assertIn("1100 JOINs", lines[0])

    def test_a_broadcast_to_stalled_members_is_held_once(self):
        lines = self.check("stalled", "--sessions", "300", "--addresses", "3", "--chats", "10")
        self.assertIn("300 sessions", lines[0])
        growth = int(re.search(r"growth (\d+) MiB", lines[1]).group(1))
        self.assertLess(growth, 48)                 # a copy each of 600 KB: 180 MB

    def test_held_segments_make_their_holders_go_not_idle_members(self):
        lines = self.check("held", "--sessions", "200", "--addresses", "2",
                           "--memory-budget", "8")
        self.assertGreater(int(re.search(r"UDP sessions reset: (\d+)", lines[0]).group(1)), 0)

    def test_a_hello_flood_leaves_sessions_and_newcomers_served(self):
        self.check("flood", "--kind", "hello", "--flooders", "1", "--rate", "20000",
                   "--flood-seconds", "3")

    def test_a_bad_case_is_a_usage_error(self):
        with contextlib.redirect_stderr(io.StringIO()), self.assertRaises(SystemExit) as caught:
            attack_udp.main(["no-such-case"])
        self.assertEqual(caught.exception.code, 2)


if __name__ == "__main__":
    unittest.main()
