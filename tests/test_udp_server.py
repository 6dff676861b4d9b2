"""End to end over UDP: the real Server.py, with UDP members and TCP members in the same rooms.

A UDP member here is a small client: sansio.udp_client.ClientEndpoint on real sockets, sending the
same text requests as a TCP client (protocol's builders) and reading replies with ReplyReader; its
JOIN names a callback address (docs/UDP.md, "Callback addresses"). Between it and the server there
may be two lossy relays (tools/relay.py), one per direction, as docs/UDP.md describes: its session
goes through relay A, and it advertises relay B as its callback. Every wait is bounded; the server
and the relays are child processes, stopped by their pids.

Run as `python3 -m tests.test_udp_server member HOST PORT NAME ROOM`, this module is a UDP
member in a process of its own (joins, prints "joined", then keeps its session alive for at
most MEMBER_SECONDS): the test that kills a client with SIGKILL uses it.
"""
import os
import select
import signal
import socket
import subprocess
import sys
import time
import unittest

from policy.flood import InputLimits
from policy.memory import bytes_held
from policy.watermarks import HIGH_WATER
from sansio import udp_wire
from sansio.udp_client import ClientEndpoint
from sansio.udp_stream import SessionClosed, StreamData
from protocol import ChatProtocol
from sansio.replies import ChatMessage, HeloReply, JoinedReply, ReplyReader
from sansio.wire import (JOINED_TEXT, LEFT_TEXT, chat_request, disconnect_request, helo_request,
                         join_request)
from tools import kit
from Server import Wiring
from tools.kit import REPO_ROOT, ServerProcess

HOST = "127.0.0.1"
# The server's --udp-idle-timeout in these tests: a UDP client that vanishes is announced as
# left within this (the default, 45 s, would make the test last a minute).
IDLE_TIMEOUT = 5.0
WAIT = 30.0                 # the longest wait for any one expected reply
MAX_ROUNDS = 500000         # bound on every loop of select() rounds
MEMBER_SECONDS = 60.0       # the longest a member subprocess lives
# The lossy path of the brief: 20 % loss, 5 % duplication, 10 % reordering, a little delay,
# both directions of both relays.
RELAY_OPTIONS = ("--loss", "0.2", "--dup", "0.05", "--reorder", "0.1", "--delay", "5")
RELAY_SECONDS = 120         # relays stop by themselves after this, whatever happens


class UdpMember:
    """A chat client over UDP on real sockets. `server` is where its session goes (the server,
    or relay A). With `callback_via` (relay B), its JOINs name that address, it KNOCKs there
    from a second socket and takes what arrives there as coming from the server; with
    `own_callback`, the second socket itself is the callback."""

    def __init__(self, server, callback_via=None, own_callback=False):
        now = time.monotonic()
        self.server = server
        self.sock = self._socket()
        self.cb_sock = None
        self.callback = ("0", 0)
        self.knock_to = None
        if callback_via is not None or own_callback:
            self.cb_sock = self._socket()
            self.callback = callback_via or self.cb_sock.getsockname()
            self.knock_to = callback_via or server
        self.endpoint = ClientEndpoint(server, now)
        self.reader = ReplyReader()
        self.replies = []
        self.closed = None          # the reason, once the session is over
        self.data_at_callback = 0   # DATA datagrams that came to the callback socket
        self.flush(now)

    @staticmethod
    def _socket():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        return sock

    def sockets(self):
        return [self.sock] if self.cb_sock is None else [self.sock, self.cb_sock]

    def close(self):
        for sock in self.sockets():
            sock.close()

    def join(self, room, name):
        self.send(join_request(room, name, self.callback[0], self.callback[1]))

    def send(self, data):
        now = time.monotonic()
        self.endpoint.send_stream(data, now)
        self.flush(now)

    def disconnect(self, name):
        self.send(disconnect_request(name))

    def on_readable(self, sock, now):
        for _ in range(256):
            try:
                data, src = sock.recvfrom(udp_wire.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            if sock is self.cb_sock:
                if src != self.knock_to:
                    continue
                if data[1:2] == bytes([udp_wire.DATA]):
                    self.data_at_callback += 1
                src = self.server
            self.endpoint.datagram_received(data, src, now)
        self.flush(now)

    def on_timer(self, now):
        deadline = self.endpoint.next_deadline()
        if deadline is not None and now >= deadline:
            self.endpoint.timer(now)
            self.flush(now)

    def deadline(self):
        return self.endpoint.next_deadline()

    def flush(self, now):
        for data, addr in self.endpoint.datagrams_to_send(now):
            self.sock.sendto(data, addr)
        knocks = self.endpoint.knocks_to_send()
        if self.cb_sock is not None:
            for knock in knocks:
                self.cb_sock.sendto(knock, self.knock_to)
        for event in self.endpoint.events():
            if isinstance(event, StreamData):
                self.reader.receive_data(event.data)
                for _ in range(100000):
                    reply = self.reader.maybe_next_reply()
                    if reply is None:
                        break
                    self.replies.append(reply)
            elif isinstance(event, SessionClosed):
                self.closed = event.reason


class TcpMember:
    """A chat client over TCP."""

    def __init__(self, server):
        self.sock = socket.create_connection(server, timeout=5)
        self.sock.setblocking(False)
        self.reader = ReplyReader()
        self.replies = []

    def sockets(self):
        return [self.sock]

    def close(self):
        self.sock.close()

    def join(self, room, name):
        self.send(join_request(room, name))

    def send(self, data):
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)

    def on_readable(self, sock, now):
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        self.reader.receive_data(data)
        for _ in range(100000):
            reply = self.reader.maybe_next_reply()
            if reply is None:
                break
            self.replies.append(reply)

    def on_timer(self, now):
        pass

    def deadline(self):
        return None


