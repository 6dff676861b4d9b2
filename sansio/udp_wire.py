"""The UDP transport's wire: the datagram layout, its constants, encoding and decoding, and the
handshake's stateless cookie (docs/UDP.md sections 2 to 4).

Boundary: bytes in, bytes out; no socket, no clock, no state. The rest of the UDP layer sits on
this module: sansio/udp_stream.py (one session's reliable stream, used by both ends),
sansio/udp_server.py (the server endpoint) and sansio/udp_client.py (the client endpoint).

    docs/UDP.md         here
    2 Datagram layout   HEADER, encode(), decode(), Datagram
    3 Datagram types    HELLO ... ECHO, SESSION_TYPES, FLAG_CALLBACK_PENDING
    4 Handshake         make_cookie(), cookie_ok(), COOKIE_LIFETIME, HELLO_SIZE
    6 Callbacks         KNOCK_INTERVAL (a JOIN's address is parsed by sansio/wire.py)
"""
import hmac
import struct
from typing import NamedTuple, Optional, Tuple

Address = Tuple  # what the socket layer gives: (host, port) or (host, port, flowinfo, scope)

# First byte of every datagram: 0xC is this protocol's mark, 1 its version. A datagram with any
# other first byte is dropped, so a future version 2 can never be misread as version 1.
VERSION = 0xC1

# The fixed header, all integers big-endian:
#   version, type, flags, sack_count, token[16], seq, ack, window, body_length
HEADER = struct.Struct("!BBBB16sIIHH")
HEADER_SIZE = HEADER.size                   # 32
SACK_RANGE = struct.Struct("!II")           # [start, end) of segments held beyond `ack`
COOKIE_TIME = struct.Struct("!I")

# Datagram types.
HELLO = 1         # client -> server: open a session (padded to MAX_DATAGRAM)
RETRY = 2         # server -> client: here is a cookie, say HELLO again with it
ACCEPT = 3        # server -> client: the session exists, its token is in the header
REJECT = 4        # server -> client: no room for another session
DATA = 5          # either way: one stream segment
ACK = 6           # either way: cumulative ack and SACK ranges
PING = 7          # either way: are you there? (answered with ACK)
CLOSE = 8         # either way: I have nothing more to send and you have acked all I sent
CLOSE_ACK = 9     # either way: answer to CLOSE; the session is over
RESET = 10        # either way: the session is over at once
KNOCK = 11        # callback address -> server: I want this session's stream
PROBE = 12        # server -> callback address: a challenge for the session holder
ECHO = 13         # client -> server: the challenge, back through the session
TYPE_NAMES = {HELLO: "HELLO", RETRY: "RETRY", ACCEPT: "ACCEPT", REJECT: "REJECT", DATA: "DATA",
              ACK: "ACK", PING: "PING", CLOSE: "CLOSE", CLOSE_ACK: "CLOSE_ACK", RESET: "RESET",
              KNOCK: "KNOCK", PROBE: "PROBE", ECHO: "ECHO"}
# Types that carry a token; the rest carry the zero token.
SESSION_TYPES = frozenset((DATA, ACK, PING, CLOSE, CLOSE_ACK, RESET, ECHO))

# Header flag, server -> client: this session has a callback waiting for validation; the
# client should KNOCK from its callback address.
FLAG_CALLBACK_PENDING = 0x01

TOKEN_SIZE = 16          # 128 bits from `secrets`: unguessable, as QUIC's connection ids
ZERO_TOKEN = bytes(TOKEN_SIZE)
NONCE_SIZE = 8           # the client's random handshake nonce, echoed in RETRY/ACCEPT/REJECT
MAC_SIZE = 16            # HMAC-SHA256 truncated to 128 bits
COOKIE_SIZE = COOKIE_TIME.size + MAC_SIZE   # timestamp + mac = 20
CHALLENGE_SIZE = 16

