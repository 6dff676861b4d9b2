"""Tests, layered as the code is (STYLE.md, rule 12).

1. Framer and parse_request: bytes -> frames -> requests, in memory.
2. Rooms: the room table on its own.
3. ChatProtocol: requests in, actions out, for every row of PROTOCOL.md Part 2 and every error.
4. Reactor: real sockets from socket.socketpair() and a tiny fake app, ticked by hand.
5. End to end: the real server (Server.py) in a subprocess on an ephemeral port, talked to over
   127.0.0.1 as clients would.

Run with `python3 -m unittest -v`. Every wait has a timeout; no result depends on a sleep.
"""
import socket
import threading
import time
import unittest

import protocol
import reactor
from protocol import (Broadcast, Chat, ChatProtocol, Close, Disconnect, ErrorCode, Framer, Helo,
                      Join, Kill, Leave, Other, RequestError, Send, Shutdown, chat_message,
                      parse_request)
from rooms import Rooms

# ---------------------------------------------------------------------------------------------
# 1. Framing and parsing
# ---------------------------------------------------------------------------------------------

JOIN = b"JOIN_CHATROOM: room1\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice\n"
LEAVE = b"LEAVE_CHATROOM: 0\nJOIN_ID: 1\nCLIENT_NAME: alice\n"
CHAT = b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: alice\nMESSAGE: hello\nsecond line\n\n"
DISCONNECT = b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: alice\n"
STREAM = b"HELO x\n" + JOIN + CHAT + LEAVE + b"UNKNOWN thing\n" + DISCONNECT + b"KILL_SERVICE\n"
STREAM_FRAMES = [
    b"HELO x",
    JOIN[:-1],
    b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: alice\nMESSAGE: hello\nsecond line",
    LEAVE[:-1],
    b"UNKNOWN thing",
    DISCONNECT[:-1],
    b"KILL_SERVICE",
]


def frames_of(framer):
    out = []
    while True:
        frame = framer.maybe_next_frame()
        if frame is None:
            return out
        out.append(frame)


def frame_all(data, chunk=None):
    """Feed `data` to a new Framer (in chunks of `chunk` bytes) and collect every frame."""
    framer = Framer()
    out = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        framer.receive_data(data[i:i + step])
        out += frames_of(framer)
    return out


