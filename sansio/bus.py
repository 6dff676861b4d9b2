"""The shared bus: several server processes ("nodes") behave as one chat server over Redis.

Boundary: sans-IO, like sansio/resp.py and sansio/udp_*.py. The bus (this module and the two
it is built on, listed below) knows Redis commands and its own rules (keys, scripts, event
order, heartbeats, catch-up), but no socket, no clock, and of the chat wire format only that a
chat ends at its first blank line (CHAT_END): the reactor moves the bytes of its two Redis
links ("cmd" and "sub") and passes the time in; cluster/shared.py makes chat actions of it.

Theory of operation, following one CHAT across two nodes:

    node A: Bus.chat(...) --EVALSHA chats script (the tick's chats, by room)--> Redis, atomically:
                INCRBY P:seq:REF K         (numbers for the room's K chats of the call: N..N+K-1)
                XADD  P:log:REF M-1 e B    (the batch B of them, M = N+K-1: the room's short
                                           history, for repair)
                PUBLISH P:events:REF B     (nodes with members in the room hear it: they follow
                                           it; joins and leaves go on P:events, to every node)
    nodes A and B: "sub" link --Message--> Bus._on_batch --> the room's _RoomLog: N is the
                next one expected, so the batch is handed out (Bus.take_events) in order; a
                later one is held and the gap is read back from P:log:REF (XRANGE), a repeated
                one is dropped.

Every change to a room (a join, a chat, a leave) is one such event with the room's next number,
made by one script, so Redis puts each room's events in one order and every node hands them out
in that order, exactly once: every member of a room, on every node, sees the same sequence.
The node that asked does not deliver its own request's effect at once: it waits for the event,
like everybody else (that is what makes the order one).

Pub/sub alone is at-most-once: a subscriber link that drops loses what was published
meanwhile. The numbers show the gap, and the room's log fills it (Centrifuge's design). After the
"sub" link is (re)subscribed, every room this node cares about is read back from where it
stopped.

A node that dies stops calling the heartbeat script; any survivor's next heartbeat finds it
older than NODE_DEAD_AFTER and, in the same atomic script, announces its members' leaves and
deletes its records (the script runs once, so one survivor wins and each leave is announced
once).

The bus is four modules, each read on its own:
    sansio/bus_scripts.py   what Redis holds: the keys, the event format, the Lua scripts
    sansio/bus_links.py     the two links: opening, backoff, the command FIFO, timeouts
    sansio/bus_events.py    what the bus hands its owner besides room events (Done, ...)
    sansio/bus.py           this: a node's side, the rooms' event order, gaps, catch-up, the
                            heartbeat and bringing Redis back in step
"""
import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sansio.bus_events import (ChatGroup, Done, Event, LocalState, Numbered, Reaped, Revived,
                               Skipped, StateChanged)
from sansio.bus_links import LINKS, MAX_UNANSWERED_BYTES, Held, Links
from sansio.bus_scripts import (SCRIPT_SHAS, SCRIPT_TEXTS, Chats, Joined, Left, RoomEvent,
                                chat_firsts, decode_chats, decode_entries,
                                decode_event, restore_args, split_chats, sync_args)
from sansio.resp import Message, RespError, RespProtocolError, Subscribed

# What cluster/shared.py and the transports use: the Bus, what it hands out, and the numbers they
# plan with. LINKS is sansio/bus_links.py's and the room events are sansio/bus_scripts.py's; they
# are offered here too, so that a user of the bus imports it from one place.
__all__ = [
    "Bus", "LocalState", "Event", "Done", "ChatGroup", "Numbered", "Skipped", "StateChanged",
    "Reaped", "Revived", "RoomEvent", "Joined", "Chats", "Left", "decode_event",
    "LINKS", "HEARTBEAT_EVERY", "NODE_DEAD_AFTER", "MAX_SHARED_ROOMS",
]

# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

