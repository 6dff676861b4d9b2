"""sansio/bus.py without Redis: the Bus state machine fed hand-written RESP bytes and the time.

What Redis itself does (the Lua scripts) is tested against a real redis-server in
tests/test_bus.py; here, what a node does with what comes back: event order, repair of gaps from
a room's log, the two links failing on their own, backoff.
"""
import unittest

from sansio import bus
from sansio.actions import Broadcast, Send
from sansio.bus import Bus, Done, Joined, Left, LocalState, Said, Skipped, StateChanged, decode_event
from cluster.shared import SharedRooms
from protocol import ChatProtocol
from rooms import LocalRooms


def resp(value) -> bytes:
    """A RESP2 reply, written independently of sansio/resp.py."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(resp(item) for item in value)


def said(ref, seq, text, node="other", conn=7, name="ann") -> bytes:
    return ("C %d %d %s %d\n%s\n%s" % (ref, seq, node, conn, name, text)).encode()


def pushed(event: bytes) -> bytes:
    return resp([b"message", b"p:events", event])


class BusHarness:
    """A Bus with both links up and in step, and helpers to play Redis's part."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.test = test
        self.now = 100.0
        self.bus = Bus("p", "me", lambda: LocalState([], [], {}))
        for name in bus.LINKS:
            self.bus.connecting(name, self.now)
            self.bus.link_up(name, self.now)
        self.sent = {name: b"" for name in bus.LINKS}
        self.take_sent()
        self.reply(*["ok-sha"] * len(bus.SCRIPTS))                 # SCRIPT LOAD, each
        self.reply([b"epoch1", 0, 0])                              # the epoch script
        self.reply(1)                                              # the sync script
        self.reply([1, 0])                  # the first heartbeat (sent as soon as in step)
        self.bus.receive("sub", resp([b"subscribe", b"p:events", 1]), self.now)
        test.assertTrue(self.bus.up)
        test.assertTrue(self.bus.subscribed)
        self.events()
        self.take_sent()

    def reply(self, *values) -> None:
        self.bus.receive("cmd", b"".join(resp(v) for v in values), self.now)

    def publish(self, *events: bytes) -> None:
        self.bus.receive("sub", b"".join(pushed(e) for e in events), self.now)

    def take_sent(self) -> dict:
        for name in bus.LINKS:
            self.sent[name] += self.bus.data_to_send(name)
        sent, self.sent = self.sent, {name: b"" for name in bus.LINKS}
        return sent

    def events(self) -> list:
        return self.bus.take_events()

    def texts(self) -> list:
        return [e.message for e in self.events() if isinstance(e, Said)]


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


