"""The UDP server's promises against many sessions and many addresses (sansio/udp_server.py,
docs/UDP.md sections 7 and 9): per-address caps on sessions and pending callbacks, reclaiming
when a table is full so that a newcomer from another address is always served, and liveness
that only the session's own address, bringing something new, can refresh. In memory, with a
simulated clock (tests/udp_sim.py)."""
import unittest
from unittest import mock

from sansio import udp_callbacks, udp_server, udp_stream, udp_wire
from sansio.udp_server import CallbackFailed, CallbackValidated, ServerEndpoint
from sansio.udp_stream import SessionClosed, StreamData
from sansio.udp_wire import ACCEPT, DATA, PING, REJECT, RESET
from tests.udp_sim import CALLBACK, CLIENT, SERVER, Sim, open_from

ATTACKER = "10.66.0.%d"
NEWCOMER = "10.77.0.%d"
REPLAYER = ("10.99.0.1", 5555)


def closed(events):
    return [(e.session_id, e.reason) for e in events if isinstance(e, SessionClosed)]


# ---------------------------------------------------------------------------------------------
# Sessions: a cap per address, and reclaiming when the table is full
# ---------------------------------------------------------------------------------------------

@mock.patch.multiple(udp_server, MAX_SESSIONS=40, MAX_SESSIONS_PER_ADDRESS=16)
class SessionTableTests(unittest.TestCase):

    def fill(self, server, addresses, per_address, now=10.0):
        """Sessions from `addresses` hosts, `per_address` each, confirmed, never proven."""
        sids = []
        for host in range(addresses):
            for port in range(per_address):
                shake = open_from(server, (ATTACKER % host, 1000 + port), now)
                self.assertEqual(shake.kind, ACCEPT)
                sids.append(shake.sid)
        return sids

    def test_an_address_at_its_cap_is_rejected_and_another_is_served(self):
        server = ServerEndpoint()
        self.fill(server, 1, 16)
        self.assertEqual(open_from(server, (ATTACKER % 0, 2000), 11.0).kind, REJECT)
        self.assertEqual(open_from(server, (NEWCOMER % 1, 2000), 11.0).kind, ACCEPT)
        self.assertEqual(len(server.session_ids()), 17)

    def test_a_full_table_makes_way_for_every_newcomer_from_the_address_holding_most(self):
        server = ServerEndpoint()
        legit = open_from(server, (NEWCOMER % 0, 3000), 10.0)
        server.datagram_received(udp_wire.encode(DATA, legit.token, window=64, body=b"HELO x\n"),
                                 (NEWCOMER % 0, 3000), 10.0)       # proven: a request came
        attack = self.fill(server, 3, 13)                           # 1 + 39 = 40: full
        for i in range(1, 30):
            shake = open_from(server, (NEWCOMER % i, 3000), 20.0 + i)
            self.assertEqual(shake.kind, ACCEPT, "newcomer %d" % i)
            (victim, reason), = closed(shake.events)
            self.assertIn(victim, attack)
            self.assertEqual(reason, "reclaimed for a newcomer")
            victim_addr = [to for d, to in shake.sent if udp_wire.decode(d).kind == RESET]
            self.assertEqual(len(victim_addr), 1)
            self.assertTrue(victim_addr[0][0].startswith("10.66."))
        self.assertIn(legit.sid, server.session_ids())
        self.assertEqual(len(server.session_ids()), 40)

    def test_the_victim_is_never_proven_before_idle_and_idle_longest_after(self):
        server = ServerEndpoint()
        sids = self.fill(server, 1, 4)                  # ATTACKER 0, ports 1000..1003
        sessions = [server._sessions[sid] for sid in sids]
        for session in sessions[:2]:                    # 0 and 1 prove themselves at 10 s
            server.datagram_received(udp_wire.encode(DATA, session.token, window=64, body=b"x"),
                                     session.source, 10.0)
        server.datagram_received(udp_wire.encode(PING, sessions[0].token, window=64),
                                 sessions[0].source, 15.0)      # and 0 is heard from later
        server.datagrams_to_send(15.0)
        for i in range(36):                             # the table is full: one each
            open_from(server, (NEWCOMER % i, 4000), 16.0)
        got = [closed(open_from(server, (NEWCOMER % (100 + i), 4000), 17.0).events)[0][0]
               for i in range(3)]
        self.assertEqual(got, [sids[2], sids[3], sids[1]])    # unproven, then idle longest
        self.assertIn(sids[0], server.session_ids())

    def test_with_no_session_at_all_a_full_table_still_rejects(self):
        with mock.patch.object(udp_server, "MAX_SESSIONS", 0):
            server = ServerEndpoint()
            self.assertEqual(open_from(server, (NEWCOMER % 0, 1), 1.0).kind, REJECT)

    def test_unconfirmed_sessions_are_capped_per_address(self):
        server = ServerEndpoint()
        with mock.patch.object(udp_server, "MAX_UNCONFIRMED_PER_ADDRESS", 4):
            server = ServerEndpoint()
            answers = [open_from(server, (ATTACKER % 0, 1000 + i), 1.0, confirm=False).kind
                       for i in range(6)]
            self.assertEqual(answers, [ACCEPT] * 4 + [None] * 2)   # no answer: HELLO again
            self.assertEqual(open_from(server, (NEWCOMER % 0, 1), 1.0).kind, ACCEPT)


