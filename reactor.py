"""The event loop, and nothing else: sockets with handler objects, one timer heap, one tick.

Boundary: this module imports nothing of the project and knows nothing of chat, Redis or the
server's policies. A socket is registered with a *handler*, an object with `on_readable()`,
`on_writable()` and a `stale` flag; a timer is a function to call at a time; an end-of-tick
hook is a function called once per tick after the timers (the hub's turns and flush), with a
`busy()` check that says whether it left work for the next tick (then select() does not wait).

One tick (`run_once`), in the order of Redis's ae.c (aeProcessEvents), reads before writes:

    1. wait     select(), not at all while a hook is busy or the read step stopped early;
                else until the first timer is due, and never past the caller's bound
    2. read     every ready socket's handler: on_readable(), then on_writable(); a handler
                that an earlier one in the same tick closed or dropped is `stale` and skipped
                (ae.c's check); given an `order`, the ready sockets in the order it says;
                sockets registered with a rank go first, in rank order; the step stops after
                `step_budget` seconds (the rest are still ready next tick), and the next step
                then goes through its sockets the other way round
    3. timers   every timer that is due, in time order (one heap, lazy deletion: trio's)
    4. hooks    the end-of-tick hooks, in the order they were added

docs/ARCHITECTURE.md, "One tick", tells what the server's parts do in each step.
"""
import heapq
import itertools
import math
import select
import selectors
import signal
import socket
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple, Union

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
# The longest select() wait in run_forever(): a safety bound only. stop(), from a signal
# handler or another thread, wakes select() at once through the wake-up socket.
MAX_WAIT = 1.0
# How long the read step may take before it leaves the rest of the ready sockets to the next
# tick (the selector is level-triggered: a socket not read from is simply ready again). A
# storm of 8 000 resets then costs several short ticks, not one long one. The server gives the
# scheduler's STEP_BUDGET here.
STEP_BUDGET = 0.005
# The read step reads the clock once per this many events (a clock read costs ~50 ns); with
# no more events than this, they are not reordered (`order`) either.
EVENTS_BETWEEN_CLOCK_READS = 32
# Lazy deletion (trio's Deadlines): a cancelled timer stays in the heap until it comes up. Once
# more than half the heap is cancelled timers, and at least this many, it is rebuilt without
# them, so that a timer re-armed after every datagram cannot make the heap grow without end.
COMPACT_MIN = 64


class Handler(Protocol):
    """What the loop needs of the object a socket is registered with."""
    stale: bool     # an earlier handler this tick closed or dropped it: ignore its events

    def on_readable(self) -> None:
        """The socket is readable (or has an error, or the peer closed)."""

    def on_writable(self) -> None:
        """The socket is writable (only asked for while the handler has output queued)."""


# A ready socket as the selector reports it: (its descriptor, its handler, the events ready).
Event = Tuple[int, Handler, int]


def _fd_of(sock: socket.socket) -> int:
    fd = sock.fileno()
    if fd < 0:
        raise ValueError("invalid file descriptor: %r is closed" % (sock,))
    return fd


class _Epoll:
    """The selector over epoll (Linux): the handler of each descriptor in one dict. selectors'
    EpollSelector keeps a SelectorKey (80 bytes) for each socket besides: 800 KB of 10 000 idle
    connections. The events a socket is watched for are kept only where they are not
    EVENT_READ alone (a socket with output waiting, a UDP endpoint): EpollSelector's rule, that
    an error or a hang-up is told as the events watched for, needs them.

    Its interface, which _Selectors offers elsewhere: register, modify and unregister a socket
    (KeyError if it is not, or already, registered; ValueError if it is closed); select(timeout)
    -> [(fd, handler, events)]; close()."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: Dict[int, Handler] = {}
        self._events: Dict[int, int] = {}           # fd -> its events, where not EVENT_READ

    def _watch(self, fd: int, events: int, handler: Handler) -> None:
        self._handlers[fd] = handler
        if events == EVENT_READ:
            self._events.pop(fd, None)
        else:
            self._events[fd] = events

    def register(self, sock: socket.socket, events: int, handler: Handler) -> int:
        fd = _fd_of(sock)
        try:
            self._epoll.register(fd, _epoll_events(events))
        except FileExistsError:
            raise KeyError("%r is already registered" % (sock,)) from None
        # (an entry left by a socket closed before it was unregistered, whose descriptor this
        # one got, is replaced: closing took it out of the epoll set)
        self._watch(fd, events, handler)
        return fd

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        fd = _fd_of(sock)
        if fd not in self._handlers:
            raise KeyError("%r is not registered" % (sock,))
        if events != self._events.get(fd, EVENT_READ):
            self._epoll.modify(fd, _epoll_events(events))
        self._watch(fd, events, handler)

    def unregister(self, sock: socket.socket) -> int:
        fd = _fd_of(sock)
        del self._handlers[fd]
        self._events.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass
        return fd

    def select(self, timeout: Optional[float]) -> List[Event]:
        """The ready sockets, as selectors' EpollSelector.select tells them."""
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:                               # (rounded up to whole milliseconds, not down to 0)
            timeout = math.ceil(timeout * 1e3) * 1e-3
        try:
            polled = self._epoll.poll(timeout, max(len(self._handlers), 1))
        except InterruptedError:
            return []
        handlers, watched = self._handlers, self._events
        ready = []
        for fd, happened in polled:
            handler = handlers.get(fd)
            if handler is not None:
                events = ((EVENT_WRITE if happened & ~select.EPOLLIN else 0)
                          | (EVENT_READ if happened & ~select.EPOLLOUT else 0))
                ready.append((fd, handler, events & watched.get(fd, EVENT_READ)))
        return ready

    def close(self) -> None:
        self._epoll.close()
        self._handlers.clear()


