"""policy/bucket.py: the token bucket, with plain numbers for time."""
import math
import unittest

from policy.bucket import TokenBucket


class TokenBucketTests(unittest.TestCase):
    def test_a_new_bucket_is_full_and_spends_down_to_empty(self):
        bucket = TokenBucket(3, 1.0, now=0.0)
        self.assertEqual([bucket.take(0.0) for _ in range(4)], [True, True, True, False])

    def test_refills_at_its_rate_and_never_past_its_burst(self):
        bucket = TokenBucket(2, 4.0, now=10.0)
        bucket.take(10.0, 2)
        self.assertAlmostEqual(bucket.refill(10.25).tokens, 1.0)
        self.assertAlmostEqual(bucket.refill(100.0).tokens, 2.0)

    def test_a_clock_that_goes_back_earns_nothing(self):
        bucket = TokenBucket(5, 1.0, now=10.0)
        bucket.take(10.0, 5)
        self.assertEqual(bucket.refill(9.0).tokens, 0.0)
        self.assertAlmostEqual(bucket.refill(10.0).tokens, 1.0)

    def test_take_of_more_than_it_holds_spends_nothing(self):
        bucket = TokenBucket(10, 1.0, now=0.0)
        self.assertFalse(bucket.take(0.0, 11))
        self.assertEqual(bucket.tokens, 10.0)

    def test_seconds_until_says_when_enough_is_there(self):
        bucket = TokenBucket(10, 2.0, now=0.0)
        bucket.take(0.0, 10)
        self.assertAlmostEqual(bucket.seconds_until(3), 1.5)
        self.assertEqual(bucket.seconds_until(0), 0.0)
        self.assertTrue(math.isinf(bucket.seconds_until(11)))
        self.assertTrue(math.isinf(TokenBucket(1, 0.0, now=0.0).seconds_until(2)))


if __name__ == "__main__":
    unittest.main()