# A node calls the heartbeat script this often; a node whose last heartbeat is older than
# NODE_DEAD_AFTER is dead, and the next survivor's heartbeat announces its members' leaves. A
# dead node's leaves are therefore announced within NODE_DEAD_AFTER + HEARTBEAT_EVERY (11 s) of
# its last heartbeat. 9 s is long enough that a node busy for a few seconds (a long GC pause, a
# storm of connections) is not declared dead by mistake.
HEARTBEAT_EVERY = 2.0
NODE_DEAD_AFTER = 9.0
# Those 9 s are on the group's clock (sansio/bus_scripts.py, HEARTBEAT_SCRIPT): the time between
# two heartbeats of any node counts for at most MAX_CLOCK_STEP. A lone survivor's heartbeats,
# 2 s apart and up to 1 s late on a busy node, count in full; a Redis that stalls (serves no
# one) for 11 s or 60 s counts for 3 s, so the first heartbeat after the stall does not declare
# dead every node whose heartbeat the stall held up. The nodes are back within a few seconds
# of the stall (their links' backoff), well within the 9 - 2 - 3 s left.
MAX_CLOCK_STEP = 3.0
# How many events one repair read asks for (XRANGE ... COUNT).
REPAIR_BATCH = 500
# The most rooms the shared table holds, as one server's (rooms.MAX_ROOMS): when it is full, a
# JOIN naming a new room makes the room empty longest (on every node) be forgotten; only when
# every room has members does it get ERROR_CODE TOO_MANY_ROOMS. `--bus-max-rooms` sets it.
MAX_SHARED_ROOMS = 100_000
# Events of a room held while an earlier one is missing, in bytes, over all rooms. Past it a
# held event is dropped; it is still in the room's log, and the repair reads it back.
MAX_HELD_BYTES = 8 * 1024 * 1024

# The chats of one tick go to Redis as one call of the chats script, which numbers, logs and
# publishes each room's as one batch (sansio/bus_scripts.py): a node reads one message a room,
# not one a chat. A call carries at most CHAT_BATCH chats and CHAT_BATCH_BYTES (what it publishes
# for a room is one message: far below the 32 MB past which Redis cuts a subscriber).
CHAT_BATCH = 500
CHAT_BATCH_BYTES = 1024 * 1024

# Events kept for a room this node is joining, before the join's reply says from where to deliver.
EARLY_EVENTS = 64


class _RoomLog:
    """Where this node is in one room's events: the next number it expects, the later events
    held until the missing ones arrive, and whether a read of the log is under way."""
    __slots__ = ("next_seq", "held", "repairing", "recheck")

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq
        self.held: Dict[int, Tuple[RoomEvent, int]] = {}     # seq -> (event, its size)
        self.repairing = False
        self.recheck = False        # read the log once more when the read under way is back

    def hand_out(self, event: Optional[RoomEvent], out: List["Event"]) -> int:
        """`event` is the next one (None: next_seq is held): it, and the held ones that follow
        it, go to `out`, in order. Returns the bytes no longer held."""
        if event is not None:
            out.append(event)
            self.next_seq += 1
        freed = 0
        while self.next_seq in self.held:
            held, size = self.held.pop(self.next_seq)
            freed += size
            out.append(held)
            self.next_seq += 1
        return freed


