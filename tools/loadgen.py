"""Load generator for the chat server: three scenarios, one process, one selectors loop.

    python3 -m tools.loadgen --port 8080 fanout --rooms 10 --members 20 --messages 200
    python3 -m tools.loadgen --port 8080 connections --count 2000 --rooms 10
    python3 -m tools.loadgen --spawn churn --clients 20 --seconds 10

Every wait is bounded by --timeout (the whole run) and --stall (a phase without progress); the
summary is the kit's, exit status 0 only if nothing was missing, failed or timed out.

fanout --rooms R --members M --messages K [--size B]
    Throughput. R rooms of M members join; every member sends K chats (B bytes and a sequence
    number) as fast as the server takes them; every member must receive every chat of its room,
    its own included: R*M*M*K deliveries, counted with ReplyReader.count_chats(). Meanwhile a
    probe, alone in a room, posts every PROBE_INTERVAL and times its own echo. Figures:
    expected, delivered, missing, extra (per member short of or beyond M*K: both must be 0);
    seconds and deliveries_per_s (first chat sent to last delivery: the headline); join_seconds;
    probe_p50_ms/_p99_ms/_max_ms (how long an unrelated client waits while the server is busy),
    probes (echoes timed), probes_lost (never echoed: must be 0), probes_skipped (ticks when
    its last post was still unsent), probe_in_flight_max; loadgen_cpu_s and loadgen_cpu_share
    (this process's CPU in the chat phase / seconds: near 1.0 the generator is the limit).
connections --count N [--rooms R]
    tools/many.py's run (connection i joins room i mod R; one chat in each room must reach
    every member exactly once; then a HELO after all close), with its figures (delivery_seconds
    for its chat_seconds), seconds (first connect to last delivery), loadgen_cpu_s and _share.
churn --clients N --seconds T [--rooms R]
    Each client cycles for T seconds: connect, JOIN one of R rooms, post 1 to CHURN_MAX_CHATS
    chats, then LEAVE (and join again on the same connection), DISCONNECT or vanish (RST). Every
    request must get the replies it is owed within --reply-timeout, strictly (a chat of a room
    the client is not in fails). Figures: operations, ops_per_s and by_kind, replies_expected,
    replies_received, all_replies_received, reply_p50_ms/p99/max, others_messages, loadgen_cpu_s
    and _share (a closed loop: ops_per_s measures generator and server together).

Caveats: the generator shares the machine with the server; it naps --nap between polls, so that
each read returns many messages and it stays well below one core. Quote medians of several runs
and ratios between servers measured alike. The probe posts every PROBE_INTERVAL whether or not
its last post came back: a server that serves each connection a fair share per loop may let
probe posts queue (probe_in_flight_max well above p50/10 ms). Rooms are named after the run
(lg-PID-TIME-...), so that runs do not disturb each other's counts.
"""
import argparse
import collections
import itertools
import os
import random
import select
import sys
if not __package__:   # run as a script (python3 tools/X.py) from any folder: find the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import time
from typing import Callable, Dict, Iterator, List, Optional

from sansio.replies import ChatMessage, ErrorReply
from sansio.wire import chat_request
from tools import kit, many

DEFAULT_TIMEOUT = 60.0          # seconds for the whole run
# A phase that sees no progress at all for this long gives up instead of waiting for the whole
# --timeout: a lost message would otherwise always cost the full minute.
DEFAULT_STALL = 10.0
# Sleep between polls in fanout and connections: deliveries pile up in the kernel meanwhile,
# so one recv() returns hundreds of them and the generator stays cheaper per delivery than the
# server it measures.
DEFAULT_NAP = 0.005
DEFAULT_REPLY_TIMEOUT = 5.0     # churn: the longest any reply may take
PROBE_INTERVAL = 0.010          # fanout: the probe posts every 10 ms
CHURN_MAX_CHATS = 3             # churn: chats per cycle, 1 to this
# churn: a client whose connect failed waits this long before it tries again, so that a server
# that is down costs a few failures a second, not a busy loop.
CHURN_RETRY_DELAY = 0.1


def run_tag() -> str:
    """Distinguishes this run's rooms from those of earlier or concurrent runs."""
    return "lg-%d-%d" % (os.getpid(), int(time.time() * 1000) % 10 ** 8)


def outcome_figures(outcome: str) -> Dict[str, bool]:
    """How the last wait ended, as figures (a failure too, recorded by the kit.Waiter)."""
    return {"timed_out": outcome == "timed out", "stalled": outcome == "stalled"}