class OrderTests(unittest.TestCase):

    def setUp(self) -> None:
        self.h = BusHarness(self)
        self.h.bus.follow(0, 1, self.h.now)
        self.assertEqual(self.h.take_sent()["cmd"], b"", "nothing missing yet")

    def test_events_in_order_are_handed_out_at_once(self):
        self.h.publish(said(0, 1, "a"), said(0, 2, "b"))
        self.assertEqual(self.h.texts(), ["a", "b"])

    def test_a_gap_is_held_and_read_back_from_the_log(self):
        self.h.publish(said(0, 2, "b"), said(0, 3, "c"))
        self.assertEqual(self.h.texts(), [], "held until 1 is here")
        self.assertIn(b"XRANGE", self.h.take_sent()["cmd"])
        self.h.reply([[b"1-1", [b"e", said(0, 1, "a")]], [b"2-1", [b"e", said(0, 2, "b")]]])
        self.assertEqual(self.h.texts(), ["a", "b", "c"], "each once, in order")
        self.h.publish(said(0, 2, "b"), said(0, 4, "d"))     # a repeat, then the next
        self.assertEqual(self.h.texts(), ["d"])
        self.assertEqual(self.h.bus.repaired, 1)

    def test_what_the_log_no_longer_has_is_skipped_and_counted(self):
        self.h.publish(said(0, 5, "e"))
        self.h.reply([[b"3-1", [b"e", said(0, 3, "c")]], [b"4-1", [b"e", said(0, 4, "d")]]])
        events = self.h.events()
        self.assertEqual(events[0], Skipped(0, 2))
        self.assertEqual([e.message for e in events[1:]], ["c", "d", "e"])
        self.assertEqual(self.h.bus.lost, 2)

    def test_rooms_not_followed_are_not_handed_out(self):
        self.h.publish(said(5, 1, "elsewhere"))
        self.assertEqual(self.h.texts(), [])
        self.assertEqual(self.h.bus.seen[5], 1)
        self.assertEqual(self.h.bus.next_ref, 6, "refs heard of exist")

    def test_following_again_never_hands_out_an_event_twice(self):
        # The last member's leave and a new member's join handed out together: the owner
        # unfollows on the leave, then follows again on the join's reply, which names the join.
        self.h.publish(b"L 0 1 me 0\n4 ann", b"J 0 2 me 5 9 0\nroom\nbob")
        self.assertEqual([type(e) for e in self.h.events()], [Left, Joined])
        self.h.bus.unfollow(0)
        self.h.bus.follow(0, 2, self.h.now)
        self.assertEqual(self.h.events(), [], "the join is not handed out again")
        self.assertEqual(self.h.take_sent()["cmd"], b"", "nor read back from the log")
        self.h.publish(said(0, 3, "next"))
        self.assertEqual(self.h.texts(), ["next"])

    def test_own_join_ahead_of_its_reply_is_kept_for_follow(self):
        own = b"J 9 4 me 3 17 0\nlater\nme"
        self.h.publish(own, said(9, 5, "after", node="other"))
        self.h.bus.follow(9, 4, self.h.now)
        events = self.h.events()
        self.assertEqual([type(e) for e in events], [Joined, Said])
        self.assertEqual(self.h.take_sent()["cmd"], b"", "nothing to read back")


class LinkTests(unittest.TestCase):

    def setUp(self) -> None:
        self.h = BusHarness(self)
        self.h.bus.follow(0, 1, self.h.now)

    def test_a_dropped_subscription_keeps_the_bus_up_and_catches_up(self):
        bus_ = self.h.bus
        bus_.link_failed("sub", "killed", self.h.now)
        self.assertEqual(bus_.links_to_close(), ["sub"])
        self.assertTrue(bus_.up, "requests still go to Redis")
        bus_.chat("token", 4, 0, "me", "while away", self.h.now)
        self.assertIn(b"while away", self.h.take_sent()["cmd"])
        self.h.reply(1)
        self.assertEqual(self.h.events(), [Done("token", 1)])
        due = bus_.next_deadline()
        self.assertLessEqual(due - self.h.now, bus.RECONNECT_MIN)
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
            full = min(bus.RECONNECT_MAX, bus.RECONNECT_MIN * 2 ** attempt)
            self.assertTrue(full / 2 <= delay <= full, (attempt, delay))
        self.assertGreater(delays[-1], bus.RECONNECT_MAX / 2 - 0.001)

    def test_a_link_not_set_up_in_time_is_given_up(self):
        bus_ = self.h.bus
        bus_.link_failed("cmd", "reset", self.h.now)
        self.h.events()
        bus_.links_to_close()
        start = bus_.next_deadline()
        bus_.connecting("cmd", start)
        self.assertEqual(bus_.next_deadline(), start + bus.CONNECT_TIMEOUT)
        bus_.timer(start + bus.CONNECT_TIMEOUT)
        self.assertEqual(bus_.links_to_close(), ["cmd"])

    def test_an_unanswered_command_resets_the_link(self):
        bus_ = self.h.bus
        bus_.chat("c", 4, 0, "me", "x", self.h.now)
        bus_.timer(self.h.now + bus.REPLY_TIMEOUT)
        self.assertEqual(bus_.links_to_close(), ["cmd"])
        self.assertTrue(self.h.events()[0].failed)


