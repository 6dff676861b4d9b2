"""What the bus keeps in Redis: the key layout, the events the nodes publish, and the Lua
scripts that change both, atomically.

Boundary: sans-IO and stateless, like the rest of sansio/. Nothing here talks to Redis: the
scripts are text that sansio/bus.py loads and calls (EVALSHA), and decode_event() reads what
they publish. Read this module for what Redis holds; sansio/bus.py for what a node does with it.

Redis keys and the channel (P is --bus-prefix):
    P:epoch             a random value set by the first node; a new one means Redis lost its data
    P:refs, P:names     hashes room name -> ROOM_REF and ROOM_REF -> room name
    P:nextref           the next ROOM_REF to give (refs are dense from 0)
    P:joinid            the last JOIN_ID given
    P:seq:REF           the room's last event number
    P:log:REF           the room's last LOG_LENGTH events (a stream: an entry a join, a leave or
                        a batch of chats, its id "N-1", N its last event's number), kept LOG_TTL s
    P:occ:REF           hash node -> how many of the room's members are on that node
    P:members:NODE      hash "REF CONN" -> CLIENT_NAME: a node's members (for its clean-up)
    P:empty             sorted set REF -> when it emptied: what a full table forgets first
    P:nodes             sorted set node -> its last heartbeat (on P:clock, ms)
    P:clock             hash: the group's clock ("group", ms) and Redis's time it was last moved
                        on ("redis"): see HEARTBEAT_SCRIPT
    P:events            the group's channel: every join and leave, heard by every node
    P:events:REF        the room's channel: its chats, heard by the nodes with members there
"""
import hashlib
import re
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple, Union

# What a room's log keeps, for filling gaps: its last LOG_LENGTH events (trimmed by number:
# log_add() below; "~": Redis trims in whole blocks, so a few more), for LOG_TTL seconds after
# its last event. A subscriber link that is back within that time and that many events loses
# nothing; past it the missed events are counted as lost (`lost`) and logged. The log costs Redis some LOG_LENGTH events per active
# room; on Redis before 6.2 (no MINID) LOG_LENGTH entries, each up to a call's batch of the
# room's chats (CHAT_BATCH_BYTES, sansio/bus.py), and a repair read as many (REPAIR_BATCH).
LOG_LENGTH = 1000
LOG_TTL = 300


# ---------------------------------------------------------------------------------------------
# Events, as the nodes publish them
# ---------------------------------------------------------------------------------------------
# One event is UTF-8 text: a header line "KIND REF SEQ NODE ...", then the body.
#   J REF SEQ NODE CONN JOIN_ID SETTLED \n ROOM_NAME \n CLIENT_NAME     a join
#   L REF SEQ NODE SETTLED \n CONN CLIENT_NAME [\n CONN CLIENT_NAME ...] leaves, in one event
# Chats come as a batch: the chats one node sent to one room in one call of CHATS_SCRIPT, which
# numbers them one after the other (FIRST, FIRST + 1, ...) and publishes and logs the batch as
# one message and one log entry:
#   B REF FIRST NODE COUNT \n DATA
# DATA is the COUNT chats' bytes as members receive them (the sending node renders each CHAT
# once; no node decodes them again), one after the other, each ending at its first blank line
# (CHAT_END: a CHAT's MESSAGE cannot hold one, docs/PROTOCOL.md), so they need no sizes. Every
# node hands DATA to its members as it is; the node that sent them knows its chats by their
# numbers (the script's reply), so the batch does not name their senders.
# Names never hold a line break (sansio/wire.py refuses unprintable names). SETTLED 1: the node
# that made it has already told its own members (a join restored or leaves made while the bus
# was down), so it delivers it to nobody; other nodes do.
#
# decode_event() and decode_chats() give each kind as a named tuple with those fields:
# immutable, and cheap to build. Being a tuple, an event also equals a plain tuple of the same
# values: compare events with events.

Joined = NamedTuple("Joined", [("ref", int), ("seq", int), ("node", str), ("conn", int),
                               ("join_id", int), ("settled", bool), ("room", str), ("name", str)])
