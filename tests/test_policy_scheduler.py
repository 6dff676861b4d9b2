"""The fairness policy (policy/scheduler.py) on its own, with fake connections and a fake
clock."""
import unittest
from types import SimpleNamespace

from policy.scheduler import (INITIAL_REQUESTS_PER_TICK, MAX_REQUESTS_PER_TICK,
                              MIN_REQUESTS_PER_TICK, QUIET_READ, READS_LEFT_TARGET,
                              TICK_LIMIT, TICK_TARGET, Scheduler, alone_first, in_turn_order)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_conn(name, peer_ip=None):
    """All the Scheduler touches of a connection is its `scheduled` flag and its address (none
    unless given: then all are one address)."""
    conn = SimpleNamespace(name=name, scheduled=False)
    if peer_ip is not None:
        conn.peer_ip = peer_ip
    return conn


class SchedulerTests(unittest.TestCase):

    def setUp(self):
        self.clock = FakeClock()
        self.scheduler = Scheduler(clock=self.clock)
        self.share = INITIAL_REQUESTS_PER_TICK
        self.a, self.b, self.c, self.d = map(fake_conn, "abcd")

    def tick(self, requeue=(), cost=0.0, target=TICK_TARGET):
        """Run one tick's turns. Each turn takes `cost` seconds of the fake clock; the
        connections in `requeue` are requeued during their turn (they have more). Returns the
        turns as (name, limit), with "flush" where after_fresh was called."""
        seen = []
        for conn, limit in self.scheduler.turns(lambda: seen.append("flush"), target):
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
        full = MAX_REQUESTS_PER_TICK
        self.assertEqual(self.tick(), [("c", full), ("d", full), "flush",
                                       ("a", self.share), ("b", self.share)])

    def test_no_flush_between_unless_both_kinds_have_turns(self):
        self.scheduler.schedule(self.a)
        self.assertEqual(self.tick(), [("a", MAX_REQUESTS_PER_TICK)])
        self.scheduler.requeue(self.b)
        self.assertEqual(self.tick(), [("b", self.share)])

    def test_once_the_tick_is_target_old_fresh_connections_get_the_share(self):
        for conn in (self.a, self.b, self.c):
            self.scheduler.schedule(conn)
        turns = self.tick(cost=TICK_TARGET * 0.6)
        self.assertEqual(turns, [("a", MAX_REQUESTS_PER_TICK),
                                 ("b", MAX_REQUESTS_PER_TICK), ("c", self.share)])

    def test_past_the_tick_limit_the_waiting_keep_their_place_for_the_next_tick(self):
        self.scheduler.requeue(self.a)
        for conn in (self.b, self.c, self.d):
            self.scheduler.schedule(conn)
        # each turn costs 60% of the limit: b and c fit, d and the backlog's a wait
        turns = self.tick(cost=TICK_LIMIT * 0.6)
        self.assertEqual([t[0] for t in turns], ["b", "c"])
        self.assertTrue(self.d.scheduled and self.a.scheduled)
        self.assertTrue(self.scheduler.has_backlog)        # select() must not wait
        self.scheduler.schedule(self.b)                    # new input arrives meanwhile
        turns = self.tick()
        self.assertEqual([t if t == "flush" else t[0] for t in turns], ["d", "b", "flush", "a"])
        self.assertFalse(self.scheduler.has_backlog)

    def test_fresh_ones_that_read_much_go_after_the_quiet_ones_with_a_flush_between(self):
        self.scheduler.requeue(self.a)
        self.scheduler.schedule(self.b, QUIET_READ + 1)
        self.scheduler.schedule(self.c, QUIET_READ)
        self.scheduler.schedule(self.d, 10)
        full = MAX_REQUESTS_PER_TICK
        # (what b produced leaves with the backlog's: a flush after it too cost room1x100 41%
        # more sends)
        self.assertEqual(self.tick(), [("c", full), ("d", full), "flush", ("b", full),
                                       ("a", self.share)])
        self.scheduler.schedule(self.b, QUIET_READ + 1)
        self.scheduler.schedule(self.c, 1)
        self.assertEqual(self.tick(), [("c", full), "flush", ("b", full)])

    def test_heavy_fresh_ones_stop_at_the_target_and_wait_behind_the_next_quiet_ones(self):
        for conn in (self.a, self.b, self.c):
            self.scheduler.schedule(conn, QUIET_READ + 1)
        self.scheduler.requeue(self.d)
        # each turn costs 60% of the target: a and b fit, c waits; the backlog's d still
        # has one turn
        turns = self.tick(cost=TICK_TARGET * 0.6)
        self.assertEqual([t if t == "flush" else t[0] for t in turns], ["a", "b", "d"])
        self.assertTrue(self.c.scheduled)
        self.assertTrue(self.scheduler.has_backlog)        # select() must not wait
        self.scheduler.schedule(self.d)                    # a quiet one comes meanwhile
        self.scheduler.schedule(self.a, QUIET_READ + 1)
        self.assertEqual(self.tick(), [("d", MAX_REQUESTS_PER_TICK), "flush",
                                       ("c", MAX_REQUESTS_PER_TICK),
                                       ("a", MAX_REQUESTS_PER_TICK)])
        self.assertFalse(self.scheduler.has_backlog)

    def test_while_reads_are_left_heavy_ones_and_backlogs_stop_at_the_shorter_target(self):
        for conn in (self.a, self.b):
            self.scheduler.schedule(conn, QUIET_READ + 1)
        self.scheduler.requeue(self.c)
        self.scheduler.requeue(self.d)
        # each turn costs 60% of READS_LEFT_TARGET: a and b fit, then one backlog turn (c);
        # with TICK_TARGET all four would (4 x 3 ms of 20)
        self.assertLess(4 * READS_LEFT_TARGET * 0.6, TICK_TARGET)
        turns = self.tick(cost=READS_LEFT_TARGET * 0.6, target=READS_LEFT_TARGET)
        self.assertEqual([t[0] for t in turns], ["a", "b", "c"])
        self.assertTrue(self.d.scheduled and self.scheduler.has_backlog)
        self.assertEqual([t[0] for t in self.tick(cost=READS_LEFT_TARGET * 0.6)], ["d"])

    def test_past_the_tick_limit_quiet_ones_keep_their_place_before_heavy_ones(self):
        self.scheduler.schedule(self.a, QUIET_READ + 1)
        for conn in (self.b, self.c):
            self.scheduler.schedule(conn)
        turns = self.tick(cost=TICK_LIMIT * 0.6)
        self.assertEqual([t if t == "flush" else t[0] for t in turns], ["b", "c", "flush"])
        self.assertTrue(self.a.scheduled)
        self.scheduler.schedule(self.d)
        self.assertEqual([t if t == "flush" else t[0] for t in self.tick()], ["d", "flush", "a"])

    def test_a_client_alone_at_its_address_goes_before_the_turns_others_left_waiting(self):
        # An address with many connections fills a tick (each turn 60% of the limit); a client
        # of another address with one request waits one tick, not for all of them, and its
        # reply is sent before the waiting turns (59 addresses x 40 connections of JOINs kept
        # a client waiting for up to 3.9 s)
        many = [fake_conn("m%d" % i, "10.0.0.1") for i in range(6)]
        for conn in many:
            self.scheduler.schedule(conn)
        self.assertEqual([t[0] for t in self.tick(cost=TICK_LIMIT * 0.6)], ["m0", "m1"])
        probe = fake_conn("p", "10.0.0.2")
        self.scheduler.schedule(probe)
        self.scheduler.schedule(many[0])                # more input from the crowded address
        turns = self.tick(cost=TICK_LIMIT * 0.6)
        self.assertEqual([t if t == "flush" else t[0] for t in turns], ["p", "flush", "m2"])
        self.assertTrue(all(conn.scheduled for conn in many[3:] + many[:1]))
        self.assertEqual([t[0] for t in self.tick(cost=TICK_LIMIT * 0.6)], ["m3", "m4"])

    def test_sockets_alone_in_their_flow_go_first_the_rest_in_the_order_they_came(self):
        events = [(fd, name, 1) for fd, name in
                  enumerate(("a1", "a2", "b1", "d1", "a3", "c1", "b2"))]
        ordered = alone_first(events, lambda name: name[0])
        self.assertEqual([handler for _fd, handler, _ in ordered],
                         ["d1", "c1", "a1", "a2", "b1", "a3", "b2"])
        for same in (events[:2], events[2:4]):          # one flow; every one alone
            self.assertIs(alone_first(same, lambda name: name[0]), same)
        conns = [(0, fake_conn("x", "10.0.0.1"), 1), (1, fake_conn("y", "10.0.0.1"), 1),
                 (2, fake_conn("p", "10.0.0.2"), 1)]                # the server's flows
        self.assertEqual([e[1].name for e in alone_first(conns)], ["p", "x", "y"])

    def test_one_connection_of_each_address_without_turns_left_waiting_goes_first(self):
        a1, a2, b1, b2, c1 = (fake_conn(n, n[0]) for n in ("a1", "a2", "b1", "b2", "c1"))
        order, jumped = in_turn_order([a1], [b1, a2, c1, b2])
        self.assertEqual(([c.name for c in order], jumped), (["b1", "c1", "a1", "a2", "b2"], 2))
        order, jumped = in_turn_order([], [b1, a2, b2, c1])     # nothing waiting: read order
        self.assertEqual(([c.name for c in order], jumped), (["b1", "a2", "c1", "b2"], 0))

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
        self.assertEqual(self.tick(), [("a", MAX_REQUESTS_PER_TICK)])

    def test_the_share_halves_after_a_slow_tick_down_to_the_minimum(self):
        shares = []
        for _ in range(5):
            self.scheduler.requeue(self.a)
            self.tick(requeue=[self.a], cost=TICK_TARGET * 2)
            shares.append(self.scheduler.requests_per_tick)
            self.tick()                 # (a's requeued turn; quick, not counted below)
        self.assertEqual(shares[:2], [self.share // 2, self.share // 4])
        self.assertEqual(shares[-1], MIN_REQUESTS_PER_TICK)

    def test_the_share_grows_by_a_quarter_after_quick_ticks_that_used_it_up(self):
        self.scheduler.requeue(self.a)
        shares = []
        for _ in range(100):
            self.tick(requeue=[self.a])
            shares.append(self.scheduler.requests_per_tick)
        self.assertEqual(shares[:5], [5, 6, 7, 8, 10])   # at least one more, else a quarter
        self.assertEqual(shares[-1], MAX_REQUESTS_PER_TICK)

    def test_the_share_stays_unless_a_backlog_used_it_up_in_a_quick_tick(self):
        self.scheduler.requeue(self.a)
        self.tick()                                    # a had fewer requests than its share
        self.scheduler.schedule(self.b)
        self.tick(requeue=[self.b])                    # a fresh one with more does not count
        self.tick(requeue=[self.b], cost=TICK_TARGET * 0.75)   # not quick enough
        self.assertEqual(self.scheduler.requests_per_tick, self.share)

    def test_a_tick_without_turns_changes_nothing(self):
        self.clock.now += 1000
        self.assertEqual(self.tick(), [])
        self.assertEqual(self.scheduler.requests_per_tick, self.share)

    def test_tick_took_with_explicit_durations(self):
        self.scheduler.tick_took(TICK_TARGET * 1.01, share_used_up=True)
        self.assertEqual(self.scheduler.requests_per_tick, self.share // 2)
        self.scheduler.tick_took(0.0, share_used_up=False)
        self.assertEqual(self.scheduler.requests_per_tick, self.share // 2)
        self.scheduler.tick_took(TICK_TARGET / 2 * 0.99, share_used_up=True)
        self.assertEqual(self.scheduler.requests_per_tick, self.share // 2 + 1)


if __name__ == "__main__":
    unittest.main()