def cpu_figures(cpu_before: float, seconds: float) -> Dict[str, float]:
    """This process's CPU time (user and system) since `cpu_before`, and its share of `seconds`."""
    cpu = time.process_time() - cpu_before
    return {"loadgen_cpu_s": round(cpu, 3), "loadgen_cpu_share": round(cpu / seconds, 2)}


# --- fanout ----------------------------------------------------------------------------------

class Fanout(kit.Crowd):
    """fanout's crowd: its chats counted with count_chats(), and a probe, a member alone in a
    room of its own, whose echoes are timed."""

    def __init__(self, loop: kit.Loop, members: List[kit.Member], probe: kit.Member,
                 report: kit.Report) -> None:
        super().__init__(loop, members + [probe], report)
        self.probe = probe
        self.probe_seq = 0
        self.probe_sent: Dict[int, float] = {}
        self.probe_latencies: List[float] = []
        self.probe_skipped = self.probe_in_flight_max = 0

    def received(self, member: kit.Member) -> None:
        if member is not self.probe or self.quota is None:
            super().received(member)
            return
        now = time.monotonic()
        for reply in kit.replies(member.reader):
            seq = reply.message[6:] if isinstance(reply, ChatMessage) else ""
            if (seq.isdigit() and int(seq) in self.probe_sent
                    and reply == ChatMessage(member.ref, member.name, "probe " + seq)):
                self.probe_latencies.append(now - self.probe_sent.pop(int(seq)))
            else:
                self.report.fail("unexpected_message", "probe got %r" % (reply,))

    def send_probe(self, now: float) -> None:
        """Post the next probe message (unless the last one is still unsent: then the server is
        not reading from the probe, and piling more up would time our own queue)."""
        probe = self.probe
        if probe.out:
            self.probe_skipped += 1
            return
        self.probe_seq += 1
        self.probe_sent[self.probe_seq] = now
        self.probe_in_flight_max = max(self.probe_in_flight_max, len(self.probe_sent))
        self.loop.send(probe, chat_request(probe.ref, probe.join_id, probe.name,
                                           "probe %d" % self.probe_seq))

    def progress_line(self) -> str:
        if self.quota is None:
            return super().progress_line()
        expected = self.quota * len(self.owed)
        p50 = kit.latency_summary("probe", self.probe_latencies[-100:])["probe_p50_ms"]
        return ("fanout: %d/%d deliveries (%.0f%%), %.0f/s, probe p50 %s ms"
                % (self.delivered, expected, 100.0 * self.delivered / max(1, expected),
                   self.delivered / max(1e-9, time.monotonic() - self.chat_started),
                   "-" if p50 is None else "%.1f" % p50))

    def chat_phase(self, args: argparse.Namespace, is_done: Callable[[], bool],
                   deadline: float) -> str:
        """How fanout waits for its chats: until every member has its deliveries and the probe
        its echoes, the probe posting every PROBE_INTERVAL; "done", "timed out", "stalled" or
        "connection lost"."""
        next_probe = time.monotonic()
        while not is_done() or self.probe_sent:
            now = time.monotonic()
            if now >= deadline:
                return "timed out"
            # progress is a delivery; once all are in, any input (the probe's last echoes)
            last = self.loop.last_activity if is_done() else self.last_delivery_at
            if now - last > args.stall:
                return "stalled"
            if self.lost_after_join:
                return "connection lost"
            if not is_done() and now >= next_probe:
                self.send_probe(now)
                next_probe = max(next_probe + PROBE_INTERVAL, now)
            # The nap, cut short by the probe's echo so that the echo is timed when it comes.
            wait = args.nap if is_done() else min(args.nap, next_probe - now)
            if wait > 0 and select.select([self.probe.sock], [], [], wait)[0]:
                self.loop.read(self.probe)
            self.loop.poll(0)
            self.report.progress(self.progress_line)
        return "done"


