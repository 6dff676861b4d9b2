#!/usr/bin/env python3
"""Entry point: parse the command line, wire the parts together, run.

    python3 Server.py [IP] [PORT] [--student-id ID] [--no-udp] [--bus redis://HOST:PORT[/DB]]
                      [--log-level LEVEL]

The module name is the one the course fixes (the one exception to PEP 8 here). All behaviour
lives in protocol.py (what to answer), rooms.py (who is where), transport/ (sockets, the
connection table) and reactor.py (the loop); docs/ARCHITECTURE.md has the map.
"""
import argparse
import logging
import os
import secrets
import select
import socket
import sys
import time
import urllib.parse
from typing import Optional

import reactor
from policy.flood import INPUT_BYTES_PER_SECOND, REQUESTS_PER_SECOND, InputLimits
from policy.memory import MEMORY_BUDGET
from policy.scheduler import STEP_BUDGET, alone_first
from protocol import KILL_FROM_CHOICES, ChatProtocol
from sansio import bus as bus_defaults, udp_stream
from transport.hub import Hub
from transport.redis import RedisLinks
from transport.tcp import TcpListener, listening_socket, open_file_limit
from transport.udp import UdpTransport, bind_tcp_and_udp

DEFAULT_IP = "0.0.0.0"          # every interface
DEFAULT_PORT = 8080
# HELO's StudentID when neither --student-id nor STUDENT_ID is given: a placeholder that says
# plainly that nobody set it.
DEFAULT_STUDENT_ID = "00000000"
# With --bus, how long to wait for Redis before announcing 'listening on' anyway.
BUS_START_WAIT = 10.0
MIB = 1024 * 1024


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="A chat server for the course's chat protocol (see README.md and "
                    "docs/PROTOCOL.md). It runs until KILL_SERVICE, Ctrl-C or SIGTERM.",
        epilog="The address may also be given as one IP:PORT argument ([IPv6]:PORT for IPv6), "
               "and the PORT before the IP. With one positional argument, digits are taken as "
               "the PORT and anything else as the IP. Once listening, it prints 'listening on "
               "IP:PORT' on standard output (the real port, useful with PORT 0).")
    parser.add_argument("ip", nargs="?", default=None,
                        help="address to listen on (default %s)" % DEFAULT_IP)
    parser.add_argument("port", nargs="?", default=None,
                        help="port to listen on, TCP and UDP (default %d; 0 picks a free one)"
                             % DEFAULT_PORT)
    parser.add_argument("--student-id", default=None,
                        help="StudentID reported by HELO (default: the STUDENT_ID environment "
                             "variable if set and not empty, else %s)" % DEFAULT_STUDENT_ID)
    _add_numbers(parser, (
        ("--memory-budget", _positive, "MIB", MEMORY_BUDGET // MIB,
         "what all connections' buffers may hold together, in MiB; past it the connections "
         "holding the most are dropped (default %(default)s)"),
        ("--input-rate", _non_negative, "BYTES", INPUT_BYTES_PER_SECOND,
         "bytes per second one connection may send, in bursts of as much; a faster one is "
         "slowed down, not cut (default %(default)s; 0: no limit)"),
        ("--request-rate", _non_negative, "N", REQUESTS_PER_SECOND,
         "requests per second one connection may send, in bursts of twice as many (default "
         "%(default)s; 0: no limit)")))
    parser.add_argument("--kill-from", choices=KILL_FROM_CHOICES, default="any",
                        help="who may stop the server with KILL_SERVICE: anyone, as the "
                             "protocol says (default), only this machine, or nobody")
    parser.add_argument("--no-udp", dest="udp", action="store_false",
                        help="serve TCP only (by default the protocol is also served over UDP, "
                             "docs/UDP.md, on the same IP and port number)")
    parser.add_argument("--udp-idle-timeout", type=_positive_seconds, metavar="SECONDS",
                        default=udp_stream.IDLE_TIMEOUT,
                        help="a UDP peer silent this long is gone, as a broken TCP connection "
                             "(default %(default)g; its keepalive PINGs scale with it)")
    _add_bus_options(parser)
    _add_numbers(parser, (("--stats-interval", _non_negative, "SECONDS", 0,
                           "log a line of statistics every SECONDS (default 0: never)"),))
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="what to log on standard error (default info)")
    args = parser.parse_args(argv)
    args.ip, args.port = _address(parser, args.ip, args.port)
    args.student_id = _student_id(parser, args.student_id)
    _check_bus_options(parser, args)
    return args


