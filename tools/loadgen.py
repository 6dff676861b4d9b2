#!/usr/bin/env python3
"""Load generator for the chat server: three scenarios, one process, one selectors loop.

    python3 tools/loadgen.py fanout --port 8080 --rooms 10 --members 20 --messages 200
    python3 tools/loadgen.py connections --port 8080 --count 2000 --rooms 10
    python3 tools/loadgen.py churn --port 8080 --clients 20 --seconds 10

It speaks PROTOCOL.md as a crowd of clients would, so anyone can load-test their own deployment.
It connects only to --host (default 127.0.0.1) and --port, and stops by itself: every wait is
bounded by --timeout (default 60 s, for the whole run) and by --stall (default 10 s without any
progress). While it runs it prints a progress line on standard error about once a second (one
line rewritten in place on a terminal, plain lines otherwise). At the end it prints one JSON
object on standard output and exits with status 0 only if nothing was missing, failed or timed
out; 1 otherwise; 2 for a usage error. Standard library only, Python 3.8+, Linux or macOS.

Scenarios and what their numbers mean
-------------------------------------
fanout --rooms R --members M --messages K [--size B]
    Chat throughput. R rooms of M members join. Then every member sends K chat messages (a text
    of B bytes plus a sequence number) as fast as the server takes them, and every member must
    receive every message of its room, its own included: R*M*M*K deliveries. Meanwhile a probe
    client alone in a room of its own sends one message every 10 ms and times its own echo.
    expected, delivered     R*M*M*K, and the CHAT messages of their own room that members got
    missing, extra          per member, short of or beyond M*K; both must be 0
    seconds                 from the first chat sent to the last delivery
    deliveries_per_s        delivered / seconds: the headline number
    join_seconds            connecting and joining everybody, before the clock above starts
    probe_p50_ms, probe_p99_ms, probe_max_ms
                            the probe's echo times: how long the server makes an unrelated
                            client wait while it is busy; probes = echoes timed, probes_lost =
                            probe messages never echoed (must be 0), probes_skipped = ticks
                            when its last message was still unsent, probe_in_flight_max = most
                            probe messages awaiting their echo at once (see Caveats)
    loadgen_cpu_s           this process's CPU time during the chat phase, and
    loadgen_cpu_share       that divided by seconds. Near 1.0 the generator, not the server, is
                            the limit and deliveries_per_s says nothing about the server.
    This is the shared benchmark kit's scenario (../shared/bench/loadgen.py), numbers included,
    so the two can be compared directly.

connections --count N [--rooms R]
    Many clients at once. Raises the soft RLIMIT_NOFILE to the hard limit first (and says so on
    standard error), opens N connections (at most 256 connecting at a time), joins them to R
    rooms (connection i to room i mod R), then one member of each room posts one chat, which
    must reach every member of that room exactly once.
    connect_seconds         until every connection was made (or had failed)
    join_seconds            until every JOIN was answered
    announce_seconds        until every join announcement was delivered (room of n: n(n+1)/2)
    delivery_seconds        from posting the R chats to the last of the N deliveries
    connected, joined, delivered, missing, and the failures below
    seconds, loadgen_cpu_s, loadgen_cpu_share
                            the whole scenario, this process's CPU time in it, and the ratio.
    A JOIN costs the server O(n) in a room of n (the announcement goes to all), so --rooms
    changes the join times a great deal.

churn --clients N --seconds T [--rooms R]
    Clients coming and going. Each of N clients runs cycles for T seconds: connect, JOIN one of
    R rooms (default 3) at random, post 1 to 3 chats, then end the cycle one of three ways at
    random: LEAVE (and JOIN again on the same connection), DISCONNECT, or vanish (close with
    RST, no goodbye). Every request must get the replies it is owed within --reply-timeout
    (default 5 s): JOINED_CHATROOM and its own join announcement after JOIN, its own copy after
    CHAT, LEFT_CHATROOM and its own leave announcement after LEAVE, its own leave announcement
    and then the server's close after DISCONNECT.
    operations, ops_per_s   confirmed connects, joins, chats, leaves, disconnects and vanishes
                            (by_kind), per second of the run
    replies_expected, replies_received, all_replies_received
    reply_p50_ms, reply_p99_ms, reply_max_ms
                            time from a request to each reply it is owed
    others_messages         chats and announcements of other clients that it also received
    loadgen_cpu_s, loadgen_cpu_share
                            this process's CPU time, and that / elapsed. The clients are closed
                            loop (each waits for its reply before its next request) and churn
                            does not nap (it times replies), so generator and server take turns
                            and both stay busy: ops_per_s measures the pair. With a share near
                            1.0, the generator is the limit; use fewer clients or another host.
    A client that meets an error (an ERROR_CODE, a reply that is wrong or late, an unexpected
    close) has it counted, drops its connection with RST and starts a new cycle; one whose
    connect fails waits 0.1 s first. Replies are checked strictly: a CHAT of a room the client
    is not in (before JOINED, after its own leave announcement) is a failure.

Every scenario also reports failed (the number of failures), failures (counted by kind:
connect_failed, error_reply, unexpected_message, closed_by_server, timeout, ...), up to five
failure_examples, timed_out (the --timeout deadline passed), stalled (a phase gave up after
--stall seconds without progress), and ok (the exit status in words).

How deliveries are counted (fanout)
-----------------------------------
The server's messages are parsed, not guessed at: CHAT messages end at a blank line, the others
(JOINED_CHATROOM, LEFT_CHATROOM, ERROR_CODE) have a fixed number of lines (split_messages). The
joins are parsed message by message. The chat phase, where the volume is, takes each member's
stream up to its last blank line and counts and checks it in a few whole-buffer searches that
run at C speed (ChatCounter): one MESSAGE line per message, each message starting with "CHAT:
<its room's ref>" right after the previous one's blank line. Only when that check
fails (an ERROR_CODE, a message of another room, a mangled message) is the stretch parsed
message by message, so the count stays exact and the odd messages are reported. A message split
across two reads is counted once, when it is complete.

Caveats
-------
- The generator shares the machine with the server (and, on a shared host, with everybody else):
  its own CPU time is taken from the server. It naps --nap (5 ms) between polls so that each read
  returns many messages at once and it stays well below one core; look at loadgen_cpu_share.
- Quote medians of several runs and ratios between servers measured the same way, never one
  absolute figure: on a busy 2-core machine the same run varies by a factor of two.
- The probe's echo is timed when it is read; the nap is cut short when the probe has input, so
  the nap does not inflate the probe's times, but the generator's own work can (by about the
  time one poll takes).
- The probe really posts every 10 ms, whether or not its last message came back. A server that
  serves each connection a fair share of requests per loop iteration may give the probe fewer
  than 100 a second under heavy load; its messages then queue behind each other and the times
  grow through the run (probe_in_flight_max well above p50 / 10 ms). The shared kit posts at
  most once per pass of its own loop (every 20-40 ms under load), so its probe times are lower
  in that case: compare probe times between servers measured by the same tool only.
- fanout does not check the order of each sender's messages (the server's tests do); it checks
  that each member got exactly its room's number of messages, and what kind they were.
- Rooms are named after this run (lg-PID-TIME-...), so runs do not disturb each other's counts,
  but the server keeps every room it ever saw (rooms.MAX_ROOMS); churn uses --rooms of them.
"""
import argparse
import collections
import errno
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT = 60.0          # seconds for the whole run
# A phase that sees no progress at all for this long gives up instead of waiting for the whole
# --timeout: a lost message would otherwise always cost the full minute.
DEFAULT_STALL = 10.0
# Sleep between polls in fanout and connections. Deliveries pile up in the kernel meanwhile, so
# one recv() returns hundreds of them and the generator stays cheaper per delivery than the
# server it measures (the shared kit's value, so that the two measure alike).
DEFAULT_NAP = 0.005
DEFAULT_REPLY_TIMEOUT = 5.0     # churn: the longest any reply may take
RECV_SIZE = 256 * 1024          # bytes asked of one recv(); as the shared kit
SEND_SIZE = 256 * 1024          # bytes offered to one send()
# Non-blocking connects in flight at once. A few hundred keeps the server's accept backlog
# (1024 in reactor.py) from overflowing, which would turn connects into 1 s SYN retries.
CONNECT_CONCURRENCY = 256
PROBE_INTERVAL = 0.010          # fanout: the probe posts one message every 10 ms
POLL_WAIT = 0.05                # longest select() wait when nothing is due sooner
PROGRESS_INTERVAL = 1.0         # seconds between progress lines
MAX_EXAMPLES = 5                # failure_examples kept for the summary
FD_MARGIN = 32                  # descriptors kept free beyond our connections (stdio, epoll...)
# A join phase in which a member was lost after joining cannot see its announcements add up;
# it ends after this much quiet instead.
SETTLE = 0.5
CHURN_ROOMS = 3
CHURN_MAX_CHATS = 3             # churn: chats per cycle, 1 to this
# churn: a client whose connect failed waits this long before it tries again, so that a server
# that is down costs a few failures a second, not a busy loop.
CHURN_RETRY_DELAY = 0.1


