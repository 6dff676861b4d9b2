"""A lossy UDP relay, for tests and demos of the UDP transport (docs/UDP.md).

    python3 -m tools.relay --listen 127.0.0.1:P --to 127.0.0.1:Q [--loss 0.2] [--dup 0.05]
                           [--reorder 0.1] [--delay MS] [--seed N] [--seconds S]

It listens on P. A datagram from anywhere but Q goes on to Q, sent from P, and its source
becomes the relay's *peer*; a datagram from Q goes back to the peer. So, seen from Q, the peer
is at P, as behind a NAT. Each datagram, either way, is dropped (--loss), sent twice (--dup),
held back so that later ones overtake it (--reorder), and delayed by --delay milliseconds, all
drawn in arrival order from one random generator seeded by --seed: the same traffic meets the
same fate in every run. It stops by itself after --seconds, and prints one line of counts.

One relay per direction of a UDP chat session, as docs/UDP.md's callbacks allow:

    client session socket --> relay A (--to server) --> server   (the session's source: A)
    client callback socket <-- relay B (--to server) <-- server  (the JOIN names B's address)

The client sends its KNOCKs from its callback socket to B, so that they reach the server from
B's address, and takes what arrives from B as coming from the server.
"""
import argparse
import heapq
import random
import select
import socket
import sys
import time
from typing import List, Optional, Tuple

# Datagrams held for their delay at once; past it a datagram is dropped (as a full router
# queue would), so a flood cannot make the relay's memory grow.
MAX_HELD = 10000
# A reordered datagram is held this much longer than the others (on top of --delay), so that
# the ones after it overtake it: twice the delay, and at least 10 ms so that it happens even
# with no delay.
MIN_REORDER_HOLD = 0.010
# The largest datagram relayed; the UDP transport's are at most 1 200 bytes, and a larger one
# arrives cut to this plus one, which the receiver then drops as too long.
MAX_DATAGRAM = 65535
# Datagrams read per round, so that sending what is due is never starved by a flood.
READS_PER_ROUND = 256
DEFAULT_SECONDS = 60.0
MAX_SECONDS = 24 * 3600.0

Address = Tuple[str, int]


class Impairment:
    """The fate of each datagram, drawn from a seeded random generator: the delays at which to
    send its copies (none: dropped; two: duplicated)."""

    def __init__(self, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 delay: float = 0.0, seed: int = 0) -> None:
        for name, value in (("loss", loss), ("dup", dup), ("reorder", reorder)):
            if not 0.0 <= value <= 1.0:
                raise ValueError("%s must be a probability from 0 to 1, not %r" % (name, value))
        if not 0.0 <= delay <= 60.0:
            raise ValueError("delay must be 0 to 60 seconds, not %r" % delay)
        self.loss, self.dup, self.reorder, self.delay = loss, dup, reorder, delay
        self.hold = max(2 * delay, MIN_REORDER_HOLD)
        self._rng = random.Random(seed)
        self.dropped = self.duplicated = self.reordered = 0

    def fates(self) -> List[float]:
        rng = self._rng
        if rng.random() < self.loss:
            self.dropped += 1
            return []
        copies = 1
        if rng.random() < self.dup:
            copies = 2
            self.duplicated += 1
        delays = []
        for _ in range(copies):
            if rng.random() < self.reorder:
                self.reordered += 1
                delays.append(self.delay + self.hold)
            else:
                delays.append(self.delay)
        return delays