def _add_bus_options(parser):
    """The options of --bus: sharing rooms with other servers through Redis."""
    parser.add_argument("--bus", metavar="redis://HOST:PORT[/DB]", default=None,
                        help="share rooms with every other server started with the same --bus "
                             "and --bus-prefix, through this Redis (see README.md, 'Running "
                             "several servers'; default: none, this process alone)")
    parser.add_argument("--bus-prefix", metavar="NAME", default="chat",
                        help="the Redis keys and channel of this group of servers start with "
                             "NAME: (default %(default)s). Redis's pub/sub ignores /DB, so two "
                             "groups on one Redis need two prefixes")
    _add_numbers(parser, (
        ("--bus-max-rooms", _positive, "N", bus_defaults.MAX_SHARED_ROOMS,
         "the most rooms the group keeps; past it the room empty longest is forgotten "
         "(default %(default)s)"),))


def _check_bus_options(parser, args):
    """--bus becomes (IP, PORT, DB); a --bus-prefix Redis keys cannot carry is refused."""
    if args.bus is not None:
        args.bus = _bus_address(parser, args.bus)
    if not args.bus_prefix or not all(c.isalnum() or c in "-_.:" for c in args.bus_prefix):
        parser.error("--bus-prefix must be letters, digits and -_.: only, not %r"
                     % args.bus_prefix)


def _add_numbers(parser, options):
    """Add options whose value is a number: (flag, parse, metavar, default, help) each."""
    for flag, parse, metavar, default, text in options:
        parser.add_argument(flag, type=parse, metavar=metavar, default=default, help=text)


def _bus_address(parser, url):
    """(IP, PORT, DB) of --bus redis://HOST:PORT[/DB]. The host is looked up once, here: the
    reactor connects to an address without blocking, which a name lookup cannot do."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 6379
        db = int(parts.path.strip("/") or "0")
    except ValueError:
        port = db = -1
    if parts.scheme != "redis" or not parts.hostname or db < 0 or parts.query or parts.username:
        parser.error("--bus must look like redis://HOST:PORT or redis://HOST:PORT/DB, not %r"
                     % url)
    try:
        ip = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        parser.error("--bus: cannot find %s: %s" % (parts.hostname, exc))
    return ip, port, db


def _non_negative(text):
    try:
        value = int(text)
        if value >= 0:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("a whole number of 0 or more, not %r" % text)


def _positive(text):
    value = _non_negative(text)
    if not value:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def _positive_seconds(text):
    try:
        value = float(text)
        if 0 < value <= 24 * 3600:
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("a number of seconds above 0 (at most a day), not %r"
                                     % text)


def _address(parser, ip, port):
    """(IP, PORT) from the positional arguments: `IP PORT`, `PORT IP`, `IP:PORT`, `IP`, `PORT`
    or nothing. An argument that is none of these is refused with a message that says why."""
    if port is None and ip is not None:
        if ip.isdigit():
            ip, port = None, ip                     # PORT alone
        elif ip.count(":") == 1 or (ip.startswith("[") and "]:" in ip):
            ip, _, port = ip.rpartition(":")        # IP:PORT, or [IPv6]:PORT
            ip = ip.strip("[]")
    elif ip is not None and ip.isdigit() and not port.isdigit():
        ip, port = port, ip                         # PORT IP
    try:
        port_number = DEFAULT_PORT if port is None else int(port)
        if not 0 <= port_number <= 65535:
            raise ValueError
    except ValueError:
        parser.error("PORT must be an integer from 0 to 65535, not %r" % port)
    return ip or DEFAULT_IP, port_number


def _student_id(parser, given):
    """--student-id if given, else STUDENT_ID if set and not empty, else the placeholder. An
    explicit empty or unprintable one is refused: HELO's reply is one line per field."""
    if given is None:
        return os.environ.get("STUDENT_ID", "").strip() or DEFAULT_STUDENT_ID
    if not given.strip() or not given.isprintable():
        parser.error("--student-id must be printable text that is not empty, not %r" % given)
    return given.strip()


