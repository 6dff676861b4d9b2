"""tools/attack_bus.py at its quick sizes: the departure and room-creation attacks on two bus nodes
and a throw-away Redis pass their targets. (The stall takes its 11 s and the watch after it:
`python3 -m tools.attack_bus stall`; tests/test_bus_scripts.py tests the heartbeat's clock
with short times.) Skipped without redis-server, as the other bus tests."""
import io
import unittest
from contextlib import redirect_stderr

from tests.redis_server import REDIS_SERVER, SKIP_REASON
from tools import attack_bus


@unittest.skipUnless(REDIS_SERVER, SKIP_REASON)
class AttackBusTests(unittest.TestCase):

    def attack(self, *argv: str) -> dict:
        with redirect_stderr(io.StringIO()):
            summary = attack_bus.run(attack_bus.parse_args(list(argv) + ["--quick", "--quiet"]))
        self.assertTrue(summary["ok"], summary["verdict"])
        return summary["scenarios"]

    def test_a_mass_departure_on_one_node_is_heard_on_the_other_without_stalling_it(self):
        figures = self.attack("departure")["departure"]
        self.assertEqual((figures["leaves_missing"], figures["leaves_duplicated"]), (0, 0))
        self.assertLessEqual(figures["probe_max_ms"], attack_bus.PROBE_MAX_TARGET_MS)

    def test_rooms_created_past_the_groups_maximum_leave_no_node_growing(self):
        figures = self.attack("rooms")["rooms"]
        self.assertGreater(figures["rooms_created"], figures["max_rooms"])
        self.assertEqual(figures["error_codes"].keys() - {"13"}, set())


if __name__ == "__main__":
    unittest.main()