def run_fanout(args: argparse.Namespace, target: kit.Target, report: kit.Report):
    rooms, members_per_room, messages = args.rooms, args.members, args.messages
    expected = rooms * members_per_room * members_per_room * messages
    figures: dict = {"scenario": "fanout", "rooms": rooms, "members": members_per_room,
                     "messages": messages, "size": args.size, "expected": expected,
                     "delivered": 0, "missing": expected, "extra": 0}     # until counted
    kit.enough_files(report, rooms * members_per_room + 1)
    if report.failed:
        return figures, "too few file descriptors"
    started = time.monotonic()
    deadline = started + args.timeout
    tag = run_tag()
    members = [kit.Member("%s-r%d" % (tag, r), "r%dm%d" % (r, m))
               for r in range(rooms) for m in range(members_per_room)]
    loop = kit.Loop(target.address)
    crowd = Fanout(loop, members, kit.Member("%s-probe" % tag, "probe"), report)
    wait = kit.Waiter(loop, report, lambda: report.progress(crowd.progress_line),
                      deadline=deadline, stall=args.stall, nap=args.nap)
    try:
        crowd.join(wait)
        figures["join_seconds"] = round(time.monotonic() - started, 3)
        if wait.outcome != "done" or report.failed:
            return dict(figures, **outcome_figures(wait.outcome)), "the joins failed"
        body = "x" * args.size
        sends = {member: b"".join(chat_request(member.ref, member.join_id, member.name,
                                               "%s %d" % (body, i)) for i in range(messages))
                 for member in members}
        cpu_before = time.process_time()
        wait = kit.Waiter(loop, report, deadline=deadline,
                          until=lambda is_done, end: crowd.chat_phase(args, is_done, end))
        crowd.chat(wait, members_per_room * messages, sends)
        seconds = max(1e-9, (crowd.finished_at or time.monotonic()) - crowd.chat_started)
        figures.update(cpu_figures(cpu_before, seconds))
    finally:
        loop.close_all()
    figures.update(crowd.tally(members))
    if crowd.probe_sent:
        report.fail("probes_lost", "%d probe messages never came back" % len(crowd.probe_sent))
    figures.update(kit.latency_summary("probe", crowd.probe_latencies),
                   **outcome_figures(wait.outcome), seconds=round(seconds, 3),
                   deliveries_per_s=round(crowd.delivered / seconds),
                   probes=len(crowd.probe_latencies), probes_lost=len(crowd.probe_sent),
                   probes_skipped=crowd.probe_skipped,
                   probe_in_flight_max=crowd.probe_in_flight_max)
    return figures, ("%d of %d deliveries in %.2f s (%d/s), probe p99 %s ms"
                     % (crowd.delivered, expected, seconds, figures["deliveries_per_s"],
                        figures["probe_p99_ms"]))


# --- connections -----------------------------------------------------------------------------

def run_connections(args: argparse.Namespace, target: kit.Target, report: kit.Report):
    """tools/many.py's run, its steps bounded as loadgen bounds them."""
    limits = kit.enough_files(report, args.count)
    figures: dict = {"scenario": "connections", "count": args.count, "rooms": args.rooms,
                     "nofile_soft_before": limits["nofile_soft"],
                     "nofile_soft": limits["nofile_soft_raised_to"], "connected": 0,
                     "joined": 0, "delivered": 0, "missing": args.count}    # until counted
    if report.failed:
        return figures, "too few file descriptors"
    cpu_before = time.process_time()
    run = many.Many(target, report, args.count, args.rooms, prefix=run_tag() + "-c",
                    deadline=time.monotonic() + args.timeout, stall=args.stall, nap=args.nap)
    figures.update(run.run(args.stall), **outcome_figures(run.wait.outcome))
    headline = run.headline(figures)
    seconds = (run.crowd.finished_at or time.monotonic()) - run.crowd.started
    figures.update(delivery_seconds=figures.pop("chat_seconds"), seconds=round(seconds, 3),
                   **cpu_figures(cpu_before, seconds))
    return figures, headline


# --- churn -----------------------------------------------------------------------------------

class ChurnConn(kit.Conn, kit.Prober):
    """One connection of churning client `index`: a kit.Prober with a CLIENT_NAME of its own
    (after a vanish the server may announce that the old connection left after the new one has
    joined the same room, and that must not look like a reply to the new one), its requests
    queued for Churn._next to send. `script`: what it does (Churn.cycle); `step`: the request
    whose replies are owed; `phase`: connecting, replies (owed), resting (its connect failed:
    the client tries again at `deadline`) or done."""

    def __init__(self, index: int, serial: int) -> None:
        kit.Conn.__init__(self)
        kit.Prober.__init__(self, "c%d-%d" % (index, serial), self.out.extend, {})
        self.index = index
        self.phase = "connecting"
        self.script: Iterator[str] = iter(())
        self.step: Optional[str] = None
        self.sent_at = 0.0                  # when the request now owed replies was sent
        self.deadline = 0.0                 # for the next reply (resting: for the next try)


