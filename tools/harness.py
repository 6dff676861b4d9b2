"""Shared pieces of the live-server tools (fuzz.py, soak.py, many.py). Not a program itself.

- ServerProcess: start Server.py on 127.0.0.1 port 0, learn its port from its first line of
  standard output, read its memory use from /proc/PID/status and its open-file limit from
  /proc/PID/limits, stop it by its pid. (Server.py raises its own soft open-file limit to the
  hard one as it starts, so nothing needs wrapping for thousands of connections.)
- MessageParser: cut the server's output into messages (HELO reply, JOINED_CHATROOM,
  LEFT_CHATROOM, ERROR_CODE, CHAT), checking that each has the form PROTOCOL.md gives it.
- Peer: one nonblocking client connection (an output queue and a parser), for tools that run
  many connections in one `selectors` loop.
- helo_check: does the server answer a HELO within a time limit?
- raise_nofile_limit, os_limits: the open-file limit and the kernel settings that decide how many
  connections can be made at once.

Everything here talks to 127.0.0.1 only, and every wait has a timeout.
"""
import os
import re
import resource
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)      # for `import protocol`, however the tool was started

from protocol import MAX_REQUEST_BYTES  # noqa: E402 (needs the path above)

HOST = "127.0.0.1"
SERVER = os.path.join(REPO_ROOT, "Server.py")
# Seconds to wait for the spawned server's "listening on" line, and for it to exit when stopped.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# Seconds to wait for a TCP connection to 127.0.0.1 to be set up.
CONNECT_TIMEOUT = 5.0
# The longest message an honest server sends: a CHAT relays the text of one request under the
# CLIENT_NAME of another (each at most MAX_REQUEST_BYTES), plus the field names.
MAX_SERVER_MESSAGE = 2 * MAX_REQUEST_BYTES + 1024
# Bytes asked of one recv().
READ_SIZE = 64 * 1024
# Longer runs of digits from the server are kept as strings (see _number).
MAX_INT_DIGITS = 4000

# -------------------------------------------------------------------------------------------
# The server under test
# -------------------------------------------------------------------------------------------

class ServerProcess:
    """Server.py running in a child process on 127.0.0.1 and a port the OS picked.

    Its standard error (the log) goes to a temporary file, so a chatty log can never fill a
    pipe and stall the server; `log_tail()` shows the end of it after a crash.
    """

    def __init__(self, log_level: str = "warning", extra_args: Tuple[str, ...] = ()) -> None:
        command = [sys.executable, SERVER, HOST, "0", "--log-level", log_level, *extra_args]
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self._log)
        self.pid = self.proc.pid
        try:
            line = _read_line(self.proc.stdout, START_TIMEOUT)
            match = re.match(rb"listening on (\S+):(\d+)\n$", line)
            if not match:
                raise RuntimeError("unexpected first line from Server.py: %r" % line)
            self.port = int(match.group(2))
        except Exception:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def status_kb(self, key: str) -> Optional[int]:
        """A `kB` figure from /proc/PID/status (VmRSS: memory in use now; VmHWM: the peak)."""
        return status_kb(self.pid, key)

    def rss_kb(self) -> Optional[int]:
        return self.status_kb("VmRSS")

    def open_file_limit(self) -> Optional[str]:
        """The server's "Max open files" line from /proc/PID/limits (soft, hard)."""
        try:
            with open("/proc/%d/limits" % self.pid) as limits:
                for line in limits:
                    if line.startswith("Max open files"):
                        return " ".join(line.split()[3:5])
        except OSError:
            pass
        return None

    def log_tail(self, limit: int = 4000) -> str:
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        return self._log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """SIGTERM (the server stops cleanly on it), then SIGKILL if it has not exited within
        STOP_TIMEOUT. Only ever this child, by its pid."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc.stdout.close()
        self._log.close()


def status_kb(pid: int, key: str) -> Optional[int]:
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_line(stream, timeout: float) -> bytes:
    """One line from a child's stdout pipe, waiting at most `timeout` seconds."""
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not line.endswith(b"\n") and len(line) < 1000:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise RuntimeError("no line from Server.py within %g s (got %r)"
                                   % (timeout, line))
            data = os.read(stream.fileno(), 1)    # one byte: read no further than the line
            if not data:
                raise RuntimeError("Server.py exited before listening (got %r)" % line)
            line += data
    return line


# -------------------------------------------------------------------------------------------
# The server's output, as messages
# -------------------------------------------------------------------------------------------

class ProtocolViolation(Exception):
    """The server sent something that is not one of the messages PROTOCOL.md describes."""


