"""Fuzz a live chat server: random valid and invalid requests, then checks that it survived,
still answers, and still keeps its rooms straight.

    python3 -m tools.fuzz --spawn --count 100000 --seed 1
    python3 -m tools.fuzz --host 127.0.0.1 --port 8080 --seconds 60

It sends batches of --batch requests over a pool of connections in one kit.Loop: every request
kind (KILL_SERVICE only with --allow-kill, once, at the very end), unknown lines, random bytes;
mutated (fields dropped, duplicated, swapped or misnamed, bad or enormous integers, empty names,
NUL bytes, invalid UTF-8, stray blank lines, CR/LF variants, requests cut short, values past
MAX_REQUEST_BYTES); each send() a random 1 byte to 64 KiB; part of a request and then
RST or FIN; bursts of up to --burst one-request connections; connections that never read;
floods of large chats into one room. It checks that:
- after every batch a fresh connection gets a HELO reply within --helo-timeout ("hang"), and a
  spawned server still runs ("server_exited");
- everything the server sends parses (ReplyReader); a room name keeps one ROOM_REF
  and a ROOM_REF one name; a connection keeps one JOIN_ID and no two share one;
- "probe" connections (kit.Probers), whose requests (restyled and split at random) have known
  answers, get exactly the predicted replies in order: JOINED with the right ref and id, own
  announcements, own chats echoed once, the documented ERROR_CODE for each malformed request
  (12 for a control or format character in a name), nothing for an unknown line, LEFT_CHATROOM
  with the server's JOIN_ID, leave announcements and the close after DISCONNECT, and no chat of
  a room it is not in;
- a request of exactly the size limit gets the same answer however it is split;
- at the end, the rooms agree: a "checker" joins every room learnt of; three "observers" join
  them all, then one LEAVEs them all, one DISCONNECTs, one vanishes (RST): the checker must see
  all three leave every room; then it chats in every room, and every probe in one must get that
  chat exactly once.
The summary's figures: requests by kind (counted when queued), ERROR_CODEs by code, disconnects,
the segmentation table, the server's RSS before and after (with --spawn). Rooms are known only
from JOINED_CHATROOM replies read; only the probes' replies are predicted, of the rest the form
is checked.
"""
import argparse
import collections
import contextlib
import itertools
import os
import random
import socket
import sys
if not __package__:   # run as a script (python3 tools/X.py) from any folder: find the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import time
from typing import Callable, Dict, List, Optional, Tuple

from sansio.replies import ChatMessage, ErrorReply, HeloReply, JoinedReply, ReplyReader, Unparsed
from sansio.wire import (MAX_NAME_CHARS, MAX_REQUEST_BYTES, REQUEST_SHAPES, ErrorCode,
                         chat_request, helo_request, join_request, kill_request)
from tools import kit

# --- settings (each a default for a command-line option, or a bound on a wait) ----------------
DEFAULT_COUNT = 10000
DEFAULT_SECONDS = 600.0
DEFAULT_BATCH = 200                # requests between two health checks
DEFAULT_POOL = 32                  # chaos connections kept open
DEFAULT_PROBES = 6                 # probe connections kept open
DEFAULT_BURST = 200                # the most connections opened at once in a burst
DEFAULT_FRESH_ROOMS = 50           # room names beyond the fixed list (rooms are never freed)
HELO_TIMEOUT = 5.0                 # a health check slower than this is a hang
BATCH_TIMEOUT = 20.0               # the longest one batch may take to send and be answered
QUIET = 0.02                       # a batch is over when nothing arrived for this long
DRAIN_TIMEOUT = 20.0               # the longest any end-of-run check waits for replies
SPLIT_PAUSE = 0.2                  # between the two halves of a split request
# The longest reply an honest server sends: a CHAT relays the text of one request under the
# CLIENT_NAME of another (each at most MAX_REQUEST_BYTES), plus the field names.
MAX_SERVER_MESSAGE = 2 * MAX_REQUEST_BYTES + 1024

# Chances per request (chaos traffic). The rest of the batch is made of ordinary requests.
P_PROBE = 0.15                     # the request goes to a probe
P_VANISH = 0.006                   # a chaos connection sends part of a request and RSTs
P_HALF_CLOSE = 0.003               # ... or closes normally (FIN)
P_OVERSIZE = 0.002                 # a request past MAX_REQUEST_BYTES
P_MUTATE = 0.5                     # an ordinary request gets 1-3 mutations
P_NON_READER = 0.1                 # a new chaos connection never reads
# Chances per batch.
P_BURST = 0.08
P_FLOOD = 0.03

FINAL_PREFIX = "final-check"
PROBE_LINE_BYTES = 16 * 1024       # the longest line of a probe's chat

ROOM_NAMES = ["room1", "room2", "room3", "lobby", "Room1", "ROOM1", "general chat", "ünïcödé",
              "日本語の部屋", "emoji 🎉🐍", "a", "0", "12", "CHAT", "JOIN_CHATROOM",
              "semi:colon", "x" * MAX_NAME_CHARS, "'quoted'", "back\\slash",
              "rtl \u05e9\u05dc\u05d5\u05dd", "MESSAGE: no"]
CLIENT_NAMES = ["alice", "bob", "carol", "dave", "Ωmega", "名前", "x" * MAX_NAME_CHARS, "CHAT: 0",
                "MESSAGE: hi", "has joined", "sp ace", "emoji 🐍"]
UNKNOWN_LINES = [b"WHATEVER", b"HELLO there", b"HELO_X", b"JOIN_CHATROO: x", b"CHATROOM: 1",
                 b"QUIT", b"LIST", b"PING", b"JOIN", b"CHAT", b"LEAVE", b"\t", b"::::",
                 b"DISCONNECT", b"MESSAGE: orphan", b"CLIENT_NAME: x", b"JOIN_ID: 3", b"helo x",
                 b"\x00", b"X" * 1000]
