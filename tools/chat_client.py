#!/usr/bin/env python3
"""A terminal client for the chat server: the reference for speaking the protocol from a client.

    python3 -m tools.chat_client HOST PORT --name NAME       (from the repository's top folder)
    python3 -m tools.chat_client HOST PORT --name NAME --udp [--bind IP:PORT] [--callback IP:PORT]

It reads commands, one per line (COMMANDS below, or --help), and shows everything the server
sends as it arrives, one readable line per message:

    * joined [room1]: ROOM_REF 0, JOIN_ID 1, server 127.0.0.1:8080
    [room1] alice: alice has joined this chatroom.
    [room1] bob: hello
        a second line of bob's message is indented

Lines starting "* " are the client's own notes (replies to commands); lines starting "[ROOM]"
are chat. Join and leave announcements are ordinary chat messages from the server, shown as
such. The client's complaints about mistakes go to standard error.

Two modes, one client:
- At a terminal (standard input and output both a terminal), a full-screen interface, as irssi
  and WeeChat have: the chat scrolls above, a status line shows the room plain lines go to,
  your rooms and the connection's state, and an input line at the bottom is never disturbed
  by arriving messages. It has readline's editing keys and history, PgUp/PgDn scrollback, Tab
  to change rooms and /help for the keys (tools/screen.py: KEYS_HELP). --plain keeps the line
  mode at a terminal.
- Piped (a script, a file, another program), the line mode: a line of standard input is a
  command, every message a line of standard output; this is what scripts and tests use.
Text from other people is shown safely in both: control and format characters (escape
sequences, bidi overrides, zero-width characters) and line or paragraph separators are shown
as U+FFFD and never reach the terminal.

Exit status: 0 after /quit or end of input, once the server has closed the connection; 1 when
the server answers ERROR_CODE (printed as "ERROR code: description" on standard error, as the
protocol asks: "a client should print the error to the console and terminate"), when it closes
the connection unexpectedly, when it cannot be reached, or when it sends something malformed;
over UDP also when it stops answering (sansio.udp_stream.IDLE_TIMEOUT, 45 s, with nothing heard).
Two ERROR_CODEs are printed and the session goes on (TEMPORARY_ERRORS): 13, rooms created too
fast, and 15, the servers' shared Redis out of reach; both refuse one request for a while, not
the session. A chat message too long for one request (ERROR_CODE 8, after which the server
closes the connection) is refused here, before it is sent, and the session goes on.

Two transports, one client. By default a TCP connection. With --udp, a session of the server's UDP
transport (docs/UDP.md: handshake, reliable ordered stream, callback validation, liveness, graceful
close), run by sansio.udp_client.ClientEndpoint; the stream carries exactly the bytes a TCP
connection would. The JOINs' CLIENT_IP and PORT name --callback, the session socket's own address
by default. A callback that is another address gets a second socket, from which the KNOCKs that
validate it go out: bound to the callback when that is this host's and free, otherwise connected to
it (a relay such as tools/relay.py, passing what it gets on to the server). DISCONNECT is answered
by the server's CLOSE, which ends the session gracefully.

Theory of operation (the server's design, in miniature; see protocol.py and reactor.py):

    server bytes --ReplyReader--> reply --ChatClient.message_received--> actions
    stdin lines  ------------------------------------ChatClient.line_typed-------> actions
    actions (Send, Print, PrintError, Exit) --Terminal--> link, stdout, stderr, exit status
    link: TcpLink (a socket) or UdpLink (sansio.udp_client.ClientEndpoint on one or two UDP sockets)

    full screen: keys --screen.Screen.key--> edits, Submit(line) --ChatClient.line_typed--> ...
                 Print, PrintError --> screen.Screen.add; each turn: Screen.render --> curses

ChatClient is the whole client state as a function of data and does no I/O, so every decision
it makes can be tested in memory. Terminal does the I/O: one `selectors` loop over the link's
sockets and standard input, so that output is never written from two places at once. FullScreen is
that Terminal with keys for input and a screen.Screen for output, drawn with curses; the
screen's model (editor, history, scrollback, layout) is as free of I/O as ChatClient.

Simplifications, stated as smallchat states its own:
- Each input line is one command, so this client only ever sends one-line chat messages (it
  shows other clients' multi-line ones). To post a line that starts with "/", use /msg.
  Pasting several lines into the full-screen mode sends them as several messages.
- A command that needs the answer to a JOIN or LEAVE (a ROOM_REF, the JOIN_ID) cannot be sent
  before that answer arrives, so every line typed while a JOIN or LEAVE is unanswered waits in a
  queue. "/join a" followed at once by "hello" posts hello to a. Only one JOIN or LEAVE is ever
  outstanding, so a reply always answers the request we are waiting for.
- Standard input must be selectable: Linux and macOS, not Windows.
- Writes to standard output block. A terminal or a pipe that is read is never stalled for long.
"""
import argparse
import collections
import ipaddress
import os
import selectors
import signal
import socket
import sys
if not __package__:   # run as a script (python3 tools/X.py) from any folder: find the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, TextIO, Tuple, Union

try:
    import curses                       # the full-screen mode; without it, the line mode
except ImportError:                     # (a Python built without _curses)
    curses = None                       # type: ignore

from sansio import udp_client, udp_stream, udp_wire
from sansio.replies import (ChatMessage, ErrorReply, JoinedReply, LeftReply, Reply, ReplyReader,
                            Unparsed)
from sansio.wire import (MAX_NAME_CHARS, MAX_REQUEST_BYTES, REPLY_SHAPES, ErrorCode, chat_request,
                         disconnect_request, join_request, leave_request, request_keyword)
from tools import screen
from tools.screen import name_problem, sanitize

