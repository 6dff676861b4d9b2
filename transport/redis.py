"""The Redis links (--bus): outgoing connections the object behind the bus asks for (today
cluster/shared.py's SharedChatProtocol), as a transport of their own.

The links object decides (the `Links` contract below: which links to open, what to write, when
its timer is due); this module only carries bytes and time, as the UDP driver does for its
endpoint: nonblocking connect, every ready link read before any client in a tick (so that a
node busy with clients never falls behind Redis, which cuts a pub/sub client whose output passes
its buffer limit) but for no longer than the loop's step budget, what the links object has for
them sent at the end of the tick, and one loop
timer re-armed from links_deadline(). After each call into the links object, what
link_actions() returns goes to the `apply` callable given (the hub's), so a request waiting
for Redis's answer gets it in the same tick.
"""
import errno
import logging
import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from reactor import EVENT_READ, EVENT_WRITE, Loop, Timer
from sansio.actions import Action

LOGGER = logging.getLogger(__name__)

# Bytes asked of recv() at once, as for a client.
READ_SIZE = 64 * 1024
# What one tick does for the links: READ_SIZE chunks read and handled (the events they bring
# carried out), at least one a link, until the socket is empty or the tick's read step (links go
# first) has taken LINK_SHARE of the loop's step budget (policy/scheduler.py STEP_BUDGET); the
# rest of the step is the clients'. Redis may publish faster than that: a subscriber that reads
# less than is published falls behind until Redis cuts it (client-output-buffer-limit pubsub),
# and its events are read back from the rooms' logs (none is lost). Without a bound, 64 chunks
# a tick were read and handled at once: 4 MiB of chats, tens of thousands of deliveries, and
# every client waited seconds for that tick to end.
LINK_SHARE = 0.5
# The link the links object's last words (links_goodbye) go to as the server stops: the bus's
# command link (sansio/bus.py LINKS).
GOODBYE_LINK = "cmd"


class Links(Protocol):
    """What this transport needs of an object with outgoing links of its own (the shared bus's
    two links to Redis, cluster/shared.py). It opens the ones links_wanted() names, reads and
    writes them, and after each call of the link_* and links_timer methods hands link_actions()
    to the hub and closes the links links_to_close() names. Times are time.monotonic() seconds."""
    links: Tuple[str, ...]          # their names, in the order they are read each tick

    def links_wanted(self, now: float) -> List[str]:
        """The links (closed now) to open now."""

    def link_opening(self, name: str, now: float) -> None:
        """The transport is opening link `name` now."""

    def link_up(self, name: str, now: float) -> None:
        """Link `name` is connected."""

    def link_failed(self, name: str, why: str, now: float) -> None:
        """Link `name` could not connect, or broke; the transport has closed it."""

    def link_data(self, name: str, data: bytes, now: float) -> None:
        """Bytes read from link `name`."""

    def link_output(self, name: str) -> bytes:
        """Bytes to write to link `name` now (b"" if none)."""

    def links_to_close(self) -> List[str]:
        """The links the object wants closed now (it has counted them as failed itself)."""

    def links_deadline(self) -> Optional[float]:
        """When links_timer() is next due, or None."""

    def links_timer(self, now: float) -> None:
        """The time has come (links_deadline)."""

    def links_goodbye(self) -> bytes:
        """The last bytes for the link named "cmd" as the server stops (b"" if none)."""

    def link_actions(self) -> List[Action]:
        """What to carry out for what the links brought since the last call."""


class _Link:
    """One open link: its socket and what the kernel has not taken yet."""
    __slots__ = ("owner", "name", "sock", "connected", "out", "events", "stale")

    def __init__(self, owner: "RedisLinks", name: str, sock: socket.socket) -> None:
        self.owner = owner
        self.name = name
        self.sock = sock
        self.connected = False              # connect() has completed
        self.out = bytearray()              # what the kernel has not taken yet
        self.events = EVENT_WRITE           # until connected: writable means connected
        self.stale = False                  # closed: its events this tick are ignored

    def on_readable(self) -> None:
        self.owner.on_link_readable(self)

    def on_writable(self) -> None:
        self.owner.on_link_writable(self)


