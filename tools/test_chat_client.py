"""Tests of tools/chat_client.py.

Most are end to end: the real server (Server.py) runs as a subprocess on an ephemeral port of
127.0.0.1, the client runs as a subprocess driven through its standard input, and a raw-socket
client ("bob") sees exactly the bytes the server sends. Two tests use a stub server in a thread
to make the server fail (ERROR_CODE, an unexpected close). A few test the client's sans-IO core
in memory.

Synchronisation: the client's output is read only once it has exited (communicate). When a
step must wait for the client, the test waits for what bob receives from the server instead;
no test sleeps. Every wait is bounded by TIMEOUT, and every process a test starts is ended by
its cleanup: the server by kit.ServerProcess.stop() (SIGTERM, then SIGKILL, by its pid).
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import List, Optional, Tuple

import protocol
from protocol import Framer
from tools import chat_client, kit
from tools.chat_client import ChatClient, Print, Send

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT = [sys.executable, "-m", "tools.chat_client"]      # run from REPO_ROOT
# The longest any single wait may take. A passing test waits milliseconds; this only bounds how
# long a broken one hangs.
TIMEOUT = 5.0
# The child processes' standard streams are UTF-8, whatever the locale running the tests.
CHILD_ENV = dict(os.environ, PYTHONIOENCODING="utf-8")


# -- what the server sends, written out independently of the code under test ----

def joined(room: str, port: int, ref: int, join_id: int) -> str:
    return ("JOINED_CHATROOM: %s\nSERVER_IP: 127.0.0.1\nPORT: %d\nROOM_REF: %d\nJOIN_ID: %d\n"
            % (room, port, ref, join_id))


def chat(ref: int, name: str, text: str) -> str:
    return "CHAT: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (ref, name, text)


def joined_note(ref: int, name: str) -> str:
    return chat(ref, name, "%s has joined this chatroom." % name)


def left_note(ref: int, name: str) -> str:
    return chat(ref, name, "%s has left this chatroom." % name)


# -- helpers ----------------------------------------------------------------------------------

class RawClient:
    """A client on a plain socket, to see exactly what the server sends to somebody else."""

    def __init__(self, test: unittest.TestCase, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.join_id: Optional[int] = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        test.addCleanup(self.sock.close)
        self.test = test
        self.unread = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8"))

    def expect(self, text: str) -> None:
        """Read exactly `text` next (within TIMEOUT) and fail on anything else."""
        want = text.encode("utf-8")
        deadline = time.monotonic() + TIMEOUT
        while len(self.unread) < len(want):
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = self.sock.recv(65536)        # socket.timeout when the deadline passes
            if not data:
                break
            self.unread += data
        got, self.unread = self.unread[:len(want)], self.unread[len(want):]
        self.test.assertEqual(got.decode("utf-8", "replace"), text)

    def join(self, room: str, ref: int, join_id: int) -> None:
        self.send("JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n"
                  % (room, self.name))
        self.expect(joined(room, self.port, ref, join_id) + joined_note(ref, self.name))
        self.join_id = join_id

    def say(self, ref: int, text: str) -> None:
        """Post `text` and wait for the server's copy. Every member gets a chat in the same
        tick, so when this returns the server has sent it to every member; and since bob
        reads exactly his copy next, nothing else reached bob before it."""
        self.send("CHAT: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n"
                  % (ref, self.join_id, self.name, text))
        self.expect(chat(ref, self.name, text))


class StubServer:
    """A listening socket on 127.0.0.1 that reads the first request of its one connection and
    then sends `reply` (and waits for the client to close) or, with no reply, closes."""

    def __init__(self, test: unittest.TestCase, reply: Optional[bytes]) -> None:
        self.reply = reply
        self.first_request: Optional[bytes] = None
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        test.addCleanup(self._close)

    def _serve(self) -> None:
        conn, _addr = self.listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            framer = Framer()
            frame = None
            while frame is None:
                data = conn.recv(4096)
                if not data:
                    return
                framer.receive_data(data)
                frame = framer.maybe_next_frame()
            self.first_request = frame
            if self.reply is not None:
                conn.sendall(self.reply)
                while conn.recv(4096):          # until the client closes its end
                    pass

    def _close(self) -> None:
        self.thread.join(TIMEOUT)
        self.listener.close()


def end_process(proc: subprocess.Popen) -> None:
    """Kill `proc` by its pid if it is still running; reap it; close its pipes."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(TIMEOUT)
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:                 # stdin: unsent input to a dead process
                    pass