# --- limits (docs/UDP.md, "Limits") ----------------------------------------------------------
# Largest UDP payload either side sends or accepts. 1 200 bytes is QUIC's floor (RFC 9000
# s14): it passes every IPv6 path (minimum MTU 1 280) and nearly every IPv4 one, so we never
# rely on IP fragmentation. Larger datagrams are dropped unread.
MAX_DATAGRAM = 1200
MAX_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE    # stream bytes per DATA datagram: 1 168
# HELLO is padded to exactly MAX_DATAGRAM (QUIC pads its first Initial the same way): the
# server's answers (RETRY, REJECT: 60 bytes or less) are then far smaller than what provoked
# them, and a path that cannot carry full-size datagrams fails in the handshake, not later.
HELLO_SIZE = MAX_DATAGRAM
# A cookie is accepted for this many seconds after it was made (and never from the future).
# Long enough for a retransmitted HELLO on a slow path, short enough that a cookie seen once is
# soon worth nothing.
COOKIE_LIFETIME = 10
# The client KNOCKs at most once per KNOCK_INTERVAL while validation is pending, and the server
# sends the session's source a flagged ACK as often, so a client that missed the flag still
# learns it should knock (docs/UDP.md section 6).
KNOCK_INTERVAL = 1.0


def encode(kind: int, token: bytes = ZERO_TOKEN, seq: int = 0, ack: int = 0,
           window: int = 0, body: bytes = b"", flags: int = 0, sack_count: int = 0,
           pad_to: int = 0) -> bytes:
    """One datagram: the header, the body, then zero padding up to `pad_to` bytes."""
    datagram = HEADER.pack(VERSION, kind, flags, sack_count, token, seq, ack, window,
                           len(body)) + body
    if len(datagram) < pad_to:
        datagram += bytes(pad_to - len(datagram))
    return datagram


class Datagram(NamedTuple):
    """A parsed datagram (for tests and tools; the endpoints unpack the header in place)."""
    kind: int
    flags: int
    sack_count: int
    token: bytes
    seq: int
    ack: int
    window: int
    body: bytes


def decode(data: bytes) -> Optional[Datagram]:
    """The datagram in `data`, or None if it is not one of ours (wrong version, too short, too
    long, a body length past its end, or a DATA with no stream bytes: docs/UDP.md section 2).
    Padding after the body is ignored."""
    if not HEADER_SIZE <= len(data) <= MAX_DATAGRAM or data[0] != VERSION:
        return None
    _, kind, flags, sacks, token, seq, ack, window, length = HEADER.unpack_from(data)
    if HEADER_SIZE + length > len(data) or (kind == DATA and not length):
        return None
    return Datagram(kind, flags, sacks, token, seq, ack, window,
                    bytes(data[HEADER_SIZE:HEADER_SIZE + length]))


def make_cookie(key: bytes, addr: Address, nonce: bytes, stamp: int) -> bytes:
    """The cookie a RETRY carries (docs/UDP.md section 4): the 4-byte coarse timestamp `stamp`,
    then the first MAC_SIZE bytes of HMAC-SHA256 under `key` over that timestamp, the client's
    nonce and its address and port."""
    when = COOKIE_TIME.pack(stamp & 0xFFFFFFFF)
    message = when + nonce + repr(tuple(addr)).encode("utf-8")
    return when + hmac.digest(key, message, "sha256")[:MAC_SIZE]     # (one call: the hot path)


def cookie_ok(key: bytes, cookie: bytes, addr: Address, nonce: bytes, now: float) -> bool:
    """True if `cookie` was made under `key` for this address and nonce, at most
    COOKIE_LIFETIME seconds before `now` and not after it."""
    (stamp,) = COOKIE_TIME.unpack_from(cookie)
    age = (int(now) & 0xFFFFFFFF) - stamp
    if not 0 <= age <= COOKIE_LIFETIME:
        return False
    return hmac.compare_digest(cookie, make_cookie(key, addr, nonce, stamp))
