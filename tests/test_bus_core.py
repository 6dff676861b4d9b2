"""sansio/bus.py without Redis: the Bus state machine fed hand-written RESP bytes and the time.

What Redis itself does (the Lua scripts) is tested against a real redis-server in
tests/test_bus.py; here, what a node does with what comes back: event order, repair of gaps from
a room's log. The links failing and backoff are in tests/test_bus_links.py, the event format in
tests/test_bus_scripts.py.
"""
import unittest
from unittest import mock

from sansio import bus, bus_links, bus_scripts
from sansio.actions import Broadcast, Resume, Send, Wait
from sansio.wire import chat_message
from sansio.bus import ChatGroup, Chats, Done, Joined, Left, Numbered, Skipped
from cluster.shared import SharedRooms
from protocol import ChatProtocol
from rooms import LocalRooms
from tests.bus_harness import BusHarness, batch, pushed, resp, said, texts_of


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
        self.assertEqual([text for e in events[1:] for text in texts_of(e)], ["c", "d", "e"])
        self.assertEqual(self.h.bus.lost, 2)

    def test_chats_numbered_by_a_redis_that_then_lost_its_data_are_skipped_not_numbered_again(self):
        h = self.h
        h.bus.chat(4, 0, chat_message(0, "ann", "x"), h.now)
        h.take_sent()
        h.reply(b"1")                   # numbered 1; its echo does not come (sub link cut)
        self.assertEqual(h.events(), [Numbered([ChatGroup(0, [4])], [1])])
        h.bus.link_failed("cmd", "reset", h.now)            # Redis restarts, empty
        h.bus.connecting("cmd", h.now)
        h.bus.link_up("cmd", h.now)
        h.take_sent()
        h.reply(*["ok-sha"] * len(bus_scripts.SCRIPTS), [b"epoch2", 0, 0])
        restore = h.take_sent()["cmd"]
        self.assertIn(b"$1\r\n0\r\n$0\r\n\r\n$1\r\n1\r\n", restore,
                      "room 0 put back at its last number, 1: the next chat is numbered 2")
        h.reply(1, [0, 0])                                  # the restore, the sync
        self.assertIn(b"XRANGE", h.take_sent()["cmd"])
        h.reply([])                                         # the log is gone with the data
        self.assertEqual([e for e in h.events() if isinstance(e, Skipped)], [Skipped(0, 1)])
        self.assertEqual(h.bus.lost, 1)

    def test_a_log_that_came_back_empty_hands_out_what_was_held_and_is_read_no_more(self):
        # (Redis lost its data, and with it the log, while a later event was held for a gap)
        self.h.publish(said(0, 9, "nine"), said(0, 10, "ten"))
        self.assertIn(b"XRANGE", self.h.take_sent()["cmd"])
        self.h.reply([])
        events = self.h.events()
        self.assertEqual(events[0], Skipped(0, 8))
        self.assertEqual([t for e in events[1:] for t in texts_of(e)], ["nine", "ten"])
        self.assertEqual(self.h.take_sent()["cmd"], b"", "nothing more to read")
        self.assertEqual((self.h.bus.lost, self.h.bus._held_bytes), (8, 0))

    def test_a_log_entry_that_is_not_an_event_is_counted_once(self):
        self.h.publish(said(0, 3, "c"))
        self.h.reply([[b"2-1", [b"e", batch(0, 1, [(7, "ann", "a"), (7, "ann", "b")])]],
                      [b"2-2", [b"e", b"garbage"]]])
        self.assertEqual(self.h.texts(), ["a", "b", "c"])
        self.assertEqual(self.h.bus.bad_events, 1)

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

    def test_what_is_kept_of_rooms_not_followed_is_bounded_by_the_groups_rooms(self):
        self.h.bus.max_rooms = 3                # (--bus-max-rooms: what the group keeps)
        self.h.publish(said(0, 1, "in the followed room"))
        self.h.publish(*[b"J %d 1 other 7 %d 0\nroom %d\nann" % (ref, ref, ref)
                         for ref in range(1, 11)])
        self.assertEqual(sorted(self.h.bus.seen), [0, 9, 10], "the followed one and the last")
        self.assertEqual(sorted(self.h.bus.room_names), [9, 10])
        self.assertEqual(self.h.bus.next_ref, 11, "refs heard of exist still")
        self.h.publish(said(0, 2, "still followed"))
        self.assertEqual(self.h.texts(), ["in the followed room", "still followed"])

    def test_the_chats_of_one_tick_go_to_redis_in_one_call_each_with_its_number(self):
        self.h.bus.chat(4, 0, b"one", self.h.now)
        self.h.bus.chat(5, 1, b"two", self.h.now)
        self.h.bus.chat(6, 0, b"three", self.h.now)
        self.h.bus.leave("c", 2, [(6, "her")], self.h.now)
        sent = self.h.take_sent()["cmd"]
        self.assertEqual(sent.count(b"EVALSHA"), 2, "the chats in one call, then the leave")
        self.assertLess(sent.index(b"two"), sent.index(b"her"), "in the order asked")
        self.assertIn(b"$1\r\n0\r\n$1\r\n2\r\n$8\r\nonethree\r\n", sent,
                      "room 0's two chats as one: how many, their bytes")
        self.h.reply(b"7 3", [9, 6])            # room 0's first is 7, room 1's is 3
        self.assertEqual(self.h.events(), [Numbered([ChatGroup(0, [4, 6]), ChatGroup(1, [5])],
                                                    [7, 3]), Done("c", [9, 6])])

    def test_a_call_carries_at_most_chat_batch_chats_or_chat_batch_bytes(self):
        for i in range(bus.CHAT_BATCH + 1):
            self.h.bus.chat(4, 0, b"x", self.h.now)
        self.assertEqual(self.h.take_sent()["cmd"].count(b"EVALSHA"), 2)
        big = b"y" * (bus.CHAT_BATCH_BYTES // 3)
        for i in range(4):
            self.h.bus.chat(4, 0, big, self.h.now)
        self.assertEqual(self.h.take_sent()["cmd"].count(b"EVALSHA"), 2, "three, then one")

    def test_a_published_batch_is_handed_out_in_one_piece(self):
        self.h.publish(batch(0, 1, [(7, "ann", "a\nb"), (8, "bob", "c")]))
        events = self.h.events()
        self.assertEqual(len(events), 1, "the room's next events: one piece")
        self.assertEqual((events[0].seq, events[0].count), (1, 2))
        self.assertEqual(events[0].data, b"CHAT: 0\nCLIENT_NAME: ann\nMESSAGE: a\nb\n\n"
                                         b"CHAT: 0\nCLIENT_NAME: bob\nMESSAGE: c\n\n")
        self.assertEqual(self.h.bus._rooms[0].next_seq, 3)

    def test_a_batch_after_a_gap_or_overlapping_is_split_and_each_chat_judged(self):
        self.h.publish(batch(0, 2, [(7, "ann", "b"), (7, "ann", "c")]))
        self.assertEqual(self.h.texts(), [], "held until 1 is here")
        self.h.reply([[b"2-1", [b"e", batch(0, 1, [(7, "ann", "a"), (7, "ann", "b")])]]])
        self.assertEqual(self.h.texts(), ["a", "b", "c"], "each once, in order")
        self.h.publish(batch(0, 3, [(7, "ann", "c"), (7, "ann", "d")]))
        self.assertEqual(self.h.texts(), ["d"], "the repeated one dropped")

    def test_a_batch_whose_chat_ends_are_not_as_many_as_it_counts_is_refused_whole(self):
        good = batch(0, 1, [(7, "ann", "a"), (7, "ann", "b")])
        one, two = chat_message(0, "ann", "a"), chat_message(0, "ann", "b")
        for bad in (good[:-1], good + b"x", good.replace(b"B 0 1 other 2", b"B 0 1 other 3"),
                    b"B 0 1 other 0\n", b"B 0 1 other\n", b"B 0 x other 1\na",
                    b"B 0 1 other 2\n" + one + b"\n" + two):    # (a stray line end)
            self.h.publish(bad)
        self.assertEqual(self.h.texts(), [], "no part of a chat reaches anyone")
        self.assertEqual(self.h.bus.bad_events, 7)
        self.h.publish(good)
        self.assertEqual(self.h.texts(), ["a", "b"])

    def test_a_heartbeat_that_declared_nodes_dead_says_so(self):
        self.h.now += bus.HEARTBEAT_EVERY
        self.h.bus.timer(self.h.now)
        self.assertIn(b"EVALSHA", self.h.take_sent()["cmd"])
        self.h.reply([1, 3, b"n2", b"n3"])
        self.assertEqual(self.h.events(), [bus.Reaped(("n2", "n3"), 3)])

    def test_a_node_the_others_reaped_puts_its_members_back_and_says_so(self):
        # however it learns of it: its heartbeat unknown, or its links made again meanwhile
        for learn in ("heartbeat", "link"):
            with self.subTest(learn=learn):
                h = BusHarness(self)
                if learn == "heartbeat":
                    h.now += bus.HEARTBEAT_EVERY
                    h.bus.timer(h.now)
                    h.take_sent()
                    h.reply([0, 0])                         # this node is not known any more
                else:
                    h.bus.link_failed("cmd", "reset", h.now)
                    h.bus.connecting("cmd", h.now)
                    h.bus.link_up("cmd", h.now)
                    h.reply(*["ok-sha"] * len(bus_scripts.SCRIPTS), [b"epoch1", 0, 0])
                self.assertIn(b"EVALSHA", h.take_sent()["cmd"], "the sync")
                h.reply([2, 0])                             # it put two members back
                self.assertIn(bus.Revived(2), h.events())

    def test_a_sync_that_put_nobody_back_says_nothing(self):
        self.h.bus.link_failed("cmd", "reset", self.h.now)
        self.h.bus.connecting("cmd", self.h.now)
        self.h.bus.link_up("cmd", self.h.now)
        self.h.reply(*["ok-sha"] * len(bus_scripts.SCRIPTS), [b"epoch1", 0, 0], [0, 0])
        self.assertNotIn("Revived", [type(e).__name__ for e in self.h.events()])

    def test_own_join_ahead_of_its_reply_is_kept_for_follow(self):
        own = b"J 9 4 me 3 17 0\nlater\nme"
        self.h.publish(own, said(9, 5, "after", node="other"))
        self.h.bus.follow(9, 4, self.h.now)
        events = self.h.events()
        self.assertEqual([type(e) for e in events], [Joined, Chats])
        self.assertEqual(self.h.take_sent()["cmd"], b"", "nothing to read back")



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
        for name in bus_links.LINKS if not self.shared.bus.subscribed else ("cmd",):
            self.shared.link_opening(name, self.now)
            self.shared.link_up(name, self.now)
        self.reply(*["ok-sha"] * len(bus_scripts.SCRIPTS), [b"epoch1", 0, 0], [0, 0], [1, 0])

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


class LostMembersTests(unittest.TestCase):

    def test_lost_members_named_in_one_event_are_told_to_the_room_in_one_message(self):
        h = SharedHarness(self)
        for conn_id in range(1, 6):
            h.request(conn_id, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: m%d\n"
                      % conn_id)
            h.publish(b"J 0 %d me %d %d 0\nr\nm%d" % (conn_id, conn_id, conn_id, conn_id))
            h.reply([0, conn_id, conn_id, 0, int(conn_id == 1)])
            h.actions()
        h.got.clear()
        h.proto.connections_lost([1, 2, 3, 4])              # four reset at once
        h.reply([6, 1, 2, 3, 4])
        h.publish(b"L 0 6 me 0\n1 m1\n2 m2\n3 m3\n4 m4")
        self.assertEqual(len(h.got[5]), 1, "one message for the four leaves")
        for i in range(1, 5):
            self.assertIn(b"MESSAGE: m%d has left this chatroom." % i, h.got[5][0])
        self.assertEqual(h.shared.rooms.member_ids(0), (5,))


class ChatsInFlightTests(unittest.TestCase):

    def setUp(self) -> None:
        self.h = h = SharedHarness(self)
        for conn_id, room in ((1, "r"), (2, "s")):
            h.request(conn_id, b"JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: m%d\n"
                      % (room.encode(), conn_id))
            h.publish(b"J %d 1 me %d %d 0\n%s\nm%d" % (conn_id - 1, conn_id, conn_id,
                                                      room.encode(), conn_id))
            h.reply([conn_id - 1, conn_id, 1, 0, 1])
            h.actions()
        h.request(2, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: m2\n")
        h.publish(b"J 0 2 me 2 2 0\nr\nm2")
        h.reply([0, 2, 2, 0, 0])
        h.actions()
        h.got.clear()

    def next_actions(self, conn_id: int) -> list:
        actions = self.h.proto.maybe_next_actions(conn_id)
        for action in actions or ():
            if isinstance(action, Send):
                self.h.got.setdefault(conn_id, []).append(action.data)
        return actions

    def test_a_burst_of_chats_goes_at_once_and_what_follows_waits_for_their_echoes(self):
        h = self.h
        chat = b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: m1\nMESSAGE: c%d\n\n"
        h.proto.data_received(1, chat % 0 + chat % 1 + chat % 2 + b"HELO x\n" + chat % 3)
        self.assertEqual([self.next_actions(1) for _ in range(4)], [[], [], [], [Wait(1)]],
                         "three chats, none waiting; the HELO waits for them")
        self.assertEqual(h.shared.link_actions(), [])
        self.assertEqual(h.shared.link_output("cmd").count(b"EVALSHA"), 1, "in one call")
        self.assertEqual(self.next_actions(1), [Wait(1)], "still held")
        h.reply(b"3")
        h.shared.link_data("sub", pushed(batch(0, 3, [(1, "m1", "c%d" % i) for i in range(3)],
                                               node="me")), h.now)
        actions = h.shared.link_actions()
        self.assertEqual(actions[-1], Resume(1), "back: the connection goes on")
        self.assertEqual([a.data.split(b"MESSAGE: ")[1:] for a in actions[:-1]],
                         [[b"c0\n\nCHAT: 0\nCLIENT_NAME: m1\n",
                           b"c1\n\nCHAT: 0\nCLIENT_NAME: m1\n", b"c2\n\n"]],
                         "the three to each member in one piece")
        reply = self.next_actions(1)
        self.assertTrue(reply[0].data.startswith(b"HELO x"), "then the HELO's reply")
        self.assertEqual(self.next_actions(1), [], "and the chat after it")

    def test_a_batch_whose_chats_are_not_whole_chat_messages_reaches_nobody(self):
        h, good = self.h, chat_message(0, "ann", "hi")
        elsewhere = chat_message(1, "ann", "another room")
        # (each ends in as many blank lines as it counts chats: the bus passes them on)
        bad = [(b"CHAT\n\n", 1), (good[len(good) // 2:], 1), (elsewhere, 1),
               (good + b"MESSAGE: hi\n\n", 2)]
        for seq, (data, count) in enumerate(bad, start=3):
            h.publish(b"B 0 %d other %d\n" % (seq, count) + data)
        self.assertEqual(h.texts(1), [], "no part of any")
        self.assertEqual(h.shared.bus.bad_events, 4)
        h.publish(batch(0, 8, [(7, "ann", "whole")]))      # (the last bad one held two)
        self.assertEqual(h.texts(1), ["whole"], "the next whole one goes")

    def test_a_chat_redis_has_no_room_for_is_refused_at_once_and_the_next_one_goes(self):
        h = self.h
        chat = b"CHAT: 0\nJOIN_ID: %d\nCLIENT_NAME: m%d\nMESSAGE: %s\n\n"
        with mock.patch.object(bus, "MAX_UNANSWERED_BYTES", 300):
            h.request(1, chat % (1, 1, b"x" * 200))
            self.assertEqual(h.shared.refused, 0)
            h.request(2, chat % (2, 2, b"y" * 200))             # Redis has not answered yet
            self.assertEqual(len(h.got[2]), 1)
            self.assertTrue(h.got.pop(2)[0].startswith(b"ERROR_CODE: 15\nERROR_DESCRIPTION: the "
                                                       b"shared bus (Redis) is behind: your chat "
                                                       b"was not sent"))
            self.assertEqual(h.shared.refused, 1)
            h.reply(b"3")
            h.publish(said(0, 3, "x" * 200, node="me", conn=1, name="m1"))
            self.assertEqual(h.texts(2), ["x" * 200], "the other member's came, once")
            h.request(2, chat % (2, 2, b"y" * 200))
            self.assertEqual(h.got.get(2), None, "not refused")
            self.assertIn(2, h.shared._in_flight.by_conn, "on its way")
            h.reply(b"4")
            h.publish(said(0, 4, "y" * 200, node="me", conn=2, name="m2"))
            self.assertEqual(h.texts(2), ["y" * 200])
            self.assertEqual(h.shared._in_flight.by_conn, {}, "and done")

    def test_chats_whose_call_is_lost_with_the_link_each_get_an_error_and_their_echo_no_more(self):
        h = self.h
        chat = b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: m1\nMESSAGE: c%d\n\n"
        h.proto.data_received(1, chat % 0 + chat % 1 + b"HELO x\n")
        self.assertEqual([self.next_actions(1) for _ in range(3)], [[], [], [Wait(1)]])
        h.actions()                                         # (the call goes out)
        with self.assertLogs("cluster.shared", "WARNING"):  # "bus: down"
            h.shared.link_failed("cmd", "Redis did not answer", h.now)
            actions = h.shared.link_actions()
        errors = [a.data for a in actions if isinstance(a, Send)]
        self.assertEqual(len(errors), 2, "one a chat")
        self.assertTrue(all(e.startswith(b"ERROR_CODE: 15\n") and b"may not have reached" in e
                            for e in errors))
        self.assertEqual(actions[-1], Resume(1), "then the HELO")
        self.assertEqual(h.shared._in_flight.by_conn, {})
        self.assertTrue(self.next_actions(1)[0].data.startswith(b"HELO x"))
        h.link_up()
        h.actions()
        h.request(1, chat % 2)                              # on its way, numbered 5
        h.reply([], [1, 0], b"5")       # (the catch-up's last read, the heartbeat, the chat)
        # Redis had run the lost call (3 and 4): its echo is delivered, and finishes nothing.
        h.publish(batch(0, 3, [(1, "m1", "c0"), (1, "m1", "c1")], node="me"))
        self.assertEqual(b"".join(h.got.pop(2)),
                         chat_message(0, "m1", "c0") + chat_message(0, "m1", "c1"))
        self.assertIn(1, h.shared._in_flight.by_conn, "c2 is still on its way")
        h.publish(said(0, 5, "c2", node="me", conn=1, name="m1"))
        self.assertEqual(h.shared._in_flight.by_conn, {})

    def test_chats_whose_events_the_log_no_longer_has_are_done_and_their_sender_goes_on(self):
        h = self.h
        chat = b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: m1\nMESSAGE: c%d\n\n"
        h.proto.data_received(1, chat % 0 + chat % 1 + b"HELO x\n")
        self.assertEqual([self.next_actions(1) for _ in range(3)], [[], [], [Wait(1)]])
        h.actions()
        h.reply(b"3")                                       # numbered 3 and 4
        h.publish(said(0, 6, "later"))                      # 3 to 5 missing: read back
        with self.assertLogs("cluster.shared", "WARNING"):  # "events up to 5 could not be..."
            h.reply([[b"6-1", [b"e", said(0, 6, "later")]]])    # the log starts at 6
            actions = h.shared.link_actions()
        self.assertEqual(h.shared.bus.lost, 3)
        self.assertEqual(h.shared._in_flight.by_conn, {}, "done as far as this node can tell")
        self.assertEqual(actions, [Resume(1), Broadcast((1, 2), chat_message(0, "ann", "later"))])
        self.assertTrue(self.next_actions(1)[0].data.startswith(b"HELO x"), "the HELO goes")

    def test_a_chat_to_another_room_waits_for_the_chats_on_their_way(self):
        h = self.h
        h.proto.data_received(2, b"CHAT: 0\nJOIN_ID: 2\nCLIENT_NAME: m2\nMESSAGE: a\n\n"
                              b"CHAT: 1\nJOIN_ID: 2\nCLIENT_NAME: m2\nMESSAGE: b\n\n")
        self.assertEqual([self.next_actions(2), self.next_actions(2)], [[], [Wait(2)]])
        h.actions()
        h.reply(b"3")
        h.publish(said(0, 3, "a", node="me", conn=2, name="m2"))
        self.assertEqual(h.texts(2), ["a"])
        self.assertEqual(self.next_actions(2), [], "sent once the first is back")

    def test_a_chat_answered_here_waits_for_the_chats_on_their_way(self):
        h = self.h
        h.proto.data_received(1, b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: m1\nMESSAGE: a\n\n"
                              b"CHAT: 1\nJOIN_ID: 1\nCLIENT_NAME: m1\nMESSAGE: b\n\n")
        self.assertEqual([self.next_actions(1), self.next_actions(1)], [[], [Wait(1)]])
        h.actions()
        h.reply(b"3")
        h.publish(said(0, 3, "a", node="me", conn=1, name="m1"))
        self.assertEqual(h.texts(1), ["a"])
        self.assertIn(b"ERROR_CODE: 6", self.next_actions(1)[0].data, "not a member, after")


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
        h.publish(said(0, 4, "hi", node="me", conn=2, name="bob"))
        h.reply(b"4")
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
        h.publish(said(0, 4, "hi", node="me", conn=2, name="bob"))
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
        h.publish(said(0, 4, "hello", node="other", conn=5, name="bob"))
        self.assertEqual(h.texts(1), ["hello"])
        self.assertEqual(h.texts(2), [])

class LateJoinerTests(unittest.TestCase):
    """What bench/bus_load.py once counted as missing deliveries on a loaded machine: another
    node's member chatted while this node's member was still joining. Redis numbered those chats
    before the join, so the joiner gets none of them (a joiner misses nothing posted after its
    own announcement, and gets nothing posted before it: one order per room), and every one
    after it, those ahead of the join's reply included. Nothing is lost or read back."""

    def test_chats_numbered_before_a_join_are_not_the_joiners_and_later_ones_all_are(self):
        h = SharedHarness(self)
        h.request(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: bob\n")
        h.publish(*[said(0, seq, "before %d" % seq, conn=5) for seq in range(2, 6)])
        h.publish(b"J 0 6 me 1 7 0\nr\nbob", said(0, 7, "ahead of the reply", node="other", conn=5, name="ann"))
        h.reply([0, 7, 6, 1, 0])
        h.actions()
        h.publish(said(0, 8, "after", node="other", conn=5, name="ann"))
        self.assertEqual(h.texts(1), ["bob has joined this chatroom.", "ahead of the reply",
                                      "after"])
        self.assertEqual((h.shared.bus.lost, h.shared.bus.repaired), (0, 0))


if __name__ == "__main__":
    unittest.main()