class ClientTestCase(unittest.TestCase):

    def start_client(self, port: int, name: str = "alice", stdin=subprocess.PIPE,
                     args: Tuple[str, ...] = ()) -> subprocess.Popen:
        proc = subprocess.Popen(
            CLIENT + ["127.0.0.1", str(port), "--name", name, *args],
            cwd=REPO_ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=CHILD_ENV)
        self.addCleanup(end_process, proc)
        return proc

    def finish(self, proc: subprocess.Popen, script: str = "") -> Tuple[int, str, str]:
        """Write `script` to the client, end its input, wait for it to exit."""
        out, err = proc.communicate(script.encode("utf-8") if proc.stdin else None,
                                    timeout=TIMEOUT)
        return proc.returncode, out.decode("utf-8"), err.decode("utf-8")

    def assert_lines_in_order(self, text: str, expected: List[str]) -> None:
        lines = text.splitlines()
        at = 0
        for want in expected:
            try:
                at = lines.index(want, at) + 1
            except ValueError:
                self.fail("line %r not found (in this order) in:\n%s" % (want, text))


# -- against the real server ------------------------------------------------------------------

class ChatClientWithServerTest(ClientTestCase):

    def setUp(self) -> None:
        self.server = kit.ServerProcess(env=CHILD_ENV)
        self.addCleanup(self.server.stop)
        self.port = self.server.port
        self.bob = RawClient(self, self.port, "bob")

    def test_join_chat_both_ways_rooms_leave_and_quit(self) -> None:
        bob = self.bob
        bob.join("room1", ref=0, join_id=1)
        alice = self.start_client(self.port)
        alice.stdin.write(b"/join room1\n")
        alice.stdin.flush()
        bob.expect(joined_note(0, "alice"))
        alice.stdin.write(b"hello bob\n")
        alice.stdin.flush()
        bob.expect(chat(0, "alice", "hello bob"))
        bob.say(0, "hi alice")
        alice.stdin.write(b"/rooms\n/leave room1\n")
        alice.stdin.flush()
        bob.expect(left_note(0, "alice"))
        bob.say(0, "alice will not see this")

        status, out, err = self.finish(alice, "/quit\n")

        self.assertEqual((status, err), (0, ""))
        server_order = [
            "* joined [room1]: ROOM_REF 0, JOIN_ID 2, server 127.0.0.1:%d" % self.port,
            "[room1] alice: alice has joined this chatroom.",
            "[room1] alice: hello bob",
            "[room1] bob: hi alice",
            "* left [room1]: ROOM_REF 0",
            "[room1] alice: alice has left this chatroom.",
            "* disconnected",
        ]
        self.assert_lines_in_order(out, server_order)
        self.assert_lines_in_order(out, [server_order[0], "* [room1] ROOM_REF 0 (plain lines go "
                                         "here)", server_order[4]])
        self.assertNotIn("alice will not see this", out)
        self.assertEqual(len(out.splitlines()), len(server_order) + 1)

    def test_end_of_input_quits_after_lines_queued_behind_joins(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        bob.join("b", ref=1, join_id=1)
        alice = self.start_client(self.port)

        # All at once, then end of input: each line must wait for the JOINED it depends on.
        status, out, err = self.finish(alice, "/join a\n/join b\nto b\n/msg a to a\n")

        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "alice") + joined_note(1, "alice")
                   + chat(1, "alice", "to b") + chat(0, "alice", "to a")
                   + left_note(0, "alice") + left_note(1, "alice"))    # DISCONNECT: ref order
        self.assert_lines_in_order(out, ["[b] alice: to b", "[a] alice: to a",
                                         "[a] alice: alice has left this chatroom.",
                                         "[b] alice: alice has left this chatroom.",
                                         "* disconnected"])

    def test_msg_picks_the_longest_room_name_and_leave_changes_the_default_room(self) -> None:
        bob = self.bob
        bob.join("my", ref=0, join_id=1)
        bob.join("my room", ref=1, join_id=1)
        alice = self.start_client(self.port)

        status, out, err = self.finish(alice, "/join my\n/join my room\n/msg my room hi\n"
                                              "/msg my roomy\n/leave my room\nplain line\n")

        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "alice") + joined_note(1, "alice")
                   + chat(1, "alice", "hi") + chat(0, "alice", "roomy")
                   + left_note(1, "alice") + chat(0, "alice", "plain line")
                   + left_note(0, "alice"))
        self.assertIn("[my room] alice: hi\n", out)

    def test_local_mistakes_are_explained_and_nothing_is_sent(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)

        status, out, err = self.finish(alice, "posting before joining\n/leave a\n/frobnicate\n"
                                              "/join\n/msg a hi\n/join a\n/leave nowhere\n"
                                              "/msg nowhere hi\n/msg a\nstill running\n")

        self.assertEqual(status, 0)
        # bob reads exactly these, in a row: none of the mistakes reached the server.
        bob.expect(joined_note(0, "alice") + chat(0, "alice", "still running")
                   + left_note(0, "alice"))
        self.assertEqual(err.splitlines(), [
            "join a room first (/join ROOM), then type to post to it",
            "/leave: you are not in [a]; /rooms lists your rooms",
            "unknown command /frobnicate; /help lists the commands",
            "/join needs a room name: /join ROOM",
            "/msg ROOM TEXT: ROOM must be a room you are in (/rooms lists them), followed by "
            "the text",
            "/leave: you are not in [nowhere]; /rooms lists your rooms",
            "/msg ROOM TEXT: ROOM must be a room you are in (/rooms lists them), followed by "
            "the text",
            "/msg ROOM TEXT: ROOM must be a room you are in (/rooms lists them), followed by "
            "the text",
        ])
        self.assertIn("[a] alice: still running\n", out)

    def test_quit_exits_zero_while_input_is_still_open(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)
        alice.stdin.write(b"/join a\n/quit\nnot after quit\n")
        alice.stdin.flush()

        self.assertEqual(alice.wait(TIMEOUT), 0)

        bob.expect(joined_note(0, "alice") + left_note(0, "alice"))
        bob.say(0, "sync")          # bob's next bytes are his own: "not after quit" never came
        status, out, err = self.finish(alice)
        self.assertEqual(err, "")
        self.assertTrue(out.endswith("[a] alice: alice has left this chatroom.\n"
                                     "* disconnected\n"), out)

    def test_script_redirected_from_a_file(self) -> None:
        # A regular file as standard input: epoll (DefaultSelector on Linux) would refuse it.
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        with tempfile.TemporaryFile() as script:
            script.write(b"/join a\nfrom a file\n")
            script.seek(0)
            alice = self.start_client(self.port, stdin=script)
            status, out, err = self.finish(alice)
        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "alice") + chat(0, "alice", "from a file")
                   + left_note(0, "alice"))

    def test_multi_line_chat_is_indented_and_control_characters_are_defused(self) -> None:
        bob = self.bob
        bob.join("a", ref=0, join_id=1)
        alice = self.start_client(self.port)
        alice.stdin.write(b"/join a\n")
        alice.stdin.flush()
        bob.expect(joined_note(0, "alice"))
        bob.say(0, "line one\nline two \x1b[31mred?\nline three")

        status, out, err = self.finish(alice)

        self.assertEqual((status, err), (0, ""))
        self.assertIn("[a] bob: line one\n"
                      "    line two \ufffd[31mred?\n"
                      "    line three\n", out)

    def test_name_and_room_with_unicode_and_spaces(self) -> None:
        bob = self.bob
        bob.join("salle café", ref=0, join_id=1)
        alice = self.start_client(self.port, name="Zoë K")
        status, out, err = self.finish(alice, "/join salle café\n/msg salle café ça va ?\n")
        self.assertEqual((status, err), (0, ""))
        bob.expect(joined_note(0, "Zoë K") + chat(0, "Zoë K", "ça va ?")
                   + left_note(0, "Zoë K"))
        self.assertIn("[salle café] Zoë K: ça va ?\n", out)


