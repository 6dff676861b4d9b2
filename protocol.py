"""The chat protocol as a pure state machine: bytes in, requests, actions out.

Boundary: this module imports no socket, no selectors and nothing of the reactor. A connection is
an integer id. Everything it decides can be tested in memory, and the reactor that drives it
knows nothing of chat commands (the "sans-IO" design of h11, the HTTP library).

Theory of operation, following one request through the module:

    bytes --Framer.receive_data--> input buffer
          --Framer.maybe_next_frame--> one frame (the bytes of one request)
          --parse_request--> a request (Helo, Kill, Join, Leave, Chat, Disconnect, Other)
          --ChatProtocol.handle--> a list of actions (Send, Broadcast, Close, Shutdown)

The reactor calls ChatProtocol.data_received() with what it read, then maybe_next_actions()
once per request it is willing to handle this tick, and carries out the actions in order.

The module owns the whole wire format, both ways (as h11 is both an HTTP client and a server):
the shapes of every request and reply, a builder for each (the server's replies use them), and
ReplyReader, the sans-IO reader of the server's output that clients, tools and tests use:

    bytes --ReplyReader.receive_data--> buffer --maybe_next_reply--> a reply (HeloReply,
          JoinedReply, LeftReply, ErrorReply, ChatMessage; Unparsed for anything else)

In this file, top to bottom: limits; errors; the wire format (shapes and builders); framing;
requests; the reply reader; the state machine (its actions are sansio/actions.py's).

Rules of this file:
- Framing is decided by the first line's keyword alone (docs/PROTOCOL.md, "Framing").
- Every error a peer can cause is a RequestError, raised where it is found and turned into an
  ERROR_CODE reply in one place (`error_reply`), from the one table of codes (`ErrorCode`).
- Exceptions other than RequestError are our own bugs; the reactor drops the connection.
- The one side effect here is logging (KILL_SERVICE, and the "other messages" nobody processes).
  Time is read only through the clock ChatProtocol is given, for the room-creation limits.
"""
import enum
import ipaddress
import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

# The actions are the reactor's contract as much as ours; they live with it and are re-exported.
from sansio.actions import Action, Broadcast, Callback, Close, Send, Shutdown  # noqa: F401
from policy.bucket import TokenBucket
from rooms import Rooms

LOGGER = logging.getLogger(__name__)

# The longest request we buffer, in bytes, not counting its terminating newline(s). A
# CHAT may span several lines, so this is a bound on the whole request, not just on one line.
# 64 KiB is a long page of text, far beyond any chat message, and small enough that a thousand
# clients each holding a half-sent maximal request cost 64 MB. A peer past it gets
# ERROR_CODE REQUEST_TOO_LONG and is disconnected: we cannot resynchronise inside a request we
# refused to buffer.
MAX_REQUEST_BYTES = 64 * 1024
# The longest room name or CLIENT_NAME a JOIN may give, in characters. Names are kept for as
# long as the room (while it is in the table) or the membership lasts, so their length bounds
# what the room table can cost (rooms.MAX_ROOMS, rooms.MAX_ROOMS_PER_CONNECTION). 256 is far
# beyond any chat's room or nickname. Only JOIN keeps names, so only JOIN checks this.
MAX_NAME_CHARS = 256
# How fast rooms may be created, as token buckets (a burst, then a rate per second), for one
# connection and for all connections from one address: a JOIN that would create a room past
# either gets ERROR_CODE CREATING_ROOMS_TOO_FAST (joining rooms that exist is never limited).
# Far above what people do (the course's test client creates two), and above what the
# benchmarks do (100 rooms from one address at once); 100 000 rooms from one host take minutes.
ROOM_CREATION_BURST_PER_CONNECTION = 50
ROOM_CREATIONS_PER_SECOND_PER_CONNECTION = 5
ROOM_CREATION_BURST_PER_ADDRESS = 2000
ROOM_CREATIONS_PER_SECOND_PER_ADDRESS = 200
# Who may stop the server with KILL_SERVICE (Server.py --kill-from): the course's protocol says
# anyone may; a real deployment would say "loopback" (this machine only) or "none".
KILL_FROM_CHOICES = ("any", "loopback", "none")
# The addresses whose room creations are remembered: past this many, those whose buckets have
# refilled (they have not created a room lately) are forgotten, so the table stays bounded.
ADDRESSES_REMEMBERED = 10_000
# The memberships all connections from one address may hold together (each keeps a name of up
# to MAX_NAME_CHARS): with rooms.MAX_ROOMS_PER_CONNECTION alone, one host with 20 000
# connections could hold 5 million. Past it: ERROR_CODE TOO_MANY_MEMBERSHIPS. Twice what the
# 10 000-connection test (python3 -m tools.many) needs from one address.
MAX_MEMBERSHIPS_PER_ADDRESS = 20_000


# ---------------------------------------------------------------------------------------------
# Errors: one table, one builder
# ---------------------------------------------------------------------------------------------

class ErrorCode(enum.IntEnum):
    """Every ERROR_CODE this server sends. The README's error table is this one."""
    MALFORMED_REQUEST = 1    # a field missing, misnamed or out of order
    BAD_INTEGER = 2          # ROOM_REF or JOIN_ID is not a non-negative integer
    EMPTY_ROOM_NAME = 3
    EMPTY_CLIENT_NAME = 4
    UNKNOWN_ROOM = 5         # no room has this ROOM_REF
    NOT_A_MEMBER = 6         # CHAT to a room this connection has not joined
    INVALID_UTF8 = 7
    REQUEST_TOO_LONG = 8     # longer than MAX_REQUEST_BYTES; the connection is then closed
    TOO_MANY_ROOMS = 9       # creating one more room would pass rooms.MAX_ROOMS
    NAME_TOO_LONG = 10       # a JOIN's room name or CLIENT_NAME is over MAX_NAME_CHARS
    TOO_MANY_MEMBERSHIPS = 11  # this connection is in rooms.MAX_ROOMS_PER_CONNECTION rooms
    NAME_NOT_PRINTABLE = 12  # a JOIN's room name or CLIENT_NAME holds a control/format character
    CREATING_ROOMS_TOO_FAST = 13  # this connection or its address passed ROOM_CREATION limits
    KILL_NOT_ALLOWED = 14    # KILL_SERVICE from an address --kill-from does not allow
    BUS_UNAVAILABLE = 15     # --bus: the request needs Redis, which cannot be reached now