class RedisLinks:
    """The links of one `Links` object to Redis at `address` (an IP address, not a name).

    `apply` carries out actions (the hub's apply); `guarded(None, func, *args)` calls into the
    links object inside the hub's one catch-all."""

    def __init__(self, loop: Loop, links: Links, address: Tuple[str, int],
                 apply: Callable[[List[Action]], None],
                 guarded: Callable[..., Any]) -> None:
        self.loop = loop
        self.links = links
        self.address = address
        self._apply = apply
        self._guarded = guarded
        self._open: Dict[str, _Link] = {}     # open ones, by name
        self._timer: Optional[Timer] = None
        self._timer_due: Optional[float] = None
        # Why each link last failed, as logged: a link that keeps failing for the same reason
        # (Redis refusing every connection) is logged once, not at every retry.
        self._logged_failure: Dict[str, str] = {}
        loop.at_end_of_tick(self._service)
        self._rearm()

    def on_link_writable(self, link: _Link) -> None:
        if link.connected:
            self._send(link)
            return
        error = link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._failed(link, "connect failed: %s" % os.strerror(error))
            return
        link.connected = True
        if self._logged_failure.pop(link.name, None) is not None:
            LOGGER.info("bus: %s link to redis %s:%d connected", link.name, *self.address[:2])
        self._guarded(None, self.links.link_up, link.name, self.loop.now)
        self._after_calls()

    def on_link_readable(self, link: _Link) -> None:
        """Read and handle what is ready, a chunk at a time, until the socket is empty or the
        links' share of the read step is taken (see LINK_SHARE): the rest is read next tick (the
        selector is level-triggered, so the link is ready again at once)."""
        links = self.links
        until = self.loop.now + LINK_SHARE * self.loop.step_budget     # (now: the tick's start)
        while True:
            try:
                data = link.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._failed(link, "recv failed: %s" % exc)
                return
            if not data:
                self._failed(link, "closed by the other side")
                return
            self._guarded(None, links.link_data, link.name, data, self.loop.now)
            self._after_calls()             # what it brought is carried out: that counts too
            if (self._open.get(link.name) is not link      # the links were reset meanwhile
                    or time.monotonic() > until):
                return
        self._after_calls()

    def _service(self) -> None:
        """The end-of-tick hook: open the links wanted, run the timer when due, send what the
        links object has for them (the commands this tick's requests made), re-arm. By the
        tick's time, as the links were read: a process stopped in the middle of a tick (SIGSTOP,
        a frozen machine) reads the replies that came meanwhile before it judges them overdue."""
        links, now = self.links, self.loop.now
        for name in links.links_wanted(now):
            if name not in self._open:
                self._connect(name, now)
        due = links.links_deadline()
        if due is not None and now >= due:
            self._guarded(None, links.links_timer, now)
        self._after_calls()
        self._rearm()

    def _rearm(self) -> None:
        """One loop timer at links_deadline(), to wake the loop: _service does the work."""
        due = self.links.links_deadline()
        if due != self._timer_due:
            self.loop.cancel(self._timer)
            self._timer = None if due is None else self.loop.call_at(due, self._woken)
            self._timer_due = due

    def _woken(self) -> None:
        self._timer = self._timer_due = None

    def _after_calls(self) -> None:
        """After each call into the links object: hand what it has to carry out to the hub,
        close the links it asked to close, send what it has for the others."""
        actions = self._guarded(None, self.links.link_actions)
        if actions:
            self._apply(actions)
        for name in self.links.links_to_close():
            self._close(name)
        for link in list(self._open.values()):
            if link.connected:
                self._send(link)

    def _connect(self, name: str, now: float) -> None:
        host, port = self.address
        self.links.link_opening(name, now)
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                 socket.SOCK_STREAM)
        except OSError as exc:
            # Every descriptor is taken (clients took the ones a dropped link let go): the
            # links object retries later, with its backoff, as for a refused connection.
            self._log_failure(name, "no socket: %s" % exc)
            self._guarded(None, self.links.link_failed, name, "no socket: %s" % exc, now)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = self._open[name] = _Link(self, name, sock)
        rank = self.links.links.index(name) if name in self.links.links else None
        self.loop.register(sock, link.events, link, rank=rank)
        error = sock.connect_ex((host, port))
        if error not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._failed(link, "connect failed: %s" % os.strerror(error))

    def _send(self, link: _Link) -> None:
        link.out += self.links.link_output(link.name)
        if link.out:
            try:
                sent = link.sock.send(link.out)
                del link.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._failed(link, "send failed: %s" % exc)
                return
        events = EVENT_READ | (EVENT_WRITE if link.out else 0)
        if events != link.events:
            self.loop.modify(link.sock, events, link)
            link.events = events

    def _failed(self, link: _Link, why: str) -> None:
        self._log_failure(link.name, why)
        self._close(link.name)
        self._guarded(None, self.links.link_failed, link.name, why, self.loop.now)
        self._after_calls()

    def _log_failure(self, name: str, why: str) -> None:
        """Say at once what became of link `name` (Redis refused it, closed it, ...), once per
        reason until it connects again; the links object retries it, with its backoff."""
        if self._logged_failure.get(name) != why:
            self._logged_failure[name] = why
            LOGGER.warning("bus: %s link to redis %s:%d: %s; retrying until it connects", name,
                           *self.address[:2], why)

    def _close(self, name: str) -> None:
        link = self._open.pop(name, None)
        if link is not None:
            link.stale = True
            self.loop.unregister(link.sock)
            link.sock.close()

    def close(self) -> None:
        """Close every link, first sending the links object's last words to GOODBYE_LINK (best
        effort: the loop is ending)."""
        link = self._open.get(GOODBYE_LINK)
        if link is not None and link.connected:
            try:        # what the kernel has not taken yet first: Redis reads one byte stream
                link.sock.send(bytes(link.out) + self.links.links_goodbye())
            except OSError:
                pass
        for name in list(self._open):
            self._close(name)
