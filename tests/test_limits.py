"""The limits of docs/PROTOCOL.md held against each other, and against the worst input: the
server's own replies to a request never get the connection cut, and the bounds add up."""
import itertools
import socket
import unittest
from unittest import mock

import rooms
from policy.watermarks import HIGH_WATER, OUTPUT_CAP
from protocol import ChatProtocol
from sansio.replies import ChatMessage, ReplyReader
from sansio.wire import (LEFT_TEXT, MAX_NAME_CHARS, Join, chat_message, disconnect_request,
                         join_request)
from Server import Wiring


def widest_name(index: int) -> str:
    """A name of MAX_NAME_CHARS characters of 4 bytes each, different for each index."""
    return chr(0x1F600 + index % 64) * (MAX_NAME_CHARS - 4) + "%04d" % index


class LimitsAgreeTests(unittest.TestCase):

    def test_the_replies_to_one_disconnect_fit_under_the_output_cap(self):
        # A request is handled only while what the connection is owed is under HIGH_WATER; its
        # replies then add at most this, and must not reach OUTPUT_CAP.
        name = widest_name(0)
        longest_ref = 10 ** 18 - 1
        announcement = chat_message(longest_ref, name, LEFT_TEXT % name)
        worst = rooms.MAX_ROOMS_PER_CONNECTION * len(announcement)
        self.assertLess(HIGH_WATER + worst, OUTPUT_CAP)

    def test_disconnect_in_the_most_rooms_with_the_widest_names_delivers_every_announcement(self):
        clock = itertools.count(0, 10.0)        # no room-creation limit gets in the way
        app = ChatProtocol(port=1, student_id="1", clock=lambda: next(clock))
        server = Wiring("127.0.0.1", 0, udp=False)
        server.hub.app = app
        self.addCleanup(server.close)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # a slow reader
        server.tcp.add_connection(theirs, "127.0.0.1", "127.0.0.1")
        count = rooms.MAX_ROOMS_PER_CONNECTION
        outgoing = b"".join(join_request(widest_name(i), widest_name(i))
                            for i in range(count)) + disconnect_request("x")
        reader = ReplyReader()
        ours.setblocking(False)
        replies = []
        for _ in range(20000):                  # bounded: a few hundred ticks are enough
            if outgoing:
                try:
                    outgoing = outgoing[ours.send(outgoing):]
                except BlockingIOError:
                    pass
            server.run_once(0.001)
            try:
                data = ours.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                break
            reader.receive_data(data)
            reply = reader.maybe_next_reply()
            while reply is not None:
                replies.append(reply)
                reply = reader.maybe_next_reply()
        kinds = [type(r).__name__ for r in replies]
        self.assertEqual(kinds.count("JoinedReply"), count)
        left = [r for r in replies if isinstance(r, ChatMessage)
                and r.message.endswith(" has left this chatroom.")]
        self.assertEqual([r.ref for r in left], list(range(count)))   # all, in ref order
        self.assertEqual(server.hub.evictions, 0)

    def test_memberships_from_one_address_are_bounded_together(self):
        app = ChatProtocol(port=1, student_id="1", clock=itertools.count(0, 10.0).__next__)
        with mock.patch.object(rooms, "MAX_MEMBERSHIPS_PER_ADDRESS", 5):
            for conn in range(6):
                app.connection_made(conn, "10.0.0.1", "192.0.2.9")
            replies = [app.handle(conn, Join("r", "n%d" % conn))[0].data for conn in range(6)]
            self.assertTrue(all(r.startswith(b"JOINED_CHATROOM") for r in replies[:5]))
            self.assertTrue(replies[5].startswith(b"ERROR_CODE: 11\n"), replies[5])
            app.connections_lost([0])
            self.assertTrue(app.handle(5, Join("r", "n5"))[0].data.startswith(b"JOINED"))
            app.connection_made(9, "10.0.0.1", "198.51.100.9")      # another address
            self.assertTrue(app.handle(9, Join("r", "other"))[0].data.startswith(b"JOINED"))

    def test_memberships_of_the_whole_server_are_bounded_and_newcomers_keep_a_share(self):
        app = ChatProtocol(port=1, student_id="1", clock=itertools.count(0, 10.0).__next__)

        def join(conn, room):
            return app.handle(conn, Join(room, "n%d" % conn))[0].data
        crowd_rooms = rooms.MAX_ROOMS_PER_CONNECTION + 1
        with mock.patch.object(rooms, "MAX_MEMBERSHIPS", crowd_rooms + 2), \
                mock.patch.object(rooms, "MEMBERSHIPS_CROWDED", crowd_rooms):
            for conn in range(2):                       # one address, two connections
                app.connection_made(conn, "10.0.0.1", "192.0.2.9")
            replies = [join(0, "r%d" % i) for i in range(rooms.MAX_ROOMS_PER_CONNECTION)]
            replies.append(join(1, "r0"))
            self.assertTrue(all(r.startswith(b"JOINED_CHATROOM") for r in replies))
            refused = join(1, "r1")                     # crowded: that address holds plenty
            self.assertTrue(refused.startswith(b"ERROR_CODE: 11\n"), refused)
            self.assertIn(b"the server holds", refused)
            app.connection_made(2, "10.0.0.1", "198.51.100.9")      # a newcomer's address
            self.assertTrue(join(2, "r0").startswith(b"JOINED"))
            self.assertTrue(join(2, "r1").startswith(b"JOINED"))   # now at MAX_MEMBERSHIPS
            self.assertTrue(join(2, "r2").startswith(b"ERROR_CODE: 11\n"))
            app.connections_lost([0])                   # 256 memberships let go
            self.assertEqual(app.service.memberships, 3)
            self.assertTrue(join(1, "r1").startswith(b"JOINED"))
