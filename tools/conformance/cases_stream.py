"""Cases for the stream and for many clients (docs/PROTOCOL.md, sections 2, 5 and 6): framing,
CRLF, identity, concurrent joins, a slow reader, a long message, the course grader's sequence
and KILL_SERVICE."""
import socket
import time
from typing import Dict, List

from tools.conformance.case import (
    Q_CHAT, Q_IDENTITY, Q_JOIN_ANNOUNCE, Q_LEFT, Q_MULTILINE, case, chat, chat_message,
    chat_request, disconnect_request, expect_error, expect_helo, fail_unless, join,
    join_request, leave, leave_request, left_reply, left_text, two_in_a_room)
from tools.conformance.wire import Client, Fail, Warn, show_inline

Q_FRAMING = ("TCP is a byte stream. A request may arrive split across any number of segments, "
             "and several requests may arrive in one. The server cuts requests out of the "
             "stream itself.")
Q_CRLF = "A line may end in \\r\\n (telnet): the \\r is not part of the value."
Q_SLOW = "A slow or stalled reader delays nobody else."
Q_KILL = ("KILL_SERVICE: No reply. The server stops: it closes the listening socket and every "
          "connection and the process exits with status 0, well under a second after the "
          "request when idle.")
# Pause between the pieces of a request sent split, so that each piece is a segment of its own
# and a server reading as fast as it can sees each in a recv() of its own.
PIECE_GAP = 0.003
CONCURRENT_CLIENTS = 12
CONCURRENT_ROUNDS = 2
# The slow reader: a receive buffer this small (the kernel rounds it up to a few KiB) fills at
# once; then SLOW_SENDERS members post SLOW_CHATS chats each of SLOW_TEXT_BYTES, one at a time,
# about 4 MB in all: twice what the kernel's buffers towards a reader that stopped held on
# Linux (a thread-per-connection server's send() blocked after 2 MB), so a server that blocks
# on it stops. Each sender's 510 KB stays within the burst that this server's flood control
# lets one connection send at once (512 KiB), and each chat within one recv() of 4 KiB.
SLOW_RCVBUF = 4096
SLOW_SENDERS = 8
SLOW_CHATS = 150
SLOW_TEXT_BYTES = 3400
LONG_TEXT_BYTES = 40000


def send_in_pieces(client: Client, data: bytes, size: int) -> None:
    """Send `data` in pieces of `size` bytes, each its own segment (or UDP datagram)."""
    client.net.transcript.add(client.name, ">", data)
    for start in range(0, len(data), size):
        client.link.send(data[start:start + size])
        client.net.pump(PIECE_GAP)


@case("framing.bytes", "Requests sent one byte per segment are put together and answered as "
      "if sent whole.",
      hint="one recv() taken as one whole request: TCP may cut a request anywhere")
def framing_bytes(ctx):
    a, b = ctx.client("alice"), ctx.client("bob")
    room = ctx.room("bytes")
    send_in_pieces(a, b"HELO byte by byte\n", 1)
    expect_helo(ctx, a, b"HELO byte by byte")
    ref, _ = join(ctx, b, room)
    send_in_pieces(a, join_request(room, "alice"), 1)
    a.expect_shape(rb"JOINED_CHATROOM: [^\n]*\nSERVER_IP: [^\n]*\nPORT: \d+\nROOM_REF: %d\n"
                   rb"JOIN_ID: \d+\n" % ref, "JOINED_CHATROOM", Q_FRAMING)
    for member in (a, b):
        member.expect(chat_message(ref, "alice", "alice has joined this chatroom."),
                      "alice's join announcement", Q_FRAMING)
    send_in_pieces(b, chat_request(ref, 0, "bob", "in\nthree\nlines"), 1)
    for member in (a, b):
        member.expect(chat_message(ref, "bob", "in\nthree\nlines"), "bob's chat", Q_FRAMING)


