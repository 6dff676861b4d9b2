"""A turn's consecutive small broadcasts to the same members, queued as one (Hub._handle_requests).

A member's turn handles up to 64 requests, nearly all chats to its one room: each was one
Hub.write_many() over the room's members, whose loop (a lookup, a copy and a count a member)
is the largest cost of a chat in rooms of 5 to 100. Chats k..n of a turn that go to the same
members are queued by one write_many() of their bytes joined, with the same result for every
member: the same bytes, in the same order, counted the same (tests/test_hub.py holds it
equal to applying them one by one).

Why it is the same: nothing is applied between the chats of a batch, and nothing the turn
checks after each request can change while they wait. The app is pure, so handling the next
request sees nothing of the queues; the sender's own queue stays under HIGH_WATER with the
whole batch on it, so its reads are not paused nor is it evicted by it (what the turn checks);
a member passing its own mark pauses or is evicted at the end of the batch instead of
within it (its queue is dropped either way). A batch stays under SHARE_MIN bytes, so it is
copied onto each member's buffer as each chat was.
"""
from typing import Any, Callable, List, Optional, Sequence

from policy.watermarks import HIGH_WATER
from sansio.actions import Action, Broadcast

Write = Callable[[Sequence[int], bytes, int], None]


class BroadcastBatch:
    """Consecutive small Broadcasts of one turn to the same members, queued as one.

        took(actions)   a request's actions: True if they were a Broadcast kept for the batch
                        (nothing to apply), False if the caller applies them (the batch written
                        first, so the order of everything queued stays the same)
        write()         queue what the batch holds (write(ids, joined bytes, how many messages))
    """

    __slots__ = ("_write", "_sender", "_limit", "_ids", "_parts", "_size")

    def __init__(self, write: Write, sender: Any, limit: int) -> None:
        self._write = write
        self._sender = sender           # its out_bytes: under HIGH_WATER with the whole batch
        self._limit = limit             # a batch is smaller than this (SHARE_MIN)
        self._ids: Optional[Sequence[int]] = None
        self._parts: List[bytes] = []
        self._size = 0

    def took(self, actions: List[Action]) -> bool:
        if len(actions) == 1:
            action = actions[0]
            if type(action) is Broadcast:
                data = action.data
                size = self._size + len(data)
                if (size < self._limit and size + self._sender.out_bytes <= HIGH_WATER
                        and action.conn_ids == self._ids):
                    self._parts.append(data)
                    self._size = size
                    return True
                self.write()
                if len(data) < self._limit and len(data) + self._sender.out_bytes <= HIGH_WATER:
                    self._ids, self._parts, self._size = action.conn_ids, [data], len(data)
                    return True
                return False
        self.write()
        return False

    def write(self) -> None:
        ids = self._ids
        if ids is not None:
            parts = self._parts
            self._ids, self._parts, self._size = None, [], 0
            self._write(ids, parts[0] if len(parts) == 1 else b"".join(parts), len(parts))
