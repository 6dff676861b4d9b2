"""Water marks (policy/watermarks.py): one rule with hysteresis, each transport its numbers."""
import unittest

from policy.watermarks import (ABORT, BELOW, HIGH_WATER, LOW_WATER, OUTPUT_CAP, PAUSE,
                               TCP_MARKS, WaterMarks)
from transport.udp import UDP_MARKS


class WaterMarkTests(unittest.TestCase):

    def test_above_the_high_mark_pause_and_past_the_cap_abort(self):
        marks = WaterMarks(high=100, low=25, cap=1000)
        self.assertEqual([marks.over(n) for n in (100, 101, 1000, 1001)],
                         [BELOW, PAUSE, PAUSE, ABORT])

    def test_reading_resumes_only_below_the_low_mark(self):
        marks = WaterMarks(high=100, low=25, cap=1000)
        self.assertFalse(marks.may_resume(99))      # below high is not enough: hysteresis
        self.assertTrue(marks.may_resume(25))

    def test_marks_out_of_order_are_refused(self):
        with self.assertRaises(ValueError):
            WaterMarks(high=100, low=200)
        with self.assertRaises(ValueError):
            WaterMarks(high=100, low=10, cap=50)

    def test_tcp_uses_asyncios_numbers_and_udp_adds_what_may_be_in_flight(self):
        self.assertEqual((TCP_MARKS.high, TCP_MARKS.low, TCP_MARKS.cap),
                         (HIGH_WATER, LOW_WATER, OUTPUT_CAP))
        self.assertGreater(UDP_MARKS.high, TCP_MARKS.high)      # the hub checks the lowest
        self.assertEqual(UDP_MARKS.cap, OUTPUT_CAP)


if __name__ == "__main__":
    unittest.main()
