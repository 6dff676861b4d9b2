#!/usr/bin/env python3
"""What the room service of a bus node spends per chat beyond one node alone's, without sockets.

    python3 -m bench.bus_path [--rooms 10] [--members 5] [--chats 6] [--ticks 200] [--repeat 5]

(from the repository's top folder; needs nothing else: Redis is played by this script)

The CPU figures of bench/bus_cpu.py come from whole processes on a shared machine, and move by
10 to 30 % from one round to the next. This measures only the Python a chat costs, the same way
every time: ROOMS rooms of MEMBERS members, each member sending CHATS chats a tick, handled by
protocol.ChatProtocol over
    alone  rooms.LocalRooms: each chat's Broadcast made at once;
    bus    cluster.shared.SharedRooms with its links up (tests/test_bus_core.py's harness): the
           tick's chats taken as one call of the chats script, the reply (each room's first
           number) and each room's published batch fed back as Redis sends them, written
           beforehand by this script, and the Broadcasts handed out.
No hub, no sockets, no Redis: what is left is what a node's code does per chat. process_time()
of the ticks (the replies are built before the clock starts), the best of REPEAT runs, per chat,
and for the bus its parts: the requests (up to the chats held for the tick), taking and encoding
the call, its reply, reading the published batches, and the actions handed out for them.
"""
import argparse
import sys
import time
import unittest
from typing import Dict, List, Tuple

from protocol import ChatProtocol
from rooms import LocalRooms
from sansio.wire import chat_request, join_request
from tests.bus_harness import batch, pushed, resp
from tests.test_bus_core import SharedHarness

TEXT = "chat number %d of this member"
PARTS = ("requests", "take+encode", "reply", "sub-read", "actions")


def requests(args: argparse.Namespace, members: Dict[int, List[int]]) -> List[list]:
    """Each tick's bytes from each member of each room: CHATS chats in one piece."""
    return [[[b"".join(chat_request(r, 1, "m%d" % c, TEXT % (tick * args.chats + k))
                       for k in range(args.chats))
              for c in members[r]] for r in range(args.rooms)] for tick in range(args.ticks)]


def send(proto: ChatProtocol, members: Dict[int, List[int]], tick: list,
         args: argparse.Namespace) -> int:
    """One tick's requests, each member's handled in turn; how many chats."""
    chats = 0
    for room in range(args.rooms):
        for conn, data in zip(members[room], tick[room]):
            proto.data_received(conn, data)
            for _ in range(args.chats):
                proto.maybe_next_actions(conn)
                chats += 1
    return chats


def alone(args: argparse.Namespace) -> float:
    proto = ChatProtocol(9999, "1", service=LocalRooms(clock=time.monotonic))
    members: Dict[int, List[int]] = {r: [] for r in range(args.rooms)}
    for conn in range(1, args.rooms * args.members + 1):
        room = (conn - 1) // args.members
        proto.connection_made(conn, "127.0.0.1", "127.0.0.1")
        proto.data_received(conn, join_request("r%d" % room, "m%d" % conn))
        proto.maybe_next_actions(conn)
        members[room].append(conn)
    ticks, chats, started = requests(args, members), 0, time.process_time()
    for tick in ticks:
        chats += send(proto, members, tick, args)
    return (time.process_time() - started) / chats * 1e6


def bus(args: argparse.Namespace) -> Tuple[float, List[float]]:
    h = SharedHarness(unittest.TestCase())
    members: Dict[int, List[int]] = {r: [] for r in range(args.rooms)}
    seq = {r: 0 for r in range(args.rooms)}
    for conn in range(1, args.rooms * args.members + 1):
        room = (conn - 1) // args.members
        h.request(conn, join_request("r%d" % room, "m%d" % conn))
        seq[room] += 1
        h.publish(b"J %d %d me %d %d 0\nr%d\nm%d" % (room, seq[room], conn, conn, room, conn))
        h.reply([room, conn, seq[room], 0, int(not members[room])])
        h.actions()
        members[room].append(conn)
    proto, shared, now = h.proto, h.shared, h.now
    redis = []                                  # per tick: the call's reply, the batches
    for tick in range(args.ticks):
        firsts, published = [], []
        for room in range(args.rooms):
            sent = [(c, "m%d" % c, TEXT % (tick * args.chats + k))
                    for c in members[room] for k in range(args.chats)]
            firsts.append(seq[room] + 1)
            published.append(pushed(batch(room, seq[room] + 1, sent, node="me")))
            seq[room] += len(sent)
        redis.append((resp(" ".join(map(str, firsts)).encode()), b"".join(published)))
    ticks, chats, parts = requests(args, members), 0, [0.0] * len(PARTS)
    clock, deliveries = time.process_time, 0
    started = clock()
    for tick, (reply, published) in zip(ticks, redis):
        t0 = clock()
        chats += send(proto, members, tick, args)
        t1 = clock()
        shared.link_output("cmd")
        t2 = clock()
        shared.link_data("cmd", reply, now)
        t3 = clock()
        shared.link_data("sub", published, now)
        t4 = clock()
        deliveries += sum(len(action.conn_ids) * action.messages
                          for action in shared.link_actions())
        t5 = clock()
        for i, (begun, ended) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
            parts[i] += ended - begun
    took = clock() - started
    if deliveries != chats * args.members:
        raise RuntimeError("%d deliveries for %d chats" % (deliveries, chats))
    return took / chats * 1e6, [part / chats * 1e6 for part in parts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--chats", type=int, default=6, help="chats a member sends a tick (6)")
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; the best (5)")
    args = parser.parse_args(argv)
    one = min(alone(args) for _ in range(args.repeat))
    runs = [bus(args) for _ in range(args.repeat)]
    shared, parts = min(runs)
    print("%d rooms of %d, %d chats a member a tick (%d chats a batch, %d a call), best of %d:"
          % (args.rooms, args.members, args.chats, args.members * args.chats,
             args.rooms * args.members * args.chats, args.repeat))
    print("  alone %.2f µs a chat; bus %.2f (%s); the bus's extra %.2f µs a chat"
          % (one, shared, ", ".join("%s %.2f" % part for part in zip(PARTS, parts)),
             shared - one))
    return 0


if __name__ == "__main__":
    sys.exit(main())
