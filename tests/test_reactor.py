"""Layer 4: the reactor over real sockets (socket.socketpair() and loopback) with a tiny fake
app, ticked by hand; and its fairness policy (reactor.Scheduler) on its own, with fake
connections and a fake clock.

The fake app is not the chat protocol: the reactor runs any app (sansio.actions.App), and these
tests never import protocol."""
import os
import socket
import subprocess
import sys
import threading
import time
import unittest
from types import SimpleNamespace

import reactor
from sansio.actions import Broadcast, Close, Send, Shutdown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# 4. The reactor, over socketpair() and loopback, with a fake app
# ---------------------------------------------------------------------------------------------

class LineApp:
    """A fake app for the reactor: one request per line.
    `echo X` -> X back; `big N` -> N bytes back; `all X` -> X to every connection;
    `close`, `stop`, `boom` (raises: a bug in the app)."""

    def __init__(self):
        self.buffers = {}
        self.made = []
        self.lost = []
        self.handled = []

    def connection_made(self, conn_id, local_ip, peer_ip):
        self.made.append((conn_id, local_ip))
        self.buffers[conn_id] = b""

    def data_received(self, conn_id, data):
        self.buffers[conn_id] += data

    def maybe_next_actions(self, conn_id):
        line, nl, rest = self.buffers[conn_id].partition(b"\n")
        if not nl:
            return None
        self.buffers[conn_id] = rest
        self.handled.append((conn_id, line))
        verb, _, arg = line.partition(b" ")
        if verb == b"echo":
            return [Send(conn_id, arg + b"\n")]
        if verb == b"big":
            return [Send(conn_id, b"x" * int(arg))]
        if verb == b"all":
            return [Broadcast(tuple(self.buffers), arg + b"\n")]
        if verb == b"close":
            return [Close(conn_id)]
        if verb == b"stop":
            return [Shutdown()]
        if verb == b"boom":
            raise RuntimeError("a bug in the app")
        return []

    def pending_input(self, conn_id):
        return len(self.buffers[conn_id])

    def connections_lost(self, conn_ids):
        for conn_id in conn_ids:
            self.lost.append(conn_id)
            del self.buffers[conn_id]
        return []


