#!/usr/bin/env python3
"""Soak a live chat server: many clients chat in many rooms for a while, some joining,
leaving, disconnecting and vanishing as they go; then check that every chat reached exactly
the members it should have, once each, in order.

    python3 tools/soak.py --spawn --clients 50 --rooms 10 --seconds 30 --rate 5
    python3 tools/soak.py --port 8080 --seconds 10
    python3 tools/soak.py --help

The clients (all in one `selectors` loop, every byte read as it arrives):
- a *recorder*, which joins every room before anybody else and never leaves or chats;
- *stayers* (1 - --churn of the clients), which join 1 to --max-rooms rooms at the start and
  chat until the end;
- *churners*, which connect, join 1 to --max-rooms rooms, chat for a while and then LEAVE some
  rooms (and go on in the others, or sit idle in none), or DISCONNECT, or vanish (RST, sometimes
  halfway through a request, sometimes with chats whose echo has not come back yet). Each one
  that goes is replaced by a new client, until the time is up.
Every chat is "NAME SEQ padding", so each carries its sender (a unique CLIENT_NAME per
connection) and a sequence number. A client chats (at --rate messages per second, Poisson) only
in rooms whose JOINED_CHATROOM it has read and that it has not asked to leave, joins each room
at most once in its life, and sends only valid requests.

The delivery rule, and why it is sound:
- The server handles one request at a time and appends each broadcast to every present
  member's output at once (PROTOCOL.md: "sends to every client presently in the room"; the
  join and leave announcements are broadcasts too). So the chats, joins and leaves of one room
  form one sequence, the room's history, and each member's stream of that room is the part of
  the history from its own join announcement to its own leave announcement.
- The recorder joined every room before any other client existed, so its stream of a room is
  the whole history from then on. Then, for a member M of room R:
      expected(M, R) = recorder's stream of R from "M has joined" to "M has left" inclusive
                       (to the end, if M never left)
  and M's stream of R must equal expected(M, R) exactly: every chat in it exactly once, in the
  same order (so in per-sender order), and nothing before its join or after its leave.
- The recorder is checked against what was sent: every chat a client sent reaches the recorder
  exactly once, in per-sender order. A client only chats between reading its JOINED_CHATROOM and
  sending its LEAVE or DISCONNECT, and the server handles one connection's requests in order,
  so each of those chats was handled while its sender was a member, and must be in the history.
  The exception: a chat sent by a client that then vanished before its echo came back may or
  may not have been handled (the RST may beat it), so it must appear at most once.
- A client that vanished stopped reading at some point: its stream must be a prefix of
  expected(M, R) without the final leave announcement (which is sent to the others only).
- Before checking, a barrier makes sure every stream is complete: wait for every DISCONNECTing
  client's connection to close (the server closes it after its last announcement) and for the
  recorder to see the leave announcement of every room a vanished client was in; then every
  live client sends HELO and waits for the reply (after which the server has handled everything
  any client sent), twice (after the second reply, a client has read everything the server
  queued for it before then, which is everything).

Numbers reported: expected deliveries (the chats in every expected(M, R), and every sent chat
for the recorder), delivered, lost (expected but missing), duplicated (received more than once),
reordered (received after a later chat of the same sender), outside_window (received though
not expected), stream_mismatches (member streams that differ from expected(M, R) in any way,
announcements included), and the server's RSS over time (with --spawn). A JSON summary goes to
standard output, progress to standard error.

Exit status: 0 if nothing was lost, duplicated, reordered or otherwise wrong; 1 otherwise; 2
for bad arguments.

Assumption, stated plainly: the rule relies on the server's single room history (one request
at a time, each broadcast delivered to all present members at once), which PROTOCOL.md's
"presently in the room" implies for this server. A multi-threaded server could interleave two
senders' chats differently for different members; against such a server only the per-sender
checks would be fair.
"""
import argparse
import collections
import json
import os
import random
import selectors
import sys
import time
from typing import Dict, List, Optional, Set, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)      # for `tools` however this is started

from tools.harness import (  # noqa: E402 (needs the path above)
    HOST, add_target_arguments, Peer, ProtocolViolation, ServerMessage, ServerProcess, connect,
    raise_nofile_limit)

# --- settings -----------------------------------------------------------------------------
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
PROGRESS_EVERY = 5.0
TICK = 0.01                        # the longest select() wait while chatting
MAX_TICKS = 10 ** 8                # a count bound on every loop (time bounds them first)
MAX_DETAILS = 20