class NeverBlockingHandler(logging.Handler):
    """Log lines to a file descriptor (standard error), dropping any that cannot be written
    at once. The server has one thread: if standard error is a pipe that nobody reads, a plain
    StreamHandler would block in write() once the pipe is full, and the whole server with it.
    Lines are cut to PIPE_BUF bytes, which a writable pipe takes whole."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")[:select.PIPE_BUF]
            _, writable, _ = select.select([], [self.fd], [], 0)
            if writable:
                os.write(self.fd, line)
            else:
                self.dropped += 1
        except Exception:
            self.handleError(record)


class Wiring:
    """One server's parts, wired: the loop, the hub (the app is given once the port is known:
    `wiring.hub.app = ...`), the TCP listener, with `udp` the UDP transport on the same IP and
    port, and with add_links() the Redis links."""

    def __init__(self, ip: str, port: int, memory_budget: int = MEMORY_BUDGET,
                 limits: Optional[InputLimits] = None, udp: bool = True,
                 udp_idle_timeout: float = udp_stream.IDLE_TIMEOUT) -> None:
        self.loop = reactor.Loop(step_budget=STEP_BUDGET, order=alone_first)
        self.hub = Hub(self.loop, memory_budget=memory_budget, limits=limits,
                       open_file_limit=open_file_limit())
        udp_sock = None
        if udp:
            tcp_sock, udp_sock = bind_tcp_and_udp(ip, port)
        else:
            tcp_sock = listening_socket(ip, port)
        self.tcp = TcpListener(self.hub, tcp_sock)
        self.udp = None if udp_sock is None else UdpTransport(self.hub, udp_sock,
                                                              udp_idle_timeout)
        self.links = None
        self.address = self.tcp.address
        self._closed = False

    def add_links(self, links, address) -> None:
        """Open, read and write the Redis links `links` asks for, to `address`."""
        self.links = RedisLinks(self.loop, links, address, self.hub.apply, self.hub.guarded)

    def run_once(self, timeout=None) -> None:
        self.loop.run_once(timeout)

    def run_forever(self) -> None:
        """Run until stopped, then close everything."""
        try:
            self.loop.run_forever()
        finally:
            self.close()

    def close(self) -> None:
        """Close every connection (sending what the kernel takes at once), the UDP sessions
        (RESET), the links (their last words), the listener and the loop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.hub.close()
        for part in (self.udp, self.links, self.tcp, self.loop):
            if part is not None:
                part.close()


def _mib(size: int) -> str:
    return "%g MiB" % (size / MIB)


class Statistics:
    """The line --stats-interval logs: connections, rooms, memberships, deliveries a second,
    queued output, and how often connections were evicted or throttled since the last line."""

    def __init__(self, hub: Hub, app: ChatProtocol, interval: float) -> None:
        self.hub, self.app, self.interval = hub, app, interval
        self.last = (0, 0, 0)                       # deliveries, evictions, throttles

    def log(self) -> None:
        hub = self.hub
        now = (hub.deliveries, hub.evictions, hub.throttles)
        deliveries, evictions, throttles = (a - b for a, b in zip(now, self.last))
        self.last = now
        service = self.app.service                  # (SharedRooms with --bus)
        bus = getattr(service, "bus", None)
        logging.info("stats: %d connections, %d rooms, %d memberships, %.0f deliveries/s, "
                     "%d bytes of output queued, buffers %d bytes of a %s budget, "
                     "%d evictions, %d throttled%s", len(hub.conns),
                     self.app.rooms.count_rooms(), self.app.rooms.count_memberships(),
                     deliveries / self.interval, hub.memory.output, hub.memory.total,
                     _mib(hub.memory.budget), evictions, throttles,
                     "" if bus is None else "; bus %s, %d outages, %d resubscribed, %d refused, "
                     "%d events read back, %d lost, %d not events" % (
                         "up" if bus.up else "DOWN", bus.outages, bus.resubscribed,
                         service.refused, bus.repaired, bus.lost, bus.bad_events))


