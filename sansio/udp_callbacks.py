"""Callback validation for the UDP server (docs/UDP.md section 6): which callback addresses are
pending, what each unvalidated address has been sent and may be sent, and who gives way when
too many are pending. The server endpoint (sansio/udp_server.py) owns the sessions and asks this
module; it opens no socket and reads no clock either.

JOIN_CHATROOM's CLIENT_IP/PORT may name another address for a session's stream (anti-reflection;
RFC 9000 s8.2 path validation, s8 amplification limit). No stream byte goes there until that
address has shown it wants them: the client sends KNOCK from it, the server answers with a
PROBE holding a random challenge sent to that address, and the session holder ECHOes the
challenge. Until an address is validated the server sends it at most 3x the bytes it received
from it (so a silent victim receives nothing at all), PROBEs are rate-limited per address and
globally, and pending callbacks are capped, per IP and in all.
"""
import hmac
import secrets
from typing import Any, Dict, NamedTuple, Optional

from policy.bucket import TokenBucket
from policy.shares import Shares
from sansio.udp_wire import CHALLENGE_SIZE, KNOCK_INTERVAL, PROBE, Address, encode

# --- limits (docs/UDP.md, "Limits") ----------------------------------------------------------
# Callbacks waiting for validation, and how long one may wait before the session gives up on it
# and keeps its stream where it went before.
MAX_PENDING_CALLBACKS = 1024
CALLBACK_TIMEOUT = 10.0
# Per address (the IP alone: ports cost an attacker nothing): an eighth of the table (a
# validation takes a round trip, 128 at once is a crowd behind one NAT); past it, the callback
# fails.
MAX_PENDING_CALLBACKS_PER_ADDRESS = 128
# Anti-amplification (RFC 9000 s8): to an address not yet validated, at most this many times
# the bytes received from it.
AMPLIFICATION_FACTOR = 3
# PROBEs per address: a burst of 3, then one per 2 s; and for the whole endpoint 200 per second.
# So even spoofed KNOCKs make one address receive a few small datagrams, and the endpoint as a
# whole reflects at most ~10 KB/s of PROBEs.
PROBE_BURST = 3
PROBE_RATE = 0.5
PROBE_GLOBAL_BURST = 200
PROBE_GLOBAL_RATE = 200.0


class CallbackValidated(NamedTuple):
    """The session's stream now goes to `addr`."""
    session_id: int
    addr: Address


class CallbackFailed(NamedTuple):
    """`addr` was not validated (timed out, too many pending, or given up to make room for
    another session's); the stream stays where it was."""
    session_id: int
    addr: Address
    reason: str


class PendingCallback:
    """A callback address named by the chat layer, not yet validated for this session."""

    __slots__ = ("addr", "challenge", "deadline", "nudge_at")

    def __init__(self, addr: Address, now: float) -> None:
        self.addr = addr
        self.challenge = secrets.token_bytes(CHALLENGE_SIZE)
        self.deadline = now + CALLBACK_TIMEOUT
        # Until validated, the session's source gets a (flagged) ACK every KNOCK_INTERVAL, so
        # a client that missed the flag still learns it should knock.
        self.nudge_at = now + KNOCK_INTERVAL


class UnvalidatedAddress:
    """What the server knows of one address some session wants as its callback: bytes in and
    out (the 3x budget), its PROBE rate limit, and the sessions waiting on it."""

    __slots__ = ("received", "sent", "bucket", "sessions")

    def __init__(self, now: float) -> None:
        self.received = 0
        self.sent = 0
        self.bucket = TokenBucket(PROBE_BURST, PROBE_RATE, now)
        self.sessions: Dict[Any, None] = {}     # an ordered set of sessions

    def send_probes(self, global_bucket: TokenBucket, now: float, out: list) -> None:
        """A KNOCK from this address: PROBE it for each session waiting on it, within the 3x
        budget and both rate limits (this address's and `global_bucket`)."""
        for session in list(self.sessions):
            probe = encode(PROBE, body=session.pending.challenge)
            if self.sent + len(probe) > AMPLIFICATION_FACTOR * self.received:
                return
            if not self.bucket.take(now) or not global_bucket.take(now):
                return
            self.sent += len(probe)
            out.append((probe, session.pending.addr))


class Callbacks:
    """Every pending callback of one endpoint. A session (the endpoint's) has `source` and
    `pending` (a PendingCallback or None); this class sets `pending` and nothing else."""

    def __init__(self) -> None:
        self.count = 0                              # pending callbacks
        self.hosts: Shares[str, Any] = Shares()     # pending ones per IP of their sessions
        self.unvalidated: Dict[Address, UnvalidatedAddress] = {}
        # Made full; its clock starts at the first KNOCK (a bucket full already gains nothing).
        self.probe_bucket = TokenBucket(PROBE_GLOBAL_BURST, PROBE_GLOBAL_RATE, 0.0)

    def maybe_refusal(self, host: str) -> Optional[str]:
        """Why a session from `host` may not have another pending callback (None: it may,
        once there is room, see `full`)."""
        if self.hosts.count(host) >= MAX_PENDING_CALLBACKS_PER_ADDRESS:
            return "too many pending callbacks from this address"
        return None

    @property
    def full(self) -> bool:
        return self.count >= MAX_PENDING_CALLBACKS

    def add(self, session: Any, addr: Address, now: float) -> None:
        """`session` waits for `addr` to be validated (it has none pending)."""
        session.pending = PendingCallback(addr, now)
        self.count += 1
        self.hosts.add(session.source[0], session)
        state = self.unvalidated.get(addr)
        if state is None:
            state = self.unvalidated[addr] = UnvalidatedAddress(now)
        state.sessions[session] = None

    def echo_ok(self, session: Any, body: bytes) -> bool:
        """An ECHO for `session`: True if it carries its pending challenge."""
        pending = session.pending
        return pending is not None and hmac.compare_digest(bytes(body[:CHALLENGE_SIZE]),
                                                           pending.challenge)

    def drop(self, session: Any) -> None:
        """`session` no longer waits for its callback (validated, failed or gone)."""
        pending = session.pending
        if pending is None:
            return
        session.pending = None
        self.count -= 1
        self.hosts.remove(session.source[0], session)
        state = self.unvalidated.get(pending.addr)
        if state is not None:
            state.sessions.pop(session, None)
            if not state.sessions:
                del self.unvalidated[pending.addr]

    def maybe_victim(self) -> Any:
        """The session whose pending callback gives way to a newcomer's: the oldest of the IP
        holding the most (None if none is pending)."""
        host = self.hosts.busiest()
        return None if host is None else next(iter(self.hosts.held(host)))
