#!/usr/bin/env python3
"""Fuzz a live chat server: random valid and invalid requests, then checks that it survived,
still answers, and still keeps its rooms straight.

    python3 tools/fuzz.py --spawn --count 100000 --seed 1
    python3 tools/fuzz.py --host 127.0.0.1 --port 8080 --seconds 60
    python3 tools/fuzz.py --help

What it sends, in batches (--batch requests each), over a pool of connections in one
`selectors` loop (all nonblocking, every byte the server sends is read unless a connection is
deliberately a non-reader):
- every request kind (HELO, JOIN_CHATROOM, LEAVE_CHATROOM, CHAT, DISCONNECT; KILL_SERVICE only
  with --allow-kill, and then only once, at the very end), unknown lines, random bytes;
- mutated: fields dropped, duplicated, swapped, misnamed, non-integer or enormous refs, empty
  names, NUL bytes, invalid UTF-8, stray blank lines, CR/LF variants, truncated requests (the
  rest of the stream then runs into the next one), values up to past protocol.MAX_REQUEST_BYTES;
- on the wire: each send() is a random slice of 1 byte to 64 KiB of what is queued, so requests
  are split anywhere and several are coalesced into one segment;
- abrupt ends: a connection sends part of a request and then closes with RST (SO_LINGER 1, 0),
  or with FIN; bursts of up to --burst connections opened at once that send one request and go;
  non-readers that never read what the server sends; floods of large chats into one room.

What it checks:
- after every batch, that a fresh connection gets a HELO reply within --helo-timeout seconds
  (otherwise a "hang"), and, with --spawn, that the server process is still running (otherwise a
  "crash"; the run stops there);
- everything the server sends parses as one of PROTOCOL.md's messages; a room name keeps one
  ROOM_REF and a ROOM_REF one name; a connection keeps one JOIN_ID and no two share one;
- "probe" connections send only requests whose answer is known in advance (with random
  formatting and segmentation), and every reply they get must be exactly the one predicted, in
  order: JOINED with the right ref and id, own join/leave announcements, own chats echoed once,
  the documented ERROR_CODE for each malformed request, nothing for an unknown line, leave
  announcements and then the close after DISCONNECT. A probe must get no chat of a room it is not
  in (before its join announcement or after its leave announcement);
- a request of exactly the size limit must be judged the same however it is split (whole, or
  split inside its terminating newlines): PROTOCOL.md says the segmentation must not matter;
- at the end, room consistency: a fresh "checker" joins every room the fuzzer learnt of; three
  "observers" join them all, then one LEAVEs them all, one DISCONNECTs, one vanishes (RST); the
  checker must see all three leave every room; then the checker chats in every room, and every
  probe still in a room must get that chat exactly once, while the observer that left (still
  connected) must get nothing of any room.

Output: a progress line on standard error every few seconds and a JSON summary on standard
output (requests sent by kind, ERROR_CODEs received by code, disconnects, hangs, crashes,
failures, the server's RSS before and after when spawned). A request is counted as sent when it
is queued; a connection the server closed may not have taken all of it.

Exit status: 0 when there was no hang, crash or failed check; 1 otherwise; 2 for bad arguments.

Deliberate limits: the fuzzer knows the names of rooms only from JOINED_CHATROOM replies it
read (a room made by a connection that vanished before reading its reply is not checked), and
it only predicts the replies of probe connections; for the rest it checks their form.
"""
import argparse
import collections
import json
import os
import random
import selectors
import socket
import sys
import time
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)      # for `protocol` and `tools` however this is started

from protocol import MAX_NAME_CHARS, MAX_REQUEST_BYTES, ErrorCode  # noqa: E402 (path above)
from tools.harness import (  # noqa: E402 (needs the path above)
    HOST, add_target_arguments, MessageParser, Peer, ProtocolViolation, ServerMessage,
    ServerProcess, connect, helo_check, raise_nofile_limit)

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
PROGRESS_EVERY = 2.0               # seconds between progress lines
MAX_FAILURES_SHOWN = 30
MAX_TICKS = 10 ** 7                # a count bound on every pump loop (time bounds it first)

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


def random_text(rng: random.Random, max_len: int) -> str:
    """Random text, mostly short, from ALPHABETS (may contain whitespace and control codes,
    never CR or LF)."""
    length = min(max_len, int(rng.expovariate(1 / 12)))
    alphabets = rng.choices(ALPHABETS, ALPHABET_WEIGHTS, k=length)
    return "".join(rng.choice(alphabet) for alphabet in alphabets)


def random_bytes(rng: random.Random, length: int) -> bytes:
    return rng.getrandbits(8 * length).to_bytes(length, "little") if length else b""


def segment_size(rng: random.Random) -> int:
    """How many bytes the next send() may take: 1 byte to 64 KiB, small sizes often."""
    roll = rng.random()
    if roll < 0.15:
        return 1
    if roll < 0.40:
        return rng.randint(2, 64)
    if roll < 0.70:
        return rng.randint(65, 4096)
    return rng.randint(4097, 64 * 1024)


class FuzzPeer(Peer):
    """A Peer with what the fuzzer needs to know about it."""

    def __init__(self, sock: socket.socket, label: str, serial: int, reading: bool = True):
        super().__init__(sock, label)
        self.serial = serial
        self.reading = reading
        self.probe: Optional["Probe"] = None
        self.join_id: Optional[int] = None
        self.tail = b""                       # the last bytes queued (for the KILL guard)
        self.when_flushed: Optional[str] = None   # "abort" or "close" once the queue is sent


# -------------------------------------------------------------------------------------------
# Chaos traffic: random requests, valid and not
# -------------------------------------------------------------------------------------------

