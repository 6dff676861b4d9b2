"""What the hub and TCP transport tests share: a tiny fake app (one request per line), a server
made of the loop, the hub and a TCP listener on 127.0.0.1 (as Server.Wiring makes one, without
UDP), and a test case that ticks it by hand over socket.socketpair() ends.

The fake app is not the chat protocol: the hub runs any app (sansio.actions.App), and these
tests never import protocol."""
import os
import socket
import unittest

import reactor
from policy.scheduler import STEP_BUDGET
from sansio.actions import Broadcast, Close, Send, Shutdown, Wait
from transport.hub import Hub
from transport.tcp import TcpListener, listening_socket

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LineApp:
    """A fake app for the hub: one request per line.
    `echo X` -> X back; `big N` -> N bytes back; `all X` -> X to every connection;
    `close`, `stop`, `boom` (raises: a bug in the app), `wait` (Wait: nothing more is handled
    until the test applies a Resume or a Close, as the shared bus's answer would)."""

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
        if verb == b"wait":
            return [Wait(conn_id)]
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


class LineServer:
    """The loop, a hub running `app` and a TCP listener on 127.0.0.1, ephemeral port."""

    def __init__(self, app, **hub_options):
        self.loop = reactor.Loop(step_budget=STEP_BUDGET)
        self.hub = Hub(self.loop, app, **hub_options)
        self.listener = TcpListener(self.hub, listening_socket("127.0.0.1", 0))
        self.address = self.listener.address
        self._closed = False

    def add_connection(self, sock, local_ip, peer_ip=""):
        return self.listener.add_connection(sock, local_ip, peer_ip)

    def run_once(self, timeout=None):
        self.loop.run_once(timeout)

    def run_forever(self):
        try:
            self.loop.run_forever()
        finally:
            self.close()

    def stop(self):
        self.loop.stop()

    def close(self):
        if not self._closed:
            self._closed = True
            self.hub.close()
            self.listener.close()
            self.loop.close()


class ServerCase(unittest.TestCase):
    """A LineServer with a LineApp for each test, and ways to talk to it."""
    options = {}

    def setUp(self):
        self.app = LineApp()
        self.server = LineServer(self.app, **self.options)
        self.addCleanup(self.server.close)

    def pair(self, sndbuf=None, rcvbuf=None):
        """A connection served by the server, and our end of it."""
        ours, theirs = socket.socketpair()
        if sndbuf:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.addCleanup(ours.close)
        ours.settimeout(5)
        return self.server.add_connection(theirs, "local"), ours

    def pump(self, sock, want, max_ticks=2000):
        """Tick the server and read from `sock` until `want` bytes (or EOF, if want is None)
        arrived; bounded by max_ticks. Returns what was read."""
        got = b""
        for _ in range(max_ticks):
            self.server.run_once(0.01)
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

    def read_exactly(self, sock, size, max_ticks=2000):
        got = b""
        sock.setblocking(False)
        for _ in range(max_ticks):
            self.server.run_once(0.01)
            try:
                got += sock.recv(1 << 20)
            except BlockingIOError:
                pass
            if len(got) >= size:
                return got
        self.fail("wanted %d bytes, got %d" % (size, len(got)))

    def tick_until(self, condition, max_ticks=500):
        for _ in range(max_ticks):
            if condition():
                return
            self.server.run_once(0.01)
        self.fail("condition not reached in %d ticks" % max_ticks)

    def patch_constant(self, module, name, value):
        old = getattr(module, name)
        setattr(module, name, value)
        self.addCleanup(setattr, module, name, old)