# --- limits and settings ------------------------------------------------------------------------
# The longest message from the server we buffer. The server relays a CHAT with the text of one
# request and the CLIENT_NAME given in another (the JOIN), each at most its MAX_REQUEST_BYTES,
# so twice that plus room for the field names covers every message an honest server sends.
MAX_SERVER_MESSAGE = 2 * MAX_REQUEST_BYTES + 1024
# Bytes asked of recv() and of os.read() at once.
READ_SIZE = 64 * 1024
# Seconds to wait for the TCP connection to be set up.
CONNECT_TIMEOUT = 10.0
# Seconds to wait, after DISCONNECT, for the server to close the connection. It closes as soon
# as it has sent our leave announcements, so this only ends the wait for a server that is stuck.
DISCONNECT_TIMEOUT = 5.0
# The ERROR_CODEs that refuse one request for a reason that passes, not because this session is
# wrong: the client prints them and goes on (every other one ends it, as the protocol asks). 13:
# rooms created too fast, "wait"; 15: the servers' shared Redis is out of reach, "try again in a
# few seconds" (docs/PROTOCOL.md, section 4).
TEMPORARY_ERRORS = frozenset({ErrorCode.CREATING_ROOMS_TOO_FAST, ErrorCode.BUS_UNAVAILABLE})
# Continuation lines of a multi-line chat message are indented by this much.
CONTINUATION_INDENT = "    "
# Shown when standard input and output are a terminal and the client is ready for a command.
PROMPT = "> "
# ANSI: carriage return, then erase the line. Takes the prompt off the screen before a message.
ERASE_LINE = "\r\x1b[K"

COMMANDS = """\
commands, one per line:
  /join ROOM      join ROOM (a name may hold spaces)
  /leave ROOM     leave ROOM
  /rooms          list your rooms and their ROOM_REFs
  /msg ROOM TEXT  post TEXT to ROOM, one of your
                  rooms; when the names of several
                  of your rooms start the line,
                  the longest wins: in rooms "my"
                  and "my room", "/msg my room hi"
                  posts "hi" to "my room"
  /room ROOM      plain lines go to ROOM, one of your
                  rooms, from now on
  TEXT            a line without a leading "/" posts
                  TEXT to the current room: the room
                  joined last, or the one chosen with
                  /room
  /help           show this list
  /quit           leave every room, disconnect and
                  exit; end of input does the same"""


# Requests are protocol's builders (join_request, leave_request, chat_request,
# disconnect_request; "0 for TCP" where the text says so) and replies are read with its
# ReplyReader, so nothing here writes or parses the wire.


def is_known_kind(unparsed: Unparsed) -> bool:
    """Does this unreadable reply start like one of the protocol's replies (it is then
    malformed), rather than with a line no reply has (something new the server says)?"""
    first = unparsed.text.partition("\n")[0].encode("utf-8", "replace")
    return request_keyword(first) in REPLY_SHAPES or first.startswith(b"HELO")


# ---------------------------------------------------------------------------------------------
# Actions: what ChatClient asks Terminal to do (imperative names, as the server's actions)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    data: bytes         # a request for the server


@dataclass(frozen=True)
class Print:
    text: str           # for standard output (may span lines)


@dataclass(frozen=True)
class PrintError:
    text: str           # for standard error


@dataclass(frozen=True)
class Exit:
    status: int         # stop here: close the connection, exit with this status


Action = Union[Send, Print, PrintError, Exit]


def printable(text: str) -> str:
    """`text` safe for a terminal: chat text, names and room names come from other people, and
    an escape sequence among them must not drive our terminal (recolour it, move the cursor,
    retitle the window), nor a bidi override reorder what we read, so every control and format
    character and line or paragraph separator but newline and tab is shown as U+FFFD
    (screen.sanitize, the same in both modes)."""
    return sanitize(text, keep="\n\t")


def format_chat(room: str, name: str, message: str) -> str:
    """`[room] name: text`, with the lines after the first indented by CONTINUATION_INDENT."""
    first, *rest = printable(message).split("\n")
    lines = ["[%s] %s: %s" % (printable(room), printable(name), first)]
    return "\n".join(lines + [CONTINUATION_INDENT + line for line in rest])


# ---------------------------------------------------------------------------------------------
# The client: lines typed and messages received -> actions
# ---------------------------------------------------------------------------------------------