@case("framing.coalesced", "Three requests in one segment are each answered, in order.",
      hint="one recv() taken as one whole request: only the first of several requests in it "
      "is answered")
def framing_coalesced(ctx):
    a = ctx.client("alice")
    room = ctx.room("coalesced")
    a.send(b"HELO one\n" + join_request(room, "alice") + b"HELO two\n")
    expect_helo(ctx, a, b"HELO one")
    match = a.expect_shape(rb"JOINED_CHATROOM: [^\n]*\nSERVER_IP: [^\n]*\nPORT: \d+\n"
                           rb"ROOM_REF: (\d+)\nJOIN_ID: (\d+)\n", "JOINED_CHATROOM", Q_FRAMING)
    ref, join_id = int(match.group(1)), int(match.group(2))
    a.expect(chat_message(ref, "alice", "alice has joined this chatroom."),
             "alice's join announcement", Q_FRAMING)
    expect_helo(ctx, a, b"HELO two")
    a.send(chat_request(ref, join_id, "alice", "first") +
           chat_request(ref, join_id, "alice", "second") + leave_request(ref, join_id, "alice"))
    a.expect(chat_message(ref, "alice", "first"), "the first chat", Q_FRAMING)
    a.expect(chat_message(ref, "alice", "second"), "the second chat", Q_FRAMING)
    a.expect(left_reply(ref, join_id), "LEFT_CHATROOM", Q_FRAMING)


@case("framing.crlf", "Requests whose lines end in \\r\\n are answered as with \\n, and no \\r "
      "reaches a reply or a relayed message.",
      hint="lines split on \\n only, leaving the \\r in every value")
def framing_crlf(ctx):
    a, b = ctx.client("alice"), ctx.client("bob")
    room = ctx.room("crlf")
    ref, _ = join(ctx, b, room)
    a.send(join_request(room, "alice").replace(b"\n", b"\r\n"))
    match = a.expect_shape(rb"JOINED_CHATROOM: %s\nSERVER_IP: [^\n]*\nPORT: \d+\nROOM_REF: %d\n"
                           rb"JOIN_ID: (\d+)\n" % (room.encode(), ref), "JOINED_CHATROOM "
                           "without \\r", Q_CRLF)
    join_id = int(match.group(1))
    for member in (a, b):
        member.expect(chat_message(ref, "alice", "alice has joined this chatroom."),
                      "alice's join announcement, without \\r", Q_CRLF)
    a.send(chat_request(ref, join_id, "alice", "two\nlines").replace(b"\n", b"\r\n"))
    for member in (a, b):
        member.expect(chat_message(ref, "alice", "two\nlines"), "the chat, without \\r", Q_CRLF)
    a.send(leave_request(ref, join_id, "alice").replace(b"\n", b"\r\n"))
    a.expect(left_reply(ref, join_id), "LEFT_CHATROOM", Q_CRLF)


@case("identity.chat", "A CHAT quoting a member's JOIN_ID and name from a connection that is "
      "not in the room is refused, and no member receives it.",
      hint="the JOIN_ID or CLIENT_NAME of the request trusted to say who is speaking")
def identity_chat(ctx):
    a, b, m = ctx.client("alice"), ctx.client("bob"), ctx.client("mallory")
    room = ctx.room("guarded")
    ref, id_a = join(ctx, a, room)
    join(ctx, b, room, (a,))
    join(ctx, m, ctx.room("outside"))
    m.send(chat_request(ref, id_a, "alice", "not really alice"))
    expect_error(m, "a CHAT to a room this connection is not in, quoting alice's JOIN_ID")
    for member in (a, b):
        member.expect_nothing("no chat posted on alice's behalf", Q_IDENTITY)


@case("identity.leave", "A LEAVE quoting another member's JOIN_ID and name removes only the "
      "connection it arrives on.",
      hint="the JOIN_ID of the request trusted to say who leaves")
