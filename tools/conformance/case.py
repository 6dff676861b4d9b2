"""What a case is, the registry of cases, and the requests and replies they build: every byte
written here from the literal shapes of docs/PROTOCOL.md, section 1, never from the server's
own code.

A case is a function of a Ctx (its connections, its room names, the timeout); it returns when
the server did what the contract says, raises wire.Fail when it did not, and wire.Warn when it
read an ambiguous point of the course's text otherwise than docs/PROTOCOL.md settles it.
"""
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from tools.conformance.wire import Client, Fail, Net, Transcript

# The sections cases are grouped by: (key, heading of docs/PROTOCOL.md they check).
SECTIONS = [
    ("helo", "1 HELO"),
    ("join", "1 JOIN_CHATROOM"),
    ("chat", "1 CHAT"),
    ("leave", "1 LEAVE_CHATROOM"),
    ("rooms", "2 Identity: several rooms"),
    ("disconnect", "1 DISCONNECT"),
    ("errors", "1 Errors"),
    ("other", "1 Any other message"),
    ("framing", "2 Framing"),
    ("identity", "2 Identity"),
    ("concurrency", "2 Announcements: concurrent joins"),
    ("slow", "6 Promises beyond the text: slow readers"),
    ("limits", "5 Limits: a long message"),
    ("grader", "The course grader's sequence"),
    ("kill", "1 KILL_SERVICE"),
]
SECTION_TITLES = dict(SECTIONS)


@dataclass
class Case:
    id: str                     # section key, a dot, a name: "join.reply"
    title: str                  # one sentence: what a PASS proves
    run: Callable[["Ctx"], None]
    kill: bool = False          # stops the server: only with --allow-kill, and last
    hint: str = ""              # the usual cause of a FAIL, for the student who reads it

    @property
    def section(self) -> str:
        return self.id.split(".")[0]


CASES: List[Case] = []


def case(case_id: str, title: str, kill: bool = False, hint: str = ""):
    """Register the decorated function as the case `case_id`, in the order of definition."""
    def register(run: Callable[["Ctx"], None]) -> Callable[["Ctx"], None]:
        assert case_id.split(".")[0] in SECTION_TITLES, case_id
        CASES.append(Case(case_id, title, run, kill, hint))
        return run
    return register


@dataclass
class Ctx:
    """What one case runs with."""
    net: Net
    ip: str                     # the address connected to: what HELO and JOINED must name
    port: int
    timeout: float
    udp: bool
    prefix: str = field(default_factory=lambda: "cf" + secrets.token_hex(3))

    def room(self, tag: str) -> str:
        """A room name of this case's own: a server in use keeps its earlier rooms."""
        return "%s-%s" % (self.prefix, tag)

    def client(self, name: str, rcvbuf: int = 0) -> Client:
        return self.net.client(name, rcvbuf)

    @property
    def transcript(self) -> Transcript:
        return self.net.transcript


# --- The contract's sentences, quoted in failures ----------------------------------------------

Q_HELO = ("HELO [text]\\n -> HELO [text]\\nIP:[ip]\\nPort:[port]\\nStudentID:[id]\\n. "
          "Exactly this form: no space after the colons. The reply's first line is the "
          "request's line as it was sent. [ip] is the address of the server's side of this "
          "connection (what the client connected to), [port] the listening port.")
Q_JOINED = ("JOINED_CHATROOM: [room name]\\nSERVER_IP: [ip]\\nPORT: [port]\\nROOM_REF: [ref]\\n"
            "JOIN_ID: [join id]\\n ... [ip] and [port] are those of HELO.")
Q_JOIN_ANNOUNCE = ("Then the join is announced to every member of the room, the joiner "
                   "included, and always after the joiner's JOINED_CHATROOM: CHAT: [ref]\\n"
                   "CLIENT_NAME: [name]\\nMESSAGE: [name] has joined this chatroom.\\n\\n")
Q_CHAT = ("Every member of the room, the sender included, receives each chat exactly once. "
          "Messages from one sender reach every member in the order they were sent.")
Q_MULTILINE = ("[text] may span several lines; it ends at the first blank line. The text "
               "round-trips byte for byte.")
Q_LEFT = ("LEFT_CHATROOM: [ref]\\nJOIN_ID: [join id]\\n. Leave: the leaver receives "
          "LEFT_CHATROOM first, then its own copy of MESSAGE: [name] has left this "
          "chatroom. (the CHAT form), and every member still in the room receives the same "
          "announcement.")
Q_LEFT_CUT = ("After that the leaver receives nothing more of that room; a chat already being "
              "sent to it is completed first.")
Q_REPEAT_LEAVE = ("A LEAVE of a room the connection is not in (a repeated LEAVE, or a room it "
                  "never joined) gets the same LEFT_CHATROOM reply and announces nothing.")
Q_DISCONNECT = ("DISCONNECT: for every room the client is in, in ascending ROOM_REF order, the "
                "leave announcement goes to that room's members and to the client itself; then "
                "the server closes the connection, after sending everything queued for it.")
Q_ERROR = ("A request that fails is answered, instead of its reply, with ERROR_CODE: [code]\\n"
           "ERROR_DESCRIPTION: [text]\\n ... The connection stays usable afterwards.")
Q_OTHER = ("An unknown one-line message gets no reply: a client that sends one and then reads "
           "the reply it expects must not read an error in its place.")
