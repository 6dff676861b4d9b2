"""sansio/resp.py: the RESP2 encoder, the reply reader and the sans-IO Redis connection, in memory;
then one end-to-end class against a throw-away redis-server, when this machine has one."""
import os
import random
import selectors
import socket
import time
import unittest

from sansio import resp
from tests.redis_server import REDIS_SERVER, SKIP_REASON, RedisProcess
from sansio.resp import (NEED_DATA, Message, PMessage, RedisConnection, Reply, RespError,
                      RespProtocolError, RespReader, Subscribed, encode_command)

# A bound on every "call until NEED_DATA" loop: far more replies than any test produces.
MAX_EVENTS = 100_000


def drain(reader):
    """Every whole reply buffered in `reader`, in order."""
    out = []
    for _ in range(MAX_EVENTS):
        value = reader.maybe_next()
        if value is NEED_DATA:
            return out
        out.append(value)
    raise AssertionError("more than MAX_EVENTS replies")


def read_all(chunks):
    """Feed `chunks` one by one to a new reader, draining after each, and collect the replies."""
    reader = RespReader()
    out = []
    for chunk in chunks:
        reader.feed(chunk)
        out.extend(drain(reader))
    return out


def events_of(conn):
    out = []
    for _ in range(MAX_EVENTS):
        event = conn.maybe_next_event()
        if event is NEED_DATA:
            return out
        out.append(event)
    raise AssertionError("more than MAX_EVENTS events")


def random_chunks(data, rng, most=7):
    """`data` cut at random places into pieces of 1..most bytes."""
    chunks, at = [], 0
    while at < len(data):
        step = rng.randint(1, most)
        chunks.append(data[at:at + step])
        at += step
    return chunks


# ---------------------------------------------------------------------------------------------
# 1. Encoding commands
# ---------------------------------------------------------------------------------------------

