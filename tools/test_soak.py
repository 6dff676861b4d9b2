"""The soak test's slice of the unit-test suite: tools/soak.py for 3 seconds, 30 clients in 5
rooms, some of them joining, leaving, disconnecting and vanishing, against a server it spawns.

    python3 -m unittest -v tools.test_soak

A failure names the seed; `python3 -m tools.soak --spawn --clients 30 --rooms 5 --seconds 3
--rate 10 --seed SEED` repeats the run and prints what went wrong.
"""
import unittest

from tools import kit, soak

SEED = 7


class SoakSliceTest(unittest.TestCase):

    def test_three_seconds_of_churn_lose_duplicate_and_reorder_nothing(self) -> None:
        args = soak.parse_args(["--spawn", "--clients", "30", "--rooms", "5", "--seconds", "3",
                                "--rate", "10", "--seed", str(SEED), "--quiet"])
        summary = kit.run_tool("soak", soak.run_soak, args)
        details = "seed %d: %s" % (SEED, summary["failure_examples"])
        for key in ("lost", "duplicated", "reordered", "outside_window", "stream_mismatches"):
            self.assertEqual(summary[key], 0, "%s: %s" % (key, details))
        # nothing else went wrong either, and the spawned server is still alive at the end
        self.assertEqual(summary["failures"], {}, details)
        self.assertTrue(summary["ok"])
        # it really did soak: thousands of deliveries checked, and clients came and went
        self.assertGreater(summary["expected_deliveries"], 1000)
        self.assertEqual(summary["delivered"], summary["expected_deliveries"])
        self.assertGreater(sum(summary["moves"].values()), 3)


if __name__ == "__main__":
    unittest.main()