BAD_INTEGERS = ["", "x", "-1", "+1", "1.5", "0x10", "1_0", "1e3", "\u0661\u0662", "١", "1 2",
                "9" * 30, "9" * 5000, str(2 ** 64), "0" * 100 + "1", "\x00", "NaN"]
BAD_UTF8 = [b"\xff", b"\xfe", b"\xc3", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1",
            b"\xf0\x28\x8c\xbc", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"]
# Characters for random text: mostly ASCII, then other scripts, emoji, combining marks,
# zero-width and other unusual code points that str.strip() or splitlines() treat specially.
# The ASCII capitals lack K, so random text can never spell KILL_SERVICE.
ALPHABETS = ["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJLMNOPQRSTUVWXYZ 0123456789 "
             ".,!?-_:;'\"()",
             "äöüßéèçñøåæ", "ЖжЩщЯя", "日本語中文한국어", "🎉🐍👍🏽",
             "\u0301\u0308\u200b\u200d\ufeff",
             "\x85\u2028\u2029\x1c\x1d\x1e\x1f\x0b\x0c\t\x07\x1b\x00"]
ALPHABET_WEIGHTS = [70, 6, 5, 5, 4, 5, 5]
# How many bytes one send() takes (from, to), and how often each range is used.
SEGMENT_SIZES = [(1, 1), (2, 64), (65, 4096), (4097, 64 * 1024)]
SEGMENT_WEIGHTS = [15, 25, 30, 30]
# The line ends of a chaos request, and how often each kind is used: LF, CRLF, the two mixed
# line by line, or with lone CRs and LFCRs too (a lone CR is not a line end).
LINE_ENDINGS = [[b"\n"], [b"\r\n"], [b"\n", b"\r\n"], [b"\n", b"\r\n", b"\r", b"\n\r"]]
LINE_ENDING_WEIGHTS = [60, 25, 10, 5]


def random_text(rng: random.Random, max_len: int) -> str:
    """Random text, mostly short, from ALPHABETS (may contain whitespace and control codes,
    never CR or LF)."""
    length = min(max_len, int(rng.expovariate(1 / 12)))
    alphabets = rng.choices(ALPHABETS, ALPHABET_WEIGHTS, k=length)
    return "".join(rng.choice(alphabet) for alphabet in alphabets)


def segment_size(rng: random.Random) -> int:
    """How many bytes the next send() may take: 1 byte to 64 KiB, small sizes often."""
    return rng.randint(*rng.choices(SEGMENT_SIZES, SEGMENT_WEIGHTS)[0])


def line_ending(rng: random.Random) -> bytes:
    return b"\r\n" if rng.random() < 0.3 else b"\n"


def shaped(keyword: bytes, first: bytes, values: List[bytes]) -> List[bytes]:
    """The lines of a request of kind `keyword`, its keys from REQUEST_SHAPES."""
    return [keyword + b": " + first] + [key.encode() + b": " + value for key, value
                                        in zip(REQUEST_SHAPES[keyword], values)]


def restyle(rng: random.Random, request: bytes) -> bytes:
    """`request`, made by a protocol builder, written another valid way: random white space
    after each field's colon and after its value, and LF or CRLF line ends."""
    sep = rng.choice([b": ", b":", b":  ", b":\t"])
    pad = rng.choice([b"", b"", b" ", b" \t"])
    ending = line_ending(rng)
    head, is_chat, message = request.partition(b"\nMESSAGE: ")
    fields = [line.replace(b": ", sep, 1) + pad for line in head.rstrip(b"\n").split(b"\n")]
    if is_chat:         # the text's own line ends change too; it trims to itself
        fields.append(b"MESSAGE: " + message[:-2].replace(b"\n", ending) + ending)
    return ending.join(fields) + ending


class FuzzConn(kit.Conn):
    """A connection with what the fuzzer needs to know about it."""

    def __init__(self, label: str, reading: bool = True) -> None:
        super().__init__()
        self.label, self.reading = label, reading
        self.tail = b""                       # the last bytes queued (for the KILL guard)
        self.done = False                     # a probe: disconnected as predicted, or given up


# --- Chaos traffic: random requests, valid and not -------------------------------------------

class RequestMaker:
    """Random requests as bytes: the Fuzzer's part that uses its `rng`, its `book` (what it has
    learnt of rooms and JOIN_IDs) and its `rooms` (the names it joins)."""

    KINDS = ["HELO", "JOIN", "LEAVE", "CHAT", "DISCONNECT", "UNKNOWN", "GARBAGE", "BLANK"]
    WEIGHTS = [8, 22, 14, 34, 3, 9, 6, 4]

    def make(self, conn: "FuzzConn") -> Tuple[str, bytes]:
        rng = self.rng
        kind = rng.choices(self.KINDS, self.WEIGHTS)[0]
        if kind == "GARBAGE":
            length = rng.randint(1, 200)
            return kind, rng.getrandbits(8 * length).to_bytes(length, "little")
        if kind == "BLANK":
            return kind, rng.choice([b"\n", b"\r\n", b"\n\n\n", b"\r\n\r\n", b" \n"])
        lines = self.lines(kind, conn)
        if rng.random() < P_MUTATE:
            for _ in range(rng.randint(1, 3)):
                lines = self.mutate(kind, lines)
        endings = rng.choices(LINE_ENDINGS, LINE_ENDING_WEIGHTS)[0]
        data = b"".join(line + rng.choice(endings) for line in lines)
        if rng.random() < 0.03:               # cut short: the stream runs into the next request
            data = data[:rng.randint(0, len(data))]
        if rng.random() < 0.05:
            data = rng.choice([b"\n", b"\r\n", b"\n\n"]) + data
        return kind, data

    def oversize(self) -> bytes:
        """A request past MAX_REQUEST_BYTES: ERROR_CODE 8 and a closed connection expected."""
        body = "y" * (MAX_REQUEST_BYTES + self.rng.randint(1, 4096))
        return self.rng.choice([helo_request(body), chat_request(0, 1, "x", body),
                                join_request(body, "x"), body.encode()])    # last: no newline

    def _text(self, choices: List[str], p_random: float, max_len: int) -> bytes:
        """One of `choices`, or with chance `p_random` random text (may be empty: error 3)."""
        if self.rng.random() < p_random:
            return random_text(self.rng, max_len).encode("utf-8")
        return self.rng.choice(choices).encode("utf-8")

    def _integer(self, good: List[int], p_good: float, most: int) -> bytes:
        """One of `good` with chance `p_good`, else 0 to `most`, or a malformed integer."""
        roll = self.rng.random()
        if roll < p_good and good:
            return str(self.rng.choice(good)).encode()
        if roll < 0.75:
            return str(self.rng.randint(0, most)).encode()
        return self.rng.choice(BAD_INTEGERS).encode("utf-8")

    def _name(self) -> bytes:
        return self._text(CLIENT_NAMES, 0.2, 30)

    def _ref(self) -> bytes:
        return self._integer(list(self.book.refs.values()), 0.55, 30)

    def _join_id(self, conn: "FuzzConn") -> bytes:
        join_id = self.book.join_ids.get(conn.label)
        return self._integer([] if join_id is None else [join_id], 0.5, 100)

    def lines(self, kind: str, conn: "FuzzConn") -> List[bytes]:
        """A request of `kind` (not GARBAGE or BLANK) as lines: valid but for its values."""
        rng = self.rng
        if kind == "HELO":
            text = b"" if rng.random() < 0.1 else b" " + random_text(rng, 60).encode("utf-8")
            return [b"HELO" + text]
        if kind == "JOIN":
            room = self._text(self.rooms, 0.02, 40)
            return shaped(b"JOIN_CHATROOM", room, [b"0", b"0", self._name()])
        if kind == "LEAVE":
            return shaped(b"LEAVE_CHATROOM", self._ref(), [self._join_id(conn), self._name()])
        if kind == "DISCONNECT":
            return shaped(b"DISCONNECT", b"0", [b"0", self._name()])
        if kind == "UNKNOWN":
            return [rng.choice(UNKNOWN_LINES)]
        text_lines = [random_text(rng, 200).encode("utf-8") or b"."    # empty would end it
                      for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 5))]
        return (shaped(b"CHAT", self._ref(), [self._join_id(conn), self._name(), text_lines[0]])
                + text_lines[1:] + [b""])

    # -- mutations ------------------------------------------------------------------------

    def mutate(self, kind: str, lines: List[bytes]) -> List[bytes]:
        rng = self.rng
        lines = list(lines)
        index = rng.randrange(len(lines))
        op = rng.randrange(11)
        if op == 0 and len(lines) > 1:                       # drop a field
            del lines[rng.randrange(1, len(lines))]
        elif op == 1:                                        # duplicate a line
            lines.insert(index, lines[index])
        elif op == 2 and len(lines) > 1:                     # swap two lines
            other = rng.randrange(len(lines))
            lines[index], lines[other] = lines[other], lines[index]
        elif op == 3:                                        # misname the key
            key, colon, value = lines[index].partition(b":")
            key = rng.choice([key.lower(), key + b"S", key[:-1], b" " + key + b" ", b""])
            lines[index] = key + rng.choice([colon, b"", b"="]) + value
        elif op == 4:                                        # a bad value
            key, colon, _ = lines[index].partition(b":")
            lines[index] = key + colon + b" " + rng.choice(BAD_INTEGERS + [""]).encode("utf-8")
        elif op in (5, 6):                                   # a NUL byte, or invalid UTF-8
            line = lines[index]
            at = rng.randint(0, len(line))
            lines[index] = line[:at] + (b"\x00" if op == 5 else rng.choice(BAD_UTF8)) + line[at:]
        elif op == 7:                                        # a blank line in the middle
            lines.insert(rng.randint(1, len(lines)), b"")
        elif op == 8 and not (kind == "JOIN" and index == 0):
            # an enormous value, sometimes past the limit. Not a room name: rooms are never
            # forgotten, and a few thousand 60 KiB names would only measure that.
            key, colon, _ = lines[index].partition(b":")
            size = rng.choice([1000, 10000, MAX_REQUEST_BYTES - 100, MAX_REQUEST_BYTES + 10])
            lines[index] = key + colon + b" " + b"z" * size
        elif op == 9 and kind == "CHAT" and lines[-1] == b"":   # no blank line to end it
            lines.pop()
        elif op == 10:     # white space around a line, some of it only str.strip() removes
            space = rng.choice([b" ", b"\t", b"  ", b"\x1c", b"\x0b", b"\xc2\xa0", b"\xc2\x85"])
            lines[index] = space + lines[index] + rng.choice([b" \t", space])
        return lines