class ServerMessage:
    """One message from the server.

    kind is "HELO", "JOINED", "LEFT", "ERROR" or "CHAT"; the other attributes are set for the
    kinds that have them (None otherwise):
        HELO    line (the echoed request line), ip, port, student_id
        JOINED  room, ip, port, ref, join_id
        LEFT    ref, join_id
        ERROR   code, text (the description)
        CHAT    ref, name, text (the message, possibly several lines)
    """
    __slots__ = ("kind", "line", "room", "ip", "port", "ref", "join_id", "student_id",
                 "code", "name", "text")

    def __init__(self, kind: str, **fields) -> None:
        self.kind = kind
        for slot in self.__slots__[1:]:
            setattr(self, slot, fields.get(slot))

    def __repr__(self) -> str:
        shown = ", ".join("%s=%r" % (slot, getattr(self, slot)) for slot in self.__slots__[1:]
                          if getattr(self, slot) is not None)
        return "%s(%s)" % (self.kind, shown)


# How many lines each reply has, by the start of its first line. CHAT ends at a blank line.
_REPLY_LINES = ((b"JOINED_CHATROOM: ", 5), (b"LEFT_CHATROOM: ", 2), (b"ERROR_CODE: ", 2),
                (b"HELO", 4))


class MessageParser:
    """Cuts one connection's byte stream from the server into ServerMessages.

    feed(data) returns the messages completed by `data`; it raises ProtocolViolation for bytes
    that cannot start a message, a message of the wrong form, or one longer than
    MAX_SERVER_MESSAGE.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> List[ServerMessage]:
        buf = self._buf
        buf += data
        messages = []
        start = 0
        while True:
            end, message = self._maybe_message(buf, start)
            if message is None:
                break
            messages.append(message)
            start = end
        del buf[:start]
        if len(buf) > MAX_SERVER_MESSAGE:
            raise ProtocolViolation("a message longer than %d bytes: %r..."
                                    % (MAX_SERVER_MESSAGE, bytes(buf[:80])))
        return messages

    @staticmethod
    def _maybe_message(buf: bytearray, start: int) -> Tuple[int, Optional[ServerMessage]]:
        """(end, message) for a whole message at buf[start:], or (start, None)."""
        first_end = buf.find(b"\n", start)
        if first_end < 0:
            head = bytes(buf[start:start + 17])
            if len(head) >= 16 and not any(head.startswith(prefix) or prefix.startswith(head)
                                           for prefix, _ in _REPLY_LINES + ((b"CHAT: ", 0),)):
                raise ProtocolViolation("unexpected bytes from the server: %r"
                                        % bytes(buf[start:start + 80]))
            return start, None
        if buf.startswith(b"CHAT: ", start):
            blank = buf.find(b"\n\n", first_end)
            if blank < 0:
                return start, None
            return blank + 2, _parse_chat(bytes(buf[start:blank]))
        for prefix, count in _REPLY_LINES:
            if buf.startswith(prefix, start):
                end = first_end
                for _ in range(count - 1):
                    end = buf.find(b"\n", end + 1)
                    if end < 0:
                        return start, None
                return end + 1, _parse_reply(prefix, bytes(buf[start:end]).split(b"\n"))
        raise ProtocolViolation("unexpected line from the server: %r"
                                % bytes(buf[start:first_end + 1][:200]))


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("not UTF-8: %r" % raw[:200]) from None


def _value(line: bytes, key: str) -> str:
    text = _decode(line)
    if not text.startswith(key):
        raise ProtocolViolation("expected %r, got %r" % (key, text[:200]))
    return text[len(key):]


def _number(line: bytes, key: str):
    """The integer after `key`. The server echoes a request's JOIN_ID as sent, which may be
    thousands of digits: past MAX_INT_DIGITS they stay a string (Python 3.11 refuses to
    convert more than 4300 digits, and nothing here needs their value)."""
    value = _value(line, key)
    if not (value.isascii() and value.isdigit()):
        raise ProtocolViolation("%r is not followed by an integer: %r" % (key, value[:200]))
    return int(value) if len(value) <= MAX_INT_DIGITS else value


def _parse_chat(frame: bytes) -> ServerMessage:
    parts = frame.split(b"\n", 2)
    if len(parts) != 3:
        raise ProtocolViolation("CHAT with fewer than 3 lines: %r" % frame[:200])
    return ServerMessage("CHAT", ref=_number(parts[0], "CHAT: "),
                         name=_value(parts[1], "CLIENT_NAME: "),
                         text=_value(parts[2], "MESSAGE: "))


def _parse_reply(prefix: bytes, lines: List[bytes]) -> ServerMessage:
    if prefix == b"JOINED_CHATROOM: ":
        return ServerMessage("JOINED", room=_value(lines[0], "JOINED_CHATROOM: "),
                             ip=_value(lines[1], "SERVER_IP: "), port=_number(lines[2], "PORT: "),
                             ref=_number(lines[3], "ROOM_REF: "),
                             join_id=_number(lines[4], "JOIN_ID: "))
    if prefix == b"LEFT_CHATROOM: ":
        return ServerMessage("LEFT", ref=_number(lines[0], "LEFT_CHATROOM: "),
                             join_id=_number(lines[1], "JOIN_ID: "))
    if prefix == b"ERROR_CODE: ":
        return ServerMessage("ERROR", code=_number(lines[0], "ERROR_CODE: "),
                             text=_value(lines[1], "ERROR_DESCRIPTION: "))
    return ServerMessage("HELO", line=_decode(lines[0]), ip=_value(lines[1], "IP:"),
                         port=_number(lines[2], "Port:"), student_id=_value(lines[3], "StudentID:"))


# -------------------------------------------------------------------------------------------
# Client connections
# -------------------------------------------------------------------------------------------

def connect(port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected, nonblocking TCP socket to 127.0.0.1:port, with Nagle off (so that each
    send() is its own segment as far as the kernel allows)."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def abort(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on, timeout 0): the peer sees a reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Peer:
    """One nonblocking client connection: bytes waiting to be sent, and a parser for what the
    server sends. The owner runs the selectors loop and calls flush()/receive() on events.

    `closed_by_server` is set when the server closed or reset it (EOF, ECONNRESET or EPIPE);
    the owner then unregisters it from its selector and calls close(). `closed` is set by
    close() and abort().
    """

    def __init__(self, sock: socket.socket, label: str = "") -> None:
        self.sock = sock
        self.label = label
        self.out = bytearray()
        self.parser = MessageParser()
        self.closed = False
        self.closed_by_server = False
        self.events = 0                 # what it is registered for in the owner's selector

    def fileno(self) -> int:
        return self.sock.fileno()

    def queue(self, data: bytes) -> None:
        self.out += data

    def flush(self, limit: int = 1 << 30) -> int:
        """Send up to `limit` queued bytes with one send(); return how many went."""
        if self.closed or self.closed_by_server or not self.out:
            return 0
        try:
            sent = self.sock.send(self.out[:limit])     # a copy: `out` may be resized
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:                 # EPIPE, ECONNRESET: the server has closed it
            self.closed_by_server = True
            return 0
        del self.out[:sent]
        return sent

    def receive(self) -> List[ServerMessage]:
        """Read once and return the messages completed. May raise ProtocolViolation."""
        if self.closed or self.closed_by_server:
            return []
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""                  # ECONNRESET: as good as EOF here
        if not data:
            self.closed_by_server = True
            return []
        return self.parser.feed(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.out = bytearray()
            self.sock.close()

    def abort(self) -> None:
        """Vanish: RST, whatever is still queued or unread."""
        if not self.closed:
            self.closed = True
            self.out = bytearray()
            abort(self.sock)


def helo_check(port: int, timeout: float, text: str = "health") -> Tuple[bool, float, str]:
    """Connect, send one HELO, wait for the whole reply. Returns (answered in time and in the
    right form, seconds taken, what went wrong)."""
    started = time.monotonic()
    request = "HELO %s" % text
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request.encode("ascii") + b"\n")
            parser = MessageParser()
            deadline = started + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False, time.monotonic() - started, "no HELO reply in %g s" % timeout
                sock.settimeout(remaining)
                data = sock.recv(READ_SIZE)
                if not data:
                    return False, time.monotonic() - started, "closed without a HELO reply"
                messages = parser.feed(data)
                if messages:
                    reply = messages[0]
                    ok = (reply.kind == "HELO" and reply.line == request and reply.ip == HOST
                          and reply.port == port)
                    return ok, time.monotonic() - started, "" if ok else "bad reply %r" % reply
    except socket.timeout:
        return False, time.monotonic() - started, "no HELO reply in %g s" % timeout
    except (OSError, ProtocolViolation) as exc:
        return False, time.monotonic() - started, "%s: %s" % (type(exc).__name__, exc)


# -------------------------------------------------------------------------------------------
# Limits of the machine
# -------------------------------------------------------------------------------------------

def add_target_arguments(parser, what: str) -> None:
    """The options every live-server tool shares: --spawn or --port, and --host."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--spawn", action="store_true",
                        help="start Server.py on 127.0.0.1 and a free port, and stop it after")
    target.add_argument("--port", type=int, help="%s a server already listening here" % what)
    parser.add_argument("--host", default=HOST, choices=[HOST],
                        help="the server's address (only 127.0.0.1 is allowed)")


def raise_nofile_limit() -> Tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit. Returns (soft, hard) as they
    were before."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    return soft, hard


def _read_proc(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def os_limits() -> Dict[str, object]:
    """What decides how many connections this machine lets us make at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nofile_soft": soft, "nofile_hard": hard,
        "somaxconn": _read_proc("/proc/sys/net/core/somaxconn"),
        "tcp_max_syn_backlog": _read_proc("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        "ip_local_port_range": _read_proc("/proc/sys/net/ipv4/ip_local_port_range"),
        "file_max": _read_proc("/proc/sys/fs/file-max"),
    }
