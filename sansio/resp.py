"""A sans-IO Redis client core, RESP2: commands in, bytes out; bytes in, replies and events out.

Boundary: this module imports no socket, no selectors and no clock. It never reads, writes,
sleeps or blocks; whoever owns the socket moves the bytes. That is what lets a Redis connection
live inside the server's one-thread reactor, and lets every split of every reply be tested in
memory (the h11 "sans-IO" design).

Theory of operation, following one command and its reply:

    RedisConnection.send("GET", "k") --> bytes to write   (and one reply slot queued, FIFO)
    bytes read --RedisConnection.receive_data--> RespReader.feed (the input buffer)
               --RedisConnection.maybe_next_event--> RespReader.maybe_next --> one reply
               --matched against the oldest slot--> Reply(value), or, for pub/sub pushes,
                 Message / PMessage / Subscribed

How a reactor drives it:
- To issue commands, call send() (as often as you like: that is pipelining) and append the bytes
  it returns to the socket's output buffer; write them when the socket is writable.
- When the socket is readable, recv() what is there and pass it to receive_data(), then call
  maybe_next_event() until it returns NEED_DATA, handling each event. Replies come back in the
  order the commands were sent; each Reply belongs to the oldest command still waiting.
- When recv() returns b"" (the peer closed), the connection is over; commands still waiting
  (`pending`) will never be answered.
- RespProtocolError means the bytes are not RESP2 from a sane peer: close the socket. There is no
  resynchronising inside a byte stream we could not parse; the objects refuse to go on.

Replies, as Python values:
    +simple string  -> str           -error    -> RespError (a value, never raised)
    :integer        -> int           $bulk     -> bytes, $-1 -> None
    *array          -> list          *-1       -> None

Pub/sub (RESP2): after SUBSCRIBE or PSUBSCRIBE the server sends, for every channel or pattern
named, a confirmation array instead of one reply, and from then on unasked-for "message" and
"pmessage" arrays. RedisConnection turns those into Subscribed, Message and PMessage events and
keeps track of whether the connection is in subscribe mode (`subscribed`).

Not supported, on purpose (this project does not need them): RESP3 (we never send HELLO 3, so a
RESP3 type byte is a protocol error), inline commands, sharded pub/sub (SSUBSCRIBE), and
SUBSCRIBE inside MULTI/EXEC.
"""
import collections
import re
from dataclasses import dataclass
from typing import Any, Callable, Deque, List, NamedTuple, NoReturn, Optional, Set, Union

__all__ = [
    "NEED_DATA", "RespError", "RespProtocolError", "RespReader", "encode_command",
    "RedisConnection", "Reply", "Message", "PMessage", "Subscribed",
    "MAX_BULK_BYTES", "MAX_LINE_BYTES", "MAX_ARRAY_DEPTH", "MAX_ARRAY_ELEMENTS",
]

# ---------------------------------------------------------------------------------------------
# Limits: what a hostile or broken peer can make us hold. Nothing is allocated from an announced
# length before the bytes arrive, so these bound memory together with the bytes actually sent.
# ---------------------------------------------------------------------------------------------

# The longest bulk string we accept, in bytes. 512 MiB is Redis's own ceiling for a string value
# (its proto-max-bulk-len default), so a longer one cannot be a value Redis holds: it is a broken
# or hostile peer, and refusing at the header stops us buffering half a gigabyte and more.
MAX_BULK_BYTES = 512 * 1024 * 1024
# The longest line, CRLF included, we buffer while looking for its end: a simple string, an
# error, an integer or a length header. Redis's status and error replies are a few dozen bytes
# (an error from a Lua script names the script and line: still far under this). 64 KiB is
# Redis's own limit on an inline request; a peer that sends more without a CRLF is not speaking
# RESP.
MAX_LINE_BYTES = 64 * 1024
# How deeply arrays may nest. The deepest reply this project expects is XREAD inside EXEC
# (EXEC > XREAD > stream > entries > entry > fields: 6 levels); 16 leaves room for Lua scripts
# returning nested tables. Each level costs one list on our stack, and a peer sending "*1\r\n"
# forever would otherwise grow that stack for four bytes a level.
MAX_ARRAY_DEPTH = 16
# The most elements one array may announce. The biggest replies here are a room's member set or
# a bounded XRANGE, far below a million; a larger count is a broken peer, refused before it
# starts sending the elements (each of which costs a Python object of ~50 bytes for ~4 bytes of
# input).
MAX_ARRAY_ELEMENTS = 1024 * 1024

