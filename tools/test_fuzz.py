"""The fuzzer's slice of the unit-test suite: a short, seeded run of tools/fuzz.py against a
server it spawns (about 2 s), and the size-limit segmentation check on its own.

    python3 -m unittest -v tools.test_fuzz

A failure names the seed; `python3 -m tools.fuzz --spawn --count 2000 --seed SEED` repeats the
run and prints everything it found.
"""
import unittest

from tools import fuzz, kit

SEED = 20240611
COUNT = 2000


class FuzzSliceTest(unittest.TestCase):

    def test_seeded_run_has_no_crash_no_hang_and_consistent_rooms(self) -> None:
        args = fuzz.parse_args(["--spawn", "--count", str(COUNT), "--seed", str(SEED),
                                "--quiet"])
        summary = kit.run_tool("fuzz", fuzz.run_fuzz, args)
        # no hang, no server_exited, no protocol violation, no probe or room check failed
        self.assertEqual(summary["failures"], {},
                         "seed %d: %s" % (SEED, summary["failure_examples"]))
        self.assertTrue(summary["ok"])
        # it really did fuzz: requests of every kind, predicted replies checked, rooms made
        self.assertGreaterEqual(summary["requests_sent"], COUNT)
        for kind in ("HELO", "JOIN", "LEAVE", "CHAT", "DISCONNECT", "UNKNOWN", "GARBAGE"):
            self.assertIn(kind, summary["requests_by_kind"])
        self.assertGreater(summary["probe_replies_checked"], 500)
        self.assertGreater(summary["rooms_known"], 10)

    # Regression: the Framer once counted the first newline of a CHAT's closing blank line
    # against MAX_REQUEST_BYTES while it waited for the second one, so a CHAT of exactly the
    # limit was refused when a segment ended between the two newlines.
    def test_request_of_exactly_the_size_limit_gets_one_answer_however_it_is_split(self) -> None:
        server = kit.ServerProcess()
        self.addCleanup(server.stop)
        args = fuzz.parse_args(["--port", str(server.port), "--quiet"])
        target = kit.Target(args)
        fuzzer = fuzz.Fuzzer(args, target, kit.Report("fuzz", quiet=True))
        self.addCleanup(fuzzer.loop.close_all)
        _table, problems = fuzzer.check_segmentation()
        self.assertEqual(problems, [])


if __name__ == "__main__":
    unittest.main()