# -- against a stub server, to make the server fail -------------------------------------------

class ChatClientFailureTest(ClientTestCase):

    def test_error_code_is_printed_and_exits_1(self) -> None:
        stub = StubServer(self, reply=b"ERROR_CODE: 3\nERROR_DESCRIPTION: nope\n")
        alice = self.start_client(stub.port)
        status, out, err = self.finish(alice, "/join a\n")
        self.assertEqual((status, out, err), (1, "", "ERROR 3: nope\n"))
        self.assertEqual(stub.first_request,
                         b"JOIN_CHATROOM: a\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice")

    def test_unexpected_close_is_reported_and_exits_nonzero(self) -> None:
        stub = StubServer(self, reply=None)
        alice = self.start_client(stub.port)
        status, out, err = self.finish(alice, "/join a\n")
        self.assertNotEqual(status, 0)
        self.assertEqual(err, "the server closed the connection unexpectedly\n")

    def test_unreachable_server_exits_1(self) -> None:
        with socket.socket() as sock:           # a port that nobody listens on, once closed
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        alice = self.start_client(port)
        status, out, err = self.finish(alice)
        self.assertEqual(status, 1)
        self.assertTrue(err.startswith("cannot connect to 127.0.0.1:%d" % port), err)

    def test_help_explains_usage_commands_and_exit_status(self) -> None:
        proc = subprocess.run(CLIENT + ["--help"], cwd=REPO_ROOT,
                              capture_output=True, timeout=TIMEOUT, env=CHILD_ENV)
        self.assertEqual(proc.returncode, 0)
        text = proc.stdout.decode("utf-8")
        for words in ("host", "port", "--name", "/join ROOM", "/leave ROOM", "/rooms",
                      "/msg ROOM TEXT", "the longest wins", "/quit", "end of input",
                      "exit status", "ERROR code: description"):
            self.assertIn(words, text)


