"""sansio/bus_scripts.py: the events the nodes publish, read back (without Redis); and the
heartbeat script's clock, against a throw-away redis-server (skipped without one).

What the other scripts do is tested end to end in tests/test_bus.py.
"""
import os
import random
import signal
import socket
import time
import unittest

from sansio.bus_scripts import (CHAT_END, LOG_LENGTH, SCRIPT_TEXTS, Chats, Joined, Left,
                                chat_firsts, decode_any, decode_chats, decode_entries,
                                decode_event, split_chats)
from sansio.resp import NEED_DATA, RespReader, encode_command
from sansio.wire import Chat, Framer, RequestError, chat_message, parse_request
from tests.redis_server import HOST, REDIS_SERVER, SKIP_REASON, RedisProcess


class EventFormatTests(unittest.TestCase):

    def test_each_kind_decodes(self):
        self.assertEqual(decode_event(b"J 3 9 n1 12 40 0\nroom one\nbo b"),
                         Joined(3, 9, "n1", 12, 40, False, "room one", "bo b"))
        self.assertEqual(decode_event(b"L 3 11 n1 1\n12 bo b\n13 al"),
                         Left(3, 11, "n1", True, ((12, "bo b"), (13, "al"))))
        data = "a\nline\n\nab\xc3\xa9\n\n".encode("latin-1")
        self.assertEqual(decode_chats(b"B 3 10 n1 2\n" + data), Chats(3, 10, "n1", 2, data))

    def test_anything_else_is_refused(self):
        for data in (b"", b"X 1 2 n", b"C 1 2 n 3\nx\ny", b"J 1 2 n 3\nr\nx", b"\xff"):
            with self.assertRaises((ValueError, IndexError, UnicodeDecodeError)):
                decode_event(data)
        for data in (b"B 1 2 n 1\nabc", b"B 1 2 n 2\nabc\n\n", b"B 1 2 n 1\nab\n\nc\n\n",
                     b"B 1 2 n 1\n\n\nabc", b"B 1 2 n\na\n\n", b"B 1 2 n 1\n", b"B 1 2 n -1\na\n\n",
                     b"B 1 x n 1\na\n\n", b"B 1 2 n 1", b"B +1 2 n 1\na\n\n",
                     b"B 1 2 n 1_0\na\n\n", b"B 1 2 n 1 \na\n\n", b"B 1 2 n 1 1\na\n\nb\n\n",
                     b"B 1 2  n 1\na\n\n", b"B 1 2 n  1\na\n\n", b"B 1 2 n 1\na\n\n\n",
                     b"B 1 2 n 2\na\n\n\nb\n\n", b"B 1 2 n 0\n", b"B 1 2 n 0\na\n\n",
                     b"B 1 2 n %d\na\n\n" % 10 ** 18, b"B 1 %d n 1\na\n\n" % 10 ** 18,
                     b"B 1 2 n " + b"9" * 5000 + b"\na\n\nb\n\n"):
            with self.assertRaises((ValueError, IndexError, UnicodeDecodeError)):
                decode_chats(data)

    def test_a_chat_as_members_receive_it_ends_at_its_one_blank_line_whatever_was_sent(self):
        # What lets a batch do without sizes: whatever bytes a client sends, each CHAT the
        # server takes from them (framed as every transport frames them) is rendered for the
        # members with CHAT_END once, at its end.
        pieces = ["a", "\n", "\r", "\r\n", " ", "\t", "\x0b", "\x0c", "\x85", "\u2028", "é"]
        rng, chats = random.Random(19), 0
        for _ in range(3000):
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
            framer = Framer()
            framer.receive_data(("CHAT: 1\nJOIN_ID: 1\nCLIENT_NAME: x\nMESSAGE: %s\n\n"
                                 % text).encode("utf-8"))
            for _ in range(4):                      # (the requests those bytes hold)
                try:
                    frame = framer.maybe_next_frame()
                    request = None if frame is None else parse_request(frame)
                except RequestError:
                    continue
                if request is None:
                    break
                if isinstance(request, Chat):
                    chats += 1
                    data = chat_message(1, request.client_name, request.message)
                    self.assertEqual((data.count(CHAT_END), data.endswith(CHAT_END)),
                                     (1, True), repr(text))
        self.assertGreater(chats, 1000)

    def test_a_batch_splits_into_its_chats_numbered_one_after_the_other(self):
        data = b"B 3 10 n1 3\na\nb\n\nc\n\ndef\n\n"
        chats = decode_chats(data)
        self.assertEqual(split_chats(chats), [Chats(3, 10, "n1", 1, b"a\nb\n\n"),
                                              Chats(3, 11, "n1", 1, b"c\n\n"),
                                              Chats(3, 12, "n1", 1, b"def\n\n")])
        self.assertEqual(decode_any(data), split_chats(chats))
        self.assertEqual(decode_any(b"L 3 11 n1 1\n12 bo b"), [Left(3, 11, "n1", True,
                                                                   ((12, "bo b"),))])


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

    def chats(self, *rooms) -> list:
        """One call of the chats script, node "n1", rooms (ref, [(conn, bytes), ...])."""
        args = []
        for ref, chats in rooms:
            args += [ref, len(chats), b"".join(d for _c, d in chats)]
        return chat_firsts(self.redis.command("EVAL", SCRIPT_TEXTS["chats"], 0, "c", "n1", *args))

    def test_each_rooms_chats_are_its_next_events_and_one_entry_of_its_log_kept_alive(self):
        self.redis.command("SET", "c:seq:1", 4)             # room 1 had 4 events, room 2 none
        firsts = self.chats((1, [(7, b"one\n\n"), (7, b"three\n\n")]),
                            (2, [(8, b"two\nlines\n\n")]))
        self.assertEqual(firsts, [5, 1])
        entries = self.redis.command("XRANGE", "c:log:1", "6-0", "+")
        self.assertEqual([entry[0] for entry in entries], [b"6-1"], "named by its last number")
        self.assertEqual(decode_entries(entries), ([Chats(1, 5, "n1", 1, b"one\n\n"),
                                                    Chats(1, 6, "n1", 1, b"three\n\n")], 0))
        self.assertEqual(decode_entries(self.redis.command("XRANGE", "c:log:2", "-", "+")),
                         ([Chats(2, 1, "n1", 1, b"two\nlines\n\n")], 0))
        for ref in (1, 2):
            self.assertGreater(self.redis.command("TTL", "c:log:%d" % ref), 0)
        self.assertEqual(self.chats((1, [(9, b"four\n\n")])), [7])

    def test_a_rooms_log_keeps_its_last_events_however_they_were_batched(self):
        for _ in range(3 * LOG_LENGTH // 10):
            self.chats((1, [(7, b"x\n\n")] * 10))
        entries = self.redis.command("XRANGE", "c:log:1", "-", "+")
        events, bad = decode_entries(entries)
        self.assertEqual(bad, 0)
        self.assertEqual(events[-1].seq, 3 * LOG_LENGTH)
        self.assertLessEqual(events[0].seq, 2 * LOG_LENGTH + 1, "the last LOG_LENGTH kept")
        # ("~": Redis trims whole blocks of at most 100 entries, so up to a block more)
        self.assertLessEqual(len(entries), LOG_LENGTH // 10 + 101, "and not many more")

    def test_each_rooms_chats_are_published_on_its_own_channel_as_one_batch(self):
        with socket.create_connection((HOST, self.redis.port), timeout=2.0) as sock:
            sock.sendall(encode_command("SUBSCRIBE", "c:events:1", "c:events"))
            reader = RespReader()
            self.chats((1, [(7, b"one\n\n"), (7, b"two\n\n")]), (2, [(8, b"elsewhere\n\n")]))
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
        self.assertEqual(decode_chats(messages[0][1]),
                         Chats(1, 1, "n1", 2, b"one\n\ntwo\n\n"))


if __name__ == "__main__":
    unittest.main()