class Relay:
    """One relay socket: `run()` forwards with `impairment` until its time is up."""

    def __init__(self, listen: Address, to: Address, impairment: Impairment) -> None:
        self.to = (socket.gethostbyname(to[0]), to[1])
        self.impairment = impairment
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(listen)
        self.sock.setblocking(False)
        self.address: Address = self.sock.getsockname()
        self.peer: Optional[Address] = None
        self._held: List[Tuple[float, int, bytes, Address]] = []   # (when, order, data, to)
        self._order = 0
        self.received = self.sent = self.unroutable = self.overflow = 0

    def run(self, seconds: float) -> None:
        """Relay for `seconds`, then return."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                return
            self._send_due(now)
            wait = end - now
            if self._held:
                wait = min(wait, max(0.0, self._held[0][0] - now))
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                self._read(time.monotonic())

    def _read(self, now: float) -> None:
        for _ in range(READS_PER_ROUND):
            try:
                data, src = self.sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:             # an ICMP error for an earlier datagram: ignore it
                continue
            self.received += 1
            if src == self.to:
                dst = self.peer
                if dst is None:         # nobody has sent through us yet: nowhere to go
                    self.unroutable += 1
                    continue
            else:
                self.peer = src
                dst = self.to
            for delay in self.impairment.fates():
                if len(self._held) >= MAX_HELD:
                    self.overflow += 1
                    continue
                self._order += 1
                heapq.heappush(self._held, (now + delay, self._order, data, dst))

    def _send_due(self, now: float) -> None:
        held = self._held
        while held and held[0][0] <= now:
            _when, _order, data, dst = heapq.heappop(held)
            try:
                self.sock.sendto(data, dst)
                self.sent += 1
            except OSError:             # full or unreachable: lost, as on a network
                self.overflow += 1

    def summary(self) -> str:
        imp = self.impairment
        return ("relay %s:%d: received %d, sent %d, dropped %d, duplicated %d, reordered %d, "
                "unroutable %d, overflow %d" % (self.address + (
                    self.received, self.sent, imp.dropped, imp.duplicated, imp.reordered,
                    self.unroutable, self.overflow)))

    def close(self) -> None:
        self.sock.close()


def _address(text: str) -> Address:
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected IP:PORT, not %r" % text)
    return host, int(port)


def _probability(text: str) -> float:
    try:
        value = float(text)
        if 0.0 <= value <= 1.0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("a probability from 0 to 1, not %r" % text)


def _bounded(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
            if low <= value <= high:
                return value
        except ValueError:
            pass
        raise argparse.ArgumentTypeError("a number from %g to %g, not %r" % (low, high, text))
    return parse


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m tools.relay", description=__doc__.split("\n\n")[0],
        epilog="Once listening it prints 'relaying IP:PORT <-> IP:PORT' (the real port, "
               "useful with --listen IP:0); at the end, one line of counts.")
    parser.add_argument("--listen", type=_address, required=True, metavar="IP:PORT",
                        help="where to listen (port 0 picks a free one)")
    parser.add_argument("--to", type=_address, required=True, metavar="IP:PORT",
                        help="where to forward (the server)")
    parser.add_argument("--loss", type=_probability, default=0.0,
                        help="probability that a datagram is dropped (default 0)")
    parser.add_argument("--dup", type=_probability, default=0.0,
                        help="probability that a datagram is sent twice (default 0)")
    parser.add_argument("--reorder", type=_probability, default=0.0,
                        help="probability that a datagram is held back for later ones to "
                             "overtake (default 0)")
    parser.add_argument("--delay", type=_bounded(0, 60000), default=0.0, metavar="MS",
                        help="delay of every datagram, in milliseconds (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--seconds", type=_bounded(0, MAX_SECONDS), default=DEFAULT_SECONDS,
                        help="stop after this long (default %g)" % DEFAULT_SECONDS)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    impairment = Impairment(args.loss, args.dup, args.reorder, args.delay / 1000.0, args.seed)
    try:
        relay = Relay(args.listen, args.to, impairment)
    except OSError as exc:
        print("relay: cannot listen on %s:%d: %s" % (args.listen + (exc,)), file=sys.stderr)
        return 1
    print("relaying %s:%d <-> %s:%d" % (relay.address + relay.to), flush=True)
    try:
        relay.run(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        relay.close()
    print(relay.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