class DefaultLimitsTests(unittest.TestCase):

    def test_one_address_cannot_fill_the_table_at_the_real_limits(self):
        server = ServerEndpoint()
        now = 5.0
        for port in range(udp_server.MAX_SESSIONS_PER_ADDRESS):
            now += 0.01                     # (the server answers HANDSHAKE_RATE a second)
            self.assertIsNotNone(open_from(server, (ATTACKER % 0, port + 1), now).sid)
        self.assertEqual(open_from(server, (ATTACKER % 0, 65000), now).kind, REJECT)
        self.assertEqual(open_from(server, (NEWCOMER % 0, 65000), now).kind, ACCEPT)


# ---------------------------------------------------------------------------------------------
# Pending callbacks: a cap per address, and reclaiming when the table is full
# ---------------------------------------------------------------------------------------------

@mock.patch.multiple(udp_callbacks, MAX_PENDING_CALLBACKS=8,
                      MAX_PENDING_CALLBACKS_PER_ADDRESS=5)
class PendingCallbackTests(unittest.TestCase):

    def attack(self, server, hosts, per_host, now):
        sids = []
        for host in range(hosts):
            for port in range(per_host):
                sid = open_from(server, (ATTACKER % host, 1000 + port), now).sid
                server.set_callback(sid, ("10.55.0.1", 2000 + len(sids)), now)
                sids.append(sid)
        return sids

    def test_an_address_at_its_cap_fails_its_next_callback(self):
        server = ServerEndpoint()
        sids = self.attack(server, 1, 6, 1.0)
        self.assertEqual(server.pending_callback_count, 5)
        failed = [e for e in server.events() if isinstance(e, CallbackFailed)]
        self.assertEqual([(e.session_id, e.reason) for e in failed],
                         [(sids[5], "too many pending callbacks from this address")])

    def test_a_legitimate_client_is_validated_when_the_table_is_full(self):
        sim = Sim()
        sid = sim.open()
        attack = self.attack(sim.server, 2, 4, sim.now)          # 8 of 8
        sim.server.set_callback(sid, CALLBACK, sim.now)
        events = sim.server.events()
        failed = [e for e in events if isinstance(e, CallbackFailed)]
        self.assertEqual([(e.session_id, e.reason) for e in failed],
                         [(attack[0], "reclaimed for a newcomer")])   # the oldest of the first
        self.assertEqual(sim.server.pending_callback_count, 8)
        self.assertTrue(sim.run_until(
            lambda: any(isinstance(e, CallbackValidated) for _, e in sim.server_events), 5.0))
        self.assertEqual(sim.server.session_stats(sid)["dest"], CALLBACK)

    def test_with_nothing_pending_an_empty_table_still_fails_the_callback(self):
        with mock.patch.object(udp_callbacks, "MAX_PENDING_CALLBACKS", 0):
            sim = Sim()
            sid = sim.open()
            sim.server.set_callback(sid, CALLBACK, sim.now)
        self.assertEqual(sim.server.events(),
                         [CallbackFailed(sid, CALLBACK, "too many pending callbacks")])


# ---------------------------------------------------------------------------------------------
# Liveness: only datagrams from the session's address that advance it
# ---------------------------------------------------------------------------------------------

