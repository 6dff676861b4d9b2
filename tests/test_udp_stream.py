"""One UDP session's stream (sansio/udp_stream.py): delivery over a seeded lossy link with a
simulated clock, the retransmission timers and windows, liveness. Everything runs in memory.
"""
import random
import unittest

from sansio import udp_stream, udp_wire
from sansio.udp_stream import ReliableStream, SessionClosed
from sansio.udp_wire import CLOSE, CLOSE_ACK, DATA, PING
from tests.udp_sim import CLIENT, SERVER, Sim, exchange

# ---------------------------------------------------------------------------------------------
# Delivery: exactly once, in order, both ways, over a bad link
# ---------------------------------------------------------------------------------------------

class DeliveryTests(unittest.TestCase):

    def test_two_thousand_randomized_runs_small_messages(self):
        master = random.Random(2024)
        total_retransmits = 0
        for run in range(2000):
            seed = master.getrandbits(32)
            rng = random.Random(seed)
            loss = rng.choice((0.0, 0.05, 0.15, 0.3))
            dup = rng.choice((0.0, 0.05, 0.2))
            jitter = rng.choice((0.0, 0.02, 0.2))
            up = [rng.randint(1, 300) for _ in range(rng.randint(1, 6))]
            down = [rng.randint(1, 300) for _ in range(rng.randint(1, 6))]
            if rng.random() < 0.1:
                up.append(rng.randint(1100, 3000))     # a few crossing the 1 168-byte line
            sim, sid, want_up, want_down = exchange(seed, loss, dup, jitter, up, down)
            self.assertEqual(bytes(sim.server_got[sid]), want_up, seed)
            self.assertEqual(bytes(sim.client_got), want_down, seed)
            self.assertEqual(sim.over_budget, [], seed)
            self.assertLessEqual(sim.max_datagram, udp_wire.MAX_DATAGRAM)
            total_retransmits += sim.server.session_stats(sid)["retransmissions"]
        self.assertGreater(total_retransmits, 0)    # the link really was lossy

    def test_64_kib_messages_both_ways_over_a_bad_link(self):
        for seed, loss, dup, jitter in ((1, 0.1, 0.05, 0.05), (2, 0.3, 0.1, 0.2),
                                        (3, 0.0, 0.3, 0.3), (4, 0.2, 0.0, 0.0)):
            size = 64 * 1024 + 40
            sim, sid, want_up, want_down = exchange(seed, loss, dup, jitter, [size, size, 7],
                                                    [size, 5, size], close=True)
            self.assertEqual(bytes(sim.server_got[sid]), want_up)
            self.assertEqual(bytes(sim.client_got), want_down)
            self.assertEqual(sim.closed_events(sim.client_events),
                             [SessionClosed(0, "closed by peer")])
            self.assertEqual(len(sim.closed_events(sim.server_events)), 1)
            self.assertLessEqual(sim.max_datagram, udp_wire.MAX_DATAGRAM)

    def test_fragmentation_at_the_1200_byte_bound(self):
        sim = Sim()
        sid = sim.open()
        for size, segments in ((udp_wire.MAX_PAYLOAD, 1), (udp_wire.MAX_PAYLOAD + 1, 2),
                               (64 * 1024, -(-64 * 1024 // udp_wire.MAX_PAYLOAD))):
            sim.log.clear()
            got = len(sim.client_got)
            sim.server.send_stream(sid, b"x" * size, sim.now)
            sim.run_until(lambda: len(sim.client_got) == got + size)
            data_sizes = [kind for _, src, _, kind in sim.log if src == SERVER and kind == DATA]
            self.assertEqual(len(data_sizes), segments, size)
        self.assertEqual(udp_wire.MAX_PAYLOAD, 1168)
        self.assertEqual(sim.max_datagram, 1200)

    def test_graceful_close_drains_what_is_queued_first(self):
        sim = Sim(5, loss=0.2, dup=0.1, jitter=0.05)
        sid = sim.open()
        farewell = b"CHAT: 0\nCLIENT_NAME: a\nMESSAGE: a has left this chatroom.\n\n" * 3000
        sim.server.send_stream(sid, farewell, sim.now)
        sim.server.close_session(sid, sim.now)
        self.assertFalse(sim.server.send_stream(sid, b"late", sim.now))
        sim.run_until(lambda: sim.client.state == "closed", 120.0)
        self.assertEqual(bytes(sim.client_got), farewell)
        self.assertEqual(sim.closed_events(sim.client_events),
                         [SessionClosed(0, "closed by peer")])
        sim.run_until(lambda: sim.closed_events(sim.server_events), 60.0)
        self.assertIn(sim.closed_events(sim.server_events)[0].reason,
                      ("closed", "close unconfirmed"))

    def test_client_close(self):
        sim = Sim()
        sid = sim.open()
        sim.client.send_stream(b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: a\n", sim.now)
        sim.client.close(sim.now)
        sim.run_until(lambda: sim.client.state == "closed", 30.0)
        self.assertEqual(bytes(sim.server_got[sid]), b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: a\n")
        self.assertEqual(sim.closed_events(sim.server_events),
                         [SessionClosed(sid, "closed by peer")])
        self.assertEqual(sim.closed_events(sim.client_events), [SessionClosed(0, "closed")])


    def test_the_closer_waits_one_more_doubled_rto_after_its_fourth_close_then_ends(self):
        sim = Sim()
        sid = sim.open()
        closes_acked = []
        client_sends = sim.client_sends

        def lose_close_ack(data, src=CLIENT):
            if data[1] == CLOSE_ACK:
                closes_acked.append(sim.now)      # lost: the server never hears it
                return
            client_sends(data, src)
        sim.client_sends = lose_close_ack
        sim.server.close_session(sid, sim.now)
        sim.run_until(lambda: sim.closed_events(sim.server_events), 60.0)
        closes = [t for t, src, _, kind in sim.log if kind == CLOSE]
        self.assertEqual(len(closes_acked), 1, "CLOSE_ACK once: the client then forgot the token")
        self.assertEqual(sim.closed_events(sim.client_events), [SessionClosed(0, "closed by peer")])
        ended = [t for t, e in sim.server_events if isinstance(e, SessionClosed)][0]
        rto = udp_stream.INITIAL_RTO            # the server has no RTT sample: it sent no DATA
        self.assertEqual([round(t - closes[0], 6) for t in closes + [ended]],
                         [0.0, rto, 3 * rto, 7 * rto, 15 * rto])
        self.assertEqual(sim.closed_events(sim.server_events),
                         [SessionClosed(sid, "close unconfirmed")])

# ---------------------------------------------------------------------------------------------
# Timers: RTO, Karn, fast retransmit, window
# ---------------------------------------------------------------------------------------------

def stream_with_segments(count, now=0.0):
    stream = ReliableStream()
    stream.cwnd = float(count)
    stream.queue(b"s" * (udp_wire.MAX_PAYLOAD * count))
    sent = stream.poll(now)
    assert len(sent) == count
    return stream


class SendQueueTests(unittest.TestCase):
    """What a stream holds of what it was given: by reference, and until acknowledged."""

    def test_a_large_bytes_object_is_sent_as_views_of_itself_never_copied(self):
        stream = ReliableStream()
        stream.cwnd = 64.0
        big = bytes(range(256)) * 20                # 5 120 bytes: four full segments and more
        stream.queue(big)
        stream.queue(bytearray(b"tail"))
        segments = stream.poll(0.0)
        self.assertEqual(b"".join(bytes(seg.data) for seg in segments), big + b"tail")
        for seg in segments[:4]:
            self.assertIs(seg.data.obj, big)
        self.assertEqual(stream.send_buffered(), len(big) + 4)

    def test_the_acknowledged_offset_stops_at_the_first_gap(self):
        stream = ReliableStream()
        stream.cwnd = 64.0
        stream.queue(b"x" * (3 * udp_wire.MAX_PAYLOAD))
        stream.poll(0.0)
        self.assertEqual(stream.acked_offset(), 0)
        stream.on_ack(0, 64, [(1, 3)], 0.1)          # 1 and 2 arrived, 0 did not
        self.assertEqual(stream.acked_offset(), 0)
        stream.on_ack(3, 64, [], 0.2)
        self.assertEqual(stream.acked_offset(), 3 * udp_wire.MAX_PAYLOAD)

    def test_held_segments_cost_their_payload_and_an_overhead_each(self):
        stream = ReliableStream()
        for seq in range(1, 64):                    # segment 0 never comes
            stream.receive(seq, b"h" * udp_wire.MAX_PAYLOAD)
        self.assertEqual(stream.held_cost(),
                         63 * (udp_wire.MAX_PAYLOAD + udp_stream.HELD_SEGMENT_OVERHEAD))


class TimerTests(unittest.TestCase):

    def test_rfc6298_numbers(self):
        stream = ReliableStream()
        self.assertEqual(stream.current_rto(), 1.0)              # initial RTO
        stream.rtt_sample(0.1)
        self.assertAlmostEqual(stream.srtt, 0.1)
        self.assertAlmostEqual(stream.rttvar, 0.05)
        self.assertAlmostEqual(stream.rto, 0.3)                  # SRTT + 4 RTTVAR
        stream.rtt_sample(0.3)
        self.assertAlmostEqual(stream.rttvar, 0.75 * 0.05 + 0.25 * 0.2)
        self.assertAlmostEqual(stream.srtt, 0.875 * 0.1 + 0.125 * 0.3)
        stream = ReliableStream()
        stream.rtt_sample(0.001)
        self.assertEqual(stream.rto, udp_stream.MIN_RTO)
        stream.rtt_sample(100.0)
        self.assertEqual(stream.rto, udp_stream.MAX_RTO)

    def test_rto_backs_off_exponentially_to_the_cap_and_resends_one_window(self):
        stream = stream_with_segments(10)
        expected = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
        now = 0.0
        for rto in expected:
            self.assertAlmostEqual(stream.rto_deadline - now, rto)
            now = stream.rto_deadline
            self.assertTrue(stream.on_timer(now))
            self.assertEqual(stream.cwnd, udp_stream.MIN_CWND)          # back to the minimum
            resent = stream.poll(now)
            self.assertEqual(len(resent), udp_stream.MIN_CWND)          # no retransmission storm
            self.assertEqual([s.seq for s in resent], [0, 1])
        self.assertEqual(stream.rto_timeouts, len(expected))

    def test_time_threshold_resends_a_loss_with_fewer_than_three_after_it(self):
        # RFC 9002 s6.1.2: segment 0 lost, segment 1 (the only one after it) acknowledged.
        stream = ReliableStream()
        stream.rtt_sample(0.1)
        stream.cwnd = 2.0
        stream.queue(b"s" * (2 * udp_wire.MAX_PAYLOAD))
        self.assertEqual(len(stream.poll(0.0)), 2)
        stream.on_ack(0, 64, [(1, 2)], 0.1)                  # SACK of 1 at one RTT: too soon
        self.assertEqual(stream.poll(0.1), [])
        self.assertAlmostEqual(stream.loss_deadline, 9 / 8 * 0.1)
        self.assertFalse(stream.on_timer(stream.loss_deadline))   # not a timeout ...
        resent = stream.poll(stream.loss_deadline)                # ... but 0 is sent again
        self.assertEqual([seg.seq for seg in resent], [0])
        self.assertEqual(stream.rto_timeouts, 0)
        self.assertEqual(stream.cwnd, udp_stream.MIN_CWND)   # halved once, as a fast retransmit

    def test_karns_rule_no_sample_from_a_retransmitted_segment(self):
        stream = stream_with_segments(1)
        stream.on_timer(1.0)
        stream.poll(1.0)                                          # sent twice now
        stream.on_ack(1, 64, (), 1.05)
        self.assertIsNone(stream.srtt)
        self.assertEqual(stream.current_rto(), 2.0)              # backoff kept (Karn)
        stream.queue(b"x")
        stream.poll(2.0)
        stream.on_ack(2, 64, (), 2.1)
        self.assertAlmostEqual(stream.srtt, 0.1)
        self.assertEqual(stream.backoff, 0)

    def test_no_rtt_sample_from_a_segment_acknowledged_after_a_later_one(self):
        # RFC 9002 s5.1: segment 0 arrived at once but its ACK was lost; segment 1's ACK said
        # only "1" (SACK). The ACK that finally covers 0, seconds later, says nothing about the
        # path's RTT: timed from 0's send it would be 2 s, and the RTO would grow with it.
        stream = stream_with_segments(2)
        stream.on_ack(0, 64, [(1, 2)], 0.01)
        self.assertAlmostEqual(stream.srtt, 0.01)
        stream.on_ack(2, 64, (), 2.0)
        self.assertAlmostEqual(stream.srtt, 0.01)
        self.assertEqual(stream.rto, udp_stream.MIN_RTO)

    def test_no_rtt_sample_from_a_segment_a_timeout_left_unsent(self):
        # Three segments at 0, all taken as lost at the timeout (1 s); the window lets only 0
        # and 1 go again. Then one ACK covers all three: 2 arrived the first time, 1 s ago.
        # The ACK answers the retransmissions, so it gives no sample at all (Karn), and 2's
        # "RTT" of 1.01 s must not become the estimate.
        stream = stream_with_segments(3)
        self.assertTrue(stream.on_timer(1.0))
        self.assertEqual([seg.seq for seg in stream.poll(1.0)], [0, 1])
        stream.on_ack(3, 64, (), 1.01)
        self.assertIsNone(stream.srtt)
        stream.queue(b"x")
        stream.poll(1.5)
        stream.on_ack(4, 64, (), 1.52)                   # a segment sent once: the sample
        self.assertAlmostEqual(stream.srtt, 0.02)

    def test_rtt_estimate_stays_near_the_path_at_ten_percent_loss(self):
        # A 10 ms path losing 10 % each way, 300 KB in bulk. Timing segments whose ACK came
        # late (after a timeout's retransmission) fed timeouts into the estimate: with seed 6
        # SRTT climbed to 2.6 s, the RTO to its 10 s cap, and the transfer took 89 s.
        for seed in range(1, 13):
            sim = Sim(seed, loss=0.1, delay=0.005)
            sid = sim.open()
            started = sim.now
            sim.server.send_stream(sid, b"y" * 300000, sim.now)
            highest = [0.0]

            def delivered():
                highest[0] = max(highest[0], sim.server.session_stats(sid)["srtt"] or 0.0)
                return len(sim.client_got) == 300000
            self.assertTrue(sim.run_until(delivered, 60.0), seed)
            self.assertLess(highest[0], 0.05, seed)          # five times the path's RTT
            self.assertLess(sim.now - started, 10.0, seed)

    def test_no_retransmission_on_duplicate_ack(self):
        stream = stream_with_segments(6)
        stream.on_ack(0, 64, [(1, 2)], 0.1)                       # seg 0 missing, 1 acked
        for _ in range(50):                                       # the same ACK, again
            stream.on_ack(0, 64, [(1, 2)], 0.2)
            stream.on_ack(0, 64, (), 0.2)
        self.assertEqual(stream.poll(0.2), [])
        self.assertEqual((stream.retransmissions, stream.fast_retransmits), (0, 0))
        self.assertEqual(stream.unacked[0].skips, 1)

    def test_fast_retransmit_after_three_later_segments_and_window_halves(self):
        stream = stream_with_segments(8)
        stream.on_ack(0, 64, [(1, 3)], 0.1)                       # 2 later acked
        self.assertEqual(stream.fast_retransmits, 0)
        before = stream.cwnd
        stream.on_ack(0, 64, [(1, 4)], 0.1)                       # the third
        self.assertEqual(stream.fast_retransmits, 1)
        self.assertAlmostEqual(stream.cwnd, max((before + 1) / 2, udp_stream.MIN_CWND))
        resent = stream.poll(0.1)
        self.assertEqual([s.seq for s in resent][:1], [0])
        # a second loss in the same window does not halve again
        cwnd = stream.cwnd
        stream.on_ack(0, 64, [(1, 4), (5, 8)], 0.15)             # seg 4 is now skipped 3x
        self.assertEqual(stream.fast_retransmits, 2)
        self.assertGreaterEqual(stream.cwnd, cwnd)

    def test_window_grows_additively_and_shrinks_on_loss_in_a_session(self):
        sim = Sim(11, loss=0.15, jitter=0.02)
        sid = sim.open()
        sim.server.send_stream(sid, b"y" * 400000, sim.now)
        sim.run_until(lambda: len(sim.client_got) == 400000, 300.0)
        stats = sim.server.session_stats(sid)
        self.assertGreater(stats["cwnd_cuts"], 0)
        self.assertGreater(stats["retransmissions"], 0)
        self.assertLessEqual(stats["cwnd"], udp_stream.MAX_CWND)
        # clean link: the window reaches its cap and never shrinks
        clean = Sim(12)
        sid = clean.open()
        clean.server.send_stream(sid, b"y" * 400000, clean.now)
        clean.run_until(lambda: len(clean.client_got) == 400000, 300.0)
        stats = clean.server.session_stats(sid)
        self.assertEqual((stats["cwnd_cuts"], stats["retransmissions"]), (0, 0))
        self.assertGreater(stats["cwnd"], 20)


    def test_an_ack_of_every_segment_sent_is_taken_and_one_above_it_is_ignored(self):
        stream = stream_with_segments(3)
        stream.on_ack(4, 64, [(4, 5)], 0.1)       # above the 3 segments sent: ignored
        self.assertEqual((len(stream.unacked), stream.peer_ack, stream.srtt), (3, 0, None))
        stream.on_ack(3, 64, (), 0.1)             # the last segment's number + 1: all of them
        self.assertEqual((len(stream.unacked), stream.peer_ack, stream.in_flight), (0, 3, 0))
        self.assertTrue(stream.all_acked())

    def test_fast_retransmit_counts_later_segments_newly_acknowledged_over_several_acks(self):
        stream = stream_with_segments(6)
        for end, retransmits in ((2, 0), (3, 0), (3, 0), (4, 1)):   # (3, 0) again: a duplicate
            stream.on_ack(0, 64, [(1, end)], 0.1)                  # one later segment each
            self.assertEqual(stream.fast_retransmits, retransmits, end)
        self.assertEqual([seg.seq for seg in stream.poll(0.1)], [0])
        stream.on_ack(0, 64, [(1, 6)], 0.1)       # sent before the resend: they do not count
        self.assertEqual(stream.fast_retransmits, 1)

    def test_time_threshold_before_any_rtt_sample_is_nine_eighths_of_the_initial_rto(self):
        stream = stream_with_segments(2)
        self.assertTrue(stream.on_timer(1.0))                  # both lost, both sent again
        self.assertEqual([seg.seq for seg in stream.poll(1.0)], [0, 1])
        stream.on_ack(0, 64, [(1, 2)], 1.2)       # a resent segment: no RTT sample (Karn)
        self.assertIsNone(stream.srtt)
        self.assertAlmostEqual(stream.loss_deadline, 1.0 + 9 / 8 * udp_stream.INITIAL_RTO)
        stream.on_timer(2.1)
        self.assertEqual(stream.poll(2.1), [])
        self.assertFalse(stream.on_timer(2.125))              # not the RTO: the time threshold
        self.assertEqual([seg.seq for seg in stream.poll(2.125)], [0])
        self.assertEqual((stream.fast_retransmits, stream.rto_timeouts), (1, 1))

# ---------------------------------------------------------------------------------------------
# Liveness
# ---------------------------------------------------------------------------------------------

class LivenessTests(unittest.TestCase):

    def test_idle_session_is_kept_alive_with_few_pings(self):
        sim = Sim()
        sim.open()
        sim.log.clear()
        sim.advance(600.0)
        self.assertEqual(sim.closed_events(sim.server_events), [])
        self.assertEqual(sim.client.state, "open")
        pings = [t for t, _, _, kind in sim.log if kind == PING]
        self.assertLessEqual(len(pings), 600 / udp_stream.KEEPALIVE_IDLE + 2)
        self.assertGreaterEqual(len(pings), 600 / udp_stream.KEEPALIVE_IDLE - 2)

    def test_vanished_peer_is_gone_within_60_seconds_both_ways(self):
        for loss in (0.0, 0.3):
            sim = Sim(3, loss=loss)
            sid = sim.open()
            sim.server.send_stream(sid, b"z" * 5000, sim.now)     # and some data in flight
            sim.client.send_stream(b"w" * 5000, sim.now)
            sim.step()
            sim.net.cut = True
            cut = sim.now
            sim.run_until(lambda: sim.closed_events(sim.server_events)
                          and sim.client.state == "closed", 120.0)
            (s_at, s_ev), = [(t, e) for t, e in sim.server_events
                             if isinstance(e, SessionClosed)]
            (c_at, c_ev), = [(t, e) for t, e in sim.client_events
                             if isinstance(e, SessionClosed)]
            self.assertEqual((s_ev.reason, c_ev.reason), ("peer timed out",) * 2)
            self.assertLess(s_at - cut, 60.0)
            self.assertLess(c_at - cut, 60.0)
            self.assertGreaterEqual(s_at - cut, udp_stream.IDLE_TIMEOUT - 1.0)

    def test_pings_start_after_15_seconds_of_silence(self):
        sim = Sim()
        sim.open()
        sim.net.cut = True
        sim.log.clear()
        start = sim.now
        sim.advance(44.0)
        pings = [round(t - start) for t, src, _, kind in sim.log if kind == PING]
        self.assertTrue(pings and min(pings) >= 14, pings)
        self.assertLessEqual(len(pings), 2 * 7)


if __name__ == "__main__":
    unittest.main()
