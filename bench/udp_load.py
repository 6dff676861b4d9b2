#!/usr/bin/env python3
"""Deliveries per second over UDP, and bytes sent per byte delivered, against a real Server.py.

    python3 -m bench.udp_load [--members 10] [--messages 1000] [--size 100] [--loss 0.1]
                              [--window 20] [--seed 1] [--timeout 120] [--server-dir DIR]

(from the repository's top folder; --server-dir measures another checkout's Server.py with
this one's clients)

It starts Server.py on a free port of 127.0.0.1 (flood control off: the transport is measured, not
the limits), opens MEMBERS UDP sessions (sansio.udp_client.ClientEndpoint on real sockets, all in
this process), joins them to one room, then has each send MESSAGES chats of SIZE characters,
keeping at most WINDOW of its own on their way (sent, and not yet back to it from the room): a
closed loop, as people chat, rather than everybody's whole backlog at once, which would measure the
server's flow control instead. Each member receives every chat, so deliveries = MEMBERS x MEMBERS x
MESSAGES. With --loss,
every datagram either way is dropped with that probability in this process, drawn from a
seeded generator: a lossy link in both directions, without a relay's cost.

It prints deliveries/s (from the first chat queued to the last delivered), and for each
direction the UDP payload bytes sent (every datagram handed to the network, lost or not) per
stream byte delivered to the other side: the transport's overhead, headers and ACKs at 0 %
loss, plus retransmissions with loss. Then a JSON line. The clients share the machine with the
server: on a small one they may be what limits the rate. Standard library only.
"""
import argparse
import json
import random
import select
import socket
import sys
import time

from sansio import udp_client, udp_stream, udp_wire
from sansio.replies import ChatMessage, JoinedReply, ReplyReader
from sansio.wire import chat_request, join_request
from tools.kit import HOST, ServerProcess, require_server_dir

MAX_ROUNDS = 10 ** 7        # bound on the select() loop, beyond --timeout


