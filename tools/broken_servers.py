"""Small chat servers for tools/test_conformance.py: one correct, and five that each get one
thing wrong, the way students' servers commonly do.

ChatServer is the project's state machine (protocol.ChatProtocol, through the App contract of
sansio/actions.py) behind a plain selectors loop in a thread, on 127.0.0.1 and a port the kernel
picks. Each subclass changes one method, so that it differs from the contract in exactly one way:

    RepliesToUnknown     answers an unknown one-line message with ERROR_CODE
    OneRecvOneRequest    takes what one recv(4096) returns as one whole request
    LeftAfterChat        drops a leaver from its room only after the room's next chat
    DoubleAnnounce       announces a join again when another joins in the same loop turn
    StallsOnSlowReader   sends with a blocking sendall(), so one full reader stops them all

and OtherReadings, which differs from the contract only where the course's text can be read
two ways (each a WARN of the tester's).

Test code only: the server's own loop is reactor.py.
"""
import re
import selectors
import signal
import socket
import sys
import threading
from typing import Dict, List, Set

from protocol import ChatProtocol
from sansio.actions import Action, Broadcast, Close, Send, Shutdown

HOST = "127.0.0.1"
STOP_TIMEOUT = 5.0


class ChatServer(threading.Thread):
    """A correct server of the contract, in a thread: start(), then .port; stop()."""

    read_size = 64 * 1024
    turn_timeout = 0.05         # the longest select() wait: how soon stop() is seen

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.socket()
        self.listener.bind((HOST, 0))
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.app = ChatProtocol(port=self.port, student_id="00000000")
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.socks: Dict[int, socket.socket] = {}
        self.out: Dict[int, bytearray] = {}
        self.closing: Set[int] = set()
        self.next_id = 1
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for key, mask in self.selector.select(self.turn_timeout):
                if key.data is None:
                    self.accept()
                    continue
                if mask & selectors.EVENT_READ and key.data in self.socks:
                    self.on_readable(key.data)
                if mask & selectors.EVENT_WRITE and key.data in self.socks:
                    self.flush(key.data)
            self.end_of_turn()
        for conn_id in list(self.socks):
            self.socks.pop(conn_id).close()
        self.listener.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(STOP_TIMEOUT)

    def end_of_turn(self) -> None:
        pass

    def accept(self) -> None:
        try:
            sock, _addr = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_id, self.next_id = self.next_id, self.next_id + 1
        self.socks[conn_id], self.out[conn_id] = sock, bytearray()
        self.selector.register(sock, selectors.EVENT_READ, conn_id)
        self.app.connection_made(conn_id, sock.getsockname()[0])

    def on_readable(self, conn_id: int) -> None:
        try:
            data = self.socks[conn_id].recv(self.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.lose(conn_id)
        elif conn_id not in self.closing:
            self.received(conn_id, data)

    def received(self, conn_id: int, data: bytes) -> None:
        """Hand `data` to the state machine and carry out every request it completes."""
        self.app.data_received(conn_id, data)
        while conn_id in self.socks:
            actions = self.app.maybe_next_actions(conn_id)
            if actions is None:
                return
            self.carry_out(conn_id, actions)

    def carry_out(self, conn_id: int, actions: List[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.write(action.conn_id, action.data)
            elif isinstance(action, Broadcast):
                for member in action.conn_ids:
                    self.write(member, action.data)
            elif isinstance(action, Close):
                self.closing.add(action.conn_id)
                self.flush(action.conn_id)
            elif isinstance(action, Shutdown):
                self.stopping.set()

    def write(self, conn_id: int, data: bytes) -> None:
        """Send now if nothing is queued for `conn_id`; else queue it behind the rest."""
        out = self.out.get(conn_id)
        if out is not None:
            queued = bool(out)
            out += data
            if not queued:
                self.flush(conn_id)

    def flush(self, conn_id: int) -> None:
        """Send what is queued for `conn_id`; watch for writability while some is left."""
        sock, out = self.socks.get(conn_id), self.out.get(conn_id)
        if sock is None:
            return
        try:
            sent = sock.send(out) if out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.lose(conn_id)
            return
        del out[:sent]
        if not out and conn_id in self.closing:
            sock.shutdown(socket.SHUT_WR)       # all sent: our FIN follows it
            self.lose(conn_id)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
        self.selector.modify(sock, events, conn_id)

    def lose(self, conn_id: int) -> None:
        sock = self.socks.pop(conn_id, None)
        if sock is None:
            return
        self.out.pop(conn_id, None)
        self.selector.unregister(sock)
        sock.close()
        self.carry_out(conn_id, self.app.connection_lost(conn_id))


class RepliesToUnknown(ChatServer):
    """Answers a request that has no reply of its own (an unknown message) with an error."""

    def carry_out(self, conn_id: int, actions: List[Action]) -> None:
        if not actions:
            actions = [Send(conn_id, b"ERROR_CODE: 99\nERROR_DESCRIPTION: unknown command\n")]
        super().carry_out(conn_id, actions)


class OneRecvOneRequest(ChatServer):
    """`data = recv(4096)` taken as one whole request: a piece of a request is handled as if
    it ended there, and of several requests in one read only the first is answered."""

    read_size = 4096

    def received(self, conn_id: int, data: bytes) -> None:
        self.app.data_received(conn_id, data + b"\n\n")
        first = True
        while conn_id in self.socks:
            actions = self.app.maybe_next_actions(conn_id)
            if actions is None:
                return
            if first or not any(isinstance(a, (Send, Broadcast)) for a in actions):
                self.carry_out(conn_id, actions)
            first = False


class LeftAfterChat(ChatServer):
    """Removes a leaver from its room's list lazily: the room's next chat still reaches it,
    after its LEFT_CHATROOM."""

    def __init__(self) -> None:
        super().__init__()
        self.lingering: Dict[bytes, Set[int]] = {}     # b"CHAT: ref\n" -> leavers

    def carry_out(self, conn_id: int, actions: List[Action]) -> None:
        for action in actions:
            if isinstance(action, Broadcast) and not action.data.endswith(
                    b" chatroom.\n\n"):
                for leaver in self.lingering.pop(action.data.split(b"\n", 1)[0], ()):
                    if leaver not in action.conn_ids:
                        self.write(leaver, action.data)
        super().carry_out(conn_id, actions)
        for action in actions:
            if isinstance(action, Send) and action.data.startswith(b"LEFT_CHATROOM: "):
                ref = action.data.split(b"\n", 1)[0].split(b": ")[1]
                self.lingering.setdefault(b"CHAT: " + ref, set()).add(action.conn_id)
            elif isinstance(action, Send) and action.data.startswith(b"JOINED_CHATROOM: "):
                ref = action.data.split(b"ROOM_REF: ")[1].split(b"\n")[0]
                self.lingering.get(b"CHAT: " + ref, set()).discard(action.conn_id)


class DoubleAnnounce(ChatServer):
    """Works in turns of 5 ms and sends a room its join announcements of the turn so far with
    each join, but never empties that batch until the turn ends: two joins in one turn, and
    the first is announced twice."""

    turn_pause = 0.005

    def __init__(self) -> None:
        super().__init__()
        self.batch: Dict[bytes, bytes] = {}

    def carry_out(self, conn_id: int, actions: List[Action]) -> None:
        changed = []
        for action in actions:
            if isinstance(action, Broadcast) and action.data.endswith(b" has joined this "
                                                                      b"chatroom.\n\n"):
                room = action.data.split(b"\n", 1)[0]
                self.batch[room] = self.batch.get(room, b"") + action.data
                action = Broadcast(action.conn_ids, self.batch[room])
            changed.append(action)
        super().carry_out(conn_id, changed)

    def end_of_turn(self) -> None:
        self.batch.clear()
        self.stopping.wait(self.turn_pause)


class StallsOnSlowReader(ChatServer):
    """Sends with a blocking sendall(): a member that stops reading stops the whole server
    once the kernel's buffers towards it are full (until it goes, or SEND_TIMEOUT)."""

    send_timeout = 10.0

    def write(self, conn_id: int, data: bytes) -> None:
        sock = self.socks.get(conn_id)
        if sock is None:
            return
        sock.settimeout(self.send_timeout)
        try:
            sock.sendall(data)
        except OSError:
            self.lose(conn_id)
        finally:
            if conn_id in self.socks:
                sock.setblocking(False)


class OtherReadings(ChatServer):
    """Correct by the course's text, but reading its four open points otherwise than
    docs/PROTOCOL.md settles them: HELO's text with its white space normalised, LEFT_CHATROOM
    echoing the JOIN_ID the LEAVE quoted, a repeated LEAVE announced again (to the leaver), and
    a chat relayed under the CLIENT_NAME its request carries. (It reads its requests back out
    of each recv() with regular expressions: enough for the tester, which sends one request
    per segment in those cases.)"""

    def __init__(self) -> None:
        super().__init__()
        self.names: Dict[int, bytes] = {}           # the name each connection joined with
        self.quoted: Dict[int, Dict[bytes, bytes]] = {}

    def received(self, conn_id: int, data: bytes) -> None:
        data = re.sub(rb"(?m)^HELO[ \t]+([^\n]*)$",
                      lambda m: b"HELO " + b" ".join(m.group(1).split()), data)
        leave = re.search(rb"LEAVE_CHATROOM:[^\n]*\nJOIN_ID: *(\d+)", data)
        chat = re.search(rb"\nJOIN_ID:[^\n]*\nCLIENT_NAME: *([^\r\n]*?)[ \t\r]*\nMESSAGE:", data)
        self.quoted[conn_id] = {b"JOIN_ID": leave.group(1) if leave else b"",
                                b"CLIENT_NAME": chat.group(1) if chat else b""}
        super().received(conn_id, data)

    def carry_out(self, conn_id: int, actions: List[Action]) -> None:
        quoted = self.quoted.get(conn_id, {})
        changed = []
        for action in actions:
            data = getattr(action, "data", b"")
            if isinstance(action, Broadcast) and data.endswith(b" has joined this chatroom.\n\n"):
                self.names[conn_id] = data.split(b"\n")[1][len(b"CLIENT_NAME: "):]
            elif data.startswith(b"LEFT_CHATROOM: ") and quoted.get(b"JOIN_ID"):
                ref = data.split(b"\n")[0][len(b"LEFT_CHATROOM: "):]
                action = Send(action.conn_id, b"LEFT_CHATROOM: %s\nJOIN_ID: %s\n" % (
                    ref, quoted[b"JOIN_ID"]))
                if len(actions) == 1:               # a repeated LEAVE: announced again
                    name = self.names.get(conn_id, b"")
                    changed.append(action)
                    action = Send(conn_id, b"CHAT: %s\nCLIENT_NAME: %s\nMESSAGE: %s has left "
                                           b"this chatroom.\n\n" % (ref, name, name))
            elif isinstance(action, Broadcast) and quoted.get(b"CLIENT_NAME") and \
                    not data.endswith(b" chatroom.\n\n"):
                lines = data.split(b"\n")
                lines[1] = b"CLIENT_NAME: " + quoted[b"CLIENT_NAME"]
                action = Broadcast(action.conn_ids, b"\n".join(lines))
            changed.append(action)
        super().carry_out(conn_id, changed)


SERVERS = {cls.__name__: cls for cls in (ChatServer, RepliesToUnknown, OneRecvOneRequest,
                                         LeftAfterChat, DoubleAnnounce, StallsOnSlowReader,
                                         OtherReadings)}


def main(argv: List[str]) -> int:
    """`python3 -m tools.broken_servers NAME`: serve until SIGTERM or SIGINT, after printing
    "listening on 127.0.0.1:PORT" (a child process of its own: a server in the tests' own
    process would share its interpreter lock with the tester, and run many times slower)."""
    if len(argv) != 1 or argv[0] not in SERVERS:
        sys.stderr.write("usage: python3 -m tools.broken_servers {%s}\n" % ",".join(SERVERS))
        return 2
    server = SERVERS[argv[0]]()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _s, _f: server.stopping.set())
    print("listening on %s:%d" % (HOST, server.port), flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
