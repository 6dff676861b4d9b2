"""sansio/bus_links.py through the Bus that drives it: the two links failing on their own,
backoff, timeouts, and the bound on what waits for Redis. Redis is played by hand
(tests/bus_harness.py).
"""
import unittest
import unittest.mock

from sansio import bus_links
from sansio.bus import ChatGroup, Done, Numbered, StateChanged
from tests.bus_harness import BusHarness, resp, said


class LinkTests(unittest.TestCase):

    def setUp(self) -> None:
        self.h = BusHarness(self)
        self.h.bus.follow(0, 1, self.h.now)

    def test_a_dropped_subscription_keeps_the_bus_up_and_catches_up(self):
        bus_ = self.h.bus
        bus_.link_failed("sub", "killed", self.h.now)
        self.assertEqual(bus_.links_to_close(), ["sub"])
        self.assertTrue(bus_.up, "requests still go to Redis")
        self.assertTrue(bus_.chat(4, 0, b"while away", self.h.now))
        self.assertIn(b"while away", self.h.take_sent()["cmd"])
        self.h.reply(b"1")                  # (the chats script: each room's first number)
        self.assertEqual(self.h.events(), [Numbered([ChatGroup(0, [4])], [1])])
        due = bus_.next_deadline()
        self.assertLessEqual(due - self.h.now, bus_links.RECONNECT_MIN)
        self.assertEqual(bus_.wants_links(due), ["sub"])
        bus_.connecting("sub", due)
        bus_.link_up("sub", due)
        self.assertIn(b"SUBSCRIBE", self.h.take_sent()["sub"])
        bus_.receive("sub", resp([b"subscribe", b"p:events", 1]), due)
        self.assertIn(b"XRANGE", self.h.take_sent()["cmd"], "what was published meanwhile")
        self.h.reply([[b"1-1", [b"e", said(0, 1, "while away", node="me", conn=4)]]])
        self.assertEqual(self.h.texts(), ["while away"])

    def test_a_dropped_command_link_fails_what_waits_and_takes_the_bus_down(self):
        bus_ = self.h.bus
        bus_.join("j", 4, "room", "me", 0, True, self.h.now)
        bus_.link_failed("cmd", "reset", self.h.now)
        events = self.h.events()
        self.assertEqual(events[0].token, "j")
        self.assertTrue(events[0].failed)
        self.assertEqual(events[1], StateChanged(False, "reset"))
        self.assertFalse(bus_.up)
        self.assertEqual(bus_.outages, 1)

    def test_reconnecting_backs_off_with_jitter_up_to_a_cap(self):
        bus_ = self.h.bus
        now = self.h.now
        delays = []
        for _ in range(10):
            bus_.link_failed("cmd", "refused", now)
            due = bus_.next_deadline()
            self.assertEqual(bus_.wants_links(due - 0.001), [])
            self.assertEqual(bus_.wants_links(due), ["cmd"])
            delays.append(due - now)
            bus_.connecting("cmd", due)
            now = due
        for attempt, delay in enumerate(delays):
            full = min(bus_links.RECONNECT_MAX, bus_links.RECONNECT_MIN * 2 ** attempt)
            self.assertTrue(full / 2 <= delay <= full, (attempt, delay))
        self.assertGreater(delays[-1], bus_links.RECONNECT_MAX / 2 - 0.001)

    def test_a_link_not_set_up_in_time_is_given_up(self):
        bus_ = self.h.bus
        bus_.link_failed("cmd", "reset", self.h.now)
        self.h.events()
        bus_.links_to_close()
        start = bus_.next_deadline()
        bus_.connecting("cmd", start)
        self.assertEqual(bus_.next_deadline(), start + bus_links.CONNECT_TIMEOUT)
        bus_.timer(start + bus_links.CONNECT_TIMEOUT)
        self.assertEqual(bus_.links_to_close(), ["cmd"])

    def test_an_unanswered_command_resets_the_link(self):
        bus_ = self.h.bus
        bus_.chat(4, 0, b"x", self.h.now)
        self.h.take_sent()                  # (the end of the tick: the chats go out)
        bus_.timer(self.h.now + bus_links.REPLY_TIMEOUT)
        self.assertEqual(bus_.links_to_close(), ["cmd"])
        self.assertTrue(self.h.events()[0].failed)


