"""The TCP transport (transport/tcp.py) over socket.socketpair() and loopback, with the fake
app of tests/line_app.py: accepting, the write path (partial sends, shared output), closing
and lingering, water marks and the output cap, and the descriptor reserve."""
import _socket
import socket
import subprocess
import sys
import threading
import time
import unittest

from policy import reserve
from policy.watermarks import HIGH_WATER, OUTPUT_CAP
from tests.line_app import REPO, LineApp, LineServer, ServerCase
from transport import tcp
from transport.conn import State


class TcpConnectionTests(ServerCase):

    def test_accepts_tcp_connections(self):
        client = socket.create_connection(self.server.address, timeout=5)
        self.addCleanup(client.close)
        self.tick_until(lambda: self.app.made)
        self.assertEqual(self.app.made[0][1], "127.0.0.1")
        client.sendall(b"echo tcp\n")
        self.tick_until(lambda: self.app.handled)
        self.assertEqual(client.recv(100), b"tcp\n")

    def test_an_accepted_socket_is_of_the_c_type_alone_and_serves_to_the_end(self):
        client = socket.create_connection(self.server.address, timeout=5)
        self.addCleanup(client.close)
        self.tick_until(lambda: self.app.made)
        conn = self.server.hub.conns[self.app.made[0][0]]
        self.assertIs(type(conn.sock), _socket.socket)     # 48 bytes, not socket.socket's 96
        client.sendall(b"echo one\nbig 300000\nclose\n")
        self.assertEqual(self.pump(client, None), b"one\n" + b"x" * 300000)  # then our FIN
        self.tick_until(lambda: conn.state is State.CLOSED)
        self.assertEqual(conn.sock.fileno(), -1)

    def test_a_connection_is_on_the_flush_list_once_however_often_it_is_writable(self):
        # A remainder waits for writability; a connection the flush had no time for stays on
        # its list; neither may be listed twice (10 000 departures once grew the list to two
        # million entries, and a new client's HELO got no reply).
        hub = self.server.hub
        blocked_id, blocked_sock = self.pair(sndbuf=4096)
        other_id, _ = self.pair()
        blocked_sock.sendall(b"big 300000\n")
        blocked = hub.conns[blocked_id]
        self.tick_until(lambda: blocked.out_bytes and not hub.has_output())
        hub.write_many((other_id, blocked_id), b"new\n")
        hub.flush(budget=-1)                # out of time at once: one send, the rest later
        for _ in range(3):
            blocked.on_writable()
        listed = hub._to_flush + hub._flush_later
        self.assertLessEqual(listed.count(blocked), 1)
        self.assertEqual(self.pump(blocked_sock, 300004), b"x" * 300000 + b"new\n")

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
        self.assertIn(conn_id, self.server.hub.conns)                 # but still reading
        ours.sendall(b"more ignored input\n" * 500)
        for _ in range(5):
            self.server.run_once(0.01)
        self.assertNotIn((conn_id, b"more ignored input"), self.app.handled)
        ours.close()
        self.tick_until(lambda: conn_id not in self.server.hub.conns)
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
                self.assertNotIn(conn_id, self.server.hub.conns)
            self.tick_until(lambda: conn_id not in self.server.hub.conns)

    def test_a_lingering_connection_is_let_go_after_the_timeout(self):
        self.patch_constant(tcp, "LINGER_TIMEOUT", 0.05)
        conn_id, ours = self.pair()
        ours.sendall(b"close\n")               # and we never close our end
        self.assertEqual(self.pump(ours, None), b"")
        self.assertIn(conn_id, self.server.hub.conns)
        self.tick_until(lambda: conn_id not in self.server.hub.conns)

    def test_peer_closing_is_reported_once(self):
        conn_id, ours = self.pair()
        ours.close()
        self.tick_until(lambda: self.app.lost)
        for _ in range(3):
            self.server.run_once(0)
        self.assertEqual(self.app.lost, [conn_id])
        self.assertNotIn(conn_id, self.server.hub.conns)

    def test_a_slow_reader_is_not_read_from_until_its_output_drains(self):
        _, ours = self.pair(sndbuf=4096)
        size = HIGH_WATER * 4
        ours.sendall(b"big %d\necho after\n" % size)
        for _ in range(20):
            self.server.run_once(0.01)
        self.assertEqual(self.app.handled, [(1, b"big %d" % size)])   # paused: "echo after" waits
        self.assertEqual(self.pump(ours, size + 6), b"x" * size + b"after\n")

    def test_output_past_the_cap_disconnects_that_peer_only(self):
        _, stalled = self.pair(sndbuf=4096)
        _, other = self.pair()
        stalled.sendall(b"big %d\n" % (OUTPUT_CAP + 1))
        with self.assertLogs("transport", "WARNING"):
            self.tick_until(lambda: self.app.lost == [1])
        other.sendall(b"echo fine\n")
        self.assertEqual(self.pump(other, 5), b"fine\n")

    def test_a_connection_sent_little_keeps_no_buffer_and_a_busy_one_keeps_its_own(self):
        (quiet_id, quiet), (busy_id, busy) = self.pair(), self.pair()
        hub = self.server.hub
        hub.write_many((quiet_id,), b"x" * tcp.KEEP_TAIL_ABOVE)
        hub.write_many((busy_id,), b"y" * (tcp.KEEP_TAIL_ABOVE + 1))
        kept = hub.conns[busy_id].tail
        hub.flush()
        self.assertEqual((hub.conns[quiet_id].out, hub.conns[quiet_id].tail), ((), None))
        self.assertEqual(hub.conns[busy_id].out, [kept])
        hub.write_many((quiet_id, busy_id), b"z\n")    # both still get what comes next
        self.assertIs(hub.conns[busy_id].tail, kept)
        hub.flush()
        self.assertEqual(self.read_exactly(quiet, tcp.KEEP_TAIL_ABOVE + 2)[-2:], b"z\n")
        self.assertEqual(self.read_exactly(busy, tcp.KEEP_TAIL_ABOVE + 3)[-2:], b"z\n")

    def test_stop_before_run_forever_makes_it_return_at_once(self):
        _, ours = self.pair()
        self.server.stop()
        loop = threading.Thread(target=self.server.run_forever, daemon=True)
        loop.start()
        loop.join(10)
        self.assertFalse(loop.is_alive(), "run_forever did not return")
        self.assertEqual(ours.recv(100), b"")          # closed, connections included

    def test_a_lingering_connection_bounds_the_wait_of_select(self):
        self.patch_constant(tcp, "LINGER_TIMEOUT", 0.05)
        conn_id, ours = self.pair()
        ours.sendall(b"close\n")
        self.assertEqual(self.pump(ours, None), b"")   # lingering now
        started = time.monotonic()
        for _ in range(3):          # the select() wait ends at the deadline, not after 30 s
            self.server.run_once(30)
            if conn_id not in self.server.hub.conns:
                break
        self.assertNotIn(conn_id, self.server.hub.conns)
        self.assertLess(time.monotonic() - started, 10)

    def test_past_the_cap_a_connection_is_aborted_not_closed(self):
        # Closing sends what is queued; aborting sends nothing more: the peer is stalled.
        conn_id, ours = self.pair(sndbuf=4096)
        self.server.hub.write_many([conn_id], b"x" * (OUTPUT_CAP + 1))
        conn = self.server.hub.conns[conn_id]
        self.assertIs(conn.state, State.ABORTING)
        self.server.hub.close_connection(conn_id)        # too late to close it gracefully
        self.assertIs(conn.state, State.ABORTING)
        with self.assertLogs("transport", "WARNING"):
            self.server.run_once(0)
        self.assertIs(conn.state, State.CLOSED)
        self.assertEqual(self.app.lost, [conn_id])
        self.assertEqual(self.pump(ours, None), b"")   # not one byte of it was sent


    def test_an_aborted_connection_is_unwatched_once(self):
        # It is unwatched when it is aborted; asking the selector again as it is torn down cost
        # a KeyError whose text formats the socket: some 15 us for each of thousands of
        # connections reset at once, in the ticks that tear them down.
        conn_id, ours = self.pair(sndbuf=4096)
        selector = self.server.hub.loop.selector
        unwatched = []
        real = selector.unregister
        selector.unregister = lambda fileobj: unwatched.append(fileobj) or real(fileobj)
        self.addCleanup(delattr, selector, "unregister")
        conn = self.server.hub.conns[conn_id]
        self.server.hub.write_many([conn_id], b"x" * (OUTPUT_CAP + 1))
        with self.assertLogs("transport", "WARNING"):
            self.server.run_once(0)
        self.assertIs(conn.state, State.CLOSED)
        self.assertEqual(unwatched, [conn.sock])