class ChatClient:
    """Everything the client knows, and every decision it makes; no I/O.

    Terminal calls line_typed() for each line of standard input, input_ended() at its end,
    message_received() for each message from the server and connection_lost() when the server
    closes; each returns the actions to carry out, in order.
    """

    def __init__(self, name: str, help_text: str = COMMANDS,
                 callback: Tuple[str, int] = ("0", 0)) -> None:
        self.name = name
        self.help_text = help_text            # what /help shows
        self.callback = callback              # JOIN's and DISCONNECT's CLIENT_IP and PORT:
                                              # "0 for TCP"; over UDP, where the server sends
                                              # the session's stream (docs/UDP.md, section 6)
        self.join_id: Optional[int] = None    # the server assigns it at our first JOIN
        self.rooms: Dict[str, int] = {}       # rooms we are in, name -> ROOM_REF, in the order
                                              # joined
        self.current: Optional[str] = None    # where plain lines go: the room joined last, or
                                              # the one chosen with /room (or Tab)
        self.room_names: Dict[int, str] = {}  # ROOM_REF -> name, for every room ever joined.
                                              # Kept after a leave: our own leave announcement
                                              # arrives after LEFT_CHATROOM (refs never change)
        self.awaiting: Optional[str] = None   # the reply an unanswered JOIN or LEAVE waits for
        self.quitting = False                 # DISCONNECT is sent: wait for the server to close
        self._queue: Deque[str] = collections.deque()   # lines not yet acted on
        self._commands = {"/join": self._join, "/leave": self._leave, "/rooms": self._list_rooms,
                          "/msg": self._msg, "/room": self._room, "/help": self._help,
                          "/quit": self._quit}
        self._handlers = {ChatMessage: self._on_chat, JoinedReply: self._on_joined,
                          LeftReply: self._on_left, ErrorReply: self._on_error}

    # -- driven by Terminal --------------------------------------------------------------------

    def line_typed(self, line: str) -> List[Action]:
        """One line of standard input, without its newline. It waits its turn in the queue."""
        self._queue.append(line)
        return self._run_queue()

    def input_ended(self) -> List[Action]:
        """Standard input has ended: the same as /quit (after any lines still queued)."""
        return self.line_typed("/quit")

    def ready_for_input(self) -> bool:
        """True when a line typed now would be acted on at once (Terminal shows its prompt)."""
        return not self._queue and self.awaiting is None and not self.quitting

    def message_received(self, message: Reply) -> List[Action]:
        """One reply from the server, as ReplyReader read it."""
        if isinstance(message, Unparsed) and is_known_kind(message):
            # a field missing, a ref that is not an integer
            return [PrintError("the server sent a malformed message: %r" % message.text),
                    Exit(1)]
        return self._handlers.get(type(message), self._on_other)(message)

    def cycle_room(self, step: int) -> None:
        """Plain lines go to the room `step` places after the current one, in the order joined
        (Tab in the full-screen mode)."""
        if self.rooms:
            names = list(self.rooms)
            at = names.index(self.current) if self.current in names else 0
            self.current = names[(at + step) % len(names)]

    def connection_lost(self) -> List[Action]:
        if self.quitting:
            return [Print("* disconnected"), Exit(0)]
        return [PrintError("the server closed the connection unexpectedly"), Exit(1)]

    # -- commands ------------------------------------------------------------------------------

    def _run_queue(self) -> List[Action]:
        """Act on queued lines until one must wait for a reply (or we are leaving). Lines left
        after /quit are never acted on."""
        actions: List[Action] = []
        while self._queue and self.awaiting is None and not self.quitting:
            actions += self._command(self._queue.popleft())
        return actions

    def _command(self, line: str) -> List[Action]:
        line = line.strip()
        if not line:
            return []                                 # a blank line says nothing
        if not line.startswith("/"):
            return self._post(self.current, line)
        word, *rest = line.split(None, 1)
        command = self._commands.get(word)
        if command is None:
            return [PrintError("unknown command %s; /help lists the commands" % word)]
        return command(rest[0] if rest else "")

    def _join(self, room: str) -> List[Action]:
        if not room:
            return [PrintError("/join needs a room name: /join ROOM")]
        self.awaiting = "JOINED_CHATROOM"
        return [Send(join_request(room, self.name, *self.callback))]

    def _leave(self, room: str) -> List[Action]:
        ref = self.rooms.get(room)
        if ref is None:
            return [PrintError("/leave: you are not in [%s]; /rooms lists your rooms" % room)]
        self.awaiting = "LEFT_CHATROOM"
        return [Send(leave_request(ref, self.join_id, self.name))]

    def _list_rooms(self, _arg: str) -> List[Action]:
        if not self.rooms:
            return [Print("* you are in no room; /join ROOM")]
        return [Print("* [%s] ROOM_REF %d%s" % (printable(name), ref, " (plain lines go here)"
                                               if name == self.current else ""))
                for name, ref in self.rooms.items()]

    def _room(self, room: str) -> List[Action]:
        if room not in self.rooms:
            return [PrintError("/room: you are not in [%s]; /rooms lists your rooms"
                               % printable(room))]
        self.current = room
        return [Print("* plain lines go to [%s]" % printable(room))]

    def _msg(self, arg: str) -> List[Action]:
        # The longest of our room names that starts the argument, followed by white space.
        rooms = [name for name in self.rooms
                 if arg.startswith(name) and arg[len(name):len(name) + 1].isspace()]
        if not rooms:
            return [PrintError("/msg ROOM TEXT: ROOM must be a room you are in (/rooms lists "
                               "them), followed by the text")]
        room = max(rooms, key=len)
        return self._post(room, arg[len(room):].strip())

    def _post(self, room: Optional[str], text: str) -> List[Action]:
        if room is None:
            return [PrintError("join a room first (/join ROOM), then type to post to it")]
        request = chat_request(self.rooms[room], self.join_id, self.name, text)
        if len(request) > MAX_REQUEST_BYTES:
            # The server would answer ERROR_CODE 8 and close the connection: refuse it here.
            room_for_text = MAX_REQUEST_BYTES - (len(request) - len(text.encode("utf-8")))
            return [PrintError("not sent: the message is %d bytes of UTF-8, and a request may "
                               "be at most %d bytes (%d of them for your text here)"
                               % (len(text.encode("utf-8")), MAX_REQUEST_BYTES, room_for_text))]
        return [Send(request)]

    def _help(self, _arg: str) -> List[Action]:
        return [Print(self.help_text)]

    def _quit(self, _arg: str) -> List[Action]:
        self.quitting = True
        return [Send(disconnect_request(self.name, *self.callback))]

    # -- messages from the server --------------------------------------------------------------

    def _on_chat(self, message: ChatMessage) -> List[Action]:
        room = self.room_names.get(message.ref, "ROOM_REF %d" % message.ref)
        return [Print(format_chat(room, message.client_name, message.message))]

    def _on_joined(self, message: JoinedReply) -> List[Action]:
        room, ref = message.room, message.ref
        self.join_id = message.join_id
        self.rooms.pop(room, None)            # joined again: it becomes the room joined last
        self.rooms[room] = ref
        self.room_names[ref] = room
        self.current = room
        note = Print("* joined [%s]: ROOM_REF %d, JOIN_ID %d, server %s:%d"
                     % (printable(room), ref, self.join_id, printable(message.server_ip),
                        message.port))
        return [note] + self._reply_arrived("JOINED_CHATROOM")

    def _on_left(self, message: LeftReply) -> List[Action]:
        ref = message.ref
        self.rooms = {name: r for name, r in self.rooms.items() if r != ref}
        if self.current not in self.rooms:    # back to the room joined last, if any
            self.current = list(self.rooms)[-1] if self.rooms else None
        note = Print("* left [%s]: ROOM_REF %d"
                     % (printable(self.room_names.get(ref, "?")), ref))
        return [note] + self._reply_arrived("LEFT_CHATROOM")

    def _on_error(self, message: ErrorReply) -> List[Action]:
        """Print the error; end the session unless it is one of TEMPORARY_ERRORS.

        Simplification: a temporary error while a JOIN is unanswered is taken as that JOIN's
        answer (a JOIN is the request it refuses most), so the lines waiting behind the JOIN go
        on. Were it a CHAT sent before the JOIN, the JOIN's own reply still arrives and is
        shown; only the lines behind it would have gone to the room joined before."""
        report = PrintError("ERROR %d: %s" % (message.code, printable(message.description)))
        if message.code not in TEMPORARY_ERRORS:
            return [report, Exit(1)]
        return [report] + self._reply_arrived("JOINED_CHATROOM")

    def _on_other(self, message: Reply) -> List[Action]:
        """A reply this client does not act on (a HELO reply, or a line no reply has)."""
        text = message.text if isinstance(message, Unparsed) else repr(message)
        return [Print("* the server says: %s" % printable(text))]

    def _reply_arrived(self, kind: str) -> List[Action]:
        if self.awaiting == kind:
            self.awaiting = None
        return self._run_queue()