def identity_leave(ctx):
    a, b, ref, id_a, id_b = two_in_a_room(ctx, "own-leave")
    b.send(leave_request(ref, id_a, "alice"))
    got = b.next_message("LEFT_CHATROOM")
    fail_unless(got in (left_reply(ref, id_b), left_reply(ref, id_a)),
                "expected LEFT_CHATROOM for room %d; got %s" % (ref, show_inline(got)), Q_LEFT)
    for member in (b, a):
        member.expect(chat_message(ref, "bob", left_text("bob")), "bob's leave announcement "
                      "(the connection that sent the LEAVE)", Q_IDENTITY)
    chat(a, ref, id_a, "alice is still here")


@case("identity.name", "A chat goes out under the name its connection joined with, not the "
      "CLIENT_NAME the CHAT carries (WARN if the request's name is relayed).")
def identity_name(ctx):
    a, b, ref, _, id_b = two_in_a_room(ctx, "names")
    b.send(chat_request(ref, id_b, "somebody else", "who am I"))
    got = a.next_message("bob's chat")
    if got == chat_message(ref, "somebody else", "who am I"):
        raise Warn("the chat went out as 'somebody else', the CLIENT_NAME of the request",
                   ours="the name the connection gave when it joined the room",
                   theirs="the CLIENT_NAME each CHAT request carries", quote=Q_IDENTITY)
    fail_unless(got == chat_message(ref, "bob", "who am I"), "expected %s; got %s" % (
        show_inline(chat_message(ref, "bob", "who am I")), show_inline(got)), Q_IDENTITY)


def _joined_order(client: Client, ref: int, names: List[str]) -> List[str]:
    """The names of the join announcements `client` has received in room `ref`, in order
    (taken from its messages; anything else fails)."""
    order = []
    for message in client.messages:
        found = [n for n in names if message == chat_message(ref, n, "%s has joined this "
                                                                     "chatroom." % n)]
        fail_unless(bool(found), "%s: expected only join announcements; got %s" %
                    (client.name, show_inline(message)), Q_JOIN_ANNOUNCE)
        order.append(found[0])
    client.messages.clear()
    return order


def _concurrent_round(ctx, clients: List[Client], room: str) -> None:
    names = [c.name for c in clients]
    ctx.transcript.note("%s to %s send JOIN_CHATROOM: %s at once; each must read its "
                        "JOINED_CHATROOM first (not shown), then these announcements" % (
                            names[0], names[-1], room))
    ctx.transcript.muted = True
    for c in clients:
        c.send(join_request(room, c.name))
    refs = set()
    for c in clients:
        match = c.expect_shape(rb"JOINED_CHATROOM: [^\n]*\nSERVER_IP: [^\n]*\nPORT: \d+\n"
                               rb"ROOM_REF: (\d+)\nJOIN_ID: \d+\n", "JOINED_CHATROOM first",
                               Q_JOIN_ANNOUNCE)
        refs.add(int(match.group(1)))
    fail_unless(len(refs) == 1, "one room got several ROOM_REFs: %s" % sorted(refs),
                "Distinct names have distinct refs, and a room keeps its ref.")
    ctx.transcript.muted = False
    ref, owed = refs.pop(), len(clients) * (len(clients) + 1) // 2
    ctx.net.wait(lambda: sum(len(c.messages) for c in clients) >= owed, ctx.timeout)
    for c in clients:           # what came, then anything more up to a HELO's reply
        early = [c.note_received(m) for m in c.messages]
        c.messages.clear()
        later = c.sync()
        c.messages[:0] = early + later
    orders: Dict[str, List[str]] = {c.name: _joined_order(c, ref, names) for c in clients}
    longest = max(orders.values(), key=len)
    for name, order in orders.items():
        twice = sorted({n for n in order if order.count(n) > 1})
        fail_unless(not twice, "%s received the join announcement of %s more than once" %
                    (name, ", ".join(twice)), Q_JOIN_ANNOUNCE + " " + Q_CHAT)
        fail_unless(bool(order) and order[0] == name, "%s's first announcement after its "
                    "JOINED_CHATROOM is %s's, not its own" % (
                        name, order[0] if order else "nobody"), Q_JOIN_ANNOUNCE)
        fail_unless(name in longest and order == longest[longest.index(name):],
                    "%s saw the joins in the order %s, %s in the order %s: a room's "
                    "announcements must reach every member in one order" % (
                        name, order, "another member", longest), Q_CHAT)
    fail_unless(sorted(longest) == sorted(names), "the first joiner saw the joins of %s only"
                % longest, Q_JOIN_ANNOUNCE)