class RequestError(Exception):
    """A request the peer got wrong. Raised where the fault is found; `ChatProtocol` turns it
    into an ERROR_CODE reply and the connection stays usable (except REQUEST_TOO_LONG)."""

    def __init__(self, code: ErrorCode, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description




def _quote(text: str, limit: int = 40) -> str:
    """A short, printable rendering of peer-supplied text for an error description."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ---------------------------------------------------------------------------------------------
# The wire format, both directions: the shapes of every message and a builder for each
# ---------------------------------------------------------------------------------------------
# Like h11, which is both a client and a server, this module owns the whole wire format: what a
# client sends (requests) and what the server sends back (replies). The server builds its
# replies with the builders below; clients, tools and tests build their requests with them and
# read the server's output with ReplyReader (further down). Nothing else writes or parses it.
#
# A message is text lines, each ending in "\n"; a field line is "KEY: value". The first line's
# keyword (the text before its first colon) says what the message is and so how many lines it
# has. The tables name the keys of the lines after the first, in order.

# Requests (client -> server). A CHAT's MESSAGE runs to the first blank line; the others have
# exactly these lines. HELO ("HELO text") and KILL_SERVICE are one line with no field.
REQUEST_SHAPES: Dict[bytes, Tuple[str, ...]] = {
    b"JOIN_CHATROOM": ("CLIENT_IP", "PORT", "CLIENT_NAME"),
    b"LEAVE_CHATROOM": ("JOIN_ID", "CLIENT_NAME"),
    b"DISCONNECT": ("PORT", "CLIENT_NAME"),
    b"CHAT": ("JOIN_ID", "CLIENT_NAME", "MESSAGE"),
}

# Replies (server -> client). The HELO reply is the one form with no space after its colons
# (the course fixes it); its first line is the request's "HELO text" line, echoed.
REPLY_SHAPES: Dict[bytes, Tuple[str, ...]] = {
    b"HELO": ("IP", "Port", "StudentID"),
    b"JOINED_CHATROOM": ("SERVER_IP", "PORT", "ROOM_REF", "JOIN_ID"),
    b"LEFT_CHATROOM": ("JOIN_ID",),
    b"ERROR_CODE": ("ERROR_DESCRIPTION",),
    b"CHAT": ("CLIENT_NAME", "MESSAGE"),       # MESSAGE runs to the first blank line
}

# The texts of the announcements a room's members receive as CHAT messages.
JOINED_TEXT = "%s has joined this chatroom."
LEFT_TEXT = "%s has left this chatroom."


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


# -- requests ---------------------------------------------------------------------------------

def helo_request(text: str) -> bytes:
    return _utf8("HELO %s\n" % text)


def kill_request() -> bytes:
    return b"KILL_SERVICE\n"


def join_request(room: str, client_name: str, client_ip: str = "0", port: int = 0) -> bytes:
    """A JOIN_CHATROOM. CLIENT_IP and PORT are "0" over TCP."""
    return _utf8("JOIN_CHATROOM: %s\nCLIENT_IP: %s\nPORT: %d\nCLIENT_NAME: %s\n"
                 % (room, client_ip, port, client_name))


def leave_request(ref: int, join_id: int, client_name: str) -> bytes:
    return _utf8("LEAVE_CHATROOM: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\n" % (ref, join_id, client_name))


def chat_request(ref: int, join_id: int, client_name: str, message: str) -> bytes:
    """A CHAT. The message may hold single newlines; a blank line would end it early."""
    return _utf8("CHAT: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n"
                 % (ref, join_id, client_name, message))


def disconnect_request(client_name: str, client_ip: str = "0", port: int = 0) -> bytes:
    """A DISCONNECT. Its first value and PORT are "0" over TCP."""
    return _utf8("DISCONNECT: %s\nPORT: %d\nCLIENT_NAME: %s\n" % (client_ip, port, client_name))


# -- replies ----------------------------------------------------------------------------------

def helo_reply(line: str, ip: str, port: int, student_id: str) -> bytes:
    """The answer to `line` ("HELO text"), in the course's fixed form."""
    return _utf8("%s\nIP:%s\nPort:%d\nStudentID:%s\n" % (line, ip, port, student_id))


def joined_reply(room: str, server_ip: str, port: int, ref: int, join_id: int) -> bytes:
    return _utf8("JOINED_CHATROOM: %s\nSERVER_IP: %s\nPORT: %d\nROOM_REF: %d\nJOIN_ID: %d\n"
                 % (room, server_ip, port, ref, join_id))


def left_reply(ref: int, join_id: object) -> bytes:
    """LEFT_CHATROOM; `join_id` is an int, or the digits a request sent (echoed as they came)."""
    return _utf8("LEFT_CHATROOM: %d\nJOIN_ID: %s\n" % (ref, join_id))


def error_reply(code: int, description: str) -> bytes:
    """An ERROR_CODE message. The description is kept to one line."""
    return _utf8("ERROR_CODE: %d\nERROR_DESCRIPTION: %s\n" % (code, description.replace("\n", " ")))


def chat_message(ref: int, client_name: str, text: str) -> bytes:
    """A CHAT message as members receive it (announcements use the same form). Built once per
    chat, on the hot path: encoded inline rather than through _utf8()."""
    return ("CHAT: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (ref, client_name, text)).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Framing: bytes -> frames
# ---------------------------------------------------------------------------------------------

_UNTIL_BLANK_LINE = -1   # a CHAT ends at the first blank line, not after a count of lines
_CRS_BEFORE_LF = re.compile(rb"\r+\n")
_BLANK_LINES = re.compile(rb"\n*")

# How many lines each kind of request has, by its keyword (REQUEST_SHAPES). Anything not listed
# (HELO, KILL_SERVICE, unknown commands) is one line.
_FRAME_LINES = {keyword: len(keys) + 1 for keyword, keys in REQUEST_SHAPES.items()}
_FRAME_LINES[b"CHAT"] = _UNTIL_BLANK_LINE


def request_keyword(first_line: bytes) -> bytes:
    """The keyword of a request: the text before the first colon of its first line, without
    surrounding ASCII white space (b"" if there is no colon). Framer and parse_request both use
    this one function, so they cannot disagree about what a request is (str.strip() would also
    strip Unicode white space, and a line the framer cut as unknown would parse as a CHAT)."""
    colon = first_line.find(b":")
    return first_line[:colon].strip() if colon >= 0 else b""


def _starts_plainly_as_a_chat(buf: bytearray) -> bool:
    """Speed shortcut 1 of 2 (README, "Performance"): a frame that starts with exactly "CHAT:"
    is a CHAT, the commonest request, whose first line cannot hold the blank line that ends it;
    so the framer may search for that blank line at once, without first finding the end of the
    first line and its keyword. Any other start takes the general path, which frames a CHAT the
    same way (tests/test_wire.py: test_chat_framing_shortcut_agrees_with_the_general_path)."""
    return buf.startswith(b"CHAT:")


class Framer:
    """Cuts one connection's byte stream into frames, one request each.

    `receive_data()` only buffers; `maybe_next_frame()` returns the next complete frame, without
    its final newline(s) and with every CR of a CRLF removed, or None until more data arrives.
    Blank lines between requests are skipped. A blank line also ends a fixed-size request early
    (it is then malformed, and the parser says so) so that one forgotten field does not swallow
    the first line of the next request.

    Cost: every byte is searched once, however the stream is split. The search for the end of a
    frame resumes where the last call gave up (`_scanned`), so a request trickling in a byte at a
    time costs O(n), not O(n^2).
    """

    __slots__ = ("_buf", "_end", "_lines_left", "_scanned", "_held_crs", "max_request")

    def __init__(self, max_request: int = MAX_REQUEST_BYTES) -> None:
        self._buf = bytearray()
        self._end = 0             # offset just past the last complete line of this frame (0: none)
                                  # (for a CHAT: where the search for its blank line starts)
        self._lines_left = 0      # lines this frame still needs, or _UNTIL_BLANK_LINE
        self._scanned = 0         # offset before which the current search already looked
        self._held_crs = b""      # the CRs that ended the last chunk: is an LF coming next?
        self.max_request = max_request

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the peer. A line end with CRs before its LF (telnet's CRLF,
        or any run of CRs) becomes LF here, once, so that nothing after this point has to
        think about CRs: a relayed message never holds "\r\n", and so cannot show a blank
        line to a client that reads CRLF as LF (it could end the CHAT there and take the rest
        for a message from somebody else)."""
        if self._held_crs:
            data = self._held_crs + data
            self._held_crs = b""
        if b"\r" in data:
            if data[-1:] == b"\r":    # an LF may follow in the next chunk: decide then
                kept = data.rstrip(b"\r")
                self._held_crs = data[len(kept):]
                data = kept
            data = _CRS_BEFORE_LF.sub(b"\n", data)
        self._buf += data

    def maybe_next_frame(self) -> Optional[bytes]:
        """The next complete frame, or None if there is none yet.

        Raises RequestError(REQUEST_TOO_LONG) once the frame being assembled passes
        `max_request` bytes; the framer is of no further use after that.
        """
        buf = self._buf
        if self._end == 0:
            # Blank lines between requests, skipped in one match (C speed): a peer that sends
            # nothing else must cost no Python work per byte.
            blank = _BLANK_LINES.match(buf).end() if buf and buf[0] == 10 else 0   # 10: newline
            if blank:
                del buf[:blank]
                self._scanned = 0
            if _starts_plainly_as_a_chat(buf):
                self._lines_left = _UNTIL_BLANK_LINE
                self._end = len(b"CHAT:")
            else:
                eol = self._search(b"\n", 0)
                if eol < 0:
                    return self._incomplete()
                lines = _FRAME_LINES.get(request_keyword(bytes(buf[:eol])), 1)
                self._lines_left = lines if lines == _UNTIL_BLANK_LINE else lines - 1
                self._end = eol + 1
        if self._lines_left == _UNTIL_BLANK_LINE:
            blank_at = self._search(b"\n\n", self._end - 1)
            if blank_at < 0:
                return self._incomplete()
            return self._take(blank_at, blank_at + 2)
        while self._lines_left > 0:
            eol = self._search(b"\n", self._end)
            if eol < 0:
                return self._incomplete()
            if eol == self._end:                        # a blank line cuts the request short
                return self._take(self._end - 1, eol + 1)
            self._end = eol + 1
            self._lines_left -= 1
        return self._take(self._end - 1, self._end)

    def buffered(self) -> int:
        """How many bytes are held, not yet returned as frames."""
        return len(self._buf) + len(self._held_crs)

    def _search(self, needle: bytes, start: int) -> int:
        """buf.find(needle, start), skipping what an earlier call already searched in vain."""
        found = self._buf.find(needle, max(start, self._scanned))
        if found < 0:
            self._scanned = max(0, len(self._buf) - len(needle) + 1)
        return found

    def _incomplete(self) -> None:
        # A final newline may be the first of a CHAT's blank line, and held-back CRs may be
        # part of a line end: the limit counts neither (but a run of CRs longer than a whole
        # request is refused all the same: it would otherwise be held without bound).
        content = len(self._buf) - self._buf.endswith(b"\n")
        if content > self.max_request or len(self._held_crs) > self.max_request:
            raise RequestError(ErrorCode.REQUEST_TOO_LONG,
                               "request longer than %d bytes; closing the connection"
                               % self.max_request)
        return None

    def _take(self, frame_end: int, consumed: int) -> bytes:
        """Return buf[:frame_end] as a frame and drop the first `consumed` bytes."""
        if frame_end > self.max_request:
            raise RequestError(ErrorCode.REQUEST_TOO_LONG,
                               "request longer than %d bytes; closing the connection"
                               % self.max_request)
        frame = bytes(self._buf[:frame_end])
        del self._buf[:consumed]      # O(1): a bytearray drops its head by moving its start
        self._end = self._lines_left = self._scanned = 0
        return frame


# ---------------------------------------------------------------------------------------------
# Requests: frames -> requests (nouns, as the client names them)
# ---------------------------------------------------------------------------------------------
# Requests (and the actions in sansio/actions.py) are small dataclasses with __slots__, built once and
# never changed. They are not frozen=True: a frozen dataclass sets each field through
# object.__setattr__, which made building one several times slower (README, "Performance"), and
# every chat message builds two (a Chat and a Broadcast). Treat them as immutable all the same.

@dataclass
class Helo:
    __slots__ = ("line",)
    line: str              # the whole request line, echoed as the first line of the reply


@dataclass
class Kill:
    __slots__ = ()              # KILL_SERVICE


@dataclass(init=False)
class Join:
    __slots__ = ("room", "client_name", "client_ip", "port")
    room: str
    client_name: str
    client_ip: str         # CLIENT_IP and PORT as sent (trimmed): "0 for TCP"; over UDP they
    port: str              # name the callback address (docs/UDP.md), checked by the transport

    # Written out for the defaults: a dataclass field with a default would be a class attribute,
    # which __slots__ forbids.
    def __init__(self, room: str, client_name: str, client_ip: str = "0",
                 port: str = "0") -> None:
        self.room, self.client_name, self.client_ip, self.port = room, client_name, client_ip, port

    def names_a_callback(self) -> bool:
        """CLIENT_IP and PORT name an address: neither is the protocol's "0 for TCP"."""
        return self.client_ip != "0" and self.port.lstrip("0") != ""


# A request's JOIN_ID is kept as the digits the client sent: identity is the connection, so the
# server never looks anybody up by it; LEFT_CHATROOM only echoes it.

@dataclass
class Leave:
    __slots__ = ("ref", "join_id", "client_name")
    ref: int
    join_id: str
    client_name: str


@dataclass
class Chat:
    __slots__ = ("ref", "join_id", "client_name", "message")
    ref: int
    join_id: str
    client_name: str
    message: str           # may contain single newlines; never a blank line


@dataclass
class Disconnect:
    __slots__ = ("client_name",)
    client_name: str


@dataclass
class Other:
    __slots__ = ("line",)
    line: str              # a one-line message this protocol does not define


Request = Union[Helo, Kill, Join, Leave, Chat, Disconnect, Other]


def _fields(lines: List[str], keys: Tuple[str, ...], kind: str) -> List[str]:
    """The trimmed values of lines[1:], which must be `KEY: value` for each of `keys`, in
    that order (the order the protocol lists them)."""
    values = []
    for index, key in enumerate(keys, 1):
        if index >= len(lines):
            raise RequestError(ErrorCode.MALFORMED_REQUEST,
                               "%s needs a %s: line (line %d)" % (kind, key, index + 1))
        name, colon, value = lines[index].partition(":")
        if not colon or name.strip() != key:
            raise RequestError(ErrorCode.MALFORMED_REQUEST,
                               "%s expects %s: on line %d, got %s"
                               % (kind, key, index + 1, _quote(lines[index])))
        values.append(value.strip())
    return values


def _digits(value: str, key: str) -> str:
    # isdigit() alone admits other scripts' digits, and int() would admit "+1", "1_0" and
    # " 1 ": the protocol means plain ASCII digits.
    if not (value.isascii() and value.isdigit()):
        raise RequestError(ErrorCode.BAD_INTEGER,
                           "%s must be a non-negative integer, got %s" % (key, _quote(value)))
    return value


def _room_ref(value: str) -> int:
    digits = _digits(value, "ROOM_REF").lstrip("0") or "0"
    if len(digits) > 18:
        # More than any ref can have. Not int(): it is quadratic in the digits on the Pythons
        # that lack a limit on it, and refuses over 4300 digits on those that have one (leading
        # zeros count: they are stripped first for that reason).
        raise RequestError(ErrorCode.UNKNOWN_ROOM, "no room has ROOM_REF %s" % _quote(value))
    return int(digits)


def _non_empty(value: str, code: ErrorCode, key: str) -> str:
    if not value:
        raise RequestError(code, "%s must not be empty" % key)
    return value


_PLAIN_CHAT = re.compile(rb"CHAT:[ \t]*([0-9]{1,18})[ \t]*\nJOIN_ID:[ \t]*([0-9]+)[ \t]*\n"
                         rb"CLIENT_NAME:([^\n]*)\nMESSAGE:(.*)", re.DOTALL)


def _maybe_parse_plain_chat(frame: bytes) -> Optional[Chat]:
    """Speed shortcut 2 of 2 (README, "Performance"): a well-formed CHAT spaced with plain
    spaces, the request that arrives a thousand times for any other, parsed by one match of
    _PLAIN_CHAT (in C) instead of the general parser's decode, splits and field checks. It only
    ever accepts what the general parser accepts, with the same result, and returns None for
    everything else, errors included, which then take the general way
    (tests/test_wire.py: test_plain_chat_shortcut_agrees_with_the_general_parser)."""
    plain = _PLAIN_CHAT.match(frame)
    if plain is None:
        return None
    try:
        name = plain.group(3).decode("utf-8").strip()
        if name:
            return Chat(int(plain.group(1)), plain.group(2).decode("ascii"), name,
                        plain.group(4).decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        pass                                # the general way says what is wrong
    return None


def parse_request(frame: bytes) -> Request:
    """Turn one frame into a request. Raises RequestError for a malformed request of a known
    kind; a first line of no known kind becomes Other (which is not an error)."""
    return _maybe_parse_plain_chat(frame) or parse_request_in_general(frame)


def parse_request_in_general(frame: bytes) -> Request:
    """parse_request for every request, without the CHAT shortcut."""
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(ErrorCode.INVALID_UTF8,
                           "request is not valid UTF-8 (byte %d)" % exc.start) from None
    first_line = frame.partition(b"\n")[0]
    parser = _PARSERS.get(request_keyword(first_line))
    first = text.partition("\n")[0]
    if parser is not None:
        return parser(text, first.partition(":")[2].strip())
    if first.startswith("HELO ") or first == "HELO":
        return Helo(first)
    if first_line.strip() == b"KILL_SERVICE":
        return Kill()
    return Other(first)


def _parse_join(text: str, room: str) -> Join:
    # CLIENT_IP and PORT are "0 for TCP": any value is accepted here. Over UDP they name the
    # callback address, which the transport checks (a value it cannot use is ignored there).
    ip, port, name = _fields(text.split("\n"), REQUEST_SHAPES[b"JOIN_CHATROOM"],
                             "JOIN_CHATROOM")
    return Join(_name(_non_empty(room, ErrorCode.EMPTY_ROOM_NAME, "the room name"), "room name"),
                _name(_non_empty(name, ErrorCode.EMPTY_CLIENT_NAME, "CLIENT_NAME"), "CLIENT_NAME"),
                ip, port)


# Characters a name may not hold: controls (Cc: C0, DEL, C1, so terminal escape sequences),
# format characters (Cf: bidi overrides, zero-width joiners and spaces) and the line and
# paragraph separators (Zl, Zp). Every member's client prints names, so one of these in a name
# would act on everybody's terminal. Message text is relayed as sent (clients render it).
_UNPRINTABLE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp"))


def _name(value: str, what: str) -> str:
    if len(value) > MAX_NAME_CHARS:
        raise RequestError(ErrorCode.NAME_TOO_LONG, "the %s is %d characters; at most %d, please"
                           % (what, len(value), MAX_NAME_CHARS))
    if not value.isprintable():     # fast for the usual name; it also refuses Zs, so look closer
        for char in value:
            if unicodedata.category(char) in _UNPRINTABLE_CATEGORIES:
                raise RequestError(ErrorCode.NAME_NOT_PRINTABLE,
                                   "the %s holds the unprintable character U+%04X (%s); names "
                                   "are printable text" % (what, ord(char),
                                                           unicodedata.name(char, "a control")))
    return value


def _parse_leave(text: str, ref: str) -> Leave:
    room_ref = _room_ref(ref)
    join_id, name = _fields(text.split("\n"), REQUEST_SHAPES[b"LEAVE_CHATROOM"],
                            "LEAVE_CHATROOM")
    return Leave(room_ref, _digits(join_id, "JOIN_ID"),
                 _non_empty(name, ErrorCode.EMPTY_CLIENT_NAME, "CLIENT_NAME"))


def _parse_disconnect(text: str, _value: str) -> Disconnect:
    _port, name = _fields(text.split("\n"), REQUEST_SHAPES[b"DISCONNECT"], "DISCONNECT")
    return Disconnect(_non_empty(name, ErrorCode.EMPTY_CLIENT_NAME, "CLIENT_NAME"))


def _parse_chat(text: str, ref: str) -> Chat:
    room_ref = _room_ref(ref)
    # split at most 3 times: the 4th part is "MESSAGE: ..." and every line after it
    join_id, name, message = _fields(text.split("\n", 3), REQUEST_SHAPES[b"CHAT"], "CHAT")
    return Chat(room_ref, _digits(join_id, "JOIN_ID"),
                _non_empty(name, ErrorCode.EMPTY_CLIENT_NAME, "CLIENT_NAME"), message)


# The keywords here are those of _FRAME_LINES: a request is framed and parsed as the same kind.
_PARSERS: Dict[bytes, Callable[[str, str], Request]] = {
    b"JOIN_CHATROOM": _parse_join,
    b"LEAVE_CHATROOM": _parse_leave,
    b"DISCONNECT": _parse_disconnect,
    b"CHAT": _parse_chat,
}


# ---------------------------------------------------------------------------------------------
# Reading the server's output: bytes -> replies (for clients, tools and tests)
# ---------------------------------------------------------------------------------------------
# The mirror of Framer + parse_request, for the other direction. ReplyReader is sans-IO too:
# receive_data() only buffers, maybe_next_reply() returns the next whole reply or None. Replies
# are frozen dataclasses (few are built, so the cost of frozen=True does not matter here).

@dataclass(frozen=True)
class HeloReply:
    line: str                   # the request's "HELO text" line, echoed
    ip: str
    port: int
    student_id: str


@dataclass(frozen=True)
class JoinedReply:
    room: str
    server_ip: str
    port: int
    ref: int
    join_id: int


@dataclass(frozen=True)
class LeftReply:
    ref: int
    # An int; the digits as sent when there are more than int() takes (4 300: only an echo, to
    # a connection that never joined, of a JOIN_ID that long).
    join_id: Union[int, str]


@dataclass(frozen=True)
class ErrorReply:
    code: int
    description: str


@dataclass(frozen=True)
class ChatMessage:
    """A chat, or a join or leave announcement (JOINED_TEXT, LEFT_TEXT), in room `ref`."""
    ref: int
    client_name: str
    message: str


@dataclass(frozen=True)
class Unparsed:
    """Server output that is none of the above, or a known kind with wrong fields: never sent
    by this server, so a client should treat it as the server's fault."""
    text: str                   # the message as received (one line for an unknown first line)
    reason: str


Reply = Union[HeloReply, JoinedReply, LeftReply, ErrorReply, ChatMessage, Unparsed]


class ReplyReader:
    """Cuts the server's byte stream into replies.

    Framing mirrors the server's: a reply's first line says its kind (REPLY_SHAPES); a CHAT ends
    at its first blank line, the others have a fixed number of lines; blank lines between
    replies are skipped. Every byte is searched once however the stream is split (as Framer).
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0               # where the next reply starts; bytes before it are consumed

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> bytes:
        """The bytes received but not yet returned as a reply (an incomplete reply)."""
        return bytes(self._buf[self._pos:])

    def maybe_next_reply(self) -> Optional[Reply]:
        """The next whole reply, or None until more data arrives."""
        found = self._next_frame()
        if found is None:
            return None
        keyword, start, end, following = found
        reply = _parse_reply(keyword, self._buf[start:end])
        self._consume(following)            # (after the slice: it may drop the buffer's head)
        return reply

    def count_chats(self, ref: int, text_suffix: str = "") -> int:
        """Consume the run of whole CHAT messages of room `ref` (whose text ends with
        `text_suffix`) at the head of the buffer and return how many there were; stop before
        anything else, which maybe_next_reply() then returns. For load generators, which count
        millions of chats: whole runs are checked with a few searches in C, and only a run that
        holds something else is walked reply by reply."""
        self._skip_blank_lines()
        buf, pos = self._buf, self._pos
        end = buf.rfind(b"\n\n", pos) + 2
        if end < 2 or end <= pos:
            return 0
        header = b"CHAT: %d\nCLIENT_NAME: " % ref
        count = buf.count(b"\nMESSAGE: ", pos, end)
        if (buf.startswith(header, pos) and buf.count(b"\n\n" + header, pos, end) == count - 1
                and (not text_suffix
                     or buf.count(_utf8(text_suffix) + b"\n\n", pos, end) == count)):
            self._consume(end)
            return count
        count = 0
        while True:                         # something else is in there: one at a time
            found = self._next_frame()
            if found is None or found[0] != b"CHAT":
                return count
            reply = _parse_reply(b"CHAT", self._buf[found[1]:found[2]])
            if (not isinstance(reply, ChatMessage) or reply.ref != ref
                    or not reply.message.endswith(text_suffix)):
                return count                # left for maybe_next_reply()
            self._consume(found[3])
            count += 1

    # -- framing -------------------------------------------------------------------------------

    def _skip_blank_lines(self) -> None:
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] == 10:        # 10 == ord("\n")
            pos += 1
        self._pos = pos

    def _consume(self, upto: int) -> None:
        self._pos = upto
        if upto > 65536 and upto * 2 > len(self._buf):  # drop the consumed head now and then
            del self._buf[:upto]
            self._pos = 0

    def _next_frame(self) -> Optional[Tuple[bytes, int, int, int]]:
        """(keyword, start, end, following) of the next whole reply, or None: the reply is
        buf[start:end] without its final newline(s); the next one starts at `following`."""
        self._skip_blank_lines()
        buf, start = self._buf, self._pos
        eol = buf.find(b"\n", start)
        if eol < 0:
            return None
        first = bytes(buf[start:eol])
        is_helo = first == b"HELO" or first.startswith(b"HELO ")
        keyword = b"HELO" if is_helo else request_keyword(first)
        shape = REPLY_SHAPES.get(keyword)
        if shape is None:
            return keyword, start, eol, eol + 1         # unknown: one line, Unparsed
        if keyword == b"CHAT":
            end = buf.find(b"\n\n", eol)
            return None if end < 0 else (keyword, start, end, end + 2)
        end = eol
        for _ in shape:
            end = buf.find(b"\n", end + 1)
            if end < 0:
                return None
        return keyword, start, end, end + 1


def _parse_reply(keyword: bytes, frame: bytearray) -> Reply:
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError:
        return Unparsed(frame.decode("utf-8", "replace"), "not UTF-8")
    shape = REPLY_SHAPES.get(keyword)
    if shape is None:
        return Unparsed(text, "not a reply this protocol has")
    lines = text.split("\n", len(shape))
    values = [lines[0].partition(":")[2].strip()] if keyword != b"HELO" else [lines[0]]
    for line, key in zip(lines[1:], shape):
        name, colon, value = line.partition(":")
        if not colon or name.strip() != key:
            return Unparsed(text, "expected a %s: line, got %r" % (key, line))
        values.append(value.strip() if keyword != b"HELO" else value)
    try:
        if keyword == b"CHAT":
            return ChatMessage(int(values[0]), values[1], values[2])
        if keyword == b"JOINED_CHATROOM":
            return JoinedReply(values[0], values[1], int(values[2]), int(values[3]),
                               int(values[4]))
        if keyword == b"LEFT_CHATROOM":
            join_id = values[1]
            if not (join_id.isascii() and join_id.isdigit()):
                raise ValueError(join_id)
            return LeftReply(int(values[0]), int(join_id) if len(join_id) < 4300 else join_id)
        if keyword == b"ERROR_CODE":
            return ErrorReply(int(values[0]), values[1])
        return HeloReply(values[0], values[1], int(values[2]), values[3])
    except ValueError:
        return Unparsed(text, "a number field is not a number")


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False                        # "" (unknown) or not an address: not loopback


def handle_other_message(conn_id: int, line: str) -> List[Action]:
    """The default handler for messages the protocol does not define: log, reply nothing.

    A reply would break real clients: the course's test client sends such a message and then
    reads the next reply it expects, so an unsolicited ERROR_CODE would be read in its place.
    Pass another function to ChatProtocol to process these messages.
    """
    # DEBUG, not INFO: a peer decides how many of these there are.
    LOGGER.debug("conn %d: ignoring unknown message %s", conn_id, _quote(line, 80))
    return []


# ---------------------------------------------------------------------------------------------
# The state machine: requests -> actions
# ---------------------------------------------------------------------------------------------

class _Session:
    """What the protocol remembers about one open connection."""
    __slots__ = ("framer", "local_ip", "peer_ip", "closing", "creations")

    def __init__(self, local_ip: str, peer_ip: str) -> None:
        self.framer = Framer()
        self.local_ip = local_ip      # our side of this connection, for HELO and JOINED
        self.peer_ip = peer_ip        # its side, for KILL_SERVICE's policy ("" if unknown)
        self.closing = False          # DISCONNECT or a fatal error: handle nothing more
        self.creations: Optional[TokenBucket] = None  # rooms it may create; made at its first


class ChatProtocol:
    """The whole server's protocol state: every connection's session and every room.

    The reactor drives it as a sansio.actions.App: connection_made / data_received /
    maybe_next_actions / pending_input / connections_lost; tests can also call handle() with a
    request directly.
    """

    def __init__(self, port: int, student_id: str, rooms: Optional[Rooms] = None,
                 on_other_message: Callable[[int, str], List[Action]] = handle_other_message,
                 kill_from: str = "any", clock: Callable[[], float] = time.monotonic
                 ) -> None:
        if kill_from not in KILL_FROM_CHOICES:
            raise ValueError("kill_from must be one of %s" % (KILL_FROM_CHOICES,))
        self.port = port                  # the listening port, reported by HELO and JOINED
        self.student_id = student_id
        self.rooms = rooms if rooms is not None else Rooms()
        self.on_other_message = on_other_message
        self.kill_from = kill_from
        self._clock = clock               # only for the room-creation limits
        self._sessions: Dict[int, _Session] = {}
        self._creations_by_address: Dict[str, TokenBucket] = {}
        self._memberships_by_address: Dict[str, int] = {}
        self._handlers: Dict[type, Callable[[int, Request], List[Action]]] = {
            Chat: self._on_chat, Join: self._on_join, Leave: self._on_leave,
            Disconnect: self._on_disconnect, Helo: self._on_helo, Kill: self._on_kill,
            Other: self._on_other,
        }

    # -- driven by the reactor -----------------------------------------------------------------

    def connection_made(self, conn_id: int, local_ip: str, peer_ip: str = "") -> None:
        self._sessions[conn_id] = _Session(local_ip, peer_ip)

    def data_received(self, conn_id: int, data: bytes) -> None:
        """Buffer bytes from the peer; requests are handled by maybe_next_actions()."""
        self._sessions[conn_id].framer.receive_data(data)

    def maybe_next_actions(self, conn_id: int) -> Optional[List[Action]]:
        """Handle the next complete request of `conn_id` and return its actions, or None when
        no complete request is buffered (or the connection is closing)."""
        session = self._sessions[conn_id]
        if session.closing:
            return None
        try:
            frame = session.framer.maybe_next_frame()
            if frame is None:
                return None
            # parse_request(), without its own call on the hot path: the plain-CHAT shortcut
            # first, the general parser for everything it leaves
            request = _maybe_parse_plain_chat(frame) or parse_request_in_general(frame)
        except RequestError as err:
            actions: List[Action] = [Send(conn_id, error_reply(err.code, err.description))]
            if err.code == ErrorCode.REQUEST_TOO_LONG:
                session.closing = True
                actions.append(Close(conn_id))
            return actions
        return self.handle(conn_id, request)

    def pending_input(self, conn_id: int) -> int:
        """How many bytes of `conn_id`'s input are buffered, not yet handled."""
        return self._sessions[conn_id].framer.buffered()

    def connections_lost(self, conn_ids: Sequence[int]) -> List[Action]:
        """These connections are gone (closed by either side, or broken). Each room they were
        in is told they left, in the order they are named and, for each, in ascending ROOM_REF
        order; nothing is sent to any of them any more.

        All of them leave before anything is announced, so the announcements go only to the
        members that remain, and a room's announcements go out as one message: a room of 8 000
        whose members all reset at once costs 8 000 leaves, not 8 000 x 8 000 deliveries."""
        left: Dict[int, List[bytes]] = {}          # ROOM_REF -> its announcements, in order
        for conn_id in conn_ids:
            session = self._sessions.pop(conn_id, None)
            rooms_left = self.rooms.drop(conn_id)
            for ref, name in rooms_left:
                left.setdefault(ref, []).append(chat_message(ref, name, LEFT_TEXT % name))
            if session is not None:
                self._count_left(session.peer_ip, len(rooms_left))
        actions: List[Action] = []
        for ref, announcements in left.items():
            remaining = self.rooms.member_ids(ref)
            if remaining:
                actions.append(Broadcast(remaining, b"".join(announcements)))
        return actions

    def connection_lost(self, conn_id: int) -> List[Action]:
        """connections_lost() for one connection, for drivers that learn of each loss on its
        own (such as asyncio's Protocol.connection_lost)."""
        return self.connections_lost((conn_id,))

    # -- requests ------------------------------------------------------------------------------

    def handle(self, conn_id: int, request: Request) -> List[Action]:
        """The actions for one request from `conn_id`; errors become an ERROR_CODE reply."""
        try:
            return self._handlers[type(request)](conn_id, request)
        except RequestError as err:
            return [Send(conn_id, error_reply(err.code, err.description))]

    def _on_chat(self, conn_id: int, req: Chat) -> List[Action]:
        members = self.rooms.maybe_members(req.ref)
        if members is None:
            raise self._unknown_room(req.ref)
        # Identity is the connection: req.join_id and req.client_name are not trusted.
        name = members.get(conn_id)
        if name is None:
            raise RequestError(ErrorCode.NOT_A_MEMBER,
                               "not a member of room %d: JOIN_CHATROOM %s first"
                               % (req.ref, _quote(self.rooms.name_of_room(req.ref))))
        return [Broadcast(tuple(members), chat_message(req.ref, name, req.message))]

    def _on_join(self, conn_id: int, req: Join) -> List[Action]:
        rooms = self.rooms
        ref = rooms.ref_of(req.room)
        session = self._admit_join(conn_id, req, ref)
        ref, join_id, newly_joined = rooms.join(conn_id, req.room, req.client_name)
        if newly_joined:
            self._count_joined(session.peer_ip)
        return self._joined(conn_id, req, ref, join_id, newly_joined)

    def _admit_join(self, conn_id: int, req: Join, ref: Optional[int],
                    count_creation: bool = True) -> _Session:
        """Check the limits a JOIN must pass (the room `ref` is None if it is new here) and
        count a room creation (unless not `count_creation`: the shared bus counts it once
        Redis says the room was new); raise RequestError if one is passed."""
        rooms = self.rooms
        if ref is None and rooms.is_full():
            raise RequestError(ErrorCode.TOO_MANY_ROOMS,
                               "the server has its maximum of %d rooms; join an existing one"
                               % rooms.max_rooms)
        if ((ref is None or rooms.name_in(conn_id, ref) is None)
                and rooms.count_rooms_of(conn_id) >= rooms.max_rooms_per_connection):
            raise RequestError(ErrorCode.TOO_MANY_MEMBERSHIPS,
                               "you are in %d rooms, the most one connection may be in; "
                               "leave one first" % rooms.max_rooms_per_connection)
        session = self._sessions[conn_id]
        by_address = self._memberships_by_address
        if ((ref is None or rooms.name_in(conn_id, ref) is None)
                and by_address.get(session.peer_ip, 0) >= MAX_MEMBERSHIPS_PER_ADDRESS):
            raise RequestError(ErrorCode.TOO_MANY_MEMBERSHIPS,
                               "connections from your address are in %d rooms, the most they "
                               "may be in together; leave one first" % MAX_MEMBERSHIPS_PER_ADDRESS)
        if ref is None and count_creation:
            self._take_room_creation(session)
        return session

    def _count_joined(self, peer_ip: str) -> None:
        by_address = self._memberships_by_address
        by_address[peer_ip] = by_address.get(peer_ip, 0) + 1

    def _joined(self, conn_id: int, req: Join, ref: int, join_id: int,
                newly_joined: bool) -> List[Action]:
        """The actions once `conn_id` is in room `ref`: its reply, then (the first time) the
        announcement to every member, itself included."""
        reply = joined_reply(req.room, self._sessions[conn_id].local_ip, self.port, ref, join_id)
        actions: List[Action] = [Send(conn_id, reply)]
        if req.names_a_callback():    # first, so that the reply already goes there
            actions.insert(0, Callback(conn_id, req.client_ip, req.port))
        if newly_joined:      # joining again: the same reply, no second announcement
            name = self.rooms.name_in(conn_id, ref)
            actions.append(Broadcast(self.rooms.member_ids(ref),
                                     chat_message(ref, name, JOINED_TEXT % name)))
        return actions

    def _on_leave(self, conn_id: int, req: Leave) -> List[Action]:
        ref = req.ref
        if not self.rooms.was_given(ref):       # a forgotten room is still answered
            raise self._unknown_room(ref)
        # The reply repeats for a room already left. Who leaves is the connection, whatever
        # JOIN_ID it quotes (nobody can leave for somebody else), and the JOIN_ID in the reply is
        # the one the server gave it; a connection that never joined gets its request's back.
        join_id = self.rooms.join_id_of(conn_id)
        reply = left_reply(ref, req.join_id if join_id is None else join_id)
        return [Send(conn_id, reply)] + self._leave(conn_id, ref, tell_self=True)

    def _on_disconnect(self, conn_id: int, req: Disconnect) -> List[Action]:
        self._sessions[conn_id].closing = True
        return self._leave_all(conn_id, tell_self=True) + [Close(conn_id)]

    def _on_helo(self, conn_id: int, req: Helo) -> List[Action]:
        reply = helo_reply(req.line, self._sessions[conn_id].local_ip, self.port, self.student_id)
        return [Send(conn_id, reply)]

    def _take_room_creation(self, session: _Session) -> None:
        """Count one room created by `session`, or refuse it if that passes the limits for the
        connection or for its address (ROOM_CREATION_BURST_PER_CONNECTION)."""
        refusal = self._room_creation_refusal(session)
        if refusal is not None:
            raise refusal
        self._spend_room_creation(session)

    def _spend_room_creation(self, session: _Session) -> None:
        """Count one room created by `session` (checked before: _room_creation_refusal)."""
        session.creations.tokens -= 1
        address = self._creations_by_address.get(session.peer_ip)
        if address is not None:
            address.tokens -= 1

    def _room_creation_refusal(self, session: _Session) -> Optional[RequestError]:
        """None if `session` may create a room now, else the error saying which limit it
        would pass. Takes nothing."""
        now = self._clock()
        if session.creations is None:
            session.creations = TokenBucket(ROOM_CREATION_BURST_PER_CONNECTION,
                                        ROOM_CREATIONS_PER_SECOND_PER_CONNECTION, now)
        by_address = self._creations_by_address
        address = by_address.get(session.peer_ip)
        if address is None:
            if len(by_address) >= ADDRESSES_REMEMBERED:     # forget the idle ones
                for ip in [ip for ip, b in by_address.items() if b.refill(now).tokens >= b.burst]:
                    del by_address[ip]
            address = by_address[session.peer_ip] = TokenBucket(
                ROOM_CREATION_BURST_PER_ADDRESS, ROOM_CREATIONS_PER_SECOND_PER_ADDRESS, now)
        for bucket, whose in ((session.creations.refill(now), "this connection"),
                              (address.refill(now), "your address")):
            if bucket.tokens < 1:
                return RequestError(ErrorCode.CREATING_ROOMS_TOO_FAST,
                                    "%s creates rooms too fast (at most %d at once, then %g a "
                                    "second); join an existing room, or wait"
                                    % (whose, bucket.burst, bucket.rate))
        return None

    def _on_kill(self, conn_id: int, req: Kill) -> List[Action]:
        peer = self._sessions[conn_id].peer_ip
        if self.kill_from == "none" or (self.kill_from == "loopback" and not _is_loopback(peer)):
            LOGGER.warning("conn %d: KILL_SERVICE from %s refused (--kill-from %s)", conn_id,
                           peer or "an unknown address", self.kill_from)
            raise RequestError(ErrorCode.KILL_NOT_ALLOWED,
                               "KILL_SERVICE is not accepted from %s on this server"
                               % ("anywhere" if self.kill_from == "none" else "your address"))
        LOGGER.info("conn %d: KILL_SERVICE from %s", conn_id, peer or "an unknown address")
        return [Shutdown()]

    def _on_other(self, conn_id: int, req: Other) -> List[Action]:
        return self.on_other_message(conn_id, req.line)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _unknown_room(ref: int) -> RequestError:
        return RequestError(ErrorCode.UNKNOWN_ROOM,
                            "no room has ROOM_REF %s; JOINED_CHATROOM tells you a room's ref"
                            % _quote(str(ref)))

    def _leave(self, conn_id: int, ref: int, tell_self: bool) -> List[Action]:
        """Take conn_id out of room `ref` and announce it (to itself too if tell_self)."""
        members = self.rooms.member_ids(ref)      # before it leaves: it is told too
        name = self.rooms.leave(conn_id, ref)
        if name is None:
            return []
        self._count_left(self._sessions[conn_id].peer_ip, 1)
        return self._announce_leave(conn_id, ref, name, members, tell_self)

    def _leave_all(self, conn_id: int, tell_self: bool) -> List[Action]:
        actions: List[Action] = []
        left = self.rooms.leave_all(conn_id)
        for ref, name, members in left:             # ascending ROOM_REF
            actions += self._announce_leave(conn_id, ref, name, members, tell_self)
        self._count_left(self._sessions[conn_id].peer_ip, len(left))
        return actions

    def _count_left(self, peer_ip: str, memberships: int) -> None:
        """Connections from `peer_ip` hold `memberships` fewer (MAX_MEMBERSHIPS_PER_ADDRESS)."""
        if memberships:
            held = self._memberships_by_address[peer_ip] - memberships
            if held:
                self._memberships_by_address[peer_ip] = held
            else:
                del self._memberships_by_address[peer_ip]

    @staticmethod
    def _announce_leave(conn_id: int, ref: int, name: str, members: Tuple[int, ...],
                        tell_self: bool) -> List[Action]:
        if not tell_self:
            members = tuple(m for m in members if m != conn_id)
        if not members:
            return []
        return [Broadcast(members, chat_message(ref, name, LEFT_TEXT % name))]