class RequestMaker:
    """Random requests as bytes. `known_refs` is the fuzzer's live map of room name -> ref."""

    KINDS = ["HELO", "JOIN", "LEAVE", "CHAT", "DISCONNECT", "UNKNOWN", "GARBAGE", "BLANK"]
    WEIGHTS = [8, 22, 14, 34, 3, 9, 6, 4]

    def __init__(self, rng: random.Random, known_refs: Dict[str, int], fresh_rooms: List[str]):
        self.rng = rng
        self.known_refs = known_refs
        self.rooms = ROOM_NAMES + fresh_rooms

    def make(self, peer: FuzzPeer) -> Tuple[str, bytes]:
        rng = self.rng
        kind = rng.choices(self.KINDS, self.WEIGHTS)[0]
        if kind == "GARBAGE":
            return kind, random_bytes(rng, rng.randint(1, 200))
        if kind == "BLANK":
            return kind, rng.choice([b"\n", b"\r\n", b"\n\n\n", b"\r\n\r\n", b" \n"])
        lines = getattr(self, "_" + kind.lower())(peer)
        if rng.random() < P_MUTATE:
            for _ in range(rng.randint(1, 3)):
                lines = self.mutate(kind, lines)
        data = self.join_lines(lines)
        if rng.random() < 0.03:               # cut short: the stream runs into the next request
            data = data[:rng.randint(0, len(data))]
        if rng.random() < 0.05:
            data = rng.choice([b"\n", b"\r\n", b"\n\n"]) + data
        return kind, data

    def oversize(self) -> bytes:
        """A request past MAX_REQUEST_BYTES: ERROR_CODE 8 and a closed connection expected."""
        rng = self.rng
        extra = rng.randint(1, 4096)
        body = b"y" * (MAX_REQUEST_BYTES + extra)
        shape = rng.randrange(4)
        if shape == 0:
            return b"HELO " + body + b"\n"
        if shape == 1:
            return b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: x\nMESSAGE: " + body + b"\n\n"
        if shape == 2:
            return b"JOIN_CHATROOM: " + body + b"\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: x\n"
        return body                             # no newline at all

    # -- valid requests, as lists of lines -------------------------------------------------

    def _room(self) -> bytes:
        if self.rng.random() < 0.02:
            return random_text(self.rng, 40).encode("utf-8")   # may be empty: error 3
        return self.rng.choice(self.rooms).encode("utf-8")

    def _name(self) -> bytes:
        if self.rng.random() < 0.2:
            return random_text(self.rng, 30).encode("utf-8")
        return self.rng.choice(CLIENT_NAMES).encode("utf-8")

    def _ref(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.55 and self.known_refs:
            return str(self.rng.choice(list(self.known_refs.values()))).encode()
        if roll < 0.75:
            return str(self.rng.randint(0, 30)).encode()
        return self.rng.choice(BAD_INTEGERS).encode("utf-8")

    def _join_id(self, peer: FuzzPeer) -> bytes:
        roll = self.rng.random()
        if roll < 0.5 and peer.join_id is not None:
            return str(peer.join_id).encode()
        if roll < 0.75:
            return str(self.rng.randint(0, 100)).encode()
        return self.rng.choice(BAD_INTEGERS).encode("utf-8")

    def _helo(self, peer: FuzzPeer) -> List[bytes]:
        if self.rng.random() < 0.1:
            return [b"HELO"]
        return [b"HELO " + random_text(self.rng, 60).encode("utf-8")]

    def _join(self, peer: FuzzPeer) -> List[bytes]:
        return [b"JOIN_CHATROOM: " + self._room(), b"CLIENT_IP: 0", b"PORT: 0",
                b"CLIENT_NAME: " + self._name()]

    def _leave(self, peer: FuzzPeer) -> List[bytes]:
        return [b"LEAVE_CHATROOM: " + self._ref(), b"JOIN_ID: " + self._join_id(peer),
                b"CLIENT_NAME: " + self._name()]

    def _chat(self, peer: FuzzPeer) -> List[bytes]:
        text_lines = [random_text(self.rng, 200).encode("utf-8")
                      for _ in range(1 if self.rng.random() < 0.8 else self.rng.randint(2, 5))]
        text_lines = [line or b"." for line in text_lines]   # an empty line would end it
        return ([b"CHAT: " + self._ref(), b"JOIN_ID: " + self._join_id(peer),
                 b"CLIENT_NAME: " + self._name(), b"MESSAGE: " + text_lines[0]]
                + text_lines[1:] + [b""])

    def _disconnect(self, peer: FuzzPeer) -> List[bytes]:
        return [b"DISCONNECT: 0", b"PORT: 0", b"CLIENT_NAME: " + self._name()]

    def _unknown(self, peer: FuzzPeer) -> List[bytes]:
        return [self.rng.choice(UNKNOWN_LINES)]

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
        elif op == 5:                                        # a NUL byte
            line = lines[index]
            at = rng.randint(0, len(line))
            lines[index] = line[:at] + b"\x00" + line[at:]
        elif op == 6:                                        # invalid UTF-8
            line = lines[index]
            at = rng.randint(0, len(line))
            lines[index] = line[:at] + rng.choice(BAD_UTF8) + line[at:]
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

    def join_lines(self, lines: List[bytes]) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            endings = [b"\n"]
        elif roll < 0.85:
            endings = [b"\r\n"]
        elif roll < 0.95:
            endings = [b"\n", b"\r\n"]                       # mixed, line by line
        else:
            endings = [b"\n", b"\r\n", b"\r", b"\n\r"]       # a lone CR is not a line end
        return b"".join(line + rng.choice(endings) for line in lines)


# -------------------------------------------------------------------------------------------
# Probes: connections whose every reply is predicted
# -------------------------------------------------------------------------------------------

# What a probe expects next, one of:
#   ("HELO", line)  ("JOINED", room)  ("ANNOUNCE_JOIN", room)  ("LEFT", ref, join_id)
#   ("ANNOUNCE_LEAVE", room)  ("ECHO", room, text)  ("ERROR", code)  ("EOF",)
Expectation = Tuple


class Probe:
    """A connection that sends only requests whose replies it can predict, and checks them.

    `member` is the set of rooms the server will have it in once it has handled everything
    sent so far (only this connection's own requests change that); `in_rooms` is the set of
    ROOM_REFs it is in as far as the replies read so far go (between its own join and leave
    announcements): a chat of any other room is a failure.
    """

    def __init__(self, fuzzer: "Fuzzer", name: str, peer: FuzzPeer, records: bool = False):
        self.fuzzer = fuzzer
        self.rng = fuzzer.rng
        self.name = name
        self.peer = peer
        peer.probe = self
        self.expect: Deque[Expectation] = collections.deque()
        self.member: Set[str] = set()
        self.in_rooms: Set[int] = set()
        self.join_id: Optional[int] = None
        self.disconnecting = False
        self.done = False                      # disconnected as predicted, or retired
        self.records = records                 # keep other members' leave announcements
        self.leaves_seen: Set[Tuple[int, str]] = set()   # (ref, name) of leave announcements
        self.finals_seen: Dict[Tuple[int, str], int] = collections.Counter()
        self.checked = 0                       # replies matched

    # -- building requests ----------------------------------------------------------------

    def _style(self) -> Tuple[Callable[[str, str], str], str]:
        """A random but valid way to write field lines, and a line ending."""
        sep = self.rng.choice([": ", ":", ":  ", ":\t"])
        pad = self.rng.choice(["", "", " ", " \t"])
        ending = "\r\n" if self.rng.random() < 0.3 else "\n"
        return (lambda key, value: key + sep + value + pad), ending

    def _send(self, lines: List[str], ending: str) -> None:
        blank = self.rng.choice(["", "", "", "", ending])    # blank lines between requests
        text = blank + "".join(line + ending for line in lines)
        self.fuzzer.queue(self.peer, text.encode("utf-8"), guard=False)
        self.fuzzer.count("probe")

    def helo(self) -> None:
        text = "%s %s" % (self.name, random_text(self.rng, 30).strip() or "x")
        self._send(["HELO " + text], self._style()[1])
        self.expect.append(("HELO", "HELO " + text))

    def join(self, room: str) -> None:
        field, ending = self._style()
        self._send([field("JOIN_CHATROOM", room), field("CLIENT_IP", "0"), field("PORT", "0"),
                    field("CLIENT_NAME", self.name)], ending)
        self.expect.append(("JOINED", room))
        if room not in self.member:
            self.member.add(room)
            self.expect.append(("ANNOUNCE_JOIN", room))

    def leave(self, room: str) -> None:
        ref = self.fuzzer.refs[room]
        join_id = self.join_id if self.join_id is not None else self.rng.randint(0, 99)
        if self.rng.random() < 0.1:
            join_id = self.rng.randint(0, 99)    # a wrong one: the reply has the right one
        field, ending = self._style()
        self._send([field("LEAVE_CHATROOM", str(ref)), field("JOIN_ID", str(join_id)),
                    field("CLIENT_NAME", self.name)], ending)
        self.expect.append(("LEFT", ref, join_id))
        if room in self.member:
            self.member.discard(room)
            self.expect.append(("ANNOUNCE_LEAVE", room))

    def chat(self, room: str, text: Optional[str] = None) -> None:
        """CHAT to `room` (whose ref must be known): echoed if a member, else error 6."""
        field, ending = self._style()
        if text is None:
            lines = [self._chat_line() for _ in range(1 if self.rng.random() < 0.8 else 3)]
            text = "\n".join(lines)
        name = self.name if self.rng.random() < 0.8 else "someone-else"   # not trusted anyway
        body = text.replace("\n", ending)
        self._send([field("CHAT", str(self.fuzzer.refs[room])), field("JOIN_ID", "7"),
                    field("CLIENT_NAME", name), "MESSAGE: " + body, ""], ending)
        if room in self.member:
            self.expect.append(("ECHO", room, text))
        else:
            self.expect.append(("ERROR", ErrorCode.NOT_A_MEMBER))

    def _chat_line(self) -> str:
        """A line of text that trims to itself (it starts and ends with a letter): usually
        short, sometimes up to PROBE_LINE_BYTES (three of them stay well under the limit)."""
        piece = random_text(self.rng, 100)
        if self.rng.random() < 0.1:
            piece += " "
            piece *= self.rng.randint(1, max(1, PROBE_LINE_BYTES // len(piece.encode("utf-8"))))
        return "a" + piece + "z"

    def disconnect(self) -> bool:
        """DISCONNECT, if the order of its leave announcements can be predicted now."""
        refs = self.fuzzer.refs
        if any(room not in refs for room in self.member):
            return False                       # a JOINED is outstanding: its ref is unknown
        field, ending = self._style()
        self._send([field("DISCONNECT", "0"), field("PORT", "0"), field("CLIENT_NAME", self.name)],
                   ending)
        for room in sorted(self.member, key=refs.get):
            self.expect.append(("ANNOUNCE_LEAVE", room))
        self.member.clear()
        self.expect.append(("EOF",))
        self.disconnecting = True
        return True

    def malformed(self) -> None:
        """A well-framed request with a known fault, and the error code README documents."""
        rng = self.rng
        ending = "\r\n" if rng.random() < 0.3 else "\n"
        name = self.name
        known = [ref for room, ref in self.fuzzer.refs.items()]
        ref = str(rng.choice(known)) if known else "0"
        unknown = str(10 ** 9 + rng.randint(0, 999))
        bad = rng.choice(["x", "-1", "+1", "1.0", "0x1", "1_0", "\u0661", ""])
        cases = [
            (["CHAT: " + bad, "JOIN_ID: 1", "CLIENT_NAME: " + name, "MESSAGE: m", ""],
             ErrorCode.BAD_INTEGER),
            (["CHAT: " + unknown, "JOIN_ID: 1", "CLIENT_NAME: " + name, "MESSAGE: m", ""],
             ErrorCode.UNKNOWN_ROOM),
            (["CHAT: " + ref, "CLIENT_NAME: " + name, "MESSAGE: m", ""],
             ErrorCode.MALFORMED_REQUEST),
            (["LEAVE_CHATROOM: " + bad, "JOIN_ID: 1", "CLIENT_NAME: " + name],
             ErrorCode.BAD_INTEGER),
            (["LEAVE_CHATROOM: " + unknown, "JOIN_ID: 1", "CLIENT_NAME: " + name],
             ErrorCode.UNKNOWN_ROOM),
            (["LEAVE_CHATROOM: " + ref, "JOIN_ID: " + bad, "CLIENT_NAME: " + name],
             ErrorCode.BAD_INTEGER),
            (["JOIN_CHATROOM:  ", "CLIENT_IP: 0", "PORT: 0", "CLIENT_NAME: " + name],
             ErrorCode.EMPTY_ROOM_NAME),
            (["JOIN_CHATROOM: room1", "CLIENT_IP: 0", "PORT: 0", "CLIENT_NAME:  "],
             ErrorCode.EMPTY_CLIENT_NAME),
            (["JOIN_CHATROOM: room1", "CLIENT_IP: 0", "PORTS: 0", "CLIENT_NAME: " + name],
             ErrorCode.MALFORMED_REQUEST),
            (["JOIN_CHATROOM: room1", "PORT: 0", "CLIENT_IP: 0", "CLIENT_NAME: " + name],
             ErrorCode.MALFORMED_REQUEST),
            (["JOIN_CHATROOM: room1", "CLIENT_IP: 0", ""], ErrorCode.MALFORMED_REQUEST),
            (["DISCONNECT: 0", "PORT: 0", "CLIENT_NAME: "], ErrorCode.EMPTY_CLIENT_NAME),
            (["JOIN_CHATROOM: " + "r" * (MAX_NAME_CHARS + 1), "CLIENT_IP: 0", "PORT: 0",
              "CLIENT_NAME: " + name], ErrorCode.NAME_TOO_LONG),
            (["JOIN_CHATROOM: room1", "CLIENT_IP: 0", "PORT: 0",
              "CLIENT_NAME: " + "n" * (MAX_NAME_CHARS + 1)], ErrorCode.NAME_TOO_LONG),
        ]
        if rng.random() < 0.15:                 # invalid UTF-8 in a HELO or in a message
            raw_cases = [b"HELO caf\xe9", b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: n\nMESSAGE: \xff\n"]
            self.fuzzer.queue(self.peer, rng.choice(raw_cases) + b"\n", guard=False)
            self.fuzzer.count("probe")
            self.expect.append(("ERROR", ErrorCode.INVALID_UTF8))
            return
        lines, code = rng.choice(cases)
        self._send(lines, ending)
        self.expect.append(("ERROR", code))

    def unknown(self) -> None:
        line = self.rng.choice(["WHATEVER", "PING %s" % self.name, "NOT_A_COMMAND: 1", "QUIT"])
        self._send([line], "\n")                 # answered by nothing at all

    def random_request(self) -> None:
        """One random request (or none, once DISCONNECT has been sent)."""
        if self.disconnecting or self.done:
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
            self.unknown()
        elif roll < 0.985:
            self.malformed()
        elif not self.disconnect():
            self.helo()

    # -- checking replies ----------------------------------------------------------------

    def on_message(self, msg: ServerMessage) -> None:
        if self.done:
            return
        if msg.kind == "CHAT" and msg.name != self.name:
            if msg.ref not in self.in_rooms:
                self.fail("got a chat of room %d, which it is not in: %r" % (msg.ref, msg))
                return
            if msg.text.startswith(FINAL_PREFIX):
                self.finals_seen[(msg.ref, msg.text)] += 1
            if self.records and msg.text == "%s has left this chatroom." % msg.name:
                self.leaves_seen.add((msg.ref, msg.name))
            return
        if not self.expect:
            self.fail("unexpected message %r" % msg)
            return
        want = self.expect.popleft()
        problem = self._mismatch(want, msg)
        if problem:
            self.fail("expected %r, got %r (%s)" % (want, msg, problem))
            return
        self.checked += 1

    def _mismatch(self, want: Expectation, msg: ServerMessage) -> str:
        """Why `msg` is not the expected reply `want` ("" when it is)."""
        kind = want[0]
        refs = self.fuzzer.refs
        port = self.fuzzer.port
        if kind == "HELO":
            if msg.kind != "HELO" or msg.line != want[1] or msg.ip != HOST or msg.port != port:
                return "wrong HELO reply"
        elif kind == "JOINED":
            if msg.kind != "JOINED" or msg.room != want[1] or msg.ip != HOST or msg.port != port:
                return "wrong JOINED_CHATROOM reply"
            if self.join_id is None:
                self.join_id = msg.join_id
            elif msg.join_id != self.join_id:
                return "JOIN_ID changed from %d" % self.join_id
        elif kind in ("ANNOUNCE_JOIN", "ANNOUNCE_LEAVE", "ECHO"):
            room = want[1]
            if kind == "ANNOUNCE_JOIN":
                text = "%s has joined this chatroom." % self.name
            elif kind == "ANNOUNCE_LEAVE":
                text = "%s has left this chatroom." % self.name
            else:
                text = want[2]
            if msg.kind != "CHAT" or msg.ref != refs.get(room) or msg.text != text:
                return "wrong own announcement or echo"
            if kind == "ANNOUNCE_JOIN":
                self.in_rooms.add(msg.ref)
            elif kind == "ANNOUNCE_LEAVE":
                self.in_rooms.discard(msg.ref)
        elif kind == "LEFT":
            # the JOIN_ID the server gave this connection; the request's only if it never joined
            given = self.join_id if self.join_id is not None else want[2]
            if msg.kind != "LEFT" or msg.ref != want[1] or msg.join_id != given:
                return "wrong LEFT_CHATROOM reply"
        elif kind == "ERROR":
            if msg.kind != "ERROR" or msg.code != want[1]:
                return "wrong reply to a malformed request (want ERROR_CODE %d)" % want[1]
        elif kind == "EOF":
            return "a message after the last leave announcement of a DISCONNECT"
        return ""

    def on_closed(self) -> None:
        """The server closed the connection: right only when a DISCONNECT's replies are in."""
        if self.done:
            return
        if list(self.expect) == [("EOF",)]:
            self.expect.clear()
            self.checked += 1
        else:
            self.fail("server closed the connection with %d replies outstanding: %r"
                      % (len(self.expect), list(self.expect)[:3]))
        self.done = True

    def fail(self, problem: str) -> None:
        """Record a failed check and retire this probe (its expectations are now out of step)."""
        self.fuzzer.failure("probe %s: %s" % (self.name, problem))
        self.done = True
        self.fuzzer.retire(self.peer, "abort")

    def idle(self) -> bool:
        return self.done or not self.expect


# -------------------------------------------------------------------------------------------
# The fuzzer
# -------------------------------------------------------------------------------------------

class Fuzzer:
    """One run against the server at 127.0.0.1:`port` (`server` is set when we spawned it)."""

    def __init__(self, opts: argparse.Namespace, port: int,
                 server: Optional[ServerProcess] = None) -> None:
        self.opts = opts
        self.port = port
        self.server = server
        self.rng = random.Random(opts.seed)
        self.selector = selectors.DefaultSelector()
        self.refs: Dict[str, int] = {}         # room name -> ROOM_REF, from JOINED replies
        self.rooms_by_ref: Dict[int, str] = {}
        self.join_id_owner: Dict[int, int] = {}   # JOIN_ID -> serial of its connection
        fresh = ["fz%d-%d" % (opts.seed, i) for i in range(opts.fresh_rooms)]
        self.maker = RequestMaker(self.rng, self.refs, fresh)
        self.peers: List[FuzzPeer] = []        # every open connection
        self.chaos: List[FuzzPeer] = []
        self.probes: List[Probe] = []
        self.serial = 0
        self.sent_by_kind: Dict[str, int] = collections.Counter()
        self.errors_by_code: Dict[int, int] = collections.Counter()
        self.server_closed = 0                 # connections the server closed or reset
        self.vanished = 0                      # connections we reset
        self.closed_by_us = 0                  # connections we closed normally
        self.failures: List[str] = []
        self.failure_count = 0
        self.hangs = 0
        self.crashes = 0
        self.helo_max = 0.0
        self.batches = 0

    # -- bookkeeping ----------------------------------------------------------------------

    def count(self, kind: str) -> None:
        self.sent_by_kind[kind] += 1

    def requests_sent(self) -> int:
        return sum(self.sent_by_kind.values())

    def failure(self, text: str) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_FAILURES_SHOWN:
            self.failures.append(text)

    # -- connections ----------------------------------------------------------------------

    def open_peer(self, label: str, reading: bool = True) -> Optional[FuzzPeer]:
        try:
            sock = connect(self.port)
        except OSError as exc:
            self.failure("cannot connect: %s" % exc)
            return None
        self.serial += 1
        peer = FuzzPeer(sock, label, self.serial, reading)
        self.peers.append(peer)
        return peer

    def new_probe(self, name: str, records: bool = False) -> Optional[Probe]:
        peer = self.open_peer(name)
        if peer is None:
            return None
        probe = Probe(self, name, peer, records)
        self.probes.append(probe)
        return probe

    def queue(self, peer: FuzzPeer, data: bytes, guard: bool = True) -> None:
        """Queue bytes for `peer`, never letting KILL_SERVICE through unless allowed. The
        check looks across the join with what was queued before, since a truncated request
        makes the server read two requests as one. (Probes need no guard: their requests are
        well framed and none starts with KILL_SERVICE.)"""
        if guard and not self.opts.allow_kill and b"KILL" in (peer.tail + data).upper():
            data = b"HELO kill-guard\n"
        peer.queue(data)
        peer.tail = (peer.tail + data)[-16:]

    def retire(self, peer: FuzzPeer, how: str) -> None:
        """End a connection of ours now: "abort" (RST) or "close" (FIN)."""
        if peer.closed:
            return
        self._unregister(peer)
        if how == "abort":
            peer.abort()
            self.vanished += 1
        else:
            peer.close()
            self.closed_by_us += 1

    def _unregister(self, peer: FuzzPeer) -> None:
        if peer.events:
            self.selector.unregister(peer.sock)
            peer.events = 0

    def _sync_interest(self, peer: FuzzPeer) -> None:
        """Watch for input while it reads and for writability while output is queued."""
        want = ((selectors.EVENT_READ if peer.reading else 0)
                | (selectors.EVENT_WRITE if peer.out else 0))
        if want == peer.events:
            return
        if not want:
            self.selector.unregister(peer.sock)
        elif not peer.events:
            self.selector.register(peer.sock, want, peer)
        else:
            self.selector.modify(peer.sock, want, peer)
        peer.events = want

    def _forget_closed(self) -> None:
        self.peers = [peer for peer in self.peers if not peer.closed]
        self.chaos = [peer for peer in self.chaos if not peer.closed]

    def _on_closed_by_server(self, peer: FuzzPeer) -> None:
        self._unregister(peer)
        peer.close()
        self.server_closed += 1
        if peer.probe is not None:
            peer.probe.on_closed()

    # -- the loop ----------------------------------------------------------------------------

    def pump(self, seconds: float, until: Optional[Callable[[], bool]] = None) -> bool:
        """Send what is queued in random slices and read everything, until `until()` holds
        with nothing left to send (or, without `until`, until QUIET seconds pass with nothing
        sent or received). False if `seconds` ran out first."""
        deadline = time.monotonic() + seconds
        quiet_since = None
        for _ in range(MAX_TICKS):
            for peer in self.peers:
                if peer.closed:
                    continue
                if peer.when_flushed and not peer.out:
                    self.retire(peer, peer.when_flushed)
                else:
                    self._sync_interest(peer)
            now = time.monotonic()
            if now >= deadline:
                return False
            events = self.selector.select(min(QUIET / 2, deadline - now))
            for key, mask in events:
                peer = key.data
                if peer.closed:
                    continue
                if mask & selectors.EVENT_READ:
                    self._read(peer)
                if mask & selectors.EVENT_WRITE and not peer.closed:
                    self._write(peer)
            self._forget_closed()
            if any(peer.out for peer in self.peers):
                quiet_since = None
                continue
            if until is not None:
                if until():
                    return True
            elif events:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET:
                return True
        return False

    def _read(self, peer: FuzzPeer) -> None:
        try:
            messages = peer.receive()
        except ProtocolViolation as exc:
            self.failure("conn %s: %s" % (peer.label, exc))
            if peer.probe is not None:
                peer.probe.done = True
            self.retire(peer, "abort")
            return
        for msg in messages:
            if msg.kind == "ERROR":
                self.errors_by_code[msg.code] += 1
            elif msg.kind == "JOINED":
                self._learn(peer, msg)
            if peer.probe is not None:
                peer.probe.on_message(msg)
                if peer.closed:
                    return
        if peer.closed_by_server:
            self._on_closed_by_server(peer)

    def _write(self, peer: FuzzPeer) -> None:
        peer.flush(segment_size(self.rng))
        if peer.closed_by_server:
            self._on_closed_by_server(peer)
        elif not peer.out and peer.when_flushed:
            self.retire(peer, peer.when_flushed)

    def _learn(self, peer: FuzzPeer, msg: ServerMessage) -> None:
        """Check a JOINED reply against everything learnt so far, and learn from it."""
        known = self.refs.get(msg.room)
        if known is not None and known != msg.ref:
            self.failure("room %r had ROOM_REF %d, now %d" % (msg.room[:60], known, msg.ref))
        owner = self.rooms_by_ref.get(msg.ref)
        if owner is not None and owner != msg.room:
            self.failure("ROOM_REF %d names both %r and %r" % (msg.ref, owner[:60], msg.room[:60]))
        self.refs.setdefault(msg.room, msg.ref)
        self.rooms_by_ref.setdefault(msg.ref, msg.room)
        if peer.join_id is None:
            peer.join_id = msg.join_id
        elif peer.join_id != msg.join_id:
            self.failure("conn %s: JOIN_ID changed from %d to %d"
                         % (peer.label, peer.join_id, msg.join_id))
        holder = self.join_id_owner.setdefault(msg.join_id, peer.serial)
        if holder != peer.serial:
            self.failure("JOIN_ID %d given to two connections" % msg.join_id)

    # -- batches ----------------------------------------------------------------------------

    def refill(self) -> None:
        """Top the pools of chaos connections and probes up again."""
        while len(self.chaos) < self.opts.pool:
            reading = self.rng.random() >= P_NON_READER
            peer = self.open_peer("chaos%d" % (self.serial + 1), reading)
            if peer is None:
                return
            self.chaos.append(peer)
        live = [probe for probe in self.probes if not probe.done and not probe.disconnecting]
        for _ in range(self.opts.probes - len(live)):
            if self.new_probe("probe%d" % (self.serial + 1)) is None:
                return

    def batch(self, size: int) -> None:
        """Queue `size` requests (and now and then a burst or a flood), then pump."""
        rng = self.rng
        self.refill()
        if rng.random() < P_BURST and size >= 10:
            size -= self.burst(min(size, rng.randint(10, self.opts.burst)))
        if rng.random() < P_FLOOD and size >= 10:
            size -= self.flood(size)
        live_probes = [p for p in self.probes if not p.done and not p.disconnecting]
        for _ in range(max(0, size)):
            if live_probes and rng.random() < P_PROBE:
                rng.choice(live_probes).random_request()
                continue
            peers = [peer for peer in self.chaos if not peer.closed and not peer.when_flushed]
            if not peers:
                break
            peer = rng.choice(peers)
            roll = rng.random()
            if roll < P_VANISH + P_HALF_CLOSE:
                _kind, data = self.maker.make(peer)
                self.queue(peer, data[:rng.randint(0, max(0, len(data) - 1))])
                peer.when_flushed = "abort" if roll < P_VANISH else "close"
                self.count("vanish" if roll < P_VANISH else "half-close")
            elif roll < P_VANISH + P_HALF_CLOSE + P_OVERSIZE:
                self.queue(peer, self.maker.oversize())
                self.count("oversize")
            else:
                kind, data = self.maker.make(peer)
                self.queue(peer, data)
                self.count(kind)
        self.pump(BATCH_TIMEOUT)
        for peer in self.chaos:               # now and then a non-reader is let go
            if not peer.reading and not peer.closed and rng.random() < 0.1:
                self.retire(peer, "abort")
        self._forget_closed()
        self.batches += 1

    def burst(self, count: int) -> int:
        """Open `count` connections at once; each sends one request and then goes (RST or FIN
        when its request is sent, or at the end of the batch)."""
        peers = []
        for _ in range(count):
            peer = self.open_peer("burst%d" % (self.serial + 1))
            if peer is None:
                break
            kind, data = self.maker.make(peer)
            if self.rng.random() < 0.5:
                data = ("JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: b\n"
                        % self.rng.choice(ROOM_NAMES[:4])).encode() + data
            self.queue(peer, data)
            self.count(kind)
            peer.when_flushed = self.rng.choice(["abort", "close", None])
            peers.append(peer)
        self.pump(BATCH_TIMEOUT)
        for peer in peers:
            self.retire(peer, self.rng.choice(["abort", "close"]))
        self._forget_closed()
        return len(peers)

    def flood(self, most: int) -> int:
        """One chaos connection joins a room and pipelines many large chats into it (at most
        `most` requests in all): its own echoes pass the server's high-water mark, and
        non-readers in the room fill up. Returns the number of requests sent."""
        peers = [peer for peer in self.chaos if peer.reading and not peer.closed
                 and not peer.when_flushed]
        if not peers:
            return 0
        peer = self.rng.choice(peers)
        room = self.rng.choice(ROOM_NAMES[:4])
        self.queue(peer, ("JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: flood\n"
                          % room).encode())
        self.pump(BATCH_TIMEOUT, until=lambda: room in self.refs or peer.closed)
        if room not in self.refs or peer.closed:
            return 1
        count = min(most - 1, self.rng.randint(50, 200))
        text = b"f" * self.rng.randint(2000, 8000)
        chat = (b"CHAT: %d\nJOIN_ID: 0\nCLIENT_NAME: flood\nMESSAGE: %s\n\n"
                % (self.refs[room], text))
        for _ in range(count):
            self.queue(peer, chat)
        self.sent_by_kind["flood"] += count + 1
        return count + 1

    def health(self) -> bool:
        """Is the server still there (process) and answering (HELO)? Counts crashes, hangs."""
        if self.server is not None and not self.server.alive():
            self.crashes += 1
            self.failure("server process exited with status %s; log tail:\n%s"
                         % (self.server.returncode(), self.server.log_tail()))
            return False
        ok, seconds, problem = helo_check(self.port, self.opts.helo_timeout,
                                          "health-%d" % self.batches)
        self.helo_max = max(self.helo_max, seconds)
        if not ok:
            if self.server is not None and not self.server.alive():
                return self.health()
            self.hangs += 1
            self.failure("health check after batch %d: %s" % (self.batches, problem))
            return False
        return True

    # -- end-of-run checks ---------------------------------------------------------------

    def check_segmentation(self) -> Tuple[List[dict], List[str]]:
        """Requests of exactly MAX_REQUEST_BYTES - 1, MAX and MAX + 1 bytes (the frame, not
        counting its ending), sent whole and split inside their terminating newline(s) with a
        pause between the halves: every way of sending one must get the same answer."""
        cases = []
        for kind in ("HELO", "CHAT"):
            for size in (MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1):
                for ending in (b"\n", b"\r\n"):
                    if kind == "HELO":
                        frame = b"HELO " + b"h" * (size - 5)
                        wire = frame + ending
                        terminator = len(ending)
                    else:
                        head = b"CHAT: 999999999\nJOIN_ID: 1\nCLIENT_NAME: n\nMESSAGE: "
                        frame = head + b"c" * (size - len(head))
                        wire = frame.replace(b"\n", ending) + ending * 2
                        terminator = 2 * len(ending)
                    assert len(frame) == size
                    for split in [None] + list(range(terminator)):
                        at = None if split is None else len(wire) - terminator + split
                        cases.append({"kind": kind, "size": size, "ending": ending.decode(),
                                      "split": split, "wire": wire, "at": at})
        socks = []
        for case in cases:
            try:
                sock = socket.create_connection((HOST, self.port), timeout=HELO_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                self.failure("segmentation check: cannot connect: %s" % exc)
                break
            socks.append(sock)
        cases = cases[:len(socks)]
        try:
            for halves in (0, 1):
                for case, sock in zip(cases, socks):
                    wire, at = case["wire"], case["at"]
                    part = (wire if at is None else wire[:at]) if halves == 0 else (
                        b"" if at is None else wire[at:])
                    try:
                        if part:
                            sock.sendall(part)
                    except OSError:
                        pass
                time.sleep(SPLIT_PAUSE)
            for case, sock in zip(cases, socks):
                case["outcome"] = self._first_reply(sock)
        finally:
            for sock in socks:
                sock.close()
        table, problems = [], []
        groups = collections.OrderedDict()
        for case in cases:
            key = (case["kind"], case["size"], case["ending"])
            groups.setdefault(key, []).append(case)
        for (kind, size, ending), group in groups.items():
            outcomes = {("whole" if c["split"] is None else "split@%d" % c["split"]): c["outcome"]
                        for c in group}
            table.append({"kind": kind, "frame_bytes": size, "ending": ending,
                          "outcomes": outcomes})
            if len(set(outcomes.values())) > 1:
                problems.append("%s request of %d bytes ending %r: the answer depends on how it "
                                "is split: %s" % (kind, size, ending, outcomes))
        return table, problems

    def _first_reply(self, sock: socket.socket) -> str:
        """"accepted", "too long" (ERROR_CODE 8) or what else came back first."""
        parser = MessageParser()
        deadline = time.monotonic() + HELO_TIMEOUT
        try:
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(256 * 1024)
                if not data:
                    return "closed"
                messages = parser.feed(data)
                if messages:
                    msg = messages[0]
                    if msg.kind == "ERROR" and msg.code == ErrorCode.REQUEST_TOO_LONG:
                        return "too long"
                    if msg.kind == "HELO" or (msg.kind == "ERROR"
                                              and msg.code == ErrorCode.UNKNOWN_ROOM):
                        return "accepted"
                    return "other: %r" % msg
        except socket.timeout:
            pass
        except (OSError, ProtocolViolation) as exc:
            return "%s" % type(exc).__name__
        return "no reply"

    def check_rooms(self) -> None:
        """The end-of-run consistency check (see the module docstring)."""
        probes_idle = lambda: all(probe.idle() for probe in self.probes)  # noqa: E731
        if not self.pump(DRAIN_TIMEOUT, until=probes_idle):
            self.failure("probes still waiting for %d replies after %g s"
                         % (sum(len(p.expect) for p in self.probes if not p.done),
                            DRAIN_TIMEOUT))
        for peer in self.chaos:
            self.retire(peer, self.rng.choice(["abort", "close"]))
        self._forget_closed()
        rooms = [room for room in sorted(self.refs, key=self.refs.get)
                 if len(room.encode("utf-8")) < MAX_REQUEST_BYTES - 200]
        checker = self.new_probe("checker", records=True)
        observers = [self.new_probe("observer%d" % i) for i in range(3)]
        if checker is None or None in observers:
            return
        for room in rooms:
            checker.join(room)
        self.pump(DRAIN_TIMEOUT, until=checker.idle)
        for observer in observers:
            for room in rooms:
                observer.join(room)
        self.pump(DRAIN_TIMEOUT, until=lambda: all(o.idle() for o in observers))
        # one leaves every room, one disconnects, one vanishes in the middle of a request
        for room in rooms:
            observers[0].leave(room)
        observers[1].disconnect()
        self.queue(observers[2].peer, b"CHAT: 0\nJOIN_ID: 1\nCLIEN")
        observers[2].peer.when_flushed = "abort"
        observers[2].done = True
        wanted = {(self.refs[room], o.name) for room in rooms for o in observers}
        all_left = lambda: (observers[0].idle() and observers[1].idle()  # noqa: E731
                            and wanted <= checker.leaves_seen)
        if not self.pump(DRAIN_TIMEOUT, until=all_left):
            missing = sorted(wanted - checker.leaves_seen)
            self.failure("checker did not see %d leave announcements of the observers, e.g. %r"
                         % (len(missing), missing[:5]))
        # the checker chats in every room; every probe in a room must get it exactly once
        nonce = self.rng.randint(0, 10 ** 9)
        finals = {}
        for room in rooms:
            finals[self.refs[room]] = "%s %d %d" % (FINAL_PREFIX, nonce, self.refs[room])
            checker.chat(room, finals[self.refs[room]])
        listeners = [p for p in self.probes if not p.done and p is not checker]

        def all_delivered() -> bool:
            return checker.idle() and all(
                probe.done or all(probe.finals_seen[(ref, finals[ref])] >= 1
                                  for ref in probe.in_rooms if ref in finals)
                for probe in listeners)
        if not self.pump(DRAIN_TIMEOUT, until=all_delivered):
            self.failure("the checker's chat did not reach every member within %g s"
                         % DRAIN_TIMEOUT)
        self.pump(QUIET * 5)                   # time for duplicates to show
        for probe in listeners:
            if probe.done:
                continue
            for ref in probe.in_rooms:
                got = probe.finals_seen[(ref, finals.get(ref))]
                if ref in finals and got != 1:
                    self.failure("probe %s got the checker's chat in room %d %d times"
                                 % (probe.name, ref, got))
        # everybody still here disconnects, checking the leave announcements once more
        for probe in self.probes:
            if not probe.done and not probe.disconnecting:
                if not probe.disconnect():
                    self.retire(probe.peer, "close")
                    probe.done = True
        if not self.pump(DRAIN_TIMEOUT, until=probes_idle):
            self.failure("DISCONNECT replies still missing after %g s" % DRAIN_TIMEOUT)
        for peer in list(self.peers):
            self.retire(peer, "close")

    def kill(self) -> Dict[str, object]:
        """--allow-kill: KILL_SERVICE, sent a byte at a time with CRLF; the server must stop
        within a second (the process exits, or nothing accepts connections any more)."""
        started = time.monotonic()
        try:
            with socket.create_connection((HOST, self.port), timeout=HELO_TIMEOUT) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for byte in b"\r\nKILL_SERVICE\r\n":
                    sock.sendall(bytes([byte]))
        except OSError as exc:
            return {"sent": False, "error": str(exc)}
        for _ in range(100):
            if self.server is not None:
                stopped = not self.server.alive()
            else:
                try:
                    socket.create_connection((HOST, self.port), timeout=0.5).close()
                    stopped = False
                except OSError:
                    stopped = True
            if stopped:
                return {"sent": True, "stopped_after_s": round(time.monotonic() - started, 3)}
            time.sleep(0.01)
        self.failure("KILL_SERVICE: the server was still running 1 s later")
        return {"sent": True, "stopped_after_s": None}

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> Dict[str, object]:
        opts = self.opts
        started = time.monotonic()
        rss_before = self.server.rss_kb() if self.server else None
        next_progress = started + PROGRESS_EVERY
        alive = self.health()
        while alive and self.requests_sent() < opts.count:
            if time.monotonic() - started >= opts.seconds:
                break
            self.batch(min(opts.batch, opts.count - self.requests_sent()))
            alive = self.health()
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_EVERY
                self.progress(started)
        fuzz_requests = self.requests_sent()
        segmentation, segmentation_failures = [], []
        if alive:
            segmentation, segmentation_failures = self.check_segmentation()
            alive = self.health()
        if alive:
            self.check_rooms()
            alive = self.health()
        rss_after = None
        if alive and self.server:
            time.sleep(0.2)                     # let the server finish closing everything
            self.health()
            rss_after = self.server.rss_kb()
        kill = self.kill() if alive and opts.allow_kill else None
        self.progress(started)
        summary = {
            "seed": opts.seed,
            "port": self.port,
            "spawned": self.server is not None,
            "seconds": round(time.monotonic() - started, 2),
            "requests_sent": fuzz_requests,
            "requests_by_kind": dict(sorted(self.sent_by_kind.items())),
            "check_requests_sent": self.requests_sent() - fuzz_requests,
            "batches": self.batches,
            "connections_opened": self.serial,
            "errors_by_code": {str(code): n for code, n in sorted(self.errors_by_code.items())},
            "disconnects": self.server_closed,
            "vanished": self.vanished,
            "closed_by_fuzzer": self.closed_by_us,
            "probe_replies_checked": sum(probe.checked for probe in self.probes),
            "rooms_known": len(self.refs),
            "hangs": self.hangs,
            "crashes": self.crashes,
            "slowest_health_check_s": round(self.helo_max, 3),
            "failures": self.failure_count,
            "failure_details": self.failures,
            "segmentation_failures": segmentation_failures,
            "segmentation": segmentation,
            "server_rss_kb_before": rss_before,
            "server_rss_kb_after": rss_after,
            "server_rss_kb_peak": self.server.status_kb("VmHWM") if self.server else None,
            "rss_change_percent": (round(100.0 * (rss_after - rss_before) / rss_before, 1)
                                   if rss_before and rss_after else None),
        }
        if kill is not None:
            summary["kill"] = kill
        summary["ok"] = not (self.hangs or self.crashes or self.failure_count
                             or segmentation_failures)
        return summary

    def progress(self, started: float) -> None:
        if self.opts.quiet:
            return
        rss = self.server.rss_kb() if self.server and self.server.alive() else None
        print("fuzz: %6.1fs %d/%d requests, %d batches, %d errors received, %d disconnects, "
              "%d hangs, %d crashes, %d failures%s"
              % (time.monotonic() - started, self.requests_sent(), self.opts.count, self.batches,
                 sum(self.errors_by_code.values()), self.server_closed, self.hangs,
                 self.crashes, self.failure_count,
                 ", server RSS %d kB" % rss if rss else ""), file=sys.stderr, flush=True)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fuzz a live chat server with random valid and invalid requests, and check "
                    "that it survives, answers HELO promptly and keeps its rooms consistent. "
                    "Prints a JSON summary; exits 1 on any hang, crash or failed check.")
    add_target_arguments(parser, "fuzz")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help="requests to send (default %d)" % DEFAULT_COUNT)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="stop sending after this long (default %g)" % DEFAULT_SECONDS)
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a random one, printed in the summary)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help="requests between health checks (default %d)" % DEFAULT_BATCH)
    parser.add_argument("--pool", type=int, default=DEFAULT_POOL,
                        help="chaos connections kept open (default %d)" % DEFAULT_POOL)
    parser.add_argument("--probes", type=int, default=DEFAULT_PROBES,
                        help="probe connections kept open (default %d)" % DEFAULT_PROBES)
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST,
                        help="most connections opened at once in a burst (default %d)"
                             % DEFAULT_BURST)
    parser.add_argument("--fresh-rooms", type=int, default=DEFAULT_FRESH_ROOMS,
                        help="room names used beyond the fixed list (default %d)"
                             % DEFAULT_FRESH_ROOMS)
    parser.add_argument("--helo-timeout", type=float, default=HELO_TIMEOUT,
                        help="a health check slower than this is a hang (default %g s)"
                             % HELO_TIMEOUT)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--allow-kill", action="store_true",
                        help="end by sending KILL_SERVICE and checking that the server stops "
                             "(never sent otherwise)")
    opts = parser.parse_args(argv)
    if opts.seed is None:
        opts.seed = random.SystemRandom().randint(0, 2 ** 31)
    if opts.count < 0 or opts.batch < 1 or opts.pool < 1 or opts.probes < 0 or opts.burst < 10:
        parser.error("--count >= 0, --batch >= 1, --pool >= 1, --probes >= 0, --burst >= 10")
    return opts


def run(opts: argparse.Namespace) -> Dict[str, object]:
    """Run the fuzzer as `opts` says (spawning the server if asked) and return the summary."""
    raise_nofile_limit()
    server = ServerProcess() if opts.spawn else None
    try:
        fuzzer = Fuzzer(opts, server.port if server else opts.port, server)
        return fuzzer.run()
    finally:
        if server is not None:
            server.stop()


def main(argv: Optional[List[str]] = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    summary = run(opts)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
