"""The fair queue (policy/fairqueue.py): one item per key per round, and its two bounds."""
import unittest

from policy.fairqueue import FairQueue


class FairQueueTests(unittest.TestCase):

    def test_every_key_gets_a_turn_before_any_gets_a_second(self):
        queue = FairQueue(100, 10)
        for i in range(10):
            queue.offer("flood", i)
        queue.offer("one", "a")
        queue.offer("two", "b")
        queue.offer("two", "c")
        self.assertEqual(queue.take(5), [0, "a", "b", 1, "c"])

    def test_keys_left_out_keep_their_newest_and_go_first_next_time(self):
        queue = FairQueue(100, 10)
        for key in "abcde":
            queue.offer(key, key + "1")
            queue.offer(key, key + "2")
        self.assertEqual(queue.take(2), ["a1", "b1"])
        queue.offer("f", "f1")
        queue.offer("a", "a3")
        self.assertEqual(queue.take(3), ["c2", "d2", "e2"])
        self.assertEqual(queue.take(3), ["f1", "a3"])
        self.assertEqual((queue.size, queue.dropped), (0, 3))

    def test_take_empties_the_queue_and_counts_what_it_forgot(self):
        queue = FairQueue(100, 10)
        for i in range(6):
            queue.offer("k", i)
        self.assertEqual(queue.take(4), [0, 1, 2, 3])
        self.assertEqual((queue.size, queue.dropped, queue.take(4)), (0, 2, []))

    def test_a_key_is_held_to_its_bound_and_the_queue_to_its_capacity(self):
        queue = FairQueue(5, 3)
        self.assertEqual([queue.offer("k", i) for i in range(4)], [True, True, True, False])
        self.assertEqual([queue.offer("j", i) for i in range(3)], [True, True, False])
        self.assertFalse(queue.offer("new", 0))
        self.assertEqual((queue.size, queue.dropped), (5, 3))


if __name__ == "__main__":
    unittest.main()