# `seq`: the first chat's number; chat i is numbered seq + i, and is the (i + 1)-th piece of
# data ending in CHAT_END; `count` of them.
Chats = NamedTuple("Chats", [("ref", int), ("seq", int), ("node", str), ("count", int),
                             ("data", bytes)])
# What ends each chat of a batch, and is found nowhere else in it (nor followed by a third line
# end: a chat as rendered ends with a MESSAGE stripped of white space).
CHAT_END = b"\n\n"
# `leavers`: (conn, CLIENT_NAME) of each, in the order they left.
Left = NamedTuple("Left", [("ref", int), ("seq", int), ("node", str), ("settled", bool),
                           ("leavers", Tuple[Tuple[int, str], ...])])

RoomEvent = Union[Joined, Chats, Left]


def decode_event(data: bytes) -> RoomEvent:
    """The join or leave published as `data`. Raises ValueError for anything else."""
    head, _, body = data.decode("utf-8").partition("\n")
    fields = head.split(" ")
    kind, ref, seq, node = fields[0], int(fields[1]), int(fields[2]), fields[3]
    if kind == "J" and len(fields) == 7:
        room, _, name = body.partition("\n")
        return Joined(ref, seq, node, int(fields[4]), int(fields[5]), fields[6] == "1", room, name)
    if kind == "L" and len(fields) == 5:
        leavers = []
        for line in body.split("\n"):
            conn, _, name = line.partition(" ")
            leavers.append((int(conn), name))
        return Left(ref, seq, node, fields[4] == "1", tuple(leavers))
    raise ValueError("not a bus event: %r" % data[:80])


def decode_chats(data: bytes) -> Chats:
    """The batch of chats published (or logged) as `data`. Raises ValueError for anything else:
    its data must end in CHAT_END as many times as it counts chats, the last at its very end,
    so a node never hands its members a part of a chat. (Whether each piece is a CHAT of the
    room is the owner's to judge: cluster/shared.py.)"""
    end = data.index(b"\n")
    head = _BATCH_HEAD.fullmatch(data, 0, end)
    if head is None:
        raise ValueError("not a batch of chats: %r" % data[:80])
    count = int(head.group(4))
    body = data[end + 1:]
    # (with no CHAT_END run into a third line end, each one found is a chat's end: the counts
    # here, the owner's check of each chat's head and split_chats's cuts all see the same chats)
    if body.count(CHAT_END) != count or not count or not body.endswith(CHAT_END) \
            or _STRAY_LINE_END.search(body):
        raise ValueError("a batch whose chats are not as many as it says: %r" % data[:80])
    return Chats(int(head.group(1)), int(head.group(2)), head.group(3).decode("utf-8"), count,
                 body)


# A batch's header line: digits only where numbers go (int() alone also takes "+5" or "1_0"),
# and not so many that int() of them takes long (it does, on a Python without a limit on them).
_BATCH_HEAD = re.compile(rb"B ([0-9]{1,18}) ([0-9]{1,18}) ([^ \n]+) ([0-9]{1,9})")
_STRAY_LINE_END = re.compile(rb"\n\n\n")    # (a regex: `in` takes twice as long for this one)


def split_chats(chats: Chats) -> List[Chats]:
    """A batch as batches of one chat each (for a room whose events are not handed out in one
    go: some are held, or repeated)."""
    ones, start, data = [], 0, chats.data
    for i in range(chats.count):
        end = data.index(CHAT_END, start) + len(CHAT_END)
        ones.append(Chats(chats.ref, chats.seq + i, chats.node, 1, data[start:end]))
        start = end
    return ones


def decode_any(data: bytes) -> Sequence[RoomEvent]:
    """The events of a published message or a log entry: a batch's chats one by one, or the
    join or leave it is. Raises ValueError (or IndexError, UnicodeDecodeError) for anything
    else."""
    if data[:2] == b"B ":
        return split_chats(decode_chats(data))
    return [decode_event(data)]


# What the scripts are given and what they return, read.