def raise_file_limit() -> None:
    """Allow as many connections as the OS lets this process have: one file descriptor each.
    The soft limit (often 1024) is raised to the hard one, which only root can raise."""
    try:
        import resource
    except ImportError:             # not on this OS: live with its default
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logging.warning("could not raise the open-file limit from %s: %s", soft, exc)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    handler = NeverBlockingHandler(sys.stderr.fileno())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    raise_file_limit()
    try:
        server = Wiring(args.ip, args.port, memory_budget=args.memory_budget * MIB,
                        limits=InputLimits(args.input_rate, args.input_rate, args.request_rate,
                                           2 * args.request_rate),
                        udp=args.udp, udp_idle_timeout=args.udp_idle_timeout)
    except OSError as exc:
        logging.error("cannot listen on %s:%s: %s", args.ip, args.port, exc)
        return 1
    ip, port = server.address
    if args.bus is None:
        app = server.hub.app = ChatProtocol(port=port, student_id=args.student_id,
                                            kill_from=args.kill_from)
    else:
        from cluster.shared import SharedRooms     # (only --bus needs it)
        bus_ip, bus_port, db = args.bus
        shared = SharedRooms(
            prefix=args.bus_prefix, db=db, max_rooms=args.bus_max_rooms,
            node=secrets.token_hex(4), bus_address=(bus_ip, bus_port))
        app = server.hub.app = ChatProtocol(port=port, student_id=args.student_id,
                                            kill_from=args.kill_from, service=shared)
        server.add_links(shared, (bus_ip, bus_port))
        _wait_for_bus(server, shared, (bus_ip, bus_port))
    server.loop.stop_on_signals()
    if args.stats_interval:
        stats = Statistics(server.hub, app, args.stats_interval)
        server.loop.call_every(args.stats_interval, lambda: server.hub.guarded(None, stats.log))
    print("listening on %s:%d" % (ip, port), flush=True)
    logging.info("listening on %s:%d, %s (StudentID %s)", ip, port,
                 "TCP and UDP" if args.udp else "TCP only", args.student_id)
    server.run_forever()
    logging.info("stopped by %s", STOPPED_BY.get(server.loop.stopped_by, server.loop.stopped_by))
    return 0


# What stopped the server, for the last log line (reactor.Loop.stopped_by -> words).
STOPPED_BY = {"SIGINT": "SIGINT (Ctrl-C)", "SIGTERM": "SIGTERM",
              "the app's Shutdown": "KILL_SERVICE (its sender is logged above)"}


def _wait_for_bus(server, app, address) -> None:
    """Run the loop until the bus is up (BUS_START_WAIT at most), so that 'listening on' means
    ready; past that, go on: JOINs get ERROR_CODE BUS_UNAVAILABLE until Redis answers."""
    deadline = time.monotonic() + BUS_START_WAIT
    while not app.bus.up and time.monotonic() < deadline:
        server.run_once(0.05)
    if app.bus.up:
        logging.info("bus: redis %s:%d, prefix %r, node %s", *address, app.bus.prefix,
                     app.bus.node)
    else:
        logging.warning("bus: no answer from redis %s:%d within %g s; serving, and retrying",
                        *address, BUS_START_WAIT)


if __name__ == "__main__":
    sys.exit(main())
