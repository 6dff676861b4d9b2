#!/usr/bin/env python3
"""A comparison peer: the project's protocol served by asyncio's Protocol/Transport API.

    python3 -m bench.asyncio_peer PORT        (from the repository's top folder;
                                              listens on 127.0.0.1:PORT)

The wire format is not written a second time: every connection's bytes go to the project's own
sans-IO state machine, protocol.ChatProtocol, and the actions it returns (Send, Broadcast,
Close, Shutdown) are carried out (sansio.actions.carry_out) with transport.write(), transport.close() and loop.stop().
Framing, parsing, rooms and replies are therefore byte for byte the project's, and what a
comparison with the project's server measures is only what differs: asyncio's event loop and
its write path against reactor.py's.

How asyncio is used here is how its documentation suggests: one Protocol object per connection;
data_received() handles every complete request it has at once (asyncio has no notion of a
per-tick share); transport.write() sends at once when nothing is queued and buffers the rest;
pause_writing()/resume_writing() (asyncio's own water marks) stop and restart reading from a
peer whose output backs up; a peer whose output passes OUTPUT_CAP is aborted.

Like the project's server it prints "listening on IP:PORT" once it listens, and stops on
KILL_SERVICE, SIGINT or SIGTERM. Standard library only.
"""
import asyncio
import signal
import sys
from typing import Dict, List

from sansio.actions import Action, carry_out
from protocol import ChatProtocol

HOST = "127.0.0.1"
STUDENT_ID = "00000000"
# Unsent output after which a peer is dropped: the same bound as the project's server
# (reactor.OUTPUT_CAP, 1 MiB), so that neither side wins by buffering more for slow readers.
OUTPUT_CAP = 1024 * 1024


class Peer:
    """Everything the connections share: the state machine and the open transports."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.loop = loop
        self.app = ChatProtocol(port=port, student_id=STUDENT_ID)
        self.transports: Dict[int, asyncio.Transport] = {}
        self.next_conn_id = 1

    def apply(self, actions: List[Action]) -> None:
        """Carry out the state machine's actions, in order."""
        carry_out(actions, self.write, self.close, self.loop.stop)

    def close(self, conn_id: int) -> None:
        transport = self.transports.pop(conn_id, None)
        if transport is not None:
            transport.close()               # asyncio sends what is buffered, then closes

    def write(self, conn_id: int, data: bytes) -> None:
        transport = self.transports.get(conn_id)
        if transport is None:
            return                          # gone or closing: nothing more for it
        if transport.get_write_buffer_size() > OUTPUT_CAP:
            self.transports.pop(conn_id)
            transport.abort()               # connection_lost() then announces its leaves
            return
        transport.write(data)


class Connection(asyncio.Protocol):
    """One client connection: hands its bytes to the shared state machine."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.conn_id = 0
        self.transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = self.peer
        self.transport = transport
        self.conn_id = peer.next_conn_id
        peer.next_conn_id += 1
        peer.transports[self.conn_id] = transport
        peer.app.connection_made(self.conn_id, transport.get_extra_info("sockname")[0])

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if self.conn_id not in peer.transports:
            return                          # closing: what it sends now is dropped
        app = peer.app
        app.data_received(self.conn_id, data)
        while True:
            actions = app.maybe_next_actions(self.conn_id)
            if actions is None:
                return
            peer.apply(actions)

    def eof_received(self) -> bool:
        return False                        # close our side too (the default)

    def pause_writing(self) -> None:
        # Our output to this peer is above asyncio's high-water mark: stop reading its requests
        # until it drains (the project's server does the same with HIGH_WATER / LOW_WATER).
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        peer = self.peer
        peer.transports.pop(self.conn_id, None)
        peer.apply(peer.app.connection_lost(self.conn_id))


def main(argv: List[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python3 -m bench.asyncio_peer PORT", file=sys.stderr)
        return 2
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    peer = Peer(loop, int(argv[0]))
    server = loop.run_until_complete(
        loop.create_server(lambda: Connection(peer), HOST, int(argv[0]), reuse_address=True))
    port = server.sockets[0].getsockname()[1]
    peer.app.port = port                    # the real one, when PORT was 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, loop.stop)
    print("listening on %s:%d" % (HOST, port), flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()
        for transport in list(peer.transports.values()):
            transport.abort()
        loop.run_until_complete(asyncio.sleep(0))   # let the transports finish closing
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