class Member:
    """One UDP session; `lossy` drops datagrams both ways (None: no loss)."""

    def __init__(self, server, lossy, counters):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.endpoint = udp_client.ClientEndpoint(server, time.monotonic())
        self.server = server
        self.lossy = lossy
        self.counters = counters
        self.reader = ReplyReader()
        self.ref = None
        self.name = ""
        self.chats = 0
        self.own = 0                # its own chats back from the room
        self.sent = 0
        self.flush(time.monotonic())

    def send(self, data):
        self.counters["up_stream"] += len(data)
        now = time.monotonic()
        self.endpoint.send_stream(data, now)
        self.flush(now)

    def readable(self, now):
        for _ in range(256):
            try:
                data, src = self.sock.recvfrom(udp_wire.MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            self.counters["down_bytes"] += len(data)
            if self.lossy is not None and self.lossy.random() < self.lossy.loss:
                continue
            self.endpoint.datagram_received(data, src, now)
        self.flush(now)

    def timer(self, now):
        due = self.endpoint.next_deadline()
        if due is not None and now >= due:
            self.endpoint.timer(now)
            self.flush(now)

    def flush(self, now):
        for data, addr in self.endpoint.datagrams_to_send(now):
            self.counters["up_bytes"] += len(data)
            if self.lossy is not None and self.lossy.random() < self.lossy.loss:
                continue
            self.sock.sendto(data, addr)
        for event in self.endpoint.events():
            if isinstance(event, udp_stream.StreamData):
                self.counters["down_stream"] += len(event.data)
                self.reader.receive_data(event.data)
                while True:
                    reply = self.reader.maybe_next_reply()
                    if reply is None:
                        break
                    if isinstance(reply, JoinedReply):
                        self.ref = reply.ref
                    elif isinstance(reply, ChatMessage) and reply.message.startswith("m "):
                        self.chats += 1
                        self.own += reply.client_name == self.name
            elif isinstance(event, udp_stream.SessionClosed):
                raise SystemExit("a session ended: %s" % event.reason)


def serve(members, predicate, timeout):
    end = time.monotonic() + timeout
    socks = {m.sock: m for m in members}
    for _ in range(MAX_ROUNDS):
        if predicate():
            return True
        now = time.monotonic()
        if now >= end:
            return False
        wait = min(0.05, end - now)
        for member in members:
            due = member.endpoint.next_deadline()
            if due is not None:
                wait = min(wait, max(0.0, due - now))
        readable, _, _ = select.select(list(socks), [], [], wait)
        now = time.monotonic()
        for sock in readable:
            socks[sock].readable(now)
        for member in members:
            member.timer(now)
    return predicate()


def run(args):
    server = ServerProcess("--input-rate", "0", "--request-rate", "0",
                           server_dir=args.server_dir)
    try:
        lossy = None
        if args.loss:
            lossy = random.Random(args.seed)
            lossy.loss = args.loss
        counters = dict.fromkeys(("up_bytes", "up_stream", "down_bytes", "down_stream"), 0)
        members = [Member((HOST, server.port), lossy, counters) for _ in range(args.members)]
        for i, member in enumerate(members):
            member.send(join_request("bench", "m%d" % i))
        if not serve(members, lambda: all(m.ref is not None for m in members), args.timeout):
            raise SystemExit("not every member joined within %g s" % args.timeout)
        serve(members, lambda: False, 0.5)          # the join announcements, out of the count
        for key in counters:
            counters[key] = 0
        text = ("m " + "x" * args.size)[:max(args.size, 3)]
        for i, member in enumerate(members):
            member.chats = member.own = 0
            member.name = "m%d" % i

        def top_up():
            for member in members:
                while member.sent < args.messages and member.sent - member.own < args.window:
                    member.sent += 1
                    member.send(chat_request(member.ref, 0, member.name, text))
            return all(m.chats >= expected for m in members)
        expected = args.members * args.messages
        started = time.monotonic()
        done = serve(members, top_up, args.timeout)
        took = time.monotonic() - started
        delivered = sum(m.chats for m in members)
        result = {
            "members": args.members, "messages": args.messages, "size": args.size,
            "window": args.window, "loss": args.loss, "seed": args.seed, "complete": done,
            "deliveries": delivered, "seconds": round(took, 3),
            "deliveries_per_s": round(delivered / took),
            "up_bytes_per_stream_byte": round(counters["up_bytes"] / counters["up_stream"], 3),
            "down_bytes_per_stream_byte": round(counters["down_bytes"]
                                                / max(1, counters["down_stream"]), 3),
            "retransmissions_up": sum(m.endpoint.stats().get("retransmissions", 0)
                                      for m in members),
        }
        print("%d members x %d messages of %d chars, loss %g: %d deliveries in %.2f s = %d/s; "
              "bytes sent per stream byte delivered: clients %.3f, server %.3f%s"
              % (args.members, args.messages, args.size, args.loss, delivered, took,
                 result["deliveries_per_s"], result["up_bytes_per_stream_byte"],
                 result["down_bytes_per_stream_byte"], "" if done else " (INCOMPLETE)"))
        print(json.dumps(result))
        return 0 if done else 1
    finally:
        server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--window", type=int, default=20,
                        help="chats of its own a member keeps on their way (default 20)")
    parser.add_argument("--size", type=int, default=100, help="characters per chat")
    parser.add_argument("--loss", type=float, default=0.0,
                        help="probability that a datagram is lost, each way (default 0)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--server-dir", default=None,
                        help="the checkout whose Server.py is measured (default: this one)")
    args = parser.parse_args(argv)
    if args.server_dir is not None:
        require_server_dir(parser, args.server_dir)
    if not (1 <= args.members <= 200 and 1 <= args.messages <= 100000 and 1 <= args.window
            and 1 <= args.size <= 60000 and 0 <= args.loss < 1 and 0 < args.timeout <= 3600):
        parser.error("members 1..200, messages 1..100000, window 1 or more, size 1..60000, "
                     "loss in [0, 1), timeout up to 3600 s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