# -- the sans-IO core, in memory ----------------------------------------------------------------

class ChatClientCoreTest(unittest.TestCase):

    def test_reader_reassembles_replies_fed_a_byte_at_a_time(self) -> None:
        stream = (b"JOINED_CHATROOM: my room\r\nSERVER_IP: 10.0.0.1\nPORT: 80\nROOM_REF: 3\n"
                  b"JOIN_ID: 9\n" + chat(3, "bob", "two\nlines").encode()
                  + b"LEFT_CHATROOM: 3\nJOIN_ID: 9\nERROR_CODE: 6\nERROR_DESCRIPTION: no: really\n"
                  + b"SOMETHING_NEW\n")
        reader = protocol.ReplyReader()
        messages = []
        for i in range(len(stream)):
            reader.receive_data(stream[i:i + 1])
            message = reader.maybe_next_reply()
            while message is not None:
                messages.append(message)
                message = reader.maybe_next_reply()
        self.assertEqual(messages[:4], [
            protocol.JoinedReply("my room", "10.0.0.1", 80, 3, 9),
            protocol.ChatMessage(3, "bob", "two\nlines"),
            protocol.LeftReply(3, 9),
            protocol.ErrorReply(6, "no: really"),
        ])
        self.assertIsInstance(messages[4], protocol.Unparsed)
        self.assertEqual(messages[4].text, "SOMETHING_NEW")
        self.assertEqual(ChatClient("alice").message_received(messages[4]),
                         [Print("* the server says: SOMETHING_NEW")])

    def test_lines_typed_during_a_join_wait_for_its_reply(self) -> None:
        client = ChatClient("alice")
        self.assertEqual(client.line_typed("/join a"),
                         [Send(protocol.join_request("a", "alice"))])
        self.assertEqual(client.line_typed("hello"), [])
        self.assertFalse(client.ready_for_input())
        reply = protocol.ReplyReader()
        reply.receive_data(joined("a", 80, 7, 4).encode())
        actions = client.message_received(reply.maybe_next_reply())
        self.assertEqual(actions[1:], [Send(protocol.chat_request(7, 4, "alice", "hello"))])
        self.assertIsInstance(actions[0], Print)
        self.assertTrue(client.ready_for_input())

    def test_malformed_reply_exits_1(self) -> None:
        client = ChatClient("alice")
        reader = protocol.ReplyReader()
        reader.receive_data(b"CHAT: zero\nCLIENT_NAME: bob\nMESSAGE: hi\n\n")
        actions = client.message_received(reader.maybe_next_reply())
        self.assertEqual(actions[-1], chat_client.Exit(1))


if __name__ == "__main__":
    unittest.main()
