"""cluster/waits.py: the chats of each connection on their way to Redis, and who gets a Resume."""
import unittest

from cluster.waits import CHATS_IN_FLIGHT, ChatWait, InFlight
from sansio.actions import Resume


class InFlightTests(unittest.TestCase):

    def setUp(self) -> None:
        self.flight = InFlight()

    def send(self, conn_id: int, ref: int, count: int) -> list:
        """`count` chats of `conn_id` to `ref`; whether the connection was full after each."""
        return [self.flight.add(conn_id, ChatWait(conn_id, ref), self.flight.by_conn.get(conn_id))
                for _ in range(count)]

    def test_a_batch_finishes_each_senders_first_chats_and_nobody_held_gets_no_resume(self):
        self.send(1, 0, 3)
        self.send(2, 0, 2)
        actions = []
        self.flight.finish_own((1, 2, 1), 0, actions)
        self.assertEqual([len(self.flight.by_conn[c]) for c in (1, 2)], [1, 1])
        self.flight.finish_own((1, 2), 0, actions)
        self.assertEqual(self.flight.by_conn, {}, "all done, nothing kept")
        self.assertEqual(actions, [], "neither was held back: nothing to resume")

    def test_a_connection_held_back_is_resumed_once_its_chats_are_back(self):
        self.send(1, 0, 2)
        self.assertTrue(self.flight.hold(1), "its next request waits")
        actions = []
        self.flight.finish_own((1,), 0, actions)
        self.assertEqual(actions, [], "one still on its way")
        self.flight.finish_own((1,), 0, actions)
        self.assertEqual(actions, [Resume(1)])
        self.assertFalse(self.flight.hold(1), "nothing on its way: not held")

    def test_a_full_connection_is_resumed_when_a_batch_takes_it_under_the_limit(self):
        fulls = self.send(1, 0, CHATS_IN_FLIGHT)
        self.assertEqual(fulls, [False] * (CHATS_IN_FLIGHT - 1) + [True])
        actions = []
        self.flight.finish_own((1,) * 5, 0, actions)
        self.assertEqual(actions, [Resume(1)], "once, however many came back")
        self.flight.finish_own((1,) * 5, 0, actions)
        self.assertEqual(actions, [Resume(1)], "not held any more")

    def test_chats_of_another_room_finish_nothing(self):
        self.send(1, 0, 1)
        self.flight.finish_own((1,), 5, [])
        self.assertEqual(len(self.flight.by_conn[1]), 1)


if __name__ == "__main__":
    unittest.main()