@case("concurrency.joins", "Clients joining one room at once each get JOINED_CHATROOM first and "
      "every later joiner's announcement exactly once, all in one order.",
      hint="the member list and the announcement are not updated together (no lock, or a "
      "batch of announcements sent twice)")
def concurrency_joins(ctx):
    clients = [ctx.client("c%02d" % i) for i in range(CONCURRENT_CLIENTS)]
    for round_ in range(CONCURRENT_ROUNDS):
        _concurrent_round(ctx, clients, ctx.room("crowd%d" % round_))


def _post_in_turn(ctx, senders: List[Client], refs: Dict[str, int], ids: Dict[str, int]) -> None:
    """Each sender posts SLOW_CHATS chats, the next once its last came back, all at once; Fail
    if no sender's chat comes back for ctx.timeout seconds."""
    text = "x" * SLOW_TEXT_BYTES
    sent = {c.name: 0 for c in senders}
    echoed = dict(sent)
    last_progress, last_total = time.monotonic(), 0
    while min(echoed.values()) < SLOW_CHATS:
        for c in senders:
            if sent[c.name] == echoed[c.name] < SLOW_CHATS:
                c.link.send(chat_request(refs[c.name], ids[c.name], c.name, text))
                sent[c.name] += 1
        ctx.net.pump(0.05)
        for c in senders:
            own = chat_message(refs[c.name], c.name, text)
            echoed[c.name] += sum(1 for m in c.messages if m == own)
            c.messages.clear()
        if sum(echoed.values()) > last_total:
            last_progress, last_total = time.monotonic(), sum(echoed.values())
        elif time.monotonic() - last_progress > ctx.timeout:
            ctx.transcript.note("%d of the %d chats came back to their senders; then none for "
                                "%g s" % (last_total, SLOW_CHATS * len(senders), ctx.timeout))
            raise Fail("the room stalled: no member's chat came back for %g s while one member "
                       "was not reading (%d of %d chats delivered)" % (
                           ctx.timeout, sum(echoed.values()), SLOW_CHATS * len(senders)),
                       Q_SLOW)


@case("slow.reader", "A member that stops reading does not hold up the room: the others go on "
      "posting and receiving about 4 MB of chat.",
      hint="a blocking send() to each member in turn: one member who does not read fills its "
      "socket buffer and everyone waits")
def slow_reader(ctx):
    slow = ctx.client("slow", rcvbuf=SLOW_RCVBUF)
    room = ctx.room("slow")
    join(ctx, slow, room)
    slow.paused = True
    senders, refs, ids = [], {}, {}
    ctx.transcript.muted = True
    for i in range(SLOW_SENDERS):
        sender = ctx.client("s%d" % i)
        refs[sender.name], ids[sender.name] = join(ctx, sender, room, tuple(senders))
        senders.append(sender)
    ctx.transcript.muted = False
    ctx.transcript.note("slow stops reading; s0 to s%d join the room as slow did, then each "
                        "posts %d chats of %d bytes, the next once the last came back" % (
                            SLOW_SENDERS - 1, SLOW_CHATS, SLOW_TEXT_BYTES))
    _post_in_turn(ctx, senders, refs, ids)


