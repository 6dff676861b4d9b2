"""The tester's side of the wire: links to the server under test, its replies cut into
messages by the contract's literal shapes, and the transcript of every byte.

- Link: one connection, a TCP socket (TcpLink) or a session of the UDP transport (UdpLink,
  docs/UDP.md). Both carry a byte stream; neither knows any chat message.
- Net: every link of one case on one selector. Waiting on one client pumps them all (a UDP
  session must answer its server's datagrams even while the case reads another client), except
  a link `paused` on purpose: the slow reader, whose bytes pile up in the kernel.
- Client: a named link with the messages it has received, cut out of its stream here, by the
  shapes docs/PROTOCOL.md gives, and nowhere else: the tester imports nothing of the server's
  reader, so a bug there cannot make it pass a wrong server.
- Fail, Warn: what a case raises; Transcript: what was sent and received, for the report.

Every wait has a deadline; a server that never answers gives Fail("no reply in N s").
"""
import re
import selectors
import socket
import time
from typing import Callable, List, Optional, Tuple

# Bytes asked of one recv() (TCP) and the most stream bytes handed to a UDP session at once.
RECV_SIZE = 256 * 1024
UDP_SENDING_BYTES = 256 * 1024
# The longest datagram the UDP transport sends (docs/UDP.md, section 2), plus one byte so that
# a longer one is seen, and dropped, rather than cut.
UDP_MAX_DATAGRAM = 1200
# A transcript keeps this many bytes of one send or receive: a 1 MB flood helps nobody read it.
TRANSCRIPT_CHUNK = 600
TRANSCRIPT_ENTRIES = 80
# Seconds between requests sent one by one without waiting for replies (Client.send_apart): a
# server that reads as fast as it can gets each in a recv() of its own.
APART = 0.05


class Fail(Exception):
    """The server differs from the contract: `quote` is what the contract says."""

    def __init__(self, message: str, quote: str = "") -> None:
        super().__init__(message)
        self.message, self.quote = message, quote


class Warn(Exception):
    """The server reads an ambiguous point of the course's text otherwise than we do."""

    def __init__(self, message: str, ours: str, theirs: str, quote: str = "") -> None:
        super().__init__(message)
        self.message, self.ours, self.theirs, self.quote = message, ours, theirs, quote


class Transcript:
    """What every client sent (">") and received ("<"), in order, each entry cut to
    TRANSCRIPT_CHUNK bytes and the whole to TRANSCRIPT_ENTRIES entries (the rest counted)."""

    def __init__(self) -> None:
        self.entries: List[Tuple[str, str, bytes]] = []
        self.dropped = 0
        self.muted = False          # a case's routine set-up, summed up by a note instead

    def note(self, text: str) -> None:
        """A line of the case's own between the bytes: what it did without recording it."""
        self.entries.append(("", "", ("(%s)" % text).encode()))

    def add(self, who: str, way: str, data: bytes) -> None:
        if self.muted:
            return
        last = self.entries[-1] if self.entries else None
        if last is not None and last[0] == who and last[1] == way \
                and len(last[2]) < TRANSCRIPT_CHUNK:
            self.entries[-1] = (who, way, (last[2] + data)[:TRANSCRIPT_CHUNK + 1])
        elif len(self.entries) < TRANSCRIPT_ENTRIES:
            self.entries.append((who, way, data[:TRANSCRIPT_CHUNK + 1]))
        else:
            self.dropped += 1

    def lines(self) -> List[Tuple[str, str, str]]:
        """(who, way, text): one per line sent or received, the bytes shown as Python writes
        them (a line's \\n at its end), " ..." where an entry was cut."""
        out = []
        for who, way, data in self.entries:
            cut = len(data) > TRANSCRIPT_CHUNK
            pieces = data[:TRANSCRIPT_CHUNK].split(b"\n")
            for number, piece in enumerate(pieces):
                last = number == len(pieces) - 1
                if last and not piece and not cut:
                    break
                text = show(piece) + ("" if last else "\\n") + (" ..." if last and cut else "")
                out.append((who, way, text))
        if self.dropped:
            out.append(("", "", "(%d more sends and receives not kept)" % self.dropped))
        return out


def show(data: bytes) -> str:
    """`data` as Python would write it, without the quotes: printable ASCII as it is, other
    bytes escaped."""
    return repr(data)[2:-1]


# --- Links -------------------------------------------------------------------------------------

