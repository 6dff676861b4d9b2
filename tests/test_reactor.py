"""The loop (reactor.py) on its own: handlers over socket.socketpair(), the timer heap, the
end-of-tick hooks, stop() and signals. No app, no transport: the loop knows neither."""
import functools
import os
import signal
import socket
import threading
import time
import unittest
from types import SimpleNamespace

import reactor
from policy.scheduler import alone_first


class Recorder:
    """A handler that records its calls in a shared list, and may run a function on a read."""

    def __init__(self, name, calls, sock=None, on_read=None):
        self.name, self.calls, self.sock, self.on_read = name, calls, sock, on_read
        self.stale = False

    def on_readable(self):
        self.calls.append((self.name, "read"))
        if self.sock is not None:
            self.sock.recv(4096)
        if self.on_read is not None:
            self.on_read()

    def on_writable(self):
        self.calls.append((self.name, "write"))


class LoopTests(unittest.TestCase):
    new_selector = staticmethod(reactor.new_selector)   # epoll here, where there is one

    def setUp(self):
        self.loop = reactor.Loop(selector=self.new_selector())
        self.addCleanup(self.loop.close)
        self.calls = []

    def ready_pair(self):
        """A socket pair whose served end is readable (and writable)."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        ours.sendall(b"x")
        return theirs

    def test_a_ready_socket_calls_its_handler_read_before_write(self):
        sock = self.ready_pair()
        self.loop.register(sock, reactor.EVENT_READ | reactor.EVENT_WRITE,
                           Recorder("a", self.calls, sock))
        self.loop.run_once(5)
        self.assertEqual(self.calls, [("a", "read"), ("a", "write")])

    def test_a_handler_made_stale_earlier_in_the_tick_is_not_called(self):
        first, second = self.ready_pair(), self.ready_pair()
        one = Recorder("one", self.calls, first)
        two = Recorder("two", self.calls, second)
        one.on_read = lambda: setattr(two, "stale", True)   # whichever goes first closes
        two.on_read = lambda: setattr(one, "stale", True)   # the other
        self.loop.register(first, reactor.EVENT_READ, one)
        self.loop.register(second, reactor.EVENT_READ, two)
        self.loop.run_once(5)
        self.assertEqual(len(self.calls), 1, self.calls)

    def test_ranked_sockets_are_handled_first_in_rank_order(self):
        for name, rank in (("plain", None), ("second", 1), ("first", 0), ("other", None)):
            sock = self.ready_pair()
            self.loop.register(sock, reactor.EVENT_READ, Recorder(name, self.calls, sock),
                               rank=rank)
        self.loop.run_once(5)
        self.assertEqual([name for name, _ in self.calls[:2]], ["first", "second"])
        self.assertEqual(len(self.calls), 4)

    def test_the_read_step_stops_after_its_budget_and_the_rest_wait_for_the_next_tick(self):
        loop = reactor.Loop(step_budget=0.0)
        self.addCleanup(loop.close)
        for index in range(2 * reactor.EVENTS_BETWEEN_CLOCK_READS):
            sock = self.ready_pair()
            loop.register(sock, reactor.EVENT_READ, Recorder(index, self.calls, sock))
        loop.run_once(5)
        self.assertLess(len(self.calls), 2 * reactor.EVENTS_BETWEEN_CLOCK_READS)
        started = time.monotonic()
        for _ in range(4):
            if len(self.calls) == 2 * reactor.EVENTS_BETWEEN_CLOCK_READS:
                break
            loop.run_once(30)       # the rest are read at once: select() does not wait
        self.assertEqual(len(self.calls), 2 * reactor.EVENTS_BETWEEN_CLOCK_READS)
        self.assertLess(time.monotonic() - started, 10)

    def test_after_a_step_cut_short_the_next_goes_the_other_way_round(self):
        loop = reactor.Loop(step_budget=0.0)            # each step: one clock read's events
        self.addCleanup(loop.close)
        per_step = reactor.EVENTS_BETWEEN_CLOCK_READS - 1
        for index in range(4 * reactor.EVENTS_BETWEEN_CLOCK_READS):
            sock = self.ready_pair()
            loop.register(sock, reactor.EVENT_READ, Recorder(index, self.calls, sock))
        loop.run_once(5)
        self.assertEqual(len(self.calls), per_step)
        late = self.ready_pair()            # ready after all the others, not yet read
        loop.register(late, reactor.EVENT_READ, Recorder("late", self.calls, late))
        loop.run_once(5)                    # the other way round: the one ready last, first
        self.assertEqual(self.calls[per_step], ("late", "read"))
        loop.run_once(5)                    # and back: the oldest of those left
        self.assertEqual(self.calls[2 * per_step], (per_step, "read"))

    def test_given_an_order_a_socket_alone_in_its_flow_is_read_before_a_crowds_sockets(self):
        # The read step stops at its first clock reading (a budget of 0): without an order, the
        # socket ready last is not reached in this tick; with the server's (alone_first), alone
        # in its flow, it goes first, then the crowds in the order they came
        crowd = 3 * reactor.EVENTS_BETWEEN_CLOCK_READS
        for flows in (None, lambda handler: handler.name[0]):
            calls = []
            order = None if flows is None else functools.partial(alone_first, flow_of=flows)
            loop = reactor.Loop(step_budget=0.0, order=order)
            self.addCleanup(loop.close)
            for index in range(crowd):
                name = "%s%d" % ("ab"[index % 2], index)
                loop.register(self.ready_pair(), reactor.EVENT_READ, Recorder(name, calls))
            loop.register(self.ready_pair(), reactor.EVENT_READ, Recorder("z", calls))
            loop.run_once(5)
            self.assertLess(len(calls), crowd)
            names = [name for name, _ in calls]
            if flows is None:
                self.assertNotIn("z", names)
            else:
                self.assertEqual(names[:4], ["z", "a0", "b1", "a2"])

    def test_an_unregistered_socket_is_no_longer_watched(self):
        sock = self.ready_pair()
        self.loop.register(sock, reactor.EVENT_READ, Recorder("a", self.calls))
        self.loop.unregister(sock)
        self.loop.unregister(sock)                      # twice: ignored
        self.loop.run_once(0)
        self.assertEqual(self.calls, [])

    def test_a_hang_up_is_told_as_the_events_watched_for(self):
        for events, told in ((reactor.EVENT_WRITE, ["write"]), (reactor.EVENT_READ, ["read"]),
                             (reactor.EVENT_READ | reactor.EVENT_WRITE, ["read", "write"])):
            ours, theirs = socket.socketpair()
            self.addCleanup(ours.close)
            theirs.close()
            calls = []
            self.loop.register(ours, events, Recorder("a", calls))
            self.loop.run_once(5)
            self.loop.unregister(ours)
            self.assertEqual([what for _, what in calls], told)

    def test_a_socket_is_registered_once_and_watched_for_what_it_is_modified_to(self):
        sock = self.ready_pair()
        handler = Recorder("a", self.calls, sock)
        self.loop.register(sock, reactor.EVENT_WRITE, handler)
        with self.assertRaises(KeyError):
            self.loop.register(sock, reactor.EVENT_READ, handler)
        with self.assertRaises(KeyError):
            self.loop.modify(self.ready_pair(), reactor.EVENT_READ, handler)
        self.loop.modify(sock, reactor.EVENT_READ, handler)
        self.loop.run_once(5)
        self.assertEqual(self.calls, [("a", "read")])
        self.loop.modify(sock, reactor.EVENT_READ | reactor.EVENT_WRITE, handler)
        self.loop.modify(sock, reactor.EVENT_WRITE, handler)
        self.loop.run_once(5)
        self.assertEqual(self.calls, [("a", "read"), ("a", "write")])

    def test_timers_run_in_time_order_and_a_cancelled_one_never(self):
        now = time.monotonic()
        self.loop.call_at(now + 0.02, self.calls.append, "second")
        self.loop.call_at(now, self.calls.append, "first")
        cancelled = self.loop.call_at(now + 0.01, self.calls.append, "cancelled")
        self.loop.cancel(cancelled)
        self.loop.cancel(cancelled)                     # twice: nothing more
        deadline = time.monotonic() + 5
        while len(self.calls) < 2 and time.monotonic() < deadline:
            self.loop.run_once(1)
        self.assertEqual(self.calls, ["first", "second"])

    def test_select_waits_until_the_first_timer_and_no_longer(self):
        self.loop.call_later(0.05, self.calls.append, "due")
        started = time.monotonic()
        for _ in range(3):
            self.loop.run_once(30)
            if self.calls:
                break
        self.assertEqual(self.calls, ["due"])
        self.assertLess(time.monotonic() - started, 10)

    def test_cancelled_timers_do_not_pile_up_in_the_heap(self):
        for _ in range(10 * reactor.COMPACT_MIN):
            self.loop.cancel(self.loop.call_later(3600, self.calls.append, "never"))
        self.assertLessEqual(len(self.loop._timers), 2 * reactor.COMPACT_MIN + 2)

    def test_call_every_repeats(self):
        self.loop.call_every(0.01, lambda: self.calls.append("tick"))
        deadline = time.monotonic() + 5
        while len(self.calls) < 3 and time.monotonic() < deadline:
            self.loop.run_once(1)
        self.assertEqual(self.calls, ["tick"] * 3)

    def test_end_of_tick_hooks_run_after_the_timers_in_order(self):
        self.loop.call_at(0, self.calls.append, "timer")
        self.loop.at_end_of_tick(lambda: self.calls.append("hub"))
        self.loop.at_end_of_tick(lambda: self.calls.append("links"))
        self.loop.run_once(0)
        self.assertEqual(self.calls, ["timer", "hub", "links"])

    def test_a_busy_hook_keeps_select_from_waiting(self):
        work = [3]

        def hook():
            work[0] -= 1
        self.loop.at_end_of_tick(hook, busy=lambda: work[0] > 0)
        started = time.monotonic()
        for _ in range(3):
            self.loop.run_once(30)
        self.assertEqual(work, [0])
        self.assertLess(time.monotonic() - started, 10)

    def test_stop_wakes_a_waiting_select(self):
        self.loop.stop()
        started = time.monotonic()
        self.loop.run_once(30)       # returns at once: the wake-up byte is readable
        self.assertLess(time.monotonic() - started, 10)

    def test_stop_from_another_thread_ends_run_forever_and_says_why(self):
        runner = threading.Thread(target=self.loop.run_forever, daemon=True)
        runner.start()
        self.loop.stop("a test")
        self.loop.stop("a second call")             # the first reason stays
        runner.join(10)
        self.assertFalse(runner.is_alive(), "run_forever did not return")
        self.assertEqual(self.loop.stopped_by, "a test")

    def test_a_signal_stops_the_loop_and_is_named(self):
        old = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, old)
        self.loop.stop_on_signals([signal.SIGUSR1])
        os.kill(os.getpid(), signal.SIGUSR1)
        self.loop.run_forever()                     # returns: the signal stopped it
        self.assertEqual(self.loop.stopped_by, "SIGUSR1")


class LoopOverSelectorsTests(LoopTests):
    """The same over the `selectors` module, the loop's selector where there is no epoll."""
    new_selector = staticmethod(reactor._Selectors)


@unittest.skipUnless(hasattr(reactor.select, "epoll"), "no epoll here")
class EpollTests(unittest.TestCase):

    def test_a_descriptor_closed_before_it_was_unregistered_serves_the_next_socket(self):
        loop = reactor.Loop(selector=reactor._Epoll())
        self.addCleanup(loop.close)
        gone, _ = socket.socketpair()
        fd = gone.fileno()
        loop.register(gone, reactor.EVENT_READ, Recorder("gone", []))
        gone.close()                                    # (the kernel forgets it then)
        loop.unregister(gone)                           # closed: ignored
        calls = []
        for sock in socket.socketpair():
            self.addCleanup(sock.close)
            if sock.fileno() == fd:                     # its descriptor again
                loop.register(sock, reactor.EVENT_WRITE, Recorder("next", calls))
        loop.run_once(5)
        self.assertEqual(calls, [("next", "write")])


if __name__ == "__main__":
    unittest.main()
