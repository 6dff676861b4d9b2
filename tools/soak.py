"""Soak a live chat server: many clients chat in many rooms for a while, some joining,
leaving, disconnecting and vanishing as they go; then check that every chat reached exactly
the members it should have, once each, in order.

    python3 -m tools.soak --spawn --clients 50 --rooms 10 --seconds 30 --rate 5
    python3 -m tools.soak --port 8080 --seconds 10

The clients, on one kit.Loop, chat (--rate per second, Poisson) only in rooms whose
JOINED_CHATROOM they have read and that they have not asked to leave, join a room at most once
and send only valid requests; every chat is "NAME SEQ padding" (one CLIENT_NAME a connection):
- a *recorder* joins every room before anybody else and never leaves or chats;
- *stayers* (1 - --churn of the clients) join 1 to --max-rooms rooms and chat to the end;
- *churners* do the same for a while, then LEAVE some rooms (and go on in the others, or sit
  idle in none), or DISCONNECT, or vanish (RST, sometimes halfway through a request or before
  their chats' echoes came back), each replaced by a new client until the time is up.

The delivery rule, and why it is sound:
- The server handles one request at a time and appends each broadcast (chats, join and leave
  announcements) to every present member's output at once, so a room's broadcasts form one
  history, which the recorder's stream is. For a member M of room R:
      expected(M, R) = recorder's stream of R from "M has joined" to "M has left" inclusive
                       (to the end, if M never left)
  and M's stream must equal it exactly: every chat once, in order, nothing outside it.
- The recorder must have each chat sent exactly once, in per-sender order (a client chats only
  between reading its JOINED_CHATROOM and sending LEAVE or DISCONNECT, and the server handles a
  connection's requests in order); a chat whose sender vanished before its echo came back may
  never have been handled (the RST may beat it): at most once.
- A client that vanished stopped reading at some point: its stream must be a prefix of
  expected(M, R), without the final leave announcement (which goes to the others only).
- Before the check, a barrier completes every stream: every DISCONNECTing client's close, the
  recorder seeing every vanished client leave each of its rooms, then two rounds of HELO from
  every live client (after the second reply, it has read everything queued for it).

Figures (FIGURES): expected_deliveries (the chats of every expected(M, R), and every sent chat
for the recorder), delivered, lost, duplicated, reordered (after a later chat of the same
sender), outside_window (not expected), stream_mismatches (streams that differ from
expected(M, R) in any way, announcements included), members_checked, and the server's RSS over
time (with --spawn). Each of lost to stream_mismatches that is not 0 is also a failure, as is
any ERROR_CODE, unexpected close, or reply other than those each client (a kit.Prober)
predicts for its own requests, in order, and others' chats in its rooms. The rule assumes one
history per room, as "presently in the room" implies for this server; a multi-threaded server
could interleave senders differently per member, and then only the per-sender checks are fair.
"""
import argparse
import collections
import os
import random
import sys
if not __package__:   # run as a script (python3 tools/X.py) from any folder: find the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import time
from typing import Dict, List, Optional, Tuple

from sansio.replies import ChatMessage, ErrorReply, JoinedReply
from sansio.wire import JOINED_TEXT, LEFT_TEXT
from tools import kit

DEFAULT_CLIENTS = 50
DEFAULT_ROOMS = 10
DEFAULT_SECONDS = 30.0
DEFAULT_RATE = 5.0                 # chats per second per chatting client
DEFAULT_CHURN = 0.3                # share of the clients that churn
DEFAULT_MAX_ROOMS = 3              # rooms per client, at most
DEFAULT_MESSAGE_BYTES = 200        # padding of a chat, at most
SETUP_TIMEOUT = 20.0               # for the recorder's and the stayers' joins
DRAIN_TIMEOUT = 30.0               # for each step of the end-of-run barrier
CHURN_LIFE = (0.2, 2.0)            # seconds a churner chats before its next move
RSS_EVERY = 1.0                    # seconds between RSS samples
TICK = 0.01                        # the longest select() wait while chatting
PARTIAL_REQUEST = b"CHAT: 0\nJOIN_ID: 0\nCLIENT_NA"     # what a vanishing client may leave