class ReactorTests(unittest.TestCase):

    def setUp(self):
        self.app = LineApp()
        self.reactor = reactor.Reactor("127.0.0.1", 0, self.app)
        self.addCleanup(self.reactor.close)

    def pair(self, sndbuf=None):
        """A connection served by the reactor, and our end of it."""
        ours, theirs = socket.socketpair()
        if sndbuf:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.addCleanup(ours.close)
        ours.settimeout(5)
        return self.reactor.add_connection(theirs, "local"), ours

    def pump(self, sock, want, max_ticks=2000):
        """Tick the reactor and read from `sock` until `want` bytes (or EOF, if want is None)
        arrived; bounded by max_ticks. Returns what was read."""
        got = b""
        for _ in range(max_ticks):
            self.reactor.run_once(0.01)
            sock.setblocking(False)
            try:
                data = sock.recv(1 << 20)
                if not data:
                    if want is None:
                        return got
                    break
                got += data
            except BlockingIOError:
                pass
            finally:
                sock.settimeout(5)
            if want is not None and len(got) >= want:
                return got
        self.fail("wanted %s bytes, got %d: %r" % (want, len(got), got[-80:]))

    def tick_until(self, condition, max_ticks=500):
        for _ in range(max_ticks):
            if condition():
                return
            self.reactor.run_once(0.01)
        self.fail("condition not reached in %d ticks" % max_ticks)

    def test_a_reply_goes_out_in_the_tick_that_read_the_request(self):
        _, ours = self.pair()
        ours.sendall(b"echo hi\n")
        self.reactor.run_once(5)      # the data is there: select returns at once
        self.assertEqual(ours.recv(100), b"hi\n")

    def test_accepts_tcp_connections(self):
        client = socket.create_connection(self.reactor.address, timeout=5)
        self.addCleanup(client.close)
        self.tick_until(lambda: self.app.made)
        self.assertEqual(self.app.made[0][1], "127.0.0.1")
        client.sendall(b"echo tcp\n")
        self.tick_until(lambda: self.app.handled)
        self.assertEqual(client.recv(100), b"tcp\n")

    def test_requests_past_the_tick_limit_wait_for_the_next_tick(self):
        _, ours = self.pair()
        count = reactor.MAX_REQUESTS_PER_TICK + 3
        ours.sendall(b"".join(b"echo %d\n" % i for i in range(count)))
        self.reactor.run_once(5)
        self.assertEqual(len(self.app.handled), reactor.MAX_REQUESTS_PER_TICK)
        self.reactor.run_once(60)     # no new input, but the rest is buffered: no wait
        self.assertEqual(len(self.app.handled), count)
        expected = b"".join(b"%d\n" % i for i in range(count))
        self.assertEqual(self.pump(ours, len(expected)), expected)

    def test_replies_without_a_backlog_leave_before_the_backlogs_are_worked_on(self):
        flood_id, flood = self.pair()
        _, quiet = self.pair()
        flood.sendall(b"echo f\n" * 1000)
        self.reactor.run_once(5)                       # flood now has a backlog
        quiet.sendall(b"echo q\n")
        cheap = self.app.maybe_next_actions
        seen = []       # what quiet had received when flood's first turn of the tick began

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
        self.reactor.run_once(5)
        self.assertEqual(seen, [b"q\n"])

    def test_a_backlog_gets_a_share_and_a_client_without_one_goes_first(self):
        _, flood = self.pair()
        _, quiet = self.pair()
        flood.sendall(b"echo f\n" * 1000)
        self.reactor.run_once(5)                       # flood: no backlog yet, the full limit
        self.assertEqual(len(self.app.handled), reactor.MAX_REQUESTS_PER_TICK)
        share = self.reactor.scheduler.requests_per_tick
        quiet.sendall(b"echo q\n" * 10)
        before = len(self.app.handled)
        self.reactor.run_once(5)
        this_tick = self.app.handled[before:]
        self.assertEqual(this_tick[:10], [(2, b"echo q")] * 10)   # all of it, first
        self.assertEqual(this_tick[10:], [(1, b"echo f")] * share)

    def test_share_halves_after_a_slow_tick_and_grows_after_quick_ones(self):
        _, ours = self.pair()
        ours.sendall(b"echo x\n" * 200)
        self.reactor.run_once(5)                       # no backlog yet: the full limit
        cheap = self.app.maybe_next_actions

        def expensive(conn_id):     # each request takes a whole tick's target
            time.sleep(reactor.TICK_TARGET)
            return cheap(conn_id)
        self.app.maybe_next_actions = expensive
        share = self.reactor.scheduler.requests_per_tick
        self.reactor.run_once(0)
        self.assertEqual(self.reactor.scheduler.requests_per_tick,
                         max(reactor.MIN_REQUESTS_PER_TICK, share // 2))
        self.app.maybe_next_actions = cheap            # cheap again: the share grows back
        for _ in range(4):
            self.reactor.run_once(0)
        self.assertGreater(self.reactor.scheduler.requests_per_tick, share)

    def test_close_sends_everything_queued_then_closes(self):
        _, ours = self.pair(sndbuf=4096)
        ours.sendall(b"big 300000\nclose\necho never\n")
        self.assertEqual(self.pump(ours, None), b"x" * 300000)
        self.assertEqual(self.app.lost, [1])
        self.assertNotIn((1, b"echo never"), self.app.handled)

    def test_after_close_the_peer_is_read_from_until_it_closes_too(self):
        # Closing a socket with unread input makes the kernel send RST, which can destroy what
        # the peer has not read. So after our FIN the connection lingers, reading and dropping.
        conn_id, ours = self.pair()
        ours.sendall(b"big 200000\nclose\n" + b"ignored after close\n" * 500)
        self.assertEqual(self.pump(ours, None), b"x" * 200000)     # everything, then FIN
        self.assertEqual(self.app.lost, [conn_id])                 # told at once
        self.assertIn(conn_id, self.reactor.conns)                 # but still reading
        ours.sendall(b"more ignored input\n" * 500)
        for _ in range(5):
            self.reactor.run_once(0.01)
        self.assertNotIn((conn_id, b"more ignored input"), self.app.handled)
        ours.close()
        self.tick_until(lambda: conn_id not in self.reactor.conns)
        self.assertEqual(self.app.lost, [conn_id])                 # told once

    def test_a_peer_that_shuts_down_its_side_still_gets_everything_owed(self):
        # "send, then read to the end": DISCONNECT, then shutdown(SHUT_WR), then read.
        for ending in (b"close\n", b""):
            conn_id, ours = self.pair(sndbuf=4096)
            ours.sendall(b"big 300000\n" + ending)
            ours.shutdown(socket.SHUT_WR)
            self.assertEqual(self.pump(ours, None), b"x" * 300000, ending)
            self.assertIn(conn_id, self.app.lost)
            if not ending:      # its FIN was read before ours went: nothing to linger for
                self.assertNotIn(conn_id, self.reactor.conns)
            self.tick_until(lambda: conn_id not in self.reactor.conns)

    def test_a_lingering_connection_is_let_go_after_the_timeout(self):
        self.patch_constant("LINGER_TIMEOUT", 0.05)
        conn_id, ours = self.pair()
        ours.sendall(b"close\n")               # and we never close our end
        self.assertEqual(self.pump(ours, None), b"")
        self.assertIn(conn_id, self.reactor.conns)
        self.tick_until(lambda: conn_id not in self.reactor.conns)

    def patch_constant(self, name, value):
        old = getattr(reactor, name)
        setattr(reactor, name, value)
        self.addCleanup(setattr, reactor, name, old)

    def test_peer_closing_is_reported_once(self):
        conn_id, ours = self.pair()
        ours.close()
        self.tick_until(lambda: self.app.lost)
        for _ in range(3):
            self.reactor.run_once(0)
        self.assertEqual(self.app.lost, [conn_id])
        self.assertNotIn(conn_id, self.reactor.conns)

    def test_a_slow_reader_is_not_read_from_until_its_output_drains(self):
        _, ours = self.pair(sndbuf=4096)
        size = reactor.HIGH_WATER * 4
        ours.sendall(b"big %d\necho after\n" % size)
        for _ in range(20):
            self.reactor.run_once(0.01)
        self.assertEqual(self.app.handled, [(1, b"big %d" % size)])   # paused: "echo after" waits
        self.assertEqual(self.pump(ours, size + 6), b"x" * size + b"after\n")

    def test_output_past_the_cap_disconnects_that_peer_only(self):
        _, stalled = self.pair(sndbuf=4096)
        _, other = self.pair()
        stalled.sendall(b"big %d\n" % (reactor.OUTPUT_CAP + 1))
        with self.assertLogs("reactor", "WARNING"):
            self.tick_until(lambda: self.app.lost == [1])
        other.sendall(b"echo fine\n")
        self.assertEqual(self.pump(other, 5), b"fine\n")

    def test_broadcast_reaches_every_connection(self):
        socks = [self.pair()[1] for _ in range(3)]
        socks[0].sendall(b"all hello\n")
        for sock in socks:
            self.assertEqual(self.pump(sock, 6), b"hello\n")

    def test_a_bug_in_the_app_drops_only_that_connection(self):
        _, buggy = self.pair()
        _, other = self.pair()
        buggy.sendall(b"boom\n")
        with self.assertLogs("reactor", "ERROR"):
            self.assertEqual(self.pump(buggy, None), b"")
        self.assertEqual(self.app.lost, [1])
        other.sendall(b"echo alive\n")
        self.assertEqual(self.pump(other, 6), b"alive\n")

    def test_writes_to_unknown_connections_are_ignored(self):
        self.reactor.write_many([999], b"nobody")
        self.reactor.close_connection(999)
        self.reactor.run_once(0)

    def test_shutdown_action_stops_the_loop_and_closes_everything(self):
        _, ours = self.pair()
        ours.sendall(b"echo bye\nstop\necho not served\n")
        loop = threading.Thread(target=self.reactor.run_forever, daemon=True)
        loop.start()
        loop.join(10)
        self.assertFalse(loop.is_alive(), "run_forever did not return after Shutdown")
        self.assertEqual(ours.recv(100), b"bye\n")
        self.assertEqual(ours.recv(100), b"")
        self.assertNotIn((1, b"echo not served"), self.app.handled)
        self.assertEqual(self.reactor.listener.fileno(), -1)

    def test_stop_wakes_a_waiting_select(self):
        self.reactor.stop()
        started = time.monotonic()
        self.reactor.run_once(30)       # returns at once: the wake-up byte is readable
        self.assertLess(time.monotonic() - started, 10)

    def test_stop_before_run_forever_makes_it_return_at_once(self):
        _, ours = self.pair()
        self.reactor.stop()
        loop = threading.Thread(target=self.reactor.run_forever, daemon=True)
        loop.start()
        loop.join(10)
        self.assertFalse(loop.is_alive(), "run_forever did not return")
        self.assertEqual(ours.recv(100), b"")          # closed, connections included

    def test_a_lingering_connection_bounds_the_wait_of_select(self):
        self.patch_constant("LINGER_TIMEOUT", 0.05)
        conn_id, ours = self.pair()
        ours.sendall(b"close\n")
        self.assertEqual(self.pump(ours, None), b"")   # lingering now
        started = time.monotonic()
        for _ in range(3):          # the select() wait ends at the deadline, not after 30 s
            self.reactor.run_once(30)
            if conn_id not in self.reactor.conns:
                break
        self.assertNotIn(conn_id, self.reactor.conns)
        self.assertLess(time.monotonic() - started, 10)

    def test_past_the_cap_a_connection_is_aborted_not_closed(self):
        # Closing sends what is queued; aborting sends nothing more: the peer is stalled.
        conn_id, ours = self.pair(sndbuf=4096)
        self.reactor.write_many([conn_id], b"x" * (reactor.OUTPUT_CAP + 1))
        conn = self.reactor.conns[conn_id]
        self.assertIs(conn.state, reactor.State.ABORTING)
        self.reactor.close_connection(conn_id)        # too late to close it gracefully
        self.assertIs(conn.state, reactor.State.ABORTING)
        with self.assertLogs("reactor", "WARNING"):
            self.reactor.run_once(0)
        self.assertIs(conn.state, reactor.State.CLOSED)
        self.assertEqual(self.app.lost, [conn_id])
        self.assertEqual(self.pump(ours, None), b"")   # not one byte of it was sent

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
        with self.assertLogs("reactor", "ERROR") as logs:
            self.tick_until(lambda: self.app.lost)
        self.assertEqual(len(logs.records), 1)
        self.assertIn("internal error", logs.records[0].getMessage())
        self.assertEqual(self.app.lost, [1])
        self.assertNotIn(1, self.reactor.conns)
        other.sendall(b"echo alive\n")
        self.assertEqual(self.pump(other, 6), b"alive\n")

    def test_the_reactor_does_not_need_the_chat_protocol(self):
        # The reactor's contract is sansio.actions; neither it nor these tests (whose LineApp it
        # runs) may drag the chat protocol in.
        code = "import sys, reactor, tests.test_reactor; print('protocol' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=30,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), b"False")


# ---------------------------------------------------------------------------------------------
# The fairness policy on its own: reactor.Scheduler with fake connections and a fake clock
# ---------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_conn(name):
    """All the Scheduler touches of a connection is its `scheduled` flag."""
    return SimpleNamespace(name=name, scheduled=False)


class SchedulerTests(unittest.TestCase):

    def setUp(self):
        self.clock = FakeClock()
        self.scheduler = reactor.Scheduler(clock=self.clock)
        self.share = reactor.INITIAL_REQUESTS_PER_TICK
        self.a, self.b, self.c, self.d = map(fake_conn, "abcd")

    def tick(self, requeue=(), cost=0.0):
        """Run one tick's turns. Each turn takes `cost` seconds of the fake clock; the
        connections in `requeue` are requeued during their turn (they have more). Returns the
        turns as (name, limit), with "flush" where after_fresh was called."""
        seen = []
        for conn, limit in self.scheduler.turns(after_fresh=lambda: seen.append("flush")):
            seen.append((conn.name, limit))
            self.clock.now += cost
            if conn in requeue:
                self.scheduler.requeue(conn)
        return seen

    def test_fresh_go_first_with_the_full_limit_then_a_flush_then_backlogs_with_the_share(self):
        self.scheduler.requeue(self.a)
        self.scheduler.requeue(self.b)
        self.scheduler.schedule(self.c)
        self.scheduler.schedule(self.d)
        full = reactor.MAX_REQUESTS_PER_TICK
        self.assertEqual(self.tick(), [("c", full), ("d", full), "flush",
                                       ("a", self.share), ("b", self.share)])

    def test_no_flush_between_unless_both_kinds_have_turns(self):
        self.scheduler.schedule(self.a)
        self.assertEqual(self.tick(), [("a", reactor.MAX_REQUESTS_PER_TICK)])
        self.scheduler.requeue(self.b)
        self.assertEqual(self.tick(), [("b", self.share)])

    def test_once_the_tick_is_target_old_fresh_connections_get_the_share(self):
        for conn in (self.a, self.b, self.c):
            self.scheduler.schedule(conn)
        turns = self.tick(cost=reactor.TICK_TARGET * 0.6)
        self.assertEqual(turns, [("a", reactor.MAX_REQUESTS_PER_TICK),
                                 ("b", reactor.MAX_REQUESTS_PER_TICK), ("c", self.share)])

    def test_past_the_tick_limit_the_waiting_keep_their_place_for_the_next_tick(self):
        self.scheduler.requeue(self.a)
        for conn in (self.b, self.c, self.d):
            self.scheduler.schedule(conn)
        # each turn costs 60% of the limit: b and c fit, d and the backlog's a wait
        turns = self.tick(cost=reactor.TICK_LIMIT * 0.6)
        self.assertEqual([t[0] for t in turns], ["b", "c"])
        self.assertTrue(self.d.scheduled and self.a.scheduled)
        self.assertTrue(self.scheduler.has_backlog)        # select() must not wait
        self.scheduler.schedule(self.b)                    # new input arrives meanwhile
        turns = self.tick()
        self.assertEqual([t if t == "flush" else t[0] for t in turns], ["d", "b", "flush", "a"])
        self.assertFalse(self.scheduler.has_backlog)

    def test_a_connection_requeued_in_its_turn_comes_back_next_tick_in_the_backlog(self):
        self.scheduler.schedule(self.a)
        self.assertFalse(self.scheduler.has_backlog)
        self.tick(requeue=[self.a])
        self.assertTrue(self.scheduler.has_backlog)
        self.assertTrue(self.a.scheduled)
        self.assertEqual(self.tick(), [("a", self.share)])
        self.assertFalse(self.a.scheduled)
        self.assertFalse(self.scheduler.has_backlog)
        self.assertEqual(self.tick(), [])

    def test_a_scheduled_connection_has_one_turn_however_often_it_is_scheduled(self):
        self.scheduler.schedule(self.a)
        self.scheduler.schedule(self.a)
        self.scheduler.requeue(self.a)
        self.assertEqual(self.tick(), [("a", reactor.MAX_REQUESTS_PER_TICK)])

    def test_the_share_halves_after_a_slow_tick_down_to_the_minimum(self):
        shares = []
        for _ in range(5):
            self.scheduler.requeue(self.a)
            self.tick(requeue=[self.a], cost=reactor.TICK_TARGET * 2)
            shares.append(self.scheduler.requests_per_tick)
            self.tick()                 # (a's requeued turn; quick, not counted below)
        self.assertEqual(shares[:2], [self.share // 2, self.share // 4])
        self.assertEqual(shares[-1], reactor.MIN_REQUESTS_PER_TICK)

    def test_the_share_grows_by_a_quarter_after_quick_ticks_that_used_it_up(self):
        self.scheduler.requeue(self.a)
        shares = []
        for _ in range(100):
            self.tick(requeue=[self.a])
            shares.append(self.scheduler.requests_per_tick)
        self.assertEqual(shares[:5], [5, 6, 7, 8, 10])   # at least one more, else a quarter
        self.assertEqual(shares[-1], reactor.MAX_REQUESTS_PER_TICK)

    def test_the_share_stays_unless_a_backlog_used_it_up_in_a_quick_tick(self):
        self.scheduler.requeue(self.a)
        self.tick()                                    # a had fewer requests than its share
        self.scheduler.schedule(self.b)
        self.tick(requeue=[self.b])                    # a fresh one with more does not count
        self.tick(requeue=[self.b], cost=reactor.TICK_TARGET * 0.75)   # not quick enough
        self.assertEqual(self.scheduler.requests_per_tick, self.share)

    def test_a_tick_without_turns_changes_nothing(self):
        self.clock.now += 1000
        self.assertEqual(self.tick(), [])
        self.assertEqual(self.scheduler.requests_per_tick, self.share)

    def test_tick_took_with_explicit_durations(self):
        self.scheduler.tick_took(reactor.TICK_TARGET * 1.01, share_used_up=True)
        self.assertEqual(self.scheduler.requests_per_tick, self.share // 2)
        self.scheduler.tick_took(0.0, share_used_up=False)
        self.assertEqual(self.scheduler.requests_per_tick, self.share // 2)
        self.scheduler.tick_took(reactor.TICK_TARGET / 2 * 0.99, share_used_up=True)
        self.assertEqual(self.scheduler.requests_per_tick, self.share // 2 + 1)


class SharedOutputAndMemoryTests(unittest.TestCase):
    """Output of SHARE_MIN bytes or more is queued by reference and counted once; the memory
    budget drops the connections that hold the most."""

    def setUp(self):
        self.app = LineApp()
        self.reactor = reactor.Reactor("127.0.0.1", 0, self.app)
        self.addCleanup(self.reactor.close)

    def pair(self, sndbuf=None, rcvbuf=None):
        ours, theirs = socket.socketpair()
        if sndbuf:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.addCleanup(ours.close)
        ours.settimeout(5)
        return self.reactor.add_connection(theirs, "local"), ours

    def read_exactly(self, sock, size, max_ticks=2000):
        got = b""
        sock.setblocking(False)
        for _ in range(max_ticks):
            self.reactor.run_once(0.01)
            try:
                got += sock.recv(1 << 20)
            except BlockingIOError:
                pass
            if len(got) >= size:
                return got
        self.fail("wanted %d bytes, got %d" % (size, len(got)))

    def test_a_large_broadcast_is_one_object_counted_once(self):
        conns = [self.pair(sndbuf=4096) for _ in range(50)]
        data = bytes(range(256)) * 200                      # 51 200 bytes, >= SHARE_MIN
        self.reactor.write_many([c for c, _ in conns], data)
        self.assertEqual(self.reactor.memory.output, len(data))
        for conn_id, _ in conns:
            self.assertIs(self.reactor.conns[conn_id].out[0], data)
        for _, sock in conns:                               # partial sends on the way
            self.assertEqual(self.read_exactly(sock, len(data)), data)
        self.assertEqual(self.reactor.memory.output, 0)

    def test_small_and_shared_output_keep_their_order_through_partial_sends(self):
        conn_id, sock = self.pair(sndbuf=4096)
        pieces = []
        for index in range(200):
            piece = (b"%d," % index) * (1 if index % 3 else 900)    # small, small, large, ...
            pieces.append(piece)
            self.reactor.write_many([conn_id], piece)
        want = b"".join(pieces)
        self.assertEqual(self.reactor.conns[conn_id].out_bytes, len(want))
        self.assertEqual(self.read_exactly(sock, len(want)), want)
        self.assertEqual(self.reactor.memory.output, 0)

    def test_what_a_closed_connection_held_is_given_back(self):
        conns = [self.pair(sndbuf=4096) for _ in range(3)]
        self.reactor.write_many([c for c, _ in conns], b"y" * 100000)
        self.reactor.write_many([conns[0][0]], b"small")
        for _, sock in conns:
            sock.close()
        for _ in range(20):
            self.reactor.run_once(0.01)
            if not self.reactor.conns:
                break
        self.assertEqual(self.reactor.conns, {})
        self.assertEqual((self.reactor.memory.output, self.reactor.memory.input), (0, 0))
        self.assertEqual(self.reactor._shared, {})

    def test_pending_input_counts_against_the_budget(self):
        conn_id, sock = self.pair()
        sock.sendall(b"x" * 5000)                           # no newline: a partial request
        for _ in range(50):
            self.reactor.run_once(0.01)
            if self.reactor.memory.input:
                break
        self.assertEqual(self.reactor.memory.input, 5000)
        sock.sendall(b"\n")
        for _ in range(50):
            self.reactor.run_once(0.01)
            if not self.reactor.memory.input:
                break
        self.assertEqual(self.reactor.memory.input, 0)

    def test_over_the_budget_the_largest_holders_are_evicted_first(self):
        self.reactor.memory.budget = 300000
        stalled = [self.pair(sndbuf=4096, rcvbuf=4096) for _ in range(3)]
        reader_id, reader = self.pair()
        for index, (conn_id, _) in enumerate(stalled):      # 50, 100 and 150 KB queued
            self.reactor.write_many([conn_id], b"%d" % index * 50000 * (index + 1))
        self.reactor.write_many([reader_id], b"hi\n")
        self.reactor.write_many([stalled[0][0]], b"z" * 100000)   # 150 KB; the total passes
        with self.assertLogs("reactor", "WARNING") as logs:
            self.reactor.run_once(0)
        evicted = [c for c, _ in stalled if c not in self.reactor.conns]
        self.assertEqual(len(evicted), 1)
        self.assertIn(evicted[0], (stalled[0][0], stalled[2][0]))  # one of the two largest
        self.assertIn("memory budget", logs.records[0].getMessage())
        self.assertLessEqual(self.reactor.memory.total, 300000)
        self.assertEqual(self.reactor.evictions, 1)
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
            self.reactor.run_once(0.01)
            if len(self.app.lost) == 20:
                break
        self.assertEqual(sorted(self.app.lost), list(range(1, 21)))
        self.assertEqual(len(calls), 1, calls)


class FloodControlTests(unittest.TestCase):
    """Each connection's input is metered (bytes and requests); a flooder is slowed, not cut,
    and nobody else waits for it."""

    def make(self, limits):
        self.app = LineApp()
        self.reactor = reactor.Reactor("127.0.0.1", 0, self.app, limits=limits)
        self.addCleanup(self.reactor.close)

    def pair(self):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        ours.settimeout(5)
        return self.reactor.add_connection(theirs, "local"), ours

    def handled_by(self, conn_id):
        return sum(1 for c, _ in self.app.handled if c == conn_id)

    def tick_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.reactor.run_once(0.005)

    def test_requests_past_the_burst_wait_for_the_bucket_then_all_are_served(self):
        self.make(reactor.InputLimits(0, 0, requests_per_second=100, request_burst=20))
        flooder, flood = self.pair()
        other, calm = self.pair()
        flood.sendall(b"echo f\n" * 50)
        self.tick_for(0.05)
        self.assertGreaterEqual(self.handled_by(flooder), 20)
        self.assertLess(self.handled_by(flooder), 35)       # 20 at once, then ~100/s
        self.assertGreaterEqual(self.reactor.throttles, 1)
        calm.sendall(b"echo c\n")                           # the other is served at once
        self.reactor.run_once(0.01)
        self.assertEqual(self.handled_by(other), 1)
        deadline = time.monotonic() + 3
        while self.handled_by(flooder) < 50 and time.monotonic() < deadline:
            self.reactor.run_once(0.01)
        self.assertEqual(self.handled_by(flooder), 50)      # slowed, never cut
        self.assertIn(flooder, self.reactor.conns)

    def test_bytes_past_the_burst_stop_reads_until_the_bucket_refills(self):
        self.make(reactor.InputLimits(bytes_per_second=20000, burst_bytes=10000,
                                      requests_per_second=0, request_burst=0))
        conn_id, sock = self.pair()
        sock.sendall(b"x" * 30000 + b"\n")
        self.reactor.run_once(0.01)
        conn = self.reactor.conns[conn_id]
        self.assertTrue(conn.throttled)
        started = time.monotonic()
        deadline = started + 5
        while self.handled_by(conn_id) < 1 and time.monotonic() < deadline:
            self.reactor.run_once(0.01)
        self.assertEqual(self.handled_by(conn_id), 1)
        self.assertGreater(time.monotonic() - started, 0.3)  # ~20 KB owed at 20 KB/s: ~1 s

    def test_no_limits_means_no_throttling(self):
        self.make(reactor.InputLimits(0, 0, 0, 0))
        conn_id, sock = self.pair()
        sock.sendall(b"echo x\n" * 3000)
        deadline = time.monotonic() + 5
        while self.handled_by(conn_id) < 3000 and time.monotonic() < deadline:
            self.reactor.run_once(0.01)
            try:
                sock.setblocking(False)
                while sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
        self.assertEqual(self.handled_by(conn_id), 3000)
        self.assertEqual(self.reactor.throttles, 0)


RESERVE_SERVER = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
import reactor
from tests.test_reactor import LineApp
server = reactor.Reactor("127.0.0.1", 0, LineApp())
print(server.address[1], flush=True)
server.run_forever()
"""


class DescriptorReserveTests(unittest.TestCase):

    def test_with_every_descriptor_held_by_idle_connections_a_new_client_is_served(self):
        limit = 48
        proc = subprocess.Popen([sys.executable, "-c", RESERVE_SERVER, str(limit)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.stdout.close)
        self.addCleanup(proc.wait, 5)
        self.addCleanup(proc.kill)
        port = int(proc.stdout.readline())
        idle = []
        self.addCleanup(lambda: [s.close() for s in idle])
        for _ in range(limit + 20):                  # more than the server has descriptors
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        client = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.addCleanup(client.close)
        client.sendall(b"echo served\n")
        started = time.monotonic()
        self.assertEqual(client.recv(100), b"served\n")      # within the 2 s timeout
        self.assertLess(time.monotonic() - started, 2)
        # the idle connections that made way were closed, not left hanging
        closed = 0
        for sock in idle[:10]:
            sock.settimeout(2)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass
        self.assertGreater(closed, 0)


class UnprovenConnectionTests(unittest.TestCase):

    def test_when_descriptors_are_scarce_idle_connections_without_a_request_are_closed(self):
        app = LineApp()
        server = reactor.Reactor("127.0.0.1", 0, app)
        self.addCleanup(server.close)
        server._crowded_at = 3                   # as if 3 connections were 90% of the limit
        old = reactor.UNPROVEN_TIMEOUT
        reactor.UNPROVEN_TIMEOUT = 0.05
        self.addCleanup(setattr, reactor, "UNPROVEN_TIMEOUT", old)
        socks = []
        for _ in range(3):
            ours, theirs = socket.socketpair()
            self.addCleanup(ours.close)
            socks.append((server.add_connection(theirs, "local"), ours))
        proven_id, proven = socks[0]
        proven.sendall(b"echo hi\n")
        deadline = time.monotonic() + 3
        with self.assertLogs("reactor", "WARNING") as logs:  # (and not on the runner's output)
            while len(server.conns) > 1 and time.monotonic() < deadline:
                server.run_once(0.01)
        self.assertIn("without completing a request", "\n".join(logs.output))
        self.assertEqual(list(server.conns), [proven_id])    # the two idle ones went
        server.run_once(0)                                   # (the app is told in a flush)
        self.assertEqual(sorted(app.lost), [socks[1][0], socks[2][0]])

    def test_without_pressure_idle_connections_stay(self):
        app = LineApp()
        server = reactor.Reactor("127.0.0.1", 0, app)
        self.addCleanup(server.close)
        old = reactor.UNPROVEN_TIMEOUT
        reactor.UNPROVEN_TIMEOUT = 0.01
        self.addCleanup(setattr, reactor, "UNPROVEN_TIMEOUT", old)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        conn_id = server.add_connection(theirs, "local")
        for _ in range(10):
            server.run_once(0.01)
        self.assertIn(conn_id, server.conns)


class InternalErrorLogTests(unittest.TestCase):

    def test_a_traceback_is_logged_once_per_kind_then_one_line_each(self):
        app = LineApp()
        server = reactor.Reactor("127.0.0.1", 0, app)
        self.addCleanup(server.close)
        socks = []
        for _ in range(3):
            ours, theirs = socket.socketpair()
            self.addCleanup(ours.close)
            server.add_connection(theirs, "local")
            socks.append(ours)
        with self.assertLogs("reactor", "ERROR") as logs:
            for sock in socks:
                sock.sendall(b"boom\n")
                for _ in range(5):
                    server.run_once(0.01)
        errors = [r for r in logs.records if "internal error in" in r.getMessage()]
        self.assertEqual(len(errors), 3, [r.getMessage() for r in logs.records])
        self.assertIsNotNone(errors[0].exc_info)                 # the traceback, once
        self.assertEqual([r.exc_info for r in errors[1:]], [None, None])
        self.assertIn("RuntimeError", errors[1].getMessage())
        self.assertEqual(server.conns, {})                       # each was dropped
