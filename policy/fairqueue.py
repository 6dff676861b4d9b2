"""A fair queue: items waiting by key (an address), taken one per key per round, so a key that
offers a thousand items a tick and one that offers one each get a turn (the UDP server's
handshakes: docs/UDP.md, "Limits"). No sockets, no clock.
"""
from typing import Dict, Generic, Hashable, List, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")


class FairQueue(Generic[Key, Item]):
    """At most `per_key` items of one key and `capacity` in all wait. take(limit) hands out up
    to `limit` of them, one per key per round, keys in the order they came. With more keys than
    `limit`, the keys left out keep their newest item and go first next time (so every key is
    served within keys / limit takes); everything else not taken is forgotten (the senders
    try again, as they would after a lost datagram)."""

    def __init__(self, capacity: int, per_key: int) -> None:
        self.capacity = capacity
        self.per_key = per_key
        self.size = 0
        self.dropped = 0                    # offers refused or forgotten, ever
        self._by_key: Dict[Key, List[Item]] = {}

    def offer(self, key: Key, item: Item) -> bool:
        """Queue `item` for `key`; False (and it is dropped) if either bound is reached."""
        waiting = self._by_key.get(key)
        if self.size >= self.capacity or (waiting is not None and len(waiting) >= self.per_key):
            self.dropped += 1
            return False
        if waiting is None:
            self._by_key[key] = [item]
        else:
            waiting.append(item)
        self.size += 1
        return True

    def take(self, limit: int) -> List[Item]:
        """Up to `limit` items, round by round across the keys (see the class)."""
        by_key = self._by_key
        if len(by_key) > limit:
            keys = list(by_key)
            taken = [by_key.pop(key)[0] for key in keys[:limit]]
            for key in keys[limit:]:
                waiting = by_key[key]
                self.dropped += len(waiting) - 1
                del waiting[:-1]            # its newest: a HELLO's latest cookie
            self.size = len(by_key)
            return taken
        taken = []
        queues = list(by_key.values())
        depth = 0
        while queues and len(taken) < limit:
            for waiting in queues[:limit - len(taken)]:
                taken.append(waiting[depth])
            depth += 1
            queues = [waiting for waiting in queues if len(waiting) > depth]
        self.dropped += self.size - len(taken)
        by_key.clear()
        self.size = 0
        return taken
