"""The shared bus: several server processes ("nodes") behave as one chat server over Redis.

Boundary: sans-IO, like sansio/resp.py and sansio/udp_*.py. This module knows Redis commands and
the bus's own rules (keys, scripts, event order, heartbeats, catch-up), but no socket, no clock and
no chat wire format: the reactor moves the bytes of its two Redis links ("cmd" and "sub") and
passes the time in; cluster/shared.py turns what comes out into chat actions.

Theory of operation, following one CHAT across two nodes:

    node A: Bus.chat(...) --EVALSHA chat script--> Redis, atomically:
                INCR  P:seq:REF            (the room's next sequence number, N)
                XADD  P:log:REF N-1 e EV   (the room's short history, for repair)
                PUBLISH P:events EV        (every node hears it)
    nodes A and B: "sub" link --Message--> Bus._on_published --> the room's _RoomLog: N is the
                next one expected, so it is handed out (Bus.take_events) in order; a later one
                is held and the gap is read back from P:log:REF (XRANGE), a repeated one is
                dropped.

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

Redis keys and the channel (P is --bus-prefix):
    P:epoch             a random value set by the first node; a new one means Redis lost its data
    P:refs, P:names     hashes room name -> ROOM_REF and ROOM_REF -> room name
    P:nextref           the next ROOM_REF to give (refs are dense from 0)
    P:joinid            the last JOIN_ID given
    P:seq:REF           the room's last event number
    P:log:REF           the room's last LOG_LENGTH events (a stream, ids "N-1"), kept LOG_TTL s
    P:occ:REF           hash node -> how many of the room's members are on that node
    P:members:NODE      hash "REF CONN" -> CLIENT_NAME: a node's members (for its clean-up)
    P:empty             sorted set REF -> when it emptied: what a full table forgets first
    P:nodes             sorted set node -> its last heartbeat (Redis's clock, ms)
    P:events            the one channel every event is published on
"""
import collections
import random
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from sansio.resp import (NEED_DATA, Message, RedisConnection, RespError, RespProtocolError,
                      Subscribed)

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
# What a room's log keeps, for filling gaps: its last LOG_LENGTH events ("~": Redis trims in
# whole blocks, so a few more), for LOG_TTL seconds after its last event. A subscriber link that
# is back within that time and that many events loses nothing; past it the missed events are
# counted as lost (`lost`) and logged. The log costs Redis at most LOG_LENGTH events per active
# room.
LOG_LENGTH = 1000
LOG_TTL = 300
# How many events one repair read asks for (XRANGE ... COUNT).
REPAIR_BATCH = 500
# Reconnecting to Redis: the first retry after RECONNECT_MIN, doubling up to RECONNECT_MAX,
# each delay drawn from its upper half at random ("equal jitter") so that every node of a
# cluster does not come back in the same instant.
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
# A link that is not connected after CONNECT_TIMEOUT, or a command unanswered after
# REPLY_TIMEOUT, means Redis is unreachable or stuck: both links are dropped and retried.
CONNECT_TIMEOUT = 3.0
REPLY_TIMEOUT = 5.0
# The most rooms the shared table holds, as one server's (rooms.MAX_ROOMS): when it is full, a
# JOIN naming a new room makes the room empty longest (on every node) be forgotten; only when
# every room has members does it get ERROR_CODE TOO_MANY_ROOMS. `--bus-max-rooms` sets it.
MAX_SHARED_ROOMS = 100_000
# Events of a room held while an earlier one is missing, in bytes, over all rooms. Past it a
# held event is dropped; it is still in the room's log, and the repair reads it back.
MAX_HELD_BYTES = 8 * 1024 * 1024

# Bytes of commands sent to Redis and not yet answered, past which a CHAT is refused (ERROR_CODE
# 15, "Redis is behind") until Redis catches up. While Redis is stalled (a long command, a slow
# machine; up to REPLY_TIMEOUT), every connection may have one chat of up to 64 KiB waiting, and
# those bytes are held here, outside the reactor's memory budget: 3 000 connections held 270 MB
# during a 4 s stall. 16 MiB is 256 of the longest chats at once, far more than Redis has
# unanswered when it keeps up (it runs a chat script in microseconds).
MAX_UNANSWERED_BYTES = 16 * 1024 * 1024

# Events kept for a room this node is joining, before the join's reply says from where to deliver.
EARLY_EVENTS = 64

