"""The descriptor reserve's policy (policy/reserve.py): who makes way, who is closed while
descriptors are scarce."""
import sys
import unittest

from policy import reserve
from policy.reserve import Holders, Unproven


class Conn:
    """A connection as the reserve sees it (hashable by identity, as transport's are)."""

    def __init__(self, conn_id, peer_ip=""):
        self.conn_id, self.peer_ip = conn_id, peer_ip


conn = Conn


class UnprovenTests(unittest.TestCase):

    def setUp(self):
        self.unproven = Unproven(open_file_limit=10)      # crowded at 9
        self.a, self.b, self.c = conn(1), conn(2), conn(3)
        for index, c in enumerate((self.a, self.b, self.c)):
            self.unproven.add(c, now=float(index))

    def test_a_table_emptied_is_as_small_as_a_new_one(self):
        many = Unproven(open_file_limit=10)
        new_size = sys.getsizeof(many)
        for conn_id in range(10000):
            many.add(conn(conn_id), now=0.0)
        for conn_id in range(10000):
            many.forget(conn_id)
        many.forget(1)                                      # (forgetting twice: nothing)
        self.assertEqual(len(many), 0)
        self.assertLessEqual(sys.getsizeof(many), new_size)

    def test_forgetting_one_keeps_the_others_in_their_order(self):
        self.unproven.forget(self.b.conn_id)
        self.assertIs(self.unproven.maybe_make_way(), self.a)
        self.assertIs(self.unproven.maybe_make_way(), self.c)

    def test_the_longest_idle_makes_way(self):
        self.unproven.touched(self.a, now=5.0)              # a sent something: idle no longer
        self.assertIs(self.unproven.maybe_make_way(), self.b)
        self.assertIs(self.unproven.maybe_make_way(), self.c)
        self.assertIs(self.unproven.maybe_make_way(), self.a)
        self.assertIsNone(self.unproven.maybe_make_way())

    def test_idle_ones_are_closed_only_while_crowded(self):
        late = reserve.UNPROVEN_TIMEOUT + 1.5
        self.assertEqual(list(self.unproven.idle_too_long(late, connections=8)), [])
        closed = []
        for c in self.unproven.idle_too_long(late, connections=9):
            closed.append(c.conn_id)
            del self.unproven[c.conn_id]                     # (the caller closes it)
        self.assertEqual(closed, [1, 2])                     # c has not been idle long enough

    def test_a_connection_that_completes_a_request_is_proven(self):
        self.unproven.pop(self.a.conn_id)
        self.assertNotIn(self.a.conn_id, self.unproven)
        self.assertIs(self.unproven.maybe_make_way(), self.b)


class HoldersTests(unittest.TestCase):

    def setUp(self):
        self.holders = Holders()
        self.heard = {}

    def hold(self, conn_id, address, heard_at):
        c = conn(conn_id, address)
        self.heard[conn_id] = heard_at
        self.holders.add(c)
        return c

    def make_way(self):
        return self.holders.maybe_make_way(lambda c: self.heard[c.conn_id])

    def test_nobody_held_nobody_makes_way(self):
        self.assertIsNone(self.make_way())

    def test_the_address_holding_the_most_makes_way_with_its_longest_idle(self):
        lone = self.hold(1, "10.0.0.1", heard_at=0.0)       # idle longest, but alone
        self.hold(2, "10.0.0.2", heard_at=5.0)
        quiet = self.hold(3, "10.0.0.2", heard_at=3.0)
        loud = self.hold(4, "10.0.0.2", heard_at=9.0)
        self.assertIs(self.make_way(), quiet)
        self.holders.remove(quiet)
        self.holders.remove(self.holders.maybe_make_way(lambda c: self.heard[c.conn_id]))
        self.assertEqual(self.holders.held_by("10.0.0.2"), 1)
        self.assertIn(self.make_way().conn_id, (1, 4))      # one each now: either address
        self.holders.remove(loud)
        self.assertIs(self.make_way(), lone)

    def test_remove_is_idempotent_and_counts_follow(self):
        a = self.hold(1, "10.0.0.1", 0.0)
        self.holders.remove(a)
        self.holders.remove(a)
        self.assertEqual(self.holders.held_by("10.0.0.1"), 0)
        self.assertIsNone(self.make_way())
        self.hold(2, "10.0.0.3", 1.0)
        self.assertEqual(self.make_way().conn_id, 2)

    def test_only_a_sample_of_a_crowded_address_is_looked_at(self):
        for index in range(reserve.MAKE_WAY_SAMPLE + 10):   # the last ones idle longest...
            self.hold(index, "10.0.0.9", heard_at=1000.0 - index)
        chosen = self.make_way()                            # ...but only the oldest are read
        self.assertEqual(chosen.conn_id, reserve.MAKE_WAY_SAMPLE - 1)


if __name__ == "__main__":
    unittest.main()
