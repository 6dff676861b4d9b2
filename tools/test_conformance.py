"""tools/conformance against real servers: ours (TCP and UDP) passes every case; the comparison
peers of bench/ and the small broken servers of tools/broken_servers.py fail exactly the cases
their defects break; the command line, its reports and its bounds."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import unittest.mock
from typing import List, Tuple

from tools import kit
from tools.conformance import cli
from tools.conformance.case import Case
from tools.conformance.wire import Warn

ALL_CASES = [c.id for c in cli.select_cases(None, False)]
CHILD_TIMEOUT = 10.0            # seconds for a child server to say where it listens, or to stop
RUN_TIMEOUT = 60.0              # seconds for a tester run in a child process


def failed(results) -> List[str]:
    return [r.id for r in results if r.verdict != "PASS"]


def explain(results) -> str:
    return "\n".join("%s %s: %s" % (r.verdict, r.id, r.message) for r in results
                     if r.verdict != "PASS")


class Child:
    """A server in a child process that prints "listening on 127.0.0.1:PORT" first; stopped
    by its pid (SIGTERM, then SIGKILL)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable] + list(args), cwd=kit.REPO_ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        line = kit.read_line(self.proc, CHILD_TIMEOUT)
        if not line.startswith(b"listening on 127.0.0.1:"):
            self.stop()
            raise AssertionError("%s printed %r, not where it listens" % (args, line))
        self.port = int(line.rsplit(b":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(CHILD_TIMEOUT)
        self.proc.stdout.close()


class OurServerTests(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = kit.ServerProcess()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_every_case_passes_over_tcp(self):
        results = cli.run("127.0.0.1", self.server.port)
        self.assertEqual([r.id for r in results], ALL_CASES)
        self.assertEqual(failed(results), [], explain(results))

    def test_every_case_passes_over_udp(self):
        results = cli.run("127.0.0.1", self.server.port, udp=True)
        self.assertEqual([r.id for r in results], ALL_CASES)
        self.assertEqual(failed(results), [], explain(results))

    def test_the_command_line_writes_its_reports_and_exits_0(self):
        with tempfile.TemporaryDirectory() as folder:
            json_path, html_path = (os.path.join(folder, n) for n in ("r.json", "r.html"))
            out, err = Text(), Text()
            status = cli.main(["127.0.0.1", str(self.server.port), "--only", "helo,join.reply",
                               "--json", json_path, "--html", html_path], out, err)
            with open(json_path, encoding="utf-8") as f:
                report = json.load(f)
            with open(html_path, encoding="utf-8") as f:
                page = f.read()
        self.assertEqual(status, 0)
        self.assertTrue(out.text.endswith("3 passed, 0 failed, 0 warnings\n"), out.text)
        self.assertIn("[ 3/3] join.reply           PASS", err.text)
        self.assertEqual([(c["id"], c["verdict"]) for c in report["cases"]],
                         [("helo.reply", "PASS"), ("helo.verbatim", "PASS"),
                          ("join.reply", "PASS")])
        self.assertEqual((report["passed"], report["failed"], report["warnings"]), (3, 0, 0))
        self.assertIn("JOINED_CHATROOM: ", report["cases"][2]["transcript"][4][2])
        self.assertTrue(page.startswith("<!DOCTYPE html>"))
        self.assertIn('id="join.reply"', page)
        self.assertNotIn("http", page.lower().replace("http-equiv", ""))   # self-contained

    def test_the_grader_profile_runs_the_graders_sequence_only(self):
        out, err = Text(), Text()
        status = cli.main(["127.0.0.1", str(self.server.port), "--profile", "grader",
                           "--quiet"], out, err)
        self.assertEqual(status, 0, out.text)
        self.assertIn("PASS  grader.sequence", out.text)
        self.assertTrue(out.text.endswith("1 passed, 0 failed, 0 warnings\n"))
        self.assertEqual(err.text, "1 passed, 0 failed, 0 warnings\n")

    def test_it_runs_as_a_plain_script_from_any_folder(self):
        script = os.path.join(kit.REPO_ROOT, "tools", "conformance")
        with tempfile.TemporaryDirectory() as folder:
            done = subprocess.run([sys.executable, script, "127.0.0.1", str(self.server.port),
                                   "--only", "helo.reply", "--quiet"], cwd=folder,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  timeout=RUN_TIMEOUT)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"1 passed, 0 failed, 0 warnings", done.stdout)


class Text:
    """A text stream that keeps what is written."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


class CommandLineTests(unittest.TestCase):

    def test_list_names_every_case_by_section(self):
        out = Text()
        self.assertEqual(cli.main(["--list"], out), 0)
        for case_id in ALL_CASES + ["kill.service"]:
            self.assertIn("  %s " % case_id, out.text)
        self.assertIn("kill.service", out.text.splitlines()[-1])

    def test_an_unknown_case_is_a_usage_error(self):
        with self.assertRaises(SystemExit) as raised, \
                unittest.mock.patch("sys.stderr", new=Text()):
            cli.parse_args(["127.0.0.1", "1", "--only", "no.such.case"])
        self.assertEqual(raised.exception.code, 2)

    def test_kill_service_runs_only_when_allowed_and_last(self):
        self.assertNotIn("kill.service", [c.id for c in cli.select_cases(None, False)])
        chosen = cli.select_cases(["kill", "helo"], True)
        self.assertEqual([c.id for c in chosen], ["helo.reply", "helo.verbatim", "kill.service"])

    def test_strict_counts_a_warning_as_a_failure(self):
        def reads_otherwise(_ctx):
            raise Warn("it differs", ours="our reading", theirs="theirs", quote="the text")
        case = Case("helo.fake", "a case that warns", reads_otherwise)
        loose = cli.run_case(case, ("127.0.0.1", 9), False, 1.0, strict=False)
        strict = cli.run_case(case, ("127.0.0.1", 9), False, 1.0, strict=True)
        self.assertEqual((loose.verdict, loose.ours, loose.theirs), ("WARN", "our reading",
                                                                    "theirs"))
        self.assertEqual(strict.verdict, "FAIL")

    def test_a_server_that_never_answers_fails_in_bounded_time(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)               # connections complete in the backlog, never answered
        started = time.monotonic()
        results = cli.run("127.0.0.1", silent.getsockname()[1], timeout=0.3,
                          only=["helo", "join.reply"])
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual([r.verdict for r in results], ["FAIL"] * 3)
        self.assertIn("no reply in 0.3 s", results[0].message)

    def test_kill_service_stops_our_server(self):
        server = kit.ServerProcess()
        self.addCleanup(server.stop)
        out = Text()
        status = cli.main(["127.0.0.1", str(server.port), "--only", "helo.reply,kill",
                           "--allow-kill", "--quiet"], out, Text())
        self.assertEqual(status, 0, out.text)
        self.assertIn("PASS  kill.service", out.text)
        self.assertEqual(server.proc.wait(CHILD_TIMEOUT), 0)


class PeerTests(unittest.TestCase):
    """The comparison peers of bench/, each in a child process."""

    def run_against(self, *args: str) -> List[str]:
        child = Child(*args)
        self.addCleanup(child.stop)
        results = cli.run("127.0.0.1", child.port)
        self.assertEqual([r.id for r in results], ALL_CASES)
        return failed(results)

    def test_the_threaded_peer_fails_only_the_slow_reader(self):
        # One blocking sendall() per member, under one lock: a member that stops reading
        # holds up every thread until SEND_TIMEOUT (5 s).
        self.assertEqual(self.run_against("-m", "bench.threaded_peer", "0"), ["slow.reader"])

    def test_the_asyncio_peer_passes_every_case(self):
        self.assertEqual(self.run_against("-m", "bench.asyncio_peer", "0"), [])


class BrokenServerTests(unittest.TestCase):
    """Servers with one defect each fail exactly the cases meant to catch it."""

    def assert_fails(self, name: str, expected: List[str], may_also: Tuple[str, ...] = ()) -> None:
        """`name` fails exactly `expected`, and perhaps some of `may_also`: cases whose catch of
        this defect depends on timing the tester does not control."""
        child = Child("-m", "tools.broken_servers", name)
        self.addCleanup(child.stop)
        results = cli.run("127.0.0.1", child.port)
        self.assertEqual([r for r in failed(results) if r not in may_also], expected,
                         explain(results))

    def test_the_correct_one_passes_every_case(self):
        self.assert_fails("ChatServer", [])

    def test_a_reply_to_an_unknown_message(self):
        # the grader's sequence sends an unknown message too, and reads on
        self.assert_fails("RepliesToUnknown", ["other.silent", "grader.sequence"])

    def test_one_recv_taken_as_one_request(self):
        # join.first has alice send a CHAT and, soon after, a HELO to mark the end: when the
        # server is slow enough that one recv() gets both (now and then on a loaded machine), it
        # loses the HELO and the case fails too, rightly; otherwise the case cannot see it.
        self.assert_fails("OneRecvOneRequest",
                          ["framing.bytes", "framing.coalesced", "limits.long"],
                          may_also=("join.first",))

    def test_a_leaver_sent_the_rooms_next_chat(self):
        self.assert_fails("LeftAfterChat", ["leave.cuts"])

    def test_a_join_announced_twice_under_concurrency(self):
        self.assert_fails("DoubleAnnounce", ["concurrency.joins"])

    def test_a_server_stalled_by_a_slow_reader(self):
        self.assert_fails("StallsOnSlowReader", ["slow.reader"])

    def test_the_other_readings_of_the_text_are_warnings_and_strict_fails_them(self):
        warned = ["helo.verbatim", "leave.repeat", "leave.join_id", "identity.name"]
        child = Child("-m", "tools.broken_servers", "OtherReadings")
        self.addCleanup(child.stop)
        results = cli.run("127.0.0.1", child.port)
        self.assertEqual(failed(results), warned, explain(results))
        self.assertEqual({r.verdict for r in results if r.id in warned}, {"WARN"})
        self.assertTrue(all(r.ours and r.theirs for r in results if r.id in warned))
        out = Text()
        status = cli.main(["127.0.0.1", str(child.port), "--only", ",".join(warned),
                           "--strict", "--quiet"], out, Text())
        self.assertEqual(status, 1)
        self.assertTrue(out.text.endswith("0 passed, 4 failed, 0 warnings\n"), out.text)


if __name__ == "__main__":
    unittest.main()
