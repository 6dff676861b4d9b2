"""The UDP wire (sansio/udp_wire.py): the header layout, decoding, and the callback address a
JOIN names."""
import unittest

from sansio import udp_server, udp_wire
from sansio.udp_stream import SessionClosed
from sansio.udp_wire import DATA, PING
from tests.udp_sim import open_sessions

# ---------------------------------------------------------------------------------------------
# The wire
# ---------------------------------------------------------------------------------------------

class WireTests(unittest.TestCase):

    def test_header_is_32_bytes_big_endian_in_the_documented_order(self):
        token = bytes(range(16))
        data = udp_wire.encode(DATA, token, seq=0x01020304, ack=0x05060708, window=64, body=b"hi",
                          flags=1, sack_count=0)
        self.assertEqual(udp_wire.HEADER_SIZE, 32)
        self.assertEqual(data[:4], bytes([0xC1, 5, 1, 0]))
        self.assertEqual(data[4:20], token)
        self.assertEqual(data[20:32], bytes.fromhex("01020304 05060708 0040 0002"))
        self.assertEqual(data[32:], b"hi")
        parsed = udp_wire.decode(data + bytes(10))      # padding is ignored
        self.assertEqual((parsed.kind, parsed.seq, parsed.ack, parsed.window, parsed.body),
                         (DATA, 0x01020304, 0x05060708, 64, b"hi"))

    def test_decode_refuses_what_is_not_ours(self):
        good = udp_wire.encode(PING, bytes(range(16)))
        decode = udp_wire.decode
        self.assertIsNone(decode(b"\xC2" + good[1:]))                         # other version
        self.assertIsNone(decode(good[:31]))                                    # short
        self.assertIsNone(decode(good[:30] + b"\x00\x05"))                      # body past end
        self.assertIsNone(decode(good + bytes(udp_wire.MAX_DATAGRAM)))          # too long
        self.assertIsNone(decode(udp_wire.encode(DATA, bytes(range(16)))))     # DATA, no bytes

    def test_an_empty_data_is_dropped_without_an_ack_or_keeping_the_session_alive(self):
        server = udp_server.ServerEndpoint(idle_timeout=10.0)
        (sid,) = open_sessions(server, 1, 100.0)
        token = server._sessions[sid].token
        addr = ("10.3.0.0", 3000)
        for t in range(1, 30):              # an empty DATA every 0.5 s, past the idle timeout
            now = 100.0 + t * 0.5
            server.datagram_received(udp_wire.encode(DATA, token, window=64), addr, now)
            self.assertEqual([d for d in server.datagrams_to_send(now)
                              if udp_wire.decode(d[0]).kind == udp_wire.ACK], [], "no ACK for it")
            server.timer(now)
            server.datagrams_to_send(now)
        closed = [e for e in server.events() if isinstance(e, SessionClosed)]
        self.assertEqual([e.session_id for e in closed], [sid], "it did not keep the session")


if __name__ == "__main__":
    unittest.main()
