"""Fairness: whose requests are handled in a tick, in what order, and how many each.

Requests are handled in ticks, and what a tick's requests produce is sent at its end, so a reply
waits about as long as a tick takes: one flooding client must never own a tick. No sockets, no
clock of its own (it is given one); it knows connections only by their `scheduled` flag.
"""
from typing import Any, Callable, Dict, Iterator, List, Tuple

# - Connections with a backlog (requests left over from earlier ticks) get a *share* of requests
#   per turn, which adapts: halved after a tick whose longest turn took longer than TICK_TARGET,
#   a quarter larger after one whose longest turn took under half of it while some backlog used
#   its whole share (growing slowly and shrinking fast, as TCP's window does). The backlogs'
#   turns stop once the tick is TICK_TARGET old; those not reached keep their place, first in
#   the next tick (round robin). So a tick stays near TICK_TARGET however many connections
#   have a backlog, and each turn handles many requests, whose replies leave in one send: with
#   500 backlogs, a share fitted to give all of them a turn in every tick was one request each,
#   and one send() per request.
# - Connections without a backlog go first, get up to MAX_REQUESTS_PER_TICK each (the share,
#   once the tick is TICK_TARGET old), and what they produce is sent before the backlogs are
#   worked on, as fq_codel serves new flows before old ones: a client that sends a little now
#   and then never queues behind its own earlier requests, however many clients are flooding.
#   Among them, those whose read brought more than QUIET_READ bytes (a flood's start: 500
#   members each sending 200 chats at once) go after the others, and what the others produce
#   is sent first: a client posting now and then does not wait behind a flood that has not yet
#   had its first turn.
# - Fresh connections a full tick had no time for keep their place, first in the next tick,
#   except before one connection of each address that has none of them (in_turn_order): the
#   addresses are the flows. 59 addresses each sending JOINs on 40 connections at once had 2 000
#   fresh turns waiting, and a client of its own address waited behind all of them (1.3 to 3.9 s,
#   in ticks of 60 ms); it now waits for one tick.
TICK_TARGET = 0.020
QUIET_READ = 4096
# The read step, the sends and the teardowns of dropped connections each stop once they have
# taken STEP_BUDGET: what is left waits for the next tick (the selector is level-triggered, so a
# socket not read from is simply ready again; a connection not yet sent to stays due). So 8 000
# connections resetting at once, or 2 000 stalled members passing the cap together, cost a
# number of short ticks, not one long one (tearing a socket down costs tens of microseconds). A
# quarter of TICK_TARGET each: in such a storm a tick is then ~25 ms, and a client's request
# waits for at most a few of them.
STEP_BUDGET = TICK_TARGET / 4
# A tick's turns stop once they have taken TICK_LIMIT, even if connections without a backlog
# are still waiting for theirs: they go first in the next tick. Every connection's turn is
# cheap, but a thousand joins to a room of 8 000 are not (each announces to every member).
TICK_LIMIT = 2 * TICK_TARGET
# While the read step leaves ready sockets unread (a flood's start: 500 members' first 17 KB
# each, read for STEP_BUDGET a tick), the heavy ones' and the backlogs' turns stop once the tick
# is READS_LEFT_TARGET old, not TICK_TARGET: a client whose socket the read step did not reach
# waited for a whole tick of heavy turns (rooms100x5: its echo took 50 ms, the probe's worst).
READS_LEFT_TARGET = STEP_BUDGET
MIN_REQUESTS_PER_TICK = 1
MAX_REQUESTS_PER_TICK = 64
# The share a backlog starts with, before any tick has been measured. Start small and let it
# grow (a quarter per quick tick: about 15 ticks to the maximum): a start too large would make
# the first backlogged ticks overshoot TICK_TARGET, and every client would wait for them.
INITIAL_REQUESTS_PER_TICK = 4


def address_of(conn: Any) -> Any:
    """The flow a connection belongs to: its address (None for a connection without one)."""
    return getattr(conn, "peer_ip", None)


def alone_first(events: List[Tuple[Any, Any, int]],
                flow_of: Callable[[Any], Any] = address_of) -> List[Tuple[Any, Any, int]]:
    """The read step's order (reactor.Loop's `order`): the ready sockets, as (fd, handler,
    events), with those alone in their flow (flow_of(handler)) first, then the others, each
    part in the order they came.

    The kernel reports ready sockets oldest first, and the read step stops after its budget,
    so one client's socket, ready behind a thousand of one crowd's, waited for all of them:
    59 addresses connecting 2 360 clients left a request unread for up to 0.3 s. A client
    alone at its address now goes first. The crowds keep the kernel's order: taking their
    smaller flows first, or one socket of each in turn, split the resets of a room's members
    over more calls of departures, each telling the members not yet read (the storm of 800
    resets took 0.5 to 2.3 s, not 0.3 to 0.9 s)."""
    flows = [flow_of(handler) for _fd, handler, _mask in events]
    counts: Dict[Any, int] = {}
    for flow in flows:
        counts[flow] = counts.get(flow, 0) + 1
    if len(counts) < 2:
        return events
    alone = [event for event, flow in zip(events, flows) if counts[flow] == 1]
    if not alone or len(alone) == len(events):
        return events
    return alone + [event for event, flow in zip(events, flows) if counts[flow] > 1]


