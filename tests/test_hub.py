"""The hub (transport/hub.py) over real sockets with a fake app (tests/line_app.py), ticked by
hand: turns and fairness, the actions, departures in one call, the memory budget, flood control,
and the one catch-all around the app."""
import random
import socket
import subprocess
import sys
import threading
import time
import unittest

import transport.hub
from policy.flood import InputLimits
from policy.scheduler import (MAX_REQUESTS_PER_TICK, MIN_REQUESTS_PER_TICK, READS_LEFT_TARGET,
                              TICK_TARGET)
from policy.watermarks import HIGH_WATER
from reactor import Loop
from sansio.actions import Broadcast, Close, Send
from tests.line_app import REPO, LineApp, LineServer, ServerCase
from transport.conn import OPEN, Connection
from transport.hub import LOST_WORK_PER_CALL, PILED_UP, Hub


class HubTests(ServerCase):

    def quiet_has_when_flood_first_turns(self, flood_id, quiet):
        """Run one tick; what `quiet` had received when `flood_id`'s first turn began."""
        cheap = self.app.maybe_next_actions
        seen = []

        def watching(conn_id):
            if conn_id == flood_id and not seen:
                quiet.setblocking(False)
                try:
                    seen.append(quiet.recv(100, socket.MSG_PEEK))
                except BlockingIOError:
                    seen.append(b"")
                finally:
                    quiet.settimeout(5)
            return cheap(conn_id)
        self.app.maybe_next_actions = watching
        self.server.run_once(5)
        self.assertEqual(len(seen), 1, "flood had a turn in this tick")
        return seen[0]

    def test_a_reply_goes_out_in_the_tick_that_read_the_request(self):
        _, ours = self.pair()
        ours.sendall(b"echo hi\n")
        self.server.run_once(5)      # the data is there: select returns at once
        self.assertEqual(ours.recv(100), b"hi\n")

    def test_requests_past_the_tick_limit_wait_for_the_next_tick(self):
        _, ours = self.pair()
        count = MAX_REQUESTS_PER_TICK + 3
        ours.sendall(b"".join(b"echo %d\n" % i for i in range(count)))
        self.server.run_once(5)
        self.assertEqual(len(self.app.handled), MAX_REQUESTS_PER_TICK)
        self.server.run_once(60)     # no new input, but the rest is buffered: no wait
        self.assertEqual(len(self.app.handled), count)
        expected = b"".join(b"%d\n" % i for i in range(count))
        self.assertEqual(self.pump(ours, len(expected)), expected)

    def test_replies_without_a_backlog_leave_before_the_backlogs_are_worked_on(self):
        flood_id, flood = self.pair()
        _, quiet = self.pair()
        flood.sendall(b"echo f\n" * 1000)
        self.server.run_once(5)                       # flood now has a backlog
        quiet.sendall(b"echo q\n")
        self.assertEqual(self.quiet_has_when_flood_first_turns(flood_id, quiet), b"q\n")

    def test_a_quiet_reply_leaves_before_a_flood_read_in_the_same_tick_has_a_turn(self):
        flood_id, flood = self.pair()
        _, quiet = self.pair()
        flood.sendall(b"echo f\n" * 1000)              # one read of more than QUIET_READ
        quiet.sendall(b"echo q\n")                     # read after it, in the same tick
        self.assertEqual(self.quiet_has_when_flood_first_turns(flood_id, quiet), b"q\n")
        self.assertEqual(len(self.app.handled), 1 + MAX_REQUESTS_PER_TICK)

    def test_a_backlog_gets_a_share_and_a_client_without_one_goes_first(self):
        _, flood = self.pair()
        _, quiet = self.pair()
        flood.sendall(b"echo f\n" * 1000)
        self.server.run_once(5)                       # flood: no backlog yet, the full limit
        self.assertEqual(len(self.app.handled), MAX_REQUESTS_PER_TICK)
        share = self.server.hub.scheduler.requests_per_tick
        quiet.sendall(b"echo q\n" * 10)
        before = len(self.app.handled)
        self.server.run_once(5)
        this_tick = self.app.handled[before:]
        self.assertEqual(this_tick[:10], [(2, b"echo q")] * 10)   # all of it, first
        self.assertEqual(this_tick[10:], [(1, b"echo f")] * share)

    def test_share_halves_after_a_slow_tick_and_grows_after_quick_ones(self):
        _, ours = self.pair()
        ours.sendall(b"echo x\n" * 200)
        self.server.run_once(5)                       # no backlog yet: the full limit
        cheap = self.app.maybe_next_actions

        def expensive(conn_id):     # each request takes a whole tick's target
            time.sleep(TICK_TARGET)
            return cheap(conn_id)
        self.app.maybe_next_actions = expensive
        share = self.server.hub.scheduler.requests_per_tick
        self.server.run_once(0)
        self.assertEqual(self.server.hub.scheduler.requests_per_tick,
                         max(MIN_REQUESTS_PER_TICK, share // 2))
        self.app.maybe_next_actions = cheap            # cheap again: the share grows back
        for _ in range(4):
            self.server.run_once(0)
        self.assertGreater(self.server.hub.scheduler.requests_per_tick, share)

    def test_broadcast_reaches_every_connection(self):
        socks = [self.pair()[1] for _ in range(3)]
        socks[0].sendall(b"all hello\n")
        for sock in socks:
            self.assertEqual(self.pump(sock, 6), b"hello\n")

    def test_a_bug_in_the_app_drops_only_that_connection(self):
        _, buggy = self.pair()
        _, other = self.pair()
        buggy.sendall(b"boom\n")
        with self.assertLogs("transport", "ERROR"):
            self.assertEqual(self.pump(buggy, None), b"")
        self.assertEqual(self.app.lost, [1])
        other.sendall(b"echo alive\n")
        self.assertEqual(self.pump(other, 6), b"alive\n")

    def test_a_close_while_waiting_on_the_app_ends_when_the_peer_closes(self):
        # A DISCONNECT on a bus node: the app says Wait, then Close once Redis has answered
        # (no Resume). The peer's FIN that answers ours must be read: the connection ends
        # "closed by the peer" at once, not after LINGER_TIMEOUT.
        conn_id, ours = self.pair()
        ours.sendall(b"wait\n")
        self.pump(ours, 0, max_ticks=5)
        self.assertTrue(self.server.hub.conns[conn_id].waiting)
        self.server.hub.apply([Send(conn_id, b"bye\n"), Close(conn_id)])
        self.assertEqual(self.pump(ours, None), b"bye\n")      # our FIN came
        ours.close()
        started = time.monotonic()
        with self.assertLogs("transport.hub", "INFO") as logs:
            while conn_id in self.server.hub.conns and time.monotonic() - started < 1.5:
                self.server.run_once(0.05)
        self.assertNotIn(conn_id, self.server.hub.conns, "the close waited for LINGER_TIMEOUT")
        self.assertIn("the peer", logs.output[-1])
        self.assertNotIn("had not closed", logs.output[-1])

    def test_past_its_deadline_the_flush_sends_small_queues_only_while_output_piles_up(self):
        pairs = [self.pair() for _ in range(3)]
        hub = self.server.hub

        def queue_and_flush():
            for conn_id, _ in pairs:
                hub.write_many((conn_id,), b"hi\n")
            hub.flush(budget=-1.0)          # the deadline has passed before the first send

        queue_and_flush()                   # little queued: the rest waits for the next flush
        self.assertEqual([hub.conns[conn_id].out_bytes for conn_id, _ in pairs], [0, 3, 3])
        hub.memory.output += PILED_UP       # as if a join storm's output were queued elsewhere
        try:
            queue_and_flush()
            self.assertEqual([hub.conns[conn_id].out_bytes for conn_id, _ in pairs], [0, 0, 0])
        finally:
            hub.memory.output -= PILED_UP
        for _, ours in pairs:
            self.assertEqual(self.read_exactly(ours, 6), b"hi\nhi\n")

    def test_output_piled_up_by_one_turn_is_flushed_before_the_next_turn(self):
        # A join storm: every turn queues announcements for a whole room. Past PILE_UP queued
        # since the last flush, the hub flushes between two turns of the same tick, not only at
        # its end: what piles up between two flushes is what the allocator keeps after.
        self.patch_constant(transport.hub, "PILE_UP", 1000)    # (the real one is past OUTPUT_CAP)
        size = 4096
        pairs = dict(self.pair() for _ in range(2))
        conns = self.server.hub.conns
        other_queued = []       # at each connection's turn: the other one's output queued
        cheap = self.app.maybe_next_actions

        def watching(conn_id):
            if len(other_queued) < 2 and self.app.buffers[conn_id]:
                other, = set(pairs) - {conn_id}
                other_queued.append(conns[other].out_bytes)
            return cheap(conn_id)
        self.app.maybe_next_actions = watching
        for ours in pairs.values():
            ours.sendall(b"big %d\n" % size)
        self.tick_until(lambda: len(other_queued) == 2)
        self.assertEqual(len(self.app.handled), 2, "both handled in one tick")
        self.assertEqual(other_queued[0], 0)
        self.assertLess(other_queued[1], size, "the first turn's output waited for the tick's end")
        for ours in pairs.values():
            self.assertEqual(len(self.read_exactly(ours, size)), size)

    def test_writes_to_unknown_connections_are_ignored(self):
        self.server.hub.write_many([999], b"nobody")
        self.server.hub.close_connection(999)
        self.server.run_once(0)

    def test_shutdown_action_stops_the_loop_and_closes_everything(self):
        _, ours = self.pair()
        ours.sendall(b"echo bye\nstop\necho not served\n")
        loop = threading.Thread(target=self.server.run_forever, daemon=True)
        loop.start()
        loop.join(10)
        self.assertFalse(loop.is_alive(), "run_forever did not return after Shutdown")
        self.assertEqual(ours.recv(100), b"bye\n")
        self.assertEqual(ours.recv(100), b"")
        self.assertNotIn((1, b"echo not served"), self.app.handled)
        self.assertEqual(self.server.listener.sock.fileno(), -1)

    def test_a_bug_in_connection_lost_is_caught_in_the_same_one_place(self):
        _, leaving = self.pair()
        _, other = self.pair()
        app_lost = self.app.connections_lost

        def buggy_lost(conn_ids):
            app_lost(conn_ids)
            if 1 in conn_ids:
                raise RuntimeError("a bug in the app")
            return []
        self.app.connections_lost = buggy_lost
        leaving.close()
        with self.assertLogs("transport", "ERROR") as logs:
            self.tick_until(lambda: self.app.lost)
        self.assertEqual(len(logs.records), 1)
        self.assertIn("internal error", logs.records[0].getMessage())
        self.assertEqual(self.app.lost, [1])
        self.assertNotIn(1, self.server.hub.conns)
        other.sendall(b"echo alive\n")
        self.assertEqual(self.pump(other, 6), b"alive\n")

    def test_the_loop_and_the_transports_do_not_need_the_chat_protocol(self):
        # The hub's contract is sansio.actions; neither the loop, the transports nor these
        # tests (whose LineApp the hub runs) may drag the chat protocol in.
        code = ("import sys, reactor, transport.hub, transport.tcp, transport.udp, "
                "transport.redis, tests.test_reactor, tests.test_hub, tests.test_transport_tcp; "
                "print('protocol' in sys.modules)")
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=30,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), b"False")


