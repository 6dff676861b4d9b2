"""Tests of tools/attack.py: every scenario, at its --quick size, against a server this test
spawns (Server.py on 127.0.0.1 and a port the kernel picks), must pass its targets;
and the command line refuses what it cannot do.

Each scenario run is bounded by the tool's own limits (its floods last a second, its waits are
bounded) and the spawned server is stopped by its pid at the end of every run.
"""
import contextlib
import io
import json
import unittest
from types import SimpleNamespace
from typing import List, Tuple

from tools import attack, kit


def run_attack(*argv: str) -> Tuple[int, dict, str]:
    """Run attack.main(argv) here; return (exit status, JSON summary, standard error)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = attack.main(list(argv))
    lines = out.getvalue().splitlines()
    if len(lines) != 1:
        raise AssertionError("expected one JSON line on stdout, got %r" % out.getvalue())
    return status, json.loads(lines[0]), err.getvalue()


class QuickScenariosTest(unittest.TestCase):
    """The unit slice: each scenario, small, against this checkout's server."""

    def check(self, scenario: str, *options: str) -> dict:
        status, summary, err = run_attack(scenario, "--spawn", "--quick", "--quiet", *options)
        self.assertTrue(summary["ok"], summary["verdict"])
        self.assertEqual((status, summary["tool"], summary["scenario"], summary["failures"]),
                         (0, "attack", scenario, {}))
        self.assertIn("attack: PASS: ", err)
        return summary

    def test_stalled_members_cost_the_server_little_memory(self):
        summary = self.check("stalled")
        self.assertLessEqual(summary["server_rss_growth_mib"], attack.STALLED_GROWTH_TARGET_MIB)
        self.assertGreater(summary["flooder_echoes"], 0)

    def test_a_mass_departure_reaches_every_remaining_member_once(self):
        summary = self.check("departure")
        self.assertEqual((summary["leaves_missing"], summary["leaves_duplicated"]), (0, 0))
        self.assertLessEqual(summary["probe_p99_ms"], attack.PROBE_P99_TARGET_MS)

    def test_kill_service_ends_the_server_during_a_departure_storm(self):
        summary = self.check("departure", "--then", "kill")
        self.assertLessEqual(summary["stop_seconds"], attack.STOP_TARGET_SECONDS)

    def test_readers_that_keep_up_are_not_cut_by_a_flooder(self):
        summary = self.check("flood")
        self.assertEqual((summary["slow_cut"], summary["fast_cut"]), (None, None))
        self.assertEqual(summary["slow_received"], summary["chats_echoed"])

    def test_rooms_can_be_created_after_a_flood_of_fresh_names(self):
        summary = self.check("rooms")
        self.assertIn("JoinedReply", summary["new_room_reply"])

    def test_a_new_client_is_served_when_idle_connections_hold_every_descriptor(self):
        summary = self.check("descriptors")
        self.assertGreater(summary["held_connected"], 128)
        self.assertTrue(summary["new_client_served"])

    def test_blank_line_floods_leave_the_probe_fast(self):
        self.check("blank")

    def test_numbers_of_5001_digits_get_replies_and_no_traceback(self):
        summary = self.check("digits")
        self.assertEqual(summary["tracebacks"], 0)

    def test_disconnect_delivers_every_leave_announcement(self):
        summary = self.check("disconnect")
        self.assertEqual(summary["leaves_received"], summary["joined"])

    def test_unprintable_names_get_error_code_12(self):
        summary = self.check("names")
        self.assertEqual(summary["refused_with_12"], summary["joins"])

    def test_newcomers_are_served_when_proven_idlers_hold_every_descriptor(self):
        summary = self.check("idlers")
        self.assertGreater(summary["held_proven"], 100)     # of a limit of 128 descriptors
        self.assertEqual(summary["newcomers_served"], attack.NEWCOMERS)

    def test_many_addresses_resetting_at_once_are_announced_in_bounded_steps(self):
        summary = self.check("departures")
        self.assertEqual(summary["join_errors"], 0)
        self.assertEqual(summary["leaves_told"], summary["leaves_owed"])
        self.assertLessEqual(summary["probe_max_ms"], attack.PROBE_MAX_TARGET_MS)
        # the CPU the build-up took, the attacker's (this process and its probe) and the server's
        self.assertGreaterEqual(summary["build_attacker_cpu_s"], 0)
        self.assertGreaterEqual(summary["build_server_cpu_s"], 0)


