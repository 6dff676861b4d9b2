"""Tests of tools/chat_client.py over UDP (--udp): the same client, on the server's UDP transport.

Against the real server (Server.py, a subprocess on an ephemeral port of 127.0.0.1), the client
runs as a subprocess, piped or in a pseudo-terminal, and a TCP member ("bob", a plain socket
read with sansio.replies.ReplyReader) chats with it in the same room. The lossy path is two
tools/relay.py subprocesses, one per direction, as docs/UDP.md describes: the client's session
goes through relay A, and its --callback names relay B. One test runs the client's UDP link in
this process with a clock of its own, to see the peer-gone timeout without waiting 45 s.

Every wait is bounded (each loop counts its rounds and has a deadline); every process a test
starts is ended by its cleanup, by its pid.
"""
import io
import os
import re
import socket
import subprocess
import sys
import time
import unittest
from typing import Callable, List, Tuple

from sansio import udp_callbacks, udp_stream
from sansio.replies import ChatMessage, JoinedReply, ReplyReader
from sansio.wire import chat_request, disconnect_request, join_request
from tools import chat_client, kit
from tools.chat_client import ChatClient, Send
from tools.test_chat_client import (CHILD_ENV, CLIENT, REPO_ROOT, STAMP, TIMEOUT, PtyClient,
                                    end_process)