class Link:
    """What both links share: `inbox` (stream bytes received), `outbox` (not yet handed on),
    `closed` (why the stream ended, once it has) and one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox, self.outbox = bytearray(), bytearray()
        self.closed: Optional[str] = None

    def sockets(self) -> List[socket.socket]:
        return [self.sock]

    def send(self, data: bytes) -> None:
        self.outbox += data
        self.flush()

    def flush(self) -> None:
        raise NotImplementedError


class TcpLink(Link):
    """A nonblocking TCP connection; what it receives goes to `inbox`."""

    def __init__(self, addr: Tuple[str, int], timeout: float, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
        if rcvbuf:          # set before connecting, so that the window offered is small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(addr)
        except OSError as exc:
            self.sock.close()
            raise Fail("cannot connect to %s:%d: %s" % (addr[0], addr[1], exc))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        super().__init__(self.sock)

    def flush(self) -> None:
        while self.outbox and self.closed is None:
            try:
                sent = self.sock.send(self.outbox)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.closed = "send failed: %s" % exc
                return
            del self.outbox[:sent]

    def wants_write(self) -> bool:
        return bool(self.outbox) and self.closed is None

    def on_readable(self, _sock: socket.socket) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.closed = "connection reset (%s)" % exc.strerror
            return
        if data:
            self.inbox += data
        elif self.closed is None:
            self.closed = "closed"

    def timeout(self) -> Optional[float]:
        return None

    def on_time(self) -> None:
        pass

    def close(self) -> None:
        self.sock.close()


def udp_client_endpoint():
    """The project's UDP client endpoint class (docs/UDP.md), the one thing the tester takes
    from the project, and only with --udp: the transport beneath the chat text, not the chat."""
    from sansio.udp_client import ClientEndpoint
    return ClientEndpoint


class UdpLink(Link):
    """A session of the UDP transport (docs/UDP.md) on a UDP socket connected to the server;
    the stream it delivers goes to `inbox`. JOINs name no callback ("0"/"0"), so the stream
    stays on this socket."""

    def __init__(self, addr: Tuple[str, int], timeout: float, rcvbuf: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET,
                                  socket.SOCK_DGRAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(addr)
        self.sock.setblocking(False)
        super().__init__(self.sock)
        self.addr = self.sock.getpeername()[:2]
        self.endpoint = udp_client_endpoint()(self.addr, time.monotonic())

    def wants_write(self) -> bool:
        return False

    def flush(self) -> None:
        """Hand the session what it has room for, act on its events, send its datagrams.
        Events are told apart by their fields (data: stream bytes; reason: the end), so that
        the endpoint class is all the tester imports of the transport."""
        now = time.monotonic()
        for event in self.endpoint.events():
            if hasattr(event, "data"):
                self.inbox += event.data
            elif hasattr(event, "reason") and not hasattr(event, "addr") and not self.closed:
                self.closed = "session ended: %s" % event.reason
        room = UDP_SENDING_BYTES - self.endpoint.buffered_bytes()
        if self.outbox and room > 0:
            self.endpoint.send_stream(bytes(self.outbox[:room]), now)
            del self.outbox[:room]
        for data, _addr in self.endpoint.datagrams_to_send(now):
            try:
                self.sock.send(data)
            except OSError:
                pass                        # lost: the session retransmits it
        for knock in self.endpoint.knocks_to_send():
            try:
                self.sock.send(knock)
            except OSError:
                pass

    def on_readable(self, _sock: socket.socket) -> None:
        for _ in range(256):
            try:
                data = self.sock.recv(UDP_MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue                    # an ICMP error for an earlier datagram
            self.endpoint.datagram_received(data, self.addr, time.monotonic())
        self.flush()

    def timeout(self) -> Optional[float]:
        deadline = self.endpoint.next_deadline()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def on_time(self) -> None:
        deadline = self.endpoint.next_deadline()
        if deadline is not None and time.monotonic() >= deadline:
            self.endpoint.timer(time.monotonic())
        self.flush()

    def close(self) -> None:
        self.endpoint.close(time.monotonic())
        self.flush()
        self.sock.close()


# --- Messages, cut by the contract's shapes -------------------------------------------------

# How many lines each reply of the contract has (docs/PROTOCOL.md, section 1); a CHAT ends at
# its blank line; anything else is taken as one line, so that it is shown and judged.
REPLY_LINES = {b"HELO": 4, b"JOINED_CHATROOM": 5, b"LEFT_CHATROOM": 2, b"ERROR_CODE": 2}


def maybe_cut_message(buf: bytearray) -> Optional[bytes]:
    """The first whole message in `buf`, removed from it; None if it is not complete yet."""
    first_end = buf.find(b"\n")
    if first_end < 0:
        return None
    first = bytes(buf[:first_end])
    keyword = re.split(rb"[: ]", first, 1)[0]
    if keyword == b"CHAT" and first.startswith(b"CHAT:"):
        end = buf.find(b"\n\n")
        end = -1 if end < 0 else end + 2
    else:
        end = first_end + 1
        for _ in range(REPLY_LINES.get(keyword, 1) - 1):
            nxt = buf.find(b"\n", end)
            if nxt < 0:
                return None
            end = nxt + 1
    if end < 0:
        return None
    message = bytes(buf[:end])
    del buf[:end]
    return message


class Net:
    """All links of one case, pumped together on one selector."""

    def __init__(self, addr: Tuple[str, int], udp: bool, timeout: float,
                 transcript: Transcript) -> None:
        self.addr, self.udp, self.timeout, self.transcript = addr, udp, timeout, transcript
        self.selector = selectors.DefaultSelector()
        self.clients: List["Client"] = []

    def client(self, name: str, rcvbuf: int = 0) -> "Client":
        """A new connection (over UDP: a session, opened before this returns)."""
        link = (UdpLink if self.udp else TcpLink)(self.addr, self.timeout, rcvbuf)
        client = Client(name, link, self)
        self.clients.append(client)
        for sock in link.sockets():
            self.selector.register(sock, selectors.EVENT_READ, (link, sock))
        if self.udp:
            link.flush()
            if not self.wait(lambda: link.endpoint.state != "handshake", self.timeout):
                raise Fail("%s: no UDP session in %g s (no answer to HELLO)" %
                           (name, self.timeout))
            if link.closed:
                raise Fail("%s: %s" % (name, link.closed))
        return client

    def pump(self, timeout: float) -> None:
        """One turn: wait up to `timeout` for something to read, write or time out."""
        links = [c.link for c in self.clients]
        for link in links:
            for sock in link.sockets():
                # a link at its end would be readable (EOF) at every turn: no more reads
                reading = not self._paused(link) and link.closed is None
                events = selectors.EVENT_READ if reading else 0
                events |= selectors.EVENT_WRITE if link.wants_write() else 0
                self._interest(sock, link, events)
        timers = [t for t in (link.timeout() for link in links
                              if not self._paused(link)) if t is not None]
        wait = min([timeout] + timers)
        for key, mask in self.selector.select(max(0.0, wait)):
            link, sock = key.data
            if mask & selectors.EVENT_READ:
                link.on_readable(sock)
            if mask & selectors.EVENT_WRITE:
                link.flush()
        for link in links:
            if not self._paused(link):
                link.on_time()
        for client in self.clients:
            client.take_messages()

    def _paused(self, link) -> bool:
        return any(c.paused for c in self.clients if c.link is link)

    def _interest(self, sock: socket.socket, link, events: int) -> None:
        registered = self.selector.get_map().get(sock) is not None
        if events and registered:
            self.selector.modify(sock, events, (link, sock))
        elif events:
            self.selector.register(sock, events, (link, sock))
        elif registered:
            self.selector.unregister(sock)

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Pump until done() or `timeout` seconds have passed; whether done() came true."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.05))
        return True

    def close(self) -> None:
        for client in self.clients:
            try:
                client.link.close()
            except OSError:
                pass
        self.selector.close()


class Client:
    """One connection to the server under test, named for the transcript."""

    def __init__(self, name: str, link, net: Net) -> None:
        self.name, self.link, self.net = name, link, net
        self.messages: List[bytes] = []        # received, not yet taken by the case
        self.paused = False                    # not read: a slow reader on purpose
        self._syncs = 0

    def send(self, data: bytes) -> None:
        self.net.transcript.add(self.name, ">", data)
        self.link.send(data)

    def send_apart(self, *requests: bytes) -> None:
        """Send each request in a segment of its own, APART seconds after the last, without
        waiting for a reply: requests a client sends one by one, not three in one segment."""
        for number, request in enumerate(requests):
            if number:
                self.net.pump(APART)
            self.send(request)

    def take_messages(self) -> None:
        while True:
            message = maybe_cut_message(self.link.inbox)
            if message is None:
                return
            self.messages.append(message)

    def note_received(self, message: bytes) -> bytes:
        self.net.transcript.add(self.name, "<", message)
        return message

    def next_message(self, what: str, timeout: Optional[float] = None) -> bytes:
        """The next message received; Fail("no reply in N s") if none comes, naming `what`
        was awaited."""
        self.peek(what, timeout)
        return self.note_received(self.messages.pop(0))

    def peek(self, what: str, timeout: Optional[float] = None) -> bytes:
        """The next message received, left to be taken; Fail as next_message."""
        timeout = self.net.timeout if timeout is None else timeout
        if not self.net.wait(lambda: bool(self.messages) or self.link.closed is not None,
                             timeout):
            if self.link.inbox:             # a start that never ended as the contract's shapes do
                self.net.transcript.add(self.name, "<", bytes(self.link.inbox))
                raise Fail("%s: no whole reply in %g s (waiting for %s); only the start of one "
                           "came: %s" % (self.name, timeout, what, show_inline(
                               bytes(self.link.inbox))))
            raise Fail("%s: no reply in %g s (waiting for %s)" % (self.name, timeout, what))
        if not self.messages:
            rest = bytes(self.link.inbox)
            if rest:
                self.net.transcript.add(self.name, "<", rest)
            raise Fail("%s: the server ended the connection (%s) while we waited for %s"
                       % (self.name, self.link.closed, what))
        return self.messages[0]

    def expect(self, expected: bytes, what: str, quote: str) -> bytes:
        """The next message must be exactly `expected`."""
        got = self.next_message(what)
        if got != expected:
            raise Fail("%s: expected %s, exactly %s; got %s%s" % (
                self.name, what, show_inline(expected), show_inline(got),
                difference(expected, got)), quote)
        return got

    def expect_shape(self, pattern: bytes, what: str, quote: str) -> "re.Match":
        """The next message must match `pattern` (a regular expression over the whole
        message, written from the contract's literal shape)."""
        got = self.next_message(what)
        match = re.fullmatch(pattern, got, re.S)
        if match is None:
            raise Fail("%s: expected %s; got %s" % (self.name, what, show_inline(got)), quote)
        return match

    def sync(self) -> List[bytes]:
        """Everything received before the reply to a HELO sent now: what the server sent this
        client up to the moment it handled the HELO (a connection's requests are handled in
        order)."""
        self._syncs += 1
        text = b"conformance-sync-%d" % self._syncs
        self.send(b"HELO " + text + b"\n")
        before = []
        while True:
            message = self.next_message("the reply to HELO %s" % text.decode())
            if message.startswith(b"HELO " + text + b"\n"):
                return before
            before.append(message)

    def expect_nothing(self, what: str, quote: str) -> None:
        """Nothing may have arrived, up to a HELO sent now."""
        extra = self.sync()
        if extra:
            raise Fail("%s: expected nothing (%s); got %s" %
                       (self.name, what, " then ".join(show_inline(m) for m in extra)), quote)

    def expect_closed(self, what: str, quote: str, timeout: Optional[float] = None) -> None:
        timeout = self.net.timeout if timeout is None else timeout
        if not self.net.wait(lambda: self.link.closed is not None or bool(self.messages),
                             timeout):
            raise Fail("%s: the connection is still open %g s later (%s)" %
                       (self.name, timeout, what), quote)
        if self.messages:
            got = self.note_received(self.messages.pop(0))
            raise Fail("%s: expected the connection to close (%s); got %s" %
                       (self.name, what, show_inline(got)), quote)


def show_inline(data: bytes, limit: int = 200) -> str:
    """`data` on one line, quoted, cut to `limit` characters."""
    text = repr(data)[1:]
    return text if len(text) <= limit else text[:limit] + "...'"


def difference(expected: bytes, got: bytes) -> str:
    """Where two long messages part: "" for short ones, whose whole text is shown anyway."""
    if len(expected) <= 200 and len(got) <= 200:
        return ""
    at = next((i for i, (x, y) in enumerate(zip(expected, got)) if x != y),
              min(len(expected), len(got)))
    return " (%d bytes expected, %d received; they differ from byte %d: %s against %s)" % (
        len(expected), len(got), at, show_inline(expected[at:at + 30]),
        show_inline(got[at:at + 30]))