# --- Probes: connections whose every reply is predicted --------------------------------------

class Probe(FuzzConn, kit.Prober):
    """A fuzz connection that is a kit.Prober: its requests restyled (and split at random, by
    the loop), with now and then a wrong JOIN_ID or CLIENT_NAME; also HELOs, malformed requests
    and unknown lines, whose answers are known too."""

    def __init__(self, fuzzer: "Fuzzer", name: str):
        FuzzConn.__init__(self, name)
        kit.Prober.__init__(self, name, lambda data: self._send(restyle(self.rng, data)),
                            fuzzer.refs, (fuzzer.host, fuzzer.port))
        self.fuzzer = fuzzer
        self.rng = fuzzer.rng
        self.finals_seen: Dict[Tuple[int, str], int] = collections.Counter()

    # -- building requests ----------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        blank = self.rng.choice([b"", b"", b"", b"", b"\n", b"\r\n"])   # between requests
        self.fuzzer.queue(self, blank + data, "probe", guard=False)

    def _send_lines(self, lines: List[str]) -> None:
        ending = line_ending(self.rng)
        self._send(b"".join(line.encode("utf-8") + ending for line in lines))

    def helo(self) -> None:
        text = "%s %s" % (self.name, random_text(self.rng, 30).strip() or "x")
        self._send(helo_request(text)[:-1] + line_ending(self.rng))
        self.owed.append(kit.Like(HeloReply, line="HELO " + text, ip=self.fuzzer.host,
                                  port=self.fuzzer.port))

    def leave(self, room: str, join_id: Optional[int] = None) -> None:
        """LEAVE `room`, with a wrong JOIN_ID now and then: the reply has the right one."""
        wrong = self.join_id is None or self.rng.random() < 0.1
        super().leave(room, self.rng.randint(0, 99) if wrong else join_id)

    def chat(self, room: str, text: Optional[str] = None, join_id: Optional[int] = None,
             name: Optional[str] = None) -> None:
        """CHAT to `room` (whose ref must be known), random text unless given."""
        if text is None:
            text = "\n".join(self._chat_line() for _ in range(1 if self.rng.random() < 0.8 else 3))
        name = self.name if self.rng.random() < 0.8 else "someone-else"   # not trusted anyway
        super().chat(room, text, 7, name)

    def _chat_line(self) -> str:
        """A line of text that trims to itself (it starts and ends with a letter): usually
        short, sometimes up to PROBE_LINE_BYTES (three of them stay well under the limit)."""
        piece = random_text(self.rng, 100)
        if self.rng.random() < 0.1:
            piece += " "
            piece *= self.rng.randint(1, max(1, PROBE_LINE_BYTES // len(piece.encode("utf-8"))))
        return "a" + piece + "z"

    def malformed(self) -> None:
        """A well-framed request with a known fault, and the error code it must get."""
        rng = self.rng
        name = self.name
        known = list(self.fuzzer.refs.values())
        ref = str(rng.choice(known)) if known else "0"
        unknown = str(10 ** 9 + rng.randint(0, 999))
        bad = rng.choice(["x", "-1", "+1", "1.0", "0x1", "1_0", "\u0661", ""])
        unprintable = rng.choice(["\x1b[31m", "\x7f", "\u202e", "\u200b", "\u2028", "\u2029"])
        join = "JOIN_CHATROOM: {room}|CLIENT_IP: 0|PORT: 0|CLIENT_NAME: {name}"
        cases = [       # the request's lines, split at "|", and the error code it must get
            ("CHAT: {bad}|JOIN_ID: 1|CLIENT_NAME: {name}|MESSAGE: m|", ErrorCode.BAD_INTEGER),
            ("CHAT: {unknown}|JOIN_ID: 1|CLIENT_NAME: {name}|MESSAGE: m|", ErrorCode.UNKNOWN_ROOM),
            ("CHAT: {ref}|CLIENT_NAME: {name}|MESSAGE: m|", ErrorCode.MALFORMED_REQUEST),
            ("LEAVE_CHATROOM: {bad}|JOIN_ID: 1|CLIENT_NAME: {name}", ErrorCode.BAD_INTEGER),
            ("LEAVE_CHATROOM: {unknown}|JOIN_ID: 1|CLIENT_NAME: {name}", ErrorCode.UNKNOWN_ROOM),
            ("LEAVE_CHATROOM: {ref}|JOIN_ID: {bad}|CLIENT_NAME: {name}", ErrorCode.BAD_INTEGER),
            (join.replace("{room}", " "), ErrorCode.EMPTY_ROOM_NAME),
            (join.replace("{name}", " "), ErrorCode.EMPTY_CLIENT_NAME),
            (join.replace("PORT", "PORTS"), ErrorCode.MALFORMED_REQUEST),
            ("JOIN_CHATROOM: {room}|PORT: 0|CLIENT_IP: 0|CLIENT_NAME: {name}",
             ErrorCode.MALFORMED_REQUEST),
            ("JOIN_CHATROOM: {room}|CLIENT_IP: 0|", ErrorCode.MALFORMED_REQUEST),
            ("DISCONNECT: 0|PORT: 0|CLIENT_NAME: ", ErrorCode.EMPTY_CLIENT_NAME),
            (join.replace("{room}", "r" * (MAX_NAME_CHARS + 1)), ErrorCode.NAME_TOO_LONG),
            (join.replace("{name}", "n" * (MAX_NAME_CHARS + 1)), ErrorCode.NAME_TOO_LONG),
            (join.replace("{room}", "room{unprintable}1"), ErrorCode.NAME_NOT_PRINTABLE),
            (join.replace("{name}", "{name}{unprintable}x"), ErrorCode.NAME_NOT_PRINTABLE),
        ]
        if rng.random() < 0.15:                 # invalid UTF-8 in a HELO or in a message
            raw_cases = [b"HELO caf\xe9", b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: n\nMESSAGE: \xff\n"]
            self._send(rng.choice(raw_cases) + b"\n")
            self.owed.append(kit.Like(ErrorReply, code=ErrorCode.INVALID_UTF8))
            return
        template, code = rng.choice(cases)
        self._send_lines([line.format(room="room1", name=name, bad=bad, unknown=unknown, ref=ref,
                                      unprintable=unprintable) for line in template.split("|")])
        self.owed.append(kit.Like(ErrorReply, code=code))

    def random_request(self) -> None:
        """One random request (or none, once DISCONNECT has been sent)."""
        if self.done or kit.CLOSE in self.owed:
            return
        rng = self.rng
        refs = self.fuzzer.refs
        joined = [room for room in self.member if room in refs]
        roll = rng.random()
        if roll < 0.10:
            self.helo()
        elif roll < 0.32:
            pool = [room for room in ROOM_NAMES if room == room.strip() and room]
            room = rng.choice(pool) if rng.random() < 0.8 else "probe-room-%d" % rng.randint(0, 9)
            self.join(room)
        elif roll < 0.45 and refs:
            room = rng.choice(joined) if joined and rng.random() < 0.8 else rng.choice(list(refs))
            self.leave(room)
        elif roll < 0.82 and refs:
            room = rng.choice(joined) if joined and rng.random() < 0.9 else rng.choice(list(refs))
            self.chat(room)
        elif roll < 0.87:
            self._send_lines([rng.choice(["WHATEVER", "PING %s" % self.name, "NOT_A_COMMAND: 1",
                                          "QUIT"])])     # an unknown line: answered by nothing
        elif roll < 0.985:
            self.malformed()
        elif not self.disconnect():
            self.helo()

    # -- checking replies ----------------------------------------------------------------

    def on_reply(self, reply) -> None:
        """Check a reply; a wrong one gives this probe up (its expectations are out of step)."""
        if self.done:
            return
        problem = self.take(reply)
        if problem is not None:
            self.fuzzer.report.fail("probe", "%s: %s" % (self.name, problem))
            self.done = True
            self.fuzzer.end(self, "reset")
        elif isinstance(reply, ChatMessage) and reply.message.startswith(FINAL_PREFIX):
            self.finals_seen[(reply.ref, reply.message)] += 1

    def idle(self) -> bool:
        return self.done or not self.owed


# --- The fuzzer ------------------------------------------------------------------------------

class Fuzzer(RequestMaker, kit.Handler):
    """One run against `target` (kit.Target: spawned for the run, or given)."""

    def __init__(self, args: argparse.Namespace, target: kit.Target, report: kit.Report) -> None:
        self.args, self.report = args, report
        self.host, self.port, self.server = target.host, target.port, target.server
        self.rng = random.Random(args.seed)
        self.loop = kit.Loop(target.address, self, send_limit=lambda: segment_size(self.rng))
        self.book = kit.RefBook(report)        # rooms and JOIN_IDs, from JOINED replies
        self.refs = self.book.refs             # room name -> ROOM_REF
        self.rooms = ROOM_NAMES + ["fz%d-%d" % (args.seed, i) for i in range(args.fresh_rooms)]
        self.chaos: List[FuzzConn] = []
        self.probes: List[Probe] = []
        self.serial = 0
        self.sent_by_kind: Dict[str, int] = collections.Counter()
        self.errors_by_code: Dict[int, int] = collections.Counter()
        self.server_closed = 0                 # connections the server closed or reset
        self.vanished = 0                      # connections we reset
        self.closed_by_us = 0                  # connections we closed normally
        self.helo_max, self.batches = 0.0, 0

    def requests_sent(self) -> int:
        return sum(self.sent_by_kind.values())

    # -- connections ----------------------------------------------------------------------

    def open(self, conn: FuzzConn) -> FuzzConn:
        """Connect `conn`; a Probe joins the probes."""
        self.serial += 1
        if isinstance(conn, Probe):
            self.probes.append(conn)
        self.loop.connect(conn)
        return conn

    def queue(self, conn: FuzzConn, data: bytes, kind: Optional[str] = None,
              guard: bool = True) -> None:
        """Queue bytes for `conn` (a request of `kind`, if given, is counted), never letting
        KILL_SERVICE through unless allowed. The check looks across the join with what was
        queued before, since a truncated request makes the server read two requests as one.
        (Probes need no guard: their requests are well framed and none starts with KILL.)"""
        if kind is not None:
            self.sent_by_kind[kind] += 1
        if guard and not self.args.allow_kill and b"KILL" in (conn.tail + data).upper():
            data = helo_request("kill-guard")
        conn.tail = (conn.tail + data)[-16:]
        self.loop.send(conn, data)

    def end(self, conn: FuzzConn, how: Optional[str], when_sent: bool = False) -> None:
        """End a connection of ours with "reset" (RST) or "close" (FIN) (None: leave it be):
        now, or once what is queued for it has gone. Counted once, when first told to go."""
        if how is None or conn.state == kit.CLOSED:
            return
        if not conn.close_when_sent:
            conn.close_when_sent = how
            self.vanished += how == "reset"
            self.closed_by_us += how == "close"
        if not when_sent or (not conn.out and conn.state == kit.OPEN):
            self.loop.close(conn, reset=how == "reset")

    # -- the loop's handler -------------------------------------------------------------------

    def connect_failed(self, conn: FuzzConn, exc: OSError) -> None:
        self.report.fail("connect_failed", "%s: %s" % (conn.label, exc))
        conn.done = True

    def closed(self, conn: FuzzConn, exc: Optional[OSError]) -> None:
        self.server_closed += 1
        # right for a probe only when a DISCONNECT's replies are in (kit.Prober.closed)
        problem = None if conn.done or not isinstance(conn, Probe) else conn.closed()
        if problem is not None:
            self.report.fail("probe", "%s: %s" % (conn.label, problem))
        conn.done = True

    def received(self, conn: FuzzConn) -> None:
        while conn.state == kit.OPEN:
            reply = conn.reader.maybe_next_reply()
            if reply is None:
                if len(conn.reader.pending()) > MAX_SERVER_MESSAGE:
                    self.violation(conn, "a reply longer than %d bytes: %r..."
                                   % (MAX_SERVER_MESSAGE, conn.reader.pending()[:80]))
                return
            if isinstance(reply, Unparsed):
                self.violation(conn, "%s: %r" % (reply.reason, reply.text[:200]))
                return
            if isinstance(reply, ErrorReply):
                self.errors_by_code[reply.code] += 1
            elif isinstance(reply, JoinedReply):
                self.book.learn(reply, conn.label)
            if isinstance(conn, Probe):
                conn.on_reply(reply)

    def violation(self, conn: FuzzConn, text: str) -> None:
        self.report.fail("protocol_violation", "conn %s: %s" % (conn.label, text))
        conn.done = True
        self.end(conn, "reset")

    def pump(self, seconds: float, until: Optional[Callable[[], bool]] = None) -> bool:
        """Send what is queued (in random slices) and read everything, until nothing is left to
        send or connecting and until() holds (without `until`: until QUIET seconds have passed
        with nothing sent or received). False if `seconds` ran out first."""
        loop = self.loop

        def done() -> bool:
            if any(conn.out or conn.state != kit.OPEN for conn in loop.conns):
                return False
            quiet = time.monotonic() - max(loop.last_activity, loop.last_sent) >= QUIET
            return until() if until else quiet
        return loop.run_until(done, seconds, wait=QUIET / 2)

    # -- batches ----------------------------------------------------------------------------

    def live_chaos(self) -> List[FuzzConn]:
        self.chaos = [conn for conn in self.chaos if conn.state != kit.CLOSED]
        return [conn for conn in self.chaos if not conn.close_when_sent]

    def live_probes(self) -> List[Probe]:
        return [probe for probe in self.probes if not probe.done and kit.CLOSE not in probe.owed]

    def refill(self) -> None:
        """Top the pools of chaos connections and probes up again."""
        self.live_chaos()
        while len(self.chaos) < self.args.pool:
            reading = self.rng.random() >= P_NON_READER
            self.chaos.append(self.open(FuzzConn("chaos%d" % (self.serial + 1), reading)))
        for _ in range(self.args.probes - len(self.live_probes())):
            self.open(Probe(self, "probe%d" % (self.serial + 1)))

    def batch(self, size: int) -> None:
        """Queue `size` requests (and now and then a burst or a flood), then pump."""
        rng = self.rng
        self.refill()
        if rng.random() < P_BURST and size >= 10:
            size -= self.burst(min(size, rng.randint(10, self.args.burst)))
        if rng.random() < P_FLOOD and size >= 10:
            size -= self.flood(size)
        live_probes = self.live_probes()
        for _ in range(max(0, size)):
            if live_probes and rng.random() < P_PROBE:
                rng.choice(live_probes).random_request()
                continue
            conns = self.live_chaos()
            if not conns:
                break
            conn = rng.choice(conns)
            roll = rng.random()
            if roll < P_VANISH + P_HALF_CLOSE:
                _kind, data = self.make(conn)
                self.queue(conn, data[:rng.randint(0, max(0, len(data) - 1))],
                           "vanish" if roll < P_VANISH else "half-close")
                self.end(conn, "reset" if roll < P_VANISH else "close", when_sent=True)
            elif roll < P_VANISH + P_HALF_CLOSE + P_OVERSIZE:
                self.queue(conn, self.oversize(), "oversize")
            else:
                kind, data = self.make(conn)
                self.queue(conn, data, kind)
        self.pump(BATCH_TIMEOUT)
        for conn in self.live_chaos():          # now and then a non-reader is let go
            if not conn.reading and rng.random() < 0.1:
                self.end(conn, "reset")
        self.batches += 1

    def burst(self, count: int) -> int:
        """Open `count` connections at once; each sends one request and then goes (RST or FIN
        when its request is sent, or at the end of the batch)."""
        conns = [self.open(FuzzConn("burst%d" % (self.serial + 1))) for _ in range(count)]
        for conn in conns:
            kind, data = self.make(conn)
            if self.rng.random() < 0.5:
                data = join_request(self.rng.choice(ROOM_NAMES[:4]), "b") + data
            self.queue(conn, data, kind)
            self.end(conn, self.rng.choice(["reset", "close", None]), when_sent=True)
        self.pump(BATCH_TIMEOUT)
        for conn in conns:
            self.end(conn, self.rng.choice(["reset", "close"]))
        return count

    def flood(self, most: int) -> int:
        """One chaos connection joins a room and pipelines many large chats into it (at most
        `most` requests in all): its own echoes pass the server's high-water mark, and
        non-readers in the room fill up. Returns the number of requests sent."""
        conns = [conn for conn in self.live_chaos() if conn.reading]
        if not conns:
            return 0
        conn = self.rng.choice(conns)
        room = self.rng.choice(ROOM_NAMES[:4])
        self.queue(conn, join_request(room, "flood"))
        self.pump(BATCH_TIMEOUT, until=lambda: room in self.refs or conn.state == kit.CLOSED)
        if room not in self.refs or conn.state == kit.CLOSED:
            return 1
        count = min(most - 1, self.rng.randint(50, 200))
        chat = chat_request(self.refs[room], 0, "flood", "f" * self.rng.randint(2000, 8000))
        for _ in range(count):
            self.queue(conn, chat)
        self.sent_by_kind["flood"] += count + 1
        return count + 1

    def health(self) -> bool:
        """Is the server still there (process) and answering (HELO)?"""
        if self.server is not None and not self.server.alive():
            return False                        # kit.run_tool reports it, with the log
        ok, seconds, problem = kit.helo_check(self.host, self.port, self.args.helo_timeout,
                                              "health-%d" % self.batches)
        self.helo_max = max(self.helo_max, seconds)
        if not ok and (self.server is None or self.server.alive()):
            self.report.fail("hang", "health check after batch %d: %s" % (self.batches, problem))
        return ok

    # -- end-of-run checks ---------------------------------------------------------------

    def check_segmentation(self) -> Tuple[List[dict], List[str]]:
        """Requests of exactly MAX_REQUEST_BYTES - 1, MAX and MAX + 1 bytes (the frame, not
        counting its ending), sent whole and split inside their terminating newline(s) with a
        pause between the halves: every way of sending one must get the same answer."""
        cases = []                  # ((kind, frame bytes, ending), how it is split, halves)
        sizes = (MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1)
        for kind, size, ending in itertools.product(("HELO", "CHAT"), sizes, (b"\n", b"\r\n")):
            if kind == "HELO":
                wire, terminator = b"HELO " + b"h" * (size - 5) + ending, len(ending)
            else:
                head = b"CHAT: 999999999\nJOIN_ID: 1\nCLIENT_NAME: n\nMESSAGE: "
                wire = (head + b"c" * (size - len(head))).replace(b"\n", ending) + ending * 2
                terminator = 2 * len(ending)
            for split in [None] + list(range(terminator)):
                at = len(wire) - terminator + (terminator if split is None else split)
                how = "whole" if split is None else "split@%d" % split
                cases.append(((kind, size, ending.decode()), how, wire[:at], wire[at:]))
        socks: List[socket.socket] = []
        outcomes: Dict[tuple, Dict[str, str]] = collections.defaultdict(dict)
        with contextlib.ExitStack() as closing:
            try:
                for _case in cases:
                    socks.append(closing.enter_context(self.connection()))
            except OSError as exc:
                self.report.fail("segmentation", "cannot connect: %s" % exc)
            for half in (2, 3):
                for case, sock in zip(cases, socks):
                    with contextlib.suppress(OSError):
                        sock.sendall(case[half])
                time.sleep(SPLIT_PAUSE)
            for (key, how, _first, _second), sock in zip(cases, socks):
                outcomes[key][how] = self._first_reply(sock)
        table = [{"kind": kind, "frame_bytes": size, "ending": ending, "outcomes": by_split}
                 for (kind, size, ending), by_split in outcomes.items()]
        return table, ["%s request of %d bytes ending %r: the answer depends on how it is split:"
                       " %s" % (row["kind"], row["frame_bytes"], row["ending"], row["outcomes"])
                       for row in table if len(set(row["outcomes"].values())) > 1]

    def connection(self) -> socket.socket:
        """A new blocking connection that sends each send() at once (TCP_NODELAY)."""
        sock = socket.create_connection((self.host, self.port), HELO_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _first_reply(self, sock: socket.socket) -> str:
        """"accepted", "too long" (ERROR_CODE 8) or what else came back first."""
        reply = kit.first_reply(sock, time.monotonic() + HELO_TIMEOUT)
        code = reply.code if isinstance(reply, ErrorReply) else None
        if code == ErrorCode.REQUEST_TOO_LONG:
            return "too long"
        if isinstance(reply, HeloReply) or code == ErrorCode.UNKNOWN_ROOM:
            return "accepted"
        return reply if isinstance(reply, str) else "other: %r" % (reply,)

    def drain(self, until: Callable[[], bool], problem: Callable[[], str]) -> None:
        """Pump until `until()`; if DRAIN_TIMEOUT runs out first, a "rooms" failure: problem()."""
        if not self.pump(DRAIN_TIMEOUT, until=until):
            self.report.fail("rooms", "%s after %g s" % (problem(), DRAIN_TIMEOUT))

    def check_rooms(self) -> None:
        """The end-of-run consistency check (see the module docstring)."""
        probes_idle = lambda: all(probe.idle() for probe in self.probes)  # noqa: E731
        self.drain(probes_idle, lambda: "probes still waiting for %d replies"
                   % sum(len(p.owed) for p in self.probes if not p.done))
        for conn in self.live_chaos():
            self.end(conn, self.rng.choice(["reset", "close"]))
        rooms = [room for room in sorted(self.refs, key=self.refs.get)
                 if len(room.encode("utf-8")) < MAX_REQUEST_BYTES - 200]
        checker = self.open(Probe(self, "checker"))
        observers = [self.open(Probe(self, "observer%d" % i)) for i in range(3)]
        for joiners in ([checker], observers):     # the checker first: it sees the others join
            for probe, room in itertools.product(joiners, rooms):
                probe.join(room)
            self.pump(DRAIN_TIMEOUT, until=lambda: all(p.idle() for p in joiners))  # noqa: B023
        # one leaves every room, one disconnects, one vanishes in the middle of a request
        for room in rooms:
            observers[0].leave(room)
        observers[1].disconnect()
        self.queue(observers[2], b"CHAT: 0\nJOIN_ID: 1\nCLIEN")
        self.end(observers[2], "reset", when_sent=True)
        observers[2].done = True
        wanted = {(self.refs[room], o.name) for room in rooms for o in observers}
        self.drain(lambda: observers[0].idle() and observers[1].idle()
                   and wanted <= checker.leaves_seen,
                   lambda: "checker did not see %d leave announcements of the observers, e.g. %r"
                   % (len(wanted - checker.leaves_seen), sorted(wanted - checker.leaves_seen)[:5]))
        # the checker chats in every room; every probe in a room must get it exactly once
        nonce = self.rng.randint(0, 10 ** 9)
        finals = {self.refs[room]: "%s %d %d" % (FINAL_PREFIX, nonce, self.refs[room])
                  for room in rooms}
        for room in rooms:
            checker.chat(room, finals[self.refs[room]])
        listeners = [p for p in self.probes if not p.done and p is not checker]

        def received() -> List[Tuple[Probe, int, int]]:
            """(probe, ref, how often it has the checker's chat) for every room of a probe."""
            return [(probe, ref, probe.finals_seen[(ref, finals[ref])]) for probe in listeners
                    if not probe.done for ref in probe.rooms if ref in finals]
        self.drain(lambda: checker.idle() and all(got for _probe, _ref, got in received()),
                   lambda: "the checker's chat had not reached every member")
        self.pump(QUIET * 5)                   # time for duplicates to show
        for probe, ref, got in received():
            if got != 1:
                self.report.fail("rooms", "probe %s got the checker's chat in room %d %d times"
                                 % (probe.name, ref, got))
        # everybody still here disconnects, checking the leave announcements once more
        for probe in self.live_probes():
            if not probe.disconnect():
                self.end(probe, "close")
                probe.done = True
        self.drain(probes_idle, lambda: "DISCONNECT replies still missing")
        for conn in list(self.loop.conns):
            self.end(conn, "close")

    def kill(self) -> Dict[str, object]:
        """--allow-kill: KILL_SERVICE, sent a byte at a time with CRLF; the server must stop
        within a second (the process exits, or nothing accepts connections any more)."""
        started = time.monotonic()
        try:
            with self.connection() as sock:
                for byte in b"\r\n" + kill_request()[:-1] + b"\r\n":
                    sock.sendall(bytes([byte]))
        except OSError as exc:
            return {"sent": False, "error": str(exc)}
        for _ in range(100):
            if self.server is not None:
                stopped = not self.server.alive()
            else:
                with socket.socket(self.loop.family) as sock:
                    sock.settimeout(0.5)
                    stopped = sock.connect_ex(self.loop.sockaddr) != 0
            if stopped:
                return {"sent": True, "stopped_after_s": round(time.monotonic() - started, 3)}
            time.sleep(0.01)
        self.report.fail("kill", "KILL_SERVICE: the server was still running 1 s later")
        return {"sent": True, "stopped_after_s": None}

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> Tuple[Dict[str, object], str]:
        args = self.args
        stop_at = time.monotonic() + args.seconds
        rss_before = self.server.rss_kb() if self.server else None
        alive = self.health()
        while alive and self.requests_sent() < args.count and time.monotonic() < stop_at:
            self.batch(min(args.batch, args.count - self.requests_sent()))
            alive = self.health()
            self.report.progress(self.progress_line)
        fuzz_requests = self.requests_sent()
        segmentation: List[dict] = []
        if alive:
            segmentation, problems = self.check_segmentation()
            for problem in problems:
                self.report.fail("segmentation", problem)
            alive = self.health()
        if alive:
            self.check_rooms()
            alive = self.health()
        rss_after = None
        if alive and self.server:
            time.sleep(0.2)                     # let the server finish closing everything
            self.health()
            rss_after = self.server.rss_kb()
        kill = self.kill() if alive and args.allow_kill else None
        self.loop.close_all()
        figures: Dict[str, object] = {
            "requests_sent": fuzz_requests,
            "requests_by_kind": dict(sorted(self.sent_by_kind.items())),
            "check_requests_sent": self.requests_sent() - fuzz_requests,
            "batches": self.batches, "connections_opened": self.serial,
            "errors_by_code": {str(code): n for code, n in sorted(self.errors_by_code.items())},
            "disconnects": self.server_closed, "vanished": self.vanished,
            "closed_by_fuzzer": self.closed_by_us,
            "probe_replies_checked": sum(probe.checked for probe in self.probes),
            "rooms_known": len(self.refs), "slowest_health_check_s": round(self.helo_max, 3),
            "segmentation": segmentation,
            "server_rss_kb_before": rss_before, "server_rss_kb_after": rss_after,
            "server_rss_kb_peak": self.server.status_kb("VmHWM") if self.server else None,
            "rss_change_percent": (round(100.0 * (rss_after - rss_before) / rss_before, 1)
                                   if rss_before and rss_after else None)}
        if kill is not None:
            figures["kill"] = kill
        return figures, ("%d requests in %d batches, %d probe replies checked, %d rooms"
                         % (fuzz_requests, self.batches, figures["probe_replies_checked"],
                            len(self.refs)))

    def progress_line(self) -> str:
        rss = self.server.rss_kb() if self.server and self.server.alive() else None
        return ("%d/%d requests, %d batches, %d errors received, %d disconnects, %d failures%s"
                % (self.requests_sent(), self.args.count, self.batches,
                   sum(self.errors_by_code.values()), self.server_closed, self.report.failed,
                   ", server RSS %d kB" % rss if rss else ""))


def run_fuzz(args: argparse.Namespace, target: kit.Target, report: kit.Report):
    kit.raise_nofile_limit()
    return Fuzzer(args, target, report).run()


OPTIONS: List[kit.Option] = [
    ("--count", int, DEFAULT_COUNT, "requests to send", 0, None),
    ("--batch", int, DEFAULT_BATCH, "requests between health checks", 1, None),
    ("--pool", int, DEFAULT_POOL, "chaos connections kept open", 1, None),
    ("--probes", int, DEFAULT_PROBES, "probe connections kept open", 0, None),
    ("--burst", int, DEFAULT_BURST, "most connections opened at once in a burst", 10, None),
    ("--fresh-rooms", int, DEFAULT_FRESH_ROOMS, "room names used beyond the fixed list", 0, None),
    ("--helo-timeout", float, HELO_TIMEOUT, "a slower health check is a hang (seconds)", 0, None),
    ("--allow-kill", bool, False, "end with KILL_SERVICE: the server must stop (else never sent)",
     None, None)]


TOOL = kit.Tool("fuzz", __doc__, run_fuzz, OPTIONS,
                (DEFAULT_SECONDS, "stop sending after this long"))
parse_args, main = TOOL.parse_args, TOOL.main

if __name__ == "__main__":
    sys.exit(main())
