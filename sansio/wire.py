"""The chat wire codec: bytes <-> requests, and the builders of every message.

Boundary: this module does no I/O and keeps no state beyond one Framer's buffer. It imports
only the standard library: the protocol (protocol.py), the room service (rooms.py, cluster/)
and every tool and test build and read the wire through it, and sansio/replies.py reads the
server's output with its shapes.

Theory of operation, following one request in (the sans-IO design of h11, the HTTP library):

    bytes --Framer.receive_data--> input buffer
          --Framer.maybe_next_frame--> one frame (the bytes of one request)
          --parse_request--> a request (Helo, Kill, Join, Leave, Chat, Disconnect, Other)

and a reply out: a builder (joined_reply, chat_message, error_reply, ...) gives its bytes.

In this file, top to bottom: limits; errors; the wire format (shapes and builders); framing;
requests and their parser; a JOIN's callback address.

Rules of this file:
- Framing is decided by the first line's keyword alone (docs/PROTOCOL.md, "Framing").
- Every error a peer can cause is a RequestError, raised where it is found, with a code from the
  one table (`ErrorCode`); the protocol turns it into an ERROR_CODE reply with `error_reply`.
"""
import enum
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

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
    TOO_MANY_MEMBERSHIPS = 11  # one more membership would pass a limit of rooms.py: this
                               # connection's, its address's, or the server's (MAX_MEMBERSHIPS)
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



def quote(text: str, limit: int = 40) -> str:
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
    """Speed shortcut 1 of 3 (docs/PERFORMANCE.md): a frame that starts with exactly "CHAT:"
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
        if self._buf:
            self._buf += data
        else:                     # (b"" once all was handled: ChatProtocol.pending_input)
            self._buf = bytearray(data)

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

    def maybe_take_plain_chat(self) -> Optional["Chat"]:
        """Speed shortcut 3 of 3 (docs/PERFORMANCE.md): the next request, when it is a complete
        plain CHAT (maybe_parse_plain_chat's), framed and parsed by one match on the buffer; or
        None for anything else, which maybe_next_frame() and the parsers then take. Tried only
        at the start of a frame, so a CHAT trickling in is searched once, by maybe_next_frame()
        (tests/test_wire.py: test_taking_a_plain_chat_agrees_with_framing_and_parsing)."""
        if self._end:
            return None
        plain = _PLAIN_CHAT_IN_BUFFER.match(self._buf)
        if plain is None or plain.end(4) > self.max_request:
            return None
        chat = _maybe_chat_of(plain)
        if chat is not None:
            del self._buf[:plain.end()]
            self._scanned = 0
        return chat

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
# Requests (and the actions in sansio/actions.py) are small dataclasses with __slots__, built
# once and never changed. They are not frozen=True: a frozen dataclass sets each field through
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
    port: str              # name the callback address (docs/UDP.md): maybe_callback_address

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
                               % (kind, key, index + 1, quote(lines[index])))
        values.append(value.strip())
    return values


def _digits(value: str, key: str) -> str:
    # isdigit() alone admits other scripts' digits, and int() would admit "+1", "1_0" and
    # " 1 ": the protocol means plain ASCII digits.
    if not (value.isascii() and value.isdigit()):
        raise RequestError(ErrorCode.BAD_INTEGER,
                           "%s must be a non-negative integer, got %s" % (key, quote(value)))
    return value


def _room_ref(value: str) -> int:
    digits = _digits(value, "ROOM_REF").lstrip("0") or "0"
    if len(digits) > 18:
        # More than any ref can have. Not int(): it is quadratic in the digits on the Pythons
        # that lack a limit on it, and refuses over 4300 digits on those that have one (leading
        # zeros count: they are stripped first for that reason).
        raise RequestError(ErrorCode.UNKNOWN_ROOM, "no room has ROOM_REF %s" % quote(value))
    return int(digits)


def _non_empty(value: str, code: ErrorCode, key: str) -> str:
    if not value:
        raise RequestError(code, "%s must not be empty" % key)
    return value


_PLAIN_CHAT_HEAD = (rb"CHAT:[ \t]*([0-9]{1,18})[ \t]*\nJOIN_ID:[ \t]*([0-9]+)[ \t]*\n"
                    rb"CLIENT_NAME:([^\n]*)\nMESSAGE:")
_PLAIN_CHAT = re.compile(_PLAIN_CHAT_HEAD + rb"(.*)", re.DOTALL)        # a frame
# A whole plain CHAT at the head of a Framer's buffer: its MESSAGE, lines after the first not empty
# (what (.*?)\n\n takes at twice the cost), ends at the first blank line, where the framer cuts
# it. Blank lines before it are the framer's to skip (maybe_take_plain_chat leaves one there).
_PLAIN_CHAT_IN_BUFFER = re.compile(_PLAIN_CHAT_HEAD + rb"([^\n]*(?:\n[^\n]+)*)\n\n")


def maybe_parse_plain_chat(frame: bytes) -> Optional[Chat]:
    """Speed shortcut 2 of 3 (docs/PERFORMANCE.md): a well-formed CHAT spaced with plain
    spaces, the request that arrives a thousand times for any other, parsed by one match of
    _PLAIN_CHAT (in C) instead of the general parser's decode, splits and field checks. It only
    ever accepts what the general parser accepts, with the same result, and returns None for
    everything else, errors included, which then take the general way
    (tests/test_wire.py: test_plain_chat_shortcut_agrees_with_the_general_parser)."""
    plain = _PLAIN_CHAT.match(frame)
    return None if plain is None else _maybe_chat_of(plain)


def _maybe_chat_of(plain: "re.Match[bytes]") -> Optional[Chat]:
    """The Chat a match of _PLAIN_CHAT (or _PLAIN_CHAT_IN_BUFFER) holds; None if a field needs
    the general parser's word (an empty name, invalid UTF-8)."""
    ref, join_id, name_bytes, message = plain.groups()
    try:
        name = name_bytes.decode("utf-8").strip()
        if name:
            return Chat(int(ref), join_id.decode("ascii"), name, message.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        pass                                # the general way says what is wrong
    return None


def parse_request(frame: bytes) -> Request:
    """Turn one frame into a request. Raises RequestError for a malformed request of a known
    kind; a first line of no known kind becomes Other (which is not an error)."""
    return maybe_parse_plain_chat(frame) or parse_request_in_general(frame)


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
    # callback address, parsed as the JOIN is answered (maybe_callback_address: a value that
    # does not parse sends no callback) and checked by the transport that carries it out.
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
# A JOIN's callback address
# ---------------------------------------------------------------------------------------------

def maybe_callback_address(client_ip: str, port: str) -> Optional[Tuple[str, int]]:
    """The callback address a JOIN_CHATROOM names (docs/UDP.md, "Callback addresses"): None
    when it means "my source address" (CLIENT_IP 0 or PORT 0, as the protocol's "0 for TCP").
    Raises ValueError for anything that is not an IP literal and a port 0..65535 (no host
    names: resolving one would block the loop and let a JOIN aim us anywhere)."""
    client_ip, port = client_ip.strip(), port.strip()
    if not port.isdigit() or int(port) > 65535:
        raise ValueError("PORT must be an integer 0..65535")
    if client_ip == "0" or int(port) == 0:
        return None
    return (str(ipaddress.ip_address(client_ip)), int(port))
