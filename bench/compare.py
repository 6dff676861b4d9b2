#!/usr/bin/env python3
"""Run the same chat loads against several servers, in alternating order, and compare them.

    python3 bench/compare.py                          # every scenario, 3 rounds, 3 servers
    python3 bench/compare.py --repeat 5 --scenario rooms100x5
    python3 bench/compare.py --rooms 2 --members 3 --messages 5 --repeat 1
    python3 bench/compare.py --server "mine=python3 my_server.py {port}" --server ...

For every round, scenario and server: start the server fresh on a free port of 127.0.0.1 (its
command is run from the repository's top folder, {port} replaced), wait until it accepts a
connection, run the project's load generator on it

    python3 -m tools.loadgen --port P fanout --rooms R --members M --messages K

and stop the server by its own pid (SIGTERM, then SIGKILL if it has not gone within a few
seconds), also when anything fails. Odd rounds run the servers in the order given, even
rounds in the reverse order, so that a machine that slows down over the run does not always
hurt the same server.

The table gives, per scenario and server, the median over the rounds of deliveries/s and of
the probe's p50 and p99 echo times, the deliveries missing (summed over the rounds: it must be
0), and the throughput as a ratio to the first server named, computed round by round (each
round's figure divided by the first server's in the same round), as the median and the
min..max of those ratios. A JSON line with everything follows the table. Exit status 0 when
every run delivered everything, 1 otherwise. Standard library only.
"""
import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The shapes of the course's benchmark: one big room, a few mid-sized ones, many small ones.
# (rooms, members per room, messages per member); deliveries = rooms * members^2 * messages.
SCENARIOS = {
    "room1x100": (1, 100, 50),          # 500 000 deliveries: the widest fan-out
    "rooms10x20": (10, 20, 200),        # 800 000
    "rooms100x5": (100, 5, 200),        # 500 000: cheap requests, per-request cost shows
}
DEFAULT_SERVERS = [
    "project=bash start.sh {port}",
    "asyncio=python3 -m bench.asyncio_peer {port}",
    "threaded=python3 -m bench.threaded_peer {port}",
]
# Bounds on every wait.
START_TIMEOUT = 15.0        # for a server to accept its first connection
STOP_TIMEOUT = 5.0          # for a server to exit after SIGTERM (then SIGKILL, as long again)
LOADGEN_GRACE = 30.0        # beyond the generator's own --timeout, before it is killed


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (the server binds it next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(command: str, port: int) -> subprocess.Popen:
    """Start `command` with {port} filled in and return once it accepts a connection."""
    argv = shlex.split(command.format(port=port))
    proc = subprocess.Popen(argv, cwd=TOP, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("exited with status %s before listening: %s"
                                   % (proc.returncode, command))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("not listening after %.0f s: %s" % (START_TIMEOUT, command))
    except BaseException:           # Ctrl-C included: never leave a server behind
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen) -> None:
    """End the server we started, by its pid: SIGTERM, then SIGKILL if it lingers."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass


def run_loadgen(port: int, shape: Tuple[int, int, int], timeout: float) -> Dict:
    """One fanout run; its JSON summary, or {"error": ...} if it produced none."""
    rooms, members, messages = shape
    argv = [sys.executable, "-m", "tools.loadgen", "--port", str(port),
            "--timeout", str(timeout), "fanout", "--rooms", str(rooms),
            "--members", str(members), "--messages", str(messages)]
    try:
        done = subprocess.run(argv, cwd=TOP, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout + LOADGEN_GRACE)
    except subprocess.TimeoutExpired:
        return {"error": "load generator still running after %.0f s" % (timeout + LOADGEN_GRACE)}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": "no summary (status %d): %s"
                         % (done.returncode, (done.stderr or done.stdout).strip()[-300:])}


def run_one(command: str, shape: Tuple[int, int, int], timeout: float) -> Dict:
    port = free_port()
    try:
        proc = start_server(command, port)
    except RuntimeError as exc:
        return {"error": str(exc)}
    try:
        return run_loadgen(port, shape, timeout)
    finally:
        stop_server(proc)


def succeeded(result: Dict) -> bool:
    return bool(result.get("ok")) and "deliveries_per_s" in result


def median_of(results: List[Dict], key: str) -> Optional[float]:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(rounds: Dict[str, List[Dict]], names: List[str]) -> Dict[str, Dict]:
    """Per server: medians over its rounds, and ratios to names[0] taken round by round."""
    first = rounds[names[0]]
    summary = {}
    for name in names:
        results = rounds[name]
        good = [r for r in results if succeeded(r)]
        ratios = [mine["deliveries_per_s"] / base["deliveries_per_s"]
                  for mine, base in zip(results, first)
                  if succeeded(mine) and succeeded(base) and base["deliveries_per_s"]]
        summary[name] = {
            "rounds": len(results),
            "failed_rounds": len(results) - len(good),
            "deliveries_per_s": median_of(good, "deliveries_per_s"),
            "probe_p50_ms": median_of(good, "probe_p50_ms"),
            "probe_p99_ms": median_of(good, "probe_p99_ms"),
            # near 1.0: the load generator, not the server, was the limit
            "loadgen_cpu_share": median_of(good, "loadgen_cpu_share"),
            "missing": sum(r.get("missing", 0) for r in results if "missing" in r),
            "ratio": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
            "errors": [r.get("error") or r.get("failure_examples") or "not ok"
                       for r in results if not succeeded(r)][:3],
        }
    return summary


def number(value: Optional[float], form: str) -> str:
    return "-" if value is None else form % value


def print_table(scenarios: Dict[str, Tuple[int, int, int]], table: Dict[str, Dict[str, Dict]],
                names: List[str]) -> None:
    head = "%-12s %-10s %13s %9s %9s %8s  %s" % (
        "scenario", "server", "deliveries/s", "p50 ms", "p99 ms", "missing",
        "vs %s: median (min..max)" % names[0])
    print(head)
    print("-" * len(head))
    for scenario in scenarios:
        for name in names:
            row = table[scenario][name]
            ratio = "-"
            if row["ratio"] is not None:
                ratio = "%.2f (%.2f..%.2f)" % (row["ratio"], row["ratio_min"], row["ratio_max"])
            print("%-12s %-10s %13s %9s %9s %8d  %s%s" % (
                scenario, name, number(row["deliveries_per_s"], "%.0f"),
                number(row["probe_p50_ms"], "%.1f"), number(row["probe_p99_ms"], "%.1f"),
                row["missing"], ratio,
                "  [%d of %d rounds failed]" % (row["failed_rounds"], row["rounds"])
                if row["failed_rounds"] else ""))


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run it from anywhere: server commands and the load generator run in the "
               "repository's top folder. Progress goes to standard error.")
    parser.add_argument("--server", action="append", metavar="NAME=COMMAND",
                        help="a server to compare; COMMAND holds {port}. Repeat it; the first "
                             "is the one ratios are taken to. Default: %s"
                             % "; ".join(DEFAULT_SERVERS))
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable; default all)")
    parser.add_argument("--rooms", type=int, help="with --members and --messages: one scenario "
                                                  "of this shape instead of the named ones")
    parser.add_argument("--members", type=int)
    parser.add_argument("--messages", type=int)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds one load-generator run may take (default 120)")
    args = parser.parse_args(argv)
    shape = (args.rooms, args.members, args.messages)
    if any(v is not None for v in shape):
        if None in shape or min(shape) < 1 or args.scenario:
            parser.error("--rooms, --members and --messages go together (each at least 1), "
                         "without --scenario")
        args.scenarios = {"rooms%dx%d" % (args.rooms, args.members): shape}
    else:
        args.scenarios = {name: SCENARIOS[name] for name in (args.scenario or SCENARIOS)}
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.servers = []
    for spec in args.server or DEFAULT_SERVERS:
        name, equals, command = spec.partition("=")
        if not equals or not name or "{port}" not in command:
            parser.error("--server takes NAME=COMMAND with {port} in COMMAND, not %r" % spec)
        if name in (n for n, _ in args.servers):
            parser.error("two servers named %r" % name)
        args.servers.append((name, command))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = [name for name, _ in args.servers]
    results: Dict[str, Dict[str, List[Dict]]] = {
        scenario: {name: [] for name in names} for scenario in args.scenarios}
    for round_no in range(args.repeat):
        order = args.servers if round_no % 2 == 0 else args.servers[::-1]
        for scenario, shape in args.scenarios.items():
            for name, command in order:
                result = run_one(command, shape, args.timeout)
                results[scenario][name].append(result)
                print("round %d/%d %-12s %-10s %s" % (
                    round_no + 1, args.repeat, scenario, name,
                    "%s deliveries/s" % result["deliveries_per_s"] if succeeded(result)
                    else "FAILED: %s" % (result.get("error") or result.get("failures"))),
                    file=sys.stderr, flush=True)
    table = {scenario: summarise(results[scenario], names) for scenario in args.scenarios}
    print_table(args.scenarios, table, names)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "repeat": args.repeat,
                      "servers": dict(args.servers),
                      "scenarios": {s: list(shape) for s, shape in args.scenarios.items()},
                      "results": table}))
    failed = any(row["failed_rounds"] or row["missing"]
                 for rows in table.values() for row in rows.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
