"""The UDP endpoints (sansio/udp_server.py, sansio/udp_client.py): the handshake, the token as the
session's identity, callback validation and anti-amplification, limits under floods; in memory
over tests/udp_sim.py, and one smoke test on real sockets.
"""
import random
import select
import socket
import time
import unittest

from sansio import udp_callbacks, udp_client, udp_server, udp_stream, udp_wire
from sansio.udp_client import ClientEndpoint
from sansio.udp_server import CallbackFailed, CallbackValidated, ServerEndpoint
from sansio.udp_stream import SessionClosed, SessionOpened, StreamData
from sansio.udp_wire import (ACCEPT, ACK, CLOSE, DATA, ECHO, HELLO, KNOCK, PING, PROBE, REJECT,
                             RESET, RETRY)
from tests.udp_sim import CALLBACK, CLIENT, SERVER, VICTIM, Sim, open_sessions, random_bytes

# ---------------------------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------------------------

class HandshakeTests(unittest.TestCase):

    def hello(self, cookie=b"", nonce=b"N" * 8):
        return udp_wire.encode(HELLO, body=nonce + cookie, pad_to=udp_wire.HELLO_SIZE)

    def retry_cookie(self, server, addr, now, nonce=b"N" * 8):
        server.datagram_received(self.hello(nonce=nonce), addr, now)
        (data, to), = server.datagrams_to_send(now)
        dgram = udp_wire.decode(data)
        self.assertEqual((dgram.kind, to, dgram.body[:8]), (RETRY, addr, nonce))
        return dgram.body[8:]

    def test_handshake_datagrams_in_order(self):
        sim = Sim()
        sid = sim.open()
        kinds = [(src, kind) for _, src, _, kind in sim.log]
        self.assertEqual(kinds[:6], [(CLIENT, HELLO), (SERVER, RETRY), (CLIENT, HELLO),
                                     (SERVER, ACCEPT), (CLIENT, PING), (SERVER, ACK)])
        self.assertEqual(sim.sent_to[CLIENT], 60 + 40 + 32)      # RETRY, ACCEPT, ACK
        self.assertEqual(sim.received_from[CLIENT], 1200 + 1200 + 32)
        self.assertEqual([type(e) for _, e in sim.server_events], [SessionOpened])
        self.assertEqual(sim.server_events[0][1], SessionOpened(sid, CLIENT))
        self.assertEqual([e for _, e in sim.client_events],
                         [SessionOpened(ClientEndpoint.SESSION_ID, SERVER)])

    def test_server_keeps_no_state_before_the_cookie(self):
        server = ServerEndpoint()
        replies = []
        for i in range(500):
            addr = ("10.1.%d.%d" % (i // 250, i % 250), 1000 + i)
            server.datagram_received(self.hello(nonce=b"%08d" % i), addr, 5.0)
            if i % 100 == 99:               # a tick's flush answers HANDSHAKES_PER_FLUSH
                replies += server.datagrams_to_send(5.0)
        self.assertEqual(len(replies), 500)
        self.assertTrue(all(len(d) <= 60 for d, _ in replies))    # 60 bytes for 1 200
        self.assertEqual(server.session_ids(), [])
        self.assertEqual((server._by_hello, server._by_token, server.callbacks.unvalidated,
                          server._heap), ({}, {}, {}, []))

    def test_a_flush_answers_a_bounded_number_of_hellos_one_address_at_a_time(self):
        server = ServerEndpoint()
        for i in range(1000):
            server.datagram_received(self.hello(nonce=b"%08d" % i), ("10.9.9.9", 1000), 5.0)
        server.datagram_received(self.hello(nonce=b"newcomer"), CLIENT, 5.0)
        replies = server.datagrams_to_send(5.0)
        self.assertEqual(len(replies), udp_server.HANDSHAKES_PER_FLUSH)
        self.assertIn(CLIENT, [addr for _, addr in replies])     # not behind the 1 000
        self.assertEqual(server.datagrams_to_send(5.0), [])      # the rest: dropped, resent

    def test_short_or_odd_hello_gets_no_answer(self):
        server = ServerEndpoint()
        server.datagram_received(udp_wire.encode(HELLO, body=b"N" * 8, pad_to=1199), CLIENT, 1.0)
        server.datagram_received(udp_wire.encode(HELLO, body=b"N" * 9, pad_to=1200), CLIENT, 1.0)
        server.datagram_received(b"\xC1\x01" + bytes(1198), CLIENT, 1.0)   # no nonce
        self.assertEqual(server.datagrams_to_send(1.0), [])

    def test_valid_cookie_opens_a_session_once(self):
        server = ServerEndpoint()
        cookie = self.retry_cookie(server, CLIENT, 100.0)
        for _ in range(3):                       # repeated HELLO: the same ACCEPT, one session
            server.datagram_received(self.hello(cookie), CLIENT, 101.0)
        replies = [udp_wire.decode(d) for d, _ in server.datagrams_to_send(101.0)]
        self.assertEqual([r.kind for r in replies], [ACCEPT] * 3)
        self.assertEqual(len({r.token for r in replies}), 1)
        self.assertEqual(len(server.session_ids()), 1)
        self.assertEqual(len(replies[0].token), 16)

    def test_cookie_from_another_address_is_refused(self):
        server = ServerEndpoint()
        cookie = self.retry_cookie(server, CLIENT, 100.0)
        server.datagram_received(self.hello(cookie), ("10.0.0.3", 40000), 100.5)
        server.datagram_received(self.hello(cookie), ("10.0.0.2", 40002), 100.5)
        server.datagram_received(self.hello(cookie, nonce=b"M" * 8), CLIENT, 100.5)
        kinds = [udp_wire.decode(d).kind for d, _ in server.datagrams_to_send(100.5)]
        self.assertEqual(kinds, [RETRY, RETRY, RETRY])
        self.assertEqual(server.session_ids(), [])

    def test_cookie_too_old_or_from_the_future_is_refused(self):
        server = ServerEndpoint()
        cookie = self.retry_cookie(server, CLIENT, 100.0)
        server.datagram_received(self.hello(cookie), CLIENT, 100.0 + udp_wire.COOKIE_LIFETIME + 1)
        server.datagram_received(self.hello(cookie), CLIENT, 98.0)
        kinds = [udp_wire.decode(d).kind for d, _ in server.datagrams_to_send(120.0)]
        self.assertEqual(kinds, [RETRY, RETRY])
        self.assertEqual(server.session_ids(), [])
        other = ServerEndpoint()                 # another process: another key
        other.datagram_received(self.hello(cookie), CLIENT, 100.0)
        self.assertEqual(udp_wire.decode(other.datagrams_to_send(100.0)[0][0]).kind, RETRY)

    def test_handshake_survives_loss(self):
        for seed in range(40):
            sim = Sim(seed, loss=0.3, dup=0.1, jitter=0.05)
            sim.open(timeout=udp_client.HANDSHAKE_TIMEOUT)

    def test_handshake_gives_up(self):
        sim = Sim()
        sim.net.cut = True
        sim.run_until(lambda: sim.client.state == "closed", 60.0)
        self.assertEqual(sim.closed_events(sim.client_events),
                         [SessionClosed(0, "handshake timed out")])
        hellos = [t for t, src, _, kind in sim.log if kind == HELLO]
        self.assertEqual([t - hellos[0] for t in hellos], [0, 1] + list(range(3, 30, 2)))
        self.assertAlmostEqual(sim.client_events[-1][0] - hellos[0], udp_client.HANDSHAKE_TIMEOUT)

    def test_full_server_rejects(self):
        server = ServerEndpoint()
        for i in range(udp_server.MAX_UNCONFIRMED_SESSIONS + 5):
            addr = ("10.2.0.%d" % (i % 200), 2000 + i)
            cookie = self.retry_cookie(server, addr, 10.0)
            server.datagram_received(self.hello(cookie), addr, 10.0)
            kinds = [udp_wire.decode(d).kind for d, _ in server.datagrams_to_send(10.0)]
            self.assertEqual(kinds, [ACCEPT] if i < udp_server.MAX_UNCONFIRMED_SESSIONS else [])
        self.assertEqual(server.unconfirmed_count, udp_server.MAX_UNCONFIRMED_SESSIONS)
        server.timer(10.0 + udp_server.UNCONFIRMED_TIMEOUT)  # never confirmed: forgotten quietly
        self.assertEqual((server.session_ids(), server.events()), ([], []))
        self.assertEqual(server.unconfirmed_count, 0)

    def test_client_sees_reject(self):
        sim = Sim()
        udp_max = udp_server.MAX_SESSIONS
        udp_server.MAX_SESSIONS = 0
        try:
            sim.run_until(lambda: sim.client.state == "closed", 10.0)
        finally:
            udp_server.MAX_SESSIONS = udp_max
        self.assertEqual(sim.closed_events(sim.client_events),
                         [SessionClosed(0, "refused by server")])
        self.assertIn(REJECT, [kind for _, _, _, kind in sim.log])


    # docs/UDP.md section 2 and 4: what a client takes, by hand (a ClientEndpoint alone).

    def client_and_nonce(self):
        """A new client, and the nonce of its first HELLO."""
        client = ClientEndpoint(SERVER, 0.0)
        (hello, _), = client.datagrams_to_send(0.0)
        return client, udp_wire.decode(hello).body[:8]

    def test_client_takes_the_new_token_from_accept_and_zero_tokens_elsewhere(self):
        client, nonce = self.client_and_nonce()
        token = bytes(range(1, 17))
        client.datagram_received(udp_wire.encode(RETRY, token, body=nonce + bytes(20)), SERVER, 0.1)
        client.datagram_received(udp_wire.encode(REJECT, token, body=nonce), SERVER, 0.1)
        client.datagram_received(udp_wire.encode(ACCEPT, body=nonce), SERVER, 0.1)
        self.assertEqual((client.state, client.datagrams_to_send(0.1), client.events()),
                         ("handshake", [], []), "a token where zero belongs, or none in ACCEPT")
        client.datagram_received(udp_wire.encode(ACCEPT, token, body=nonce), SERVER, 0.2)
        self.assertEqual(client.events(), [SessionOpened(0, SERVER)])
        (ping, _), = client.datagrams_to_send(0.2)
        self.assertEqual(udp_wire.decode(ping)[:4:3], (PING, token))
        challenge = bytes(range(16))
        client.datagram_received(udp_wire.encode(PROBE, token, body=challenge), SERVER, 0.3)
        self.assertEqual(client.datagrams_to_send(0.3), [], "a PROBE with a token")
        client.datagram_received(udp_wire.encode(PROBE, body=challenge), SERVER, 0.3)
        (echo, _), = client.datagrams_to_send(0.3)
        self.assertEqual(udp_wire.decode(echo)[:4:3] + (udp_wire.decode(echo).body,),
                         (ECHO, token, challenge))

    def test_client_follows_three_retries_then_keeps_the_third_cookie_until_it_gives_up(self):
        client, nonce = self.client_and_nonce()
        cookies = [bytes([i]) * 20 for i in range(1, 5)]
        answered = []
        for i, cookie in enumerate(cookies):
            client.datagram_received(udp_wire.encode(RETRY, body=nonce + cookie), SERVER, 1.0 + i)
            answered.append([udp_wire.decode(d).body[8:] for d, _ in
                             client.datagrams_to_send(1.0 + i)])
        self.assertEqual(answered, [[cookies[0]], [cookies[1]], [cookies[2]], []])
        hellos = []
        while client.state == "handshake":
            now = client.next_deadline()
            client.timer(now)
            hellos += [(now, udp_wire.decode(d).body[8:]) for d, _ in
                       client.datagrams_to_send(now)]
        self.assertEqual([t for t, _ in hellos], [4.0, 6.0] + list(range(8, 30, 2)))
        self.assertEqual({cookie for _, cookie in hellos}, {cookies[2]})
        self.assertEqual(client.events(), [SessionClosed(0, "handshake timed out")])
        self.assertEqual(now, udp_client.HANDSHAKE_TIMEOUT)

    def test_a_second_accept_does_not_stop_the_confirming_pings(self):
        client, nonce = self.client_and_nonce()
        token = bytes(range(1, 17))
        accept = udp_wire.encode(ACCEPT, token, body=nonce)

        def pings_until(end):
            sent = []
            while client.next_deadline() <= end:
                now = client.next_deadline()
                client.timer(now)
                sent += [now for d, _ in client.datagrams_to_send(now) if d[1] == PING]
            return sent

        client.datagram_received(accept, SERVER, 0.1)
        self.assertEqual([d[1] for d, _ in client.datagrams_to_send(0.1)], [PING])
        client.datagram_received(accept, SERVER, 0.2)        # the answer to a repeated HELLO
        self.assertEqual(client.datagrams_to_send(0.2), [])
        self.assertEqual(client.events(), [SessionOpened(0, SERVER)])     # one session
        self.assertEqual(len(pings_until(0.45)), 1, "still confirming after the second ACCEPT")
        client.datagram_received(udp_wire.encode(ACK, token, window=64), SERVER, 0.5)
        self.assertEqual(pings_until(10.0), [], "confirmed by a datagram with the token")

# ---------------------------------------------------------------------------------------------
# The token is the identity
# ---------------------------------------------------------------------------------------------

class TokenTests(unittest.TestCase):

    def test_forged_token_is_ignored(self):
        sim = Sim()
        sid = sim.open()
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: bytes(sim.server_got[sid]) == b"JOIN_CHATROOM: r\n")
        sim.flush()
        rng = random.Random(7)
        before = list(sim.server_events)
        dropped = sim.server.dropped
        # From the client's own address, with everything but the token right.
        for kind in (DATA, CLOSE, RESET, PING, ACK, ECHO):
            token = rng.getrandbits(128).to_bytes(16, "big")
            data = udp_wire.encode(kind, token, seq=1, ack=0, window=64,
                              body=b"CHAT: 0\nJOIN_ID: 0\nCLIENT_NAME: x\nMESSAGE: hi\n\n")
            sim.server.datagram_received(data, CLIENT, sim.now)
        self.assertEqual(sim.server.datagrams_to_send(sim.now), [])
        self.assertEqual(sim.server.events(), [])
        self.assertEqual(sim.server_events, before)
        self.assertEqual(sim.server.dropped, dropped + 6)
        self.assertEqual(sim.server.session_ids(), [sid])

    def test_token_not_address_names_the_session(self):
        sim = Sim()
        sid = sim.open()
        token = sim.client._session.token
        # The same token from another address still reaches the session (and only it)
        data = udp_wire.encode(DATA, token, seq=0, ack=0, window=64, body=b"HELO x\n")
        sim.server.datagram_received(data, ("10.7.7.7", 1), sim.now)
        self.assertEqual(sim.server.events(), [StreamData(sid, b"HELO x\n")])
        # ...and the ACK goes to the session's validated source, not to that address.
        self.assertEqual({a for _, a in sim.server.datagrams_to_send(sim.now)}, {CLIENT})


# ---------------------------------------------------------------------------------------------
# Callback validation and anti-amplification
# ---------------------------------------------------------------------------------------------

def join_sets_callback(addr):
    """A stand-in for the chat layer: on the JOIN's bytes, set the callback, then reply."""
    def hook(sim, event):
        if isinstance(event, StreamData) and b"JOIN_CHATROOM" in event.data:
            sim.server.set_callback(event.session_id, addr, sim.now)
            sim.server.send_stream(event.session_id, b"JOINED_CHATROOM: r\n", sim.now)
    return hook


def spy_server(sim):
    """Record every (datagram, address) the server sends in `sim` from now on."""
    sent = []
    server_sends = sim._server_sends

    def spy(data, addr):
        sent.append((data, addr))
        server_sends(data, addr)
    sim._server_sends = spy
    return sent


def drop_client_datagrams(sim, kind, count):
    """Lose the next `count` datagrams of `kind` the client sends in `sim`; return them. The
    original sender stays reachable as `sim.client_sends.passed_on`."""
    dropped = []
    client_sends = sim.client_sends

    def lossy(data, src=CLIENT):
        if data[1] == kind and len(dropped) < count:
            dropped.append(data)
            sim.log.append((sim.now, src, SERVER, kind))
            return
        client_sends(data, src)
    lossy.passed_on = client_sends
    sim.client_sends = lossy
    return dropped

class CallbackTests(unittest.TestCase):

    def test_callback_is_validated_then_receives_the_stream(self):
        validated = 0
        for seed in range(30):
            sim = Sim(seed, loss=0.2 if seed else 0.0, dup=0.1, jitter=0.05)
            sim.on_server_event = join_sets_callback(CALLBACK)
            sid = sim.open()
            sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
            ok = sim.run_until(lambda: b"JOINED" in sim.client_got, 60.0)
            self.assertTrue(ok, seed)
            events = [e for _, e in sim.server_events]
            if CallbackValidated(sid, CALLBACK) in events:
                # no DATA reached the callback before it was validated
                validated_at = [t for t, e in sim.server_events
                                if e == CallbackValidated(sid, CALLBACK)][0]
                early = [t for t, _, dst, kind in sim.log
                         if dst == CALLBACK and kind == DATA and t < validated_at]
                self.assertEqual(early, [])
                self.assertTrue(any(dst == CALLBACK and kind == DATA
                                    for _, _, dst, kind in sim.log), seed)
                validated += 1
            else:   # validation lost too often: the stream went on to the source
                self.assertIn(CallbackFailed(sid, CALLBACK, "not validated in time"), events)
            self.assertEqual(sim.over_budget, [], seed)
        self.assertGreaterEqual(validated, 27)

    def test_validation_on_a_clean_link_is_knock_probe_echo(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(CALLBACK)
        sid = sim.open()
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: b"JOINED" in sim.client_got, 10.0)
        flow = [(src, dst, kind) for _, src, dst, kind in sim.log
                if kind in (KNOCK, PROBE, ECHO) or (kind == DATA and src == SERVER)]
        self.assertEqual(flow, [(CALLBACK, SERVER, KNOCK), (SERVER, CALLBACK, PROBE),
                                (CLIENT, SERVER, ECHO), (SERVER, CALLBACK, DATA)])
        # before validation the callback got one 48-byte PROBE for one 32-byte KNOCK
        self.assertEqual((sim.received_from[CALLBACK], sim.datagrams_to[CALLBACK] - 1), (32, 1))
        self.assertEqual(bytes(sim.client_got), b"JOINED_CHATROOM: r\n")
        self.assertIn(CallbackValidated(sid, CALLBACK), [e for _, e in sim.server_events])

    def test_join_naming_a_victim_costs_it_nothing(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(VICTIM)
        sid = sim.open()
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: b"JOINED" in sim.client_got, 30.0)   # falls back to the source
        sim.advance(120.0)
        self.assertEqual(sim.datagrams_to[VICTIM], 0)
        self.assertIn(CallbackFailed(sid, VICTIM, "not validated in time"),
                      [e for _, e in sim.server_events])
        # the client's knocks went from its own callback socket, not the victim's
        self.assertEqual(sim.datagrams_to[CALLBACK], 0)

    def test_spoofed_knocks_cost_a_victim_a_few_small_datagrams(self):
        sim = Sim()
        sid = sim.open()
        # the attacker's session names the victim, then spoofs KNOCKs from the victim
        sim.server.set_callback(sid, VICTIM, sim.now)
        start = sim.now
        knock = udp_wire.encode(KNOCK, pad_to=1200)
        for i in range(2000):                     # 20 s of 100 spoofed KNOCKs/s
            sim.now = start + i * 0.01
            sim.deliver(VICTIM, SERVER, knock)
            sim.flush()
        seconds = sim.now - start
        self.assertEqual(sim.over_budget, [])
        limit = udp_callbacks.PROBE_BURST + udp_callbacks.PROBE_RATE * seconds + 1
        self.assertLessEqual(sim.datagrams_to[VICTIM], limit)
        self.assertGreater(sim.datagrams_to[VICTIM], 0)
        self.assertLessEqual(sim.sent_to[VICTIM], sim.datagrams_to[VICTIM] * 48)

    def test_probe_never_exceeds_three_times_what_the_address_sent(self):
        sim = Sim()
        sid = sim.open()
        sim.server.set_callback(sid, VICTIM, sim.now)
        sim.flush()
        tiny = udp_wire.encode(KNOCK)                   # 32 bytes: budget 96, one PROBE is 48
        sent_before = sim.sent_to[VICTIM]
        sim.deliver(VICTIM, SERVER, tiny)
        sim.flush()
        self.assertEqual(sim.datagrams_to[VICTIM] - sent_before, 1)   # one per session
        sim.now += 10                              # the bucket is full again (3)
        for _ in range(5):
            sim.deliver(VICTIM, SERVER, tiny)
        sim.flush()
        self.assertEqual(sim.over_budget, [])
        self.assertEqual(sim.datagrams_to[VICTIM] - sent_before, 1 + udp_callbacks.PROBE_BURST)
        self.assertLessEqual(sim.sent_to[VICTIM], 3 * sim.received_from[VICTIM])

    def test_one_knock_buys_at_most_three_times_its_size(self):
        server = ServerEndpoint()
        sids = open_sessions(server, 3, 50.0)
        for sid in sids:                           # three sessions wait on one address
            server.set_callback(sid, VICTIM, 50.0)
        server.datagrams_to_send(50.0)
        server.datagram_received(udp_wire.encode(KNOCK), VICTIM, 50.0)     # 32 bytes in
        probes = [d for d, a in server.datagrams_to_send(50.0) if a == VICTIM]
        self.assertEqual([len(d) for d in probes], [48, 48])         # 96 = 3 x 32: not 3
        self.assertEqual(len({d[32:] for d in probes}), 2)           # one challenge each

    def test_pending_callbacks_are_capped(self):
        sim = Sim()
        sid = sim.open()
        old = udp_callbacks.MAX_PENDING_CALLBACKS
        udp_callbacks.MAX_PENDING_CALLBACKS = 0
        try:
            sim.server.set_callback(sid, VICTIM, sim.now)
        finally:
            udp_callbacks.MAX_PENDING_CALLBACKS = old
        self.assertEqual(sim.server.events(),
                         [CallbackFailed(sid, VICTIM, "too many pending callbacks")])
        self.assertEqual(sim.server.pending_callback_count, 0)

    def test_source_address_or_zero_needs_no_validation(self):
        sim = Sim()
        sid = sim.open()
        sim.server.set_callback(sid, CLIENT, sim.now)
        sim.server.set_callback(sid, None, sim.now)
        self.assertEqual(sim.server.pending_callback_count, 0)
        sim.server.send_stream(sid, b"JOINED_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: sim.client_got == b"JOINED_CHATROOM: r\n", 5.0)


    def test_the_server_answers_a_join_with_a_flagged_ack_and_an_echo_with_data_then_ack(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(CALLBACK)
        sim.open()
        sent = spy_server(sim)
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: b"JOINED" in sim.client_got, 10.0)
        flag = udp_wire.FLAG_CALLBACK_PENDING
        self.assertEqual([(addr, data[1], data[2]) for data, addr in sent],
                         [(CLIENT, ACK, flag),          # the JOIN's ACK; its reply waits
                          (CALLBACK, PROBE, 0),         # for the KNOCK
                          (CALLBACK, DATA, 0),          # the ECHO released the reply
                          (CLIENT, ACK, 0)])            # and is acknowledged after it

    def test_a_lost_echo_is_made_good_by_the_next_knock_with_the_same_challenge(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(CALLBACK)
        sid = sim.open()
        sent = spy_server(sim)
        echoes = drop_client_datagrams(sim, ECHO, count=1)
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        self.assertTrue(sim.run_until(lambda: b"JOINED" in sim.client_got, 10.0))
        self.assertIn(CallbackValidated(sid, CALLBACK), [e for _, e in sim.server_events])
        probes = [data[32:] for data, _ in sent if data[1] == PROBE]
        self.assertEqual(len(probes), 2)
        self.assertEqual(probes[0], probes[1])                  # one challenge per callback
        self.assertEqual([data[32:] for data in echoes], probes[:1])
        knocks = [t for t, _, _, kind in sim.log if kind == KNOCK]
        self.assertEqual([t - knocks[0] for t in knocks], [0.0, udp_wire.KNOCK_INTERVAL])

    def test_ten_knocks_per_callback_and_a_new_callback_gets_ten_more(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(CALLBACK)
        sid = sim.open()
        knocks = drop_client_datagrams(sim, KNOCK, count=1000)
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        self.assertTrue(sim.run_until(lambda: b"JOINED" in sim.client_got, 15.0))
        self.assertIn(CallbackFailed(sid, CALLBACK, "not validated in time"),
                      [e for _, e in sim.server_events])
        self.assertEqual(len(knocks), udp_client.MAX_KNOCKS)
        del knocks[:]
        sim.client_sends = sim.client_sends.passed_on        # KNOCKs go through again
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        self.assertTrue(sim.run_until(
            lambda: CallbackValidated(sid, CALLBACK) in [e for _, e in sim.server_events], 5.0))

    def test_the_first_join_naming_a_callback_starts_its_ten_seconds(self):
        server = ServerEndpoint()
        (sid,) = open_sessions(server, 1, 100.0)
        other = ("10.9.9.8", 53)

        def failures_at(now):
            server.timer(now)
            server.datagrams_to_send(now)
            return [e for e in server.events() if isinstance(e, CallbackFailed)]

        server.set_callback(sid, VICTIM, 100.0)
        server.set_callback(sid, VICTIM, 105.0)      # the same callback again: no new 10 s
        self.assertEqual(failures_at(109.9), [])
        self.assertEqual(failures_at(110.0), [CallbackFailed(sid, VICTIM, "not validated in time")])
        server.set_callback(sid, other, 111.0)
        server.set_callback(sid, VICTIM, 112.0)      # another callback replaces it: its own 10 s
        self.assertEqual(failures_at(121.9), [])
        self.assertEqual(failures_at(122.0), [CallbackFailed(sid, VICTIM, "not validated in time")])
        self.assertEqual(server.pending_callback_count, 0)

    def test_zero_brings_the_stream_back_from_a_validated_callback_to_the_source(self):
        sim = Sim()
        sim.on_server_event = join_sets_callback(CALLBACK)
        sid = sim.open()
        sim.client.send_stream(b"JOIN_CHATROOM: r\n", sim.now)
        sim.run_until(lambda: b"JOINED" in sim.client_got, 10.0)
        self.assertEqual(sim.server.session_stats(sid)["dest"], CALLBACK)
        sim.server.set_callback(sid, None, sim.now)         # a JOIN with CLIENT_IP 0, PORT 0
        sim.server.send_stream(sid, b"JOINED_CHATROOM: s\n", sim.now)
        sim.flush()
        self.assertEqual([dst for _, _, dst, kind in sim.log if kind == DATA][-1], CLIENT)

# ---------------------------------------------------------------------------------------------
# Limits under a flood
# ---------------------------------------------------------------------------------------------

class FloodTests(unittest.TestCase):

    def test_out_of_order_flood_is_bounded_by_the_window(self):
        sim = Sim()
        sid = sim.open()
        token = sim.client._session.token
        for seq in range(1, 5000):                 # seq 0 never arrives
            data = udp_wire.encode(DATA, token, seq=seq, ack=0, window=64, body=b"q" * 1168)
            sim.server.datagram_received(data, CLIENT, sim.now)
        sim.flush()
        held = sim.server.session_stats(sid)["held_bytes"]
        self.assertLessEqual(held, udp_stream.RECV_WINDOW * udp_wire.MAX_PAYLOAD)
        self.assertLessEqual(sim.server.buffered_bytes(),
                             udp_stream.RECV_WINDOW * udp_wire.MAX_PAYLOAD)
        self.assertEqual(bytes(sim.server_got[sid]), b"")

    def test_send_buffer_over_cap_resets_the_session(self):
        sim = Sim()
        sid = sim.open()
        sim.net.cut = True                          # the client stops acknowledging
        chunk = b"m" * 60000
        sent = 0
        for _ in range(100):
            if not sim.server.send_stream(sid, chunk, sim.now):
                break
            sent += len(chunk)
            sim.flush()
        sim.flush()
        self.assertLessEqual(sent, udp_stream.SEND_BUFFER_CAP)
        self.assertGreater(sent, udp_stream.SEND_BUFFER_CAP - len(chunk) - 1)
        self.assertEqual(sim.closed_events(sim.server_events),
                         [SessionClosed(sid, "send buffer over cap")])
        self.assertEqual(sim.server.buffered_bytes(), 0)
        self.assertEqual(sim.log[-1][3], RESET)

    def test_garbage_flood_changes_nothing(self):
        sim = Sim()
        sid = sim.open()
        rng = random.Random(99)
        for i in range(5000):
            size = rng.randint(0, 1300)
            data = bytes([0xC1, rng.randint(0, 20)]) + random_bytes(rng, size)
            sim.server.datagram_received(data[:size], ("10.5.%d.1" % (i % 200), i), sim.now)
        replies = sim.server.datagrams_to_send(sim.now)
        self.assertEqual([e for e in sim.server.events()], [])
        self.assertEqual(sim.server.session_ids(), [sid])
        self.assertTrue(all(len(d) <= 60 for d, _ in replies))      # RETRYs at most
        self.assertEqual(sim.server.callbacks.unvalidated, {})


# ---------------------------------------------------------------------------------------------
# Real sockets
# ---------------------------------------------------------------------------------------------

class RealSocketSmokeTest(unittest.TestCase):

    def test_echo_over_loopback(self):
        server_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(server_sock.close)
        self.addCleanup(client_sock.close)
        server_sock.bind(("127.0.0.1", 0))
        client_sock.bind(("127.0.0.1", 0))
        server_addr = server_sock.getsockname()
        server = ServerEndpoint()
        client = ClientEndpoint(server_addr, time.monotonic())
        message = b"CHAT: 0\nJOIN_ID: 0\nCLIENT_NAME: a\nMESSAGE: " + b"x" * 70000 + b"\n\n"
        client.send_stream(message, time.monotonic())
        echoed = bytearray()
        deadline = time.monotonic() + 5.0
        while len(echoed) < len(message) and time.monotonic() < deadline:
            now = time.monotonic()
            for data, addr in server.datagrams_to_send(now):
                server_sock.sendto(data, addr)
            for data, addr in client.datagrams_to_send(now):
                client_sock.sendto(data, addr)
            waits = [d - now for d in (server.next_deadline(), client.next_deadline()) if d]
            ready, _, _ = select.select([server_sock, client_sock], [], [],
                                        max(0.0, min(waits + [0.05])))
            now = time.monotonic()
            for sock in ready:
                data, addr = sock.recvfrom(2048)
                if sock is server_sock:
                    server.datagram_received(data, addr, now)
                else:
                    client.datagram_received(data, addr, now)
            server.timer(now)
            client.timer(now)
            for event in server.events():
                if isinstance(event, StreamData):
                    server.send_stream(event.session_id, event.data, now)
            for event in client.events():
                if isinstance(event, StreamData):
                    echoed += event.data
        self.assertEqual(bytes(echoed), message)


if __name__ == "__main__":
    unittest.main()