class _CatchUp:
    """Bus's half that brings this node and Redis back in step: the epoch, restore and sync
    scripts after the command link is made, and reading rooms' logs back (gaps, a room just
    followed, every room after the links were away). Bus holds the state it uses."""

    def _repair(self, ref: int, log: _RoomLog, now: float) -> None:
        """Read room `ref`'s events from its log, from the first one missing: now, or once the
        read under way is back (it may have run before what made this one needed)."""
        if log.repairing or not self._links.is_connected("cmd"):
            log.recheck = log.repairing
            return
        log.repairing, log.recheck = True, False
        self._command("repair", ref, now, "XRANGE", "%s:log:%d" % (self.prefix, ref),
                      "%d-0" % log.next_seq, "+", "COUNT", REPAIR_BATCH)

    def _on_repaired(self, ref: int, entries: Any, now: float) -> None:
        log = self._rooms.get(ref)
        if log is None:
            return
        log.repairing = False
        if not isinstance(entries, list):
            return
        events, bad = decode_entries(entries)
        self.bad_events += bad
        first = events[0].seq if events else min(log.held, default=None)
        if first is None and self.seen.get(ref, 0) >= log.next_seq:
            first = self.seen[ref] + 1      # the log has none of what was numbered: gone
        if first is not None and first > log.next_seq:
            # The log no longer reaches back that far: those events are lost for this node.
            self.lost += first - log.next_seq
            self._events.append(Skipped(ref, first - 1))
            # What is held from `first` on goes now (else, the log empty, read again for ever).
            for seq in [seq for seq in log.held if seq < first]:
                self._held_bytes -= log.held.pop(seq)[1]
            log.next_seq = first
            self._held_bytes -= log.hand_out(None, self._events)
        for event in events:
            self.repaired += event.seq >= log.next_seq
            self._offer(log, event, now)
        if (log.held or log.recheck) and not log.repairing and ref in self._rooms:
            self._repair(ref, log, now)             # still a gap: the next batch

    def _on_epoch(self, value: Any, now: float) -> None:
        epoch = _text(value[0])
        restarted = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        self.next_ref = max(self.next_ref, int(value[1]))
        self.last_join_id = max(self.last_join_id, int(value[2]))
        self._restarted = restarted
        self._start_sync(now, announce=not restarted)

    def _start_sync(self, now: float, announce: bool) -> None:
        state = self._local_state()
        if self._restarted:
            # Redis lost everything: put back the counters and names this node knows, so that
            # refs, JOIN_IDs and event numbers go on from where they were, never back.
            lasts = dict(self.seen)
            for ref, log in self._rooms.items():
                lasts[ref] = max(lasts.get(ref, 0), log.next_seq - 1)
            args = restore_args(self.next_ref, self.last_join_id, lasts, state.names)
            self._command("restore", None, now, *self._script_args("restore", *args))
            self._restarted = False
        self._command("sync", announce, now, *self._script_args(
            "sync", self.node, *sync_args(state.members, state.departed, announce)))

    def _on_synced(self, now: float) -> None:
        self._links.in_use("cmd")
        if not self.up:
            self.up = True
            self._heartbeat_at = now
            self._events.append(StateChanged(True, "connected and in step"))
        self._catch_up(now)
        self.timer(now)

    def _catch_up(self, now: float) -> None:
        """Read every followed room's log from the first event not handed out yet (after the
        links were away: what was published meanwhile)."""
        for ref, log in self._rooms.items():
            self._repair(ref, log, now)