# ---------------------------------------------------------------------------------------------
# The wire format (PROTOCOL.md): requests out, messages in
# ---------------------------------------------------------------------------------------------

def join_request(room: str, name: str) -> bytes:
    return ("JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n"
            % (room, name)).encode("utf-8")


def chat_request(ref: int, join_id: int, name: str, text: str) -> bytes:
    return ("CHAT: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n"
            % (ref, join_id, name, text)).encode("utf-8")


def leave_request(ref: int, join_id: int, name: str) -> bytes:
    return ("LEAVE_CHATROOM: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\n"
            % (ref, join_id, name)).encode("utf-8")


def disconnect_request(name: str) -> bytes:
    return ("DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: %s\n" % name).encode("utf-8")


def joined_text(name: str) -> str:
    return "%s has joined this chatroom." % name


def left_text(name: str) -> str:
    return "%s has left this chatroom." % name


# Lines in each of the server's fixed-size messages, by the key of the first line. CHAT messages
# end at a blank line instead; anything else (HELO replies, garbage) is taken a line at a time.
FIXED_LINES = {b"JOINED_CHATROOM": 5, b"LEFT_CHATROOM": 2, b"ERROR_CODE": 2}


class Message(NamedTuple):
    """One message from the server. `kind` is the key of its first line (CHAT,
    JOINED_CHATROOM, LEFT_CHATROOM, ERROR_CODE) or UNKNOWN; `fields` maps each KEY to its
    trimmed value (a CHAT's MESSAGE keeps its inner newlines); `raw` is the text as received."""
    kind: str
    fields: Dict[str, str]
    raw: str

    def number(self, key: str) -> Optional[int]:
        """Field `key` as a non-negative integer, or None if it is missing or not one."""
        value = self.fields.get(key, "")
        return int(value) if value.isdigit() else None

    def is_chat(self, ref: int, name: str, text: str) -> bool:
        """True if this is the CHAT `text` from `name` in room `ref`."""
        return (self.kind == "CHAT" and self.number("CHAT") == ref
                and self.fields.get("CLIENT_NAME") == name and self.fields.get("MESSAGE") == text)


def parse_message(key: bytes, block: bytes) -> Message:
    """The Message for `block`, one whole message without its final newline(s)."""
    text = block.decode("utf-8", "replace")
    kind = key.decode("ascii", "replace") if key == b"CHAT" or key in FIXED_LINES else "UNKNOWN"
    fields = {}
    head, found, message = text.partition("\nMESSAGE:") if kind == "CHAT" else (text, "", "")
    for line in head.split("\n"):
        field, _, value = line.partition(":")
        fields[field.strip()] = value.strip()
    if found:
        fields["MESSAGE"] = message.strip()
    return Message(kind, fields, text)


def split_messages(buf: bytes, limit: Optional[int] = None) -> Tuple[List[Message], bytes]:
    """Cut the server's byte stream into messages: (the complete ones, the bytes left over).

    Blank lines between messages are skipped. With a `limit`, it stops after that many
    messages. Cost: a few searches per message, in Python, so it is for the low-volume parts of
    a run; ChatCounter counts the bulk.
    """
    messages: List[Message] = []
    pos, size = 0, len(buf)
    while pos < size and (limit is None or len(messages) < limit):
        if buf[pos] == 0x0A:                # a blank line between messages
            pos += 1
            continue
        eol = buf.find(b"\n", pos)
        if eol < 0:
            break
        key = buf[pos:eol].split(b":", 1)[0]
        if key == b"CHAT":
            end = buf.find(b"\n\n", eol)
            if end < 0:
                break
            following = end + 2
        else:
            end = eol
            for _ in range(FIXED_LINES.get(key, 1) - 1):
                end = buf.find(b"\n", end + 1)
                if end < 0:
                    break
            if end < 0:
                break
            following = end + 1
        messages.append(parse_message(key, buf[pos:end]))
        pos = following
    return messages, buf[pos:]


class ChatCounter:
    """Counts the CHAT messages of one room in one member's byte stream, at C speed.

    feed() takes the stream up to its last blank line (every CHAT message ends in one) and counts
    its MESSAGE lines: one per message. Two more checks over the same bytes make sure that each
    of them is a whole CHAT of this room and that nothing else sits between them: the stretch
    starts with this room's header ("CHAT: <ref>\nCLIENT_NAME: "), and the header follows a
    blank line once for every message but the first. An ERROR_CODE or a message of another room
    in between breaks the second check; a message without its MESSAGE line, the first. Then, and
    only then, that stretch is parsed message by message (split_messages): CHATs of this room
    are counted, anything else goes to `odd`. Bytes after the last blank line wait for the next
    feed(); whatever is left at the end is odd too (see leftover()). With a `suffix`, only
    messages whose text ends so are counted (one more search: " has joined this chatroom.").

    Cost: under 100 ns per message, less than counting b"\n\n" (a two-byte needle is the
    slowest kind to search for; these are 10 and 20 bytes long).
    """

    __slots__ = ("ref", "header", "header_after_blank", "suffix", "end", "tail", "odd")

    def __init__(self, ref: int, tail: bytes = b"", suffix: str = "") -> None:
        self.ref = ref
        self.header = b"CHAT: %d\nCLIENT_NAME: " % ref
        self.header_after_blank = b"\n\n" + self.header
        self.suffix = suffix                # every message counted ends so ("": any message)
        self.end = (suffix + "\n\n").encode("utf-8")
        self.tail = tail
        self.odd: List[Message] = []

    def feed(self, data: bytes) -> int:
        """Take newly received bytes; return the number of CHAT messages they completed."""
        buf = self.tail + data if self.tail else data
        end = buf.rfind(b"\n\n") + 2
        if end < 2:
            self.tail = buf
            return 0
        self.tail = buf[end:]
        count = buf.count(b"\nMESSAGE: ", 0, end)
        if (buf.startswith(self.header)
                and buf.count(self.header_after_blank, 0, end) == count - 1
                and (not self.suffix or buf.count(self.end, 0, end) == count)):
            return count
        return self._count_slowly(buf[:end])

    def _count_slowly(self, stretch: bytes) -> int:
        messages, rest = split_messages(stretch)
        count = 0
        for message in messages:
            if (message.kind == "CHAT" and message.number("CHAT") == self.ref
                    and message.fields.get("MESSAGE", "").endswith(self.suffix)):
                count += 1
            else:
                self.odd.append(message)
        if rest:
            self.odd.append(Message("UNKNOWN", {}, rest.decode("utf-8", "replace")))
        return count

    def leftover(self) -> List[Message]:
        """Messages that are not CHATs of this room, the unfinished tail included."""
        if self.tail.strip(b"\n"):
            messages, rest = split_messages(self.tail)
            self.tail = b""
            self.odd.extend(messages)
            if rest:
                self.odd.append(Message("UNKNOWN", {}, rest.decode("utf-8", "replace")))
        return self.odd