# Internal: the most digits a length header may have before it is certainly over a limit above.
_MAX_LENGTH_DIGITS = 10
# A RESP integer is a signed 64-bit number; anything wider is a protocol error.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_INTEGER = re.compile(rb"-?[0-9]{1,19}")
_LENGTH = re.compile(rb"-1|[0-9]{1,%d}" % _MAX_LENGTH_DIGITS)


# ---------------------------------------------------------------------------------------------
# Values and errors
# ---------------------------------------------------------------------------------------------

class _Sentinel:
    """A unique marker with a readable repr (compare with `is`)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# Returned by maybe_next() and maybe_next_event() when no whole reply is buffered yet.
NEED_DATA = _Sentinel("NEED_DATA")


@dataclass(frozen=True)
class RespError:
    """An error reply (-ERR ...): a value the command produced, not an exception, so that one
    failed command in a pipeline or an EXEC does not lose the replies around it."""
    message: str

    @property
    def kind(self) -> str:
        """The error's first word ("ERR", "WRONGTYPE", "NOSCRIPT", ...): what code branches on."""
        return self.message.split(" ", 1)[0]


class RespProtocolError(Exception):
    """The peer sent bytes that are not RESP2, or went past a limit. The connection must be
    closed: the reader cannot find the next reply's start in a stream it could not parse."""


def _fail(description: str) -> NoReturn:
    raise RespProtocolError(description)


# ---------------------------------------------------------------------------------------------
# Encoding: a command is an array of bulk strings
# ---------------------------------------------------------------------------------------------

def _as_bytes(arg: Any) -> bytes:
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode("utf-8")
    # bool is an int, but True as b"1" is a guess the caller should make, not us.
    if isinstance(arg, int) and not isinstance(arg, bool):
        return b"%d" % arg
    raise TypeError("a command argument must be str, bytes or int, not %s" % type(arg).__name__)