class FramerTests(unittest.TestCase):

    def test_each_request_kind_is_framed_by_its_first_line(self):
        self.assertEqual(frame_all(STREAM), STREAM_FRAMES)

    def test_split_at_every_byte_gives_the_same_frames(self):
        self.assertEqual(frame_all(STREAM, chunk=1), STREAM_FRAMES)
        self.assertEqual(frame_all(STREAM, chunk=7), STREAM_FRAMES)

    def test_crlf_is_the_same_as_lf_even_split_between_chunks(self):
        crlf = STREAM.replace(b"\n", b"\r\n")
        self.assertEqual(frame_all(crlf), STREAM_FRAMES)
        self.assertEqual(frame_all(crlf, chunk=1), STREAM_FRAMES)

    def test_a_lone_cr_is_kept(self):
        self.assertEqual(frame_all(b"HELO a\rb\n"), [b"HELO a\rb"])

    def test_blank_lines_between_requests_are_skipped(self):
        self.assertEqual(frame_all(b"\n\n\r\nHELO x\n\n\nKILL_SERVICE\n"), [b"HELO x", b"KILL_SERVICE"])

    def test_chat_waits_for_its_blank_line(self):
        framer = Framer()
        framer.receive_data(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: one\n")
        self.assertIsNone(framer.maybe_next_frame())
        framer.receive_data(b"two\n")
        self.assertIsNone(framer.maybe_next_frame())
        framer.receive_data(b"\nHELO")
        self.assertEqual(framer.maybe_next_frame(),
                         b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: one\ntwo")
        self.assertIsNone(framer.maybe_next_frame())

    def test_a_blank_line_cuts_a_fixed_size_request_short(self):
        # the forgotten CLIENT_NAME must not swallow the HELO that follows
        self.assertEqual(frame_all(b"LEAVE_CHATROOM: 0\nJOIN_ID: 1\n\nHELO x\n"),
                         [b"LEAVE_CHATROOM: 0\nJOIN_ID: 1", b"HELO x"])

    def test_keyword_may_have_spaces_around_it(self):
        self.assertEqual(frame_all(b"JOIN_CHATROOM : r\nA\nB\nC\nHELO\n"),
                         [b"JOIN_CHATROOM : r\nA\nB\nC", b"HELO"])

    def test_incomplete_request_past_the_limit_is_refused(self):
        framer = Framer(max_request=100)
        framer.receive_data(b"x" * 100)
        self.assertIsNone(framer.maybe_next_frame())
        framer.receive_data(b"x")
        with self.assertRaises(RequestError) as caught:
            framer.maybe_next_frame()
        self.assertEqual(caught.exception.code, ErrorCode.REQUEST_TOO_LONG)

    def test_complete_request_past_the_limit_is_refused(self):
        framer = Framer(max_request=100)
        framer.receive_data(b"CHAT: 0\n" + b"y\n" * 60 + b"\n")
        with self.assertRaises(RequestError) as caught:
            framer.maybe_next_frame()
        self.assertEqual(caught.exception.code, ErrorCode.REQUEST_TOO_LONG)

    def test_request_at_the_limit_is_accepted(self):
        framer = Framer(max_request=10)
        framer.receive_data(b"HELO 12345\n")
        self.assertEqual(framer.maybe_next_frame(), b"HELO 12345")

    def test_trickled_request_is_not_rescanned(self):
        # The search resumes where it stopped: after a byte-by-byte line the framer has looked
        # at each byte once. (White-box: the bound that keeps a slow sender O(n).)
        framer = Framer()
        for _ in range(1000):
            framer.receive_data(b"z")
            self.assertIsNone(framer.maybe_next_frame())
        self.assertEqual(framer._scanned, 1000)
        framer.receive_data(b"\n")
        self.assertEqual(framer.maybe_next_frame(), b"z" * 1000)


class ParseTests(unittest.TestCase):

    def assertError(self, frame, code):
        with self.assertRaises(RequestError) as caught:
            parse_request(frame)
        self.assertEqual(caught.exception.code, code, caught.exception.description)
        self.assertTrue(caught.exception.description)

    def test_helo_keeps_its_whole_line(self):
        self.assertEqual(parse_request(b"HELO  some text "), Helo("HELO  some text "))

    def test_kill_service(self):
        self.assertEqual(parse_request(b"KILL_SERVICE"), Kill())

    def test_join(self):
        self.assertEqual(parse_request(b"JOIN_CHATROOM:  my room \nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME:bob "),
                         Join("my room", "bob"))

    def test_join_room_name_may_be_any_unicode(self):
        self.assertEqual(parse_request("JOIN_CHATROOM: café ☕\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: é".encode()),
                         Join("café ☕", "é"))

    def test_leave(self):
        self.assertEqual(parse_request(LEAVE[:-1]), Leave(0, 1, "alice"))

    def test_chat_keeps_inner_newlines_and_trims_the_ends(self):
        self.assertEqual(parse_request(b"CHAT: 3 \nJOIN_ID: 7\nCLIENT_NAME: a\nMESSAGE:  hi\n there  "),
                         Chat(3, 7, "a", "hi\n there"))

    def test_disconnect(self):
        self.assertEqual(parse_request(DISCONNECT[:-1]), Disconnect("alice"))

    def test_unknown_first_lines_are_other_messages(self):
        for line in ("HELLO", "KILL_SERVICE now", "CHAT 0", "join_chatroom: x", "HELO:x", ""):
            self.assertEqual(parse_request(line.encode()), Other(line), line)

    def test_missing_field(self):
        self.assertError(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a", ErrorCode.MALFORMED_REQUEST)
        self.assertError(b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0", ErrorCode.MALFORMED_REQUEST)

    def test_misnamed_or_reordered_field(self):
        self.assertError(b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORTS: 0\nCLIENT_NAME: a",
                         ErrorCode.MALFORMED_REQUEST)
        self.assertError(b"LEAVE_CHATROOM: 0\nCLIENT_NAME: a\nJOIN_ID: 1", ErrorCode.MALFORMED_REQUEST)
        self.assertError(b"DISCONNECT: 0\nPORT 0\nCLIENT_NAME: a", ErrorCode.MALFORMED_REQUEST)

    def test_refs_and_ids_must_be_plain_non_negative_integers(self):
        for bad in ("x", "-1", "+1", "1_0", "1.0", "\u0661", "", "9" * 5000):
            self.assertError(("CHAT: %s\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: m" % bad).encode(),
                             ErrorCode.BAD_INTEGER)
        self.assertError(b"LEAVE_CHATROOM: 0\nJOIN_ID: one\nCLIENT_NAME: a", ErrorCode.BAD_INTEGER)

    def test_huge_ref_is_an_integer(self):
        self.assertEqual(parse_request(b"LEAVE_CHATROOM: 99999999999999999999\nJOIN_ID: 0\nCLIENT_NAME: a").ref,
                         99999999999999999999)

    def test_empty_names(self):
        self.assertError(b"JOIN_CHATROOM:  \nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: a", ErrorCode.EMPTY_ROOM_NAME)
        self.assertError(b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME:", ErrorCode.EMPTY_CLIENT_NAME)
        self.assertError(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: \nMESSAGE: m", ErrorCode.EMPTY_CLIENT_NAME)

    def test_invalid_utf8(self):
        self.assertError(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: \xff", ErrorCode.INVALID_UTF8)
        self.assertError(b"\xc3", ErrorCode.INVALID_UTF8)

    def test_error_codes_are_distinct(self):
        codes = [int(code) for code in ErrorCode]
        self.assertEqual(len(codes), len(set(codes)))


# ---------------------------------------------------------------------------------------------
# 2. Rooms
# ---------------------------------------------------------------------------------------------

class RoomsTests(unittest.TestCase):

    def setUp(self):
        self.rooms = Rooms()

    def test_refs_count_from_zero_and_are_stable_per_name(self):
        self.assertEqual(self.rooms.join(10, "room1", "a")[0], 0)
        self.assertEqual(self.rooms.join(11, "room2", "b")[0], 1)
        self.assertEqual(self.rooms.join(12, "room1", "c")[0], 0)
        self.assertEqual(self.rooms.join(12, "Room1", "c")[0], 2)   # case-sensitive

    def test_join_id_is_per_connection(self):
        _, first, _ = self.rooms.join(10, "r1", "a")
        _, again, _ = self.rooms.join(10, "r2", "a")
        _, other, _ = self.rooms.join(11, "r1", "b")
        self.assertEqual(first, again)
        self.assertNotEqual(first, other)

    def test_joining_twice_keeps_one_membership_and_the_first_name(self):
        self.assertTrue(self.rooms.join(10, "r", "a")[2])
        self.assertFalse(self.rooms.join(10, "r", "other")[2])
        self.assertEqual(self.rooms.member_ids(0), (10,))
        self.assertEqual(self.rooms.name_in(10, 0), "a")

    def test_members_in_join_order_and_leave(self):
        for conn in (3, 1, 2):
            self.rooms.join(conn, "r", "n%d" % conn)
        self.assertEqual(self.rooms.member_ids(0), (3, 1, 2))
        self.assertEqual(self.rooms.leave(1, 0), "n1")
        self.assertIsNone(self.rooms.leave(1, 0))
        self.assertEqual(self.rooms.member_ids(0), (3, 2))

    def test_refs_of_is_ascending(self):
        for name in ("c", "a", "b"):
            self.rooms.join(5, name, "x")
        self.rooms.join(6, "d", "y")
        self.rooms.join(5, "d", "x")
        self.assertEqual(self.rooms.refs_of(5), [0, 1, 2, 3])
        self.rooms.leave(5, 1)
        self.assertEqual(self.rooms.refs_of(5), [0, 2, 3])

    def test_forget_drops_memberships_and_join_id(self):
        self.rooms.join(5, "a", "x")
        self.rooms.forget(5)
        self.assertEqual(self.rooms.member_ids(0), ())
        self.assertIsNone(self.rooms.join_id_of(5))
        self.assertNotEqual(self.rooms.join(6, "a", "y")[1], 1)   # ids are never reused
        self.assertTrue(self.rooms.exists(0))                      # the room and its ref stay

    def test_is_full_only_at_the_room_limit(self):
        rooms = Rooms(max_rooms=2)
        rooms.join(1, "a", "x")
        self.assertFalse(rooms.is_full())
        rooms.join(1, "b", "x")
        self.assertTrue(rooms.is_full())


# ---------------------------------------------------------------------------------------------
# 3. The protocol state machine: requests in, actions out
# ---------------------------------------------------------------------------------------------

PORT = 4242


def joined(room, ref, join_id, ip="10.0.0.1"):
    return Send(0, ("JOINED_CHATROOM: %s\nSERVER_IP: %s\nPORT: %d\nROOM_REF: %d\nJOIN_ID: %d\n"
                    % (room, ip, PORT, ref, join_id)).encode())


class ProtocolTests(unittest.TestCase):

    def setUp(self):
        self.proto = ChatProtocol(port=PORT, student_id="12345678")
        for conn in (1, 2, 3):
            self.proto.connection_made(conn, "10.0.0.%d" % conn)

    def handle(self, conn, request):
        return self.proto.handle(conn, request)

    def feed(self, conn, data):
        """Bytes in, every action of every complete request out."""
        self.proto.data_received(conn, data)
        actions = []
        while True:
            more = self.proto.maybe_next_actions(conn)
            if more is None:
                return actions
            actions += more

    def assertErrorReply(self, actions, conn, code):
        self.assertEqual(len(actions), 1, actions)
        self.assertIsInstance(actions[0], Send)
        self.assertEqual(actions[0].conn_id, conn)
        lines = actions[0].data.decode().split("\n")
        self.assertEqual(lines[0], "ERROR_CODE: %d" % code)
        self.assertTrue(lines[1].startswith("ERROR_DESCRIPTION: ") and len(lines[1]) > 20, lines)
        self.assertEqual(lines[2:], [""])

    def join(self, conn, room, name):
        return self.handle(conn, Join(room, name))

    def test_helo_reply_has_the_fixed_form(self):
        self.assertEqual(self.handle(2, Helo("HELO hi there")),
                         [Send(2, b"HELO hi there\nIP:10.0.0.2\nPort:4242\nStudentID:12345678\n")])

    def test_join_replies_then_announces_to_every_member_including_the_joiner(self):
        self.assertEqual(self.join(1, "room1", "alice"), [
            Send(1, b"JOINED_CHATROOM: room1\nSERVER_IP: 10.0.0.1\nPORT: 4242\nROOM_REF: 0\nJOIN_ID: 1\n"),
            Broadcast((1,), b"CHAT: 0\nCLIENT_NAME: alice\nMESSAGE: alice has joined this chatroom.\n\n"),
        ])
        actions = self.join(2, "room1", "bob")
        self.assertEqual(actions[0].data.split(b"\n")[3:5], [b"ROOM_REF: 0", b"JOIN_ID: 2"])
        self.assertEqual(actions[1], Broadcast((1, 2), chat_message(0, "bob", "bob has joined this chatroom.")))

    def test_join_again_repeats_the_reply_without_announcing(self):
        first = self.join(1, "room1", "alice")
        self.assertEqual(self.join(1, "room1", "alice"), first[:1])

    def test_one_join_id_for_all_rooms_of_a_connection(self):
        self.join(1, "a", "alice")
        self.assertEqual(self.join(1, "b", "alice")[0].data.split(b"\n")[3:5], [b"ROOM_REF: 1", b"JOIN_ID: 1"])

    def test_chat_goes_to_every_member_under_the_senders_joined_name(self):
        self.join(1, "r", "alice")
        self.join(2, "r", "bob")
        # wrong JOIN_ID and CLIENT_NAME in the request: identity is the connection
        self.assertEqual(self.handle(2, Chat(0, 1, "alice", "hi\nthere")),
                         [Broadcast((1, 2), b"CHAT: 0\nCLIENT_NAME: bob\nMESSAGE: hi\nthere\n\n")])

    def test_chat_to_unknown_room(self):
        self.assertErrorReply(self.handle(1, Chat(0, 1, "a", "m")), 1, ErrorCode.UNKNOWN_ROOM)

    def test_chat_to_a_room_not_joined(self):
        self.join(1, "r", "alice")
        self.assertErrorReply(self.handle(2, Chat(0, 1, "alice", "m")), 2, ErrorCode.NOT_A_MEMBER)

    def test_leave_replies_then_announces_to_the_leaver_and_the_rest(self):
        self.join(1, "r", "alice")
        self.join(2, "r", "bob")
        self.assertEqual(self.handle(1, Leave(0, 1, "alice")), [
            Send(1, b"LEFT_CHATROOM: 0\nJOIN_ID: 1\n"),
            Broadcast((1, 2), chat_message(0, "alice", "alice has left this chatroom.")),
        ])
        self.assertEqual(self.proto.rooms.member_ids(0), (2,))

    def test_leave_twice_gives_same_reply_and_no_announcement(self):
        self.join(1, "r", "alice")
        self.handle(1, Leave(0, 1, "alice"))
        self.assertEqual(self.handle(1, Leave(0, 1, "alice")), [Send(1, b"LEFT_CHATROOM: 0\nJOIN_ID: 1\n")])

    def test_nobody_can_leave_for_another_connection(self):
        self.join(1, "r", "alice")
        self.assertEqual(self.handle(2, Leave(0, 1, "alice")), [Send(2, b"LEFT_CHATROOM: 0\nJOIN_ID: 1\n")])
        self.assertEqual(self.proto.rooms.member_ids(0), (1,))

    def test_leave_unknown_room(self):
        self.assertErrorReply(self.handle(1, Leave(7, 1, "a")), 1, ErrorCode.UNKNOWN_ROOM)

    def test_no_chat_of_a_room_after_leaving_it(self):
        self.join(1, "r", "alice")
        self.join(2, "r", "bob")
        self.handle(1, Leave(0, 1, "alice"))
        self.assertEqual(self.handle(2, Chat(0, 2, "bob", "m")), [Broadcast((2,), chat_message(0, "bob", "m"))])

    def test_disconnect_announces_in_ascending_ref_order_to_itself_too_then_closes(self):
        self.join(1, "b", "alice")       # ref 0
        self.join(1, "a", "al")          # ref 1
        self.join(2, "a", "bob")
        self.assertEqual(self.handle(1, Disconnect("alice")), [
            Broadcast((1,), chat_message(0, "alice", "alice has left this chatroom.")),
            Broadcast((1, 2), chat_message(1, "al", "al has left this chatroom.")),
            Close(1),
        ])
        self.assertEqual(self.proto.rooms.refs_of(1), [])

    def test_nothing_after_disconnect_is_handled(self):
        self.assertEqual(self.feed(1, DISCONNECT + b"HELO x\n"), [Close(1)])
        self.assertIsNone(self.proto.maybe_next_actions(1))

    def test_lost_connection_leaves_its_rooms_announced_to_the_others_only(self):
        self.join(1, "r", "alice")
        self.join(2, "r", "bob")
        self.join(1, "s", "alice")
        self.assertEqual(self.proto.connection_lost(1),
                         [Broadcast((2,), chat_message(0, "alice", "alice has left this chatroom."))])
        self.assertEqual(self.proto.rooms.member_ids(1), ())
        self.assertEqual(self.proto.connection_lost(1), [])     # idempotent

    def test_kill_service_shuts_down(self):
        self.assertEqual(self.feed(3, b"KILL_SERVICE\n"), [Shutdown()])

    def test_other_messages_get_no_reply_by_default(self):
        with self.assertLogs("protocol", "INFO"):
            self.assertEqual(self.feed(1, b"WHAT_IS_THIS: 1\n"), [])

    def test_other_messages_go_to_the_handler_given(self):
        seen = []
        proto = ChatProtocol(PORT, "1", on_other_message=lambda conn, line: seen.append((conn, line)) or [])
        proto.connection_made(5, "ip")
        proto.data_received(5, b"PING\n")
        self.assertEqual(proto.maybe_next_actions(5), [])
        self.assertEqual(seen, [(5, "PING")])

    def test_every_parse_error_becomes_an_error_reply_and_the_connection_goes_on(self):
        cases = [
            (b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nNAME: a\n", ErrorCode.MALFORMED_REQUEST),
            (b"CHAT: zero\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: m\n\n", ErrorCode.BAD_INTEGER),
            (b"JOIN_CHATROOM:\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: a\n", ErrorCode.EMPTY_ROOM_NAME),
            (b"LEAVE_CHATROOM: 0\nJOIN_ID: 1\nCLIENT_NAME:\n", ErrorCode.EMPTY_CLIENT_NAME),
            (b"CHAT: 9\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: m\n\n", ErrorCode.UNKNOWN_ROOM),
            (b"HELO \xff\n", ErrorCode.INVALID_UTF8),
        ]
        for data, code in cases:
            self.assertErrorReply(self.feed(1, data), 1, code)
        self.assertEqual(len(self.feed(1, b"HELO still here\n")), 1)

    def test_request_too_long_is_answered_then_closed(self):
        actions = self.feed(1, b"x" * (protocol.MAX_REQUEST_BYTES + 1))
        self.assertErrorReply(actions[:1], 1, ErrorCode.REQUEST_TOO_LONG)
        self.assertEqual(actions[1:], [Close(1)])
        self.assertEqual(self.feed(1, b"\nHELO x\n"), [])

    def test_too_many_rooms(self):
        proto = ChatProtocol(PORT, "1", rooms=Rooms(max_rooms=1))
        proto.connection_made(1, "ip")
        proto.handle(1, Join("a", "x"))
        self.assertErrorReply(proto.handle(1, Join("b", "x")), 1, ErrorCode.TOO_MANY_ROOMS)
        self.assertEqual(len(proto.handle(1, Join("a", "x"))), 1)   # an existing room still works

    def test_error_descriptions_are_one_line(self):
        err = RequestError(ErrorCode.MALFORMED_REQUEST, "two\nlines")
        self.assertEqual(protocol.error_reply(err), b"ERROR_CODE: 1\nERROR_DESCRIPTION: two lines\n")


# ---------------------------------------------------------------------------------------------
# 4. The reactor, over socketpair() and loopback, with a fake app
# ---------------------------------------------------------------------------------------------

class LineApp:
    """A fake app for the reactor: one request per line.
    `echo X` -> X back; `big N` -> N bytes back; `all X` -> X to every connection;
    `close`, `stop`, `boom` (raises: a bug in the app)."""

    def __init__(self):
        self.buffers = {}
        self.made = []
        self.lost = []
        self.handled = []

    def connection_made(self, conn_id, local_ip):
        self.made.append((conn_id, local_ip))
        self.buffers[conn_id] = b""

    def data_received(self, conn_id, data):
        self.buffers[conn_id] += data

    def maybe_next_actions(self, conn_id):
        line, nl, rest = self.buffers[conn_id].partition(b"\n")
        if not nl:
            return None
        self.buffers[conn_id] = rest
        self.handled.append((conn_id, line))
        verb, _, arg = line.partition(b" ")
        if verb == b"echo":
            return [Send(conn_id, arg + b"\n")]
        if verb == b"big":
            return [Send(conn_id, b"x" * int(arg))]
        if verb == b"all":
            return [Broadcast(tuple(self.buffers), arg + b"\n")]
        if verb == b"close":
            return [Close(conn_id)]
        if verb == b"stop":
            return [Shutdown()]
        if verb == b"boom":
            raise RuntimeError("a bug in the app")
        return []

    def connection_lost(self, conn_id):
        self.lost.append(conn_id)
        del self.buffers[conn_id]
        return []


class ReactorTests(unittest.TestCase):

    def setUp(self):
        self.app = LineApp()
        self.reactor = reactor.Reactor("127.0.0.1", 0, self.app)
        self.addCleanup(self.reactor.close)

    def pair(self, sndbuf=None):
        """A connection served by the reactor, and our end of it."""
        ours, theirs = socket.socketpair()
        if sndbuf:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.addCleanup(ours.close)
        ours.settimeout(5)
        return self.reactor.add_connection(theirs, "local"), ours

    def pump(self, sock, want, max_ticks=2000):
        """Tick the reactor and read from `sock` until `want` bytes (or EOF, if want is None)
        arrived; bounded by max_ticks. Returns what was read."""
        got = b""
        for _ in range(max_ticks):
            self.reactor.run_once(0.01)
            sock.setblocking(False)
            try:
                data = sock.recv(1 << 20)
                if not data:
                    if want is None:
                        return got
                    break
                got += data
            except BlockingIOError:
                pass
            finally:
                sock.settimeout(5)
            if want is not None and len(got) >= want:
                return got
        self.fail("wanted %s bytes, got %d: %r" % (want, len(got), got[-80:]))

    def tick_until(self, condition, max_ticks=500):
        for _ in range(max_ticks):
            if condition():
                return
            self.reactor.run_once(0.01)
        self.fail("condition not reached in %d ticks" % max_ticks)

    def test_a_reply_goes_out_in_the_tick_that_read_the_request(self):
        _, ours = self.pair()
        ours.sendall(b"echo hi\n")
        self.reactor.run_once(5)      # the data is there: select returns at once
        self.assertEqual(ours.recv(100), b"hi\n")

    def test_accepts_tcp_connections(self):
        client = socket.create_connection(self.reactor.address, timeout=5)
        self.addCleanup(client.close)
        self.tick_until(lambda: self.app.made)
        self.assertEqual(self.app.made[0][1], "127.0.0.1")
        client.sendall(b"echo tcp\n")
        self.tick_until(lambda: self.app.handled)
        self.assertEqual(client.recv(100), b"tcp\n")

    def test_requests_past_the_tick_budget_wait_for_the_next_tick(self):
        _, ours = self.pair()
        budget = self.reactor.requests_per_tick
        ours.sendall(b"".join(b"echo %d\n" % i for i in range(budget + 3)))
        self.reactor.run_once(5)
        self.assertEqual(len(self.app.handled), budget)
        self.reactor.run_once(60)     # no new input, but the rest is buffered: no wait
        self.assertEqual(len(self.app.handled), budget + 3)
        self.assertEqual(self.pump(ours, len(b"".join(b"%d\n" % i for i in range(budget + 3)))),
                         b"".join(b"%d\n" % i for i in range(budget + 3)))

    def test_one_flooding_client_does_not_hold_up_another(self):
        _, flood = self.pair()
        _, quiet = self.pair()
        flood.sendall(b"echo f\n" * 1000)
        quiet.sendall(b"echo q\n")
        self.reactor.run_once(5)
        self.assertIn((2, b"echo q"), self.app.handled)
        self.assertLessEqual(len(self.app.handled), 2 * reactor.MAX_REQUESTS_PER_TICK)

    def test_share_halves_after_a_slow_tick_and_doubles_after_quick_ones(self):
        slow = LineApp()
        handle = slow.maybe_next_actions

        def expensive(conn_id):     # each request takes a whole tick's target
            time.sleep(reactor.TICK_TARGET)
            return handle(conn_id)
        slow.maybe_next_actions = expensive
        self.reactor.app = slow
        _, ours = self.pair()
        ours.sendall(b"echo x\n" * 40)
        share = self.reactor.requests_per_tick
        self.reactor.run_once(5)
        self.assertEqual(self.reactor.requests_per_tick, max(reactor.MIN_REQUESTS_PER_TICK, share // 2))
        slow.maybe_next_actions = handle            # cheap again: the share grows back
        for _ in range(10):
            self.reactor.run_once(0)
        self.assertGreater(self.reactor.requests_per_tick, share // 2)

    def test_close_sends_everything_queued_then_closes(self):
        _, ours = self.pair(sndbuf=4096)
        ours.sendall(b"big 300000\nclose\necho never\n")
        self.assertEqual(self.pump(ours, None), b"x" * 300000)
        self.assertEqual(self.app.lost, [1])
        self.assertNotIn((1, b"echo never"), self.app.handled)

    def test_peer_closing_is_reported_once(self):
        conn_id, ours = self.pair()
        ours.close()
        self.tick_until(lambda: self.app.lost)
        for _ in range(3):
            self.reactor.run_once(0)
        self.assertEqual(self.app.lost, [conn_id])
        self.assertNotIn(conn_id, self.reactor.conns)

    def test_a_slow_reader_is_not_read_from_until_its_output_drains(self):
        _, ours = self.pair(sndbuf=4096)
        size = reactor.HIGH_WATER * 4
        ours.sendall(b"big %d\necho after\n" % size)
        for _ in range(20):
            self.reactor.run_once(0.01)
        self.assertEqual(self.app.handled, [(1, b"big %d" % size)])   # paused: "echo after" waits
        self.assertEqual(self.pump(ours, size + 6), b"x" * size + b"after\n")

    def test_output_past_the_cap_disconnects_that_peer_only(self):
        _, stalled = self.pair(sndbuf=4096)
        _, other = self.pair()
        stalled.sendall(b"big %d\n" % (reactor.OUTPUT_CAP + 1))
        with self.assertLogs("reactor", "WARNING"):
            self.tick_until(lambda: self.app.lost == [1])
        other.sendall(b"echo fine\n")
        self.assertEqual(self.pump(other, 5), b"fine\n")

    def test_broadcast_reaches_every_connection(self):
        socks = [self.pair()[1] for _ in range(3)]
        socks[0].sendall(b"all hello\n")
        for sock in socks:
            self.assertEqual(self.pump(sock, 6), b"hello\n")

    def test_a_bug_in_the_app_drops_only_that_connection(self):
        _, buggy = self.pair()
        _, other = self.pair()
        buggy.sendall(b"boom\n")
        with self.assertLogs("reactor", "ERROR"):
            self.assertEqual(self.pump(buggy, None), b"")
        self.assertEqual(self.app.lost, [1])
        other.sendall(b"echo alive\n")
        self.assertEqual(self.pump(other, 6), b"alive\n")

    def test_writes_to_unknown_connections_are_ignored(self):
        self.reactor.write_many([999], b"nobody")
        self.reactor.close_connection(999)
        self.reactor.run_once(0)

    def test_shutdown_action_stops_the_loop_and_closes_everything(self):
        _, ours = self.pair()
        ours.sendall(b"echo bye\nstop\n")
        loop = threading.Thread(target=self.reactor.run_forever, daemon=True)
        loop.start()
        loop.join(10)
        self.assertFalse(loop.is_alive(), "run_forever did not return after Shutdown")
        self.assertEqual(ours.recv(100), b"bye\n")
        self.assertEqual(ours.recv(100), b"")
        self.assertEqual(self.reactor.listener.fileno(), -1)

    def test_stop_wakes_a_waiting_select(self):
        self.reactor.stop()
        started = time.monotonic()
        self.reactor.run_once(30)       # returns at once: the wake-up byte is readable
        self.assertLess(time.monotonic() - started, 10)