# ---------------------------------------------------------------------------------------------
# The links to the server: a TCP connection, or a UDP session (docs/UDP.md)
# ---------------------------------------------------------------------------------------------

# What a link tells Terminal: stream bytes from the server, in order (`received`), and once,
# that the server is gone (`ended`): None when the server closed the connection (ChatClient
# then decides whether that was expected), or the text of a failure (the client exits 1).
Received = Callable[[bytes], None]
Ended = Callable[[Optional[str]], None]


class TcpLink:
    """The server over TCP: a connected, nonblocking socket and an output buffer.

    Writes are nonblocking, into `out`, sent by flush() at the end of each turn of the loop
    (reactor.py's write path), not sendall(). A blocking send would stop the loop, and the
    server stops reading from a client that does not read its output (its HIGH_WATER): a client
    stuck in sendall() while a busy room fills its socket would wait for the server, which waits
    for it. The buffer costs a few lines and cannot deadlock.
    """

    disconnect_timeout = DISCONNECT_TIMEOUT

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock                     # connected and nonblocking
        self.out = bytearray()               # requests not yet taken by the kernel
        self.selector: Optional[selectors.BaseSelector] = None
        self.received: Received = lambda data: None
        self.ended: Ended = lambda failure: None

    def start(self, selector: selectors.BaseSelector, received: Received, ended: Ended) -> None:
        self.selector, self.received, self.ended = selector, received, ended
        selector.register(self.sock, selectors.EVENT_READ, self.on_readable)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return                            # not ready after all
        except OSError as exc:                # ECONNRESET and friends: the server is gone
            self.ended("connection to the server failed: %s" % exc)
            return
        if data:
            self.received(data)
        else:
            self.ended(None)

    def send(self, data: bytes) -> None:
        self.out += data                      # sent by flush() at the end of this turn

    def timeout(self) -> Optional[float]:
        return None                           # TCP's timers are the kernel's

    def on_time(self) -> None:
        pass

    def flush(self) -> None:
        """Send what the kernel takes now; watch for writability only while some is left."""
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:                   # EPIPE, ECONNRESET: recv() will report it
                sent = len(self.out)
            del self.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        if self.selector is not None and self.selector.get_key(self.sock).events != events:
            self.selector.modify(self.sock, events)

    def close(self) -> None:
        self.sock.close()


# Why a UDP session ended (sansio.udp_stream's SessionClosed reasons), as the client says it. A
# reason missing here is shown as it is. "closed by peer" (the server's CLOSE, after DISCONNECT)
# and "reset by peer" (its RESET: it stopped, or we broke a limit) are the server closing the
# connection, as a TCP close: ChatClient.connection_lost decides.
UDP_END_MESSAGES = {
    "peer timed out": "the server stopped answering: nothing heard from it over UDP for %g s"
                      % udp_stream.IDLE_TIMEOUT,
    "handshake timed out": "no answer to the UDP handshake within %g s"
                           % udp_client.HANDSHAKE_TIMEOUT,
    "refused by server": "the server refused a new UDP session (it has too many)",
    "send buffer over cap": "more than %d bytes of requests unacknowledged by the server"
                            % udp_stream.SEND_BUFFER_CAP,
}
UDP_CLOSES = frozenset(("closed by peer", "reset by peer"))
# Requests handed to the UDP session at most, not yet acknowledged; the rest wait in the link's
# own buffer (as a TCP socket's kernel buffer and TcpLink.out). Far below
# udp_stream.SEND_BUFFER_CAP, past which the session would be reset: a script pasting faster than
# the server takes it (its flood control slows us) waits instead. 256 KiB is still 3.5 full send
# windows.
UDP_SENDING_BYTES = 256 * 1024
# Datagrams read from one socket in one turn, so that a flood cannot starve standard input.
UDP_READS_PER_TURN = 256
# Rounds of one flush: events, the datagrams they and the timers made, the events that sending
# made (a flush can end the session), and what those made in turn.
UDP_FLUSH_ROUNDS = 4
# Seconds to wait, after DISCONNECT, for the server to close the session. The server ends a
# close with RESET if it is not confirmed within 30 s (docs/UDP.md, "Limits": Closing); over
# a lossy path the leave announcements and the CLOSE take retransmissions, so TCP's 5 s would
# give up on a close that is still on its way.
UDP_DISCONNECT_TIMEOUT = 35.0