JOINED_SUFFIX = " has joined this chatroom."
LEFT_SUFFIX = " has left this chatroom."

Event = Tuple  # ("join", name) | ("leave", name) | ("chat", name, seq)


def event_of(msg: ServerMessage) -> Event:
    """What a CHAT from the server means: a join or leave announcement, or a numbered chat."""
    if msg.text == msg.name + JOINED_SUFFIX:
        return ("join", msg.name)
    if msg.text == msg.name + LEFT_SUFFIX:
        return ("leave", msg.name)
    parts = msg.text.split(" ", 2)
    if len(parts) >= 2 and parts[0] == msg.name and parts[1].isdigit():
        return ("chat", msg.name, int(parts[1]))
    raise ProtocolViolation("a chat this soak did not send: %r" % msg)


class Membership:
    """One client in one room."""
    __slots__ = ("room", "ref", "leave_sent", "left")

    def __init__(self, room: str) -> None:
        self.room = room
        self.ref: Optional[int] = None      # set by JOINED_CHATROOM
        self.leave_sent = False             # LEAVE or DISCONNECT sent: chat no more here
        self.left = False                   # own leave announcement read

    def can_chat(self) -> bool:
        return self.ref is not None and not self.leave_sent


class Client:
    """One connection of the soak, and everything it sent and received."""

    def __init__(self, soak: "Soak", cid: int, role: str) -> None:
        self.soak = soak
        self.id = cid
        self.name = "rec" if role == "recorder" else "c%d" % cid
        self.role = role                    # "recorder", "stayer" or "churner"
        self.peer = Peer(connect(soak.port), self.name)
        self.rooms: Dict[str, Membership] = {}
        self.streams: Dict[int, List[Event]] = collections.defaultdict(list)
        self.state = "joining"   # joining, active, idle, disconnecting, closed, vanished
        self.seq = 0
        self.sent: List[Tuple[int, int]] = []          # (ref, seq) of every chat sent
        self.unechoed: Set[Tuple[int, int]] = set()
        self.helo_replies = 0
        self.next_chat = 0.0
        self.next_move = 0.0                            # churners: when to leave/go
        self.vanished_in: List[int] = []                # refs it was in when it vanished
        self.leaves_seen: Set[Tuple[int, str]] = set()  # (ref, name) of leave announcements

    # -- requests --------------------------------------------------------------------------

    def join(self, room: str) -> None:
        self.rooms[room] = Membership(room)
        self.peer.queue(("JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n"
                         % (room, self.name)).encode())

    def chat(self, rng: random.Random) -> None:
        rooms = [m for m in self.rooms.values() if m.can_chat()]
        if not rooms:
            return
        membership = rng.choice(rooms)
        self.seq += 1
        padding = "x" * rng.randint(0, self.soak.opts.message_bytes)
        text = "%s %d p%s" % (self.name, self.seq, padding)
        if rng.random() < 0.1:
            text += "\nsecond line"
        self.peer.queue(("CHAT: %d\nJOIN_ID: 0\nCLIENT_NAME: %s\nMESSAGE: %s\n\n"
                         % (membership.ref, self.name, text)).encode())
        self.sent.append((membership.ref, self.seq))
        self.unechoed.add((membership.ref, self.seq))
        self.soak.chats_sent += 1

    def leave(self, membership: Membership) -> None:
        membership.leave_sent = True
        self.peer.queue(("LEAVE_CHATROOM: %d\nJOIN_ID: 0\nCLIENT_NAME: %s\n"
                         % (membership.ref, self.name)).encode())

    def disconnect(self) -> None:
        for membership in self.rooms.values():
            membership.leave_sent = True
        self.peer.queue(("DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: %s\n" % self.name).encode())
        self.state = "disconnecting"

    def vanish(self, rng: random.Random) -> None:
        """RST now, perhaps in the middle of a request. The rooms it has not seen its own leave
        announcement in must announce its leaving to the others."""
        self.vanished_in = [m.ref for m in self.rooms.values() if m.ref is not None and not m.left]
        self.peer.flush()
        if rng.random() < 0.5 and not self.peer.out:
            try:
                self.peer.sock.send(b"CHAT: 0\nJOIN_ID: 0\nCLIENT_NA")
            except OSError:
                pass
        self.state = "vanished"

    def helo(self, tag: str) -> None:
        self.peer.queue(("HELO %s %s\n" % (tag, self.name)).encode())

    # -- replies ---------------------------------------------------------------------------

    def on_message(self, msg: ServerMessage) -> None:
        if msg.kind == "CHAT":
            event = event_of(msg)
            self.streams[msg.ref].append(event)
            if event[0] == "leave":
                self.leaves_seen.add((msg.ref, msg.name))
            if msg.name == self.name:
                if event[0] == "chat":
                    self.unechoed.discard((msg.ref, event[2]))
                elif event[0] == "leave":
                    for membership in self.rooms.values():
                        if membership.ref == msg.ref:
                            membership.left = True
        elif msg.kind == "JOINED":
            membership = self.rooms.get(msg.room)
            if membership is None or membership.ref is not None:
                raise ProtocolViolation("%s: unexpected %r" % (self.name, msg))
            membership.ref = msg.ref
            self.soak.learn_ref(msg.room, msg.ref)
            if self.state == "joining" and all(m.ref is not None for m in self.rooms.values()):
                self.state = "active"
                self.soak.on_active(self)
        elif msg.kind == "HELO":
            self.helo_replies += 1
        elif msg.kind == "ERROR":
            self.soak.problem("%s got %r" % (self.name, msg))
        # LEFT_CHATROOM needs nothing: the own leave announcement right after it does

    def on_server_closed(self) -> None:
        if self.state == "disconnecting":
            self.state = "closed"
        else:
            self.soak.problem("the server closed %s's connection (state %s)"
                              % (self.name, self.state))
            self.state = "closed"