class LivenessTests(unittest.TestCase):

    def captured_session(self):
        """A session that exchanged some data both ways, with every datagram the client sent."""
        sim = Sim()
        captured = []
        sent = sim.client_sends

        def capture(data, src=CLIENT):
            captured.append(data)
            sent(data, src)
        sim.client_sends = capture
        sid = sim.open()
        sim.client.send_stream(b"HELO x\n" * 400, sim.now)
        sim.server.send_stream(sid, b"reply\n" * 400, sim.now)
        sim.run_until(lambda: len(sim.server_got[sid]) == 2800 and len(sim.client_got) == 2400)
        sim.advance(1.0)
        return sim, sid, captured

    def replay(self, sim, captured, addr, seconds):
        """The client vanishes; its datagrams are sent again from `addr`, one every 0.2 s."""
        sim.net.cut = True
        gone = sim.now
        for i in range(int(seconds / 0.2)):
            sim.advance(0.2)
            sim.deliver(addr, SERVER, captured[i % len(captured)])
            sim.flush()
            if closed(e for _, e in sim.server_events):
                break
        return gone

    def assert_gone_in_time(self, sim, sid, gone):
        ends = [(t, e) for t, e in sim.server_events if isinstance(e, SessionClosed)]
        self.assertEqual(len(ends), 1, "the replays kept the session alive")
        (at, event), = ends
        self.assertEqual((event.session_id, event.reason), (sid, "peer timed out"))
        self.assertLessEqual(at - gone, udp_stream.IDLE_TIMEOUT + 1.0)

    def test_replays_from_another_address_do_not_keep_a_vanished_session(self):
        sim, sid, captured = self.captured_session()
        gone = self.replay(sim, captured, REPLAYER, 120.0)
        self.assert_gone_in_time(sim, sid, gone)

    def test_replays_of_old_data_from_its_own_address_do_not_either(self):
        # (An old ACK from the session's own address does answer the server's keepalive PING:
        # docs/UDP.md section 7 says so, and what it would take to tell them apart.)
        sim, sid, captured = self.captured_session()
        old = [d for d in captured if d[1] == DATA]
        gone = self.replay(sim, old, CLIENT, 120.0)
        self.assert_gone_in_time(sim, sid, gone)

    def test_a_client_that_only_listens_stays_while_it_acknowledges(self):
        sim = Sim()
        sid = sim.open()
        for _ in range(20):                             # 200 s, a chat line every 10 s
            sim.server.send_stream(sid, b"MESSAGE\n", sim.now)
            sim.advance(10.0)
        self.assertEqual(closed(e for _, e in sim.server_events), [])
        self.assertEqual(len(sim.client_got), 160)

    def test_a_client_held_back_by_flow_control_stays_while_it_retransmits(self):
        sim = Sim()
        sid = sim.open()
        sim.server.set_receiving(sid, False)
        sim.client.send_stream(b"CHAT\n" * 100, sim.now)
        sim.advance(3 * udp_stream.IDLE_TIMEOUT)
        self.assertEqual(closed(e for _, e in sim.server_events), [])
        sim.server.set_receiving(sid, True)
        self.assertTrue(sim.run_until(lambda: len(sim.server_got[sid]) == 500, 30.0))

    def test_a_client_whose_address_changes_is_not_followed_and_times_out(self):
        sim = Sim()
        sid = sim.open()
        moved = ("10.0.0.2", 40999)                 # a NAT rebinding: same host, new port
        sent = sim.client_sends
        sim.client_sends = lambda data, src=CLIENT: sent(data, moved)
        sim.client.send_stream(b"HELO after the move\n", sim.now)
        start = sim.now
        sim.run_until(lambda: closed(e for _, e in sim.server_events), 120.0)
        (at, event), = [(t, e) for t, e in sim.server_events if isinstance(e, SessionClosed)]
        self.assertEqual((event.session_id, event.reason), (sid, "peer timed out"))
        self.assertLessEqual(at - start, udp_stream.IDLE_TIMEOUT + 1.0)
        self.assertEqual(bytes(sim.server_got[sid]), b"HELO after the move\n")   # still taken
        self.assertNotIn(moved, sim.sent_to)        # and nothing went to the new address

    def test_datagrams_from_elsewhere_are_still_taken(self):
        sim = Sim()
        sid = sim.open()
        token = sim.server._sessions[sid].token
        moved = udp_wire.encode(DATA, token, window=64, body=b"HELO moved\n")
        sim.deliver(REPLAYER, SERVER, moved)
        sim.flush()
        self.assertEqual(bytes(sim.server_got[sid]), b"HELO moved\n")
        self.assertIn(StreamData(sid, b"HELO moved\n"), [e for _, e in sim.server_events])


if __name__ == "__main__":
    unittest.main()
