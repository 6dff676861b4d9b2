"""sansio/bus_scripts.py without Redis: the events the nodes publish, read back.

What the scripts themselves do is tested against a real redis-server in tests/test_bus.py.
"""
import unittest

from sansio.bus_scripts import Joined, Left, Said, decode_event


class EventFormatTests(unittest.TestCase):

    def test_each_kind_decodes(self):
        self.assertEqual(decode_event(b"J 3 9 n1 12 40 0\nroom one\nbo b"),
                         Joined(3, 9, "n1", 12, 40, False, "room one", "bo b"))
        self.assertEqual(decode_event(b"C 3 10 n1 12\nbo b\nline 1\nline 2"),
                         Said(3, 10, "n1", 12, "bo b", "line 1\nline 2"))
        self.assertEqual(decode_event(b"L 3 11 n1 1\n12 bo b\n13 al"),
                         Left(3, 11, "n1", True, ((12, "bo b"), (13, "al"))))

    def test_anything_else_is_refused(self):
        for data in (b"", b"X 1 2 n", b"C 1 two n 3\nx\ny", b"J 1 2 n 3\nr\nx", b"\xff"):
            with self.assertRaises((ValueError, IndexError, UnicodeDecodeError)):
                decode_event(data)


if __name__ == "__main__":
    unittest.main()