def encode_command(*args: Union[str, bytes, int]) -> bytes:
    """The RESP2 bytes of one command: an array of bulk strings. str is encoded as UTF-8, bytes
    are sent as they are, int as its decimal digits."""
    if not args:
        raise ValueError("a command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:        # (a call of the chats script has four arguments per chat: the common
        kind = type(arg)    # types first, without a call)
        if kind is str:
            data = arg.encode("utf-8")
        elif kind is int:
            data = b"%d" % arg
        else:
            data = _as_bytes(arg)
        append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# Decoding: the reply reader
# ---------------------------------------------------------------------------------------------

class _StaysBroken:
    """Once a RespProtocolError has been raised, every later call raises it again: after a
    protocol error the stream has no trustworthy next reply."""

    _broken: Optional[RespProtocolError] = None

    def _check_not_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    def _step(self, step: Callable[[], Any]) -> Any:
        """step(), remembering a protocol error it raises."""
        self._check_not_broken()
        try:
            return step()
        except RespProtocolError as err:
            self._broken = err
            raise


class RespReader(_StaysBroken):
    """Parses RESP2 replies from bytes fed in pieces of any size.

    Cost is linear in the bytes fed, however they are split: the buffer is never rescanned from
    its start. Three things make that so:
    - `_scan` remembers how far the search for a line's LF got, so a line arriving a byte at a
      time is searched once;
    - a bulk string's bytes are counted, not searched: once its header is read, `_bulk` holds its
      length and each feed only compares the buffer's length with it;
    - a half-built array waits on an explicit stack (`_stack`) of the lists being filled, so a
      reply split inside an array resumes where it stopped instead of starting over.
    Bytes already parsed are dropped from the buffer's front once they are at least half of it,
    so each byte is moved a bounded number of times.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0          # where the unparsed bytes start
        self._scan = 0         # where the search for the next LF resumes (>= _pos)
        self._bulk = -1        # length of the bulk string whose header is read; -1: none
        # Arrays being filled, innermost last: [the list so far, elements still to come].
        self._stack: List[list] = []

    def feed(self, data: bytes) -> None:
        """Append bytes read from the peer."""
        self._check_not_broken()
        self._buf += data

    def maybe_next(self) -> Any:
        """The next whole reply, or NEED_DATA. Raises RespProtocolError, then again on every
        later call: after a protocol error the stream has no trustworthy next reply."""
        return self._step(self._next)

    def _next(self) -> Any:
        if self._bulk < 0 and not self._stack:
            value = self._take_flat()
            if value is not NEED_DATA:
                self._compact()
                return value
        while True:
            if self._bulk >= 0:
                value = self._take_bulk()
            else:
                line = self._take_line()
                value = NEED_DATA if line is None else self._parse_line(line)
            if value is NEED_DATA:
                self._compact()
                return NEED_DATA
            if value is _ARRAY_STARTED or value is _BULK_STARTED:
                continue
            # A whole value: it completes the innermost array's element, and maybe that array,
            # and maybe the one holding it, and so on up.
            while self._stack:
                top = self._stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                self._stack.pop()
                value = top[0]
            else:
                self._compact()
                return value

    def _take_flat(self) -> Any:
        """An array of small bulk strings already whole in the buffer (a published message, a
        chats script's reply), read in one pass: a match an element instead of a call a line.
        NEED_DATA for anything else, nothing taken: the general path reads it (and judges it)."""
        buf = self._buf
        head = _FLAT_ARRAY.match(buf, self._pos)
        if head is None:
            return NEED_DATA
        pos = head.end()
        items = []
        for _ in range(int(head.group(1))):
            bulk = _SMALL_BULK.match(buf, pos)
            if bulk is None:
                return NEED_DATA
            start = bulk.end()
            end = start + int(bulk.group(1))
            if buf[end:end + 2] != b"\r\n":
                return NEED_DATA
            items.append(bytes(buf[start:end]))
            pos = end + 2
        self._pos = self._scan = pos
        return items

    def _take_line(self) -> Optional[bytes]:
        """The next line without its CRLF, or None if its LF has not arrived."""
        end = self._buf.find(b"\n", self._scan)
        if end < 0:
            # No LF yet: if it came next, would the line still fit?
            if len(self._buf) - self._pos >= MAX_LINE_BYTES:
                _fail("a line longer than MAX_LINE_BYTES (%d)" % MAX_LINE_BYTES)
            self._scan = len(self._buf)
            return None
        if end + 1 - self._pos > MAX_LINE_BYTES:
            _fail("a line longer than MAX_LINE_BYTES (%d)" % MAX_LINE_BYTES)
        line = bytes(self._buf[self._pos:end])
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            _fail("a line not ended by exactly one CRLF: %r" % line[:60])
        self._pos = self._scan = end + 1
        return line[:-1]

    def _take_bulk(self) -> Any:
        """The bulk string whose header has been read, or NEED_DATA until all of it is here."""
        start = self._pos
        end = start + self._bulk
        if len(self._buf) < end + 2:
            return NEED_DATA
        if self._buf[end:end + 2] != b"\r\n":
            _fail("a bulk string of %d bytes not followed by CRLF" % self._bulk)
        # One copy, straight out of the buffer (a bytearray slice would be a second one: for
        # a reply of hundreds of megabytes that matters).
        view = memoryview(self._buf)
        try:
            value = view[start:end].tobytes()
        finally:
            view.release()
        self._pos = self._scan = end + 2
        self._bulk = -1
        return value

    def _parse_line(self, line: bytes) -> Any:
        """A line's value; or, for a bulk or array header, note what follows and return a
        marker saying so."""
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            # Text by definition (Redis sends ASCII here); a broken peer's bytes cannot raise.
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RespError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return _parse_integer(rest)
        if kind == b"$":
            length = _parse_length(rest, MAX_BULK_BYTES, "bulk string", "MAX_BULK_BYTES")
            if length < 0:
                return None
            self._bulk = length
            return _BULK_STARTED
        if kind == b"*":
            count = _parse_length(rest, MAX_ARRAY_ELEMENTS, "array", "MAX_ARRAY_ELEMENTS")
            if count < 0:
                return None
            if count == 0:
                return []
            if len(self._stack) >= MAX_ARRAY_DEPTH:
                _fail("arrays nested deeper than MAX_ARRAY_DEPTH (%d)" % MAX_ARRAY_DEPTH)
            self._stack.append([[], count])
            return _ARRAY_STARTED
        if not kind:
            _fail("an empty line where a reply should start")
        _fail("unknown reply type byte %r (RESP2 has + - : $ *)" % kind)

    def _compact(self) -> None:
        """Drop parsed bytes from the buffer's front once they are at least half of it."""
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._scan -= self._pos
            self._pos = 0


# What RespReader._take_flat reads: up to 99 elements, each a bulk string under 10 MB (well
# within the limits above; anything else goes the general way).
_FLAT_ARRAY = re.compile(rb"\*([1-9][0-9]?)\r\n")
_SMALL_BULK = re.compile(rb"\$(0|[1-9][0-9]{0,6})\r\n")

# Markers from RespReader._parse_line: a header was read and its body is still to come.
_ARRAY_STARTED = _Sentinel("_ARRAY_STARTED")
_BULK_STARTED = _Sentinel("_BULK_STARTED")


def _parse_integer(text: bytes) -> int:
    # Checked by hand because int() also takes "+1", " 1", "1_000" and 5000-digit numbers.
    if not _INTEGER.fullmatch(text):
        _fail("not a RESP integer: %r" % text[:60])
    value = int(text)
    if not _INT64_MIN <= value <= _INT64_MAX:
        _fail("an integer outside 64 bits: %r" % text)
    return value


def _parse_length(text: bytes, limit: int, what: str, limit_name: str) -> int:
    """A bulk or array length: -1 (null) or 0..limit."""
    if not _LENGTH.fullmatch(text):
        _fail("not a valid %s length: %r" % (what, text[:60]))
    value = int(text)
    if value > limit:
        _fail("%s of %d, over %s (%d)" % (what, value, limit_name, limit))
    return value


# ---------------------------------------------------------------------------------------------
# The connection: replies matched to commands, pub/sub pushes turned into events
# ---------------------------------------------------------------------------------------------

# The events are named tuples: immutable, compared field by field, and cheap to build (one per
# reply and per message published). Being tuples, they also equal a plain tuple of the same
# values: compare events with events.

# The reply to the oldest command still waiting.
Reply = NamedTuple("Reply", [("value", Any)])
# A message published on a channel this connection subscribed to.
Message = NamedTuple("Message", [("channel", bytes), ("data", bytes)])
# A message published on `channel`, which matched the subscribed `pattern`.
PMessage = NamedTuple("PMessage", [("pattern", bytes), ("channel", bytes), ("data", bytes)])
# The server's confirmation of one channel or pattern in a (P)SUBSCRIBE or (P)UNSUBSCRIBE.
# `kind` is "subscribe", "unsubscribe", "psubscribe" or "punsubscribe"; `count` is how many
# channels and patterns the connection is subscribed to now (0: it has left subscribe mode).
# `channel` is None for an UNSUBSCRIBE of everything when there was nothing to leave.
Subscribed = NamedTuple("Subscribed", [("kind", str), ("channel", Optional[bytes]),
                                       ("count", int)])

Event = Union[Reply, Message, PMessage, Subscribed]

_PUBSUB_COMMANDS = ("SUBSCRIBE", "UNSUBSCRIBE", "PSUBSCRIBE", "PUNSUBSCRIBE")
_CONFIRMATIONS = (b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe")


class _Waiting:
    """One command waiting for its answer: one reply, or for a pub/sub command, `confirmations`
    confirmation arrays (one per channel or pattern)."""
    __slots__ = ("name", "confirmations")

    def __init__(self, name: str, confirmations: int) -> None:
        self.name = name
        self.confirmations = confirmations


class RedisConnection(_StaysBroken):
    """The client side of one Redis connection, without the socket (see the module docstring
    for how a reactor drives it)."""

    def __init__(self) -> None:
        self._reader = RespReader()
        self._waiting: Deque[_Waiting] = collections.deque()
        # The channels and patterns we will be subscribed to once the server has worked through
        # every command sent so far. Only an UNSUBSCRIBE of everything needs this: the server
        # then confirms once per channel it drops, so we must know how many that will be.
        self._channels: Set[bytes] = set()
        self._patterns: Set[bytes] = set()
        # How many channels and patterns the server last said we are subscribed to.
        self._count = 0

    @property
    def subscribed(self) -> bool:
        """True while the server holds this connection in subscribe mode (as of the events
        handed out so far). In that mode RESP2 allows only the pub/sub commands, PING, QUIT and
        RESET; anything else gets an error reply."""
        return self._count > 0

    @property
    def pending(self) -> int:
        """How many commands sent are still waiting for their reply (or confirmations)."""
        return len(self._waiting)

    def send(self, *args: Union[str, bytes, int]) -> bytes:
        """The bytes of one command, to be written in order with the others. Queues the slot its
        reply will fill."""
        data = encode_command(*args)
        name = _as_bytes(args[0]).decode("utf-8", "replace").upper()
        confirmations = 1
        if name in _PUBSUB_COMMANDS:
            confirmations = self._expect_confirmations(name, [_as_bytes(a) for a in args[1:]])
        self._waiting.append(_Waiting(name, confirmations))
        return data

    def _expect_confirmations(self, name: str, targets: List[bytes]) -> int:
        """How many confirmation arrays the server will send for this pub/sub command, keeping
        track of what we will be subscribed to afterwards."""
        names = self._patterns if name.startswith("P") else self._channels
        if name.endswith("UNSUBSCRIBE") and not targets:
            # One per channel (or pattern) dropped; one with a null channel if there was none.
            dropped = len(names)
            names.clear()
            return max(dropped, 1)
        if name.endswith("UNSUBSCRIBE"):
            names.difference_update(targets)
        else:
            names.update(targets)
        # One per name given, even repeated ones. None given is an error reply: still one.
        return max(len(targets), 1)

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the socket."""
        self._check_not_broken()
        self._reader.feed(data)

    def maybe_next_event(self) -> Union[Event, _Sentinel]:
        """The next event (Reply, Message, PMessage, Subscribed) or NEED_DATA. Raises
        RespProtocolError if the peer is not speaking RESP2 or answers what was never asked;
        then again on every later call, as the reader does: replies can no longer be matched."""
        return self._step(self._next_event)

    def _next_event(self) -> Union[Event, _Sentinel]:
        value = self._reader.maybe_next()
        if value is NEED_DATA:
            return NEED_DATA
        head = self._waiting[0] if self._waiting else None
        if self.subscribed and _is_push(value, b"message", 3):
            return Message(value[1], value[2])
        if self.subscribed and _is_push(value, b"pmessage", 4):
            return PMessage(value[1], value[2], value[3])
        if head is not None and head.name in _PUBSUB_COMMANDS and not isinstance(value, RespError):
            return self._confirmation(head, value)
        if head is None:
            _fail("a reply with no command waiting for it: %r" % (value,))
        self._waiting.popleft()
        if head.name == "RESET" and value == "RESET":
            # RESET leaves subscribe mode along with everything else.
            self._channels.clear()
            self._patterns.clear()
            self._count = 0
        return Reply(value)

    def _confirmation(self, head: _Waiting, value: Any) -> Subscribed:
        kind = value[0] if isinstance(value, list) and len(value) == 3 else None
        if (kind not in _CONFIRMATIONS or not isinstance(value[2], int)
                or kind.decode("ascii").upper() != head.name):
            _fail("%s waiting, but got %r" % (head.name, value))
        head.confirmations -= 1
        if not head.confirmations:
            self._waiting.popleft()
        self._count = value[2]
        return Subscribed(kind.decode("ascii"), value[1], value[2])


def _is_push(value: Any, kind: bytes, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and value[0] == kind