# ---------------------------------------------------------------------------------------------
# Plumbing: connections, the loop, failures, progress
# ---------------------------------------------------------------------------------------------

QUEUED, CONNECTING, OPEN, CLOSED = "queued", "connecting", "open", "closed"


class Conn:
    """One client connection: a non-blocking socket, its unsent output, and whatever the
    scenario keeps about it (as attributes of a subclass)."""

    def __init__(self) -> None:
        self.sock: Optional[socket.socket] = None
        self.state = QUEUED
        self.out = bytearray()
        self.events = 0


class Loop:
    """Every client connection of a run, on one selector.

    Connections are made without blocking, at most CONNECT_CONCURRENCY at a time. The scenario's
    `handler` is told what happens, with these methods:
        connected(conn)                 the connection is up
        connect_failed(conn, exc)       it could not be made (it is closed)
        received(conn, data)            bytes arrived
        closed(conn, exc)               the server closed it (exc None) or it broke (it is closed)
    send() sends at once what the kernel takes and queues the rest, watching for writability
    only while something is queued. last_activity is when the loop last made progress (a
    connection made or bytes received).
    """

    def __init__(self, address: Tuple[int, tuple], handler) -> None:
        self.family, self.sockaddr = address
        self.handler = handler
        self.selector = selectors.DefaultSelector()
        self.queued: collections.deque = collections.deque()
        self.connecting = 0
        self.conns: set = set()             # every connection not yet closed
        self.last_activity = time.monotonic()
        self._starting = False              # in _start_connects (a handler may call connect)

    def connect(self, conn: Conn) -> None:
        """Make `conn` connect as soon as fewer than CONNECT_CONCURRENCY are connecting."""
        conn.state = QUEUED
        self.conns.add(conn)
        self.queued.append(conn)
        self._start_connects()

    def _start_connects(self) -> None:
        if self._starting:
            return                          # the outer call's loop takes the new ones
        self._starting = True
        try:
            self._start_queued_connects()
        finally:
            self._starting = False

    def _start_queued_connects(self) -> None:
        while self.queued and self.connecting < CONNECT_CONCURRENCY:
            conn = self.queued.popleft()
            if conn.state != QUEUED:
                continue                    # closed while it waited
            try:
                conn.sock = socket.socket(self.family, socket.SOCK_STREAM)
                conn.sock.setblocking(False)
                err = conn.sock.connect_ex(self.sockaddr)
            except OSError as exc:          # EMFILE and friends
                self._connect_failed(conn, exc)
                continue
            if err == 0:
                self._connected(conn)
            elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                conn.state = CONNECTING
                self.connecting += 1
                conn.events = selectors.EVENT_WRITE
                self.selector.register(conn.sock, conn.events, conn)
            else:
                self._connect_failed(conn, OSError(err, os.strerror(err)))

    def _finish_connect(self, conn: Conn) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(conn, OSError(err, os.strerror(err)))
        else:
            self._connected(conn)

    def _connected(self, conn: Conn) -> None:
        if conn.state == CONNECTING:
            self.connecting -= 1
        conn.state = OPEN
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_activity = time.monotonic()
        self._update_interest(conn)
        self.handler.connected(conn)
        if conn.state == OPEN and conn.out:
            self._flush(conn)

    def _connect_failed(self, conn: Conn, exc: OSError) -> None:
        self._forget(conn)
        self.handler.connect_failed(conn, exc)

    def send(self, conn: Conn, data: bytes) -> None:
        """Send `data` on `conn` now as far as the kernel takes it; queue the rest."""
        conn.out += data
        if conn.state == OPEN:
            self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out[:SEND_SIZE])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:              # EPIPE, ECONNRESET: the server has gone
            self._lost(conn, exc)
            return
        del conn.out[:sent]
        self._update_interest(conn)

    def _update_interest(self, conn: Conn) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if events != conn.events:
            if conn.events:
                self.selector.modify(conn.sock, events, conn)
            else:
                self.selector.register(conn.sock, events, conn)
            conn.events = events

    def read(self, conn: Conn) -> None:
        """recv() once from `conn` and hand the bytes to the handler."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(conn, exc)
            return
        if not data:
            self._lost(conn, None)
            return
        self.last_activity = time.monotonic()
        self.handler.received(conn, data)

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for events, and handle every one that is ready."""
        self._start_connects()
        if not self.selector.get_map():
            time.sleep(timeout)             # select() with nothing registered fails on some OSes
            return
        for key, mask in self.selector.select(timeout):
            conn = key.data
            if conn.state == CONNECTING:
                self._finish_connect(conn)
                continue
            if conn.state == OPEN and mask & selectors.EVENT_READ:
                self.read(conn)
            if conn.state == OPEN and mask & selectors.EVENT_WRITE and conn.out:
                self._flush(conn)

    def close(self, conn: Conn, reset: bool = False) -> None:
        """Close `conn` (idempotent). With reset, the kernel sends RST instead of FIN: the
        client vanishes without a goodbye."""
        if reset and conn.sock is not None and conn.state in (CONNECTING, OPEN):
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._forget(conn)

    def _lost(self, conn: Conn, exc: Optional[OSError]) -> None:
        self._forget(conn)
        self.handler.closed(conn, exc)

    def _forget(self, conn: Conn) -> None:
        if conn.state == CLOSED:
            return
        if conn.state == CONNECTING:
            self.connecting -= 1
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        if conn.sock is not None:
            conn.sock.close()
        conn.state = CLOSED
        self.conns.discard(conn)

    def close_all(self) -> None:
        for conn in list(self.conns):
            self._forget(conn)
        self.selector.close()