class UdpLink:
    """The server over UDP: a sansio.udp_client.ClientEndpoint (the whole transport, sans-IO)
    on sockets.

    `sock` is the session socket, connected to `server` (the server, or a relay in front of it:
    the kernel then drops datagrams from anyone else). `callback_sock`, when the JOIN names an
    address other than `sock`'s, is the socket at that callback: bound to it when it is ours,
    or connected to it when it is somebody else's (a relay or forwarder passing what it gets
    on to the server, tools/relay.py). It sends the KNOCKs (docs/UDP.md, section 6), and
    whatever arrives on it is the server's. Times come from `clock` (tests pass their own).
    """

    disconnect_timeout = UDP_DISCONNECT_TIMEOUT

    def __init__(self, server: Tuple, sock: socket.socket, callback: Tuple[str, int],
                 callback_sock: Optional[socket.socket] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.sock = sock
        self.callback = callback             # what JOIN names: ChatClient's callback
        self.callback_sock = callback_sock
        self.clock = clock
        self.endpoint = udp_client.ClientEndpoint(server, clock())
        self.out = bytearray()               # requests not yet handed to the endpoint
        # taken by the handshake, not yet acted on
        self.events: List[udp_stream.SessionEvent] = []
        self.failure: Optional[str] = None   # an ICMP error during the handshake
        self.received: Received = lambda data: None
        self.ended: Ended = lambda failure: None

    def sockets(self) -> List[socket.socket]:
        return [self.sock] + ([self.callback_sock] if self.callback_sock else [])

    def wait_open(self) -> Optional[str]:
        """Run the handshake (docs/UDP.md, section 4) until the session is open: None, or why
        it could not be (the endpoint gives up after udp_client.HANDSHAKE_TIMEOUT)."""
        with selectors.SelectSelector() as selector:
            for sock in self.sockets():
                selector.register(sock, selectors.EVENT_READ, sock)
            for _ in range(100000):           # each turn waits for a datagram or a timer
                self.send_datagrams()
                self.events += self.endpoint.events()
                for event in self.events:
                    if isinstance(event, udp_stream.SessionClosed):
                        return UDP_END_MESSAGES.get(event.reason, event.reason)
                if self.failure is not None:
                    return self.failure
                if self.endpoint.state == "open":
                    return None
                for key, _mask in selector.select(self.timeout()):
                    self.read(key.data)
                self.on_time()
        return "the handshake did not finish"

    def start(self, selector: selectors.BaseSelector, received: Received, ended: Ended) -> None:
        self.received, self.ended = received, ended
        for sock in self.sockets():
            selector.register(sock, selectors.EVENT_READ, lambda sock=sock: self.read(sock))

    def read(self, sock: socket.socket) -> None:
        """Datagrams waiting on `sock`, to the endpoint, as the server's: the sockets are
        connected, so the kernel has let through only the server's (or its relay's)."""
        for _ in range(UDP_READS_PER_TURN):
            try:
                data = sock.recv(udp_wire.MAX_DATAGRAM + 1)   # one byte more: too long is dropped
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._icmp_error(exc)
                continue
            self.endpoint.datagram_received(data, self.server, self.clock())

    def _icmp_error(self, exc: OSError) -> None:
        """An ICMP error for an earlier datagram (a connected UDP socket reports it). During the
        handshake, "port unreachable" means no UDP server there: give up at once, as TCP's
        refused connection. Later it is ignored: ICMP is not authenticated (RFC 9000 s14.2.1
        says as much for QUIC), and the session's own timeout decides that the server is gone."""
        if self.endpoint.state == "handshake" and isinstance(exc, ConnectionRefusedError):
            self.failure = str(exc)

    def send(self, data: bytes) -> None:
        self.out += data                      # handed to the endpoint by flush()

    def timeout(self) -> Optional[float]:
        """Seconds until the endpoint's next timer (None: none is set)."""
        deadline = self.endpoint.next_deadline()
        return None if deadline is None else max(0.0, deadline - self.clock())

    def on_time(self) -> None:
        """Run the endpoint's timers if they are due."""
        now = self.clock()
        deadline = self.endpoint.next_deadline()
        if deadline is not None and now >= deadline:
            self.endpoint.timer(now)

    def flush(self) -> None:
        """Act on the endpoint's events, hand it what it has room for and send its datagrams,
        until nothing new happens."""
        for _ in range(UDP_FLUSH_ROUNDS):     # what is left waits for the next turn
            events, self.events = self.events + self.endpoint.events(), []
            for event in events:
                if isinstance(event, udp_stream.StreamData):
                    self.received(event.data)
                elif isinstance(event, udp_stream.SessionClosed):
                    self.ended(None if event.reason in UDP_CLOSES
                               else UDP_END_MESSAGES.get(event.reason, event.reason))
            room = UDP_SENDING_BYTES - self.endpoint.buffered_bytes()
            handed = bool(self.out) and room > 0
            if handed:
                self.endpoint.send_stream(bytes(self.out[:room]), self.clock())
                del self.out[:room]
            self.send_datagrams()
            if not events and not handed:
                break

    def send_datagrams(self) -> None:
        for data, _addr in self.endpoint.datagrams_to_send(self.clock()):
            self._send(self.sock, data)
        for knock in self.endpoint.knocks_to_send():
            # From the callback address to the server: through the callback socket (to the
            # server, or to the relay at the callback, which passes it on), or when the callback
            # is the session socket's own address, from the session socket.
            self._send(self.callback_sock or self.sock, knock)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass                              # a full socket buffer: lost, and retransmitted
        except OSError as exc:                # an ICMP error for an earlier datagram
            self._icmp_error(exc)

    def close(self) -> None:
        """Send what is owed (the CLOSE_ACK that answers the server's CLOSE), close the
        sockets."""
        self.send_datagrams()
        for sock in self.sockets():
            sock.close()


def udp_address(text: str) -> Tuple[str, int]:
    """IP:PORT (an IPv6 address in brackets, [::1]:PORT), for --bind and --callback; "0:0"
    names no callback. Only literals: the server accepts nothing else in a JOIN."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected IP:PORT, not %r" % text)
    if host != "0":
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not an IP address (IP:PORT)" % host)
    return host, int(port)


def open_udp(host: str, port: int, bind: Optional[Tuple[str, int]] = None,
             callback: Optional[Tuple[str, int]] = None,
             clock: Callable[[], float] = time.monotonic) -> UdpLink:
    """A UDP session with the server at host:port, open (the handshake done), or OSError.

    `bind` is the session socket's address (any by default). `callback` is what the JOINs name
    (the session socket's own address by default; "0" or port 0 names none, and the server
    answers where the session's datagrams come from, which is what a client behind a NAT
    whose mapping it does not know wants). A callback other than the session socket's gets a
    socket of its own: bound to it if it is this host's and free, or else (a relay, a forwarder
    or a NAT in front of us owns it) connected to it.
    """
    family, _type, _proto, _name, server = socket.getaddrinfo(
        host, port, 0, socket.SOCK_DGRAM)[0]
    server = server[:2]
    sockets: List[socket.socket] = []
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sockets.append(sock)
        sock.bind(bind or ("", 0))
        sock.connect(server)                  # and the kernel names the IP it sends from
        own = sock.getsockname()[:2]
        callback = own if callback is None else callback
        callback_sock = None
        if callback[0] != "0" and callback[1] != 0 and callback != own:
            callback_sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(callback_sock)
            try:
                callback_sock.bind(callback)
                callback_sock.connect(server)
            except OSError:                   # not ours: someone there forwards to the server
                callback_sock.connect(callback)
        for each in sockets:
            each.setblocking(False)
        link = UdpLink(server, sock, callback, callback_sock, clock)
        problem = link.wait_open()
        if problem is not None:
            raise OSError(problem)
        return link
    except BaseException:
        for each in sockets:
            each.close()
        raise


# ---------------------------------------------------------------------------------------------
# The I/O: one selectors loop over the link to the server and standard input
# ---------------------------------------------------------------------------------------------

class Terminal:
    """Runs a ChatClient: reads the server's link and standard input, carries out the actions.

    One loop serves both inputs (as reactor.py does for the server), so a message arriving
    while the user types is printed whole, between two commands, never in the middle of one.
    The link (TcpLink or UdpLink) registers its sockets in the loop's selector, says when its
    timers are due, and is flushed at the end of each turn.
    """

    def __init__(self, client: ChatClient, link: Union[TcpLink, UdpLink], stdin_fd: int,
                 stdout: TextIO, stderr: TextIO, interactive: bool) -> None:
        self.client = client
        self.link = link
        self.stdin_fd = stdin_fd
        self.stdout = stdout
        self.stderr = stderr
        self.interactive = interactive       # show a prompt (both ends are a terminal)
        self.reader = ReplyReader()
        self.stdin_buf = bytearray()         # the start of a line not yet ended
        self.status: Optional[int] = None    # set by Exit: the loop ends
        self.prompt_shown = False
        self.deadline: Optional[float] = None   # when to stop waiting after DISCONNECT
        # Not DefaultSelector: on Linux that is epoll, which refuses a regular file, and
        # standard input is one when redirected from a script (< script.txt). select() takes
        # files, pipes and terminals everywhere, and three descriptors cost it nothing.
        # Each registration's data is the method that handles it being ready.
        self.selector = selectors.SelectSelector()
        link.start(self.selector, self.on_server_data, self.on_server_gone)
        self.selector.register(stdin_fd, selectors.EVENT_READ, self.on_stdin_readable)

    def run(self) -> int:
        """Loop until an Exit action; return its status."""
        while self.status is None:
            self.before_waiting()
            for key, mask in self.selector.select(self.wait_timeout()):
                if self.status is not None:
                    break
                key.data()
            if self.status is None:
                self.link.on_time()
            if (self.deadline is not None and time.monotonic() >= self.deadline
                    and self.status is None):
                self.apply([PrintError("the server did not close the connection within %g s "
                                       "of DISCONNECT" % self.link.disconnect_timeout), Exit(1)])
            if self.status is None:
                self.link.flush()
        return self.status

    def on_server_data(self, data: bytes) -> None:
        if self.status is not None:
            return
        self.reader.receive_data(data)
        while self.status is None:
            message = self.reader.maybe_next_reply()
            if message is None:
                if len(self.reader.pending()) > MAX_SERVER_MESSAGE:
                    self.apply([PrintError("the server sent a message longer than %d bytes"
                                           % MAX_SERVER_MESSAGE), Exit(1)])
                return
            self.apply(self.client.message_received(message))

    def on_server_gone(self, failure: Optional[str]) -> None:
        if self.status is not None:
            return
        if failure is None:
            self.apply(self.client.connection_lost())
        else:
            self.apply([PrintError(failure), Exit(1)])

    def on_stdin_readable(self) -> None:
        data = os.read(self.stdin_fd, READ_SIZE)
        if not data:                          # end of input (Ctrl-D at a terminal)
            # The prompt stays marked as shown: Ctrl-D echoes no newline, so the next line
            # printed must erase it first.
            self.selector.unregister(self.stdin_fd)
            if self.stdin_buf:                # a last line without its newline
                self.apply(self.client.line_typed(self.stdin_buf.decode("utf-8", "replace")))
            self.apply(self.client.input_ended())
            return
        self.prompt_shown = False             # the user's Enter took the cursor past it
        self.stdin_buf += data
        while b"\n" in self.stdin_buf and self.status is None:
            line, _newline, rest = bytes(self.stdin_buf).partition(b"\n")
            self.stdin_buf = bytearray(rest)
            # Splitting bytes at b"\n" never cuts a UTF-8 character in two.
            self.apply(self.client.line_typed(line.decode("utf-8", "replace").rstrip("\r")))

    def apply(self, actions: List[Action]) -> None:
        """Carry out ChatClient's actions, in order; nothing after an Exit."""
        for action in actions:
            if isinstance(action, Send):
                self.link.send(action.data)   # sent by the link's flush() this turn
            elif isinstance(action, Print):
                self.write_line(self.stdout, action.text)
            elif isinstance(action, PrintError):
                self.write_line(self.stderr, action.text)
            elif isinstance(action, Exit):
                self.status = action.status
                return
        if self.client.quitting and self.deadline is None:
            self.deadline = time.monotonic() + self.link.disconnect_timeout

    def write_line(self, stream: TextIO, text: str) -> None:
        if self.prompt_shown:
            # Take the prompt off the screen so the message gets a line of its own. What the
            # user had half typed stays in the terminal's line buffer (Ctrl-R shows it again)
            # and is sent when they press Enter.
            self.stdout.write(ERASE_LINE)
            self.stdout.flush()
            self.prompt_shown = False
        stream.write(text + "\n")
        stream.flush()                        # as it arrives, even into a pipe

    def before_waiting(self) -> None:
        """Called before each wait for input: the prompt, when it is due."""
        self.show_prompt()

    def wait_timeout(self) -> Optional[float]:
        """How long the next wait for input may last: until the DISCONNECT deadline or the
        link's next timer, whichever is first; None: no limit."""
        waits = [wait for wait in (self.link.timeout(), None if self.deadline is None
                                   else max(0.0, self.deadline - time.monotonic()))
                 if wait is not None]
        return min(waits) if waits else None

    def show_prompt(self) -> None:
        if self.interactive and not self.prompt_shown and self.client.ready_for_input():
            self.stdout.write(PROMPT)
            self.stdout.flush()
            self.prompt_shown = True