Q_IDENTITY = ("Identity is the connection. A CHAT or LEAVE acts for the connection it arrives "
              "on, whatever JOIN_ID or CLIENT_NAME it carries. A CHAT is accepted only from a "
              "member of the room, and goes out under the name that connection gave when it "
              "joined that room.")

# --- Requests and replies, literally ------------------------------------------------------------

ERROR_SHAPE = rb"ERROR_CODE: (\d+)\nERROR_DESCRIPTION: ([^\n]*)\n"


def b(text: str) -> bytes:
    return text.encode("utf-8")


def join_request(room: str, name: str) -> bytes:
    return b"JOIN_CHATROOM: %s\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: %s\n" % (b(room), b(name))


def leave_request(ref: int, join_id: int, name: str) -> bytes:
    return b"LEAVE_CHATROOM: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\n" % (ref, join_id, b(name))


def chat_request(ref: int, join_id: int, name: str, text: str) -> bytes:
    return b"CHAT: %d\nJOIN_ID: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (
        ref, join_id, b(name), b(text))


def disconnect_request(name: str) -> bytes:
    return b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: %s\n" % b(name)


def chat_message(ref: int, name: str, text: str) -> bytes:
    return b"CHAT: %d\nCLIENT_NAME: %s\nMESSAGE: %s\n\n" % (ref, b(name), b(text))


def joined_text(name: str) -> str:
    return "%s has joined this chatroom." % name


def left_text(name: str) -> str:
    return "%s has left this chatroom." % name


def left_reply(ref: int, join_id: int) -> bytes:
    return b"LEFT_CHATROOM: %d\nJOIN_ID: %d\n" % (ref, join_id)


def expect_helo(ctx: Ctx, client: Client, line: bytes, exact: bool = False) -> bytes:
    """The next message must be the reply to HELO `line` in its literal shape, with any
    StudentID; with `exact`, naming the address and port connected to (other cases take any,
    so that a wrong address fails helo.reply alone, not every case that says HELO)."""
    ip, port = (re.escape(b(ctx.ip)), b"%d" % ctx.port) if exact else (rb"[^\n]*", rb"\d+")
    pattern = re.escape(line) + rb"\nIP:" + ip + rb"\nPort:" + port + rb"\nStudentID:[^\n]*\n"
    return client.expect_shape(pattern, "the HELO reply %r" % line.decode("utf-8", "replace"),
                               Q_HELO).group(0)


def join(ctx: Ctx, client: Client, room: str, members: Tuple[Client, ...] = (),
         name: Optional[str] = None, exact: bool = False) -> Tuple[int, int]:
    """`client` joins `room` as `name` (its own name by default): JOINED_CHATROOM in its
    literal shape (with `exact`, naming the address and port connected to), then its own
    announcement, which every one of `members` receives too. Returns (ROOM_REF, JOIN_ID)."""
    name = client.name if name is None else name
    client.send(join_request(room, name))
    ip, port = (re.escape(b(ctx.ip)), b"%d" % ctx.port) if exact else (rb"[^\n]*", rb"\d+")
    pattern = (rb"JOINED_CHATROOM: " + re.escape(b(room)) + rb"\nSERVER_IP: " + ip +
               rb"\nPORT: " + port + rb"\nROOM_REF: (\d+)\nJOIN_ID: (\d+)\n")
    match = client.expect_shape(pattern, "JOINED_CHATROOM for %r" % room, Q_JOINED)
    ref, join_id = int(match.group(1)), int(match.group(2))
    announcement = chat_message(ref, name, joined_text(name))
    for member in (client,) + tuple(members):
        member.expect(announcement, "%s's join announcement" % name, Q_JOIN_ANNOUNCE)
    return ref, join_id


def two_in_a_room(ctx: Ctx, tag: str) -> Tuple[Client, Client, int, int, int]:
    """alice, then bob, join the room `tag` of this case: (alice, bob, its ROOM_REF, alice's
    JOIN_ID, bob's JOIN_ID)."""
    a, b = ctx.client("alice"), ctx.client("bob")
    ref, id_a = join(ctx, a, ctx.room(tag))
    _, id_b = join(ctx, b, ctx.room(tag), (a,))
    return a, b, ref, id_a, id_b


def leave(client: Client, ref: int, join_id: int, members: Tuple[Client, ...] = ()) -> None:
    """`client` leaves room `ref`: LEFT_CHATROOM, then the leave announcement to it and to
    every one of `members`."""
    client.send(leave_request(ref, join_id, client.name))
    client.expect(left_reply(ref, join_id), "LEFT_CHATROOM", Q_LEFT)
    for member in (client,) + tuple(members):
        member.expect(chat_message(ref, client.name, left_text(client.name)),
                      "%s's leave announcement" % client.name, Q_LEFT)


def chat(client: Client, ref: int, join_id: int, text: str,
         members: Tuple[Client, ...] = ()) -> None:
    """`client` posts `text`; it and every one of `members` receive it."""
    client.send(chat_request(ref, join_id, client.name, text))
    expected = chat_message(ref, client.name, text)
    for member in (client,) + tuple(members):
        member.expect(expected, "%s's chat %r" % (client.name, text[:40]), Q_CHAT)


def expect_error(client: Client, what: str) -> int:
    """The next message must be an ERROR_CODE reply in its literal shape; its code."""
    return int(client.expect_shape(ERROR_SHAPE, "ERROR_CODE and ERROR_DESCRIPTION (%s)" % what,
                                   Q_ERROR).group(1))


def fail_unless(condition: bool, message: str, quote: str = "") -> None:
    if not condition:
        raise Fail(message, quote)

