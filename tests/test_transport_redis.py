"""The Redis links transport (transport/redis.py) with a fake links object and a plain TCP
listener on 127.0.0.1 standing in for Redis: links opened when wanted, bytes carried both
ways, what link_actions() returns handed to the hub's apply, the timer, failures, goodbye.
(tests/test_bus.py runs the real bus against a real redis-server.)"""
import socket
import time
import unittest

import reactor
from sansio.actions import Send
from transport.redis import GOODBYE_LINK, LINK_SHARE, RedisLinks


class FakeLinks:
    """A links object that wants its two links once and records every call."""
    links = ("sub", "cmd")

    def __init__(self):
        self.calls = []
        self.output = {"sub": b"", "cmd": b""}
        self.actions = []
        self.deadline = None
        self.opened = set()

    def links_wanted(self, now):
        return [name for name in self.links if name not in self.opened]

    def link_opening(self, name, now):
        self.opened.add(name)
        self.calls.append(("opening", name))

    def link_up(self, name, now):
        self.calls.append(("up", name))

    def link_failed(self, name, why, now):
        self.calls.append(("failed", name))

    def link_data(self, name, data, now):
        self.calls.append(("data", name, data))
        self.actions.append(Send(1, data))

    def link_output(self, name):
        data, self.output[name] = self.output[name], b""
        return data

    def links_to_close(self):
        return []

    def links_deadline(self):
        return self.deadline

    def links_timer(self, now):
        self.calls.append(("timer",))
        self.deadline = None

    def links_goodbye(self):
        return b"BYE\r\n"

    def link_actions(self):
        actions, self.actions = self.actions, []
        return actions


def guarded(_conn, func, *args):
    return func(*args)