def _epoll_events(events: int) -> int:
    if not events or events & ~(EVENT_READ | EVENT_WRITE):
        raise ValueError("invalid events: %r" % events)
    return ((select.EPOLLIN if events & EVENT_READ else 0)
            | (select.EPOLLOUT if events & EVENT_WRITE else 0))


class _Selectors:
    """_Epoll's interface over the `selectors` module, where there is no epoll."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, sock: socket.socket, events: int, handler: Handler) -> int:
        return self._selector.register(sock, events, handler).fd

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self._selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> int:
        return self._selector.unregister(sock).fd

    def select(self, timeout: Optional[float]) -> List[Event]:
        return [(key.fd, key.data, events) for key, events in self._selector.select(timeout)]

    def close(self) -> None:
        self._selector.close()


Selector = Union[_Epoll, _Selectors]


def new_selector() -> Selector:
    return _Epoll() if hasattr(select, "epoll") else _Selectors()


class Timer:
    """A call the loop makes at `when` (monotonic seconds), unless cancelled first."""
    __slots__ = ("when", "func", "args", "cancelled")

    def __init__(self, when: float, func: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        self.when, self.func, self.args = when, func, args
        self.cancelled = False


class _Waker:
    """The read end of the socket pair that wakes select() from a signal handler (asyncio's
    self-pipe): reading it only empties it."""
    stale = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def on_readable(self) -> None:
        try:
            while self.sock.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def on_writable(self) -> None:
        pass


class Loop:
    """A single-threaded event loop over epoll, or `selectors` where there is none (see the
    module docstring)."""

    def __init__(self, step_budget: float = STEP_BUDGET, selector: Optional[Selector] = None,
                 order: Optional[Callable[[List[Event]], List[Event]]] = None) -> None:
        self.selector = selector if selector is not None else new_selector()
        self.step_budget = step_budget
        self.order = order              # the read step's order of many ready sockets (policy)
        self.now = time.monotonic()             # this tick's time, read once after select()
        self._timers: List[Tuple[float, int, Timer]] = []     # (when, order, timer): a heap
        self._order = itertools.count()         # equal times run in the order they were set
        self._cancelled = 0                     # cancelled timers still in the heap
        self._hooks: List[Callable[[], None]] = []
        self._busy: List[Callable[[], bool]] = []
        self._ranks: Dict[int, int] = {}        # fd -> rank, for sockets read before others
        self.events_left = False                # the read step stopped before the end (Hub)
        self._backwards = False                 # the read step goes the other way round
        self.stopping = False                   # stop() was called: end after this tick
        self.stopped_by: Optional[str] = None   # what stop() was told, for the last log line
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, EVENT_READ, _Waker(self._wake_r))

    # -- sockets -------------------------------------------------------------------------------

    def register(self, sock: socket.socket, events: int, handler: Handler,
                 rank: Optional[int] = None) -> None:
        """Watch `sock` for `events`, calling `handler`. With a `rank`, its events are handled
        before those of sockets without one, lowest rank first (a link to Redis before any
        client: Redis cuts a subscriber that falls behind)."""
        self.selector.register(sock, events, handler)
        if rank is not None:
            self._ranks[sock.fileno()] = rank

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        self.selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        """Stop watching `sock` (before it is closed). Unknown sockets are ignored."""
        try:
            fd = self.selector.unregister(sock)
        except (KeyError, ValueError):
            return
        self._ranks.pop(fd, None)

    # -- timers --------------------------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock (monotonic seconds); `now` is its reading at this tick's start."""
        return time.monotonic()

    def call_at(self, when: float, func: Callable[..., Any], *args: Any) -> Timer:
        """Call func(*args) once the monotonic clock reaches `when` (in the timers step)."""
        timer = Timer(when, func, args)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any) -> Timer:
        return self.call_at(time.monotonic() + delay, func, *args)

    def cancel(self, timer: Optional[Timer]) -> None:
        """Forget `timer` (None, or one already run or cancelled, is fine)."""
        if timer is None or timer.cancelled:
            return
        timer.cancelled = True
        self._cancelled += 1
        if self._cancelled > COMPACT_MIN and 2 * self._cancelled > len(self._timers):
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def call_every(self, seconds: float, func: Callable[[], None]) -> None:
        """Call func() every `seconds` (e.g. to log statistics)."""
        def again() -> None:
            self.call_later(seconds, again)
            func()
        self.call_later(seconds, again)

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer.cancelled = True          # run: cancelling it later changes nothing
            timer.func(*timer.args)

    # -- the tick ------------------------------------------------------------------------------

    def at_end_of_tick(self, hook: Callable[[], None],
                       busy: Optional[Callable[[], bool]] = None) -> None:
        """Call hook() at the end of every tick; while busy() is true, select() does not wait."""
        self._hooks.append(hook)
        if busy is not None:
            self._busy.append(busy)

    def run_once(self, timeout: Optional[float] = None) -> None:
        """One tick (the module docstring's steps): wait up to `timeout` (None: as long as it
        takes) for sockets, read, run the timers that are due, then the end-of-tick hooks."""
        events = self.selector.select(self._next_timeout(timeout))
        self.now = now = time.monotonic()
        self.events_left = False
        if events:
            self._on_events(events)
        if self._timers and self._timers[0][0] <= now:
            self._run_timers(now)
        for hook in self._hooks:
            hook()

    def _on_events(self, events: List[Event]) -> None:
        """The read step, for at most step_budget. A step that stops early leaves the next one
        to go the other way round: the kernel lists sockets oldest ready first, so in a flood
        of 500 ready sockets a client that became ready since (a quiet one) was always behind
        all those not reached yet, three or four ticks of 40 ms; now it is among the first
        in the next step, and the oldest are among the first in the one after."""
        if self._backwards:
            events.reverse()
        if self.order is not None and len(events) > EVENTS_BETWEEN_CLOCK_READS:
            events = self.order(events)
        if self._ranks:                         # (a stable sort: the order above stays)
            ranks, last = self._ranks, len(self._ranks)
            events.sort(key=lambda event: ranks.get(event[0], last))
        started = self.now
        for index, (_fd, handler, mask) in enumerate(events):
            if (index % EVENTS_BETWEEN_CLOCK_READS == EVENTS_BETWEEN_CLOCK_READS - 1
                    and time.monotonic() - started > self.step_budget):
                self.events_left = True
                self._backwards = not self._backwards
                return
            if handler.stale:
                continue
            if mask & EVENT_READ:
                handler.on_readable()
            if mask & EVENT_WRITE and not handler.stale:
                handler.on_writable()
        self._backwards = False

    def _next_timeout(self, cap: Optional[float]) -> Optional[float]:
        """How long the next select() may wait: not at all while work is left over; otherwise
        until the first live timer is due, and at most `cap` (None: no bound)."""
        if self.events_left or self.stopping:
            return 0
        for busy in self._busy:
            if busy():
                return 0
        timers = self._timers
        while timers and timers[0][2].cancelled:        # (lazy deletion)
            heapq.heappop(timers)
            self._cancelled -= 1
        if not timers:
            return cap
        until_due = max(0.0, timers[0][0] - time.monotonic())
        return until_due if cap is None else min(cap, until_due)

    def run_forever(self) -> None:
        """Run ticks until stop() is called (by a Shutdown action or a signal)."""
        while not self.stopping:
            self.run_once(MAX_WAIT)

    def stop(self, why: str = "stop()") -> None:
        """Ask run_forever() to return after this tick. Safe to call from a signal handler."""
        if self.stopped_by is None:
            self.stopped_by = why
        self.stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass                            # the wake-up is already pending, or we are closed

    def stop_on_signals(self, signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        """Make these signals stop the loop cleanly (main thread only); stopped_by names it."""
        for signum in signums:
            signal.signal(signum, lambda number, _frame: self.stop(signal.Signals(number).name))

    def close(self) -> None:
        """Close the wake-up sockets and the selector (the transports close their own)."""
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self.selector.close()
