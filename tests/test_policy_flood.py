"""Flood control's meter (policy/flood.py) with plain numbers for the time."""
import unittest

from policy.flood import InputLimits, Meter


class MeterTests(unittest.TestCase):

    def test_bytes_within_the_burst_cost_no_wait(self):
        meter = Meter(InputLimits(1000, 5000, 0, 0), now=0.0)
        self.assertEqual(meter.charge_bytes(5000, 0.0), 0.0)

    def test_bytes_past_the_burst_wait_for_the_debt_to_refill(self):
        meter = Meter(InputLimits(1000, 5000, 0, 0), now=0.0)
        self.assertAlmostEqual(meter.charge_bytes(7000, 0.0), 2.0)     # 2 000 owed at 1 000/s
        self.assertAlmostEqual(meter.charge_bytes(0, 1.0), 1.0)        # half of it refilled

    def test_requests_are_allowed_up_to_what_the_bucket_holds(self):
        meter = Meter(InputLimits(0, 0, 10, 20), now=0.0)
        self.assertEqual(meter.requests_allowed(0.0), 20)
        meter.charge_requests(20)
        self.assertEqual(meter.requests_allowed(0.0), 0)
        self.assertAlmostEqual(meter.wait_for_a_request(), 0.1)         # one at 10/s
        self.assertEqual(meter.requests_allowed(0.5), 5)

    def test_a_rate_of_zero_means_no_limit(self):
        meter = Meter(InputLimits(0, 0, 0, 0), now=0.0)
        self.assertEqual(meter.charge_bytes(10 ** 9, 0.0), 0.0)
        self.assertIsNone(meter.requests_allowed(0.0))
        meter.charge_requests(10 ** 6)
        self.assertEqual(meter.wait_for_a_request(), 0.0)


if __name__ == "__main__":
    unittest.main()