class RoomChannelTests(unittest.TestCase):
    """A room's chats come on a channel of its own (P:events:REF), which a node subscribes to
    while it follows the room: it never reads the chats of rooms where it has nobody."""

    def setUp(self) -> None:
        self.h = BusHarness(self)

    def confirm(self, *channels: bytes) -> None:
        self.h.bus.receive("sub", b"".join(resp([b"subscribe", channel, 1])
                                            for channel in channels), self.h.now)

    def test_following_a_room_subscribes_to_its_chats_and_letting_go_unsubscribes(self):
        self.h.bus.follow(3, 1, self.h.now)
        self.assertEqual(self.h.take_sent()["sub"], resp([b"SUBSCRIBE", b"p:events:3"]))
        self.h.bus.unfollow(3)
        self.assertEqual(self.h.take_sent()["sub"], resp([b"UNSUBSCRIBE", b"p:events:3"]))

    def test_chats_published_before_the_subscription_is_confirmed_are_read_back(self):
        self.h.bus.follow(3, 2, self.h.now)                   # (its join was event 1)
        self.assertEqual(self.h.take_sent()["cmd"], b"", "nothing is known missing yet")
        self.confirm(b"p:events:3")
        self.assertIn(b"XRANGE", self.h.take_sent()["cmd"], "the window before it")
        self.h.publish(said(3, 4, "after"))
        self.h.reply([[b"2-1", [b"e", said(3, 2, "one")]], [b"3-1", [b"e", said(3, 3, "two")]]])
        self.assertEqual(self.h.texts(), ["one", "two", "after"], "each once, in order")

    def test_a_prefix_beyond_ascii_names_the_rooms_channels_in_utf8(self):
        self.h = BusHarness(self, prefix="é")
        self.h.bus.follow(3, 2, self.h.now)
        self.assertEqual(self.h.take_sent()["sub"], resp([b"SUBSCRIBE", "é:events:3".encode()]))
        self.confirm("é:events:3".encode())
        self.assertIn(b"XRANGE", self.h.take_sent()["cmd"], "the window before it, read back")

    def test_a_read_under_way_when_the_subscription_is_confirmed_is_made_again(self):
        self.h.publish(b"J 3 1 other 7 9 0\nroom\nann")       # the room is at 1, heard here
        self.h.bus.follow(3, 1, self.h.now)
        self.assertIn(b"XRANGE", self.h.take_sent()["cmd"])
        self.confirm(b"p:events:3")
        self.assertEqual(self.h.take_sent()["cmd"], b"", "one read at a time")
        self.h.reply([[b"1-1", [b"e", b"J 3 1 other 7 9 0\nroom\nann"]]])
        self.assertEqual(self.h.take_sent()["cmd"],
                         resp([b"XRANGE", b"p:log:3", b"2-0", b"+", b"COUNT", b"500"]),
                         "that read may have run before the subscription: once more, from 2")

    def test_a_subscriber_link_made_again_subscribes_every_followed_room_then_the_group(self):
        bus_ = self.h.bus
        for ref in (0, 5, 9):
            bus_.follow(ref, 1, self.h.now)
        self.h.take_sent()
        bus_.link_failed("sub", "killed", self.h.now)
        bus_.connecting("sub", self.h.now + 1)
        with unittest.mock.patch.object(bus_links, "SUBSCRIBE_BATCH", 2):
            bus_.link_up("sub", self.h.now + 1)
        self.assertEqual(self.h.take_sent()["sub"],
                         resp([b"SUBSCRIBE", b"p:events:0", b"p:events:5"])
                         + resp([b"SUBSCRIBE", b"p:events:9", b"p:events"]))
        self.confirm(b"p:events:0", b"p:events:5", b"p:events:9")
        self.assertEqual(self.h.take_sent()["cmd"], b"", "not before the group's channel")
        self.confirm(b"p:events")
        self.assertEqual(self.h.take_sent()["cmd"].count(b"XRANGE"), 3, "one read per room")


class BackPressureTests(unittest.TestCase):

    def test_chats_past_the_unanswered_bytes_are_refused_until_redis_answers(self):
        h = BusHarness(self)
        message = b"x" * 60000
        sent = 0
        while h.bus.chat(4, 0, message, h.now):     # Redis is stalled: nothing is answered
            sent += 1
            self.assertLess(sent, 1000, "the bytes held for Redis are never bounded")
        self.assertEqual(sent, bus_links.MAX_UNANSWERED_BYTES // 60000)
        self.assertEqual(h.events(), [], "refused, not sent: the owner says so")
        out = h.take_sent()["cmd"]
        self.assertLessEqual(len(out), bus_links.MAX_UNANSWERED_BYTES + 1000 * sent)
        # Redis catches up: each call of the chats script answers with its room's first number.
        h.reply(*[b"1" for _call in out.split(b"EVALSHA")[1:]])
        self.assertEqual(sum(len(e.groups[0].conns) for e in h.events()), sent)
        self.assertTrue(h.bus.chat(4, 0, message, h.now), "sent, not refused")
        self.assertIn(message, h.take_sent()["cmd"])



if __name__ == "__main__":
    unittest.main()