Event = Tuple  # ("join", name) | ("leave", name) | ("chat", name, seq)
# The figures of the check, and the kind of failure each counts (None: it is no failure).
FIGURES = {"expected_deliveries": None, "delivered": None, "lost": "lost",
           "duplicated": "duplicated", "reordered": "reordered",
           "outside_window": "outside_window", "stream_mismatches": "stream_mismatch",
           "members_checked": None}


def event_of(chat: ChatMessage) -> Optional[Event]:
    """What a CHAT from the server means: a join or leave announcement, or a numbered chat;
    None for a chat this soak did not send."""
    if chat.message == JOINED_TEXT % chat.client_name:
        return ("join", chat.client_name)
    if chat.message == LEFT_TEXT % chat.client_name:
        return ("leave", chat.client_name)
    parts = chat.message.split(" ", 2)
    if len(parts) >= 2 and parts[0] == chat.client_name and parts[1].isdigit():
        return ("chat", chat.client_name, int(parts[1]))
    return None


class Client(kit.Conn, kit.Prober):
    """One connection of the soak: a kit.Prober (the replies to its own requests are predicted
    and checked as they come), and everything it sent and received."""

    def __init__(self, soak: "Soak", cid: int, role: str, rooms: List[str]) -> None:
        kit.Conn.__init__(self)
        kit.Prober.__init__(self, "rec" if role == "recorder" else "c%d" % cid,
                            lambda data: soak.loop.send(self, data), {})
        self.soak = soak
        self.role = role                    # "recorder", "stayer" or "churner"
        self.wanted = rooms                 # the rooms it joins once connected
        self.streams: Dict[int, List[Event]] = collections.defaultdict(list)
        self.phase = "joining"   # joining, active, idle, disconnecting, closed, vanished
        self.sent: List[Tuple[int, int]] = []          # (ref, seq) of every chat: seq 1, 2...
        self.next_chat = float("inf")                   # the recorder never chats
        self.next_move = 0.0                            # churners: when to leave/go
        self.vanished_in: List[int] = []                # refs it was in when it vanished

    def chat_rooms(self) -> List[str]:
        """Where it may chat: rooms whose JOINED it has read, and that it has not left."""
        return [room for room in self.wanted if room in self.refs and room in self.member]

    def left(self, ref: int) -> bool:
        """Has it read its own leave announcement in room `ref`?"""
        return ("leave", self.name) in self.streams.get(ref, ())

    def post(self, rng: random.Random) -> None:
        rooms = self.chat_rooms()
        if not rooms:
            return
        room, seq = rng.choice(rooms), len(self.sent) + 1
        padding = "x" * rng.randint(0, self.soak.args.message_bytes)
        text = "%s %d p%s" % (self.name, seq, padding)
        if rng.random() < 0.1:
            text += "\nsecond line"
        self.chat(room, text)
        self.sent.append((self.refs[room], seq))
        self.soak.chats_sent += 1

    def disconnect(self) -> bool:
        self.phase = "disconnecting"
        return kit.Prober.disconnect(self)

    def vanish(self, rng: random.Random) -> None:
        """RST now, perhaps in the middle of a request. The rooms it has not seen its own leave
        announcement in must announce its leaving to the others."""
        self.vanished_in = [ref for ref in self.refs.values() if not self.left(ref)]
        if rng.random() < 0.5 and not self.out:
            self.soak.loop.send(self, PARTIAL_REQUEST)
        self.phase = "vanished"
        self.soak.loop.close(self, reset=True)