class EncodeTests(unittest.TestCase):
    # The expected bytes are written out by hand from the RESP2 rules, not by the encoder.

    def test_a_command_is_an_array_of_bulk_strings(self):
        self.assertEqual(encode_command("SET", "key", "value"),
                         b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n")

    def test_one_word_command(self):
        self.assertEqual(encode_command("PING"), b"*1\r\n$4\r\nPING\r\n")

    def test_ints_are_sent_as_decimal_digits(self):
        self.assertEqual(encode_command("INCRBY", "n", 42),
                         b"*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$2\r\n42\r\n")
        self.assertEqual(encode_command("INCRBY", "n", -7),
                         b"*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$2\r\n-7\r\n")
        self.assertEqual(encode_command("X", 0), b"*2\r\n$1\r\nX\r\n$1\r\n0\r\n")

    def test_str_is_utf8_and_its_length_is_in_bytes(self):
        # "é" is two bytes in UTF-8, "€" three
        self.assertEqual(encode_command("SET", "é", "€"),
                         b"*3\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n$3\r\n\xe2\x82\xac\r\n")

    def test_bytes_are_sent_as_they_are_even_with_crlf_inside(self):
        self.assertEqual(encode_command(b"SET", b"k", b"a\r\nb\x00"),
                         b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nb\x00\r\n")

    def test_empty_argument(self):
        self.assertEqual(encode_command("SET", "k", ""),
                         b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n")

    def test_other_types_and_no_arguments_are_refused(self):
        for bad in (1.5, None, True, ["x"]):
            with self.subTest(bad=bad):
                with self.assertRaises(TypeError):
                    encode_command("SET", "k", bad)
        with self.assertRaises(ValueError):
            encode_command()


# ---------------------------------------------------------------------------------------------
# 2. Reading replies
# ---------------------------------------------------------------------------------------------

# One stream holding every reply type, with the values it must give.
STREAM = (b"+OK\r\n"
          b"-ERR unknown command 'FOO'\r\n"
          b":0\r\n"
          b":-9223372036854775808\r\n"
          b"$5\r\nhello\r\n"
          b"$0\r\n\r\n"
          b"$-1\r\n"
          b"$4\r\na\r\nb\r\n"                      # CRLF inside a bulk string is data
          b"*0\r\n"
          b"*-1\r\n"
          b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n*0\r\n-WRONGTYPE no\r\n"
          b"*2\r\n*1\r\n*1\r\n$-1\r\n+\r\n")
STREAM_VALUES = [
    "OK",
    RespError("ERR unknown command 'FOO'"),
    0,
    -9223372036854775808,
    b"hello",
    b"",
    None,
    b"a\r\nb",
    [],
    None,
    [1, [b"x", []], RespError("WRONGTYPE no")],
    [[[None]], ""],
]


class ReaderTests(unittest.TestCase):

    def test_every_reply_type_from_one_chunk(self):
        self.assertEqual(read_all([STREAM]), STREAM_VALUES)

    def test_types_of_values(self):
        simple, error, integer, bulk = read_all([b"+OK\r\n-ERR x\r\n:5\r\n$2\r\nOK\r\n"])
        self.assertIs(type(simple), str)        # a status and a bulk "OK" can be told apart
        self.assertIs(type(bulk), bytes)
        self.assertIs(type(integer), int)
        self.assertIsInstance(error, RespError)
        self.assertEqual(error.kind, "ERR")
        self.assertEqual(RespError("NOSCRIPT No matching script").kind, "NOSCRIPT")

    def test_nothing_yet_is_need_data(self):
        reader = RespReader()
        self.assertIs(reader.maybe_next(), NEED_DATA)
        reader.feed(b"")
        self.assertIs(reader.maybe_next(), NEED_DATA)
        reader.feed(b"$5\r\nhel")
        self.assertIs(reader.maybe_next(), NEED_DATA)
        reader.feed(b"lo\r")
        self.assertIs(reader.maybe_next(), NEED_DATA)
        reader.feed(b"\n")
        self.assertEqual(reader.maybe_next(), b"hello")
        self.assertIs(reader.maybe_next(), NEED_DATA)

    def test_split_at_every_single_point(self):
        for cut in range(len(STREAM) + 1):
            with self.subTest(cut=cut):
                self.assertEqual(read_all([STREAM[:cut], STREAM[cut:]]), STREAM_VALUES)

    def test_split_at_every_pair_of_points(self):
        # Two cuts: every reply boundary meets every place inside another reply.
        n = len(STREAM)
        for first in range(n + 1):
            for second in range(first, n + 1):
                chunks = [STREAM[:first], STREAM[first:second], STREAM[second:]]
                self.assertEqual(read_all(chunks), STREAM_VALUES, (first, second))

    def test_one_byte_at_a_time(self):
        self.assertEqual(read_all([STREAM[i:i + 1] for i in range(len(STREAM))]), STREAM_VALUES)

    def test_random_splits_with_a_fixed_seed(self):
        rng = random.Random(20240601)
        stream = STREAM * 20
        for _ in range(300):
            self.assertEqual(read_all(random_chunks(stream, rng)), STREAM_VALUES * 20)

    def test_arrays_of_bulk_strings_read_the_same_whole_as_in_pieces(self):
        # (whole in the buffer they are read in one pass: RespReader._take_flat)
        rng = random.Random(7)
        for _ in range(200):
            values = [[bytes(rng.choice(b"ab\r\n*$") for _ in range(rng.randrange(12)))
                       for _ in range(rng.randrange(1, 5))] for _ in range(rng.randrange(1, 4))]
            stream = b"".join(b"*%d\r\n" % len(v) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x)
                                                            for x in v) for v in values)
            self.assertEqual(read_all([stream]), values)
            self.assertEqual(read_all(random_chunks(stream, rng)), values)
            self.assertEqual(read_all([stream[i:i + 1] for i in range(len(stream))]), values)

    def test_feeding_everything_before_reading(self):
        reader = RespReader()
        for i in range(len(STREAM)):
            reader.feed(STREAM[i:i + 1])
        self.assertEqual(drain(reader), STREAM_VALUES)

    def test_a_big_bulk_trickling_in_costs_linear_time(self):
        # 32 MiB in 1 KiB pieces, asking for the reply after each: 32768 feeds. Rescanning the
        # buffer on each would move some 5 * 10**11 bytes; linear, it takes well under a second.
        size, piece = 32 * 1024 * 1024, 1024
        payload = bytes(range(256)) * (size // 256)
        data = b"$%d\r\n" % size + payload + b"\r\n+after\r\n"
        reader = RespReader()
        started = time.monotonic()
        got = []
        for at in range(0, len(data), piece):
            reader.feed(data[at:at + piece])
            got.extend(drain(reader))
        elapsed = time.monotonic() - started
        self.assertEqual(len(got), 2)
        self.assertTrue(got[0] == payload)
        self.assertEqual(got[1], "after")
        self.assertLess(elapsed, 20.0)

    def test_a_long_line_trickling_in_is_searched_once(self):
        # A line of the longest allowed length, one byte at a time.
        line = b"+" + b"x" * (resp.MAX_LINE_BYTES - 3) + b"\r\n"
        reader = RespReader()
        for i in range(len(line)):
            reader.feed(line[i:i + 1])
            value = reader.maybe_next()
        self.assertEqual(value, "x" * (resp.MAX_LINE_BYTES - 3))

    def test_integers_at_the_edges_of_64_bits(self):
        self.assertEqual(read_all([b":9223372036854775807\r\n:-9223372036854775808\r\n:-0\r\n"]),
                         [9223372036854775807, -9223372036854775808, 0])


class ReaderLimitTests(unittest.TestCase):

    def assert_refused(self, data):
        reader = RespReader()
        reader.feed(data)
        with self.assertRaises(RespProtocolError):
            drain(reader)
        return reader

    def test_bulk_at_the_limit_is_waited_for_one_past_is_refused_at_its_header(self):
        reader = RespReader()
        reader.feed(b"$%d\r\n" % resp.MAX_BULK_BYTES)
        self.assertIs(reader.maybe_next(), NEED_DATA)
        self.assert_refused(b"$%d\r\n" % (resp.MAX_BULK_BYTES + 1))
        self.assert_refused(b"$99999999999999999999\r\n")

    def test_array_count_at_the_limit_is_waited_for_one_past_is_refused(self):
        reader = RespReader()
        reader.feed(b"*%d\r\n" % resp.MAX_ARRAY_ELEMENTS)
        self.assertIs(reader.maybe_next(), NEED_DATA)
        self.assert_refused(b"*%d\r\n" % (resp.MAX_ARRAY_ELEMENTS + 1))

    def test_nesting_to_the_limit_is_read_one_deeper_is_refused(self):
        depth = resp.MAX_ARRAY_DEPTH
        value = read_all([b"*1\r\n" * depth + b":7\r\n"])[0]
        for _ in range(depth):
            self.assertEqual(len(value), 1)
            value = value[0]
        self.assertEqual(value, 7)
        self.assert_refused(b"*1\r\n" * (depth + 1) + b":7\r\n")
        # an empty array is a whole value at once, not a level waiting for elements
        value = read_all([b"*1\r\n" * depth + b"*0\r\n"])[0]
        for _ in range(depth):
            value = value[0]
        self.assertEqual(value, [])

    def test_longest_line_is_read_one_longer_is_refused(self):
        # MAX_LINE_BYTES counts the type byte and the CRLF
        longest = b"+" + b"x" * (resp.MAX_LINE_BYTES - 3)
        self.assertEqual(read_all([longest + b"\r\n"]), ["x" * (resp.MAX_LINE_BYTES - 3)])
        self.assert_refused(longest + b"x\r\n")

    def test_a_line_without_end_is_refused_once_past_the_limit(self):
        # One byte short of the limit: the LF may be the next byte to come...
        reader = RespReader()
        reader.feed(b"+" + b"x" * (resp.MAX_LINE_BYTES - 3) + b"\r")
        self.assertIs(reader.maybe_next(), NEED_DATA)
        reader = RespReader()
        reader.feed(b"+" + b"x" * (resp.MAX_LINE_BYTES - 2))
        self.assertIs(reader.maybe_next(), NEED_DATA)
        reader.feed(b"x")                    # ...but one byte more and it is too long already:
        with self.assertRaises(RespProtocolError):
            reader.maybe_next()              # refused without waiting for an end that may not come


class ReaderProtocolErrorTests(unittest.TestCase):

    BAD = [
        (b"?x\r\n", "unknown type byte"),
        (b"\r\n", "empty line"),
        (b"%1\r\n", "RESP3 map"),
        (b"_\r\n", "RESP3 null"),
        (b"$abc\r\n", "bulk length not a number"),
        (b"$-2\r\n", "bulk length below -1"),
        (b"$+1\r\nx\r\n", "bulk length with a sign"),
        (b"$ 1\r\nx\r\n", "bulk length with a space"),
        (b"$\r\n", "bulk length missing"),
        (b"*-2\r\n", "array length below -1"),
        (b"*1x\r\n", "array length not a number"),
        (b"$3\r\nabcX\r\n", "bulk string not followed by CRLF"),
        (b"$3\r\nabc\n\r", "bulk string followed by LF CR"),
        (b"+OK\n", "line ended by a bare LF"),
        (b"+O\rK\r\n", "bare CR inside a line"),
        (b"+OK\r\r\n", "two CRs before the LF"),
        (b":1.5\r\n", "integer with a fraction"),
        (b":+1\r\n", "integer with a plus sign"),
        (b":1_000\r\n", "integer with an underscore"),
        (b":\r\n", "integer without digits"),
        (b":9223372036854775808\r\n", "integer past 64 bits"),
        (b":" + b"9" * 5000 + b"\r\n", "integer of 5000 digits"),
        (b"*2\r\n:1\r\n?\r\n", "bad type byte inside an array"),
        (b"*2\r\n$1\r\nx\r\n$3\r\nabcX\r\n", "a bulk string in an array not followed by CRLF"),
        (b"*1\r\n$2\r\nab\n\r", "a bulk string in an array followed by LF CR"),
    ]

    def test_each_is_refused(self):
        for data, why in self.BAD:
            with self.subTest(why=why):
                reader = RespReader()
                reader.feed(data)
                with self.assertRaises(RespProtocolError):
                    drain(reader)

    def test_each_is_refused_however_split(self):
        for data, why in self.BAD:
            for cut in range(len(data) + 1):
                with self.subTest(why=why, cut=cut):
                    with self.assertRaises(RespProtocolError):
                        read_all([data[:cut], data[cut:]])

    def test_replies_before_the_error_are_delivered(self):
        reader = RespReader()
        reader.feed(b"+OK\r\n:1\r\n?bad\r\n")
        self.assertEqual(reader.maybe_next(), "OK")
        self.assertEqual(reader.maybe_next(), 1)
        with self.assertRaises(RespProtocolError):
            reader.maybe_next()

    def test_after_a_protocol_error_the_reader_refuses_to_go_on(self):
        reader = RespReader()
        reader.feed(b"?bad\r\n")
        with self.assertRaises(RespProtocolError):
            reader.maybe_next()
        with self.assertRaises(RespProtocolError):
            reader.maybe_next()
        with self.assertRaises(RespProtocolError):
            reader.feed(b"+OK\r\n")


# ---------------------------------------------------------------------------------------------
# 3. The connection: pipelining and pub/sub
# ---------------------------------------------------------------------------------------------

def subscribe_reply(kind, channel, count):
    channel_part = b"$-1\r\n" if channel is None else b"$%d\r\n%s\r\n" % (len(channel), channel)
    return b"*3\r\n$%d\r\n%s\r\n%s:%d\r\n" % (len(kind), kind, channel_part, count)


def message(channel, data):
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel,
                                                                 len(data), data)


def pmessage(pattern, channel, data):
    return (b"*4\r\n$8\r\npmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(pattern), pattern, len(channel), channel, len(data), data))


class ConnectionTests(unittest.TestCase):

    def test_send_returns_the_encoded_command_and_waits_for_its_reply(self):
        conn = RedisConnection()
        self.assertEqual(conn.send("GET", "k"), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        self.assertEqual(conn.pending, 1)
        self.assertIs(conn.maybe_next_event(), NEED_DATA)
        conn.receive_data(b"$1\r\nv\r\n")
        self.assertEqual(conn.maybe_next_event(), Reply(b"v"))
        self.assertEqual(conn.pending, 0)
        self.assertIs(conn.maybe_next_event(), NEED_DATA)

    def test_pipelined_replies_are_matched_in_order_even_around_an_error(self):
        conn = RedisConnection()
        out = b"".join([conn.send("SET", "k", "1"), conn.send("INCR", "k"),
                        conn.send("LPUSH", "k", "x"), conn.send("GET", "k")])
        self.assertEqual(out.count(b"*"), 4)
        self.assertEqual(conn.pending, 4)
        stream = (b"+OK\r\n:2\r\n"
                  b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
                  b"$1\r\n2\r\n")
        wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
        want = [Reply("OK"), Reply(2), Reply(RespError(wrongtype)), Reply(b"2")]
        for cut in range(len(stream) + 1):
            with self.subTest(cut=cut):
                conn = RedisConnection()
                for args in (("SET", "k", "1"), ("INCR", "k"), ("LPUSH", "k", "x"), ("GET", "k")):
                    conn.send(*args)
                conn.receive_data(stream[:cut])
                events = events_of(conn)
                conn.receive_data(stream[cut:])
                events += events_of(conn)
                self.assertEqual(events, want)
                self.assertEqual(conn.pending, 0)

    def test_a_reply_nobody_asked_for_is_a_protocol_error_and_the_end(self):
        conn = RedisConnection()
        conn.receive_data(b"+OK\r\n+OK\r\n")
        with self.assertRaises(RespProtocolError):
            conn.maybe_next_event()
        conn.send("PING")                # a reply can no longer be told from a stray one
        with self.assertRaises(RespProtocolError):
            conn.maybe_next_event()
        with self.assertRaises(RespProtocolError):
            conn.receive_data(b"+PONG\r\n")

    def test_an_array_that_looks_like_a_message_is_a_reply_outside_subscribe_mode(self):
        conn = RedisConnection()
        conn.send("LRANGE", "l", 0, -1)
        conn.receive_data(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n")
        self.assertEqual(events_of(conn), [Reply([b"message", b"a", b"b"])])
        self.assertFalse(conn.subscribed)

    def test_subscribe_confirms_each_channel_then_messages_arrive(self):
        conn = RedisConnection()
        conn.send("GET", "k")
        conn.send("SUBSCRIBE", "a", "b")
        self.assertEqual(conn.pending, 2)
        conn.receive_data(b"$-1\r\n" + subscribe_reply(b"subscribe", b"a", 1))
        self.assertEqual(events_of(conn), [Reply(None), Subscribed("subscribe", b"a", 1)])
        self.assertTrue(conn.subscribed)
        self.assertEqual(conn.pending, 1)          # still waiting for b's confirmation
        # a message on "a" may come before "b" is confirmed
        conn.receive_data(message(b"a", b"hi") + subscribe_reply(b"subscribe", b"b", 2)
                          + message(b"b", b"there"))
        self.assertEqual(events_of(conn), [Message(b"a", b"hi"), Subscribed("subscribe", b"b", 2),
                                           Message(b"b", b"there")])
        self.assertEqual(conn.pending, 0)

    def test_psubscribe_and_pmessage(self):
        conn = RedisConnection()
        conn.send("PSUBSCRIBE", "room.*")
        conn.receive_data(subscribe_reply(b"psubscribe", b"room.*", 1)
                          + pmessage(b"room.*", b"room.1", b"x"))
        self.assertEqual(events_of(conn), [Subscribed("psubscribe", b"room.*", 1),
                                           PMessage(b"room.*", b"room.1", b"x")])

    def test_ping_in_subscribe_mode_is_a_reply_among_messages(self):
        conn = RedisConnection()
        conn.send("SUBSCRIBE", "a")
        conn.send("PING")
        conn.receive_data(subscribe_reply(b"subscribe", b"a", 1) + message(b"a", b"1")
                          + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n" + message(b"a", b"2"))
        self.assertEqual(events_of(conn), [Subscribed("subscribe", b"a", 1), Message(b"a", b"1"),
                                           Reply([b"pong", b""]), Message(b"a", b"2")])

    def test_a_refused_command_in_subscribe_mode_is_an_error_reply(self):
        conn = RedisConnection()
        conn.send("SUBSCRIBE", "a")
        conn.send("GET", "k")
        conn.receive_data(subscribe_reply(b"subscribe", b"a", 1)
                          + b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE"
                            b" / PING / QUIT / RESET are allowed in this context\r\n")
        events = events_of(conn)
        self.assertEqual(len(events), 2)
        self.assertIsInstance(events[1].value, RespError)

    def test_subscribe_without_channels_is_one_error_reply(self):
        conn = RedisConnection()
        conn.send("SUBSCRIBE")
        conn.send("PING")
        conn.receive_data(b"-ERR wrong number of arguments for 'subscribe' command\r\n+PONG\r\n")
        events = events_of(conn)
        self.assertEqual(events[1], Reply("PONG"))
        self.assertEqual(events[0].value.kind, "ERR")
        self.assertFalse(conn.subscribed)

    def test_unsubscribe_from_everything_waits_for_one_confirmation_per_channel(self):
        conn = RedisConnection()
        conn.send("SUBSCRIBE", "a", "b")
        conn.send("PSUBSCRIBE", "p*")
        conn.send("UNSUBSCRIBE")                   # drops a and b: two confirmations
        conn.send("PUNSUBSCRIBE")                  # drops p*: one
        conn.send("PING")
        conn.receive_data(subscribe_reply(b"subscribe", b"a", 1)
                          + subscribe_reply(b"subscribe", b"b", 2)
                          + subscribe_reply(b"psubscribe", b"p*", 3)
                          + subscribe_reply(b"unsubscribe", b"b", 2)
                          + subscribe_reply(b"unsubscribe", b"a", 1)
                          + pmessage(b"p*", b"pq", b"late")
                          + subscribe_reply(b"punsubscribe", b"p*", 0)
                          + b"+PONG\r\n")
        events = events_of(conn)
        self.assertEqual(events, [Subscribed("subscribe", b"a", 1),
                                  Subscribed("subscribe", b"b", 2),
                                  Subscribed("psubscribe", b"p*", 3),
                                  Subscribed("unsubscribe", b"b", 2),
                                  Subscribed("unsubscribe", b"a", 1),
                                  PMessage(b"p*", b"pq", b"late"),
                                  Subscribed("punsubscribe", b"p*", 0),
                                  Reply("PONG")])
        self.assertFalse(conn.subscribed)
        self.assertEqual(conn.pending, 0)

    def test_unsubscribe_when_subscribed_to_nothing_is_one_null_confirmation(self):
        conn = RedisConnection()
        conn.send("UNSUBSCRIBE")
        conn.send("PING")
        conn.receive_data(subscribe_reply(b"unsubscribe", None, 0) + b"+PONG\r\n")
        self.assertEqual(events_of(conn), [Subscribed("unsubscribe", None, 0), Reply("PONG")])

    def test_named_unsubscribe_confirms_each_name_and_repeats_count(self):
        conn = RedisConnection()
        conn.send("SUBSCRIBE", "a", "a")           # the server confirms both, count stays 1
        conn.send("UNSUBSCRIBE", "a", "zz")
        conn.receive_data(subscribe_reply(b"subscribe", b"a", 1)
                          + subscribe_reply(b"subscribe", b"a", 1)
                          + subscribe_reply(b"unsubscribe", b"a", 0)
                          + subscribe_reply(b"unsubscribe", b"zz", 0))
        self.assertEqual(len(events_of(conn)), 4)
        self.assertEqual(conn.pending, 0)
        self.assertFalse(conn.subscribed)

    def test_reset_leaves_subscribe_mode(self):
        conn = RedisConnection()
        conn.send("SUBSCRIBE", "a")
        conn.send("RESET")
        conn.receive_data(subscribe_reply(b"subscribe", b"a", 1) + b"+RESET\r\n")
        self.assertEqual(events_of(conn), [Subscribed("subscribe", b"a", 1), Reply("RESET")])
        self.assertFalse(conn.subscribed)
        conn.send("LRANGE", "l", 0, -1)            # so a message-shaped array is a reply again
        conn.receive_data(message(b"a", b"b"))
        self.assertEqual(events_of(conn), [Reply([b"message", b"a", b"b"])])

    def test_a_confirmation_for_another_command_is_a_protocol_error(self):
        conn = RedisConnection()
        conn.send("SUBSCRIBE", "a")
        conn.receive_data(subscribe_reply(b"psubscribe", b"a", 1))
        with self.assertRaises(RespProtocolError):
            conn.maybe_next_event()

    def test_pubsub_stream_split_at_every_point_and_at_random(self):
        stream = (b"+OK\r\n"
                  + subscribe_reply(b"subscribe", b"a", 1)
                  + message(b"a", b"one\r\ntwo")
                  + subscribe_reply(b"psubscribe", b"r.*", 2)
                  + pmessage(b"r.*", b"r.1", b"")
                  + message(b"a", b"x" * 40)
                  + b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
                  + subscribe_reply(b"unsubscribe", b"a", 1))
        want = [Reply("OK"), Subscribed("subscribe", b"a", 1), Message(b"a", b"one\r\ntwo"),
                Subscribed("psubscribe", b"r.*", 2), PMessage(b"r.*", b"r.1", b""),
                Message(b"a", b"x" * 40), Reply([b"pong", b""]),
                Subscribed("unsubscribe", b"a", 1)]

        def run(chunks):
            conn = RedisConnection()
            for args in (("SET", "k", "v"), ("SUBSCRIBE", "a"), ("PSUBSCRIBE", "r.*"), ("PING",),
                         ("UNSUBSCRIBE", "a")):
                conn.send(*args)
            events = []
            for chunk in chunks:
                conn.receive_data(chunk)
                events += events_of(conn)
            self.assertEqual(conn.pending, 0)
            self.assertTrue(conn.subscribed)       # still on r.*
            return events

        for cut in range(len(stream) + 1):
            self.assertEqual(run([stream[:cut], stream[cut:]]), want, cut)
        rng = random.Random(7)
        for _ in range(200):
            self.assertEqual(run(random_chunks(stream, rng, most=11)), want)


# ---------------------------------------------------------------------------------------------
# 4. End to end, against a real redis-server (skipped where there is none)
# ---------------------------------------------------------------------------------------------

# A bound for the end-to-end waits: a local redis-server answers in microseconds; this only
# stops a broken run from hanging the suite. (tests/redis_server.py starts and ends it.)
REPLY_TIMEOUT = 5.0


class Client:
    """A RedisConnection on a nonblocking socket, driven by a selectors loop the way the
    server's reactor will drive it."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
        self.sock.setblocking(False)
        self.conn = RedisConnection()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.out = bytearray()

    def close(self):
        self.selector.close()
        self.sock.close()

    def send(self, *args):
        self.out += self.conn.send(*args)

    def events(self, count, timeout=REPLY_TIMEOUT):
        """Run the loop until `count` events have arrived (or fail after `timeout`)."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < count:
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
            self.selector.modify(self.sock, want)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out with %d of %d events: %r" % (len(got), count, got))
            for _key, mask in self.selector.select(left):
                if mask & selectors.EVENT_WRITE and self.out:
                    try:
                        sent = self.sock.send(self.out)
                    except BlockingIOError:
                        sent = 0
                    del self.out[:sent]
                if mask & selectors.EVENT_READ:
                    try:
                        data = self.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise AssertionError("redis-server closed the connection")
                    self.conn.receive_data(data)
                    for _ in range(MAX_EVENTS):
                        event = self.conn.maybe_next_event()
                        if event is NEED_DATA:
                            break
                        got.append(event)
        return got

    def call(self, *args):
        self.send(*args)
        (event,) = self.events(1)
        return event.value


@unittest.skipUnless(REDIS_SERVER, SKIP_REASON)
class RedisServerTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.redis = RedisProcess()
        cls.port = cls.redis.port

    @classmethod
    def tearDownClass(cls):
        cls.redis.stop()

    def client(self):
        client = Client(self.port)
        self.addCleanup(client.close)
        return client

    def test_set_get_incr(self):
        c = self.client()
        self.assertEqual(c.call("SET", "e2e:k", b"v\r\n\x00"), "OK")
        self.assertEqual(c.call("GET", "e2e:k"), b"v\r\n\x00")
        self.assertEqual(c.call("GET", "e2e:missing"), None)
        self.assertEqual(c.call("DEL", "e2e:n"), 0)
        self.assertEqual(c.call("INCR", "e2e:n"), 1)
        self.assertEqual(c.call("INCRBY", "e2e:n", 41), 42)
        error = c.call("INCR", "e2e:k")
        self.assertIsInstance(error, RespError)
        self.assertEqual(error.kind, "ERR")

    def test_pipelined_batch(self):
        c = self.client()
        c.call("DEL", "e2e:list")
        for i in range(500):
            c.send("RPUSH", "e2e:list", i)
        c.send("LRANGE", "e2e:list", 0, 2)
        c.send("HSET", "e2e:list", "f", "v")        # wrong type: an error in the middle
        c.send("LLEN", "e2e:list")
        events = c.events(503)
        self.assertEqual([e.value for e in events[:500]], list(range(1, 501)))
        self.assertEqual(events[500], Reply([b"0", b"1", b"2"]))
        self.assertEqual(events[501].value.kind, "WRONGTYPE")
        self.assertEqual(events[502], Reply(500))
        self.assertEqual(c.conn.pending, 0)

    def test_a_big_value_round_trips(self):
        c = self.client()
        value = os.urandom(3 * 1024 * 1024)
        self.assertEqual(c.call("SET", "e2e:big", value), "OK")
        self.assertTrue(c.call("GET", "e2e:big") == value)

    def test_subscribe_and_publish_from_a_second_connection(self):
        sub, pub = self.client(), self.client()
        sub.send("SUBSCRIBE", "e2e:a", "e2e:b")
        sub.send("PSUBSCRIBE", "e2e:room.*")
        self.assertEqual(sub.events(3), [Subscribed("subscribe", b"e2e:a", 1),
                                         Subscribed("subscribe", b"e2e:b", 2),
                                         Subscribed("psubscribe", b"e2e:room.*", 3)])
        self.assertTrue(sub.conn.subscribed)
        self.assertEqual(pub.call("PUBLISH", "e2e:a", "hello"), 1)
        self.assertEqual(pub.call("PUBLISH", "e2e:room.7", b"\x00bin"), 1)
        self.assertEqual(sub.events(2), [Message(b"e2e:a", b"hello"),
                                         PMessage(b"e2e:room.*", b"e2e:room.7", b"\x00bin")])
        sub.send("PING")
        self.assertEqual(sub.events(1), [Reply([b"pong", b""])])
        sub.send("UNSUBSCRIBE")
        sub.send("PUNSUBSCRIBE")
        events = sub.events(3)
        self.assertEqual(sorted(e.channel for e in events[:2]), [b"e2e:a", b"e2e:b"])
        self.assertEqual(events[2], Subscribed("punsubscribe", b"e2e:room.*", 0))
        self.assertFalse(sub.conn.subscribed)
        self.assertEqual(sub.call("ECHO", "back to normal"), b"back to normal")


if __name__ == "__main__":
    unittest.main()
