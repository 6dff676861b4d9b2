"""The descriptor reserve's policy (policy/reserve.py): who makes way, who is closed while
descriptors are scarce."""
import unittest
from types import SimpleNamespace

from policy import reserve
from policy.reserve import Unproven


def conn(conn_id):
    return SimpleNamespace(conn_id=conn_id)


class UnprovenTests(unittest.TestCase):

    def setUp(self):
        self.unproven = Unproven(open_file_limit=10)      # crowded at 9
        self.a, self.b, self.c = conn(1), conn(2), conn(3)
        for index, c in enumerate((self.a, self.b, self.c)):
            self.unproven.add(c, now=float(index))

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


if __name__ == "__main__":
    unittest.main()
