"""bench/compare.py end to end: a tiny fanout against all three servers, one round.

What a user sees: every server named in the table, with a ratio to the first and nothing
missing, and the JSON line saying the same. Everything runs on 127.0.0.1 on free ports; every
wait is bounded (compare.py's own, and the timeout of the run as a whole).
"""
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import time
import unittest

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARE = os.path.join(TOP, "bench", "compare.py")
SERVERS = ("project", "asyncio", "threaded")


class CompareTest(unittest.TestCase):

    def test_tiny_fanout_names_every_server_with_a_ratio_and_nothing_missing(self):
        # The project's server on 127.0.0.1, not start.sh's 0.0.0.0: tests stay on loopback.
        argv = [sys.executable, COMPARE, "--rooms", "2", "--members", "3", "--messages", "5",
                "--repeat", "1", "--timeout", "20",
                "--server", "project=%s Server.py 127.0.0.1 {port}" % sys.executable,
                "--server", "asyncio=%s -m bench.asyncio_peer {port}" % sys.executable,
                "--server", "threaded=%s -m bench.threaded_peer {port}" % sys.executable]
        done = subprocess.run(argv, cwd=TOP, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=50)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        lines = done.stdout.strip().splitlines()
        for name in SERVERS:
            row = [line for line in lines if re.match(r"rooms2x3\s+%s\s" % name, line)]
            self.assertEqual(len(row), 1, done.stdout)
            # ... deliveries/s, p50, p99, missing (0), ratio (min..max)
            self.assertRegex(row[0], r"\s0\s+\d+\.\d\d \(\d+\.\d\d\.\.\d+\.\d\d\)$")
        summary = json.loads(lines[-1])["results"]["rooms2x3"]
        self.assertEqual(sorted(summary), sorted(SERVERS))
        for name in SERVERS:
            self.assertEqual(summary[name]["missing"], 0)
            self.assertEqual(summary[name]["failed_rounds"], 0)
            self.assertGreater(summary[name]["ratio"], 0)
        self.assertEqual(summary["project"]["ratio"], 1.0)



class CarryOutTest(unittest.TestCase):

    def test_a_join_naming_a_callback_is_answered_by_the_peers_dispatch(self):
        from sansio.actions import carry_out
        from protocol import ChatProtocol
        app = ChatProtocol(port=1, student_id="1")
        app.connection_made(1, "127.0.0.1", "127.0.0.1")
        app.data_received(1, b"JOIN_CHATROOM: r\nCLIENT_IP: 10.0.0.9\nPORT: 5000\nCLIENT_NAME: a\n")
        written = []
        carry_out(app.maybe_next_actions(1), lambda c, d: written.append(d), None, None)
        self.assertTrue(written[0].startswith(b"JOINED_CHATROOM: r\n"))


class BusCpuTest(unittest.TestCase):
    """bench/bus_cpu.py end to end at a tiny size: every set-up delivers everything and gets a
    row; the JSON line carries the four set-ups and a projection for N = 1, 2, 4, 8."""

    def test_tiny_loads_deliver_everything_and_give_a_row_per_setup(self):
        from tests.redis_server import REDIS_SERVER, SKIP_REASON
        if not REDIS_SERVER:
            self.skipTest(SKIP_REASON)
        argv = [sys.executable, "-m", "bench.bus_cpu", "--load", "3x3", "--messages", "40",
                "--repeat", "1", "--timeout", "20", "--json"]
        done = subprocess.run(argv, cwd=TOP, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=100)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        lines = done.stdout.strip().splitlines()
        for setup in ("alone", "alone-2", "bus-1", "bus-2-spread", "bus-2-local"):
            row = [line for line in lines if re.match(r"\s+%s\s" % setup, line)]
            self.assertEqual(len(row), 1, done.stdout)
            self.assertRegex(row[0], r"\s0\s+0$")            # missing 0, extra 0
        result = json.loads(lines[-1])["results"]["rooms3x3"]
        for setup, median in result["median"].items():
            self.assertEqual((median["missing"], median["extra"]), (0, 0), setup)
            self.assertGreater(median["deliveries_per_s"], 0, setup)
        # 360 chats may take under one clock tick of a node's CPU: then there is no projection,
        # and the table says why; otherwise it has every N for both layouts.
        layouts = result["projection"]["layouts"]
        if layouts:
            for layout in ("local", "spread"):
                self.assertEqual(sorted(layouts[layout]["rows"]), ["1", "2", "4", "8"])
        else:
            self.assertIn("no projection", done.stdout)


