#!/usr/bin/env python3
"""A comparison peer: the project's protocol served by one thread per connection.

    python3 -m bench.threaded_peer PORT       (from the repository's top folder;
                                              listens on 127.0.0.1:PORT)

The design most servers of this protocol use: socketserver.ThreadingTCPServer gives every
connection a thread that blocks in recv(). The wire format is not written a second time: the
bytes go to the project's own sans-IO state machine, protocol.ChatProtocol, shared by all
threads behind one lock, and its actions are carried out while that lock is held, with one
blocking sendall() per member. Holding the lock while sending is what keeps every member's
stream whole and every sender's messages in order; it is also this design's cost: one member
slow to read holds up every other thread (bounded here by SEND_TIMEOUT, after which that member
is dropped).

Like the project's server it prints "listening on IP:PORT" once it listens, and stops on
KILL_SERVICE, SIGINT or SIGTERM. Standard library only.
"""
import signal
import socket
import socketserver
import sys
import threading
from typing import Dict, List

from sansio.actions import Action, carry_out
from protocol import ChatProtocol

HOST = "127.0.0.1"
STUDENT_ID = "00000000"
READ_SIZE = 64 * 1024           # bytes asked of one recv(), as the project's reactor does
# How long one sendall() may block before its member counts as stalled and is dropped. Every
# other thread waits for the lock meanwhile, so this bounds how long one reader can stop the
# server.
SEND_TIMEOUT = 5.0
# After DISCONNECT: how long to read and drop what the client still sends while waiting for it
# to close (closing with unread input would reset the connection), as the project's server does.
LINGER_TIMEOUT = 2.0


class Peer(socketserver.ThreadingTCPServer):
    """The listening server plus what every connection thread shares."""

    daemon_threads = True               # a thread blocked in recv() must not keep us alive
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, port: int) -> None:
        super().__init__((HOST, port), Handler)
        self.lock = threading.Lock()
        self.app = ChatProtocol(port=self.server_address[1], student_id=STUDENT_ID)
        self.socks: Dict[int, socket.socket] = {}       # open connections, by conn_id
        self.next_conn_id = 1

    def apply(self, actions: List[Action]) -> None:
        """Carry out the state machine's actions, in order (the caller holds the lock)."""
        carry_out(actions, self.send, self.close, self.stop)

    def close(self, conn_id: int) -> None:
        sock = self.socks.pop(conn_id, None)
        if sock is not None:
            shut(sock, socket.SHUT_WR)      # all is sent (sendall): our FIN follows it

    def stop(self) -> None:
        # serve_forever() runs in the main thread; shutdown() waits for it to return, so it
        # must be asked from a thread of its own.
        threading.Thread(target=self.shutdown, daemon=True).start()

    def send(self, conn_id: int, data: bytes) -> None:
        sock = self.socks.get(conn_id)
        if sock is None:
            return                          # gone or closing: nothing more for it
        try:
            sock.sendall(data)
        except OSError:                     # reset, or stalled past SEND_TIMEOUT
            del self.socks[conn_id]
            shut(sock, socket.SHUT_RDWR)    # its own thread sees the end and leaves its rooms


class Handler(socketserver.BaseRequestHandler):
    """One connection's thread: read, hand the bytes over, handle every complete request."""

    def handle(self) -> None:
        peer, sock = self.server, self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(SEND_TIMEOUT)       # bounds sendall(); recv() below retries on it
        with peer.lock:
            conn_id = peer.next_conn_id
            peer.next_conn_id += 1
            peer.socks[conn_id] = sock
            peer.app.connection_made(conn_id, sock.getsockname()[0])
        try:
            while conn_id in peer.socks:
                try:
                    data = sock.recv(READ_SIZE)
                except socket.timeout:
                    continue                # an idle client, not an error
                except OSError:
                    break
                if not data:
                    break
                with peer.lock:
                    if conn_id not in peer.socks:
                        break
                    peer.app.data_received(conn_id, data)
                    while True:
                        actions = peer.app.maybe_next_actions(conn_id)
                        if actions is None:
                            break
                        peer.apply(actions)
        finally:
            with peer.lock:
                closed_by_us = peer.socks.pop(conn_id, None) is None
                peer.apply(peer.app.connection_lost(conn_id))
            if closed_by_us:
                linger(sock)

    def finish(self) -> None:
        self.request.close()


def shut(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass                                # already gone


def linger(sock: socket.socket) -> None:
    """Read and drop the peer's input until it closes or LINGER_TIMEOUT passes."""
    sock.settimeout(LINGER_TIMEOUT)
    try:
        while sock.recv(READ_SIZE):
            pass
    except OSError:
        pass


def main(argv: List[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python3 -m bench.threaded_peer PORT", file=sys.stderr)
        return 2
    peer = Peer(int(argv[0]))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _s, _f: threading.Thread(target=peer.shutdown,
                                                              daemon=True).start())
    print("listening on %s:%d" % peer.server_address, flush=True)
    try:
        peer.serve_forever(poll_interval=0.1)
    finally:
        with peer.lock:
            for sock in list(peer.socks.values()):
                shut(sock, socket.SHUT_RDWR)
            peer.socks.clear()
        peer.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