def in_turn_order(deferred: List[Any], fresh: List[Any],
                  key: Callable[[Any], Any] = address_of) -> Tuple[List[Any], int]:
    """The order of a tick's fresh turns: the `deferred` (a full tick had no time for them)
    first, then this tick's `fresh`, but the first fresh connection of each address (`key`)
    that has none among the deferred goes before them all, in the order they were read. So a
    client alone at its address waits for at most one connection of each address, not for
    the backlog of fresh turns other addresses piled up (its turn leaves them their place).
    Returns the order and how many went before deferred ones (their replies are sent before
    the deferred have their turns)."""
    waiting = {key(conn) for conn in deferred}
    ahead: List[Any] = []
    behind: List[Any] = []
    for conn in fresh:
        address = key(conn)
        if address in waiting:
            behind.append(conn)
        else:
            waiting.add(address)
            ahead.append(conn)
    return ahead + deferred + behind, len(ahead) if deferred else 0


class Scheduler:
    """The fairness policy (see TICK_TARGET): whose requests are handled in a tick, in what
    order, and how many each. It knows connections only by their `scheduled` flag and their
    address (`peer_ip`: in_turn_order).

        schedule(conn, n)   it has new input (n bytes): a turn next tick, among the fresh ones
        requeue(conn)       it may still hold requests: a turn next tick, in the backlog
        has_backlog         some connection is requeued (the next select() must not wait)
        turns(after_fresh)  this tick's turns: (conn, how many requests it may handle now)
        tick_took(s, used)  adapt the backlog's share to how long a tick's longest turn took
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._fresh: List[Any] = []         # read this tick, nothing left from before
        self._heavy: List[Any] = []         # the same, but a read of more than QUIET_READ
        self._backlog: List[Any] = []       # requests may be left over from last tick
        self._deferred: List[Any] = []      # fresh ones a full tick had no time for
        self._deferred_heavy: List[Any] = []    # and heavy ones
        self.requests_per_tick = INITIAL_REQUESTS_PER_TICK   # a backlog's share; adapts

    def schedule(self, conn: Any, size: int = 0) -> None:
        """`conn` was just read from (`size` bytes): give it a turn as a connection without a
        backlog, after the quiet ones if it brought more than QUIET_READ."""
        if not conn.scheduled:
            conn.scheduled = True
            (self._heavy if size > QUIET_READ else self._fresh).append(conn)

    def requeue(self, conn: Any) -> None:
        """`conn` may still hold requests: give it a turn in the next tick's backlog."""
        if not conn.scheduled:
            conn.scheduled = True
            self._backlog.append(conn)

    @property
    def has_backlog(self) -> bool:
        """Some connection waits for a turn with requests left over, or for a turn a full
        tick could not give it: select() must not wait."""
        return bool(self._backlog or self._deferred or self._deferred_heavy)

    def turns(self, after_fresh: Callable[[], None],
              target: float = TICK_TARGET) -> Iterator[Tuple[Any, int]]:
        """This tick's turns, as (connection, how many of its requests to handle now): the quiet
        fresh ones (in in_turn_order), then the heavy ones (QUIET_READ), with MAX_REQUESTS_PER_TICK
        while the tick is younger than TICK_TARGET and the share after; `after_fresh()` (the hub
        sends what they produced) after the queue jumpers, and after the quiet ones if others
        follow; then the backlogs with the share. A connection is unscheduled when its turn comes
        (the caller requeues it if it may have more). Past TICK_LIMIT (the heavy ones and the
        backlogs: past `target`, TICK_TARGET or READS_LEFT_TARGET, after a turn of each kind),
        the rest keep their place, first of their kind next tick. The share adapts (tick_took)."""
        (quiet, jumped), heavy = (in_turn_order(self._deferred, self._fresh),
                                  self._deferred_heavy + self._heavy)
        backlog, self._fresh, self._heavy, self._backlog = self._backlog, [], [], []
        if not quiet and not heavy and not backlog:
            return
        self._deferred, self._deferred_heavy = [], []
        clock, share, longest = self._clock, self.requests_per_tick, 0.0   # the longest turn
        started = turn_began = clock()
        for fresh, follow in ((quiet, heavy or backlog), (heavy, ())):
            for index, conn in enumerate(fresh):
                now = clock()
                elapsed = now - started
                longest = max(longest, now - turn_began)
                turn_began = now
                if elapsed > TICK_LIMIT or (fresh is heavy and index and elapsed > target):
                    self._deferred = quiet[index:] if fresh is quiet else []
                    self._deferred_heavy = heavy[index:] if fresh is heavy else heavy
                    if elapsed <= TICK_LIMIT:
                        break                   # (heavy ones: still one backlog turn)
                    self._backlog[:0] = backlog
                    self.tick_took(longest, True)
                    return
                if fresh is quiet and index and index == jumped:
                    after_fresh()                   # the queue jumpers' replies first
                conn.scheduled = False
                yield conn, (MAX_REQUESTS_PER_TICK if elapsed < TICK_TARGET else share)
            if fresh and follow:
                after_fresh()
        share_used_up = False
        for index, conn in enumerate(backlog):
            now = clock()
            longest = max(longest, now - turn_began)
            turn_began = now
            if index and now - started > target:     # (one backlog turn, at least)
                self._backlog[:0] = backlog[index:]     # still scheduled: first next tick
                break
            conn.scheduled = False
            yield conn, share
            share_used_up |= conn.scheduled     # requeued: it had more than its share
        self.tick_took(max(longest, clock() - turn_began), share_used_up)

    def tick_took(self, seconds: float, share_used_up: bool) -> None:
        """Adapt the share to a tick whose longest turn took `seconds`; `share_used_up`: some
        backlog connection handled its whole share and may have more."""
        share = self.requests_per_tick
        if seconds > TICK_TARGET:
            self.requests_per_tick = max(MIN_REQUESTS_PER_TICK, share // 2)
        elif share_used_up and seconds < TICK_TARGET / 2:
            self.requests_per_tick = min(MAX_REQUESTS_PER_TICK, share + max(1, share // 4))