LINKS = ("sub", "cmd")       # the reactor reads them in this order: the subscriber first


# ---------------------------------------------------------------------------------------------
# Events, as the nodes publish them
# ---------------------------------------------------------------------------------------------
# One event is UTF-8 text: a header line "KIND REF SEQ NODE ...", then the body.
#   J REF SEQ NODE CONN JOIN_ID SETTLED \n ROOM_NAME \n CLIENT_NAME     a join
#   C REF SEQ NODE CONN \n CLIENT_NAME \n MESSAGE                        a chat (MESSAGE: any lines)
#   L REF SEQ NODE SETTLED \n CONN CLIENT_NAME [\n CONN CLIENT_NAME ...] leaves, in one event
# Names never hold a line break (sansio/wire.py refuses unprintable names). SETTLED 1: the node
# that made it has already told its own members (a join restored or leaves made while the bus
# was down), so it delivers it to nobody; other nodes do.

@dataclass(frozen=True)
class Joined:
    ref: int
    seq: int
    node: str
    conn: int
    join_id: int
    settled: bool
    room: str
    name: str


@dataclass(frozen=True)
class Said:
    ref: int
    seq: int
    node: str
    conn: int
    name: str
    message: str


@dataclass(frozen=True)
class Left:
    ref: int
    seq: int
    node: str
    settled: bool
    leavers: Tuple[Tuple[int, str], ...]       # (conn, CLIENT_NAME), in the order they left


RoomEvent = Union[Joined, Said, Left]


def decode_event(data: bytes) -> RoomEvent:
    """The event published as `data`. Raises ValueError for anything else."""
    head, _, body = data.decode("utf-8").partition("\n")
    fields = head.split(" ")
    kind, ref, seq, node = fields[0], int(fields[1]), int(fields[2]), fields[3]
    if kind == "J" and len(fields) == 7:
        room, _, name = body.partition("\n")
        return Joined(ref, seq, node, int(fields[4]), int(fields[5]), fields[6] == "1", room, name)
    if kind == "C" and len(fields) == 5:
        name, _, message = body.partition("\n")
        return Said(ref, seq, node, int(fields[4]), name, message)
    if kind == "L" and len(fields) == 5:
        leavers = []
        for line in body.split("\n"):
            conn, _, name = line.partition(" ")
            leavers.append((int(conn), name))
        return Left(ref, seq, node, fields[4] == "1", tuple(leavers))
    raise ValueError("not a bus event: %r" % data[:80])