class Failures:
    """Failures counted by kind, with the first few described (for the summary)."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = collections.Counter()
        self.examples: List[str] = []

    def add(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append("%s: %s" % (kind, detail))

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return {"failed": self.total(), "failures": dict(sorted(self.counts.items())),
                "failure_examples": self.examples}


class Progress:
    """A progress line on `stream` at most every PROGRESS_INTERVAL seconds: rewritten in place
    (carriage return) on a terminal, one line each time otherwise."""

    def __init__(self, stream) -> None:
        self.stream = stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.started = time.monotonic()
        self.next_at = self.started + PROGRESS_INTERVAL
        self.width = 0

    def maybe_show(self, describe: Callable[[], str]) -> None:
        """Show describe() if a line is due (it is only called then)."""
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + PROGRESS_INTERVAL
            self.show("%5.1fs %s" % (now - self.started, describe()))

    def show(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, line: str) -> None:
        """A line that stays (a remark, not progress)."""
        self.finish()
        self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 2)


def percentile(sorted_values: Sequence[float], fraction: float) -> Optional[float]:
    """The value below which `fraction` of `sorted_values` lie (nearest rank), or None."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def latency_summary(prefix: str, latencies: List[float]) -> dict:
    values = sorted(latencies)
    return {prefix + "_p50_ms": ms(percentile(values, 0.50)),
            prefix + "_p99_ms": ms(percentile(values, 0.99)),
            prefix + "_max_ms": ms(values[-1] if values else None)}


def raise_nofile_limit() -> Tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft before, soft now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:      # macOS: the kernel caps it lower; ask for plenty
        target = max(soft, 1 << 20)
    if target > soft:
        for attempt in (target, 1 << 16, 10240):
            if attempt <= soft:
                break
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (attempt, hard))
                return soft, attempt
            except (ValueError, OSError):
                continue
    return soft, soft


def run_tag() -> str:
    """Distinguishes this run's rooms from those of earlier or concurrent runs."""
    return "lg-%d-%d" % (os.getpid(), int(time.time() * 1000) % 10 ** 8)


def cpu_seconds() -> float:
    """This process's CPU time so far, user and system."""
    return time.process_time()


# ---------------------------------------------------------------------------------------------
# Joining: shared by fanout and connections
# ---------------------------------------------------------------------------------------------

class Member(Conn):
    """A client that joins one room and stays: fanout's members and probe, connections'."""

    def __init__(self, room: str, name: str) -> None:
        super().__init__()
        self.room = room
        self.name = name
        self.ref: Optional[int] = None
        self.join_id: Optional[int] = None
        self.buf = b""                  # received bytes not yet a whole message
        self.announced = False          # its own join announcement has arrived
        self.failed = False             # it will never be a member: do not wait for it
        self.got = 0                    # deliveries in the current phase
        self.counter: Optional[ChatCounter] = None     # counts the bulk, once joined

    def take_unparsed(self) -> bytes:
        """The bytes received but not yet parsed, for the next phase's parser to start with."""
        if self.counter is not None:
            self.buf, self.counter = self.counter.tail, None
        unparsed, self.buf = self.buf, b""
        return unparsed


class JoinPhase:
    """Connect `members`, JOIN each to its room, and wait until every JOIN is answered and every
    join announcement has been delivered.

    A room that ends with n members owes n(n+1)/2 announcements in all (the k-th joiner's goes
    to k members), whatever order the server handled the JOINs in. The phase ends when each
    member has joined and heard its own announcement (or failed), and the announcements received
    add up to what is owed.
    """

    def __init__(self, loop: Loop, members: List[Member], failures: Failures) -> None:
        self.loop = loop
        self.members = members
        self.failures = failures
        self.unresolved = len(members)      # neither joined-and-announced nor failed
        self.connected_count = 0
        self.joined = 0
        self.room_sizes: Dict[str, int] = collections.Counter()
        self.announcements_owed = 0
        self.announcements = 0
        self.lost_after_join = False
        self.connects_done_at: Optional[float] = None
        self.last_joined_at: Optional[float] = None

    def run(self, deadline: float, stall: float, nap: float, progress: Progress,
            label: str) -> str:
        """Run the phase; returns "done", "timed out" or "stalled"."""
        self.loop.handler = self
        for member in self.members:
            self.loop.connect(member)
        return run_until(self.loop, self.is_done, deadline, stall, nap, progress,
                         lambda: "%s: %d/%d connected, %d joined, %d announcements"
                         % (label, self.connected_count, len(self.members), self.joined,
                            self.announcements))

    def is_done(self) -> bool:
        if self.unresolved:
            return False
        if self.announcements >= self.announcements_owed:
            return True
        return self.lost_after_join and time.monotonic() - self.loop.last_activity > SETTLE

    def connected(self, member: Member) -> None:
        self.connected_count += 1
        self._maybe_all_connected()
        self.loop.send(member, join_request(member.room, member.name))

    def connect_failed(self, member: Member, exc: OSError) -> None:
        self.failures.add("connect_failed", "%s: %s" % (member.name, exc))
        self._fail(member)
        self._maybe_all_connected()

    def _maybe_all_connected(self) -> None:
        if self.connects_done_at is None and not self.loop.queued and not self.loop.connecting:
            self.connects_done_at = time.monotonic()

    def closed(self, member: Member, exc: Optional[OSError]) -> None:
        self.failures.add("closed_by_server", "%s while joining (%s)"
                          % (member.name, exc or "closed"))
        self._fail(member)

    def _fail(self, member: Member) -> None:
        if member.ref is not None:
            self.lost_after_join = True
        if not member.failed and not (member.ref is not None and member.announced):
            self.unresolved -= 1
        member.failed = True

    def received(self, member: Member, data: bytes) -> None:
        if member.counter is None:
            # Parse message by message up to the member's own announcement; in a room of n, up
            # to n more announcements follow, and those are counted at C speed (ChatCounter).
            buf = member.buf + data
            while not member.failed:
                messages, buf = split_messages(buf, limit=1)
                if not messages:
                    break
                self._on_message(member, messages[0])
                if member.announced:
                    member.counter = ChatCounter(member.ref, suffix=" has joined this chatroom.")
                    break
            if member.failed:               # count nothing more; report what arrives
                messages, buf = split_messages(buf)
                for message in messages:
                    self._on_message(member, message)
            if member.counter is None:
                member.buf = buf
                return
            data, member.buf = buf, b""
        counter = member.counter
        self.announcements += counter.feed(data)
        for message in counter.odd:
            self.failures.add("unexpected_message", "%s got %r while joining"
                              % (member.name, message.raw[:120]))
        counter.odd.clear()

    def _on_message(self, member: Member, message: Message) -> None:
        if member.ref is None:
            if (message.kind == "JOINED_CHATROOM"
                    and message.fields.get("JOINED_CHATROOM") == member.room
                    and message.number("ROOM_REF") is not None
                    and message.number("JOIN_ID") is not None):
                member.ref = message.number("ROOM_REF")
                member.join_id = message.number("JOIN_ID")
                self.joined += 1
                self.last_joined_at = time.monotonic()
                self.room_sizes[member.room] += 1
                self.announcements_owed += self.room_sizes[member.room]
                return
            kind = "error_reply" if message.kind == "ERROR_CODE" else "unexpected_message"
            self.failures.add(kind, "%s got %r instead of JOINED_CHATROOM"
                              % (member.name, message.raw[:120]))
            self._fail(member)
            return
        if (message.kind == "CHAT" and message.number("CHAT") == member.ref
                and message.fields.get("MESSAGE", "").endswith(" has joined this chatroom.")):
            self.announcements += 1
            if not member.announced and message.is_chat(member.ref, member.name,
                                                        joined_text(member.name)):
                member.announced = True
                if not member.failed:
                    self.unresolved -= 1
            return
        self.failures.add("unexpected_message", "%s got %r while joining"
                          % (member.name, message.raw[:120]))

    def check_counts(self) -> None:
        """After the phase: the announcements delivered must be those owed, no more, no less."""
        if self.announcements != self.announcements_owed:
            self.failures.add("announcements", "%d join announcements delivered, %d owed"
                              % (self.announcements, self.announcements_owed))