def decode_entries(entries: List[Any]) -> Tuple[List[RoomEvent], int]:
    """The events of a room's log entries (an XRANGE reply), a batch's chats one by one, and how
    many entries were not events (left out)."""
    events: List[RoomEvent] = []
    bad = 0
    for entry in entries:
        try:
            fields = entry[1]
            events += decode_any(fields[fields.index(b"e") + 1])
        except (ValueError, IndexError, TypeError, UnicodeDecodeError):
            bad += 1
    return events, bad


def chat_firsts(reply: Any) -> List[int]:
    """The first numbers the chats script gave each room's chats (a string "N N ...")."""
    return [int(seq) for seq in reply.split()]


def restore_args(next_ref: int, last_join_id: int, lasts: Dict[int, int],
                 names: Dict[int, str]) -> List[Any]:
    """The restore script's arguments: the counters, then REF NAME SEQ of every room known."""
    args: List[Any] = [next_ref, last_join_id]
    for ref in sorted(set(lasts) | set(names)):
        args += [ref, names.get(ref, ""), lasts.get(ref, 0)]
    return args


def sync_args(members: Sequence[Tuple[int, int, int, str]],
              departed: Sequence[Tuple[int, int, str]], announce: bool) -> List[Any]:
    """The sync script's arguments (after the node's id): see SYNC_SCRIPT."""
    args: List[Any] = [1 if announce else 0, len(members)]
    for ref, conn, join_id, name in members:
        args += [ref, conn, join_id, name]
    for ref, conn, name in departed:
        args += [ref, conn, name]
    return args

# ---------------------------------------------------------------------------------------------
# The scripts: each runs atomically in Redis, so two nodes never see half of one
# ---------------------------------------------------------------------------------------------
# Every script gets the prefix as ARGV[1] and builds its key names from it. (Keys not declared
# in KEYS work on a single Redis, which is what this supports; a Redis Cluster would need them
# declared and in one hash slot.)

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end   -- Redis 5: TIME, then writes
local p = ARGV[1]
local function log_add(ref, last, entry)
  -- the room's log: `entry` (an event, or a batch of chats whose last is numbered `last`) as
  -- "LAST-1", keeping the events numbered past last - LOG_LENGTH (Redis 6.2 and later: MINID;
  -- before, MAXLEN keeps that many entries instead); pcall: after a restore, an id may be
  -- below the log's last one, and the entry is left out
  local log = p .. ':log:' .. ref
  local added = redis.pcall('XADD', log, 'MINID', '~', math.max(0, last - @LOG_LENGTH@),
                            last .. '-1', 'e', entry)
  if type(added) == 'table' and added.err then
    redis.pcall('XADD', log, 'MAXLEN', '~', @LOG_LENGTH@, last .. '-1', 'e', entry)
  end
  redis.call('EXPIRE', log, @LOG_TTL@)
end
local function emit(kind, ref, rest, body)
  local seq = redis.call('INCR', p .. ':seq:' .. ref)
  local event = kind .. ' ' .. ref .. ' ' .. seq .. ' ' .. rest .. '\\n' .. body
  log_add(ref, seq, event)
  redis.call('PUBLISH', p .. ':events', event)
  return seq
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function group_clock()
  -- The group's clock (P:clock): what the heartbeats judge death by. See HEARTBEAT_SCRIPT.
  local clock = redis.call('HMGET', p .. ':clock', 'redis', 'group')
  if not clock[1] then return nil, nil end
  return tonumber(clock[1]), tonumber(clock[2])
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

