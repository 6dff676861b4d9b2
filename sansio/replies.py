"""Reading the server's output: bytes -> replies, for clients, tools and tests.

Boundary: no I/O; the mirror of sansio/wire.py's Framer and parse_request for the other
direction, built on its shapes (REPLY_SHAPES) and its keyword rule (request_keyword).

    bytes --ReplyReader.receive_data--> buffer --maybe_next_reply--> a reply (HeloReply,
          JoinedReply, LeftReply, ErrorReply, ChatMessage; Unparsed for anything else)
"""
from typing import NamedTuple, Optional, Tuple, Union

from sansio.wire import REPLY_SHAPES, request_keyword

# The mirror of Framer + parse_request, for the other direction. ReplyReader is sans-IO too:
# receive_data() only buffers, maybe_next_reply() returns the next whole reply or None. Replies
# are named tuples, one per kind, with the reply's fields in the order the protocol sends them:
# immutable and cheap to build. Being tuples, they also equal a plain tuple (or a reply of another
# kind) with the same values: where that could hide a wrong kind, check the kind too.

# `line` is the request's "HELO text" line, echoed.
HeloReply = NamedTuple("HeloReply", [("line", str), ("ip", str), ("port", int),
                                     ("student_id", str)])
JoinedReply = NamedTuple("JoinedReply", [("room", str), ("server_ip", str), ("port", int),
                                         ("ref", int), ("join_id", int)])
# `join_id` is an int; the digits as sent when there are more than int() takes (4 300: only an
# echo, to a connection that never joined, of a JOIN_ID that long).
LeftReply = NamedTuple("LeftReply", [("ref", int), ("join_id", Union[int, str])])
ErrorReply = NamedTuple("ErrorReply", [("code", int), ("description", str)])
# A chat, or a join or leave announcement (JOINED_TEXT, LEFT_TEXT), in room `ref`.
ChatMessage = NamedTuple("ChatMessage", [("ref", int), ("client_name", str), ("message", str)])
# Server output that is none of the above, or a known kind with wrong fields: never sent by this
# server, so a client should treat it as the server's fault. `text` is the message as received
# (one line for an unknown first line).
Unparsed = NamedTuple("Unparsed", [("text", str), ("reason", str)])

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
                     or buf.count(text_suffix.encode("utf-8") + b"\n\n", pos, end) == count)):
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