def wait_until(members, predicate, timeout=WAIT):
    """Serve every member's sockets and timers until predicate() holds, at most `timeout`
    seconds; its last value."""
    end = time.monotonic() + timeout
    owners = {sock: member for member in members for sock in member.sockets()}
    for _ in range(MAX_ROUNDS):
        if predicate():
            return True
        now = time.monotonic()
        if now >= end:
            break
        wait = min(end - now, 0.5)
        for member in members:
            due = member.deadline()
            if due is not None:
                wait = min(wait, max(0.0, due - now))
        readable, _, _ = select.select(list(owners), [], [], wait)
        now = time.monotonic()
        for sock in readable:
            owners[sock].on_readable(sock, now)
        for member in members:
            member.on_timer(now)
    return predicate()


def chats(member, ref):
    """(name, text) of every chat and announcement `member` has seen in room `ref`."""
    return [(r.client_name, r.message) for r in member.replies
            if isinstance(r, ChatMessage) and r.ref == ref]


def joined(member, room):
    found = [r for r in member.replies if isinstance(r, JoinedReply) and r.room == room]
    return found[0] if found else None


def stop(proc):
    """End a child this test started, by its pid."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


class Relay:
    """tools/relay.py in a child process, listening on a port of its choosing."""

    def __init__(self, to_port, *options):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.relay", "--listen", "%s:0" % HOST,
             "--to", "%s:%d" % (HOST, to_port), "--seconds", str(RELAY_SECONDS)]
            + list(options), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        line = kit.read_line(self.proc, 10).decode("utf-8", "replace")
        if not line.startswith("relaying %s:" % HOST):
            stop(self.proc)
            raise AssertionError("relay did not start: %r" % line)
        self.address = (HOST, int(line.split()[1].rpartition(":")[2]))

    def stop(self):
        stop(self.proc)


class UdpServerTests(unittest.TestCase):

    def setUp(self):
        self.server = ServerProcess("--udp-idle-timeout", str(IDLE_TIMEOUT))
        self.addCleanup(self.server.stop)
        self.address = (self.server.host, self.server.port)

    def member(self, member):
        self.addCleanup(member.close)
        return member

    def test_udp_and_tcp_members_chat_through_lossy_relays_exactly_once_in_order(self):
        relay_a = Relay(self.server.port, *RELAY_OPTIONS, "--seed", "1")
        self.addCleanup(relay_a.stop)
        relay_b = Relay(self.server.port, *RELAY_OPTIONS, "--seed", "2")
        self.addCleanup(relay_b.stop)
        tcp = self.member(TcpMember(self.address))
        udp_member = self.member(UdpMember(relay_a.address, callback_via=relay_b.address))
        members = [tcp, udp_member]
        tcp.join("lobby", "tina")
        self.assertTrue(wait_until(members, lambda: joined(tcp, "lobby")))
        udp_member.join("lobby", "ulla")
        self.assertTrue(wait_until(members, lambda: joined(udp_member, "lobby")),
                        udp_member.replies)
        ref = joined(udp_member, "lobby").ref
        self.assertEqual(ref, joined(tcp, "lobby").ref)
        self.assertTrue(wait_until(members, lambda: ("ulla", JOINED_TEXT % "ulla")
                                   in chats(tcp, ref)))
        # The callback was validated: the server's DATA came through relay B.
        self.assertGreater(udp_member.data_at_callback, 0)
        big = "".join(chr(ord("a") + i % 26) for i in range(10000))
        sent_by_udp, sent_by_tcp = [], []
        for i in range(40):
            text = big if i == 20 else "from ulla %d" % i
            sent_by_udp.append(text)
            udp_member.send(chat_request(ref, 0, "ulla", text))
            sent_by_tcp.append("from tina %d" % i)
            tcp.send(chat_request(ref, 0, "tina", "from tina %d" % i))
            wait_until(members, lambda: False, 0.01)       # let the two interleave
        expected = 1 + 80       # ulla's arrival, then 40 chats from each
        self.assertTrue(wait_until(members, lambda: len(chats(udp_member, ref)) >= expected
                                   and len(chats(tcp, ref)) >= 1 + expected, 60))
        seen_by_udp = chats(udp_member, ref)
        seen_by_tcp = chats(tcp, ref)
        # Both see the room's messages in the server's one order, from ulla's arrival on.
        self.assertEqual(seen_by_tcp[seen_by_tcp.index(("ulla", JOINED_TEXT % "ulla")):],
                         seen_by_udp)
        # Exactly once and in order, the 10 000-character message included.
        self.assertEqual([t for n, t in seen_by_udp[1:] if n == "ulla"], sent_by_udp)
        self.assertEqual([t for n, t in seen_by_udp if n == "tina"], sent_by_tcp)
        self.assertEqual(len(seen_by_udp), expected)

    def test_killed_udp_client_is_announced_as_left_within_the_idle_timeout(self):
        tcp = self.member(TcpMember(self.address))
        tcp.join("room", "tom")
        self.assertTrue(wait_until([tcp], lambda: joined(tcp, "room")))
        ref = joined(tcp, "room").ref
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_udp_server", "member", HOST,
             str(self.server.port), "victor", "room"],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        self.addCleanup(stop, proc)
        self.assertEqual(kit.read_line(proc, WAIT).decode("utf-8", "replace").strip(), "joined")
        self.assertTrue(wait_until([tcp], lambda: ("victor", JOINED_TEXT % "victor")
                                   in chats(tcp, ref)))
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        left = ("victor", LEFT_TEXT % "victor")
        self.assertTrue(wait_until([tcp], lambda: left in chats(tcp, ref), IDLE_TIMEOUT + 10))
        took = time.monotonic() - killed_at
        self.assertLess(took, IDLE_TIMEOUT + 2.0)
        self.assertGreater(took, IDLE_TIMEOUT - 2.0)   # it was the timeout, nothing sooner

    def test_mixed_room_helo_announcements_and_disconnect(self):
        udp_member = self.member(UdpMember(self.address, own_callback=True))
        tcp = self.member(TcpMember(self.address))
        members = [udp_member, tcp]
        udp_member.send(helo_request("over udp"))
        self.assertTrue(wait_until(members, lambda: udp_member.replies))
        self.assertEqual(udp_member.replies[0],
                         HeloReply("HELO over udp", HOST, self.server.port,
                                   udp_member.replies[0].student_id))
        udp_member.join("mixed", "uma")
        self.assertTrue(wait_until(members, lambda: joined(udp_member, "mixed")))
        ref = joined(udp_member, "mixed").ref
        self.assertEqual(joined(udp_member, "mixed").server_ip, HOST)
        tcp.join("mixed", "theo")
        self.assertTrue(wait_until(members, lambda: ("theo", JOINED_TEXT % "theo")
                                   in chats(udp_member, ref)))
        udp_member.send(chat_request(ref, 0, "uma", "hello theo"))
        tcp.send(chat_request(ref, 0, "theo", "hello uma"))
        both = [("uma", "hello theo"), ("theo", "hello uma")]
        self.assertTrue(wait_until(members, lambda: all(c in chats(m, ref) for c in both
                                                        for m in members)))
        self.assertGreater(udp_member.data_at_callback, 0)     # its own callback socket
        udp_member.disconnect("uma")
        left = ("uma", LEFT_TEXT % "uma")
        self.assertTrue(wait_until(members, lambda: left in chats(tcp, ref)
                                   and udp_member.closed is not None))
        # DISCONNECT's announcement arrived before the session was closed, and it was closed
        # gracefully by the server (CLOSE, then CLOSE_ACK), not timed out or reset.
        self.assertIn(left, chats(udp_member, ref))
        self.assertEqual(udp_member.closed, "closed by peer")

    def test_no_udp_leaves_the_udp_port_free(self):
        server = ServerProcess("--no-udp")
        self.addCleanup(server.stop)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((HOST, server.port))          # would fail if the server held it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            with self.assertRaises(OSError):
                sock.bind((HOST, self.server.port))  # the default server holds it


class InProcessServer:
    """The server's parts (Server.Wiring) with UDP and the chat protocol in this process, run a
    tick at a time from wait_until() as if it were one more member (so its counters can be
    looked at)."""

    def __init__(self, **options):
        self.wiring = Wiring(HOST, 0, udp=True, **options)
        self.hub = self.wiring.hub
        self.hub.app = ChatProtocol(port=self.wiring.address[1], student_id="1")
        self.address = (HOST, self.wiring.address[1])

    def sockets(self):
        return []

    def on_readable(self, sock, now):
        pass

    def on_timer(self, now):
        self.wiring.run_once(0)

    def deadline(self):
        return time.monotonic() + 0.002

    def close(self):
        self.wiring.close()


class ReactorUdpTests(unittest.TestCase):
    """The server's side of UDP sessions, looked at from inside: the memory budget, OUTPUT_CAP,
    flood control."""

    def start(self, **options):
        server = InProcessServer(**options)
        self.addCleanup(server.close)
        return server

    def joined_member(self, server, name, room="r"):
        member = UdpMember(server.address)
        self.addCleanup(member.close)
        member.join(room, name)
        self.assertTrue(wait_until([server, member], lambda: joined(member, room)))
        return member

    def test_a_session_that_never_acknowledges_is_dropped_at_output_cap_and_frees_its_memory(self):
        server = self.start(limits=InputLimits(0, 0, 0, 0))
        mute = self.joined_member(server, "mute")
        talker = self.joined_member(server, "talker")
        ref = joined(talker, "r").ref
        members = [server, talker]          # mute's socket is no longer read: it never acks
        text = "x" * 60000
        left = ("mute", LEFT_TEXT % "mute")
        peak = []

        def sent():
            peak.append(server.hub.memory.output)
            return talker.endpoint.buffered_bytes() < 100000
        with self.assertLogs("transport", "WARNING") as logs:
            for _ in range(20):             # 1.2 MB for mute: past OUTPUT_CAP (1 MiB)
                talker.send(chat_request(ref, 0, "talker", text))
                self.assertTrue(wait_until(members, sent, 30))  # (the client's cap is 1 MiB)
            self.assertTrue(wait_until(members, lambda: left in chats(talker, ref), 30))
        self.assertIn("passed OUTPUT_CAP", logs.output[0])
        # What mute was owed counted against the budget while it was held.
        self.assertGreater(max(peak), HIGH_WATER)
        self.assertEqual(len(server.hub.conns), 1)
        self.assertTrue(wait_until(members, lambda: len(chats(talker, ref)) >= 1 + 20 + 1, 60))
        # Everything delivered and acknowledged: nothing is held any more.
        self.assertTrue(wait_until(members, lambda: server.hub.memory.total == 0, 10))
        mute.close()

    def test_a_large_broadcast_to_stalled_sessions_is_held_once_and_in_each_share(self):
        server = self.start()
        mutes = [self.joined_member(server, "mute%d" % i) for i in range(4)]
        talker = self.joined_member(server, "talker")
        ref = joined(talker, "r").ref
        mute_conns = sorted(server.hub.conns)[:4]
        members = [server, talker]          # the mutes' sockets are no longer read
        text = "x" * 60000
        talker.send(chat_request(ref, 0, "talker", text))
        self.assertTrue(wait_until(members, lambda: ("talker", text) in chats(talker, ref), 30))
        for conn_id in mute_conns:          # each mute's share: the whole message
            self.assertGreater(bytes_held(server.hub.conns[conn_id]), 60000)
        # The budget's total: the one object, not a copy per mute (4 x 60 000).
        self.assertLess(server.hub.memory.output, 2 * 60000)
        for mute in mutes:
            mute.close()

    def test_segments_held_out_of_order_are_in_their_sessions_share_and_it_goes_first(self):
        server = self.start(memory_budget=32 * 1024)   # less than 63 held segments
        tcp = TcpMember(server.address)
        self.addCleanup(tcp.close)
        tcp.send(join_request("r", "idle"))
        holder = self.joined_member(server, "holder")
        self.assertTrue(wait_until([server, tcp], lambda: joined(tcp, "r")))
        session = holder.endpoint._session          # its token, to send what its stream would not
        start = session.stream.next_seq
        for seq in range(start + 1, start + 64):    # segment `start` never comes
            holder.sock.sendto(udp_wire.encode(udp_wire.DATA, session.token, seq, 0, 64,
                                               b"h" * udp_wire.MAX_PAYLOAD), server.address)
        members = [server, tcp]
        with self.assertLogs("transport", "WARNING") as logs:
            self.assertTrue(wait_until(members, lambda: len(server.hub.conns) == 1, 10))
        self.assertIn("evicted for the memory budget", logs.output[0])
        self.assertNotIn("(0 of output, 0 of input)", logs.output[0])
        self.assertEqual(server.hub.conns[min(server.hub.conns)].peer_ip, HOST)
        tcp.send(chat_request(joined(tcp, "r").ref, 0, "idle", "still here"))
        self.assertTrue(wait_until(members, lambda: ("idle", "still here") in chats(
            tcp, joined(tcp, "r").ref)))

    def test_flood_control_slows_a_udp_session_without_losing_a_request(self):
        server = self.start(limits=InputLimits(0, 0, 20, 2))     # 20 requests/s
        member = self.joined_member(server, "flooder")
        ref = joined(member, "r").ref
        started = time.monotonic()
        for i in range(30):
            member.send(chat_request(ref, 0, "flooder", "m%d" % i))
        self.assertTrue(wait_until([server, member], lambda: len(chats(member, ref)) >= 31, 60))
        self.assertGreater(time.monotonic() - started, 1.0)     # 30 at 20/s, 2 at once
        self.assertEqual(chats(member, ref)[1:], [("flooder", "m%d" % i) for i in range(30)])
        self.assertGreater(server.hub.throttles, 0)

    def test_a_callback_is_ignored_for_tcp(self):
        server = self.start()
        tcp = TcpMember(server.address)
        self.addCleanup(tcp.close)
        tcp.send(join_request("r", "t", "127.0.0.1", 9))
        self.assertTrue(wait_until([server, tcp], lambda: joined(tcp, "r")))


def member_main(argv):
    """A UDP member in its own process: join ROOM as NAME, print "joined", stay a while."""
    host, port, name, room = argv
    member = UdpMember((host, int(port)))
    member.join(room, name)
    if not wait_until([member], lambda: joined(member, room), WAIT):
        return 1
    print("joined", flush=True)
    wait_until([member], lambda: member.closed is not None, MEMBER_SECONDS)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["member"]:
        sys.exit(member_main(sys.argv[2:]))
    unittest.main()
