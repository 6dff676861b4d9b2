"""docs/UDP.md as a contract: a client written from that document alone (tests/udp_from_spec.py)
against the real server, on 127.0.0.1, with a TCP member in the same room.

Each test names the section whose promise it checks. Loss is made on purpose, inside the
client, by fixed rules (never at random), so every run sees the same losses."""
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import unittest

from tests.udp_from_spec import (
    ACCEPT, ACK, CALLBACK_PENDING, CLOSE, CLOSE_ACK, DATA, HELLO, KNOCK, MAX_DATAGRAM, MAX_SEGMENT, PING,
    PROBE, RETRY, WINDOW, UdpClient, decode, encode)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDLE_TIMEOUT = 2.0      # --udp-idle-timeout: short, so that a silent peer's end is quick to see
WAIT = 5.0              # the longest any one expected reply is waited for


def setUpModule():
    global SERVER, PORT, ADDRESS, LOG
    LOG = tempfile.TemporaryFile()
    SERVER = subprocess.Popen(
        [sys.executable, "Server.py", "127.0.0.1", "0", "--udp-idle-timeout", str(IDLE_TIMEOUT)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=LOG)
    ready, _, _ = select.select([SERVER.stdout], [], [], 10.0)
    line = SERVER.stdout.readline().decode() if ready else ""
    if not line.startswith("listening on "):
        tearDownModule()
        raise RuntimeError("the server did not start: %r" % line)
    PORT = int(line.rsplit(":", 1)[1])
    ADDRESS = ("127.0.0.1", PORT)


def tearDownModule():
    os.kill(SERVER.pid, 15)                 # SIGTERM, to this process only
    try:
        SERVER.wait(5.0)
    except subprocess.TimeoutExpired:
        os.kill(SERVER.pid, 9)
        SERVER.wait(5.0)
    SERVER.stdout.close()
    LOG.close()


def join(room, name, ip="0", port=0):
    return ("JOIN_CHATROOM: %s\nCLIENT_IP: %s\nPORT: %d\nCLIENT_NAME: %s\n"
            % (room, ip, port, name)).encode()


def chat(ref, join_id, name, text):
    return ("CHAT: %s\nJOIN_ID: %s\nCLIENT_NAME: %s\nMESSAGE: %s\n\n"
            % (ref, join_id, name, text)).encode()


def relayed(ref, name, text):
    return ("CHAT: %s\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (ref, name, text)).encode()


def field(stream, key):
    """The value of the last `KEY: value` line in `stream`."""
    return stream.rsplit(key.encode() + b": ", 1)[1].split(b"\n", 1)[0].decode()


class TcpMember:
    """A TCP connection; while it waits for a reply it keeps the test's UDP sessions running."""

    def __init__(self, test):
        self.sock = socket.create_connection(ADDRESS, timeout=WAIT)
        test.addCleanup(self.sock.close)
        self.received = bytearray()
        self.sessions = test.sessions

    def send(self, data):
        self.sock.sendall(data)

    def poll(self):
        """Take what has arrived, without waiting."""
        self.sock.setblocking(False)
        try:
            for _ in range(100):
                data = self.sock.recv(65536)
                if not data:
                    break
                self.received += data
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(WAIT)

    def read_until(self, marker, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while marker not in self.received:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("TCP: %r not received; got %r"
                                     % (marker, bytes(self.received[-300:])))
            for session in self.sessions:
                if not session.closed:
                    session.pump(0, alone=True)
            self.sock.settimeout(min(left, 0.02) if self.sessions else left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise AssertionError("TCP: closed before %r" % marker)
            self.received += data
        return bytes(self.received)


class SpecTestCase(unittest.TestCase):

    def setUp(self):
        self.sessions = []      # every UDP session of the test, kept running by each other

    def udp(self, window=WINDOW):
        client = UdpClient(ADDRESS)
        self.addCleanup(client.close_sockets)
        self.sessions.append(client)
        client.companions = self.sessions
        client.advertised_window = window   # in every datagram from the first PING on
        client.connect(timeout=WAIT)
        return client

    def raw_socket(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.3)
        self.addCleanup(sock.close)
        return sock

    @staticmethod
    def answers(sock, quiet=0.3, expect=None):
        """Every datagram `sock` receives until `quiet` seconds pass without one (at most 50);
        once `expect` have come, extras are waited for only 50 ms."""
        got = []
        for _ in range(50):
            sock.settimeout(0.05 if expect is not None and len(got) >= expect else quiet)
            try:
                got.append(sock.recvfrom(65536)[0])
            except socket.timeout:
                break
        return got

    def in_room(self, room, udp_name, tcp_name, window=WINDOW):
        """A UDP session and a TCP connection both in `room`; (udp, tcp, ref, udp join id)."""
        udp = self.udp(window)
        udp.send(join(room, udp_name, *udp.address))  # the callback: the session's own socket
        got = udp.read_until(b"MESSAGE: %s has joined" % udp_name.encode(), WAIT)
        ref, join_id = field(got, "ROOM_REF"), field(got, "JOIN_ID")
        tcp = TcpMember(self)
        tcp.send(join(room, tcp_name))
        tcp.read_until(relayed(ref, tcp_name, "%s has joined this chatroom." % tcp_name))
        udp.read_until(relayed(ref, tcp_name, "%s has joined this chatroom." % tcp_name), WAIT)
        return udp, tcp, ref, join_id


class HandshakeTests(SpecTestCase):

    def test_hello_retry_hello_accept_ping_ack_as_in_section_4(self):
        sock = self.raw_socket()
        nonce = b"\xa1\xa2\xa3\xa4\xa5\xa6\xa7\xa8"
        sock.sendto(encode(HELLO, body=nonce, pad_to=MAX_DATAGRAM), ADDRESS)
        [raw] = self.answers(sock, expect=1)
        retry = decode(raw)
        self.assertEqual((len(raw), retry.type, retry.body[:8]), (60, RETRY, nonce))
        cookie = retry.body[8:]
        sock.sendto(encode(HELLO, body=nonce + cookie, pad_to=MAX_DATAGRAM), ADDRESS)
        [raw] = self.answers(sock, expect=1)
        accept = decode(raw)
        self.assertEqual((len(raw), accept.type, accept.body), (40, ACCEPT, nonce))
        self.assertNotEqual(accept.token, bytes(16))
        # The ACCEPT lost: the same HELLO again gets the same session, not a second one, with
        # its cookie or without.
        for body in (nonce + cookie, nonce):
            sock.sendto(encode(HELLO, body=body, pad_to=MAX_DATAGRAM), ADDRESS)
            self.assertEqual(self.answers(sock, expect=1), [raw])
        sock.sendto(encode(PING, accept.token, 0, 0, WINDOW), ADDRESS)
        [raw] = self.answers(sock, expect=1)
        self.assertEqual(raw, encode(ACK, accept.token, 0, 0, WINDOW))   # ack 0, window 64

    def test_what_a_receiver_drops_gets_no_answer(self):
        sock = self.raw_socket()
        nonce = os.urandom(8)
        for raw in (encode(HELLO, body=nonce, pad_to=MAX_DATAGRAM - 1),   # not 1200 bytes
                    encode(HELLO, body=nonce, pad_to=MAX_DATAGRAM, version=0xC2),
                    encode(HELLO, body=nonce, pad_to=MAX_DATAGRAM)[:-1] + bytes(2),  # > 1200
                    encode(PING, os.urandom(16), 0, 0, WINDOW),           # unknown token
                    encode(KNOCK)):                                       # nobody waits on us
            sock.sendto(raw, ADDRESS)
            self.assertEqual(self.answers(sock, quiet=0.1), [], raw[:32].hex())

    def test_a_cookie_made_for_another_address_gets_a_fresh_retry(self):
        first, second = self.raw_socket(), self.raw_socket()
        nonce = os.urandom(8)
        first.sendto(encode(HELLO, body=nonce, pad_to=MAX_DATAGRAM), ADDRESS)
        cookie = decode(self.answers(first, expect=1)[0]).body[8:]
        second.sendto(encode(HELLO, body=nonce + cookie, pad_to=MAX_DATAGRAM), ADDRESS)
        [raw] = self.answers(second, expect=1)
        self.assertEqual(decode(raw).type, RETRY)
        self.assertNotEqual(decode(raw).body[8:], cookie)


class ChatTests(SpecTestCase):

    def test_udp_and_tcp_members_chat_both_ways(self):
        udp, tcp, ref, join_id = self.in_room("spec-chat", "ulla", "tina")
        udp.send(b"HELO over udp\n")
        udp.read_until(b"HELO over udp\nIP:127.0.0.1\nPort:%d\nStudentID:" % PORT, WAIT)
        udp.send(chat(ref, join_id, "ulla", "hello from udp"))
        tcp.read_until(relayed(ref, "ulla", "hello from udp"))
        udp.read_until(relayed(ref, "ulla", "hello from udp"), WAIT)
        tcp.send(chat(ref, 0, "tina", "hello from tcp"))
        udp.read_until(relayed(ref, "tina", "hello from tcp"), WAIT)
        # Section 6: naming the session's own address needs no validation, so never a flag.
        self.assertFalse([d for way, _, d in udp.wire
                          if way == "in" and d.flags & CALLBACK_PENDING])
        for way, _, datagram in udp.wire:
            self.assertLessEqual(len(datagram.body), MAX_SEGMENT)

    def test_long_messages_cross_lossy_paths_exactly_once_and_in_order(self):
        udp, tcp, ref, join_id = self.in_room("spec-loss", "ulla", "tina")
        # Lost on the way out: the first sends of three of the next segments, every third ACK.
        base = udp.next_seq
        udp.drop_out = lambda d, attempt: (
            (d.type == DATA and d.seq - base in (1, 4, 5, 9) and attempt == 1)
            or (d.type == ACK and attempt % 3 == 0))
        long_udp = ["%05d" % i * 400 for i in range(2)]          # 2 000 characters each ...
        long_udp[0] = "u" * 10000                                 # ... and one of 10 000
        for text in long_udp + ["short after long"]:
            udp.send(chat(ref, join_id, "ulla", text))
        expected = b"".join(relayed(ref, "ulla", text) for text in long_udp
                            + ["short after long"])
        got = tcp.read_until(relayed(ref, "ulla", "short after long"), WAIT)
        self.assertEqual(got.split(b"tina has joined this chatroom.\n\n", 1)[1], expected)
        self.assertTrue([d for way, _, d in udp.wire if way == "dropped-out" and d.type == DATA])
        # Lost on the way in: the first arrival of four of the server's segments, every 4th ACK.
        udp.pump(0.2, until=lambda: False)      # the server's echo of our own chats
        base_in = udp.rcv_next
        udp.drop_in = lambda d, arrival: (
            (d.type == DATA and d.seq - base_in in (0, 2, 3, 8) and arrival == 1)
            or (d.type == ACK and arrival % 4 == 0))
        long_tcp = ["t" * 10000, "second", "x" * 3000, "last"]
        start = len(udp.received)
        for text in long_tcp:
            tcp.send(chat(ref, 0, "tina", text))
        udp.read_until(relayed(ref, "tina", "last"), WAIT)
        udp.pump(0.1)                           # anything sent twice would come now
        self.assertEqual(bytes(udp.received[start:]),
                         b"".join(relayed(ref, "tina", text) for text in long_tcp))
        dropped = [d.seq for way, _, d in udp.wire if way == "dropped-in" and d.type == DATA]
        self.assertEqual(sorted(dropped), [base_in + i for i in (0, 2, 3, 8)])
        # Section 5: segments the client held beyond a gap were reported in SACK ranges.
        sacks = [d.sacks for way, _, d in udp.wire if way == "out" and d.type == ACK and d.sacks]
        self.assertTrue(sacks)


    def test_a_window_of_one_gets_one_segment_at_a_time(self):
        udp, tcp, ref, _ = self.in_room("spec-window", "mini", "tina", window=1)  # section 11
        tcp.send(chat(ref, 0, "tina", "w" * 10000))
        udp.read_until(relayed(ref, "tina", "w" * 10000), WAIT)
        acked = 0
        for way, _, datagram in udp.wire:
            if way == "out" and datagram.type in (ACK, DATA):
                acked = datagram.ack
            elif way == "in" and datagram.type == DATA:
                self.assertLessEqual(datagram.seq, acked)   # never past ack + window 1


class TeardownTests(SpecTestCase):

    def test_leave_then_disconnect_closes_the_session_after_its_announcements(self):
        udp, tcp, ref, join_id = self.in_room("spec-bye", "ulla", "tina")
        udp.send(("LEAVE_CHATROOM: %s\nJOIN_ID: %s\nCLIENT_NAME: ulla\n"
                  % (ref, join_id)).encode())
        left = relayed(ref, "ulla", "ulla has left this chatroom.")
        udp.read_until(b"LEFT_CHATROOM: %s\nJOIN_ID: %s\n" % (ref.encode(), join_id.encode())
                       + left, WAIT)
        tcp.read_until(left)
        udp.send(join("spec-bye", "ulla", "0", 0))      # 0 / 0: the stream stays where it is
        udp.read_until(left + b"JOINED_CHATROOM: spec-bye\n", WAIT)
        udp.read_until(relayed(ref, "ulla", "ulla has joined this chatroom."), WAIT)
        udp.send(b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: ulla\n")
        self.assertTrue(udp.pump(WAIT, until=lambda: udp.closed is not None))
        self.assertEqual(udp.closed, "closed by peer")
        self.assertTrue(bytes(udp.received).endswith(left))     # the leave came before CLOSE
        [close] = [d for way, _, d in udp.wire if way == "in" and d.type == CLOSE]
        self.assertEqual(close.seq, udp.rcv_next)               # seq = segments it sent
        tcp.read_until(left + b"CHAT: ")                        # the LEAVE's, the rejoin ...
        tcp.read_until(b"ulla has joined this chatroom.\n\n" + left)  # ... and DISCONNECT's
        self.assert_token_forgotten(udp)

    def assert_token_forgotten(self, udp):
        """Once what the server sent before the end has arrived, a PING gets no answer."""
        self.answers(udp.sock, quiet=0.1)
        udp.sock.setblocking(False)
        before = len(udp.wire)
        udp._send(encode(PING, udp.token, 0, udp.rcv_next, WINDOW))
        udp.closed = None
        udp.pump(0.3)
        self.assertEqual([d for way, _, d in udp.wire[before:] if way == "in"], [])

    def test_a_close_from_the_client_and_a_reset_each_leave_the_rooms(self):
        closer, tcp, ref, join_id = self.in_room("spec-close", "carl", "tina")
        resetter = self.udp()
        resetter.send(join("spec-close", "rosa", *resetter.address))
        resetter.read_until(b"rosa has joined", WAIT)
        tcp.read_until(b"rosa has joined")
        closer.send(chat(ref, join_id, "carl", "about to close"))
        tcp.read_until(b"about to close")
        before = len(closer.wire)
        closer._send(encode(CLOSE, closer.token, closer.next_seq + 5))   # wrong seq: ignored
        closer.pump(0.2)
        self.assertFalse([d for way, _, d in closer.wire[before:] if d.type == CLOSE_ACK])
        self.assertEqual(closer.close(timeout=WAIT), "closed")
        tcp.read_until(relayed(ref, "carl", "carl has left this chatroom."))
        resetter.reset()
        tcp.read_until(relayed(ref, "rosa", "rosa has left this chatroom."))
        self.assert_token_forgotten(resetter)

    def test_a_silent_session_is_gone_after_the_idle_timeout_and_a_live_one_stays(self):
        silent, tcp, ref, _ = self.in_room("spec-idle", "sid", "tina")
        self.sessions.remove(silent)        # from now on nobody runs it
        live = self.udp()
        live.send(join("spec-idle", "liv", *live.address))
        live.read_until(b"liv has joined", WAIT)
        gone = relayed(ref, "sid", "sid has left this chatroom.")
        live.pump(IDLE_TIMEOUT * 0.6)       # answers the server's PINGs; sid answers nothing
        tcp.poll()
        self.assertNotIn(gone, bytes(tcp.received))                 # not gone too soon ...
        live.pump(IDLE_TIMEOUT * 0.7)
        tcp.read_until(gone, WAIT)                                  # ... but gone in time
        self.assertNotIn(b"liv has left", bytes(tcp.received))
        live.send(b"HELO still here\n")
        live.read_until(b"HELO still here\n", WAIT)
        self.assertTrue([d for way, _, d in live.wire if way == "in" and d.type == PING])
        silent.pump(0.05)                   # what waited in its socket: the keepalive PINGs
        pings = [d for way, _, d in silent.wire if way == "in" and d.type == PING]
        self.assertGreaterEqual(len(pings), 2)
        self.assert_token_forgotten(silent)


class OffPathTests(SpecTestCase):

    def test_a_datagram_with_a_wrong_token_is_ignored(self):
        udp, tcp, ref, join_id = self.in_room("spec-token", "ulla", "tina")
        stranger = self.raw_socket()
        forged = bytearray(udp.token)
        forged[0] ^= 1
        for kind in (DATA, PING, CLOSE):
            stranger.sendto(encode(kind, bytes(forged), udp.next_seq, 0, WINDOW,
                                   chat(ref, join_id, "ulla", "forged")), ADDRESS)
        udp._send(encode(DATA, bytes(forged), udp.next_seq, 0, WINDOW,
                         chat(ref, join_id, "ulla", "forged too")))
        self.assertEqual(self.answers(stranger), [])
        udp.send(chat(ref, join_id, "ulla", "genuine"))
        tcp.read_until(relayed(ref, "ulla", "genuine"))
        self.assertNotIn(b"forged", bytes(tcp.received))

    def test_a_datagram_from_elsewhere_is_taken_but_answered_at_the_source_address(self):
        udp = self.udp()
        elsewhere = self.raw_socket()
        before = len(udp.wire)
        elsewhere.sendto(encode(DATA, udp.token, 0, 0, WINDOW, b"HELO from elsewhere\n"),
                         ADDRESS)
        udp.next_seq = 1                    # that segment was ours, sent from another socket
        udp.read_until(b"HELO from elsewhere\nIP:", WAIT)
        self.assertEqual(self.answers(elsewhere, quiet=0.1), [])
        self.assertTrue([d for way, _, d in udp.wire[before:] if way == "in" and d.ack == 1])
        udp.reset()

    def test_receive_window_sack_ranges_and_acks_as_in_section_5(self):
        udp = self.udp()                    # a session used for nothing else: its stream is junk
        self.addCleanup(udp.reset)

        def ack_for(seq):
            before = len(udp.wire)
            udp._send(encode(DATA, udp.token, seq, 0, WINDOW, b"x"))
            udp.pump(0.3, until=lambda: any(d.type == ACK for way, _, d in udp.wire[before:]))
            [ack] = [d for way, _, d in udp.wire[before:] if way == "in" and d.type == ACK]
            return ack.ack, ack.sacks
        self.assertEqual(ack_for(WINDOW), (0, ()))               # beyond the window: acked
        self.assertEqual(ack_for(5), (0, ((5, 6),)))             # held, reported
        self.assertEqual(ack_for(7), (0, ((5, 6), (7, 8))))
        self.assertEqual(ack_for(6), (0, ((5, 8),)))             # ranges merge
        self.assertEqual(ack_for(6), (0, ((5, 8),)))             # a duplicate is acked too
        before = len(udp.wire)
        udp._send(encode(ACK, udp.token, 0, 0, WINDOW))         # an ACK is never answered
        udp.pump(0.2)
        self.assertFalse([d for way, _, d in udp.wire[before:] if way == "in"])


class CallbackTests(SpecTestCase):

    def test_a_callback_is_sent_nothing_until_it_knocks_and_its_probe_is_echoed(self):
        udp = self.udp()
        callback = udp.add_callback_socket()
        callback_name = "%s:%d" % callback
        udp.knocking = False
        udp.send(join("spec-callback", "cleo", *callback))
        udp.pump(0.4)
        self.assertEqual(udp.bytes_in.get(callback_name, 0), 0)     # never sent anything
        self.assertNotIn(b"JOINED_CHATROOM", bytes(udp.received))   # the reply waits
        flagged = [d for way, _, d in udp.wire if way == "in" and d.flags & CALLBACK_PENDING]
        self.assertTrue(flagged)
        udp.knocking = True
        udp._send(udp._session(PING))       # any answer is flagged, and the client knocks
        udp.read_until(b"cleo has joined this chatroom.\n\n", WAIT)
        [probe] = [d for way, name, d in udp.wire if way == "in" and d.type == PROBE]
        self.assertEqual(len(probe.body), 16)
        joined_at = [i for i, (way, name, d) in enumerate(udp.wire)
                     if way == "in" and d.type == DATA and name == callback_name]
        self.assertTrue(joined_at)          # the stream went to the callback
        before = udp.wire[:joined_at[0]]
        sent = sum(len(encode(KNOCK)) for way, name, d in before
                   if way == "out" and name == callback_name)
        received = sum(32 + len(d.body) for way, name, d in before
                       if way == "in" and name == callback_name)
        self.assertLessEqual(received, 3 * sent)                    # anti-amplification
        udp.reset()

    def test_a_join_naming_someone_elses_address_costs_it_no_datagram(self):
        victim = self.raw_socket()
        udp = self.udp()
        udp.send(join("spec-victim", "mallory", *victim.getsockname()))
        udp.pump(0.3)
        self.assertEqual(self.answers(victim, quiet=0.1), [])
        # KNOCKs from the victim's address (as if spoofed): PROBEs are rate-limited, 3 at
        # once, and never more bytes than the KNOCKs that provoked them (nobody ECHOes them).
        for _ in range(6):
            victim.sendto(encode(KNOCK), ADDRESS)
        probes = [decode(raw) for raw in self.answers(victim, quiet=0.2)]
        self.assertTrue(1 <= len(probes) <= 3, probes)
        self.assertEqual({(p.type, len(p.body)) for p in probes}, {(PROBE, 16)})
        self.assertLessEqual(48 * len(probes), 6 * 32)
        udp.reset()


class ExampleTests(unittest.TestCase):
    """Section 4's example datagrams, byte for byte (those that do not depend on the key)."""

    TOKEN = bytes.fromhex("00112233445566778899aabbccddeeff")
    NONCE = bytes.fromhex("a1a2a3a4a5a6a7a8")
    HEAD = "c1 %s 00 00 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff 00 00 00 00 "

    def test_the_examples_of_section_4(self):
        examples = [
            (encode(HELLO, body=self.NONCE, pad_to=MAX_DATAGRAM)[:40],
             "c1 01 00 00" + " 00" * 27 + " 08 a1 a2 a3 a4 a5 a6 a7 a8"),
            (encode(ACCEPT, self.TOKEN, body=self.NONCE),
             self.HEAD % "03" + "00 00 00 00 00 00 00 08 a1 a2 a3 a4 a5 a6 a7 a8"),
            (encode(PING, self.TOKEN, 0, 0, WINDOW), self.HEAD % "07" + "00 00 00 00 00 40 00 00"),
            (encode(ACK, self.TOKEN, 0, 0, WINDOW), self.HEAD % "06" + "00 00 00 00 00 40 00 00"),
            (encode(DATA, self.TOKEN, 0, 0, WINDOW, b"HELO hi\n"),
             self.HEAD % "05" + "00 00 00 00 00 40 00 08 48 45 4c 4f 20 68 69 0a"),
            (encode(ACK, self.TOKEN, 0, 1, WINDOW), self.HEAD % "06" + "00 00 00 01 00 40 00 00"),
        ]
        for raw, text in examples:
            self.assertEqual(raw, bytes.fromhex(text.replace(" ", "")))
        self.assertEqual(len(encode(HELLO, body=self.NONCE, pad_to=MAX_DATAGRAM)), 1200)


if __name__ == "__main__":
    unittest.main()