class SharedOutputTests(ServerCase):
    """Output of SHARE_MIN bytes or more is queued by reference and counted once."""

    def test_a_large_broadcast_is_one_object_counted_once(self):
        conns = [self.pair(sndbuf=4096) for _ in range(50)]
        data = bytes(range(256)) * 200                      # 51 200 bytes, >= SHARE_MIN
        self.server.hub.write_many([c for c, _ in conns], data)
        self.assertEqual(self.server.hub.memory.output, len(data))
        for conn_id, _ in conns:
            self.assertIs(self.server.hub.conns[conn_id].out[0], data)
        for _, sock in conns:                               # partial sends on the way
            self.assertEqual(self.read_exactly(sock, len(data)), data)
        self.assertEqual(self.server.hub.memory.output, 0)

    def test_small_and_shared_output_keep_their_order_through_partial_sends(self):
        conn_id, sock = self.pair(sndbuf=4096)
        pieces = []
        for index in range(200):
            piece = (b"%d," % index) * (1 if index % 3 else 900)    # small, small, large, ...
            pieces.append(piece)
            self.server.hub.write_many([conn_id], piece)
        want = b"".join(pieces)
        self.assertEqual(self.server.hub.conns[conn_id].out_bytes, len(want))
        self.assertEqual(self.read_exactly(sock, len(want)), want)
        self.assertEqual(self.server.hub.memory.output, 0)

    def test_a_queue_sent_whole_is_dropped_whatever_it_held(self):
        conn_id, sock = self.pair(sndbuf=4096)
        hub = self.server.hub
        pieces = [b"s" * 100, b"L" * 100000, b"t" * 100]     # copied, shared, copied
        for piece in pieces:
            hub.write_many([conn_id], piece)
        self.assertEqual(len(hub.conns[conn_id].out), 3)
        self.assertEqual(self.read_exactly(sock, 100200), b"".join(pieces))  # partial sends
        conn = hub.conns[conn_id]
        self.assertEqual((conn.out, conn.tail, hub.memory.output), ((), None, 0))
        hub.write_many([conn_id], b"next\n")                # and what comes next still goes
        self.assertEqual(self.read_exactly(sock, 5), b"next\n")

    def test_what_a_closed_connection_held_is_given_back(self):
        conns = [self.pair(sndbuf=4096) for _ in range(3)]
        self.server.hub.write_many([c for c, _ in conns], b"y" * 100000)
        self.server.hub.write_many([conns[0][0]], b"small")
        for _, sock in conns:
            sock.close()
        for _ in range(20):
            self.server.run_once(0.01)
            if not self.server.hub.conns:
                break
        self.assertEqual(self.server.hub.conns, {})
        self.assertEqual((self.server.hub.memory.output, self.server.hub.memory.input), (0, 0))
        self.assertEqual(self.server.hub.shared.held, {})