class BusPathTest(unittest.TestCase):
    """bench/bus_path.py: the Python a chat costs a bus node, with Redis played by the script.
    It raises if any chat's delivery is missing, so a run that prints its line delivered all."""

    def test_a_tiny_run_delivers_every_chat_and_names_each_part(self):
        done = subprocess.run([sys.executable, "-m", "bench.bus_path", "--rooms", "3",
                               "--members", "2", "--chats", "2", "--ticks", "5", "--repeat", "1"],
                              cwd=TOP, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertRegex(done.stdout, r"alone [0-9.]+ µs a chat; bus [0-9.]+ \(requests [0-9.]+, "
                                      r"take\+encode [0-9.]+, reply [0-9.]+, sub-read [0-9.]+, "
                                      r"actions [0-9.]+\); the bus's extra -?[0-9.]+ µs a chat")


class CountingMemberTest(unittest.TestCase):
    """bench/bus_cpu.py's member that counts the chats that come instead of parsing them."""

    def test_chats_split_anywhere_over_reads_are_each_counted_once(self):
        from bench.bus_cpu import CountingMember
        from sansio.wire import chat_message
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        member = CountingMember.__new__(CountingMember)     # (its socket: one end of the pair)
        member.sock, member.name, member.received, member.in_flight = ours, "m0-1", 0, 5
        member.ref = 0
        member.counting()
        stream = b"".join(chat_message(0, name, "x" * 40)
                          for name in ("m0-1", "m0-10", "m0-1", "m0-2", "m0-1"))
        ours.setblocking(False)
        for start in range(0, len(stream), 7):            # pieces cutting every line somewhere
            theirs.sendall(stream[start:start + 7])         # (a socket pair: there at once)
            member.on_readable()
            self.assertEqual(member.received, stream[:start + 7].count(b"\n\n"))
        self.assertEqual(member.received, 5, "every chat once")
        self.assertEqual(member.in_flight, 2, "its own three came back (not m0-10's)")


class BusLoadProbeApartTest(unittest.TestCase):
    """bench/bus_load.py --probe-apart: the probe's chats, timed in a process of its own."""

    def test_the_probe_apart_times_its_chats_and_stops_when_told(self):
        from bench.bus_load import PROBE_EVERY, _ProbeApart
        from tools.kit import ServerProcess
        server = ServerProcess("--no-udp")
        self.addCleanup(server.stop)
        started = time.monotonic()
        apart = _ProbeApart(server.port, timeout=20.0)
        time.sleep(25 * PROBE_EVERY)        # (a chat every PROBE_EVERY: some 25 of them)
        trips = apart.trips(started, time.monotonic())
        self.assertFalse(apart.child.is_alive(), "it stopped when told")
        self.assertGreaterEqual(len(trips), 3, "its chats came back and were timed")
        self.assertTrue(all(0 < trip < 5.0 for trip in trips), trips)


class BusLoadJoinFirstTest(unittest.TestCase):
    """bench/bus_load.py's members: nobody chats before every member has joined. A member gets
    the chats numbered after its own join only (docs/PROTOCOL.md section 8), so a chat sent while
    another member was still joining never reached that one: with two nodes on a loaded machine
    a run ended a few deliveries short. A listening socket on 127.0.0.1 plays the server."""

    def setUp(self) -> None:
        self.listener = socket.socket()
        self.addCleanup(self.listener.close)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()

    def connect(self, name: str):
        """A bench member of room "r" and the server's end of its connection."""
        from bench.bus_load import Member
        member = Member(self.listener.getsockname()[1], "r", name, 3)
        self.addCleanup(member.sock.close)
        self.listener.settimeout(5)
        peer, _address = self.listener.accept()
        self.addCleanup(peer.close)
        return member, peer

    def joined(self, member, peer, ref: int, join_id: int) -> None:
        """The server answers `member`'s JOIN; the member reads it (within 5 s)."""
        from sansio.wire import joined_reply
        peer.sendall(joined_reply("r", "127.0.0.1", 1, ref, join_id))
        with selectors.DefaultSelector() as selector:
            selector.register(member.sock, selectors.EVENT_READ)
            for _ in range(50):
                if member.ref is not None or not selector.select(5):
                    break
                member.on_readable()
        self.assertEqual(member.ref, ref)

    def test_no_chat_goes_before_every_member_has_its_room_ref(self):
        from bench.bus_load import top_up
        first, first_peer = self.connect("a")
        second, second_peer = self.connect("b")
        self.joined(first, first_peer, 0, 1)
        self.assertFalse(top_up([first, second], 8, "hello"))
        self.assertNotIn(b"CHAT:", bytes(first.out), "b has not joined yet")
        self.joined(second, second_peer, 0, 2)
        self.assertTrue(top_up([first, second], 8, "hello"))
        for member in (first, second):
            self.assertEqual(bytes(member.out).count(b"CHAT: 0\n"), 3, member.name)


class BusCpuProjectionTest(unittest.TestCase):
    """The projection's arithmetic, from CPU figures made up for it."""

    def summary(self, alone, one, local, spread, redis_one, redis_two):
        return {"alone": {"node_us_per_chat": alone, "redis_us_per_chat": 0.0},
                "bus-1": {"node_us_per_chat": one, "redis_us_per_chat": redis_one},
                "bus-2-local": {"node_us_per_chat": local, "redis_us_per_chat": redis_two},
                "bus-2-spread": {"node_us_per_chat": spread, "redis_us_per_chat": redis_two}}

    def test_nodes_that_cost_nothing_more_each_scale_linearly_until_redis(self):
        from bench.bus_cpu import project
        # alone 10 µs a chat, a bus node 20, Redis 50: 20 000 chats/s, so from N = 1 on the
        # nodes (50 000 chats/s each) are not the limit; Redis is.
        result = project(self.summary(10.0, 20.0, 20.0, 30.0, 50.0, 50.0), size=5)
        self.assertEqual(result["alone_deliveries_per_s_one_core"], 500000.0)
        local = result["layouts"]["local"]
        self.assertEqual(local["rows"][1]["deliveries_per_s"], 100000.0)   # 5 x 20 000
        self.assertEqual(local["rows"][1]["limit"], "redis")
        self.assertEqual(local["redis_limit_from_n"], 1)

    def test_each_added_node_adds_its_cost_to_every_chat(self):
        from bench.bus_cpu import project
        # A bus node 20 µs a chat; a second one adds 5 (local) or 10 (spread); Redis 1 µs.
        result = project(self.summary(10.0, 20.0, 25.0, 30.0, 1.0, 1.0), size=5)
        local, spread = result["layouts"]["local"], result["layouts"]["spread"]
        # N = 4: 4e6 / (20 + 3 x 5) chats/s; 5 deliveries each; alone does 5 x 1e5.
        self.assertAlmostEqual(local["rows"][4]["deliveries_per_s"], 5 * 4e6 / 35)
        self.assertAlmostEqual(local["rows"][4]["ratio_to_alone"], 4e6 / 35 / 1e5)
        self.assertAlmostEqual(spread["rows"][4]["deliveries_per_s"], 5 * 4e6 / 50)
        self.assertEqual(spread["rows"][8]["limit"], "nodes")
        self.assertIsNone(local["redis_limit_from_n"])      # 1e6/1 chats/s: never within reach

    def test_each_round_is_compared_with_alone_in_the_same_round(self):
        from bench.bus_cpu import paired
        # The machine twice as slow in the second round and the third: bus-1 costs 1.5 times
        # alone in two rounds out of three, where the medians of each set-up's rounds (alone
        # 11, bus-1 30) say 2.7.
        runs = {"alone": [{"node_us_per_chat": 10.0}, {"node_us_per_chat": 20.0},
                          {"node_us_per_chat": 11.0}],
                "bus-1": [{"node_us_per_chat": 15.0}, {"node_us_per_chat": 30.0},
                          {"node_us_per_chat": 33.0}]}
        for setup in ("bus-2-spread", "bus-2-local"):
            runs[setup] = runs["bus-1"]
        self.assertEqual(paired(runs)["bus-1"], 1.5)

    def test_what_two_servers_on_one_core_cost_without_a_bus_is_not_counted_to_the_bus(self):
        from bench.bus_cpu import project
        summary = self.summary(10.0, 20.0, 25.0, 30.0, 1.0, 1.0)
        summary["alone-2"] = {"node_us_per_chat": 12.0, "redis_us_per_chat": 0.0}
        layouts = project(summary, size=5)["layouts"]
        self.assertEqual([layouts[layout]["node_us_extra_per_node"]
                          for layout in ("local", "spread")], [3.0, 8.0])
        summary["alone-2"]["node_us_per_chat"] = 20.0           # (never below nothing)
        self.assertEqual(project(summary, size=5)["layouts"]["local"]["node_us_extra_per_node"],
                         0.0)

    def test_a_node_under_one_clock_tick_gives_no_projection(self):
        from bench.bus_cpu import project
        self.assertEqual(project(self.summary(0.0, 20.0, 25.0, 30.0, 1.0, 1.0), 5)["layouts"], {})


if __name__ == "__main__":
    unittest.main()