class Churn(kit.Handler):
    """Runs every churning client (`clients`: their connections now) on one loop, as the
    arguments say; see the module docstring for the rules."""

    def __init__(self, args: argparse.Namespace, target: kit.Target, report: kit.Report) -> None:
        self.loop = kit.Loop(target.address, self)
        self.rooms = ["%s-churn-%d" % (run_tag(), k) for k in range(args.rooms)]
        self.reply_timeout = args.reply_timeout
        self.rng = random.Random(args.seed)
        self.report = report
        self.clients: List[ChurnConn] = [ChurnConn(i, 0) for i in range(args.clients)]
        self.started = time.monotonic()
        self.stop_at = self.started + args.seconds
        self.ops: Dict[str, int] = collections.Counter()
        self.replies_expected = self.replies_received = 0
        self.latencies: List[float] = []
        self.cycles = 0
        self.background = 0                 # other clients' chats and announcements
        for index in range(args.clients):   # queued: the loop's first poll starts them
            self._new_cycle(index)

    def active(self) -> int:
        return sum(1 for conn in self.clients if conn.phase != "done")

    def tick(self) -> None:
        """After every poll: fail the clients whose reply is late, wake the resting ones that
        are due, and show progress."""
        now = time.monotonic()
        for conn in list(self.clients):
            if conn.phase == "done" or now <= conn.deadline:
                continue
            if conn.phase == "resting":
                self._new_cycle(conn.index)
            else:
                self._fail(conn, "timeout", "no %r within %.1f s"
                           % (self.owed_first(conn), self.reply_timeout))
        self.report.progress(self.progress_line)

    def owed_first(self, conn: ChurnConn) -> object:
        return conn.owed[0] if conn.owed else conn.phase

    def _new_cycle(self, index: int) -> None:
        """Client `index` connects again, or stops if time is up."""
        if time.monotonic() >= self.stop_at:
            self.clients[index].phase = "done"
            return
        self.cycles += 1
        conn = self.clients[index] = ChurnConn(index, self.cycles)
        conn.deadline = time.monotonic() + self.reply_timeout
        self.loop.connect(conn)

    def cycle(self, conn: ChurnConn) -> Iterator[str]:
        """What one connection does, in order: each yield names the request just made, and the
        script goes on once its replies have all come. JOIN, 1 to CHURN_MAX_CHATS chats, then
        vanish, DISCONNECT, or LEAVE and JOIN again on the same connection."""
        numbers = itertools.count(1)
        while True:
            room = self.rng.choice(self.rooms)
            conn.join(room)
            yield "join"
            for _ in range(self.rng.randint(1, CHURN_MAX_CHATS)):
                conn.chat(room, "%s says %d" % (conn.name, next(numbers)))
                yield "chat"
            how = self.rng.choice(("leave", "disconnect", "vanish"))
            if how == "vanish":
                self.ops["vanish"] += 1
                self.loop.close(conn, reset=True)
                return
            if how == "disconnect":
                conn.disconnect()
                yield "disconnect"
                return
            conn.leave(room)
            yield "leave"
            if time.monotonic() >= self.stop_at:
                self.loop.close(conn)
                return
            self.cycles += 1

    def _next(self, conn: ChurnConn) -> None:
        """The last step's replies have all come (it counts): the script's next request, its
        replies owed within --reply-timeout; once the script has ended, a new cycle."""
        if conn.step is not None:
            self.ops[conn.step] += 1
        conn.step = next(conn.script, None)
        if conn.step is None:
            self._new_cycle(conn.index)
            return
        conn.phase = "replies"
        conn.sent_at = time.monotonic()
        conn.deadline = conn.sent_at + self.reply_timeout
        self.replies_expected += len(conn.owed)
        self.loop.send(conn, b"")           # last: a send that fails fails the client

    def _fail(self, conn: ChurnConn, kind: str, detail: str) -> None:
        """Count a failure, drop the connection with RST, start afresh."""
        self.report.fail(kind, "%s: %s" % (conn.name, detail))
        self.loop.close(conn, reset=True)
        self._new_cycle(conn.index)

    def _replied(self, conn: ChurnConn) -> None:
        """The reply owed first has come: the next is owed within --reply-timeout."""
        now = time.monotonic()
        self.replies_received += 1
        self.latencies.append(now - conn.sent_at)
        conn.deadline = now + self.reply_timeout
        if not conn.owed:
            self._next(conn)

    # -- the loop's handler ----------------------------------------------------------------------

    def connected(self, conn: ChurnConn) -> None:
        self.ops["connect"] += 1
        conn.script, conn.step = self.cycle(conn), None
        self._next(conn)

    def connect_failed(self, conn: ChurnConn, exc: OSError) -> None:
        self.report.fail("connect_failed", "%s: %s" % (conn.name, exc))
        conn.phase = "resting"
        conn.deadline = time.monotonic() + CHURN_RETRY_DELAY

    def closed(self, conn: ChurnConn, exc: Optional[OSError]) -> None:
        problem = conn.closed() if exc is None else "%s, owed %r" % (exc, self.owed_first(conn))
        if problem is None:
            self._replied(conn)
        else:
            self._fail(conn, "closed_by_server", problem)

    def received(self, conn: ChurnConn) -> None:
        for reply in kit.replies(conn.reader):
            problem = conn.take(reply)
            if problem is not None:
                self._fail(conn, "error_reply" if isinstance(reply, ErrorReply)
                           else "unexpected_message", problem)
            elif isinstance(reply, ChatMessage) and reply.client_name != conn.name:
                self.background += 1        # another client's chat or announcement
            else:
                self._replied(conn)
            if conn.state != kit.OPEN:      # failed, or its script closed it
                return

    def progress_line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        operations = sum(self.ops.values())
        return ("churn: %d clients active, %d operations (%.0f/s), %d failed"
                % (self.active(), operations, operations / elapsed, self.report.failed))