class BackPressureTests(unittest.TestCase):

    def test_chats_past_the_unanswered_bytes_are_refused_until_redis_answers(self):
        h = BusHarness(self)
        message = "x" * 60000
        sent = 0
        while True:                 # Redis is stalled: nothing is answered
            h.bus.chat(sent, 4, 0, "me", message, h.now)
            events = h.events()
            if events:
                break
            sent += 1
            self.assertLess(sent, 1000, "the bytes held for Redis are never bounded")
        self.assertEqual(sent, bus.MAX_UNANSWERED_BYTES // 60000)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].token, sent)
        self.assertIn("Redis is behind", events[0].failed)
        self.assertEqual(h.bus.behind, 1)
        self.assertLessEqual(len(h.take_sent()["cmd"]), bus.MAX_UNANSWERED_BYTES + 1000 * sent)
        h.reply(*range(1, sent + 1))            # Redis catches up
        self.assertEqual(len(h.events()), sent)
        h.bus.chat("again", 4, 0, "me", message, h.now)
        self.assertEqual(h.events(), [], "sent, not refused")
        self.assertIn(message.encode(), h.take_sent()["cmd"])


class SharedHarness:
    """A ChatProtocol whose room service is a SharedRooms (`shared`) with links up and in step,
    Redis played by hand as above; what each connection is sent is gathered in `got`."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.now = 100.0
        self.shared = SharedRooms(("127.0.0.1", 1), "p", "me",
                                  local=LocalRooms(clock=lambda: self.now))
        self.proto = ChatProtocol(9999, "1", service=self.shared)
        self.made = set()
        self.got = {}
        self.link_up()
        self.shared.link_data("sub", resp([b"subscribe", b"p:events", 1]), self.now)
        test.assertTrue(self.shared.bus.up)
        self.actions()

    def link_up(self) -> None:
        """Open the command link (again) and answer its setting up, as a Redis that kept its
        data: the scripts, the epoch, the sync, the first heartbeat."""
        for name in bus.LINKS if not self.shared.bus.subscribed else ("cmd",):
            self.shared.link_opening(name, self.now)
            self.shared.link_up(name, self.now)
        self.reply(*["ok-sha"] * len(bus.SCRIPTS), [b"epoch1", 0, 0], [0, 0], [1, 0])

    def reply(self, *values) -> None:
        self.shared.link_data("cmd", b"".join(resp(v) for v in values), self.now)

    def publish(self, *events: bytes) -> None:
        self.shared.link_data("sub", b"".join(pushed(e) for e in events), self.now)
        self.actions()

    def actions(self) -> None:
        for action in self.shared.link_actions():
            for conn_id in getattr(action, "conn_ids", ()) or (getattr(action, "conn_id", None),):
                if isinstance(action, (Send, Broadcast)):
                    self.got.setdefault(conn_id, []).append(action.data)
        self.shared.link_output("cmd")
        self.shared.link_output("sub")

    def request(self, conn_id: int, data: bytes) -> None:
        if conn_id not in self.made:
            self.made.add(conn_id)
            self.proto.connection_made(conn_id, "127.0.0.1", "127.0.0.1")
        self.proto.data_received(conn_id, data)
        for action in self.proto.maybe_next_actions(conn_id) or ():
            if isinstance(action, Send):
                self.got.setdefault(conn_id, []).append(action.data)
        self.actions()

    def texts(self, conn_id: int) -> list:
        return [data.decode().split("MESSAGE: ", 1)[1].strip() for data in self.got.pop(conn_id, ())
                if data.startswith(b"CHAT:")]


class LastLeaveAndJoinTogetherTests(unittest.TestCase):

    def test_a_member_who_joins_as_the_last_one_leaves_still_gets_the_room(self):
        h = SharedHarness(self)
        h.request(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: ann\n")
        h.publish(b"J 0 1 me 1 1 0\nr\nann")
        h.reply([0, 1, 1, 0, 1])
        h.actions()
        h.got.clear()
        h.request(1, b"LEAVE_CHATROOM: 0\nJOIN_ID: 1\nCLIENT_NAME: ann\n")
        h.request(2, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: bob\n")
        # The replies first (the room is still followed then), then ann's leave (the room
        # empty here) and bob's join, handed out together.
        h.reply([2, 1], [0, 2, 3, 0, 0])
        h.actions()
        h.publish(b"L 0 2 me 0\n1 ann", b"J 0 3 me 2 2 0\nr\nbob")
        self.assertEqual(h.texts(2), ["bob has joined this chatroom."])
        h.request(2, b"CHAT: 0\nJOIN_ID: 2\nCLIENT_NAME: bob\nMESSAGE: hi\n\n")
        h.publish(b"C 0 4 me 2\nbob\nhi")
        h.reply(4)
        h.actions()
        self.assertEqual(h.texts(2), ["hi"], "the room's events still reach its member here")
        self.assertNotIn(2, h.shared._waits, "and its chat is done")


    def test_a_join_answered_before_the_last_leave_keeps_the_room_until_its_event(self):
        h = SharedHarness(self)
        h.request(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: ann\n")
        h.publish(b"J 0 1 me 1 1 0\nr\nann")
        h.reply([0, 1, 1, 0, 1])
        h.actions()
        h.request(1, b"LEAVE_CHATROOM: 0\nJOIN_ID: 1\nCLIENT_NAME: ann\n")
        h.request(2, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: bob\n")
        h.reply([2, 1], [0, 2, 3, 0, 0])    # both answered; then the events, one at a time
        h.actions()
        h.publish(b"L 0 2 me 0\n1 ann")      # nobody here now, but bob's join is on its way
        h.publish(b"J 0 3 me 2 2 0\nr\nbob")
        self.assertEqual(h.texts(2), ["bob has joined this chatroom."])
        h.request(2, b"CHAT: 0\nJOIN_ID: 2\nCLIENT_NAME: bob\nMESSAGE: hi\n\n")
        h.publish(b"C 0 4 me 2\nbob\nhi")
        self.assertEqual(h.texts(2), ["hi"])


class GivenUpJoinTests(unittest.TestCase):
    """A JOIN whose reply is lost with the link (the joiner gets ERROR_CODE 15) may still have
    been run by Redis, which then announces it to the other nodes."""

    def test_a_join_redis_ran_after_the_link_dropped_is_told_here_too_and_taken_out(self):
        h = SharedHarness(self)
        h.request(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: carol\n")
        h.publish(b"J 0 1 me 1 1 0\nr\ncarol")
        h.reply([0, 1, 1, 0, 1])
        h.actions()
        self.assertEqual(h.texts(1), ["carol has joined this chatroom."])
        h.request(2, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice\n")
        with self.assertLogs("cluster.shared", "WARNING"):      # "bus: down"
            h.shared.link_failed("cmd", "Redis did not answer", h.now)
            h.actions()
        self.assertIn(b"ERROR_CODE: 15", b"".join(h.got.pop(2)))
        # Redis ran alice's join anyway: every other node announces it, and so must this one.
        h.publish(b"J 0 2 me 2 2 0\nr\nalice")
        self.assertEqual(h.texts(1), ["alice has joined this chatroom."])
        # The sync, once the link is back, takes her out of Redis (settled: it was this node's
        # own doing), and every node announces that too.
        h.link_up()
        h.actions()
        self.assertTrue(h.shared.bus.up)
        h.publish(b"L 0 3 me 1\n2 alice")
        self.assertEqual(h.texts(1), ["alice has left this chatroom."])
        self.assertEqual(h.texts(2), [], "alice was never a member")
        h.publish(b"C 0 4 other 5\nbob\nhello")
        self.assertEqual(h.texts(1), ["hello"])
        self.assertEqual(h.texts(2), [])


if __name__ == "__main__":
    unittest.main()
