"""tools/relay.py: the impairments it draws, and the relay itself in a child process on
127.0.0.1 (both directions, loss, duplication, reordering, stopping by itself). Every wait is
bounded; the relay is stopped by its pid."""
import select
import socket
import subprocess
import sys
import time
import unittest

from tools import kit
from tools.kit import REPO_ROOT
from tools.relay import Impairment

HOST = "127.0.0.1"
WAIT = 5.0                  # the longest wait for any datagram or line


def start_relay(to_port, *options, seconds=20):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.relay", "--listen", "%s:0" % HOST,
         "--to", "%s:%d" % (HOST, to_port), "--seconds", str(seconds)] + list(options),
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = kit.read_line(proc, WAIT).decode("utf-8", "replace")
    assert line.startswith("relaying %s:" % HOST), line
    return proc, (HOST, int(line.split()[1].rpartition(":")[2]))


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(WAIT)
    proc.stdout.close()
    proc.stderr.close()


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    return sock


def receive(sock, count, timeout=2.0):
    """Datagrams on `sock` until `count` arrived or `timeout` passed with nothing new."""
    got = []
    while len(got) < count:
        if not select.select([sock], [], [], timeout)[0]:
            break
        got.append(sock.recvfrom(2048))
    return got


class ImpairmentTests(unittest.TestCase):

    def test_the_same_seed_gives_the_same_fates(self):
        first = Impairment(0.2, 0.05, 0.1, 0.005, seed=7)
        second = Impairment(0.2, 0.05, 0.1, 0.005, seed=7)
        self.assertEqual([first.fates() for _ in range(1000)],
                         [second.fates() for _ in range(1000)])

    def test_rates_are_as_asked(self):
        imp = Impairment(0.2, 0.05, 0.1, 0.005, seed=1)
        fates = [imp.fates() for _ in range(20000)]
        self.assertAlmostEqual(sum(1 for f in fates if not f) / 20000, 0.2, delta=0.015)
        self.assertAlmostEqual(sum(1 for f in fates if len(f) == 2) / 16000, 0.05, delta=0.01)
        held = sum(1 for f in fates for d in f if d > 0.005)
        self.assertAlmostEqual(held / sum(len(f) for f in fates), 0.1, delta=0.015)

    def test_probabilities_are_checked(self):
        with self.assertRaises(ValueError):
            Impairment(loss=1.5)


class RelayTests(unittest.TestCase):

    def setUp(self):
        self.server = udp_socket()
        self.addCleanup(self.server.close)
        self.client = udp_socket()
        self.addCleanup(self.client.close)

    def relay(self, *options, seconds=20):
        proc, address = start_relay(self.server.getsockname()[1], *options, seconds=seconds)
        self.addCleanup(stop, proc)
        return proc, address

    def test_both_directions_with_no_impairment(self):
        _, address = self.relay()
        for i in range(50):
            self.client.sendto(b"up %d" % i, address)
        got = receive(self.server, 50)
        self.assertEqual([data for data, _ in got], [b"up %d" % i for i in range(50)])
        self.assertEqual({src for _, src in got}, {address})    # it sends from its own port
        for i in range(50):
            self.server.sendto(b"down %d" % i, address)
        got = receive(self.client, 50)
        self.assertEqual([data for data, _ in got], [b"down %d" % i for i in range(50)])
        self.assertEqual({src for _, src in got}, {address})

    def test_loss_duplication_and_reordering(self):
        _, address = self.relay("--loss", "0.3", "--dup", "0.3", "--reorder", "0.3",
                                "--delay", "2", "--seed", "5")
        sent = [b"%03d" % i for i in range(200)]
        for data in sent:
            self.client.sendto(data, address)
            time.sleep(0.0005)              # keep the socket buffers from overflowing
        got = [data for data, _ in receive(self.server, 400, timeout=1.0)]
        distinct = set(got)
        self.assertLess(len(distinct), 180)                 # some were lost
        self.assertGreater(len(distinct), 100)
        self.assertGreater(len(got), len(distinct))         # some came twice
        self.assertNotEqual(got, sorted(got))               # some overtook others

    def test_it_stops_by_itself_and_prints_its_counts(self):
        proc, address = self.relay(seconds=1)
        self.client.sendto(b"x", address)
        self.assertEqual(receive(self.server, 1)[0][0], b"x")
        self.assertEqual(proc.wait(WAIT), 0)
        summary = kit.read_line(proc, WAIT).decode("utf-8", "replace")
        self.assertIn("received 1, sent 1, dropped 0", summary)

    def test_bad_arguments_are_refused(self):
        result = subprocess.run(
            [sys.executable, "-m", "tools.relay", "--listen", "%s:0" % HOST, "--to",
             "%s:9" % HOST, "--loss", "2"], cwd=REPO_ROOT, capture_output=True, timeout=WAIT)
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"probability", result.stderr)


if __name__ == "__main__":
    unittest.main()
