"""Layer 3: the protocol state machine (ChatProtocol): requests in, actions out, for every
reading of docs/PROTOCOL.md and every error."""
import unittest

from policy.creations import (ROOM_CREATIONS_PER_SECOND_PER_CONNECTION,
                              ROOM_CREATION_BURST_PER_ADDRESS, ROOM_CREATION_BURST_PER_CONNECTION)
from protocol import ChatProtocol
from sansio.actions import Broadcast, Callback, Close, Send, Shutdown
from sansio.wire import (MAX_NAME_CHARS, MAX_REQUEST_BYTES, Chat, Disconnect, ErrorCode, Helo,
                         Join, Kill, Leave, RequestError, chat_message, error_reply)
from rooms import Rooms

# ---------------------------------------------------------------------------------------------
# 3. The protocol state machine: requests in, actions out
# ---------------------------------------------------------------------------------------------

PORT = 4242
DISCONNECT = b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: alice\n"


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

    def test_a_session_lets_go_of_its_empty_buffer_and_still_frames_what_comes(self):
        helo = [Send(1, b"HELO x\nIP:10.0.0.1\nPort:4242\nStudentID:12345678\n")]
        self.assertEqual(self.feed(1, b"HELO x\nHE"), helo)
        self.assertEqual(self.proto.pending_input(1), 2)         # a request begun is kept
        self.assertEqual(self.feed(1, b"LO x\n"), helo)
        self.assertEqual(self.proto.pending_input(1), 0)
        self.assertEqual(type(self.proto._sessions[1]._buf), bytes)  # no bytearray of its own
        self.assertEqual(self.feed(1, b"HELO"), [])
        self.assertEqual(self.feed(1, b" x\r"), [])               # (a CR held back)
        self.assertEqual(self.proto.pending_input(1), 7)
        self.assertEqual(self.feed(1, b"\n"), helo)

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
        self.assertEqual(self.handle(2, Chat(0, "1", "alice", "hi\nthere")),
                         [Broadcast((1, 2), b"CHAT: 0\nCLIENT_NAME: bob\nMESSAGE: hi\nthere\n\n")])

    def test_chat_to_unknown_room(self):
        self.assertErrorReply(self.handle(1, Chat(0, "1", "a", "m")), 1, ErrorCode.UNKNOWN_ROOM)

    def test_chat_to_a_room_not_joined(self):
        self.join(1, "r", "alice")
        self.assertErrorReply(self.handle(2, Chat(0, "1", "alice", "m")), 2, ErrorCode.NOT_A_MEMBER)

    def test_leave_replies_then_announces_to_the_leaver_and_the_rest(self):
        self.join(1, "r", "alice")
        self.join(2, "r", "bob")
        self.assertEqual(self.handle(1, Leave(0, "1", "alice")), [
            Send(1, b"LEFT_CHATROOM: 0\nJOIN_ID: 1\n"),
            Broadcast((1, 2), chat_message(0, "alice", "alice has left this chatroom.")),
        ])
        self.assertEqual(self.proto.rooms.member_ids(0), (2,))

    def test_leave_twice_gives_same_reply_and_no_announcement(self):
        self.join(1, "r", "alice")
        self.handle(1, Leave(0, "1", "alice"))
        self.assertEqual(self.handle(1, Leave(0, "1", "alice")), [Send(1, b"LEFT_CHATROOM: 0\nJOIN_ID: 1\n")])

    def test_nobody_can_leave_for_another_connection(self):
        self.join(1, "r", "alice")
        self.assertEqual(self.handle(2, Leave(0, "1", "alice")), [Send(2, b"LEFT_CHATROOM: 0\nJOIN_ID: 1\n")])
        self.assertEqual(self.proto.rooms.member_ids(0), (1,))

    def test_leave_unknown_room(self):
        self.assertErrorReply(self.handle(1, Leave(7, "1", "a")), 1, ErrorCode.UNKNOWN_ROOM)

    def test_no_chat_of_a_room_after_leaving_it(self):
        self.join(1, "r", "alice")
        self.join(2, "r", "bob")
        self.handle(1, Leave(0, "1", "alice"))
        self.assertEqual(self.handle(2, Chat(0, "2", "bob", "m")), [Broadcast((2,), chat_message(0, "bob", "m"))])

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
        with self.assertLogs("protocol", "DEBUG"):
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
        actions = self.feed(1, b"x" * (MAX_REQUEST_BYTES + 1))
        self.assertErrorReply(actions[:1], 1, ErrorCode.REQUEST_TOO_LONG)
        self.assertEqual(actions[1:], [Close(1)])
        self.assertEqual(self.feed(1, b"\nHELO x\n"), [])

    def test_too_many_rooms(self):
        proto = ChatProtocol(PORT, "1", rooms=Rooms(max_rooms=1))
        proto.connection_made(1, "ip")
        proto.handle(1, Join("a", "x"))
        self.assertErrorReply(proto.handle(1, Join("b", "x")), 1, ErrorCode.TOO_MANY_ROOMS)
        self.assertEqual(len(proto.handle(1, Join("a", "x"))), 1)   # an existing room still works

    def test_names_longer_than_the_limit_are_refused(self):
        longest = b"\xc3\xa9" * MAX_NAME_CHARS     # characters, not bytes
        join = b"JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n"
        self.assertEqual(len(self.feed(1, join % (longest, longest))), 2)
        self.assertErrorReply(self.feed(1, join % (longest + b"r", b"a")), 1, ErrorCode.NAME_TOO_LONG)
        self.assertErrorReply(self.feed(1, join % (b"r", longest + b"a")), 1, ErrorCode.NAME_TOO_LONG)

    def test_memberships_per_connection_are_bounded(self):
        proto = ChatProtocol(PORT, "1", rooms=Rooms(max_rooms_per_connection=2))
        proto.connection_made(1, "ip")
        proto.handle(1, Join("a", "x"))
        proto.handle(1, Join("b", "x"))
        self.assertErrorReply(proto.handle(1, Join("c", "x")), 1, ErrorCode.TOO_MANY_MEMBERSHIPS)
        self.assertEqual(len(proto.handle(1, Join("a", "x"))), 1)   # a room it is in: fine
        proto.handle(1, Leave(0, "1", "x"))
        self.assertEqual(len(proto.handle(1, Join("c", "x"))), 2)   # room for one more

    def test_error_descriptions_are_one_line(self):
        err = RequestError(ErrorCode.MALFORMED_REQUEST, "two\nlines")
        self.assertEqual(error_reply(err.code, err.description), b"ERROR_CODE: 1\nERROR_DESCRIPTION: two lines\n")