class MemoryTests(ServerCase):
    """Everything the connections' buffers hold is one figure; past the budget the connections
    that hold the most are dropped."""

    def test_pending_input_counts_against_the_budget(self):
        conn_id, sock = self.pair()
        sock.sendall(b"x" * 5000)                           # no newline: a partial request
        for _ in range(50):
            self.server.run_once(0.01)
            if self.server.hub.memory.input:
                break
        self.assertEqual(self.server.hub.memory.input, 5000)
        sock.sendall(b"\n")
        for _ in range(50):
            self.server.run_once(0.01)
            if not self.server.hub.memory.input:
                break
        self.assertEqual(self.server.hub.memory.input, 0)

    def test_over_the_budget_the_largest_holders_are_evicted_first(self):
        self.server.hub.memory.budget = 300000
        stalled = [self.pair(sndbuf=4096, rcvbuf=4096) for _ in range(3)]
        reader_id, reader = self.pair()
        for index, (conn_id, _) in enumerate(stalled):      # 50, 100 and 150 KB queued
            self.server.hub.write_many([conn_id], b"%d" % index * 50000 * (index + 1))
        self.server.hub.write_many([reader_id], b"hi\n")
        self.server.hub.write_many([stalled[0][0]], b"z" * 100000)   # 150 KB; the total passes
        with self.assertLogs("transport", "WARNING") as logs:
            self.server.run_once(0)
        evicted = [c for c, _ in stalled if c not in self.server.hub.conns]
        self.assertEqual(len(evicted), 1)
        self.assertIn(evicted[0], (stalled[0][0], stalled[2][0]))  # one of the two largest
        self.assertIn("memory budget", logs.records[0].getMessage())
        self.assertLessEqual(self.server.hub.memory.total, 300000)
        self.assertEqual(self.server.hub.evictions, 1)
        self.assertEqual(self.app.lost, evicted)
        self.assertEqual(self.read_exactly(reader, 3), b"hi\n")

    def test_connections_lost_in_one_tick_are_told_to_the_app_in_one_call(self):
        calls = []
        app_lost = self.app.connections_lost

        def recording(conn_ids):
            calls.append(list(conn_ids))
            return app_lost(conn_ids)
        self.app.connections_lost = recording
        socks = [self.pair()[1] for _ in range(20)]
        for sock in socks:
            sock.close()
        for _ in range(50):
            self.server.run_once(0.01)
            if len(self.app.lost) == 20:
                break
        self.assertEqual(sorted(self.app.lost), list(range(1, 21)))
        self.assertEqual(len(calls), 1, calls)

    def test_departures_are_told_in_calls_bounded_by_their_work_not_their_number(self):
        calls = []
        app_lost = self.app.connections_lost

        def recording(conn_ids):
            calls.append(list(conn_ids))
            return app_lost(conn_ids)
        self.app.connections_lost = recording
        heavy = LOST_WORK_PER_CALL // 4          # as if each were in that many rooms
        self.app.departure_cost = lambda conn_id: heavy
        socks = [self.pair()[1] for _ in range(10)]
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 5
        while len(self.app.lost) < 10 and time.monotonic() < deadline:
            self.server.run_once(0.01)
        self.assertEqual(sorted(self.app.lost), list(range(1, 11)))
        self.assertLessEqual(max(len(c) for c in calls), 4, calls)   # 4 x heavy fill a call
        self.assertGreaterEqual(len(calls), 3, calls)


