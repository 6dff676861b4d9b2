"""Who holds how much: the things each address holds, and the address holding the most, found
in constant time (an "LFU bucket" table: addresses filed by their count).

The UDP endpoint (sansio/udp_server.py) keeps one of these for its sessions, one for its
unconfirmed sessions and one for its pending callbacks: a per-address cap reads `count()`, and
reclaiming room for a newcomer reads `busiest()` and picks its victim from `held()`.
No sockets, no clock, nothing of the wire; imports nothing of the project.
"""
from typing import Dict, Generic, Hashable, Iterable, Optional, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item", bound=Hashable)


class Shares(Generic[Key, Item]):
    """Items held per key (an address), each key's items in the order they were added."""

    __slots__ = ("_held", "_by_count", "_most")

    def __init__(self) -> None:
        self._held: Dict[Key, Dict[Item, None]] = {}     # dicts as ordered sets
        self._by_count: Dict[int, Dict[Key, None]] = {}  # count -> the keys holding that many
        self._most = 0

    def add(self, key: Key, item: Item) -> None:
        """`key` now holds `item` too (adding it twice changes nothing)."""
        items = self._held.setdefault(key, {})
        if item in items:
            return
        count = len(items)
        items[item] = None
        if count:
            self._unfile(key, count)
        self._by_count.setdefault(count + 1, {})[key] = None
        self._most = max(self._most, count + 1)

    def remove(self, key: Key, item: Item) -> None:
        """`key` no longer holds `item` (removing what it does not hold changes nothing)."""
        items = self._held.get(key)
        if items is None or item not in items:
            return
        count = len(items)
        del items[item]
        self._unfile(key, count)
        if count > 1:
            self._by_count.setdefault(count - 1, {})[key] = None
        else:
            del self._held[key]
        # The key moved one bucket down, so the next count below the old most is filled
        # (or nothing is left): this loop runs at most twice.
        while self._most and self._most not in self._by_count:
            self._most -= 1

    def count(self, key: Key) -> int:
        return len(self._held.get(key, ()))

    def holds(self, key: Key, item: Item) -> bool:
        return item in self._held.get(key, ())

    def busiest(self) -> Optional[Key]:
        """The key holding the most (the longest-held such key on a tie), or None if none."""
        if not self._most:
            return None
        return next(iter(self._by_count[self._most]))

    def held(self, key: Key) -> Iterable[Item]:
        """What `key` holds, oldest first. Do not change the table while iterating."""
        return self._held.get(key, {}).keys()

    def _unfile(self, key: Key, count: int) -> None:
        bucket = self._by_count[count]
        del bucket[key]
        if not bucket:
            del self._by_count[count]
