"""A throw-away redis-server for the tests (and bench/bus_load.py): one process on 127.0.0.1,
in memory only (`--save ''`, `--appendonly no`, a temporary --dir), ended by its pid.

The tests that need it skip, saying why, where redis-server is not installed (`.ci/run`
installs it, so CI always runs them).
"""
import os
import selectors
import shutil
import socket
import subprocess
import tempfile
import time

from sansio.resp import NEED_DATA, RespReader, encode_command

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = ("redis-server is not installed here (.ci/run installs it with apt-get; so would "
               "`apt-get install redis-server`)")
HOST = "127.0.0.1"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class RedisProcess:
    """redis-server on 127.0.0.1:`port` (a free one if 0), ready when the constructor returns:
    it reads the server's log until it says it accepts connections (no guessing how long a
    start takes), within START_TIMEOUT."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp()
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no",
             "--loglevel", "notice"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        log = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"Ready to accept connections" not in log:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise RuntimeError("redis-server not ready in %ss: %r" % (START_TIMEOUT, log))
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError("redis-server exited: %r" % log)
                log += chunk
        # From here on its log is not read: it says little at "notice", and what it says fits
        # in the pipe's buffer for the length of a test run.

    @property
    def url(self) -> str:
        return "redis://%s:%d" % (HOST, self.port)

    def command(self, *args):
        """One command on a fresh connection; its reply (bounded wait)."""
        with socket.create_connection((HOST, self.port), timeout=2.0) as sock:
            sock.sendall(encode_command(*args))
            reader = RespReader()
            while True:
                reply = reader.maybe_next()
                if reply is not NEED_DATA:
                    return reply
                data = sock.recv(65536)
                if not data:
                    raise OSError("redis closed the connection")
                reader.feed(data)

    def stop(self) -> None:
        """End it (SIGKILL: nothing of it is kept) and wait for it; idempotent."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(START_TIMEOUT)
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)
