"""The memory budget (policy/memory.py): one figure, and who is evicted first past it."""
import unittest
from types import SimpleNamespace

from policy.memory import EVICTIONS_PER_TICK, Memory


def holder(name, out_bytes, in_bytes=0, transport_in=0):
    return SimpleNamespace(name=name, out_bytes=out_bytes, in_bytes=in_bytes,
                           transport_in=transport_in)


class MemoryTests(unittest.TestCase):

    def test_the_total_is_input_and_output_and_over_budget_is_past_it(self):
        memory = Memory(budget=100)
        memory.output, memory.input = 60, 40
        self.assertEqual(memory.total, 100)
        self.assertFalse(memory.over_budget)
        memory.input += 1
        self.assertTrue(memory.over_budget)

    def test_the_largest_holders_come_first_counting_input_and_output(self):
        conns = [holder("a", 10), holder("b", 5, 30), holder("c", 20)]
        order = [c.name for c in Memory(0).eviction_candidates(conns)]
        self.assertEqual(order, ["b", "c", "a"])

    def test_input_a_transport_holds_is_in_the_holders_share(self):
        conns = [holder("tcp", 100), holder("udp", 0, 10, 200)]
        order = [c.name for c in Memory(0).eviction_candidates(conns)]
        self.assertEqual(order, ["udp", "tcp"])

    def test_a_connection_holding_nothing_is_never_a_candidate(self):
        conns = [holder("idle", 0), holder("busy", 5), holder("idle2", 0, 0, 0)]
        self.assertEqual([c.name for c in Memory(0).eviction_candidates(conns)], ["busy"])

    def test_at_most_evictions_per_tick_candidates(self):
        conns = [holder(i, i) for i in range(EVICTIONS_PER_TICK * 3)]
        self.assertEqual(len(Memory(0).eviction_candidates(conns)), EVICTIONS_PER_TICK)


if __name__ == "__main__":
    unittest.main()
