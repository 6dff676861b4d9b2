"""The memory budget: what all connections' buffers may hold together, and who is evicted past
it (Redis's maxmemory-clients). No sockets, no clock.
"""
import heapq
from typing import Any, Iterable, List

# What all connections' buffers together may hold (Memory), input and output. Past it, the
# connections that hold the most are dropped, largest first, until the total is under it again:
# so no number of connections, each within its own limits, can make the server's memory grow
# past this plus a fixed cost per connection (README, "Limits"). 128 MiB is a thousand times a
# busy room's traffic per tick. Server.py's --memory-budget sets it.
MEMORY_BUDGET = 128 * 1024 * 1024
# The most connections evicted for the budget in one tick (each eviction frees what that
# connection held; the next tick goes on if the total is still over).
EVICTIONS_PER_TICK = 64
# Output queued since the last flush (Memory.flushed_at) past which the hub flushes between two
# turns (Hub.end_of_tick), not only at the end of the tick. A join storm (10 000 members joining
# rooms of 100) queued 2..3 MB of announcements in one tick's turns, and the allocator keeps such
# a peak after (1 380..1 960 bytes of RSS per idle member, against 1 230..1 430 flushing past
# 2 MiB). A tick's ordinary output stays below it; a flush sent earlier costs more, smaller sends.
PILE_UP = 2 * 1024 * 1024


def bytes_held(conn: Any) -> int:
    """What a connection holds, its share of the total: its output queue (shared output
    counted in full, as if it were its alone), its input the app has not handled, and its input
    its transport holds for it (a UDP session's out-of-order segments, `transport_in`)."""
    return conn.out_bytes + conn.in_bytes + conn.transport_in


class Memory:
    """What every connection's buffers hold, in bytes: the one figure the budget is checked
    against. `output` counts copied output once per copy and shared output once per object;
    `input` is what the app holds of requests not yet handled (its framers' buffers)."""
    __slots__ = ("output", "input", "budget", "flushed_at")

    def __init__(self, budget: int = MEMORY_BUDGET) -> None:
        self.output = 0
        self.input = 0
        self.budget = budget
        self.flushed_at = 0             # `output` when the last flush ended (PILE_UP)

    def flushed(self) -> None:
        self.flushed_at = self.output

    @property
    def total(self) -> int:
        return self.output + self.input

    @property
    def over_budget(self) -> bool:
        return self.output + self.input > self.budget

    def eviction_candidates(self, conns: Iterable[Any]) -> List[Any]:
        """Who is evicted first while the total is over the budget: the connections that hold
        the most, largest first (at most EVICTIONS_PER_TICK), never one that holds nothing
        (evicting it frees nothing). The caller evicts them in this order while over_budget,
        since shared output is freed only with its last holder."""
        largest = heapq.nlargest(EVICTIONS_PER_TICK, conns, key=bytes_held)
        return [conn for conn in largest if bytes_held(conn)]