class Bus(_CatchUp):
    """One node's side of the bus, without sockets. See the module docstring.

    Its two links are independent. "cmd" carries the scripts and their replies: while it is
    down, the bus is down (`up` False) and requests fail. "sub" carries the published events:
    while it is down the bus stays up, requests go on, and their events are read back from the
    rooms' logs once it is subscribed again (so a dropped subscription loses nothing).

    Driving it (the reactor, through cluster/shared.py):
    - wants_links(now): the links to open now; then link_up(name, now) for each as it
      connects, or link_failed(name, why, now).
    - receive(name, data, now) for bytes read; data_to_send(name) for bytes to write.
    - timer(now) when next_deadline() is due.
    - links_to_close(): the links the owner must close (then the bus treats them as failed).
    - take_events() for room events in order, Done replies, Skipped gaps and StateChanged.
    """

    def __init__(self, prefix: str, node: str, local_state: Callable[[], LocalState],
                 db: int = 0, rng: Optional[random.Random] = None,
                 max_rooms: int = MAX_SHARED_ROOMS) -> None:
        self.prefix = prefix
        self._channel = prefix + ":events"              # the group's: joins and leaves
        self._room_channel = prefix + ":events:"        # + REF: the room's chats
        self._room_channel_bytes = self._room_channel.encode()
        self.db = db
        self.max_rooms = max_rooms
        self.node = node
        self._local_state = local_state
        self._rng = rng or random.Random()
        self._links = Links(self._rng)
        self.up = False                 # "cmd" is connected and Redis is in step with us
        self.subscribed = False         # "sub" is subscribed
        self._events: List[Event] = []
        self._rooms: Dict[int, _RoomLog] = {}           # the rooms this node delivers
        self._early: Dict[int, List[RoomEvent]] = {}    # own events ahead of their reply
        self._handed_out: Dict[int, int] = {}           # unfollowed ref -> its next event then
        # Every room's highest event number, and ref -> name of every join heard: of the
        # `max_rooms` rooms heard of last, and the followed ones (_forget_rooms_heard_of_least).
        self.seen: Dict[int, int] = {}
        self.room_names: Dict[int, str] = {}
        self.next_ref = 0                               # refs below it exist somewhere
        self.last_join_id = 0
        self.epoch: Optional[str] = None                # P:epoch as last read
        self._restarted = False                         # P:epoch changed: Redis lost its data
        self._held_bytes = 0
        self._chats = Held(CHAT_BATCH, CHAT_BATCH_BYTES)    # this tick's chats, not sent yet
        self._heartbeat_at, self._heartbeat_pending = 0.0, False     # when due; sent, unanswered
        # Counters, for the log and the statistics line.
        self.lost = 0            # events that could not be read back (Skipped)
        self.repaired = 0        # events read back from a room's log
        self.outages = 0         # times the bus went down
        self.resubscribed = 0    # times the subscription dropped and was made again
        self.bad_events = 0      # published messages that were not events

    # -- links ---------------------------------------------------------------------------------

    def wants_links(self, now: float) -> List[str]:
        return self._links.wanted(now)

    def connecting(self, name: str, now: float) -> None:
        """The owner is opening link `name` now."""
        self._links.opening(name, now)

    def link_up(self, name: str, now: float) -> None:
        self._links.opened(name)
        if name == "sub":
            # The group's channel last: its confirmation starts the catch-up of every room, so
            # the rooms' subscriptions are in place by then.
            self._links.subscribe("SUBSCRIBE", [self._room_channel + str(ref)
                                                for ref in self._rooms] + [self._channel])
        else:
            if self.db:
                self._command("load", None, now, "SELECT", self.db)
            for text in SCRIPT_TEXTS.values():
                self._command("load", None, now, "SCRIPT", "LOAD", text)
            self._command("epoch", None, now, *self._script_args(
                "epoch", "%016x" % self._rng.getrandbits(64)))

    def links_to_close(self) -> List[str]:
        return self._links.take_to_close()

    def link_failed(self, name: str, why: str, now: float) -> None:
        """Link `name` is gone, or could not be opened; it is retried later, with backoff. For
        "cmd", every request still waiting for its reply fails, and the bus is down."""
        waiting = self._links.drop(name, now)
        if waiting is None:
            return                                  # already down
        if name == "sub":
            if self.subscribed:
                self.resubscribed += 1
            self.subscribed = False
            return
        self._heartbeat_pending = False
        for log in self._rooms.values():
            log.repairing = False
        waiting.append(("chats", self._chats.take()[0]))     # (not sent yet)
        for kind, token in waiting:
            self._events += _failed(kind, token, "the link to Redis dropped (%s)" % why)
        if self.up:
            self.up = False
            self.outages += 1
            self._events.append(StateChanged(False, why))

    def receive(self, name: str, data: bytes, now: float) -> None:
        try:
            for event in self._links.received(name, data):
                if name == "sub":
                    self._on_sub_event(event, now)
                else:
                    self._on_reply(event.value, now)
        except RespProtocolError as exc:
            self.link_failed(name, "not RESP from Redis: %s" % exc, now)

    def data_to_send(self, name: str) -> bytes:
        if name == "cmd":
            self._send_chats()
        return self._links.data_to_send(name)

    def _setting_up(self, name: str) -> bool:
        """Link `name` is open but not yet in use (connecting, subscribing, syncing)."""
        if not self._links.is_open(name):
            return False
        return not self.subscribed if name == "sub" else not self.up

    def next_deadline(self) -> Optional[float]:
        dues = self._links.deadlines(self._setting_up)
        if self.up:
            dues.append(self._heartbeat_at)
        return min(dues) if dues else None

    def timer(self, now: float) -> None:
        for name, why in self._links.overdue(now, self._setting_up):
            self.link_failed(name, why, now)
        if self.up and now >= self._heartbeat_at and not self._heartbeat_pending:
            self._heartbeat_pending = True
            self._heartbeat_at = now + HEARTBEAT_EVERY
            self._command("heartbeat", None, now, *self._script_args(
                "heartbeat", self.node, int(NODE_DEAD_AFTER * 1000), int(MAX_CLOCK_STEP * 1000)))

    def goodbye(self) -> bytes:
        """The bytes that announce this node's members' leaves at once (for a clean stop): to
        be written on the command link if it is up, best effort."""
        if not self.up:
            return b""
        self._send_chats()
        return self._links.last_words(*self._script_args("goodbye", self.node))

    def take_events(self) -> List[Event]:
        events, self._events = self._events, []
        return events

    # -- requests from the owner ---------------------------------------------------------------

    def join(self, token: Any, conn: int, room: str, name: str, join_id: int, may_create: bool,
             now: float) -> None:
        self._command("request", token, now, *self._script_args(
            "join", self.node, conn, room, name, join_id, self.max_rooms, int(may_create)))

    def chat(self, conn: int, ref: int, data: bytes, now: float) -> bool:
        """Send a chat of connection `conn`: `data`, the bytes each member of room `ref` is to
        receive (the bus only finds where it ends). It goes out with the others of this tick
        (data_to_send), in one call, whose Numbered event (or failed Done) names it in its
        room's ChatGroup. False, and nothing sent, if the bus is down or Redis is behind (it has
        too much unanswered to take `data` too)."""
        if not self.up:
            return False
        if self._links.unanswered + self._chats.size + len(data) > MAX_UNANSWERED_BYTES:
            return False
        if self._chats.add(ref, conn, data, now):
            self._send_chats()
        return True

    def _send_chats(self) -> None:
        """The chats held so far (if any), as one call of the chats script."""
        groups, args, since = self._chats.take()
        if groups:
            self._command("chats", groups, since, *self._script_args("chats", self.node, *args))

    def leave(self, token: Any, ref: int, leavers: Sequence[Tuple[int, str]], now: float) -> None:
        args: List[Any] = []
        for conn, name in leavers:
            args += [conn, name]
        self._command("request", token, now, *self._script_args("leave", self.node, ref, *args))

    def follow(self, ref: int, from_seq: int, now: float) -> None:
        """Deliver room `ref`'s events from number `from_seq` on (this node now has a member
        there: the owner's join was event `from_seq`). Events already here are handed out; a
        gap is read back from the log."""
        if ref in self._rooms:
            return
        # Never from before what was handed out already: an unfollow may have come while later
        # events of the room were on their way to the owner (the last member's leave and a new
        # member's join handed out together), and that join's reply comes after.
        log = self._rooms[ref] = _RoomLog(max(from_seq, self._handed_out.pop(ref, 0)))
        self._links.subscribe("SUBSCRIBE", [self._room_channel + str(ref)])   # (its chats)
        for event in self._early.pop(ref, ()):
            self._offer(log, event, now)
        if self.seen.get(ref, 0) >= log.next_seq and not log.repairing:
            self._repair(ref, log, now)     # some of what was published is not here

    def unfollow(self, ref: int) -> None:
        """This node has no member in room `ref` any more."""
        log = self._rooms.pop(ref, None)
        if log is not None:
            self._links.subscribe("UNSUBSCRIBE", [self._room_channel + str(ref)])
            self._held_bytes -= sum(size for _event, size in log.held.values())
            self._handed_out[ref] = log.next_seq
            if ref not in self.seen:            # (bounded with `seen`: see _forget_rooms...)
                self.seen[ref] = log.next_seq - 1
                self._forget_rooms_heard_of_least()

    def follows(self, ref: int) -> bool:
        return ref in self._rooms

    def forget_early(self) -> None:
        """No request of this node is waiting for a reply: events kept for one can go."""
        if not self._links.waiting():
            self._early.clear()

    # -- inside --------------------------------------------------------------------------------

    def _script_args(self, script: str, *args: Any) -> Tuple[Any, ...]:
        return ("EVALSHA", SCRIPT_SHAS[script], 0, self.prefix) + args

    def _command(self, kind: str, token: Any, now: float, *args: Any) -> None:
        """Send a command on the command link; its reply goes to _on_reply as `kind`. The
        chats held go first: Redis runs the commands in the order the owner asked for them."""
        if kind != "chats":
            self._send_chats()
        if not self._links.command(kind, token, now, *args):
            self._events += _failed(kind, token, "no link to Redis")

    def _on_sub_event(self, event: Any, now: float) -> None:
        if isinstance(event, Subscribed):
            if event.kind != "subscribe":
                return
            ref = event.channel[len(self._room_channel_bytes):]
            if event.channel == self._channel.encode():
                self.subscribed = True
                self._links.in_use("sub")
                self._catch_up(now)       # what was published before this: from the logs
            elif self.subscribed and ref.isdigit() and int(ref) in self._rooms:
                # A followed room's chats are coming: those published before, from its log.
                self._repair(int(ref), self._rooms[int(ref)], now)
            return
        if isinstance(event, Message):
            if event.data[:2] == b"B ":
                self._on_batch(event.data, now)
            else:
                self._on_published(event.data, now)

    def _on_batch(self, data: bytes, now: float) -> None:
        """A room's chats of one call of the chats script: handed out as one event when they
        are the room's next (the common case), else one by one."""
        try:
            chats = decode_chats(data)
        except (ValueError, IndexError, UnicodeDecodeError):
            self.bad_events += 1
            return
        ref = chats.ref
        log = self._rooms.get(ref)
        if log is None or log.held or log.next_seq != chats.seq:
            for chat in split_chats(chats):
                self._on_event(chat, now)
            return
        count = chats.count
        self._heard(ref, chats.seq + count - 1)
        self._events.append(chats)
        log.next_seq += count

    def _on_published(self, data: bytes, now: float) -> None:
        try:
            event = decode_event(data)              # (a join or a leave: batches go above)
        except (ValueError, IndexError, UnicodeDecodeError):
            self.bad_events += 1
            return
        self._on_event(event, now)

    def _heard(self, ref: int, seq: int) -> None:
        """Room `ref` has had event `seq` (it exists, and got so far)."""
        seen = self.seen
        last = seen.pop(ref, 0)     # (put back last: `seen` is in the order rooms were heard of)
        seen[ref] = max(last, seq)
        if not last and len(seen) > self.max_rooms:
            self._forget_rooms_heard_of_least()
        if ref >= self.next_ref:
            self.next_ref = ref + 1

    def _on_event(self, event: RoomEvent, now: float) -> None:
        ref = event.ref
        self._heard(ref, event.seq)
        if isinstance(event, Joined):
            self.last_join_id = max(self.last_join_id, event.join_id)
            if ref not in self.room_names and event.room:
                self.room_names[ref] = event.room
        log = self._rooms.get(ref)
        if log is not None:
            self._offer(log, event, now)
        elif event.node == self.node or ref in self._early:
            # Our own join, ahead of the script's reply (the subscriber link is read first):
            # keep it, and what follows in that room, for follow(). Bounded: past it, follow()
            # reads the rest back from the log.
            early = self._early.setdefault(ref, [])
            size = 200 + (len(event.data) if isinstance(event, Chats) else 0)
            if len(early) < EARLY_EVENTS and self._held_bytes + size <= MAX_HELD_BYTES:
                early.append(event)

    def _forget_rooms_heard_of_least(self) -> None:
        """What this node knows of rooms it does not follow (their last number, name, where it
        stopped) is kept for at most `max_rooms` of them, the ones heard of last: the group
        itself keeps no more rooms than that (past it Redis forgets the room empty longest).
        Without a bound a node's memory grew with every room the group ever had (2 KB each)."""
        seen = self.seen
        for _ in range(len(seen)):
            if len(seen) <= self.max_rooms:
                return
            ref = next(iter(seen))
            last = seen.pop(ref)
            if ref in self._rooms or ref in self._early:
                seen[ref] = last                # followed, or about to be: kept (and moved on)
                continue
            self.room_names.pop(ref, None)
            self._handed_out.pop(ref, None)

    def _offer(self, log: _RoomLog, event: RoomEvent, now: float) -> None:
        """One event of a followed room, from the subscription or from the log."""
        seq = event.seq
        if seq < log.next_seq or seq in log.held:
            return                                  # seen already
        if seq > log.next_seq:
            size = 200 + (len(event.data) if isinstance(event, Chats) else 0)
            if self._held_bytes + size <= MAX_HELD_BYTES:
                log.held[seq] = (event, size)
                self._held_bytes += size
            if not log.repairing:
                self._repair(event.ref, log, now)
            return
        self._held_bytes -= log.hand_out(event, self._events)

    def _on_reply(self, value: Any, now: float) -> None:
        answered = self._links.answered()
        if answered is None:
            return
        kind, token = answered
        failed = isinstance(value, RespError)
        if kind == "request":
            self._events.append(Done(token, None if failed else value,
                                     value.message if failed else ""))
        elif kind == "chats" and failed:
            self._events += _failed(kind, token, value.message)
        elif kind == "chats":
            firsts = chat_firsts(value)
            for group, first in zip(token, firsts):     # (Redis has them: see _on_repaired)
                self._heard(group.ref, first + len(group.conns) - 1)
            self._events.append(Numbered(token, firsts))
        elif failed:
            # Our own scripts and reads do not fail on a sane Redis; one that does (out of
            # memory, a script killed) gets the links reset, which retries everything.
            self.link_failed("cmd", "Redis answered %s to our %s" % (value.message, kind), now)
        elif kind == "epoch":
            self._on_epoch(value, now)
        elif kind == "sync":
            self._on_synced(now)
            if token and value[0]:      # members Redis no longer had: the others reaped this node
                self._events.append(Revived(value[0]))  # (heartbeat or link lost meanwhile)
        elif kind == "heartbeat":
            self._heartbeat_pending = False
            if value[0] == 0 and self.up:
                self._start_sync(now, announce=True)    # reaped while alive: come back
            if len(value) > 2:
                self._events.append(Reaped(tuple(_text(node) for node in value[2:]),
                                           int(value[1])))
        elif kind == "repair":
            self._on_repaired(token, value, now)


def _failed(kind: str, token: Any, why: str) -> List[Done]:
    """A failed Done for each of the owner's requests `token` of `kind` (none: the bus's own)."""
    if kind == "chats":             # (each room's ChatGroup)
        return [Done(group, None, why) for group in token]
    return [Done(token, None, why)] if kind == "request" else []


def _text(value: Any) -> str:
    """A RESP bulk string (bytes) or integer as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