# ---------------------------------------------------------------------------------------------
# The full-screen mode: the same loop and the same ChatClient, drawn with curses
# ---------------------------------------------------------------------------------------------

# Milliseconds curses waits after an ESC for the rest of a key's escape sequence. Its default,
# a second, makes Alt+key feel stuck; a terminal sends a whole sequence at once, even over ssh.
ESCAPE_DELAY_MS = 25
# Keys taken in one turn of the loop, at most: a long paste is read in parts, with the
# server's messages read and the screen drawn between them.
MAX_KEYS_PER_TURN = 1024
# The time stamp in front of each line of the chat (time.strftime).
STAMP_FORMAT = "%H:%M"


class FullScreen(Terminal):
    """Runs a ChatClient in a full-screen interface (screen.Screen, drawn with curses).

    The same loop as Terminal: standard input is read as keys, which screen.Screen turns into
    edits and events (a line to send, another room, end of input); what Terminal would print
    goes into the scrollback; before each wait the whole Frame is drawn, and curses sends the
    terminal only what changed, then puts the cursor back on the input line. A resize arrives
    as SIGWINCH, whose wakeup descriptor is in the selector, so it is drawn at once.

    The lines printed by the last actions (the ERROR that ends the client, "* disconnected")
    are kept in last_words, for main to print again once the screen is restored.
    """

    def __init__(self, client: ChatClient, link: Union[TcpLink, UdpLink], window, server: str,
                 wakeup_fd: int) -> None:
        super().__init__(client, link, sys.stdin.fileno(), sys.stdout, sys.stderr,
                         interactive=False)
        self.window = window
        self.server = server
        self.screen = screen.Screen()
        self.wakeup_fd = wakeup_fd
        self.keys_left = False              # MAX_KEYS_PER_TURN stopped the last read of keys
        self.batch: List[Tuple[TextIO, str]] = []       # lines printed by the current actions
        self.last_words: List[Tuple[TextIO, str]] = []
        self.styles = self._styles()
        window.nodelay(True)                # get_wch() says "no key" instead of waiting
        self.selector.register(wakeup_fd, selectors.EVENT_READ, self.on_resize)
        self.write_line(self.stdout, "* connected to %s as %s: /join ROOM to start, /help "
                                     "for commands and keys" % (server, client.name))

    @staticmethod
    def _styles() -> Dict[str, int]:
        """The curses attribute for each of the Frame's styles: colours where there are some."""
        styles = {"chat": curses.A_NORMAL, "input": curses.A_NORMAL, "status": curses.A_REVERSE,
                  "note": curses.A_DIM, "error": curses.A_BOLD}
        if curses.has_colors():
            try:
                curses.use_default_colors()         # the terminal's own background
                background = -1
            except curses.error:
                background = curses.COLOR_BLACK
            curses.init_pair(1, curses.COLOR_CYAN, background)
            curses.init_pair(2, curses.COLOR_RED, background)
            styles["note"] = curses.color_pair(1)
            styles["error"] = curses.color_pair(2) | curses.A_BOLD
        return styles

    # -- input ---------------------------------------------------------------------------------

    def on_stdin_readable(self) -> None:
        self.keys_left = False
        for _ in range(MAX_KEYS_PER_TURN):
            try:
                key = self.window.get_wch()
            except curses.error:            # no key left
                return
            name = key if isinstance(key, str) else curses.keyname(key).decode("ascii",
                                                                               "replace")
            if name == "KEY_RESIZE":        # curses has resized itself (resizeterm says so
                continue                    # too): the next frame is drawn to the new size
            for event in self.screen.key(name):
                self.on_event(event)
                if self.status is not None:
                    return
        self.keys_left = True

    def on_event(self, event: screen.Event) -> None:
        if isinstance(event, screen.Submit):
            self.apply(self.client.line_typed(event.line))
        elif isinstance(event, screen.CycleRoom):
            self.client.cycle_room(event.step)
        elif isinstance(event, screen.Quit):
            self.apply(self.client.input_ended())
        elif isinstance(event, screen.Repaint):
            self.window.clearok(True)       # the next refresh clears and redraws every cell

    def on_resize(self) -> None:
        """SIGWINCH arrived (its wakeup descriptor is readable)."""
        try:
            os.read(self.wakeup_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            pass
        self.resize()

    def resize(self) -> None:
        try:
            cols, rows = os.get_terminal_size(self.stdout.fileno())
        except OSError:
            return
        curses.resizeterm(rows, cols)

    # -- output --------------------------------------------------------------------------------

    def apply(self, actions: List[Action]) -> None:
        self.batch = []
        super().apply(actions)
        if self.status is not None and not self.last_words:
            self.last_words = self.batch

    def write_line(self, stream: TextIO, text: str) -> None:
        style = "error" if stream is self.stderr else "note" if text.startswith("* ") else "chat"
        self.screen.add(text, style, time.strftime(STAMP_FORMAT))
        self.batch.append((stream, text))

    def wait_timeout(self) -> Optional[float]:
        # Keys left from the last turn may be in curses' own buffer, which select() cannot see:
        # do not wait for the descriptor to say so.
        return 0.0 if self.keys_left else super().wait_timeout()

    def before_waiting(self) -> None:
        if self.keys_left:
            self.on_stdin_readable()
        client = self.client
        state = ("disconnecting" if client.quitting
                 else "joining" if client.awaiting == "JOINED_CHATROOM"
                 else "leaving" if client.awaiting else "connected")
        self.screen.status = screen.Status(client.name, self.server, client.current,
                                           tuple(client.rooms), state)
        self.draw()

    def draw(self) -> None:
        rows, cols = self.window.getmaxyx()
        frame = self.screen.render(rows, cols)
        self.window.erase()
        for row, (text, style) in enumerate(frame.rows):
            try:
                self.window.addstr(row, 0, text, self.styles[style])
            except curses.error:            # the bottom-right cell: the cursor cannot move on
                pass
        self.window.move(*frame.cursor)
        self.window.refresh()


def full_screen_problem() -> Optional[str]:
    """Why the full-screen mode cannot run on this terminal, or None when it can."""
    if curses is None:
        return "this Python has no curses module"
    try:
        curses.setupterm(fd=sys.stdout.fileno())
    except curses.error as exc:
        return "the terminal (TERM=%s) is unknown to curses: %s" % (os.environ.get("TERM"), exc)
    if not curses.tigetstr("cup"):          # TERM=dumb, emacs' shell: no cursor addressing
        return "the terminal (TERM=%s) cannot move its cursor" % os.environ.get("TERM")
    return None


def run_full_screen(client: ChatClient, link: Union[TcpLink, UdpLink], server: str) -> int:
    """Run `client` full-screen until it exits; then print its last words on the restored
    terminal (the error that ended it stays readable) and return its exit status."""
    os.environ.setdefault("ESCDELAY", str(ESCAPE_DELAY_MS))   # read by curses at start
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_r, False)
    os.set_blocking(wakeup_w, False)
    full_screen: Optional[FullScreen] = None

    def in_window(window) -> int:
        nonlocal full_screen
        # After initscr, so that ours replaces curses' own SIGWINCH handler: curses would only
        # notice a resize at the next key; the wakeup descriptor wakes select() at once.
        old_wakeup = signal.set_wakeup_fd(wakeup_w)
        old_handler = signal.signal(signal.SIGWINCH, lambda _signum, _frame: None)
        try:
            full_screen = FullScreen(client, link, window, server, wakeup_r)
            return full_screen.run()
        finally:
            signal.signal(signal.SIGWINCH, old_handler)
            signal.set_wakeup_fd(old_wakeup)

    try:
        # wrapper: cbreak and no echo, keypad keys, colours; the terminal restored however
        # this ends (Ctrl-C included)
        status = curses.wrapper(in_window)
    finally:
        os.close(wakeup_r)
        os.close(wakeup_w)
    for stream, text in full_screen.last_words if full_screen else []:
        print(text, file=stream, flush=True)
    return status


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        prog="python3 -m tools.chat_client",
        description="A terminal client for the chat server (see protocol.py). It connects to "
                    "HOST:PORT, reads commands, one per line, and shows every message from the "
                    "server as it arrives: '[ROOM] NAME: TEXT' for chat, '* ...' for replies "
                    "to commands. At a terminal it is full-screen (an input line that arriving "
                    "messages leave alone, a status line, readline's keys, history, scrollback; "
                    "/help lists the keys); piped from a script it reads standard input. With "
                    "--udp it speaks the protocol over the server's UDP transport "
                    "(docs/UDP.md) instead of TCP, and everything else is the same.",
        epilog=COMMANDS + """

Lines typed while a /join or /leave is unanswered wait for the answer, so a script
may send "/join a" and "hello" together: hello goes to a. Mistakes (posting before
joining, leaving a room you are not in, an unknown command) are explained on
standard error and nothing is sent.

errors from the server are shown as "ERROR code: description" on standard error.
Two of them refuse one request for a while and the client goes on: 13 (rooms
created too fast: wait, or join an existing room) and 15 (servers sharing rooms
cannot reach their Redis: try again in a few seconds). Every other ERROR_CODE
ends the client. A message longer than a request may be (%d bytes) is refused
before it is sent, and the client goes on.

exit status:
  0  after /quit or end of input, once the server has closed the connection
  1  the server answered an ERROR_CODE other than 13 or 15 (full-screen, shown
     once the screen is restored), closed the connection unexpectedly, sent
     something malformed, or could not be reached; over UDP also when the
     server stops answering (nothing heard for %g s)

over UDP (--udp): the JOINs name --callback as CLIENT_IP and PORT, the session
socket's own address by default. Through relays (tools/relay.py), HOST PORT is the
relay towards the server and --callback the relay back; behind a NAT, --callback
is the NAT's public address for the session socket, or 0:0 (name none: the server
answers where the session's datagrams come from).""" % (MAX_REQUEST_BYTES, udp_stream.IDLE_TIMEOUT))
    parser.add_argument("host", help="the server's address, e.g. 127.0.0.1")
    parser.add_argument("port", type=int,
                        help="the server's port (TCP, or UDP with --udp: the same number)")
    parser.add_argument("--name", required=True,
                        help="your CLIENT_NAME, shown to the other members of your rooms (at "
                             "most %d characters, printable)" % MAX_NAME_CHARS)
    parser.add_argument("--plain", action="store_true",
                        help="the line mode even at a terminal (a prompt, no full screen)")
    parser.add_argument("--udp", action="store_true",
                        help="speak the protocol over UDP (docs/UDP.md), not TCP")
    parser.add_argument("--bind", type=udp_address, metavar="IP:PORT",
                        help="with --udp: the local address of the session's socket (default: "
                             "any, a port the kernel picks)")
    parser.add_argument("--callback", type=udp_address, metavar="IP:PORT",
                        help="with --udp: the address the JOINs name for the server's replies "
                             "(default: the session socket's own). Another address gets a "
                             "second socket for the KNOCKs that validate it: bound there if it "
                             "is this host's and free, else sending to it (a relay); 0:0 names "
                             "none")
    args = parser.parse_args(argv)
    if not args.udp and (args.bind or args.callback):
        parser.error("--bind and --callback are for --udp")
    if not 0 < args.port <= 65535:
        parser.error("PORT must be an integer from 1 to 65535, not %d" % args.port)
    args.name = args.name.strip()
    # The server would answer a bad name with ERROR_CODE at the first /join, and the client
    # would have to exit: say so now, before connecting.
    problem = name_problem(args.name)
    if problem:
        parser.error(problem)
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # A terminal that cannot show a character shows "?" instead of ending the client.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="replace")
    try:
        link = connect(args)
    except OSError as exc:
        print("cannot connect to %s:%d%s: %s" % (args.host, args.port,
                                                 " over UDP" if args.udp else "", exc),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:                 # Ctrl-C during a slow UDP handshake
        print(file=sys.stderr)
        return 130
    server = "%s:%d%s" % (args.host, args.port, " (UDP)" if args.udp else "")
    callback = link.callback if isinstance(link, UdpLink) else ("0", 0)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    full_screen = interactive and not args.plain
    if full_screen:
        problem = full_screen_problem()
        if problem is not None:
            print("* no full screen (%s): the line mode" % problem, file=sys.stderr)
            full_screen = False
    try:
        if full_screen:
            client = ChatClient(args.name, help_text=COMMANDS + "\n" + screen.KEYS_HELP,
                                callback=callback)
            return run_full_screen(client, link, server)
        terminal = Terminal(ChatClient(args.name, callback=callback), link, sys.stdin.fileno(),
                            sys.stdout, sys.stderr, interactive)
        return terminal.run()
    except KeyboardInterrupt:
        # Ctrl-C. Over TCP the server sees the connection close; a UDP session it declares
        # gone after its idle timeout (docs/UDP.md, "Liveness"), as for a client that vanished.
        print(file=sys.stderr)
        return 130
    finally:
        link.close()


def connect(args: argparse.Namespace) -> Union[TcpLink, UdpLink]:
    """The link to the server the arguments name, connected (OSError if it cannot be)."""
    if args.udp:
        return open_udp(args.host, args.port, args.bind, args.callback)
    sock = socket.create_connection((args.host, args.port), timeout=CONNECT_TIMEOUT)
    sock.setblocking(False)
    # Each request leaves in one send(); Nagle would only hold back the second of two quick ones.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TcpLink(sock)


if __name__ == "__main__":
    sys.exit(main())
