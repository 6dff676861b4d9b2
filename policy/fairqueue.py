"""A fair queue: items waiting by key (an address), taken in rounds, one per key per round, so a
key that offers a thousand items a tick and one that offers one each get a turn (the UDP
server's handshakes: docs/UDP.md, "Limits"). No sockets, no clock.
"""
from typing import Dict, Generic, Hashable, List, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")


class FairQueue(Generic[Key, Item]):
    """At most `per_key` items of one key and `capacity` in all wait; take() hands out up to
    `limit` of them, one per key per round in the order the keys first came, and forgets the
    rest (the senders try again, as they would after a lost datagram)."""

    def __init__(self, capacity: int, per_key: int) -> None:
        self.capacity = capacity
        self.per_key = per_key
        self.size = 0
        self.dropped = 0                    # offers refused or forgotten, ever
        self._by_key: Dict[Key, List[Item]] = {}

    def offer(self, key: Key, item: Item) -> bool:
        """Queue `item` for `key`; False (and it is dropped) if either bound is reached."""
        waiting = self._by_key.get(key)
        if waiting is None:
            if self.size >= self.capacity:
                self.dropped += 1
                return False
            waiting = self._by_key[key] = []
        elif len(waiting) >= self.per_key or self.size >= self.capacity:
            self.dropped += 1
            return False
        waiting.append(item)
        self.size += 1
        return True

    def take(self, limit: int) -> List[Item]:
        """Up to `limit` items, round by round across the keys; the queue is empty after."""
        taken: List[Item] = []
        queues = list(self._by_key.values())
        depth = 0
        while queues and len(taken) < limit:
            for waiting in queues[:limit - len(taken)]:
                taken.append(waiting[depth])
            depth += 1
            queues = [waiting for waiting in queues if len(waiting) > depth]
        self.dropped += self.size - len(taken)
        self._by_key.clear()
        self.size = 0
        return taken