class Soak(kit.Handler):
    def __init__(self, args: argparse.Namespace, target: kit.Target, report: kit.Report) -> None:
        self.args, self.report, self.target = args, report, target
        self.loop = kit.Loop(target.address, self)
        self.wait = kit.Waiter(self.loop, report, self.sample_rss, wait=TICK)
        self.churn_starts: List[float] = []     # when the churners still to come start
        self.rng = random.Random(args.seed)
        self.rooms = ["soak-room-%d" % i for i in range(args.rooms)]
        self.book = kit.RefBook(report)
        self.clients: List[Client] = []
        self.recorder: Optional[Client] = None
        self.chats_sent = 0
        self.moves: Dict[str, int] = collections.Counter()
        self.rss: List[Tuple[float, int]] = []
        self.totals: Dict[str, int] = dict.fromkeys(FIGURES, 0)     # the check's (verify())
        self.started = time.monotonic()

    def violation(self, client: Client, text: str, kind: str = "protocol_violation") -> None:
        """A failure of `kind`; the client goes (with RST): what it expects is out of step."""
        self.report.fail(kind, "%s: %s" % (client.name, text))
        client.phase = "closed"
        self.loop.close(client, reset=True)

    # -- clients ---------------------------------------------------------------------------

    def add_client(self, role: str) -> Client:
        """Connect a new client; it sends its JOINs once connected."""
        most = min(self.args.max_rooms, len(self.rooms))
        rooms = (self.rooms if role == "recorder"
                 else self.rng.sample(self.rooms, self.rng.randint(1, most)))
        client = Client(self, len(self.clients) + 1, role, rooms)
        self.clients.append(client)
        self.loop.connect(client)
        return client

    def live(self) -> List[Client]:
        return [c for c in self.clients if c.phase not in ("closed", "vanished", "disconnecting")]

    # -- the loop's handler ----------------------------------------------------------------

    def connected(self, client: Client) -> None:
        for room in client.wanted:
            client.join(room)

    def connect_failed(self, client: Client, exc: OSError) -> None:
        self.report.fail("connect_failed", "%s could not connect: %s" % (client.name, exc))
        client.phase = "closed"

    def received(self, client: Client) -> None:
        """Check each reply (kit.Prober.take), and keep each chat in the client's streams."""
        for reply in kit.replies(client.reader):
            problem = client.take(reply)
            event = event_of(reply) if isinstance(reply, ChatMessage) else None
            if problem is not None:
                self.violation(client, problem, "error_reply" if isinstance(reply, ErrorReply)
                               else "protocol_violation")
            elif isinstance(reply, ChatMessage) and event is None:
                self.violation(client, "a chat this soak did not send: %r" % (reply,))
            elif event is not None:
                client.streams[reply.ref].append(event)
            elif isinstance(reply, JoinedReply):
                self.book.learn(reply, client.name)
                if client.phase == "joining" and set(client.wanted) <= client.refs.keys():
                    client.phase, now = "active", time.monotonic()   # its first chat and move:
                    if client.role != "recorder" and self.args.rate:
                        client.next_chat = now + self.rng.expovariate(self.args.rate)
                    if client.role == "churner":
                        client.next_move = now + self.rng.uniform(*CHURN_LIFE)
            if client.phase in ("closed", "vanished"):
                return

    def closed(self, client: Client, exc: Optional[OSError]) -> None:
        problem = (client.closed() if client.phase == "disconnecting" and exc is None
                   else "the server closed the connection (%s; state %s)"
                   % (exc or "closed", client.phase))
        if problem is not None:
            self.report.fail("closed_by_server", "%s: %s" % (client.name, problem))
        client.phase = "closed"

    def sample_rss(self) -> None:
        now = time.monotonic()
        kb = self.target.rss_kb() if not self.rss or now - self.rss[-1][0] >= RSS_EVERY else None
        if kb is not None:
            self.rss.append((now, kb))

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Dict[str, object]:
        args = self.args
        self.sample_rss()
        self.recorder = self.add_client("recorder")
        if not self.wait("the recorder's joins", lambda: self.recorder.phase == "active",
                         SETUP_TIMEOUT):
            return {}
        churners = int(round(args.clients * args.churn))
        for _ in range(args.clients - churners):
            self.add_client("stayer")
        self.wait("the stayers' joins", lambda: all(c.phase != "joining" for c in self.clients),
                  SETUP_TIMEOUT)
        self.churn_starts = [time.monotonic() + self.rng.uniform(0, 1) for _ in range(churners)]
        self.loop.run_until(lambda: False, args.seconds, self.chat_tick, wait=TICK)
        self.barrier()
        self.sample_rss()
        figures = self.verify()
        self.loop.close_all()
        figures.update({
            "clients": args.clients, "rooms": args.rooms, "rate": args.rate,
            "chat_seconds": round(args.seconds, 2), "connections": len(self.clients),
            "chats_sent": self.chats_sent, "moves": dict(self.moves)})
        if self.rss:
            figures["server_rss_kb"] = {
                "first": self.rss[0][1], "last": self.rss[-1][1],
                "max": max(kb for _, kb in self.rss),
                "samples": [[round(t - self.started, 1), kb] for t, kb in self.rss]}
        return figures

    def chat_tick(self) -> None:
        """While they chat, after every poll: churners due start, clients due chat or move."""
        now = time.monotonic()
        for start in [start for start in self.churn_starts if start <= now]:
            self.churn_starts.remove(start)
            self.add_client("churner")
        for client in list(self.clients):
            if client.phase == "active" and client.next_chat <= now and self.args.rate:
                client.post(self.rng)
                client.next_chat += self.rng.expovariate(self.args.rate)
                client.next_chat = max(now, client.next_chat)   # behind: do not catch up
            if (client.role == "churner" and client.phase in ("active", "idle")
                    and client.next_move <= now and self.move(client)):
                self.churn_starts.append(now + self.rng.uniform(0, 0.5))
        self.sample_rss()
        self.report.progress(self.progress_line)

    def move(self, client: Client) -> bool:
        """A churner's next move. True if it is gone (and should be replaced)."""
        rng = self.rng
        active = client.chat_rooms()
        if client.phase == "idle" or not active:
            how = rng.choice(["disconnect", "vanish"])
        else:
            how = rng.choice(["leave", "disconnect", "vanish"])
        self.moves[how] += 1
        if how == "leave":
            for room in rng.sample(active, rng.randint(1, len(active))):
                client.leave(room)
            if not client.chat_rooms():
                client.phase = "idle"          # in no room: must now receive nothing
            client.next_move = time.monotonic() + rng.uniform(*CHURN_LIFE)
            return False
        if how == "disconnect":
            client.disconnect()
        else:
            client.vanish(rng)
        return True

    def barrier(self) -> None:
        """Make every stream complete (see the module docstring)."""
        self.wait("DISCONNECTed clients to be closed",
                  lambda: all(c.phase != "disconnecting" for c in self.clients), DRAIN_TIMEOUT)
        owed = {(ref, c.name) for c in self.clients if c.phase == "vanished"
                for ref in c.vanished_in}
        self.wait("the recorder to see vanished clients leave",
                  lambda: owed <= self.recorder.leaves_seen, DRAIN_TIMEOUT)
        for tag in ("sync1", "sync2"):
            live = self.live()
            for client in live:
                client.helo("%s %s" % (tag, client.name))
            self.wait("the %s HELO replies" % tag,
                      lambda: all(not c.owed or c.phase == "closed" for c in live), DRAIN_TIMEOUT)

    # -- the check -------------------------------------------------------------------------

    def verify(self) -> Dict[str, object]:
        """Apply the delivery rule of the module docstring to every stream."""
        history = {ref: self.recorder.streams.get(ref, []) for ref in set(self.book.refs.values())}
        # 1. the recorder against what was sent: each chat must arrive (1), or may (0: its
        # sender vanished before the echo came back)
        sent: Dict[int, Dict[Event, int]] = collections.defaultdict(dict)
        for client in self.clients:
            for ref, seq in client.sent:
                event = ("chat", client.name, seq)      # its echo, in its own stream
                certain = client.phase != "vanished" or event in client.streams.get(ref, ())
                sent[ref][event] = 1 if certain else 0
        for ref, events in history.items():
            self._tally("recorder", ref, sent.get(ref, {}), events)
        # 2. every member against its part of the room's history
        for client in [c for c in self.clients if c is not self.recorder]:
            for ref in client.refs.values():
                self.totals["members_checked"] += 1
                self._check_member(client, ref, history.get(ref, []))
        return dict(self.totals)

    def _fault(self, kind: str, who: str, ref: int, what: str, count: int = 1) -> None:
        """`count` more of figure `kind` (a failure of that kind, named in FIGURES)."""
        self.totals[kind] += count
        self.report.fail(FIGURES[kind], "%s in room %d: %s" % (who, ref, what))

    def _tally(self, who: str, ref: int, want: Dict[Event, int], stream: List[Event]) -> None:
        """Count, and report, the chats of `stream` that `want` (chat -> 1: must arrive, 0:
        may) lacks, that came more than once, that it does not list, or that came after a
        later chat of the same sender."""
        chats = [event for event in stream if event[0] == "chat"]
        got = collections.Counter(chats)
        for chat, must in want.items():
            self.totals["expected_deliveries"] += must
            self.totals["delivered"] += min(got[chat], must)
            if got[chat] < must:
                self._fault("lost", who, ref, "lacks %r" % (chat,))
        for chat, n in got.items():
            if n > 1:
                self._fault("duplicated", who, ref, "got %r %d times" % (chat, n), n - 1)
            if chat not in want:
                self._fault("outside_window", who, ref, "got %r outside its window" % (chat,))
        last: Dict[str, int] = collections.defaultdict(int)     # sender -> highest seq so far
        for _chat, name, seq in chats:
            if seq < last[name]:
                self._fault("reordered", who, ref, "%s's chat %d after its chat %d"
                            % (name, seq, last[name]))
            last[name] = max(seq, last[name])

    def _check_member(self, client: Client, ref: int, events: List[Event]) -> None:
        name = client.name
        stream = client.streams.get(ref, [])
        joins = [i for i, e in enumerate(events) if e == ("join", name)]
        leaves = [i for i, e in enumerate(events) if e == ("leave", name)]
        if len(joins) != 1 or len(leaves) > 1:
            self._fault("stream_mismatches", name, ref, "the recorder saw its join %d times and"
                        " its leave %d times" % (len(joins), len(leaves)))
            return
        # A client that vanished while in the room read an unknown part of its window (it may
        # lose chats, never gain them); one that read its own leave announcement read it all.
        vanished = client.phase == "vanished" and not client.left(ref)
        if vanished and not leaves:
            self._fault("stream_mismatches", name, ref,
                        "it vanished, and its leaving was never announced")
        expected = events[joins[0]:leaves[0] + 1] if leaves else events[joins[0]:]
        self._tally(name, ref, {e: 0 if vanished else 1 for e in expected if e[0] == "chat"},
                    stream)
        prefix = stream == expected[:len(stream)] and ("leave", name) not in stream
        if not (prefix if vanished else stream == expected):    # vanished: a prefix, no leave
            first = next((i for i, (a, b) in enumerate(zip(stream, expected)) if a != b),
                         min(len(stream), len(expected)))
            self._fault("stream_mismatches", name, ref, "(%s) the stream differs from the room's"
                        " history at event %d: got %r, expected %r (%d events vs %d)"
                        % (client.phase, first, stream[first:first + 2],
                           expected[first:first + 2], len(stream), len(expected)))

    def progress_line(self) -> str:
        rss = self.rss[-1][1] if self.rss else None
        return ("%d chats sent, %d clients live, %d connections so far%s"
                % (self.chats_sent, len(self.live()), len(self.clients),
                   ", server RSS %d kB" % rss if rss else ""))


def run_soak(args: argparse.Namespace, target: kit.Target, report: kit.Report):
    kit.raise_nofile_limit()
    figures = Soak(args, target, report).run()
    return figures, ("%s of %s deliveries checked, %s chats sent"
                     % (figures.get("delivered"), figures.get("expected_deliveries"),
                        figures.get("chats_sent")))


OPTIONS: List[kit.Option] = [
    ("--clients", int, DEFAULT_CLIENTS, "clients at any one time, besides the recorder", 1, None),
    ("--rooms", int, DEFAULT_ROOMS, "rooms", 1, None),
    ("--rate", float, DEFAULT_RATE, "chats per second per client", 0, None),
    ("--churn", float, DEFAULT_CHURN, "share of clients that leave, disconnect or vanish", 0, 1),
    ("--max-rooms", int, DEFAULT_MAX_ROOMS, "rooms per client, at most", 1, None),
    ("--message-bytes", int, DEFAULT_MESSAGE_BYTES, "padding per chat, at most", 0, None)]


TOOL = kit.Tool("soak", __doc__, run_soak, OPTIONS, (DEFAULT_SECONDS, "how long they chat"))
parse_args, main = TOOL.parse_args, TOOL.main

if __name__ == "__main__":
    sys.exit(main())