@case("limits.long", "A 40 000-byte message, far longer than one recv() of a small buffer, is "
      "relayed whole.",
      hint="a request read with one recv() of a fixed buffer (4096 bytes, say), cutting long "
      "messages")
def limits_long(ctx):
    a, b, ref, id_a, _ = two_in_a_room(ctx, "long")
    text = " ".join("%05d" % i for i in range(LONG_TEXT_BYTES // 6))
    a.send(chat_request(ref, id_a, "alice", text))
    for member in (a, b):
        member.expect(chat_message(ref, "alice", text), "the long message", Q_MULTILINE)


@case("grader.sequence", "The course grader's sequence as the contract records it: HELO, two "
      "clients in two rooms, trailing spaces, another's JOIN_ID, an unknown message, leave and "
      "join again, DISCONNECT read to the end.",
      hint="see the first case above that fails too: the grader's sequence uses the same "
      "requests")
def grader_sequence(ctx):
    """Modelled on what docs/PROTOCOL.md records of the course's test client (its source is
    not public): it says HELO, joins room1 and room2 (on a fresh server, refs 0 and 1), sends
    `CHAT: 0 ` with trailing spaces, quotes another client's JOIN_ID, sends an unknown message
    and then reads the next reply it expects, leaves room1 and joins it again (the same ref),
    and reads its own leave announcements after DISCONNECT. Refs are not required to be 0 and
    1: the server under test need not be fresh."""
    one, two = ctx.client("client1"), ctx.client("client2")
    room1, room2 = ctx.room("room1"), ctx.room("room2")
    one.send(b"HELO BASE_TEST\n")
    expect_helo(ctx, one, b"HELO BASE_TEST")
    ref1, id1 = join(ctx, one, room1)
    join(ctx, one, room2)
    join(ctx, two, room1, (one,))
    one.send(b"CHAT: %d \nJOIN_ID: %d \nCLIENT_NAME: client1 \nMESSAGE: hello world  \n\n"
             % (ref1, id1))
    for member in (one, two):
        member.expect(chat_message(ref1, "client1", "hello world"), "the chat, its fields "
                      "trimmed", "values are trimmed of surrounding white space (clients send "
                      "`CHAT: 0 `)")
    two.send(chat_request(ref1, id1, "client2", "quoting client1's JOIN_ID"))
    for member in (two, one):
        member.expect(chat_message(ref1, "client2", "quoting client1's JOIN_ID"),
                      "client2's chat (a mismatched JOIN_ID is not rejected)", Q_IDENTITY)
    one.send_apart(b"UNKNOWN_GRADER_MESSAGE\n", b"HELO after unknown\n")
    expect_helo(ctx, one, b"HELO after unknown")
    leave(one, ref1, id1, (two,))
    again, _ = join(ctx, one, room1, (two,))
    fail_unless(again == ref1, "room1 was ROOM_REF %d, joined again it is %d" % (ref1, again),
                "a room keeps its ref: leaving and joining again gives the same one")
    two.send(disconnect_request("client2"))
    for member in (two, one):
        member.expect(chat_message(ref1, "client2", left_text("client2")),
                      "client2's leave announcement", Q_LEFT)
    two.expect_closed("after DISCONNECT", Q_LEFT)


@case("kill.service", "KILL_SERVICE stops the server: every connection closes and the port "
      "refuses new ones, within the timeout.", kill=True)
def kill_service(ctx):
    idle, killer = ctx.client("idle"), ctx.client("killer")
    join(ctx, idle, ctx.room("last"))
    killer.send(b"KILL_SERVICE\n")
    if not ctx.udp:
        idle.expect_closed("after KILL_SERVICE", Q_KILL)
    deadline = time.monotonic() + ctx.timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ctx.ip, ctx.port), timeout=ctx.timeout).close()
        except ConnectionRefusedError:
            return
        except OSError:
            return
        ctx.net.pump(0.05)
    raise Fail("the server still accepts connections %g s after KILL_SERVICE" % ctx.timeout,
               Q_KILL)
