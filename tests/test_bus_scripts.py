"""sansio/bus_scripts.py: the events the nodes publish, read back (without Redis); and the
heartbeat script's clock, against a throw-away redis-server (skipped without one).

What the other scripts do is tested end to end in tests/test_bus.py.
"""
import os
import signal
import socket
import time
import unittest

from sansio.bus_scripts import (SCRIPT_TEXTS, Joined, Left, Said, chat_args, chat_numbers,
                                decode_event, split_batch, split_published)
from sansio.resp import NEED_DATA, RespReader, encode_command
from tests.redis_server import HOST, REDIS_SERVER, SKIP_REASON, RedisProcess


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

    def test_a_batch_is_its_events_in_order(self):
        chat = "C 3 10 n1 12\nbo b\nline 1\nline 2 é".encode()
        batch = b"B\n%d\n%s3\nC 4" % (len(chat), chat)
        self.assertEqual(split_published(chat), [chat], "one event")
        self.assertEqual(split_published(b"B\n9\nC"), [b"B\n9\nC"], "for decode_event to refuse")
        self.assertEqual(split_batch(batch), [chat, b"C 4"])

    def test_a_truncated_or_garbled_batch_is_refused(self):
        for data in (b"B\n5\nabc", b"B\n-2\nabc", b"B\nx\nabc", b"B\n3"):
            with self.assertRaises(ValueError):
                split_batch(data)


@unittest.skipUnless(REDIS_SERVER, SKIP_REASON)
class HeartbeatClockTests(unittest.TestCase):
    """The heartbeat script with short times (DEAD_MS, STEP_MS) in place of 9 s and 3 s."""
    DEAD_MS, STEP_MS = 600, 200

    def setUp(self) -> None:
        self.redis = RedisProcess()
        self.addCleanup(self.redis.stop)

    def beat(self, node: str) -> list:
        return self.redis.command("EVAL", SCRIPT_TEXTS["heartbeat"], 0, "hb", node,
                                  self.DEAD_MS, self.STEP_MS)

    def beat_for(self, node: str, seconds: float) -> list:
        """`node` alone beats every STEP_MS / 2 for `seconds`; the nodes it reaped."""
        reaped = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            reaped += self.beat(node)[2:]
            time.sleep(self.STEP_MS / 2000)
        return reaped

    def test_a_node_whose_heartbeats_stop_is_reaped_by_a_survivor(self):
        self.beat("a"), self.beat("b")
        reaped = self.beat_for("a", 2 * self.DEAD_MS / 1000)
        self.assertEqual(reaped, [b"b"])

    def test_a_stall_of_redis_longer_than_the_dead_time_reaps_nobody(self):
        self.beat("a"), self.beat("b")
        os.kill(self.redis.proc.pid, signal.SIGSTOP)    # Redis serves nobody, as DEBUG SLEEP
        try:
            time.sleep(3 * self.DEAD_MS / 1000)
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        self.assertEqual(self.beat("a"), [1, 0])        # (Redis's clock says b is long dead)
        self.assertIsNotNone(self.redis.command("ZSCORE", "hb:nodes", "b"), "b was reaped")
        self.assertEqual(self.beat("b"), [1, 0])
        # ... and past the stall, heartbeats missed while Redis served still count.
        self.assertEqual(self.beat_for("a", 2 * self.DEAD_MS / 1000), [b"b"])


@unittest.skipUnless(REDIS_SERVER, SKIP_REASON)
class ChatsScriptTests(unittest.TestCase):
    """The chats script: the chats of one tick, several rooms, in one call."""

    def setUp(self) -> None:
        self.redis = RedisProcess()
        self.addCleanup(self.redis.stop)

    def test_each_chat_is_its_rooms_next_event_and_in_its_log_which_is_kept_alive(self):
        self.redis.command("SET", "c:seq:1", 4)             # room 1 had 4 events, room 2 none
        seqs = self.redis.command("EVAL", SCRIPT_TEXTS["chats"], 0, "c", "n1",
                                  *chat_args(7, 1, "ann", "one"),
                                  *chat_args(8, 2, "bob", "two\nlines"),
                                  *chat_args(7, 1, "ann", "three"))
        self.assertEqual(chat_numbers(seqs), [5, 1, 6])
        entries = self.redis.command("XRANGE", "c:log:1", "-", "+")
        self.assertEqual([(entry[0], decode_event(entry[1][1]).message) for entry in entries],
                         [(b"5-1", "one"), (b"6-1", "three")])
        self.assertEqual(decode_event(self.redis.command("XRANGE", "c:log:2", "-", "+")[0][1][1]),
                         Said(2, 1, "n1", 8, "bob", "two\nlines"))
        for ref in (1, 2):
            self.assertGreater(self.redis.command("TTL", "c:log:%d" % ref), 0)

    def test_each_rooms_chats_are_published_on_its_own_channel_as_one_batch(self):
        with socket.create_connection((HOST, self.redis.port), timeout=2.0) as sock:
            sock.sendall(encode_command("SUBSCRIBE", "c:events:1", "c:events"))
            reader = RespReader()
            self.redis.command("EVAL", SCRIPT_TEXTS["chats"], 0, "c", "n1",
                               *chat_args(7, 1, "ann", "one"), *chat_args(8, 2, "bob", "elsewhere"),
                               *chat_args(7, 1, "ann", "two"))
            self.redis.command("PUBLISH", "c:events", "end")
            replies = []
            for _ in range(50):                             # (and a 2 s timeout a read)
                if replies and replies[-1][-1] == b"end":
                    break
                reply = reader.maybe_next()
                if reply is NEED_DATA:
                    reader.feed(sock.recv(65536))
                else:
                    replies.append(reply)
        messages = [reply[1:] for reply in replies if reply[0] == b"message"]
        self.assertEqual(messages[-1], [b"c:events", b"end"], "nothing of room 2 came")
        self.assertEqual(len(messages), 2, "room 1's two chats in one message")
        self.assertEqual(messages[0][0], b"c:events:1")
        self.assertEqual([decode_event(event).message for event in split_batch(messages[0][1])],
                         ["one", "two"])


if __name__ == "__main__":
    unittest.main()
