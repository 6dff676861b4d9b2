"""The bus's two links to Redis, without sockets: which one is open, what each has to write, what
each reply on the command link answers, when a dropped link may be tried again, and which link
is overdue.

Boundary: sans-IO, between sansio/resp.py (one RedisConnection per open link) and sansio/bus.py
(which decides what to send and what each reply means). No clock: the time is passed in. This
module knows nothing of rooms, scripts or events; the heartbeat, which is a script, is the bus's.

The links are independent: "sub" carries what Redis publishes, "cmd" the commands and their
replies. Each is, in turn: closed (retried at `retry_at`, with backoff), open and setting up
(given up after CONNECT_TIMEOUT), in use. What "set up" means (subscribed; in step with Redis)
is the bus's to say, so it passes it in as `setting_up(name)`.
"""
import collections
import random
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from sansio.bus_events import ChatGroup
from sansio.resp import NEED_DATA, RedisConnection

# Reconnecting to Redis: the first retry after RECONNECT_MIN, doubling up to RECONNECT_MAX,
# each delay drawn from its upper half at random ("equal jitter") so that every node of a
# cluster does not come back in the same instant.
RECONNECT_MIN = 0.1
RECONNECT_MAX = 5.0
# A link that is not connected after CONNECT_TIMEOUT, or a command unanswered after
# REPLY_TIMEOUT, means Redis is unreachable or stuck: both links are dropped and retried.
CONNECT_TIMEOUT = 3.0
REPLY_TIMEOUT = 5.0

# Bytes of commands sent to Redis and not yet answered, past which a CHAT is refused (ERROR_CODE
# 15, "Redis is behind") until Redis catches up. While Redis is stalled (a long command, a slow
# machine; up to REPLY_TIMEOUT), every connection may have one chat of up to 64 KiB waiting, and
# those bytes are held here, outside the reactor's memory budget: 3 000 connections held 270 MB
# during a 4 s stall. 16 MiB is 256 of the longest chats at once, far more than Redis has
# unanswered when it keeps up (it runs a chat script in microseconds).
MAX_UNANSWERED_BYTES = 16 * 1024 * 1024

# Channels named in one SUBSCRIBE (a subscriber link made again subscribes to every room
# followed: a command per SUBSCRIBE_BATCH of them).
SUBSCRIBE_BATCH = 1000

LINKS = ("sub", "cmd")       # the reactor reads them in this order: the subscriber first