class FloodControlTests(unittest.TestCase):
    """Each connection's input is metered (bytes and requests); a flooder is slowed, not cut,
    and nobody else waits for it."""

    def make(self, limits):
        self.app = LineApp()
        self.server = LineServer(self.app, limits=limits)
        self.addCleanup(self.server.close)

    def pair(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        ours.settimeout(5)
        return self.server.add_connection(theirs, "local"), ours

    def handled_by(self, conn_id):
        return sum(1 for c, _ in self.app.handled if c == conn_id)

    def tick_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.server.run_once(0.005)

    def test_requests_past_the_burst_wait_for_the_bucket_then_all_are_served(self):
        self.make(InputLimits(0, 0, requests_per_second=100, request_burst=20))
        flooder, flood = self.pair()
        other, calm = self.pair()
        flood.sendall(b"echo f\n" * 50)
        self.tick_for(0.05)
        self.assertGreaterEqual(self.handled_by(flooder), 20)
        self.assertLess(self.handled_by(flooder), 35)       # 20 at once, then ~100/s
        self.assertGreaterEqual(self.server.hub.throttles, 1)
        calm.sendall(b"echo c\n")                           # the other is served at once
        self.server.run_once(0.01)
        self.assertEqual(self.handled_by(other), 1)
        deadline = time.monotonic() + 3
        while self.handled_by(flooder) < 50 and time.monotonic() < deadline:
            self.server.run_once(0.01)
        self.assertEqual(self.handled_by(flooder), 50)      # slowed, never cut
        self.assertIn(flooder, self.server.hub.conns)

    def test_bytes_past_the_burst_stop_reads_until_the_bucket_refills(self):
        self.make(InputLimits(bytes_per_second=20000, burst_bytes=10000,
                                      requests_per_second=0, request_burst=0))
        conn_id, sock = self.pair()
        sock.sendall(b"x" * 30000 + b"\n")
        self.server.run_once(0.01)
        conn = self.server.hub.conns[conn_id]
        self.assertTrue(conn.throttled)
        started = time.monotonic()
        deadline = started + 5
        while self.handled_by(conn_id) < 1 and time.monotonic() < deadline:
            self.server.run_once(0.01)
        self.assertEqual(self.handled_by(conn_id), 1)
        self.assertGreater(time.monotonic() - started, 0.3)  # ~20 KB owed at 20 KB/s: ~1 s

    def test_no_limits_means_no_throttling(self):
        self.make(InputLimits(0, 0, 0, 0))
        conn_id, sock = self.pair()
        sock.sendall(b"echo x\n" * 3000)
        deadline = time.monotonic() + 5
        while self.handled_by(conn_id) < 3000 and time.monotonic() < deadline:
            self.server.run_once(0.01)
            try:
                sock.setblocking(False)
                while sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
        self.assertEqual(self.handled_by(conn_id), 3000)
        self.assertEqual(self.server.hub.throttles, 0)


class InternalErrorLogTests(unittest.TestCase):

    def test_a_traceback_is_logged_once_per_kind_then_one_line_each(self):
        app = LineApp()
        server = LineServer(app)
        self.addCleanup(server.close)
        socks = []
        for _ in range(3):
            ours, theirs = socket.socketpair()
            self.addCleanup(ours.close)
            server.add_connection(theirs, "local")
            socks.append(ours)
        with self.assertLogs("transport", "ERROR") as logs:
            for sock in socks:
                sock.sendall(b"boom\n")
                for _ in range(5):
                    server.run_once(0.01)
        errors = [r for r in logs.records if "internal error in" in r.getMessage()]
        self.assertEqual(len(errors), 3, [r.getMessage() for r in logs.records])
        self.assertIsNotNone(errors[0].exc_info)                 # the traceback, once
        self.assertEqual([r.exc_info for r in errors[1:]], [None, None])
        self.assertIn("RuntimeError", errors[1].getMessage())
        self.assertEqual(server.hub.conns, {})                       # each was dropped


if __name__ == "__main__":
    unittest.main()


class _Member(Connection):
    """A connection without a transport: what is queued for it stays in `out`."""
    __slots__ = ()

    def flush(self):
        pass

    def update_interest(self):
        pass

    def stop_events(self):
        pass

    def release(self, reason):
        pass


class _Rooms:
    """A fake app: a request (R, text) broadcasts text to the members of room R (the ids whose
    remainder modulo R+2 is 0; room 0 has the sender, 1, too); (None, text) is a reply."""

    def __init__(self, members):
        self.members = members
        self.requests = {}

    def connection_made(self, conn_id, local_ip, peer_ip):
        self.requests[conn_id] = []

    def maybe_next_actions(self, conn_id):
        if not self.requests[conn_id]:
            return None
        room, text = self.requests[conn_id].pop(0)
        if room is None:
            return [Send(conn_id, text)]
        return [Broadcast(tuple(m for m in self.members
                                if m % (room + 2) == 0 or room == 0 and m == 1), text)]

    def pending_input(self, conn_id):
        return 0


class BroadcastBatchTests(unittest.TestCase):
    """A turn's consecutive small broadcasts to the same members are queued as one
    (transport/batch.py): every member gets the same bytes, counted the same, as when each
    request's actions are applied on their own."""

    def hub_with(self, requests, sender_queued):
        loop = Loop()
        self.addCleanup(loop.close)
        app = _Rooms(list(range(1, 9)))
        hub = Hub(loop, app, limits=InputLimits(0, 0, 0, 0))
        for conn_id in range(1, 9):
            hub.add(_Member(hub, conn_id, "local"), "local", unproven=False)
        hub.write_many((1,), b"q" * sender_queued)
        app.requests[1] = list(requests)
        return hub

    def one_by_one(self, hub, limit):
        """The general path: each request's actions applied, then the turn's checks."""
        conn, app = hub.conns[1], hub.app
        for _ in range(limit):
            actions = app.maybe_next_actions(1)
            if actions is None:
                break
            hub.apply(actions)
            if conn.state is not OPEN or conn.reads_paused:
                break

    def test_batched_broadcasts_queue_what_applying_them_one_by_one_does(self):
        rng = random.Random(7)
        for _ in range(300):
            requests = [(rng.choice([None, 0, 0, 0, 1, 2]),
                         bytes([97 + rng.randrange(26)]) * rng.choice([1, 40, 700, 2100, 9000]))
                        for _ in range(rng.randrange(1, 80))]
            queued = rng.choice([0, 1000, HIGH_WATER - 3000, HIGH_WATER - 50, HIGH_WATER + 1])
            limit = rng.randrange(1, 90)
            batched, general = (self.hub_with(requests, queued), self.hub_with(requests, queued))
            batched._handle_requests(batched.conns[1], limit)
            self.one_by_one(general, limit)
            self.assertEqual(batched.app.requests[1], general.app.requests[1])
            for conn_id in range(1, 9):
                ours, theirs = batched.conns[conn_id], general.conns[conn_id]
                self.assertEqual(b"".join(bytes(c) for c in ours.out),
                                 b"".join(bytes(c) for c in theirs.out))
                self.assertEqual((ours.out_bytes, ours.reads_paused),
                                 (theirs.out_bytes, theirs.reads_paused))
            self.assertEqual((batched.deliveries, batched.memory.output),
                             (general.deliveries, general.memory.output))

    def test_a_turn_of_chats_to_one_room_is_queued_in_one_write(self):
        hub = self.hub_with([(0, b"chat %d\n" % i) for i in range(30)], 0)
        writes = []
        write_many = hub.write_many
        hub.write_many = lambda *args: writes.append(args) or write_many(*args)
        hub._handle_requests(hub.conns[1], 64)
        self.assertEqual([(ids, messages) for ids, _data, messages in writes],
                         [((1, 2, 4, 6, 8), 30)])
        self.assertEqual(hub.deliveries, 1 + 5 * 30)

    def test_while_the_read_step_left_sockets_unread_the_turns_stop_at_the_shorter_target(self):
        hub = self.hub_with([], 0)
        targets = []
        hub.scheduler.turns = lambda after_fresh, target: targets.append(target) or iter(())
        hub.end_of_tick()
        hub.loop.events_left = True
        hub.end_of_tick()
        self.assertEqual(targets, [TICK_TARGET, READS_LEFT_TARGET])
