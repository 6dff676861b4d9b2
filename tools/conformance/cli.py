"""The command line and the runner: which cases, against what, and the reports."""
import argparse
import socket
import sys
import time
import traceback
from typing import Callable, List, Optional, TextIO

from tools.conformance import cases_requests, cases_stream  # noqa: F401 (they register)
from tools.conformance.case import CASES, SECTIONS, Case, Ctx
from tools.conformance.report import (Result, closing_line, html_report, json_report,
                                      text_report)
from tools.conformance.wire import Fail, Net, Transcript, Warn

DEFAULT_TIMEOUT = 2.0           # seconds any one wait for the server lasts
PROFILES = {"all": None, "grader": ["grader"]}


def select_cases(only: Optional[List[str]], allow_kill: bool) -> List[Case]:
    """The cases named by `only` (ids, sections, or id prefixes; all when None), in their
    order, KILL_SERVICE last and only with `allow_kill`."""
    chosen = [c for c in CASES if only is None or any(
        c.id == name or c.section == name or c.id.startswith(name + ".") for name in only)]
    return [c for c in chosen if not c.kill] + [c for c in chosen if c.kill and allow_kill]


def unknown_names(only: List[str]) -> List[str]:
    return [n for n in only if not select_cases([n], True)]


def run_case(case: Case, addr, udp: bool, timeout: float, strict: bool) -> Result:
    """Run one case on connections of its own; its verdict (a WARN is a FAIL if `strict`)."""
    transcript = Transcript()
    net = Net(addr, udp, timeout, transcript)
    ctx = Ctx(net, addr[0], addr[1], timeout, udp)
    result = Result(case.id, case.section, case.title, "PASS", hint=case.hint)
    started = time.monotonic()
    try:
        case.run(ctx)
    except Fail as exc:
        result.verdict, result.message, result.contract = "FAIL", exc.message, exc.quote
    except Warn as exc:
        result.verdict = "FAIL" if strict else "WARN"
        result.message, result.contract = exc.message, exc.quote
        result.ours, result.theirs = exc.ours, exc.theirs
    except OSError as exc:
        result.verdict, result.message = "FAIL", "the connection failed: %s" % exc
    except Exception:               # a bug of the tester's: say so, never blame the server
        result.verdict = "FAIL"
        result.message = "internal error of the tester:\n" + traceback.format_exc()
    finally:
        net.close()
    result.seconds = time.monotonic() - started
    result.transcript = transcript.lines()
    return result


def run(host: str, port: int, udp: bool = False, timeout: float = DEFAULT_TIMEOUT,
        strict: bool = False, only: Optional[List[str]] = None, allow_kill: bool = False,
        progress: Callable[[str], None] = lambda line: None) -> List[Result]:
    """Run the chosen cases against HOST:PORT, one after another; their results."""
    addr = resolve(host, port, udp)
    cases = select_cases(only, allow_kill)
    results = []
    for number, case in enumerate(cases, 1):
        progress("[%2d/%d] %-20s ..." % (number, len(cases), case.id))
        result = run_case(case, addr, udp, timeout, strict)
        progress("[%2d/%d] %-20s %s (%.2f s)" % (number, len(cases), case.id,
                                                  result.verdict, result.seconds))
        results.append(result)
    return results


def resolve(host: str, port: int, udp: bool):
    """HOST's first address: every connection goes there, and nowhere else."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    info = socket.getaddrinfo(host, port, 0, kind)
    return info[0][4][:2]


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m tools.conformance",
        description="Check a chat server against the protocol contract (docs/PROTOCOL.md), "
                    "case by case. Exit status 0 when no case failed.")
    parser.add_argument("host", nargs="?", help="the server's address")
    parser.add_argument("port", nargs="?", type=int, help="the server's port")
    parser.add_argument("--udp", action="store_true",
                        help="speak the project's UDP transport (docs/UDP.md) instead of TCP")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="the longest any one wait for the server lasts (default %(default)s)")
    parser.add_argument("--only", action="append", metavar="ID|SECTION",
                        help="run only these cases (repeat, or separate with commas)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="all",
                        help="a named set of cases: 'grader' is the course grader's sequence")
    parser.add_argument("--strict", action="store_true", help="count a WARN as a FAIL")
    parser.add_argument("--allow-kill", action="store_true",
                        help="also send KILL_SERVICE, last (it stops the server)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    parser.add_argument("--quiet", action="store_true", help="no progress on standard error")
    args = parser.parse_args(argv)
    if args.only:
        args.only = [name for item in args.only for name in item.split(",") if name]
        bad = unknown_names(args.only)
        if bad:
            parser.error("no case or section %s (see --list)" % ", ".join(bad))
    elif PROFILES[args.profile]:
        args.only = PROFILES[args.profile]
    if not args.list and (args.host is None or args.port is None):
        parser.error("HOST and PORT are needed (or --list)")
    return args


def list_cases(out: TextIO) -> None:
    for key, title in SECTIONS:
        out.write("%s  (section %s: %s)\n" % (key, key, title))
        for case in CASES:
            if case.section == key:
                out.write("  %-20s %s%s\n" % (case.id, case.title,
                                              " [only with --allow-kill]" if case.kill else ""))


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        list_cases(out)
        return 0
    target = "%s:%d" % (args.host, args.port)
    progress = (lambda line: None) if args.quiet else (lambda line: err.write(line + "\n"))
    try:
        results = run(args.host, args.port, args.udp, args.timeout, args.strict, args.only,
                      args.allow_kill, progress)
    except OSError as exc:
        err.write("cannot reach %s: %s\n" % (target, exc))
        return 2
    out.write(text_report(results, target))
    transport = "UDP" if args.udp else "TCP"
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json_report(results, target, transport, args.strict))
    if args.html:
        command = "python3 -m tools.conformance " + " ".join(
            sys.argv[1:] if argv is None else argv)
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(html_report(results, target, transport, command))
    err.write(closing_line(results) + "\n")
    return 0 if all(r.verdict != "FAIL" for r in results) else 1