class ArgumentsTest(unittest.TestCase):

    def usage_error(self, argv: List[str]) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as caught:
            attack.parse_args(argv)
        self.assertEqual(caught.exception.code, 2)
        return err.getvalue()

    def test_a_target_is_required(self):
        self.assertIn("exactly one of --spawn and --port", self.usage_error(["stalled"]))

    def test_sigterm_needs_a_spawned_server(self):
        self.assertIn("needs --spawn",
                      self.usage_error(["departure", "--port", "9", "--then", "sigterm"]))

    def test_sizes_default_to_the_measured_ones_and_quick_makes_them_small(self):
        full = attack.sized(attack.parse_args(["stalled", "--port", "9"]), "stalled", False)
        quick = attack.sized(attack.parse_args(["stalled", "--port", "9"]), "stalled", True)
        given = attack.sized(attack.parse_args(["stalled", "--port", "9", "--members", "7"]),
                             "stalled", True)
        self.assertEqual((full.members, full.seconds), (2000, 10.0))
        self.assertLess(quick.members, full.members)
        self.assertEqual(given.members, 7)

    def test_help_says_the_values_not_the_names_of_constants(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            attack.parse_args(["--help"])
        text = out.getvalue()
        for name in ("STALLED_RCVBUF", "CHAT_BYTES", "ROOM_RETRY_SECONDS", "HELO_DEADLINE",
                     "DIGITS", "MONITOR_INTERVAL", "PROBE_INTERVAL"):
            self.assertNotIn(name, text)
        for value in ("SO_RCVBUF of %d" % attack.STALLED_RCVBUF,
                      "%d-byte chats" % attack.CHAT_BYTES,
                      "up to %g s" % attack.ROOM_RETRY_SECONDS,
                      "within %g s" % attack.HELO_DEADLINE, "%d digits" % attack.DIGITS,
                      "every %g s" % attack.MONITOR_INTERVAL,
                      "every %g ms" % (attack.PROBE_INTERVAL * 1000),
                      "later than %g s" % attack.PROBE_TIMEOUT):
            self.assertIn(value, " ".join(text.split()))

    def test_nothing_listening_fails_with_one_line(self):
        status, summary, _err = run_attack("names", "--port", "1", "--quiet")
        self.assertEqual((status, list(summary["failures"])), (1, ["no_server"]))


if __name__ == "__main__":
    unittest.main()


class CrowdJoinWindowTest(unittest.TestCase):
    """Crowd.join with a window: members connect only while the join announcements owed and
    not yet read stay under it, and every member still joins and hears every join."""

    def test_members_connect_only_while_the_unread_announcements_stay_under_the_window(self):
        server = kit.ServerProcess()
        self.addCleanup(server.stop)
        report = kit.Report("test", quiet=True)
        crowd = attack.Crowd(SimpleNamespace(address=kit.resolve(server.host, server.port)), report)
        self.addCleanup(crowd.loop.close_all)
        members = [attack.CrowdMember("window", "w%d" % i) for i in range(40)]
        window, unread_at_connect = 50, []
        connect = crowd.loop.connect

        def recording_connect(member):
            before = len(unread_at_connect)             # members connected before this one
            owed = before * (before + 1) // 2           # the joins they heard or will hear
            unread_at_connect.append(owed - sum(m.counted for m in members))
            connect(member)
        crowd.loop.connect = recording_connect
        self.assertIsNotNone(crowd.join(members, 30.0, window=window))
        self.assertEqual(report.failed, 0)
        self.assertTrue(all(m.ref is not None for m in members))
        self.assertEqual(len(unread_at_connect), len(members))
        # (all 40 at once, the last would connect with 780 owed and, before any read, unread)
        self.assertLess(max(unread_at_connect), window)