class Links:
    """Both links' state. The bus calls opening/opened/drop as the owner reports them, write and
    command to queue bytes, received to read, answered to match a reply to its command."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._conns: Dict[str, Optional[RedisConnection]] = {name: None for name in LINKS}
        self._out: Dict[str, List[bytes]] = {name: [] for name in LINKS}
        self._connected: Dict[str, bool] = {name: False for name in LINKS}
        self._opened_at: Dict[str, float] = {name: 0.0 for name in LINKS}
        self._retry_at: Dict[str, float] = {name: 0.0 for name in LINKS}
        self._attempts: Dict[str, int] = {name: 0 for name in LINKS}
        self._to_close: List[str] = []
        # FIFO of what each reply on the command link is for: (kind, token, sent at, bytes).
        self._replies: Deque[Tuple[str, Any, float, int]] = collections.deque()
        self.unanswered = 0                             # their bytes, together

    # -- open, up, dropped ---------------------------------------------------------------------

    def wanted(self, now: float) -> List[str]:
        """The closed links whose retry time has come."""
        return [name for name in LINKS
                if self._conns[name] is None and now >= self._retry_at[name]]

    def opening(self, name: str, now: float) -> None:
        """The owner is opening link `name` now: a fresh connection, nothing queued."""
        self._conns[name] = RedisConnection()
        self._out[name] = []
        self._connected[name] = False
        self._opened_at[name] = now

    def opened(self, name: str) -> None:
        """Link `name` is connected: what is queued for it may be written."""
        self._connected[name] = True

    def in_use(self, name: str) -> None:
        """Link `name` is set up: the next drop starts the backoff from RECONNECT_MIN again."""
        self._attempts[name] = 0

    def is_open(self, name: str) -> bool:
        return self._conns[name] is not None

    def is_connected(self, name: str) -> bool:
        return self._conns[name] is not None and self._connected[name]

    def drop(self, name: str, now: float) -> Optional[List[Tuple[str, Any]]]:
        """Link `name` is gone: the owner is to close it, and it is retried after a backoff.
        Returns the (kind, token) of each command that will now never be answered (none for
        "sub"), or None when the link was down already."""
        if self._conns[name] is None:
            return None
        self._conns[name] = None
        self._out[name] = []
        self._connected[name] = False
        self._to_close.append(name)
        delay = min(RECONNECT_MAX, RECONNECT_MIN * 2 ** self._attempts[name])
        self._attempts[name] += 1
        self._retry_at[name] = now + delay * (0.5 + 0.5 * self._rng.random())
        if name == "sub":
            return []
        replies, self._replies = self._replies, collections.deque()
        self.unanswered = 0
        return [(kind, token) for kind, token, _sent, _size in replies]

    def take_to_close(self) -> List[str]:
        names, self._to_close = self._to_close, []
        return names

    # -- bytes out and in ----------------------------------------------------------------------

    def write(self, name: str, *args: Any) -> None:
        """Queue a command whose reply nobody waits for (a SUBSCRIBE: its confirmation is an
        event of the "sub" link), if link `name` is open."""
        conn = self._conns[name]
        if conn is not None:
            self._out[name].append(conn.send(*args))

    def subscribe(self, verb: str, channels: List[str]) -> None:
        """(UN)SUBSCRIBE the "sub" link to `channels`, in order, SUBSCRIBE_BATCH a command; only
        if it is connected (a link made again is subscribed to every channel then)."""
        if self._connected["sub"]:
            for start in range(0, len(channels), SUBSCRIBE_BATCH):
                self.write("sub", verb, *channels[start:start + SUBSCRIBE_BATCH])

    def command(self, kind: str, token: Any, now: float, *args: Any) -> bool:
        """Queue a command on the command link; its reply comes back from answered() as
        (kind, token). False, and nothing queued, when the link is not open."""
        conn = self._conns["cmd"]
        if conn is None:
            return False
        data = conn.send(*args)
        self._out["cmd"].append(data)
        self._replies.append((kind, token, now, len(data)))
        self.unanswered += len(data)
        return True

    def last_words(self, *args: Any) -> bytes:
        """What is queued on the command link and one more command, as bytes to write at once
        (a clean stop: nobody will read the reply); b"" when the link is not connected."""
        conn = self._conns["cmd"]
        if conn is None or not self._connected["cmd"]:
            return b""
        return b"".join(self._out["cmd"]) + conn.send(*args)

    def data_to_send(self, name: str) -> bytes:
        out = self._out[name]
        if not out or not self._connected[name]:
            return b""
        self._out[name] = []
        return b"".join(out)

    def received(self, name: str, data: bytes) -> Iterator[Any]:
        """The events (sansio/resp.py) in `data`, read on link `name`, one at a time. Stops
        early when the link was reset while the caller handled one. Raises RespProtocolError
        when the bytes are not RESP."""
        conn = self._conns[name]
        if conn is None:
            return
        conn.receive_data(data)
        while True:
            event = conn.maybe_next_event()
            if event is NEED_DATA:
                return
            yield event
            if self._conns[name] is not conn:
                return                          # a failure reset the links meanwhile

    def answered(self) -> Optional[Tuple[str, Any]]:
        """(kind, token) of the command the reply just read answers; None if none waited."""
        if not self._replies:
            return None
        kind, token, _sent, size = self._replies.popleft()
        self.unanswered -= size
        return kind, token

    def waiting(self) -> bool:
        """Some command on the command link is not answered yet."""
        return bool(self._replies)

    # -- time ----------------------------------------------------------------------------------

    def deadlines(self, setting_up: Callable[[str], bool]) -> List[float]:
        """When each link is next due: a closed one's retry, an open one's CONNECT_TIMEOUT
        while `setting_up(name)`, the oldest unanswered command's REPLY_TIMEOUT."""
        dues = []
        for name in LINKS:
            if self._conns[name] is None:
                dues.append(self._retry_at[name])
            elif setting_up(name):
                dues.append(self._opened_at[name] + CONNECT_TIMEOUT)
        if self._replies:
            dues.append(self._replies[0][2] + REPLY_TIMEOUT)
        return dues

    def overdue(self, now: float, setting_up: Callable[[str], bool]) -> Iterator[Tuple[str, str]]:
        """(name, why) of each link to drop now, one at a time: the caller drops each before
        the next is looked at."""
        for name in LINKS:
            if setting_up(name) and now >= self._opened_at[name] + CONNECT_TIMEOUT:
                yield name, "not set up within %g s" % CONNECT_TIMEOUT
        if self._replies and now >= self._replies[0][2] + REPLY_TIMEOUT:
            yield "cmd", "Redis did not answer within %g s" % REPLY_TIMEOUT


class Held:
    """The chats held until the end of the tick, to go to Redis together as one call of the
    chats script (sansio/bus.py), grouped by room in the order the rooms came: per room, their
    senders' CONN and their bytes. Also their bytes in all (counted as unanswered already) and
    when the first was made; full at `most` chats or `most_bytes`."""
    __slots__ = ("rooms", "count", "size", "since", "most", "most_bytes")

    def __init__(self, most: int, most_bytes: int) -> None:
        self.most, self.most_bytes = most, most_bytes
        self.rooms: Dict[int, Tuple[List[int], List[bytes]]] = {}
        self.count = 0
        self.size = 0
        self.since = 0.0

    def add(self, ref: int, conn: int, data: bytes, now: float) -> bool:
        """Hold one more; True if they are as many as one call is to carry (send them)."""
        room = self.rooms.get(ref)
        if room is None:
            if not self.rooms:
                self.since = now
            room = self.rooms[ref] = ([], [])
        room[0].append(conn)
        room[1].append(data)
        self.count += 1
        self.size += len(data) + 10     # (and its share of what the call carries besides)
        return self.count >= self.most or self.size >= self.most_bytes

    def take(self) -> Tuple[List[ChatGroup], List[Any], float]:
        """Those held, room by room; the chats script's arguments for them (after the node's
        id); when the first was made. None are held any more."""
        groups: List[ChatGroup] = []
        args: List[Any] = []
        for ref, (conns, parts) in self.rooms.items():
            groups.append(ChatGroup(ref, conns))
            args += (ref, len(conns), b"".join(parts))
        self.rooms, self.count, self.size = {}, 0, 0
        return groups, args, self.since