def run_until(loop: Loop, is_done: Callable[[], bool], deadline: float, stall: float,
              nap: float, progress: Progress, describe: Callable[[], str]) -> str:
    """Poll `loop` until is_done(); returns "done", "timed out" (past `deadline`) or "stalled"
    (`stall` seconds without progress)."""
    while True:
        if is_done():
            return "done"
        now = time.monotonic()
        if now >= deadline:
            return "timed out"
        if now - loop.last_activity > stall:
            return "stalled"
        if nap:
            time.sleep(nap)
        loop.poll(max(0.0, min(POLL_WAIT, deadline - now)))
        progress.maybe_show(describe)


# ---------------------------------------------------------------------------------------------
# fanout
# ---------------------------------------------------------------------------------------------

class FanoutChat:
    """The chat phase of fanout: count every member's deliveries (ChatCounter) and time the
    probe's echoes."""

    def __init__(self, loop: Loop, members: List[Member], probe: Member, quota: int,
                 failures: Failures) -> None:
        self.loop = loop
        self.probe = probe
        self.quota = quota                  # deliveries each member must get: M*K
        self.failures = failures
        self.delivered = 0
        self.short = len(members)           # members still below their quota
        self.finished_at: Optional[float] = None
        self.last_delivery_at = time.monotonic()
        self.broken = False                 # a connection was lost: the count cannot finish
        for member in members:
            member.got = 0
            member.counter = ChatCounter(member.ref, member.take_unparsed())
        self.probe_seq = 0
        self.probe_sent: Dict[int, float] = {}
        self.probe_latencies: List[float] = []
        self.probe_skipped = 0
        self.probe_in_flight_max = 0

    def received(self, member: Member, data: bytes) -> None:
        if member is self.probe:
            self._probe_received(data)
            return
        count = member.counter.feed(data)
        if count:
            self.delivered += count
            self.last_delivery_at = time.monotonic()
            before = member.got
            member.got = before + count
            if before < self.quota <= member.got:
                self.short -= 1
                if not self.short:
                    self.finished_at = self.last_delivery_at

    def send_probe(self, now: float) -> None:
        """Post the next probe message (unless the last one is still unsent: then the server is
        not reading from the probe, and piling more up would time our own queue)."""
        probe = self.probe
        if probe.out:
            self.probe_skipped += 1
            return
        self.probe_seq += 1
        self.probe_sent[self.probe_seq] = now
        self.probe_in_flight_max = max(self.probe_in_flight_max, len(self.probe_sent))
        self.loop.send(probe, chat_request(probe.ref, probe.join_id, probe.name,
                                           "probe %d" % self.probe_seq))

    def _probe_received(self, data: bytes) -> None:
        now = time.monotonic()
        probe = self.probe
        messages, probe.buf = split_messages(probe.buf + data)
        for message in messages:
            text = message.fields.get("MESSAGE", "")
            seq = text[6:] if text.startswith("probe ") else ""
            if (seq.isdigit() and message.is_chat(probe.ref, probe.name, text)
                    and int(seq) in self.probe_sent):
                self.probe_latencies.append(now - self.probe_sent.pop(int(seq)))
            else:
                self.failures.add("unexpected_message", "probe got %r" % message.raw[:120])

    def connected(self, member: Member) -> None:        # no connects in this phase
        pass

    def connect_failed(self, member: Member, exc: OSError) -> None:
        pass

    def closed(self, member: Member, exc: Optional[OSError]) -> None:
        self.failures.add("closed_by_server", "%s during the chat phase (%s)"
                          % (member.name, exc or "closed"))
        self.broken = True

    def progress_line(self, expected: int, started: float) -> str:
        elapsed = max(1e-9, time.monotonic() - started)
        latencies = sorted(self.probe_latencies[-100:])
        return ("fanout: %d/%d deliveries (%.0f%%), %.0f/s, probe p50 %s ms"
                % (self.delivered, expected, 100.0 * self.delivered / max(1, expected),
                   self.delivered / elapsed, ms(percentile(latencies, 0.5))))


def chat_phase(args: argparse.Namespace, loop: Loop, chat: FanoutChat, probe_selector,
               deadline: float, progress: Progress, describe: Callable[[], str]) -> str:
    """Poll until every member has its deliveries and the probe its echoes; returns "done",
    "timed out", "stalled" or "connection lost". The probe posts every PROBE_INTERVAL."""
    next_probe = time.monotonic()
    while chat.short or chat.probe_sent:
        now = time.monotonic()
        if now >= deadline:
            return "timed out"
        # progress is a delivery; once all are in, any input (the probe's last echoes)
        if now - (chat.last_delivery_at if chat.short else loop.last_activity) > args.stall:
            return "stalled"
        if chat.broken:
            return "connection lost"
        if chat.short and now >= next_probe:
            chat.send_probe(now)
            next_probe = max(next_probe + PROBE_INTERVAL, now)
        # The nap, cut short by the probe's echo so that the echo is timed when it arrives.
        wait = min(args.nap, next_probe - now) if chat.short else args.nap
        if wait > 0 and probe_selector.select(wait):
            loop.read(chat.probe)
        loop.poll(0)
        progress.maybe_show(describe)
    return "done"


def run_fanout(args: argparse.Namespace, address, progress: Progress) -> dict:
    rooms, members_per_room, messages = args.rooms, args.members, args.messages
    expected = rooms * members_per_room * members_per_room * messages
    summary = {"scenario": "fanout", "host": args.host, "port": args.port, "rooms": rooms,
               "members": members_per_room, "messages": messages, "size": args.size,
               "expected": expected}
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if rooms * members_per_room + 1 + FD_MARGIN > soft:
        before, after = raise_nofile_limit()
        progress.note("loadgen: raised the soft RLIMIT_NOFILE from %d to %d (the hard limit)"
                      % (before, after))
    started = time.monotonic()
    deadline = started + args.timeout
    tag = run_tag()
    failures = Failures()
    members = [Member("%s-r%d" % (tag, r), "r%dm%d" % (r, m))
               for r in range(rooms) for m in range(members_per_room)]
    probe = Member("%s-probe" % tag, "probe")
    loop = Loop(address, None)
    try:
        joins = JoinPhase(loop, members + [probe], failures)
        outcome = joins.run(deadline, args.stall, args.nap, progress, "fanout joins")
        joins.check_counts()
        summary["join_seconds"] = round(time.monotonic() - started, 3)
        if outcome != "done" or failures.total():
            summary.update(delivered=0, missing=expected, extra=0)
            return finish_summary(summary, failures, outcome)

        body = "x" * args.size
        chat = FanoutChat(loop, members, probe, members_per_room * messages, failures)
        loop.handler = chat
        blobs = [b"".join(chat_request(member.ref, member.join_id, member.name,
                                       "%s %d" % (body, i)) for i in range(messages))
                 for member in members]
        with selectors.DefaultSelector() as probe_selector:
            probe_selector.register(probe.sock, selectors.EVENT_READ)
            cpu_before = cpu_seconds()
            chat_started = time.monotonic()
            for member, blob in zip(members, blobs):
                loop.send(member, blob)
            del blobs
            outcome = chat_phase(args, loop, chat, probe_selector, deadline, progress,
                                 lambda: chat.progress_line(expected, chat_started))
            ended = chat.finished_at or time.monotonic()
            cpu = cpu_seconds() - cpu_before

        seconds = max(1e-9, ended - chat_started)
        missing = extra = 0
        for member in members:
            missing += max(0, chat.quota - member.got)
            extra += max(0, member.got - chat.quota)
            for message in member.counter.leftover():
                failures.add("unexpected_message", "%s got %r" % (member.name, message.raw[:120]))
        summary.update(
            delivered=chat.delivered, missing=missing, extra=extra, seconds=round(seconds, 3),
            deliveries_per_s=round(chat.delivered / seconds))
        summary.update(latency_summary("probe", chat.probe_latencies))
        summary.update(probes=len(chat.probe_latencies), probes_lost=len(chat.probe_sent),
                       probes_skipped=chat.probe_skipped,
                       probe_in_flight_max=chat.probe_in_flight_max, loadgen_cpu_s=round(cpu, 3),
                       loadgen_cpu_share=round(cpu / seconds, 2))
        return finish_summary(summary, failures, outcome)
    finally:
        loop.close_all()