class Soak:
    def __init__(self, opts: argparse.Namespace, port: int,
                 server: Optional[ServerProcess] = None) -> None:
        self.opts = opts
        self.port = port
        self.server = server
        self.rng = random.Random(opts.seed)
        self.selector = selectors.DefaultSelector()
        self.rooms = ["soak-room-%d" % i for i in range(opts.rooms)]
        self.refs: Dict[str, int] = {}
        self.clients: List[Client] = []
        self.recorder: Optional[Client] = None
        self.next_id = 0
        self.chats_sent = 0
        self.problems: List[str] = []
        self.problem_count = 0
        self.moves: Dict[str, int] = collections.Counter()
        self.rss: List[Tuple[float, int]] = []
        self.stopping = False

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_DETAILS:
            self.problems.append(text)

    def learn_ref(self, room: str, ref: int) -> None:
        if self.refs.setdefault(room, ref) != ref:
            self.problem("room %s has two ROOM_REFs: %d and %d" % (room, self.refs[room], ref))

    # -- clients ---------------------------------------------------------------------------

    def add_client(self, role: str) -> Optional[Client]:
        """Connect a new client and send its JOINs (None, and a problem noted, if the server
        does not accept the connection; the recorder must connect)."""
        self.next_id += 1
        try:
            client = Client(self, self.next_id, role)
        except OSError as exc:
            if role == "recorder":
                raise
            self.problem("client %d could not connect: %s" % (self.next_id, exc))
            return None
        self.clients.append(client)
        self.selector.register(client.peer.sock, selectors.EVENT_READ, client)
        client.peer.events = selectors.EVENT_READ
        if role == "recorder":
            rooms = self.rooms
        else:
            rooms = self.rng.sample(self.rooms, self.rng.randint(1, min(self.opts.max_rooms,
                                                                        len(self.rooms))))
        for room in rooms:
            client.join(room)
        return client

    def on_active(self, client: Client) -> None:
        now = time.monotonic()
        if client.role == "recorder" or not self.opts.rate:
            client.next_chat = float("inf")            # the recorder only listens
        else:
            client.next_chat = now + self.rng.expovariate(self.opts.rate)
        if client.role == "churner":
            client.next_move = now + self.rng.uniform(*CHURN_LIFE)

    def _close(self, client: Client, rst: bool = False) -> None:
        peer = client.peer
        if peer.events:
            self.selector.unregister(peer.sock)
            peer.events = 0
        if rst:
            peer.abort()
        else:
            peer.close()

    def live(self) -> List[Client]:
        return [c for c in self.clients if c.state not in ("closed", "vanished", "disconnecting")]

    # -- the loop --------------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        """One round: flush what is queued, wait up to `timeout` for input, read it."""
        for client in self.clients:
            peer = client.peer
            if peer.closed:
                continue
            if peer.out:
                peer.flush()
            if peer.closed_by_server:
                self._server_closed(client)
                continue
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.out else 0)
            if want != peer.events:
                self.selector.modify(peer.sock, want, client)
                peer.events = want
        for key, mask in self.selector.select(timeout):
            client = key.data
            peer = client.peer
            if peer.closed:
                continue
            if mask & selectors.EVENT_WRITE:
                peer.flush()
            if mask & selectors.EVENT_READ:
                try:
                    for msg in peer.receive():
                        client.on_message(msg)
                except ProtocolViolation as exc:
                    self.problem("%s: %s" % (client.name, exc))
                    client.state = "closed"
                    self._close(client, rst=True)
                    continue
            if peer.closed_by_server:
                self._server_closed(client)

    def _server_closed(self, client: Client) -> None:
        self._close(client)
        client.on_server_closed()

    def wait_until(self, condition, seconds: float, what: str) -> bool:
        deadline = time.monotonic() + seconds
        for _ in range(MAX_TICKS):
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.pump(min(TICK, remaining))
            self.sample_rss()
        self.problem("timed out after %g s waiting for %s" % (seconds, what))
        return False

    def sample_rss(self) -> None:
        if self.server is None:
            return
        now = time.monotonic()
        if not self.rss or now - self.rss[-1][0] >= RSS_EVERY:
            kb = self.server.rss_kb()
            if kb is not None:
                self.rss.append((now, kb))

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Dict[str, object]:
        opts = self.opts
        started = time.monotonic()
        self.sample_rss()
        self.recorder = self.add_client("recorder")
        self.wait_until(lambda: self.recorder.state == "active", SETUP_TIMEOUT,
                        "the recorder's joins")
        churners = int(round(opts.clients * opts.churn))
        for _ in range(opts.clients - churners):
            self.add_client("stayer")
        self.wait_until(lambda: all(c.state == "active" for c in self.clients), SETUP_TIMEOUT,
                        "the stayers' joins")
        churn_starts = [time.monotonic() + self.rng.uniform(0, 1) for _ in range(churners)]
        chat_started = time.monotonic()
        end = chat_started + opts.seconds
        next_progress = chat_started + PROGRESS_EVERY
        for _ in range(MAX_TICKS):
            now = time.monotonic()
            if now >= end:
                break
            due = [t for t in churn_starts if t <= now]
            if due:
                churn_starts = [t for t in churn_starts if t > now]
                for _ in due:
                    self.add_client("churner")
            for client in self.clients:
                if client.state == "active" and client.next_chat <= now and opts.rate:
                    client.chat(self.rng)
                    client.next_chat += self.rng.expovariate(opts.rate)
                    if client.next_chat < now:          # behind: do not try to catch up
                        client.next_chat = now
                if client.role == "churner" and client.state in ("active", "idle") \
                        and client.next_move <= now:
                    if self.move(client):
                        churn_starts.append(now + self.rng.uniform(0, 0.5))
            self.pump(TICK)
            self.sample_rss()
            if now >= next_progress and not opts.quiet:
                next_progress = now + PROGRESS_EVERY
                self.progress(chat_started)
        self.stopping = True
        self.barrier()
        self.sample_rss()
        result = self.verify()
        for client in self.clients:
            if not client.peer.closed:
                self._close(client)
        result.update({
            "seed": opts.seed, "port": self.port, "spawned": self.server is not None,
            "clients": opts.clients, "rooms": opts.rooms, "rate": opts.rate,
            "chat_seconds": round(opts.seconds, 2),
            "seconds": round(time.monotonic() - started, 2),
            "connections": self.next_id, "chats_sent": self.chats_sent,
            "moves": dict(self.moves),
            "problems": self.problem_count, "problem_details": self.problems,
        })
        if self.rss:
            result["server_rss_kb"] = {
                "first": self.rss[0][1], "last": self.rss[-1][1],
                "max": max(kb for _, kb in self.rss),
                "samples": [[round(t - started, 1), kb] for t, kb in self.rss]}
        result["ok"] = not (self.problem_count or result["lost"] or result["duplicated"]
                            or result["reordered"] or result["outside_window"]
                            or result["stream_mismatches"])
        if not opts.quiet:
            self.progress(chat_started)
        return result

    def move(self, client: Client) -> bool:
        """A churner's next move. True if it is gone (and should be replaced)."""
        rng = self.rng
        active = [m for m in client.rooms.values() if m.can_chat()]
        if client.state == "idle" or not active:
            how = rng.choice(["disconnect", "vanish"])
        else:
            how = rng.choice(["leave", "disconnect", "vanish"])
        self.moves[how] += 1
        if how == "leave":
            for membership in rng.sample(active, rng.randint(1, len(active))):
                client.leave(membership)
            if not any(m.can_chat() for m in client.rooms.values()):
                client.state = "idle"          # in no room: must now receive nothing
            client.next_move = time.monotonic() + rng.uniform(*CHURN_LIFE)
            return False
        if how == "disconnect":
            client.disconnect()
            return True
        client.vanish(rng)
        self._close(client, rst=True)
        return True

    def barrier(self) -> None:
        """Make every stream complete (see the module docstring)."""
        self.wait_until(lambda: not [c for c in self.clients if c.state == "disconnecting"],
                        DRAIN_TIMEOUT, "DISCONNECTed clients to be closed")
        owed = {(ref, c.name) for c in self.clients if c.state == "vanished"
                for ref in c.vanished_in}
        self.wait_until(lambda: owed <= self.recorder.leaves_seen, DRAIN_TIMEOUT,
                        "the recorder to see vanished clients leave")
        for tag in ("sync1", "sync2"):
            live = self.live()
            for client in live:
                client.helo_replies = 0
                client.helo(tag)
            self.wait_until(lambda: all(c.helo_replies >= 1 or c.state == "closed" for c in live),
                            DRAIN_TIMEOUT, "the %s HELO replies" % tag)

    # -- the check -------------------------------------------------------------------------

    def verify(self) -> Dict[str, object]:
        """Apply the delivery rule of the module docstring to every stream."""
        totals = collections.Counter()
        details: List[str] = []
        recorder = self.recorder
        history = {ref: recorder.streams.get(ref, []) for ref in set(self.refs.values())}

        def note(text: str) -> None:
            if len(details) < MAX_DETAILS:
                details.append(text)

        # 1. the recorder against what was sent
        sent_by_room: Dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for client in self.clients:
            for ref, seq in client.sent:
                certain = client.state != "vanished" or (ref, seq) not in client.unechoed
                sent_by_room[ref][("chat", client.name, seq)] = 1 if certain else 0
        for ref, events in history.items():
            got = collections.Counter(e for e in events if e[0] == "chat")
            sent = sent_by_room.get(ref, collections.Counter())
            for chat, must in sent.items():
                n = got.get(chat, 0)
                totals["expected"] += must
                totals["delivered"] += min(n, 1) if must else 0
                if n < must:
                    totals["lost"] += 1
                    note("recorder: room %d lacks %r" % (ref, chat))
                if n > 1:
                    totals["duplicated"] += n - 1
                    note("recorder: room %d has %r %d times" % (ref, chat, n))
            for chat in got:
                if chat not in sent:
                    totals["outside_window"] += 1
                    note("recorder: room %d has %r, which nobody sent there" % (ref, chat))
            totals["reordered"] += self._reordered(events, "recorder", ref, note)
        # 2. every member against its part of the room's history
        for client in self.clients:
            if client is recorder:
                continue
            for membership in client.rooms.values():
                ref = membership.ref
                if ref is None:
                    continue
                self._check_member(client, membership, history.get(ref, []), totals, note)
        return {"expected_deliveries": totals["expected"], "delivered": totals["delivered"],
                "lost": totals["lost"], "duplicated": totals["duplicated"],
                "reordered": totals["reordered"], "outside_window": totals["outside_window"],
                "stream_mismatches": totals["mismatches"],
                "members_checked": totals["members"], "mismatch_details": details}

    def _check_member(self, client: Client, membership: Membership, events: List[Event],
                      totals: collections.Counter, note) -> None:
        ref = membership.ref
        stream = client.streams.get(ref, [])
        totals["members"] += 1
        joins = [i for i, e in enumerate(events) if e == ("join", client.name)]
        leaves = [i for i, e in enumerate(events) if e == ("leave", client.name)]
        if len(joins) != 1 or len(leaves) > 1:
            totals["mismatches"] += 1
            note("%s in room %d: the recorder saw its join %d times and its leave %d times"
                 % (client.name, ref, len(joins), len(leaves)))
            return
        start = joins[0]
        # A client that vanished while in the room read an unknown part of its window; one
        # that read its own leave announcement first read all of it, vanished or not.
        vanished = client.state == "vanished" and not membership.left
        if vanished and not leaves:
            totals["mismatches"] += 1
            note("%s vanished from room %d, and its leaving was never announced"
                 % (client.name, ref))
        expected = events[start:leaves[0] + 1] if leaves else events[start:]
        want = collections.Counter(e for e in expected if e[0] == "chat")
        got = collections.Counter(e for e in stream if e[0] == "chat")
        for chat, n in got.items():
            if n > 1:
                totals["duplicated"] += n - 1
            if chat not in want:
                totals["outside_window"] += 1
        if not vanished:                 # a vanished client read an unknown part: no losses
            totals["expected"] += sum(want.values())
            for chat in want:
                totals["delivered"] += min(got.get(chat, 0), 1)
                if chat not in got:
                    totals["lost"] += 1
        totals["reordered"] += self._reordered(stream, client.name, ref, note)
        if vanished:                     # a prefix of its window, never its own leave
            same = (stream == expected[:len(stream)]
                    and ("leave", client.name) not in stream)
        else:
            same = stream == expected
        if not same:
            totals["mismatches"] += 1
            first = next((i for i, (a, b) in enumerate(zip(stream, expected)) if a != b),
                         min(len(stream), len(expected)))
            note("%s in room %d (%s): stream differs from the room's history at event %d: "
                 "got %r, expected %r (%d events vs %d)"
                 % (client.name, ref, client.state, first, stream[first:first + 2],
                    expected[first:first + 2], len(stream), len(expected)))

    @staticmethod
    def _reordered(stream: List[Event], who: str, ref: int, note) -> int:
        """Chats received after a later chat of the same sender."""
        last: Dict[str, int] = {}
        count = 0
        for event in stream:
            if event[0] != "chat":
                continue
            _, name, seq = event
            if seq < last.get(name, 0):
                count += 1
                note("%s in room %d: %s's chat %d after its chat %d" % (who, ref, name, seq,
                                                                       last[name]))
            last[name] = max(seq, last.get(name, 0))
        return count

    def progress(self, started: float) -> None:
        rss = self.rss[-1][1] if self.rss else None
        print("soak: %5.1fs %d chats sent, %d clients live, %d connections so far%s"
              % (time.monotonic() - started, self.chats_sent, len(self.live()), self.next_id,
                 ", server RSS %d kB" % rss if rss else ""), file=sys.stderr, flush=True)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak a live chat server with many clients chatting in many rooms while "
                    "others join, leave, disconnect and vanish; then check every delivery. "
                    "Prints a JSON summary; exits 1 on any loss, duplicate or reordering.")
    add_target_arguments(parser, "soak")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS,
                        help="clients at any one time, besides the recorder (default %d)"
                             % DEFAULT_CLIENTS)
    parser.add_argument("--rooms", type=int, default=DEFAULT_ROOMS,
                        help="rooms (default %d)" % DEFAULT_ROOMS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="how long they chat (default %g)" % DEFAULT_SECONDS)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE,
                        help="chats per second per client (default %g)" % DEFAULT_RATE)
    parser.add_argument("--churn", type=float, default=DEFAULT_CHURN,
                        help="share of clients that join, leave, disconnect and vanish as they "
                             "go (default %g)" % DEFAULT_CHURN)
    parser.add_argument("--max-rooms", type=int, default=DEFAULT_MAX_ROOMS,
                        help="rooms per client, at most (default %d)" % DEFAULT_MAX_ROOMS)
    parser.add_argument("--message-bytes", type=int, default=DEFAULT_MESSAGE_BYTES,
                        help="padding per chat, at most (default %d)" % DEFAULT_MESSAGE_BYTES)
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a random one, printed in the summary)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    opts = parser.parse_args(argv)
    if opts.seed is None:
        opts.seed = random.SystemRandom().randint(0, 2 ** 31)
    if (opts.clients < 1 or opts.rooms < 1 or opts.seconds < 0 or opts.rate < 0
            or not 0 <= opts.churn <= 1 or opts.max_rooms < 1 or opts.message_bytes < 0):
        parser.error("--clients, --rooms, --max-rooms >= 1; --seconds, --rate, "
                     "--message-bytes >= 0; 0 <= --churn <= 1")
    return opts


def run(opts: argparse.Namespace) -> Dict[str, object]:
    """Run the soak as `opts` says (spawning the server if asked) and return the summary."""
    raise_nofile_limit()
    server = ServerProcess() if opts.spawn else None
    try:
        soak = Soak(opts, server.port if server else opts.port, server)
        summary = soak.run()
        if server is not None:
            summary["server_alive_at_end"] = server.alive()
            if not server.alive():
                summary["ok"] = False
                summary["server_log_tail"] = server.log_tail()
        return summary
    finally:
        if server is not None:
            server.stop()


def main(argv: Optional[List[str]] = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    summary = run(opts)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