# The chats one node sent in one tick, in one call. ARGV: p, node, then for each room REF, how
# many chats and their bytes one after the other (as members receive them). Returns the number
# of each room's first chat, in the order given, as one string "N N ..." (cheaper to read than
# an array). Per room, not per chat: one INCRBY numbers the room's chats, and the batch ("B REF
# FIRST NODE COUNT\n" and the bytes) is one log entry and one message on the room's own channel
# (P:events:REF), which only the nodes with members in the room subscribe to: a node never
# reads the chats of rooms where it has nobody. Nothing in the script looks at each chat, so a
# chat costs Redis its share of the bytes, whatever the room. Joins and leaves (emit()) stay on
# the group's channel, heard by every node.
CHATS_SCRIPT = """
local node, firsts = ARGV[2], {}
for i = 3, #ARGV, 3 do
  local ref, count = ARGV[i], tonumber(ARGV[i + 1])
  local last = redis.call('INCRBY', p .. ':seq:' .. ref, count)
  local first = last - count + 1
  local batch = 'B ' .. ref .. ' ' .. first .. ' ' .. node .. ' ' .. count .. '\\n' .. ARGV[i + 2]
  log_add(ref, last, batch)
  redis.call('PUBLISH', p .. ':events:' .. ref, batch)
  firsts[#firsts + 1] = first
end
return table.concat(firsts, ' ')
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

# ARGV: p, node, NODE_DEAD_AFTER in ms, MAX_CLOCK_STEP in ms. Records this node's heartbeat;
# announces and deletes every node whose last heartbeat is older. Returns {1 if this node was
# known, 0 if not (Redis lost its data, or it was reaped while cut off), members reaped, then the
# ids of the nodes reaped}.
#
# Death is judged by the group's clock (P:clock), not by Redis's own: each heartbeat moves it on
# by the time since the previous heartbeat of any node, but by at most MAX_CLOCK_STEP. While the
# nodes heartbeat, that is Redis's time. Time in which no heartbeat ran at all (Redis stalled:
# a long command, DEBUG SLEEP, its machine frozen; or every node cut off from it) counts for one
# step only: nobody could be heard then, so nobody missed a heartbeat Redis could receive. A node
# is dead once the heartbeats of others, which Redis did receive, moved the clock NODE_DEAD_AFTER
# past its own last one. The scores in P:nodes are on that clock.
HEARTBEAT_SCRIPT = """
local nodes, real = p .. ':nodes', now_ms()
local last_real, last = group_clock()
local now = real
if last_real then now = last + math.max(0, math.min(real - last_real, tonumber(ARGV[4]))) end
redis.call('HSET', p .. ':clock', 'redis', real, 'group', now)
local known = redis.call('ZSCORE', nodes, ARGV[2])
redis.call('ZADD', nodes, now, ARGV[2])
local reaped, dead_nodes = 0, {}
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now - tonumber(ARGV[3]))) do
  local members = p .. ':members:' .. dead
  local order, rooms = by_room(redis.call('HGETALL', members))
  for _, ref in ipairs(order) do
    leave(dead, ref, '0', rooms[ref])
    reaped = reaped + #rooms[ref]
  end
  redis.call('DEL', members)
  redis.call('ZREM', nodes, dead)
  dead_nodes[#dead_nodes + 1] = dead
end
local result = {known and 1 or 0, reaped}
for _, dead in ipairs(dead_nodes) do result[#result + 1] = dead end
return result
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
local _, clock = group_clock()                     -- (its heartbeat follows at once)
redis.call('ZADD', p .. ':nodes', clock or now_ms(), node)
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
    "join": JOIN_SCRIPT, "chats": CHATS_SCRIPT, "leave": LEAVE_SCRIPT,
    "heartbeat": HEARTBEAT_SCRIPT, "epoch": EPOCH_SCRIPT, "restore": RESTORE_SCRIPT,
    "sync": SYNC_SCRIPT, "goodbye": GOODBYE_SCRIPT,
}


def _script_text(body: str) -> str:
    text = _PRELUDE + body
    return text.replace("@LOG_LENGTH@", str(LOG_LENGTH)).replace("@LOG_TTL@", str(LOG_TTL))


# What the bus loads (SCRIPT LOAD) and calls (EVALSHA), by name.
SCRIPT_TEXTS = {name: _script_text(body) for name, body in SCRIPTS.items()}
SCRIPT_SHAS = {name: hashlib.sha1(text.encode("utf-8")).hexdigest()
               for name, text in SCRIPT_TEXTS.items()}