HOST = "127.0.0.1"
# Waits through the lossy relays: a segment may need a few retransmissions, the handshake a few
# HELLOs (1 s, then 2 s apart). A passing run takes a few seconds.
LOSSY_TIMEOUT = 60.0
MAX_ROUNDS = 100000             # bound on every loop of reads
# The lossy path of the brief, both relays, both directions: 20 % loss, 5 % duplication,
# 10 % reordering, 5 ms of delay.
RELAY_OPTIONS = ("--loss", "0.2", "--dup", "0.05", "--reorder", "0.1", "--delay", "5")
RELAY_SECONDS = 120             # the relays stop by themselves after this, whatever happens
JOINED_TEXT = "%s has joined this chatroom."
LEFT_TEXT = "%s has left this chatroom."


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class TcpMember:
    """A member over TCP on a plain socket: sends requests, collects every reply."""

    def __init__(self, test: unittest.TestCase, port: int, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        test.addCleanup(self.sock.close)
        self.reader = ReplyReader()
        self.replies: List[object] = []
        self.test = test

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def chats(self, ref: int = 0) -> List[Tuple[str, str]]:
        return [(r.client_name, r.message) for r in self.replies
                if isinstance(r, ChatMessage) and r.ref == ref]

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(MAX_ROUNDS):
            if ready():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            self.reader.receive_data(data)
            for _ in range(MAX_ROUNDS):
                reply = self.reader.maybe_next_reply()
                if reply is None:
                    break
                self.replies.append(reply)
        self.test.assertTrue(ready(), "%s never saw %s; it saw %r" % (self.name, what,
                                                                       self.replies[-5:]))

    def join(self, room: str) -> None:
        self.send(join_request(room, self.name))
        self.wait_for("its JOINED", lambda: any(isinstance(r, JoinedReply)
                                                for r in self.replies))

    def say(self, text: str, ref: int = 0) -> None:
        self.send(chat_request(ref, 1, self.name, text))


def start_relay(test: unittest.TestCase, to_port: int, seed: int) -> int:
    """tools/relay.py towards `to_port` on the brief's lossy path; the port it listens on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.relay", "--listen", "%s:0" % HOST,
         "--to", "%s:%d" % (HOST, to_port), "--seconds", str(RELAY_SECONDS), "--seed", str(seed),
         *RELAY_OPTIONS], cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    test.addCleanup(end_process, proc)
    line = kit.read_line(proc, TIMEOUT).decode("utf-8", "replace")
    match = re.match(r"relaying %s:(\d+) " % re.escape(HOST), line)
    test.assertIsNotNone(match, "the relay did not start: %r" % line)
    return int(match.group(1))


class UdpClientTestCase(unittest.TestCase):

    def setUp(self) -> None:
        self.server = kit.ServerProcess(env=CHILD_ENV)
        self.addCleanup(self.server.stop)
        self.port = self.server.port
        self.bob = TcpMember(self, self.port, "bob")
        self.bob.join("room1")

    def start_client(self, port: int, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(CLIENT + [HOST, str(port), "--name", "alice", "--udp", *args],
                                cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=CHILD_ENV)
        self.addCleanup(end_process, proc)
        return proc

    @staticmethod
    def type(proc: subprocess.Popen, text: str) -> None:
        proc.stdin.write(text.encode("utf-8"))
        proc.stdin.flush()

    def finish(self, proc: subprocess.Popen, script: str,
               timeout: float = TIMEOUT) -> Tuple[int, str, str]:
        out, err = proc.communicate(script.encode("utf-8"), timeout=timeout)
        return proc.returncode, out.decode("utf-8"), err.decode("utf-8")

    def assert_lines_in_order(self, text: str, expected: List[str]) -> None:
        lines = text.splitlines()
        at = 0
        for want in expected:
            self.assertIn(want, lines[at:], "line %r not found (in this order) in:\n%s"
                          % (want, text))
            at = lines.index(want, at) + 1


class PipedOverUdpTest(UdpClientTestCase):

    def test_join_chat_both_ways_with_a_tcp_member_and_quit(self) -> None:
        bob = self.bob
        alice = self.start_client(self.port, "--bind", "%s:0" % HOST)
        self.type(alice, "/join room1\n")
        bob.wait_for("alice's arrival", lambda: ("alice", JOINED_TEXT % "alice") in bob.chats())
        self.type(alice, "hello bob\n")
        bob.wait_for("alice's chat", lambda: ("alice", "hello bob") in bob.chats())
        bob.say("hi alice")
        bob.wait_for("its own chat", lambda: ("bob", "hi alice") in bob.chats())

        status, out, err = self.finish(alice, "/quit\n")

        self.assertEqual((status, err), (0, ""))
        self.assert_lines_in_order(out, [
            "* joined [room1]: ROOM_REF 0, JOIN_ID 2, server %s:%d" % (HOST, self.port),
            "[room1] alice: alice has joined this chatroom.",
            "[room1] alice: hello bob",
            "[room1] bob: hi alice",
            "[room1] alice: alice has left this chatroom.",
            "* disconnected"])
        bob.wait_for("alice leaving", lambda: ("alice", LEFT_TEXT % "alice") in bob.chats())

    def test_a_callback_socket_of_its_own_is_validated_by_its_knocks(self) -> None:
        callback = "%s:%d" % (HOST, free_udp_port())
        started = time.monotonic()
        alice = self.start_client(self.port, "--callback", callback)
        status, out, err = self.finish(alice, "/join room1\nvia my callback\n", timeout=20)
        self.assertEqual((status, err), (0, ""))
        self.assert_lines_in_order(out, ["* joined [room1]: ROOM_REF 0, JOIN_ID 2, server "
                                         "%s:%d" % (HOST, self.port),
                                         "[room1] alice: via my callback", "* disconnected"])
        # The server's replies went to the callback once it was validated (KNOCK, PROBE, ECHO),
        # not after the udp_callbacks.CALLBACK_TIMEOUT it waits before giving up on one.
        self.assertLess(time.monotonic() - started, udp_callbacks.CALLBACK_TIMEOUT)
        self.bob.wait_for("alice's chat", lambda: ("alice", "via my callback")
                          in self.bob.chats())

    def test_chat_through_two_lossy_relays_exactly_once_and_in_order(self) -> None:
        bob = self.bob
        relay_a = start_relay(self, self.port, seed=1)      # alice -> server
        relay_b = start_relay(self, self.port, seed=2)      # server -> alice, her callback
        alice = self.start_client(relay_a, "--callback", "%s:%d" % (HOST, relay_b))
        self.type(alice, "/join room1\n")
        bob.wait_for("alice's arrival", lambda: ("alice", JOINED_TEXT % "alice") in bob.chats(),
                     LOSSY_TIMEOUT)
        big = "".join(chr(ord("a") + i % 26) for i in range(10000))
        from_alice = [big if i == 10 else "alice %d" % i for i in range(20)]
        from_bob = ["bob %d" % i for i in range(20)]
        for mine, his in zip(from_alice, from_bob):         # both at once, interleaved
            self.type(alice, mine + "\n")
            bob.say(his)
        bob.wait_for("every chat", lambda: len(bob.chats()) >= 2 + 40, LOSSY_TIMEOUT)

        status, out, err = self.finish(alice, "/quit\n", LOSSY_TIMEOUT)

        self.assertEqual((status, err), (0, ""))
        prefix = "[room1] "
        seen_by_alice = [line[len(prefix):] for line in out.splitlines()
                         if line.startswith(prefix)]
        bob.wait_for("alice leaving", lambda: ("alice", LEFT_TEXT % "alice") in bob.chats(),
                     LOSSY_TIMEOUT)
        seen_by_bob = ["%s: %s" % chat for chat in bob.chats()]
        # Alice saw the room exactly as the server ordered it, from her arrival to her leaving,
        # each message once (the 10 000-character one whole), and so did bob.
        self.assertEqual(seen_by_alice, seen_by_bob[1:])
        self.assertEqual([t for n, t in bob.chats() if n == "alice"][1:-1], from_alice)
        self.assertEqual([t for n, t in bob.chats() if n == "bob"][1:], from_bob)
        self.assertIn("alice: " + big, seen_by_alice)
        self.assertEqual(out.splitlines()[-1], "* disconnected")


class FullScreenOverUdpTest(UdpClientTestCase):

    def test_join_a_message_arrives_and_quit(self) -> None:
        alice = PtyClient(self, self.port, "alice", args=("--udp",))
        alice.wait_for_row(r" connected \| alice @ %s:%d \(UDP\) \| no room: /join ROOM"
                           % (re.escape(HOST), self.port))
        alice.wait_for_input("> ")
        alice.type("/join room1\r")
        alice.wait_for_row(STAMP + re.escape("[room1] alice: alice has joined this chatroom."))
        self.bob.say("hi alice over udp")
        alice.wait_for_row(STAMP + re.escape("[room1] bob: hi alice over udp"))
        alice.type("/quit\r")
        status, after = alice.wait_for_exit()
        self.assertEqual(status, 0)
        self.assertIn("* disconnected", after)
        self.bob.wait_for("alice leaving", lambda: ("alice", LEFT_TEXT % "alice")
                          in self.bob.chats())


class UdpFailureTest(unittest.TestCase):

    def test_no_udp_server_there_exits_1_at_once(self) -> None:
        server = kit.ServerProcess("--no-udp", env=CHILD_ENV)
        self.addCleanup(server.stop)
        proc = subprocess.Popen(CLIENT + [HOST, str(server.port), "--name", "a", "--udp"],
                                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=CHILD_ENV)
        self.addCleanup(end_process, proc)
        out, err = proc.communicate(timeout=TIMEOUT)     # not the 30 s handshake timeout
        self.assertEqual(proc.returncode, 1)
        self.assertIn("cannot connect to %s:%d over UDP: " % (HOST, server.port), err.decode())
        self.assertIn("refused", err.decode())

    def test_a_server_that_stops_answering_is_gone_after_the_idle_timeout(self) -> None:
        server = kit.ServerProcess()
        self.addCleanup(server.stop)
        skew = [0.0]                    # this test's clock runs ahead of the real one
        link = chat_client.open_udp(HOST, server.port, clock=lambda: time.monotonic() + skew[0])
        self.addCleanup(link.close)
        stdin_r, stdin_w = os.pipe()
        self.addCleanup(os.close, stdin_r)
        self.addCleanup(os.close, stdin_w)
        out, err = io.StringIO(), io.StringIO()
        terminal = chat_client.Terminal(ChatClient("a", callback=link.callback), link, stdin_r,
                                        out, err, interactive=False)
        server.proc.kill()              # SIGKILL, by its pid: no RESET, nothing ever again
        server.proc.wait(TIMEOUT)
        # What it sent before (the ACK of our first PING) is in the socket already (loopback
        # delivers at once): take it now, so that it is not heard after the clock jumps.
        link.read(link.sock)
        skew[0] = udp_stream.IDLE_TIMEOUT + 1.0
        self.assertEqual(terminal.run(), 1)
        self.assertEqual(err.getvalue(), "the server stopped answering: nothing heard from it "
                                         "over UDP for %g s\n" % udp_stream.IDLE_TIMEOUT)

    def test_bind_and_callback_need_udp_and_an_ip_address(self) -> None:
        for args, problem in ((["--bind", "127.0.0.1:0"], "--bind and --callback are for --udp"),
                              (["--udp", "--callback", "localhost:9"], "is not an IP address"),
                              (["--udp", "--bind", "127.0.0.1"], "expected IP:PORT")):
            proc = subprocess.run(CLIENT + [HOST, "1", "--name", "a"] + args, cwd=REPO_ROOT,
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=TIMEOUT, env=CHILD_ENV)
            self.assertEqual(proc.returncode, 2)
            self.assertIn(problem, proc.stderr.decode())


class CallbackInRequestsTest(unittest.TestCase):

    def test_join_and_disconnect_name_the_callback(self) -> None:
        client = ChatClient("a", callback=("127.0.0.1", 5000))
        self.assertEqual(client.line_typed("/join r"),
                         [Send(join_request("r", "a", "127.0.0.1", 5000))])
        quitter = ChatClient("a", callback=("127.0.0.1", 5000))
        self.assertEqual(quitter.line_typed("/quit"),
                         [Send(disconnect_request("a", "127.0.0.1", 5000))])

    def test_options_are_parsed_as_addresses(self) -> None:
        args = chat_client.parse_args(["h", "1", "--name", "a", "--udp", "--bind",
                                       "127.0.0.1:7", "--callback", "0:0"])
        self.assertEqual((args.bind, args.callback), (("127.0.0.1", 7), ("0", 0)))
        self.assertEqual(chat_client.udp_address("[::1]:9"), ("::1", 9))


if __name__ == "__main__":
    unittest.main()