RESERVE_SERVER = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from tests.line_app import LineApp, LineServer
server = LineServer(LineApp())
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
        server = LineServer(app)
        self.addCleanup(server.close)
        server.hub.unproven.crowded_at = 3      # as if 3 connections were 90% of the limit
        old = reserve.UNPROVEN_TIMEOUT
        reserve.UNPROVEN_TIMEOUT = 0.05
        self.addCleanup(setattr, reserve, "UNPROVEN_TIMEOUT", old)
        socks = []
        for _ in range(3):
            ours, theirs = socket.socketpair()
            self.addCleanup(ours.close)
            socks.append((server.add_connection(theirs, "local"), ours))
        proven_id, proven = socks[0]
        proven.sendall(b"echo hi\n")
        deadline = time.monotonic() + 3
        with self.assertLogs("transport", "WARNING") as logs:  # (and not on the runner's output)
            while len(server.hub.conns) > 1 and time.monotonic() < deadline:
                server.run_once(0.01)
        self.assertIn("without completing a request", "\n".join(logs.output))
        self.assertEqual(list(server.hub.conns), [proven_id])    # the two idle ones went
        server.run_once(0)                                   # (the app is told in a flush)
        self.assertEqual(sorted(app.lost), [socks[1][0], socks[2][0]])

    def test_without_pressure_idle_connections_stay(self):
        app = LineApp()
        server = LineServer(app)
        self.addCleanup(server.close)
        old = reserve.UNPROVEN_TIMEOUT
        reserve.UNPROVEN_TIMEOUT = 0.01
        self.addCleanup(setattr, reserve, "UNPROVEN_TIMEOUT", old)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        conn_id = server.add_connection(theirs, "local")
        for _ in range(10):
            server.run_once(0.01)
        self.assertIn(conn_id, server.hub.conns)


class MakeWayTests(unittest.TestCase):
    """Who makes way when every descriptor is taken (TcpListener._make_way; accept() failing
    with EMFILE is what calls it)."""

    def serve(self, server, peer_ip, line=None):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        conn_id = server.listener.add_connection(theirs, "local", peer_ip)
        if line is not None:
            ours.sendall(line)
        return conn_id

    def test_proven_idlers_of_the_address_holding_the_most_make_way(self):
        app = LineApp()
        server = LineServer(app)
        self.addCleanup(server.close)
        lone = self.serve(server, "10.0.0.1", b"echo hi\n")
        crowd = [self.serve(server, "10.0.0.2", b"echo hi\n") for _ in range(3)]
        deadline = time.monotonic() + 3
        while server.hub.unproven and time.monotonic() < deadline:
            server.run_once(0.01)
        self.assertEqual(len(server.hub.unproven), 0)       # every one completed a request
        with self.assertLogs("transport", "WARNING") as logs:
            self.assertTrue(server.listener._make_way())
        self.assertIn("held the most connections (3)", "\n".join(logs.output))
        self.assertIn(lone, server.hub.conns)
        self.assertEqual(len([c for c in crowd if c in server.hub.conns]), 2)

    def test_a_connection_that_never_completed_a_request_makes_way_first(self):
        server = LineServer(LineApp())
        self.addCleanup(server.close)
        crowd = [self.serve(server, "10.0.0.2", b"echo hi\n") for _ in range(3)]
        for _ in range(5):
            server.run_once(0.01)
        silent = self.serve(server, "10.0.0.1")
        with self.assertLogs("transport", "WARNING"):
            self.assertTrue(server.listener._make_way())
        self.assertNotIn(silent, server.hub.conns)
        self.assertEqual([c for c in crowd if c in server.hub.conns], crowd)


if __name__ == "__main__":
    unittest.main()