class RedisLinksTests(unittest.TestCase):

    def setUp(self):
        self.loop = reactor.Loop()
        self.addCleanup(self.loop.close)
        self.redis = socket.socket()
        self.addCleanup(self.redis.close)
        self.redis.bind(("127.0.0.1", 0))
        self.redis.listen(8)
        self.redis.settimeout(5)
        self.fake = FakeLinks()
        self.applied = []
        self.links = RedisLinks(self.loop, self.fake, self.redis.getsockname(),
                                self.applied.extend, guarded)
        self.addCleanup(self.links.close)

    def tick_until(self, condition, max_ticks=500):
        for _ in range(max_ticks):
            if condition():
                return
            self.loop.run_once(0.01)
        self.fail("condition not reached in %d ticks" % max_ticks)

    def accept_both(self):
        """Tick until both links are up; our ends of them, in the order they connected."""
        self.tick_until(lambda: sum(c[0] == "up" for c in self.fake.calls) == 2)
        ends = []
        for _ in range(2):
            end, _addr = self.redis.accept()
            end.settimeout(5)
            self.addCleanup(end.close)
            ends.append(end)
        return ends

    def test_wanted_links_are_opened_and_what_they_owe_is_sent(self):
        self.fake.output["cmd"] = b"PING\r\n"
        ends = self.accept_both()
        self.assertEqual(sorted(c for c in self.fake.calls if c[0] == "opening"),
                         [("opening", "cmd"), ("opening", "sub")])
        received = []

        def read_some():
            for end in ends:
                end.setblocking(False)
                try:
                    received.append(end.recv(100))
                except BlockingIOError:
                    pass
            return received
        self.tick_until(read_some)
        self.assertEqual(received, [b"PING\r\n"])

    def test_what_a_link_reads_goes_to_the_links_object_and_its_actions_to_apply(self):
        ends = self.accept_both()
        for end in ends:
            end.sendall(b"+PONG\r\n")
        self.tick_until(lambda: len(self.applied) == 2)
        data = [c for c in self.fake.calls if c[0] == "data"]
        self.assertEqual(sorted(c[1] for c in data), ["cmd", "sub"])
        self.assertEqual(self.applied, [Send(1, b"+PONG\r\n")] * 2)

    def test_a_tick_handles_what_the_links_bring_for_a_share_of_the_step_budget(self):
        """Redis sending faster than the node handles: each tick does one chunk a link at least,
        more only within LINK_SHARE of the step budget; the rest waits in the sockets for the
        next ticks, and nothing is lost."""
        handled = {"sub": [], "cmd": []}

        def slow_link_data(name, data, now):        # each chunk takes longer than the share
            handled[name].append(data)
            until = time.monotonic() + 1.5 * LINK_SHARE * self.loop.step_budget
            while time.monotonic() < until:
                pass
        self.fake.link_data = slow_link_data
        ends = self.accept_both()
        payload = b"x" * (20 * 64 * 1024)
        for end in ends:
            end.setblocking(False)
        sent = [0, 0]
        while sent != [len(payload)] * 2:
            for i, end in enumerate(ends):
                try:
                    sent[i] += end.send(payload[sent[i]:])
                except BlockingIOError:
                    pass
            before = {name: len(chunks) for name, chunks in handled.items()}
            self.loop.run_once(0.01)
            for name, chunks in handled.items():
                self.assertLessEqual(len(chunks) - before[name], 1, "one chunk a tick")
        self.tick_until(lambda: all(sum(map(len, chunks)) == len(payload)
                                    for chunks in handled.values()), max_ticks=5000)
        self.assertEqual([b"".join(chunks) for chunks in handled.values()], [payload] * 2)

    def test_the_timer_runs_when_the_deadline_comes(self):
        self.fake.deadline = time.monotonic() + 0.05
        self.loop.run_once(0)           # (a deadline changes only in a call into the links)
        started = time.monotonic()
        for _ in range(5):
            self.loop.run_once(30)      # the wait ends at the deadline
            if ("timer",) in self.fake.calls:
                break
        self.assertIn(("timer",), self.fake.calls)
        self.assertLess(time.monotonic() - started, 10)

    def test_a_tick_that_outlasts_a_deadline_reads_the_links_again_before_the_timer(self):
        """A process stopped in the middle of a tick: the reply that came meanwhile is read
        before the timer judges it overdue (the bus's reply timeout)."""
        ends = self.accept_both()

        def freezes(name, data, now):
            self.fake.calls.append(("data", name, data))
            if data == b"A":
                self.fake.deadline = self.loop.now + 0.05   # the reply's timeout
                ends[1].sendall(b"B")                       # the reply, while stopped
                time.sleep(0.1)
        self.fake.link_data = freezes
        ends[1].sendall(b"A")
        self.tick_until(lambda: ("timer",) in self.fake.calls)
        order = [c for c in self.fake.calls if c[0] in ("data", "timer")]
        self.assertEqual([c[-1] for c in order], [b"A", b"B", "timer"])

    def test_a_link_closed_by_the_other_side_is_reported_failed(self):
        ends = self.accept_both()
        for end in ends:
            end.close()
        with self.assertLogs("transport.redis", "WARNING") as logs:
            self.tick_until(lambda: sum(c[0] == "failed" for c in self.fake.calls) == 2)
        self.assertEqual(len(logs.output), 2)
        self.assertIn("closed by the other side", logs.output[0])

    def test_a_refused_link_is_logged_at_once_and_once_while_it_is_retried(self):
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))
        address = refused.getsockname()
        refused.close()                 # nothing listens there: every connect is refused
        fake = FakeLinks()
        fake.link_failed = lambda name, why, now: (fake.calls.append(("failed", name)),
                                                   fake.opened.discard(name))  # retried at once
        with self.assertLogs("transport.redis", "WARNING") as logs:
            links = RedisLinks(self.loop, fake, address, self.applied.extend, guarded)
            self.addCleanup(links.close)
            self.tick_until(lambda: sum(c == ("failed", "cmd") for c in fake.calls) >= 3)
        refusals = [line for line in logs.output if "cmd link" in line]
        self.assertEqual(len(refusals), 1, logs.output)
        self.assertIn("refused", refusals[0])
        self.assertIn("%s:%d" % address, refusals[0])

    def test_closing_sends_the_last_words_to_the_command_link(self):
        ends = self.accept_both()
        self.links.close()
        got = []
        for end in ends:
            data = end.recv(100)
            if data:
                got.append(data)
        self.assertEqual(got, [b"BYE\r\n"])
        self.assertEqual(GOODBYE_LINK, "cmd")


if __name__ == "__main__":
    unittest.main()