class SettledReadingsTests(unittest.TestCase):
    """Readings settled in docs/PROTOCOL.md after the first release: LEFT_CHATROOM's JOIN_ID,
    printable names, refs of any length."""

    def setUp(self):
        self.proto = ChatProtocol(port=PORT, student_id="12345678")
        for conn in (1, 2, 3):
            self.proto.connection_made(conn, "10.0.0.1")

    def feed(self, conn, data):
        self.proto.data_received(conn, data)
        actions = []
        while True:
            more = self.proto.maybe_next_actions(conn)
            if more is None:
                return actions
            actions += more

    def test_left_carries_the_join_id_the_server_gave_whatever_the_request_quoted(self):
        self.feed(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: a\n")
        self.feed(2, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: b\n")   # JOIN_ID 2
        actions = self.feed(2, b"LEAVE_CHATROOM: 0\nJOIN_ID: 77\nCLIENT_NAME: b\n")
        self.assertEqual(actions[0], Send(2, b"LEFT_CHATROOM: 0\nJOIN_ID: 2\n"))
        # repeated, and after leaving every room: still the JOIN_ID it was given
        self.assertEqual(self.feed(2, b"LEAVE_CHATROOM: 0\nJOIN_ID: 5\nCLIENT_NAME: b\n"),
                         [Send(2, b"LEFT_CHATROOM: 0\nJOIN_ID: 2\n")])

    def test_a_connection_that_never_joined_gets_its_join_id_back(self):
        self.feed(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: a\n")
        self.assertEqual(self.feed(3, b"LEAVE_CHATROOM: 0\nJOIN_ID: 0042\nCLIENT_NAME: z\n"),
                         [Send(3, b"LEFT_CHATROOM: 0\nJOIN_ID: 0042\n")])

    def test_names_with_control_or_format_characters_are_refused(self):
        bad = ["esc\x1b[31m", "del\x7f", "c1\x85x", "tab\there", "nul\x00", "rtl\u202eevil",
               "zero\u200bwidth", "bom\ufeff", "line\u2028sep", "para\u2029sep"]
        for name in bad:
            for request in (
                    "JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: a\n" % name,
                    "JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n" % name):
                actions = self.feed(1, request.encode("utf-8"))
                self.assertEqual(len(actions), 1, (name, actions))
                self.assertTrue(actions[0].data.startswith(b"ERROR_CODE: 12\n"), (name, actions))
        self.assertEqual(self.proto.rooms.count_rooms(), 0)

    def test_printable_names_of_any_script_are_accepted(self):
        for index, name in enumerate(["général", "日本語", "emoji 🎉", "a\u00a0b", "שלום"]):
            actions = self.feed(1, ("JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n"
                                    % (name, name)).encode("utf-8"))
            self.assertTrue(actions[0].data.startswith(b"JOINED_CHATROOM: "), (name, actions))
            self.assertIn(b"ROOM_REF: %d\n" % index, actions[0].data)

    def test_refs_of_any_length_get_an_error_code(self):
        for digits in ("0" * 5000 + "1", "9" * 5001, "0" * 60000):
            for request in ("LEAVE_CHATROOM: %s\nJOIN_ID: 1\nCLIENT_NAME: a\n" % digits,
                            "CHAT: %s\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: m\n\n" % digits):
                actions = self.feed(1, request.encode())
                self.assertEqual(len(actions), 1)
                self.assertTrue(actions[0].data.startswith(b"ERROR_CODE: 5\n"), actions[0].data[:40])

    def test_join_ids_of_any_length_are_echoed_or_replaced_never_a_traceback(self):
        actions = self.feed(3, ("LEAVE_CHATROOM: 0\nJOIN_ID: %s\nCLIENT_NAME: a\n"
                                % ("7" * 6000)).encode())
        self.assertTrue(actions[0].data.startswith(b"ERROR_CODE: 5\n"))     # no room 0 yet
        self.feed(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: a\n")
        actions = self.feed(3, ("LEAVE_CHATROOM: 0\nJOIN_ID: %s\nCLIENT_NAME: a\n"
                                % ("7" * 6000)).encode())
        self.assertEqual(actions, [Send(3, ("LEFT_CHATROOM: 0\nJOIN_ID: %s\n" % ("7" * 6000)).encode())])


class RoomTableFullTests(unittest.TestCase):
    """When the room table is full, empty rooms make way (docs/PROTOCOL.md, "Identity")."""

    def setUp(self):
        self.proto = ChatProtocol(PORT, "1", rooms=Rooms(max_rooms=3))
        self.proto.connection_made(0, "10.0.0.1")

    def do(self, request):
        return self.proto.handle(0, request)

    def test_an_empty_room_is_forgotten_for_a_new_one_and_its_name_gets_a_new_ref(self):
        for name in ("a", "b", "c"):
            self.do(Join(name, "x"))
        self.do(Leave(1, "1", "x"))                          # b is empty now
        self.assertEqual(self.do(Join("d", "x"))[0], joined("d", 3, 1))      # b made way
        self.do(Leave(3, "1", "x"))
        self.assertEqual(self.do(Join("b", "x"))[0], joined("b", 4, 1))      # new ref for b
        # a LEAVE of the forgotten ref is still answered
        self.assertEqual(self.do(Leave(1, "1", "x")), [Send(0, b"LEFT_CHATROOM: 1\nJOIN_ID: 1\n")])

    def test_error_only_when_every_room_has_members(self):
        for name in ("a", "b", "c"):
            self.do(Join(name, "x"))
        actions = self.do(Join("d", "x"))
        self.assertTrue(actions[0].data.startswith(b"ERROR_CODE: 9\n"))

    def test_while_there_is_space_an_empty_room_keeps_its_ref(self):
        self.do(Join("a", "x"))
        self.do(Leave(0, "1", "x"))
        self.do(Join("b", "x"))
        self.assertEqual(self.do(Join("a", "x"))[0], joined("a", 0, 1))


class ManyLostAtOnceTests(unittest.TestCase):

    def setUp(self):
        self.proto = ChatProtocol(PORT, "1")
        for conn in range(1, 7):
            self.proto.connection_made(conn, "10.0.0.1")

    def test_departures_in_one_call_are_announced_only_to_who_remains_one_message_a_room(self):
        for conn in range(1, 6):
            self.proto.handle(conn, Join("big", "m%d" % conn))
        self.proto.handle(2, Join("side", "m2"))
        self.proto.handle(6, Join("side", "s6"))
        actions = self.proto.connections_lost([1, 2, 3])
        self.assertEqual(actions, [
            Broadcast((4, 5), chat_message(0, "m1", "m1 has left this chatroom.")
                      + chat_message(0, "m2", "m2 has left this chatroom.")
                      + chat_message(0, "m3", "m3 has left this chatroom.")),
            Broadcast((6,), chat_message(1, "m2", "m2 has left this chatroom.")),
        ])
        self.assertEqual(self.proto.rooms.member_ids(0), (4, 5))

    def test_a_whole_room_leaving_at_once_announces_nothing(self):
        for conn in range(1, 6):
            self.proto.handle(conn, Join("big", "m%d" % conn))
        self.assertEqual(self.proto.connections_lost([5, 4, 3, 2, 1]), [])
        self.assertEqual(self.proto.rooms.member_ids(0), ())


class RoomCreationLimitTests(unittest.TestCase):

    def setUp(self):
        self.now = 1000.0
        self.proto = ChatProtocol(PORT, "1", clock=lambda: self.now)

    def join(self, conn, room):
        return self.proto.handle(conn, Join(room, "n"))[0].data

    def test_one_connection_creating_rooms_too_fast_is_refused_then_may_again(self):
        self.proto.connection_made(1, "10.0.0.1", "192.0.2.1")
        burst = ROOM_CREATION_BURST_PER_CONNECTION
        for index in range(burst):
            self.assertTrue(self.join(1, "r%d" % index).startswith(b"JOINED_CHATROOM"))
            self.proto.handle(1, Leave(index, "1", "n"))          # memberships stay low
        self.assertTrue(self.join(1, "one too many").startswith(b"ERROR_CODE: 13\n"))
        self.assertTrue(self.join(1, "r0").startswith(b"JOINED_CHATROOM"))   # existing: fine
        self.now += 1.0 / ROOM_CREATIONS_PER_SECOND_PER_CONNECTION
        self.assertTrue(self.join(1, "one too many").startswith(b"JOINED_CHATROOM"))

    def test_the_limit_per_address_covers_all_its_connections(self):
        burst = ROOM_CREATION_BURST_PER_ADDRESS
        per_conn = ROOM_CREATION_BURST_PER_CONNECTION
        conns = burst // per_conn + 1
        created = 0
        for conn in range(conns):
            self.proto.connection_made(conn, "10.0.0.1", "192.0.2.7")
            for index in range(per_conn):
                reply = self.join(conn, "c%d-%d" % (conn, index))
                created += reply.startswith(b"JOINED_CHATROOM")
        self.assertEqual(created, burst)
        self.proto.connection_made(999, "10.0.0.1", "198.51.100.1")    # another address
        self.assertTrue(self.join(999, "elsewhere").startswith(b"JOINED_CHATROOM"))


class KillFromTests(unittest.TestCase):

    def kill(self, kill_from, peer_ip):
        proto = ChatProtocol(PORT, "1", kill_from=kill_from)
        proto.connection_made(1, "127.0.0.1", peer_ip)
        # the log says who sent it, taken or refused (and stays off the test runner's output)
        with self.assertLogs(level="INFO") as logs:
            actions = proto.handle(1, Kill())
        self.assertIn("KILL_SERVICE from %s" % peer_ip, "\n".join(logs.output))
        return actions

    def test_any_is_the_protocols_behaviour(self):
        self.assertEqual(self.kill("any", "203.0.113.5"), [Shutdown()])

    def test_loopback_only_from_this_machine(self):
        self.assertEqual(self.kill("loopback", "127.0.0.1"), [Shutdown()])
        self.assertEqual(self.kill("loopback", "::1"), [Shutdown()])
        refused = self.kill("loopback", "203.0.113.5")
        self.assertTrue(refused[0].data.startswith(b"ERROR_CODE: 14\n"), refused)

    def test_none_refuses_everybody(self):
        refused = self.kill("none", "127.0.0.1")
        self.assertTrue(refused[0].data.startswith(b"ERROR_CODE: 14\n"), refused)


class CallbackTests(unittest.TestCase):
    """A JOIN naming CLIENT_IP and PORT: the address, parsed, goes before the reply it concerns
    (docs/UDP.md, "Callback addresses"); the transport decides what it means for its kind."""

    def setUp(self):
        self.proto = ChatProtocol(PORT, "1")
        self.proto.connection_made(1, "10.0.0.1", "192.0.2.1")

    def join(self, client_ip, port):
        return self.proto.handle(1, Join("r", "n", client_ip, port))

    def test_an_address_named_comes_parsed_before_the_reply(self):
        actions = self.join("10.1.2.3", "5000")
        self.assertEqual(actions[0], Callback(1, ("10.1.2.3", 5000)))
        self.assertTrue(actions[1].data.startswith(b"JOINED_CHATROOM"))

    def test_the_tcp_zeros_name_no_callback(self):
        for client_ip, port in (("0", "0"), ("10.1.2.3", "0"), ("0", "5000"), ("1.2.3.4", "000")):
            actions = self.join(client_ip, port)
            self.assertNotIn(Callback, [type(a) for a in actions], (client_ip, port))

    def test_an_address_that_does_not_parse_sends_no_callback_and_the_join_goes_on(self):
        with self.assertLogs("rooms", "DEBUG") as logged:
            actions = self.join("example.com", "5000")
        self.assertEqual([type(a) for a in actions], [Send, Broadcast])
        self.assertIn("callback", logged.output[0])
