"""cluster/waits.py: the chats of each connection on their way to Redis, and who gets a Resume."""
import unittest

from cluster.waits import CHATS_IN_FLIGHT, InFlight
from sansio.actions import Resume, Send


class InFlightTests(unittest.TestCase):

    def setUp(self) -> None:
        self.flight = InFlight()

    def send(self, conn_id: int, ref: int, count: int) -> list:
        """`count` chats of `conn_id` to `ref`; whether the connection was full after each."""
        return [self.flight.add(conn_id, ref, self.flight.by_conn.get(conn_id))
                for _ in range(count)]

    def test_chats_are_done_when_their_room_is_handed_out_as_far_as_their_numbers(self):
        self.send(1, 0, 3)
        self.send(2, 0, 2)
        actions = []
        self.flight.numbered(0, [1, 2, 1], 10, actions)     # numbered 10 to 12
        self.flight.numbered(0, [1, 2], 13, actions)        # 13 and 14
        self.flight.handed_out(0, 11, actions)
        self.assertEqual(self.flight.by_conn, {1: [0, 3], 2: [0, 2]}, "12 is not out yet")
        self.flight.handed_out(0, 12, actions)
        self.assertEqual(self.flight.by_conn, {1: [0, 1], 2: [0, 1]})
        self.flight.handed_out(0, 20, actions)
        self.assertEqual(self.flight.by_conn, {}, "all done, nothing kept")
        self.assertEqual(actions, [], "neither was held back: nothing to resume")

    def test_chats_whose_event_came_before_their_numbers_are_done_with_them(self):
        self.send(1, 0, 2)
        actions = []
        self.flight.handed_out(0, 8, actions)
        self.flight.numbered(0, [1], 8, actions)
        self.assertEqual(self.flight.by_conn, {1: [0, 1]})
        self.flight.numbered(0, [1], 9, actions)
        self.assertEqual(self.flight.by_conn, {1: [0, 1]}, "9 is not out yet")

    def test_a_connection_held_back_is_resumed_once_its_chats_are_back(self):
        self.send(1, 0, 2)
        self.assertTrue(self.flight.hold(1), "its next request waits")
        actions = []
        self.flight.numbered(0, [1, 1], 1, actions)
        self.flight.handed_out(0, 1, actions)
        self.assertEqual(actions, [], "one still on its way")
        self.flight.handed_out(0, 2, actions)
        self.assertEqual(actions, [Resume(1)])
        self.assertFalse(self.flight.hold(1), "nothing on its way: not held")

    def test_a_full_connection_is_resumed_when_a_batch_takes_it_under_the_limit(self):
        fulls = self.send(1, 0, CHATS_IN_FLIGHT)
        self.assertEqual(fulls, [False] * (CHATS_IN_FLIGHT - 1) + [True])
        actions = []
        self.flight.numbered(0, [1] * 5, 1, actions)
        self.flight.numbered(0, [1] * 5, 6, actions)
        self.flight.handed_out(0, 5, actions)
        self.assertEqual(actions, [Resume(1)], "once, however many came back")
        self.flight.handed_out(0, 10, actions)
        self.assertEqual(actions, [Resume(1)], "not held any more")

    def test_chats_of_another_room_finish_nothing(self):
        self.send(1, 0, 1)
        actions = []
        self.flight.numbered(5, [1], 1, actions)
        self.flight.handed_out(5, 1, actions)
        self.assertEqual(self.flight.by_conn, {1: [0, 1]})

    def test_a_failed_call_tells_each_chat_still_on_its_way_and_only_those(self):
        self.send(1, 0, 3)
        self.send(2, 0, 1)
        self.flight.forget(2)                               # (gone meanwhile)
        actions = []
        self.assertEqual(self.flight.finish(0, [1, 2, 1], actions, b"failed"), 2)
        self.assertEqual(actions, [Send(1, b"failed")] * 2)
        self.assertEqual(self.flight.by_conn, {1: [0, 1]})

    def test_numbers_that_come_after_every_sender_of_them_is_gone_keep_nothing(self):
        self.send(2, 1, 1)
        self.flight.forget(2)           # its connection dropped; it was the room's last member
        self.flight.forget_room(1)      # so the room was let go of, before the call's reply
        self.flight.numbered(1, [2], 2, [])
        self.assertEqual((self.flight._numbered, self.flight._handed), ({}, {}))

    def test_a_room_let_go_of_keeps_nothing(self):
        self.send(1, 0, 1)
        actions = []
        self.flight.numbered(0, [1], 4, actions)
        self.flight.handed_out(0, 3, actions)
        self.flight.forget(1)
        self.flight.forget_room(0)
        self.assertEqual((self.flight.by_conn, self.flight._numbered, self.flight._handed),
                         ({}, {}, {}))


if __name__ == "__main__":
    unittest.main()