def finish_summary(summary: dict, failures: Failures, outcome: str) -> dict:
    """Add the failures and the verdict to a scenario's summary."""
    summary.update(failures.summary())
    summary["timed_out"] = outcome == "timed out"
    summary["stalled"] = outcome == "stalled"
    summary["ok"] = (outcome == "done" and failures.total() == 0
                     and not summary.get("missing") and not summary.get("extra")
                     and not summary.get("probes_lost"))
    return summary


# ---------------------------------------------------------------------------------------------
# connections
# ---------------------------------------------------------------------------------------------

class ChatOnce:
    """The second phase of connections: one chat per room, which every member must receive
    exactly once."""

    def __init__(self, members: List[Member], texts: Dict[str, Tuple[str, str]],
                 failures: Failures) -> None:
        self.texts = texts                  # room -> (sender's name, text)
        self.failures = failures
        self.waiting = len(members)         # members that have not got theirs yet
        self.delivered = 0
        self.last_delivery_at: Optional[float] = None
        for member in members:
            member.got = 0
            member.buf = member.take_unparsed()

    def received(self, member: Member, data: bytes) -> None:
        messages, member.buf = split_messages(member.buf + data)
        sender, text = self.texts[member.room]
        for message in messages:
            if not message.is_chat(member.ref, sender, text):
                self.failures.add("unexpected_message", "%s got %r"
                                  % (member.name, message.raw[:120]))
                continue
            member.got += 1
            if member.got == 1:
                self.delivered += 1
                self.waiting -= 1
                self.last_delivery_at = time.monotonic()
            else:
                self.failures.add("duplicate", "%s got the room's chat %d times"
                                  % (member.name, member.got))

    def connected(self, member: Member) -> None:
        pass

    def connect_failed(self, member: Member, exc: OSError) -> None:
        pass

    def closed(self, member: Member, exc: Optional[OSError]) -> None:
        self.failures.add("closed_by_server", "%s (%s)" % (member.name, exc or "closed"))
        if not member.got:
            self.waiting -= 1               # it never will: do not wait for it


def run_connections(args: argparse.Namespace, address, progress: Progress) -> dict:
    count, rooms = args.count, args.rooms
    before, after = raise_nofile_limit()
    if after != before:
        progress.note("loadgen: raised the soft RLIMIT_NOFILE from %d to %d (the hard limit)"
                      % (before, after))
    else:
        progress.note("loadgen: the soft RLIMIT_NOFILE is %d (already the hard limit)" % after)
    summary = {"scenario": "connections", "host": args.host, "port": args.port, "count": count,
               "rooms": rooms, "nofile_soft_before": before, "nofile_soft": after}
    failures = Failures()
    if count + FD_MARGIN > after:
        failures.add("fd_limit", "%d connections need about %d file descriptors; the limit is %d"
                     % (count, count + FD_MARGIN, after))
        summary.update(connected=0, joined=0, delivered=0, missing=count)
        return finish_summary(summary, failures, "fd limit")

    started = time.monotonic()
    cpu_before = cpu_seconds()
    deadline = started + args.timeout
    tag = run_tag()
    members = [Member("%s-c%d" % (tag, i % rooms), "m%d" % i) for i in range(count)]
    loop = Loop(address, None)
    try:
        joins = JoinPhase(loop, members, failures)
        outcome = joins.run(deadline, args.stall, args.nap, progress, "connections")
        joins.check_counts()
        announced_at = time.monotonic()
        summary.update(
            connected=joins.connected_count, joined=joins.joined,
            connect_seconds=round((joins.connects_done_at or announced_at) - started, 3),
            join_seconds=round((joins.last_joined_at or announced_at) - started, 3),
            announce_seconds=round(announced_at - started, 3))
        if outcome != "done":
            summary.update(delivered=0, missing=count)
            return finish_summary(summary, failures, outcome)

        # One chat per room, from the first of its members that joined.
        in_rooms = [m for m in members if m.ref is not None and not m.failed]
        senders: Dict[str, Member] = {}
        for member in in_rooms:
            senders.setdefault(member.room, member)
        texts = {room: (sender.name, "hello %s from %s" % (room, sender.name))
                 for room, sender in senders.items()}
        chat = ChatOnce(in_rooms, texts, failures)
        loop.handler = chat
        chat_started = time.monotonic()
        for room, sender in senders.items():
            loop.send(sender, chat_request(sender.ref, sender.join_id, sender.name,
                                           texts[room][1]))
        loop.last_activity = chat_started
        outcome = run_until(loop, lambda: chat.waiting <= 0, deadline, args.stall, args.nap,
                            progress, lambda: "connections: %d/%d delivered"
                            % (chat.delivered, len(in_rooms)))
        summary.update(
            delivery_seconds=round((chat.last_delivery_at or time.monotonic()) - chat_started, 3),
            delivered=chat.delivered, missing=count - chat.delivered,
            seconds=round(time.monotonic() - started, 3),
            loadgen_cpu_s=round(cpu_seconds() - cpu_before, 3))
        summary["loadgen_cpu_share"] = round(summary["loadgen_cpu_s"] / summary["seconds"], 2)
        return finish_summary(summary, failures, outcome)
    finally:
        loop.close_all()


# ---------------------------------------------------------------------------------------------
# churn
# ---------------------------------------------------------------------------------------------