# ---------------------------------------------------------------------------------------------
# The scripts: each runs atomically in Redis, so two nodes never see half of one
# ---------------------------------------------------------------------------------------------
# Every script gets the prefix as ARGV[1] and builds its key names from it. (Keys not declared
# in KEYS work on a single Redis, which is what this supports; a Redis Cluster would need them
# declared and in one hash slot.)

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end   -- Redis 5: TIME, then writes
local p = ARGV[1]
local function emit(kind, ref, rest, body)
  local seq = redis.call('INCR', p .. ':seq:' .. ref)
  local event = kind .. ' ' .. ref .. ' ' .. seq .. ' ' .. rest .. '\\n' .. body
  local log = p .. ':log:' .. ref
  redis.pcall('XADD', log, 'MAXLEN', '~', @LOG_LENGTH@, seq .. '-1', 'e', event)
  redis.call('EXPIRE', log, @LOG_TTL@)
  redis.call('PUBLISH', p .. ':events', event)
  return seq
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function by_room(fields)
  -- {"REF CONN" -> name, ...} as a flat list -> refs in ascending order, and ref -> lines
  local rooms, order = {}, {}
  for i = 1, #fields, 2 do
    local ref, conn = string.match(fields[i], '^(%d+) (%d+)$')
    if not rooms[ref] then rooms[ref] = {}; order[#order + 1] = ref end
    table.insert(rooms[ref], conn .. ' ' .. fields[i + 1])
  end
  table.sort(order, function(a, b) return tonumber(a) < tonumber(b) end)
  return order, rooms
end
local function leave(node, ref, settled, lines)
  -- take these "CONN NAME" lines of `node` out of room `ref` and announce them as one event
  local occ = p .. ':occ:' .. ref
  if redis.call('HINCRBY', occ, node, -#lines) <= 0 then redis.call('HDEL', occ, node) end
  if redis.call('EXISTS', occ) == 0 then            -- empty now: it may be forgotten
    redis.call('ZADD', p .. ':empty', now_ms(), ref)
  end
  return emit('L', ref, node .. ' ' .. settled, table.concat(lines, '\\n'))
end
"""

# ARGV: p, node, conn, room name, client name, JOIN_ID (0: give one), the most rooms, and
# whether this connection may create a room now (1/0: its node's creation limits).
# Returns {ref, join_id, seq, members on other nodes, 1 if the room was created}, or {-1} when
# the table is full of rooms with members, {-2} when the room is new and may not be created.
# A full table forgets the room that has been empty longest, as one server's table does
# (rooms.py); its ref is never given again.
JOIN_SCRIPT = """
local node, conn, room, name = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jid = tonumber(ARGV[6])
local ref = redis.call('HGET', p .. ':refs', room)
local created = 0
if not ref then
  if ARGV[8] ~= '1' then return {-2} end
  if redis.call('HLEN', p .. ':refs') >= tonumber(ARGV[7]) then
    local oldest = redis.call('ZPOPMIN', p .. ':empty')
    if #oldest == 0 then return {-1} end
    local gone = oldest[1]
    local gone_name = redis.call('HGET', p .. ':names', gone)
    if gone_name then redis.call('HDEL', p .. ':refs', gone_name) end
    redis.call('HDEL', p .. ':names', gone)
    redis.call('DEL', p .. ':seq:' .. gone, p .. ':log:' .. gone, p .. ':occ:' .. gone)
  end
  ref = redis.call('INCR', p .. ':nextref') - 1
  redis.call('HSET', p .. ':refs', room, ref)
  redis.call('HSET', p .. ':names', ref, room)
  created = 1
else
  redis.call('ZREM', p .. ':empty', ref)
end
ref = tonumber(ref)
if jid == 0 then jid = redis.call('INCR', p .. ':joinid') end
redis.call('HSET', p .. ':members:' .. node, ref .. ' ' .. conn, name)
redis.call('HINCRBY', p .. ':occ:' .. ref, node, 1)
local seq = emit('J', ref, node .. ' ' .. conn .. ' ' .. jid .. ' 0', room .. '\\n' .. name)
local others, occ = 0, redis.call('HGETALL', p .. ':occ:' .. ref)
for i = 1, #occ, 2 do
  if occ[i] ~= node then others = others + tonumber(occ[i + 1]) end
end
return {ref, jid, seq, others, created}
"""

# ARGV: p, node, conn, ref, client name, message. Returns the event's number.
CHAT_SCRIPT = """
return emit('C', ARGV[4], ARGV[2] .. ' ' .. ARGV[3], ARGV[5] .. '\\n' .. ARGV[6])
"""

# ARGV: p, node, ref, then CONN, NAME pairs. Only those Redis still counts as members leave
# (a node reaped while it was cut off has already been announced). Returns {seq or 0, conns...}.
LEAVE_SCRIPT = """
local node, ref = ARGV[2], ARGV[3]
local members = p .. ':members:' .. node
local lines, conns = {}, {}
for i = 4, #ARGV, 2 do
  if redis.call('HDEL', members, ref .. ' ' .. ARGV[i]) == 1 then
    lines[#lines + 1] = ARGV[i] .. ' ' .. ARGV[i + 1]
    conns[#conns + 1] = tonumber(ARGV[i])
  end
end
if #lines == 0 then return {0} end
local seq = leave(node, ref, '0', lines)
table.insert(conns, 1, seq)
return conns
"""

# ARGV: p, node, NODE_DEAD_AFTER in ms. Records this node's heartbeat; announces and deletes
# every node whose last heartbeat is older. Returns {1 if this node was known, 0 if not (Redis
# lost its data, or it was reaped while cut off), members reaped}.
HEARTBEAT_SCRIPT = """
local nodes, now = p .. ':nodes', now_ms()
local known = redis.call('ZSCORE', nodes, ARGV[2])
redis.call('ZADD', nodes, now, ARGV[2])
local reaped = 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now - tonumber(ARGV[3]))) do
  local members = p .. ':members:' .. dead
  local order, rooms = by_room(redis.call('HGETALL', members))
  for _, ref in ipairs(order) do
    leave(dead, ref, '0', rooms[ref])
    reaped = reaped + #rooms[ref]
  end
  redis.call('DEL', members)
  redis.call('ZREM', nodes, dead)
end
return {known and 1 or 0, reaped}
"""

# ARGV: p, a fresh epoch value. Returns {the epoch, the next ROOM_REF, the last JOIN_ID}.
EPOCH_SCRIPT = """
redis.call('SET', p .. ':epoch', ARGV[2], 'NX')
return {redis.call('GET', p .. ':epoch'), tonumber(redis.call('GET', p .. ':nextref') or '0'),
        tonumber(redis.call('GET', p .. ':joinid') or '0')}
"""

# After Redis lost its data. ARGV: p, next ROOM_REF, last JOIN_ID, then REF, NAME, SEQ triples
# (NAME "" when this node does not know it). Counters only ever go up.
RESTORE_SCRIPT = """
local function raise(key, value)
  if tonumber(redis.call('GET', key) or '0') < value then redis.call('SET', key, value) end
end
raise(p .. ':nextref', tonumber(ARGV[2]))
raise(p .. ':joinid', tonumber(ARGV[3]))
for i = 4, #ARGV, 3 do
  if ARGV[i + 1] ~= '' then
    redis.call('HSETNX', p .. ':refs', ARGV[i + 1], ARGV[i])
    redis.call('HSETNX', p .. ':names', ARGV[i], ARGV[i + 1])
  end
  raise(p .. ':seq:' .. ARGV[i], tonumber(ARGV[i + 2]))
end
return 1
"""

# ARGV: p, node, announce (1/0), how many REF CONN NAME triples of members follow, those, then
# REF CONN NAME triples of leaves this node made while the bus was down, with the join ids of
# the members in between: REF CONN JOIN_ID NAME for members. Makes Redis's record of this node's
# members what the node has: adds the missing ones (announcing them, settled, when `announce`:
# the others saw them leave when this node was reaped) and removes the others (announcing their
# leaves, settled: this node told its own members already). Returns {added, removed}.
SYNC_SCRIPT = """
local node, announce, count = ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local members = p .. ':members:' .. node
local have, flat = {}, redis.call('HGETALL', members)
for i = 1, #flat, 2 do have[flat[i]] = flat[i + 1] end
local mine, added = {}, 0
for i = 5, 4 + 4 * count, 4 do
  local ref, conn, jid, name = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local field = ref .. ' ' .. conn
  mine[field] = true
  if not have[field] then
    redis.call('HSET', members, field, name)
    redis.call('HINCRBY', p .. ':occ:' .. ref, node, 1)
    redis.call('ZREM', p .. ':empty', ref)
    if announce then
      local room = redis.call('HGET', p .. ':names', ref) or ''
      emit('J', ref, node .. ' ' .. conn .. ' ' .. jid .. ' 1', room .. '\\n' .. name)
    end
    added = added + 1
  end
end
local gone = {}
for field, name in pairs(have) do
  if not mine[field] then gone[#gone + 1] = field; gone[#gone + 1] = name end
end
for i = 5 + 4 * count, #ARGV, 3 do
  local field = ARGV[i] .. ' ' .. ARGV[i + 1]
  if not announce and not have[field] and not mine[field] then
    -- a leave made while Redis had no record of it (it restarted): the others still count it
    gone[#gone + 1] = field; gone[#gone + 1] = ARGV[i + 2]
    redis.call('HINCRBY', p .. ':occ:' .. ARGV[i], node, 1)
  end
end
local order, rooms = by_room(gone)
for _, ref in ipairs(order) do
  for _, line in ipairs(rooms[ref]) do
    redis.call('HDEL', members, ref .. ' ' .. string.match(line, '^(%d+)'))
  end
  leave(node, ref, '1', rooms[ref])
end
redis.call('ZADD', p .. ':nodes', now_ms(), node)
return {added, #gone / 2}
"""

# ARGV: p, node. A node that stops cleanly announces its own members' leaves at once.
GOODBYE_SCRIPT = """
local members = p .. ':members:' .. ARGV[2]
local order, rooms = by_room(redis.call('HGETALL', members))
for _, ref in ipairs(order) do leave(ARGV[2], ref, '0', rooms[ref]) end
redis.call('DEL', members)
redis.call('ZREM', p .. ':nodes', ARGV[2])
return #order
"""

SCRIPTS = {
    "join": JOIN_SCRIPT, "chat": CHAT_SCRIPT, "leave": LEAVE_SCRIPT,
    "heartbeat": HEARTBEAT_SCRIPT, "epoch": EPOCH_SCRIPT, "restore": RESTORE_SCRIPT,
    "sync": SYNC_SCRIPT, "goodbye": GOODBYE_SCRIPT,
}


def _script_text(body: str) -> str:
    return (_PRELUDE.replace("@LOG_LENGTH@", str(LOG_LENGTH)).replace("@LOG_TTL@", str(LOG_TTL))
            + body)


def _sha1(text: str) -> str:
    import hashlib
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


_TEXTS = {name: _script_text(body) for name, body in SCRIPTS.items()}
_SHAS = {name: _sha1(text) for name, text in _TEXTS.items()}


# ---------------------------------------------------------------------------------------------
# What the bus tells its owner, besides room events
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Done:
    """The reply to one of the owner's requests (join, chat, leave), matched by `token`.
    `value` is the script's reply: see each script. `failed` is a reason when there will be no
    reply (the links dropped, or Redis answered with an error); then `value` is None."""
    token: Any
    value: Any
    failed: str = ""


@dataclass(frozen=True)
class Skipped:
    """Events ref's numbers up to `upto` that can no longer be read back (the room's log no
    longer has them): they are lost for this node, and counted in Bus.lost."""
    ref: int
    upto: int


@dataclass(frozen=True)
class StateChanged:
    """The bus went up (every request may use it) or down (only what is local works)."""
    up: bool
    why: str


@dataclass(frozen=True)
class Revived:
    """This node was declared dead by the others (no heartbeat for NODE_DEAD_AFTER: stopped,
    or cut off from Redis) while it was alive; its members are being put back."""
    members: int


Event = Union[Joined, Said, Left, Done, Skipped, StateChanged, Revived]


class _RoomLog:
    """Where this node is in one room's events: the next number it expects, the later events
    held until the missing ones arrive, and whether a read of the log is under way."""
    __slots__ = ("next_seq", "held", "repairing")

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq
        self.held: Dict[int, Tuple[RoomEvent, int]] = {}     # seq -> (event, its size)
        self.repairing = False


@dataclass(frozen=True)
class LocalState:
    """What this node holds, for bringing Redis up to date after it was away (the owner's view):
    its members (ref, conn, join_id, name), the leaves it made while the bus was down
    (ref, conn, name), and the room names it knows by ref."""
    members: Sequence[Tuple[int, int, int, str]]
    departed: Sequence[Tuple[int, int, str]]
    names: Dict[int, str]


class Bus:
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
        self.db = db
        self.max_rooms = max_rooms
        self.node = node
        self._local_state = local_state
        self._rng = rng or random.Random()
        self.up = False                 # "cmd" is connected and Redis is in step with us
        self.subscribed = False         # "sub" is subscribed
        self._to_close: List[str] = []
        self._conns: Dict[str, Optional[RedisConnection]] = {name: None for name in LINKS}
        self._out: Dict[str, List[bytes]] = {name: [] for name in LINKS}
        self._connected: Dict[str, bool] = {name: False for name in LINKS}
        self._opened_at: Dict[str, float] = {name: 0.0 for name in LINKS}
        self._retry_at: Dict[str, float] = {name: 0.0 for name in LINKS}
        self._attempts: Dict[str, int] = {name: 0 for name in LINKS}
        self._syncing = False
        # FIFO of what each reply on the command link is for: (kind, token, sent at, bytes).
        self._replies: Deque[Tuple[str, Any, float, int]] = collections.deque()
        self._unanswered = 0                            # their bytes, together
        self._events: List[Event] = []
        self._rooms: Dict[int, _RoomLog] = {}           # the rooms this node delivers
        self._early: Dict[int, List[RoomEvent]] = {}    # own events ahead of their reply
        self._handed_out: Dict[int, int] = {}           # unfollowed ref -> its next event then
        self.seen: Dict[int, int] = {}                  # every room's highest event number
        self.room_names: Dict[int, str] = {}            # ref -> name, of every join heard
        self.next_ref = 0                               # refs below it exist somewhere
        self.last_join_id = 0
        self.epoch: Optional[str] = None                # P:epoch as last read
        self._restarted = False                         # P:epoch changed: Redis lost its data
        self._held_bytes = 0
        self._heartbeat_at = 0.0
        self._heartbeat_pending = False
        # Counters, for the log and the statistics line.
        self.lost = 0            # events that could not be read back (Skipped)
        self.repaired = 0        # events read back from a room's log
        self.outages = 0         # times the bus went down
        self.resubscribed = 0    # times the subscription dropped and was made again
        self.bad_events = 0      # published messages that were not events
        self.behind = 0          # chats refused because Redis had too much unanswered

    # -- links ---------------------------------------------------------------------------------

    def wants_links(self, now: float) -> List[str]:
        return [name for name in LINKS
                if self._conns[name] is None and now >= self._retry_at[name]]

    def connecting(self, name: str, now: float) -> None:
        """The owner is opening link `name` now."""
        self._conns[name] = RedisConnection()
        self._out[name] = []
        self._connected[name] = False
        self._opened_at[name] = now

    def link_up(self, name: str, now: float) -> None:
        self._connected[name] = True
        if name == "sub":
            self._write("sub", "SUBSCRIBE", self.prefix + ":events")
        else:
            if self.db:
                self._command("load", None, now, "SELECT", self.db)
            for text in _TEXTS.values():
                self._command("load", None, now, "SCRIPT", "LOAD", text)
            self._command("epoch", None, now, *self._script_args(
                "epoch", "%016x" % self._rng.getrandbits(64)))

    def links_to_close(self) -> List[str]:
        names, self._to_close = self._to_close, []
        return names

    def link_failed(self, name: str, why: str, now: float) -> None:
        """Link `name` is gone, or could not be opened; it is retried later, with backoff. For
        "cmd", every request still waiting for its reply fails, and the bus is down."""
        if self._conns[name] is None:
            return                                  # already down
        self._conns[name] = None
        self._out[name] = []
        self._connected[name] = False
        self._to_close.append(name)
        delay = min(RECONNECT_MAX, RECONNECT_MIN * 2 ** self._attempts[name])
        self._attempts[name] += 1
        self._retry_at[name] = now + delay * (0.5 + 0.5 * self._rng.random())
        if name == "sub":
            if self.subscribed:
                self.resubscribed += 1
            self.subscribed = False
            return
        self._syncing = self._heartbeat_pending = False
        for log in self._rooms.values():
            log.repairing = False
        replies, self._replies = self._replies, collections.deque()
        self._unanswered = 0
        for kind, token, _sent, _size in replies:
            if kind == "request":
                self._events.append(Done(token, None, "the link to Redis dropped (%s)" % why))
        if self.up:
            self.up = False
            self.outages += 1
            self._events.append(StateChanged(False, why))

    def receive(self, name: str, data: bytes, now: float) -> None:
        conn = self._conns[name]
        if conn is None:
            return
        try:
            conn.receive_data(data)
            while True:
                event = conn.maybe_next_event()
                if event is NEED_DATA:
                    break
                if name == "sub":
                    self._on_sub_event(event, now)
                else:
                    self._on_reply(event.value, now)
                if self._conns[name] is not conn:
                    return                          # a failure reset the links meanwhile
        except RespProtocolError as exc:
            self.link_failed(name, "not RESP from Redis: %s" % exc, now)

    def data_to_send(self, name: str) -> bytes:
        out = self._out[name]
        if not out or not self._connected[name]:
            return b""
        self._out[name] = []
        return b"".join(out)

    def _setting_up(self, name: str) -> bool:
        """Link `name` is open but not yet in use (connecting, subscribing, syncing)."""
        if self._conns[name] is None:
            return False
        return not self.subscribed if name == "sub" else not self.up

    def next_deadline(self) -> Optional[float]:
        dues = []
        for name in LINKS:
            if self._conns[name] is None:
                dues.append(self._retry_at[name])
            elif self._setting_up(name):
                dues.append(self._opened_at[name] + CONNECT_TIMEOUT)
        if self.up:
            dues.append(self._heartbeat_at)
        if self._replies:
            dues.append(self._replies[0][2] + REPLY_TIMEOUT)
        return min(dues) if dues else None

    def timer(self, now: float) -> None:
        for name in LINKS:
            if self._setting_up(name) and now >= self._opened_at[name] + CONNECT_TIMEOUT:
                self.link_failed(name, "not set up within %g s" % CONNECT_TIMEOUT, now)
        if self._replies and now >= self._replies[0][2] + REPLY_TIMEOUT:
            self.link_failed("cmd", "Redis did not answer within %g s" % REPLY_TIMEOUT, now)
        if self.up and now >= self._heartbeat_at and not self._heartbeat_pending:
            self._heartbeat_pending = True
            self._heartbeat_at = now + HEARTBEAT_EVERY
            self._command("heartbeat", None, now, *self._script_args(
                "heartbeat", self.node, int(NODE_DEAD_AFTER * 1000)))

    def goodbye(self) -> bytes:
        """The bytes that announce this node's members' leaves at once (for a clean stop): to
        be written on the command link if it is up, best effort."""
        conn = self._conns["cmd"]
        if conn is None or not self._connected["cmd"] or not self.up:
            return b""
        return b"".join(self._out["cmd"]) + conn.send(*self._script_args("goodbye", self.node))

    def take_events(self) -> List[Event]:
        events, self._events = self._events, []
        return events

    # -- requests from the owner ---------------------------------------------------------------

    def join(self, token: Any, conn: int, room: str, name: str, join_id: int, may_create: bool,
             now: float) -> None:
        self._command("request", token, now, *self._script_args(
            "join", self.node, conn, room, name, join_id, self.max_rooms, int(may_create)))

    def chat(self, token: Any, conn: int, ref: int, name: str, message: str, now: float) -> None:
        if self._unanswered + len(message) > MAX_UNANSWERED_BYTES:
            self.behind += 1
            self._events.append(Done(token, None, "Redis is behind: %d bytes of requests "
                                     "unanswered" % self._unanswered))
            return
        self._command("request", token, now, *self._script_args(
            "chat", self.node, conn, ref, name, message))

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
        for event in self._early.pop(ref, ()):
            self._offer(log, event, now)
        if self.seen.get(ref, 0) >= log.next_seq and not log.repairing:
            self._repair(ref, log, now)     # some of what was published is not here

    def unfollow(self, ref: int) -> None:
        """This node has no member in room `ref` any more."""
        log = self._rooms.pop(ref, None)
        if log is not None:
            self._held_bytes -= sum(size for _event, size in log.held.values())
            self._handed_out[ref] = log.next_seq

    def follows(self, ref: int) -> bool:
        return ref in self._rooms

    def forget_early(self) -> None:
        """No request of this node is waiting for a reply: events kept for one can go."""
        if not self._replies:
            self._early.clear()

    # -- inside --------------------------------------------------------------------------------

    def _script_args(self, script: str, *args: Any) -> Tuple[Any, ...]:
        return ("EVALSHA", _SHAS[script], 0, self.prefix) + args

    def _write(self, name: str, *args: Any) -> None:
        conn = self._conns[name]
        if conn is not None:
            self._out[name].append(conn.send(*args))

    def _command(self, kind: str, token: Any, now: float, *args: Any) -> None:
        """Send a command on the command link; its reply goes to _on_reply as `kind`."""
        if self._conns["cmd"] is None:
            if kind == "request":
                self._events.append(Done(token, None, "no link to Redis"))
            return
        data = self._conns["cmd"].send(*args)
        self._out["cmd"].append(data)
        self._replies.append((kind, token, now, len(data)))
        self._unanswered += len(data)

    def _on_sub_event(self, event: Any, now: float) -> None:
        if isinstance(event, Subscribed):
            if event.kind == "subscribe":
                self.subscribed = True
                self._attempts["sub"] = 0
                self._catch_up(now)       # what was published before this: from the logs
            return
        if isinstance(event, Message):
            self._on_published(event.data, now)

    def _on_published(self, data: bytes, now: float) -> None:
        try:
            event = decode_event(data)
        except (ValueError, IndexError, UnicodeDecodeError):
            self.bad_events += 1
            return
        ref = event.ref
        if event.seq > self.seen.get(ref, 0):
            self.seen[ref] = event.seq
        if ref >= self.next_ref:
            self.next_ref = ref + 1
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
            size = 200 + (len(event.message) if isinstance(event, Said) else 0)
            if len(early) < EARLY_EVENTS and self._held_bytes + size <= MAX_HELD_BYTES:
                early.append(event)

    def _offer(self, log: _RoomLog, event: RoomEvent, now: float) -> None:
        """One event of a followed room, from the subscription or from the log."""
        seq = event.seq
        if seq < log.next_seq or seq in log.held:
            return                                  # seen already
        if seq > log.next_seq:
            size = 200 + (len(event.message) if isinstance(event, Said) else 0)
            if self._held_bytes + size <= MAX_HELD_BYTES:
                log.held[seq] = (event, size)
                self._held_bytes += size
            if not log.repairing:
                self._repair(event.ref, log, now)
            return
        self._events.append(event)
        log.next_seq += 1
        while log.next_seq in log.held:
            held, size = log.held.pop(log.next_seq)
            self._held_bytes -= size
            self._events.append(held)
            log.next_seq += 1

    def _repair(self, ref: int, log: _RoomLog, now: float) -> None:
        """Read room `ref`'s events from its log, from the first one missing."""
        if self._conns["cmd"] is None or not self._connected["cmd"]:
            return
        log.repairing = True
        self._command("repair", ref, now, "XRANGE", "%s:log:%d" % (self.prefix, ref),
                      "%d-0" % log.next_seq, "+", "COUNT", REPAIR_BATCH)

    def _on_repaired(self, ref: int, entries: Any, now: float) -> None:
        log = self._rooms.get(ref)
        if log is None:
            return
        log.repairing = False
        if not isinstance(entries, list):
            return
        events = []
        for entry in entries:
            try:
                fields = entry[1]
                events.append(decode_event(fields[fields.index(b"e") + 1]))
            except (ValueError, IndexError, TypeError, UnicodeDecodeError):
                self.bad_events += 1
        first = events[0].seq if events else min(log.held, default=None)
        if first is not None and first > log.next_seq:
            # The log no longer reaches back that far: those events are lost for this node.
            self.lost += first - log.next_seq
            self._events.append(Skipped(ref, first - 1))
            log.next_seq = first
        for event in events:
            self.repaired += event.seq >= log.next_seq
            self._offer(log, event, now)
        if log.held and not log.repairing and ref in self._rooms:
            self._repair(ref, log, now)             # still a gap: the next batch

    def _on_reply(self, value: Any, now: float) -> None:
        if not self._replies:
            return
        kind, token, _sent, size = self._replies.popleft()
        self._unanswered -= size
        failed = isinstance(value, RespError)
        if kind == "request":
            self._events.append(Done(token, None if failed else value,
                                     value.message if failed else ""))
        elif failed:
            # Our own scripts and reads do not fail on a sane Redis; one that does (out of
            # memory, a script killed) gets the links reset, which retries everything.
            self.link_failed("cmd", "Redis answered %s to our %s" % (value.message, kind), now)
        elif kind == "epoch":
            self._on_epoch(value, now)
        elif kind == "sync":
            self._on_synced(now)
        elif kind == "heartbeat":
            self._heartbeat_pending = False
            if value[0] == 0 and self.up:
                self._start_sync(now, announce=True)    # reaped while alive: come back
                self._events.append(Revived(len(self._local_state().members)))
        elif kind == "repair":
            self._on_repaired(token, value, now)

    def _on_epoch(self, value: Any, now: float) -> None:
        epoch = value[0].decode() if isinstance(value[0], bytes) else str(value[0])
        restarted = self.epoch is not None and epoch != self.epoch
        self.epoch = epoch
        self.next_ref = max(self.next_ref, int(value[1]))
        self.last_join_id = max(self.last_join_id, int(value[2]))
        self._restarted = restarted
        self._start_sync(now, announce=not restarted)

    def _start_sync(self, now: float, announce: bool) -> None:
        self._syncing = True
        state = self._local_state()
        if self._restarted:
            # Redis lost everything: put back the counters and names this node knows, so that
            # refs, JOIN_IDs and event numbers go on from where they were, never back.
            refs = sorted(set(self.seen) | set(self._rooms) | set(state.names))
            args: List[Any] = [self.next_ref, self.last_join_id]
            for ref in refs:
                last = self.seen.get(ref, 0)
                if ref in self._rooms:
                    last = max(last, self._rooms[ref].next_seq - 1)
                args += [ref, state.names.get(ref, ""), last]
            self._command("restore", None, now, *self._script_args("restore", *args))
            self._restarted = False
        args = [1 if announce else 0, len(state.members)]
        for ref, conn, join_id, name in state.members:
            args += [ref, conn, join_id, name]
        for ref, conn, name in state.departed:
            args += [ref, conn, name]
        self._command("sync", None, now, *self._script_args("sync", self.node, *args))

    def _on_synced(self, now: float) -> None:
        self._syncing = False
        self._attempts["cmd"] = 0
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
            if not log.repairing:
                self._repair(ref, log, now)