def run_churn(args: argparse.Namespace, target: kit.Target, report: kit.Report):
    figures: dict = {"scenario": "churn", "clients": args.clients, "rooms": args.rooms,
                     "seconds": args.seconds, "reply_timeout": args.reply_timeout}
    started = time.monotonic()
    cpu_before = time.process_time()
    churn = Churn(args, target, report)
    wait = kit.Waiter(churn.loop, report, churn.tick, deadline=started + args.timeout)
    try:
        wait("the churn", lambda: not churn.active())
    finally:
        churn.loop.close_all()
    elapsed = max(1e-9, time.monotonic() - started)
    operations = sum(churn.ops.values())
    figures.update(
        cycles=churn.cycles, operations=operations, ops_per_s=round(operations / elapsed, 1),
        by_kind={kind: churn.ops.get(kind, 0)
                 for kind in ("connect", "join", "chat", "leave", "disconnect", "vanish")},
        others_messages=churn.background, replies_expected=churn.replies_expected,
        replies_received=churn.replies_received,
        all_replies_received=churn.replies_received == churn.replies_expected)
    figures.update(kit.latency_summary("reply", churn.latencies))
    figures.update(cpu_figures(cpu_before, elapsed), **outcome_figures(wait.outcome))
    if not figures["all_replies_received"] and not report.failed:
        report.fail("replies_missing", "%d replies owed, %d received"
                    % (churn.replies_expected, churn.replies_received))
    return figures, ("%d operations in %.1f s (%.0f/s), reply p99 %s ms"
                     % (operations, elapsed, figures["ops_per_s"], figures["reply_p99_ms"]))


# --- The command line ------------------------------------------------------------------------

def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0, not %s" % text)
    return value


REQUIRED = None
NAP: kit.Option = ("--nap", float, DEFAULT_NAP, "seconds to sleep between polls", 0, None)
# Each scenario: its function, a line of help, and its options (kit.Option: flag, type,
# default or REQUIRED, help, least, most).
SCENARIOS = {
    "fanout": (run_fanout, "R rooms of M members, K messages each", [
        ("--rooms", int, 10, "rooms (R)", 1, None),
        ("--members", int, 20, "members per room (M)", 1, None),
        ("--messages", int, 50, "chats each member sends (K)", 1, None),
        ("--size", int, 32, "bytes of text per chat", 0, None), NAP]),
    "connections": (run_connections, "N connections in R rooms", [
        ("--count", int, REQUIRED, "connections (N)", 1, None),
        ("--rooms", int, 10, "rooms (R)", 1, None), NAP]),
    "churn": (run_churn, "N clients joining, chatting and leaving", [
        ("--clients", int, REQUIRED, "clients (N)", 1, None),
        ("--seconds", positive_float, REQUIRED, "how long they churn (T)", None, None),
        ("--rooms", int, 3, "rooms (R)", 1, None),
        ("--reply-timeout", positive_float, DEFAULT_REPLY_TIMEOUT, "seconds any reply may take",
         None, None)]),
}
# The options of every scenario, before its name or after it (see kit.Tool).
COMMON_OPTIONS: List[kit.Option] = [
    ("--timeout", positive_float, DEFAULT_TIMEOUT, "seconds the whole run may take", None, None),
    ("--stall", positive_float, DEFAULT_STALL, "seconds a phase may go without progress", None,
     None)]


def check_churn(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.scenario == "churn" and args.seconds + args.reply_timeout >= args.timeout:
        parser.error("--seconds plus --reply-timeout must be less than --timeout (%g)"
                     % args.timeout)


TOOL = kit.Tool("loadgen", __doc__, None, COMMON_OPTIONS, check=check_churn,
                scenarios=SCENARIOS,
                epilog="\npython3 -m pydoc tools.loadgen says what each figure means.")
parse_args, main = TOOL.parse_args, TOOL.main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