class ChurnClient:
    """One churning client: a cycle of connect, join, chat, end; then again, until time is up.

    `state` names the reply it waits for:
        connecting          the connection
        joined              JOINED_CHATROOM, after JOIN
        join_note           its own join announcement
        echo                its own copy of the chat it posted (`text`)
        left                LEFT_CHATROOM, after LEAVE
        leave_note          its own leave announcement, after LEFT_CHATROOM
        disconnect_note     its own leave announcement, after DISCONNECT
        close               the server's close, after that
        resting             nothing: its connect failed; it tries again at `reply_deadline`
        done                nothing: time is up
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.connections = 0
        self.name = ""                      # CLIENT_NAME, new for each connection (see below)
        self.conn: Optional[Conn] = None
        self.state = "done"
        self.room = ""
        self.ref: Optional[int] = None      # the room it is in, from JOINED to its leave
        self.join_id: Optional[int] = None
        self.text = ""
        self.chats_left = 0
        self.seq = 0
        self.sent_at = 0.0                  # when the request now owed a reply was sent
        self.reply_deadline = 0.0


class Churn:
    """Runs every ChurnClient on one loop; see the module docstring for the rules."""

    def __init__(self, loop: Loop, clients: int, rooms: List[str], seconds: float,
                 reply_timeout: float, rng: random.Random, failures: Failures) -> None:
        self.loop = loop
        self.rooms = rooms
        self.reply_timeout = reply_timeout
        self.rng = rng
        self.failures = failures
        self.clients = [ChurnClient(i) for i in range(clients)]
        self.started = time.monotonic()
        self.stop_at = self.started + seconds
        self.ops: Dict[str, int] = collections.Counter()
        self.replies_expected = 0
        self.replies_received = 0
        self.latencies: List[float] = []
        self.cycles = 0
        self.background = 0                 # other clients' chats and announcements

    # -- driving ---------------------------------------------------------------------------------

    def start(self) -> None:
        for client in self.clients:
            self._new_cycle(client)

    def active(self) -> int:
        return sum(1 for c in self.clients if c.state != "done")

    def check_timeouts(self, now: float) -> None:
        """Fail the clients whose reply is late; wake the resting ones that are due."""
        for client in self.clients:
            if client.state == "done" or now <= client.reply_deadline:
                continue
            if client.state == "resting":
                self._new_cycle(client)
            else:
                self._fail(client, "timeout", "%s: no %s within %.1f s"
                           % (client.name, client.state, self.reply_timeout))

    def _new_cycle(self, client: ChurnClient) -> None:
        """Connect again, or stop if time is up."""
        client.conn = None
        client.ref = client.join_id = None
        if time.monotonic() >= self.stop_at:
            client.state = "done"
            return
        self.cycles += 1
        # Each connection has a name of its own: after a vanish the server may announce that
        # the old connection left after the new one has joined the same room, and that
        # announcement must not look like a reply to the new one.
        client.connections += 1
        client.name = "c%d-%d" % (client.index, client.connections)
        conn = Conn()
        conn.client = client
        client.conn = conn
        self._expect(client, "connecting", 0)
        self.loop.connect(conn)

    def _expect(self, client: ChurnClient, state: str, replies: int) -> None:
        """Record that the request just sent owes `replies` replies; wait for the first."""
        client.state = state
        client.sent_at = time.monotonic()
        client.reply_deadline = client.sent_at + self.reply_timeout
        self.replies_expected += replies

    def _replied(self, client: ChurnClient, next_state: Optional[str] = None) -> None:
        """One owed reply arrived; with next_state, the request owes another."""
        now = time.monotonic()
        self.replies_received += 1
        self.latencies.append(now - client.sent_at)
        if next_state:
            client.state = next_state
            client.reply_deadline = now + self.reply_timeout

    def _join(self, client: ChurnClient) -> None:
        client.room = self.rng.choice(self.rooms)
        self.loop.send(client.conn, join_request(client.room, client.name))
        self._expect(client, "joined", 2)

    def _chat(self, client: ChurnClient) -> None:
        client.seq += 1
        client.text = "%s says %d" % (client.name, client.seq)
        self.loop.send(client.conn, chat_request(client.ref, client.join_id, client.name,
                                                 client.text))
        self._expect(client, "echo", 1)

    def _end_cycle(self, client: ChurnClient) -> None:
        how = self.rng.choice(("leave", "disconnect", "vanish"))
        if how == "leave":
            self.loop.send(client.conn, leave_request(client.ref, client.join_id, client.name))
            self._expect(client, "left", 2)
        elif how == "disconnect":
            self.loop.send(client.conn, disconnect_request(client.name))
            self._expect(client, "disconnect_note", 2)
        else:
            self.loop.close(client.conn, reset=True)
            self.ops["vanish"] += 1
            self._new_cycle(client)

    def _fail(self, client: ChurnClient, kind: str, detail: str) -> None:
        """Count a failure, drop the connection with RST, start afresh."""
        self.failures.add(kind, detail)
        if client.conn is not None:
            self.loop.close(client.conn, reset=True)
        self._new_cycle(client)

    # -- the loop's handler ----------------------------------------------------------------------

    def connected(self, conn: Conn) -> None:
        client = conn.client
        self.ops["connect"] += 1
        conn.buf = b""
        self._join(client)

    def connect_failed(self, conn: Conn, exc: OSError) -> None:
        client = conn.client
        self.failures.add("connect_failed", "%s: %s" % (client.name, exc))
        client.conn = None
        client.state = "resting"
        client.reply_deadline = time.monotonic() + CHURN_RETRY_DELAY

    def closed(self, conn: Conn, exc: Optional[OSError]) -> None:
        client = conn.client
        if client.conn is not conn:
            return
        if client.state == "close" and exc is None:
            self._replied(client)
            self.ops["disconnect"] += 1
            self._new_cycle(client)
        else:
            self._fail(client, "closed_by_server", "%s while waiting for %s (%s)"
                       % (client.name, client.state, exc or "closed"))

    def received(self, conn: Conn, data: bytes) -> None:
        messages, conn.buf = split_messages(conn.buf + data)
        for message in messages:
            if conn.client.conn is not conn:
                return                      # an earlier message failed the client
            self._on_message(conn.client, message)

    def _on_message(self, client: ChurnClient, message: Message) -> None:
        state, kind = client.state, message.kind
        if kind == "ERROR_CODE":
            self._fail(client, "error_reply", "%s got %r while waiting for %s"
                       % (client.name, message.raw[:120], state))
        elif kind == "JOINED_CHATROOM" and state == "joined":
            if (message.fields.get("JOINED_CHATROOM") != client.room
                    or message.number("ROOM_REF") is None or message.number("JOIN_ID") is None):
                self._fail(client, "wrong_reply", "%s joined %r, got %r"
                           % (client.name, client.room, message.raw[:120]))
                return
            client.ref = message.number("ROOM_REF")
            client.join_id = message.number("JOIN_ID")
            self._replied(client, "join_note")
        elif kind == "LEFT_CHATROOM" and state == "left":
            if (message.number("LEFT_CHATROOM") != client.ref
                    or message.number("JOIN_ID") != client.join_id):
                self._fail(client, "wrong_reply", "%s left room %s as %s, got %r"
                           % (client.name, client.ref, client.join_id, message.raw[:120]))
                return
            self._replied(client, "leave_note")
        elif kind == "CHAT" and client.ref is not None and message.number("CHAT") == client.ref:
            self._on_chat(client, message)
        else:
            self._fail(client, "unexpected_message", "%s got %r while waiting for %s"
                       % (client.name, message.raw[:120], state))

    def _on_chat(self, client: ChurnClient, message: Message) -> None:
        """A CHAT of the client's room: its own reply, or somebody else's traffic."""
        state, ref, name = client.state, client.ref, client.name
        if message.fields.get("CLIENT_NAME") != name:
            self.background += 1
        elif state == "join_note" and message.is_chat(ref, name, joined_text(name)):
            self._replied(client)
            self.ops["join"] += 1
            client.chats_left = self.rng.randint(1, CHURN_MAX_CHATS)
            self._chat(client)
        elif state == "echo" and message.is_chat(ref, name, client.text):
            self._replied(client)
            self.ops["chat"] += 1
            client.chats_left -= 1
            if client.chats_left:
                self._chat(client)
            else:
                self._end_cycle(client)
        elif state == "leave_note" and message.is_chat(ref, name, left_text(name)):
            self._replied(client)
            self.ops["leave"] += 1
            client.ref = None               # nothing more of that room may arrive
            if time.monotonic() < self.stop_at:
                self.cycles += 1
                self._join(client)          # the connection stays open: use it again
            else:
                self.loop.close(client.conn)
                client.state = "done"
        elif state == "disconnect_note" and message.is_chat(ref, name, left_text(name)):
            client.ref = None
            self._replied(client, "close")
        else:
            self._fail(client, "unexpected_message", "%s got its own %r while waiting for %s"
                       % (name, message.raw[:120], state))

    def progress_line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        operations = sum(self.ops.values())
        return ("churn: %d clients active, %d operations (%.0f/s), %d failed"
                % (self.active(), operations, operations / elapsed, self.failures.total()))


def run_churn(args: argparse.Namespace, address, progress: Progress) -> dict:
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    summary = {"scenario": "churn", "host": args.host, "port": args.port,
               "clients": args.clients, "rooms": args.rooms, "seconds": args.seconds,
               "reply_timeout": args.reply_timeout, "seed": seed}
    started = time.monotonic()
    cpu_before = cpu_seconds()
    deadline = started + args.timeout
    failures = Failures()
    tag = run_tag()
    loop = Loop(address, None)
    churn = Churn(loop, args.clients, ["%s-churn-%d" % (tag, k) for k in range(args.rooms)],
                  args.seconds, args.reply_timeout, random.Random(seed), failures)
    loop.handler = churn
    outcome = "done"
    try:
        churn.start()
        while churn.active():
            now = time.monotonic()
            if now >= deadline:
                outcome = "timed out"
                break
            loop.poll(min(POLL_WAIT, max(0.0, deadline - now)))
            churn.check_timeouts(time.monotonic())
            progress.maybe_show(churn.progress_line)
    finally:
        loop.close_all()
    elapsed = max(1e-9, time.monotonic() - started)
    operations = sum(churn.ops.values())
    summary.update(
        elapsed=round(elapsed, 3), cycles=churn.cycles, operations=operations,
        ops_per_s=round(operations / elapsed, 1),
        by_kind={kind: churn.ops.get(kind, 0)
                 for kind in ("connect", "join", "chat", "leave", "disconnect", "vanish")},
        others_messages=churn.background, replies_expected=churn.replies_expected,
        replies_received=churn.replies_received,
        all_replies_received=churn.replies_received == churn.replies_expected)
    summary.update(latency_summary("reply", churn.latencies))
    cpu = cpu_seconds() - cpu_before
    summary.update(loadgen_cpu_s=round(cpu, 3), loadgen_cpu_share=round(cpu / elapsed, 2))
    summary = finish_summary(summary, failures, outcome)
    summary["ok"] = summary["ok"] and summary["all_replies_received"]
    return summary


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

SCENARIOS = {"fanout": run_fanout, "connections": run_connections, "churn": run_churn}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, not %s" % text)
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0, not %s" % text)
    return value


def add_common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options every scenario takes. They may come before the scenario's name or after it;
    only the main parser has defaults, so a subcommand's copy never overrides a value given
    before it."""
    def default(value):
        return value if defaults else argparse.SUPPRESS
    parser.add_argument("--host", default=default(DEFAULT_HOST),
                        help="the server's address (default %s)" % DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=default(None),
                        help="the server's port (required)")
    parser.add_argument("--timeout", type=positive_float, default=default(DEFAULT_TIMEOUT),
                        help="seconds the whole run may take (default %g)" % DEFAULT_TIMEOUT)
    parser.add_argument("--stall", type=positive_float, default=default(DEFAULT_STALL),
                        help="give up a phase after this many seconds without progress "
                             "(default %g)" % DEFAULT_STALL)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="loadgen.py", description=__doc__.split("\n\n")[1],
        epilog="See the module docstring (python3 -m pydoc tools/loadgen.py) for what each "
               "number means.")
    add_common_options(parser, defaults=True)
    subparsers = parser.add_subparsers(dest="scenario", metavar="SCENARIO")
    subparsers.required = True

    fanout = subparsers.add_parser("fanout", help="R rooms of M members, K messages each")
    add_common_options(fanout, defaults=False)
    fanout.add_argument("--rooms", type=positive_int, default=10)
    fanout.add_argument("--members", type=positive_int, default=20)
    fanout.add_argument("--messages", type=positive_int, default=50)
    fanout.add_argument("--size", type=int, default=32, help="message text bytes (default 32)")
    fanout.add_argument("--nap", type=float, default=DEFAULT_NAP,
                        help="seconds to sleep between polls (default %g)" % DEFAULT_NAP)

    connections = subparsers.add_parser("connections", help="N connections in R rooms")
    add_common_options(connections, defaults=False)
    connections.add_argument("--count", type=positive_int, required=True)
    connections.add_argument("--rooms", type=positive_int, default=10)
    connections.add_argument("--nap", type=float, default=DEFAULT_NAP,
                             help="seconds to sleep between polls (default %g)" % DEFAULT_NAP)

    churn = subparsers.add_parser("churn", help="N clients joining, chatting and leaving")
    add_common_options(churn, defaults=False)
    churn.add_argument("--clients", type=positive_int, required=True)
    churn.add_argument("--seconds", type=positive_float, required=True)
    churn.add_argument("--rooms", type=positive_int, default=CHURN_ROOMS)
    churn.add_argument("--reply-timeout", type=positive_float, default=DEFAULT_REPLY_TIMEOUT,
                       help="seconds any reply may take (default %g)" % DEFAULT_REPLY_TIMEOUT)
    churn.add_argument("--seed", type=int, default=None,
                       help="random seed (default: a fresh one, reported in the summary)")

    args = parser.parse_args(argv)
    if args.port is None:
        parser.error("--port is required")
    if args.scenario == "fanout" and args.size < 0:
        parser.error("--size must not be negative")
    if args.scenario == "churn" and args.seconds + args.reply_timeout >= args.timeout:
        parser.error("--seconds plus --reply-timeout must be less than --timeout (%g)"
                     % args.timeout)
    return args


def resolve(host: str, port: int) -> Tuple[int, tuple]:
    """(address family, socket address) of host:port: the first that getaddrinfo gives."""
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
        host, port, 0, socket.SOCK_STREAM)[0]
    return family, sockaddr


def main(argv: Optional[List[str]] = None) -> int:
    """Run one scenario; print its JSON summary on stdout; 0 if it was ok, else 1."""
    args = parse_args(argv)
    try:
        address = resolve(args.host, args.port)
    except (OSError, UnicodeError) as exc:
        print("loadgen: cannot resolve %s: %s" % (args.host, exc), file=sys.stderr)
        return 2
    progress = Progress(sys.stderr)
    summary = SCENARIOS[args.scenario](args, address, progress)
    progress.finish()
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
