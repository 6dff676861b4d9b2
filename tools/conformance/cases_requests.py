"""Cases for the requests one at a time (docs/PROTOCOL.md, sections 1 and 2): HELO, JOIN,
CHAT, LEAVE, several rooms, DISCONNECT, errors and unknown messages."""
import re

from tools.conformance.case import (
    Q_CHAT, Q_DISCONNECT, Q_HELO, Q_JOIN_ANNOUNCE, Q_JOINED, Q_LEFT, Q_LEFT_CUT, Q_MULTILINE,
    Q_OTHER, Q_REPEAT_LEAVE, case, chat, chat_message, chat_request, disconnect_request,
    expect_error, expect_helo, fail_unless, join, join_request, leave, leave_request,
    left_reply, left_text, two_in_a_room)
from tools.conformance.wire import Fail, Warn, show_inline


@case("helo.reply", "HELO is answered with its own line, then IP:, Port: and StudentID: lines "
      "exactly as the protocol writes them, naming the address and port connected to.")
def helo_reply_case(ctx):
    c = ctx.client("alice")
    c.send(b"HELO conformance\n")
    expect_helo(ctx, c, b"HELO conformance", exact=True)


@case("helo.verbatim", "The HELO reply's first line is the request's line byte for byte, "
      "spaces included (WARN if the server normalises it).")
def helo_verbatim(ctx):
    c = ctx.client("alice")
    line = b"HELO  two  spaces\tand a tab"
    c.send(line + b"\n")
    if c.peek("the HELO reply").startswith(line + b"\nIP:"):
        expect_helo(ctx, c, line)
        return
    got = c.next_message("the HELO reply")
    first = got.split(b"\n", 1)[0]
    if first.split() == line.split():
        raise Warn("the reply's first line is %s, not the request's line as sent" %
                   show_inline(first),
                   ours="the first line echoes the request's line as it was sent",
                   theirs="the HELO text with its white space normalised", quote=Q_HELO)
    raise Fail("expected the HELO reply starting %s; got %s" %
               (show_inline(line + b"\n"), show_inline(got)), Q_HELO)


@case("join.reply", "JOIN_CHATROOM is answered with the five JOINED_CHATROOM lines, then the "
      "joiner's own join announcement, before anything else.")
def join_reply(ctx):
    c = ctx.client("alice")
    join(ctx, c, ctx.room("lobby"), exact=True)
    c.expect_nothing("after JOINED_CHATROOM and the join announcement", Q_JOIN_ANNOUNCE)


@case("join.ids", "ROOM_REF names the room (distinct names, distinct refs; the same name, the "
      "same ref) and JOIN_ID the connection (one per connection, distinct between them).")
def join_ids(ctx):
    a, b = ctx.client("alice"), ctx.client("bob")
    ref1, id1 = join(ctx, a, ctx.room("one"))
    ref2, id2 = join(ctx, a, ctx.room("two"))
    fail_unless(ref1 != ref2, "two rooms got the same ROOM_REF %d" % ref1, Q_JOINED)
    fail_unless(id1 == id2, "one connection got JOIN_IDs %d and %d in two rooms" % (id1, id2),
                "JOIN_ID is a non-negative integer given to a connection at its first JOIN, "
                "... and used for every room that connection joins.")
    ref3, id3 = join(ctx, b, ctx.room("one"), (a,))
    fail_unless(ref3 == ref1, "the same room got ROOM_REF %d, then %d" % (ref1, ref3),
                "Distinct names have distinct refs, and a room keeps its ref.")
    fail_unless(id3 != id1, "two connections got the same JOIN_ID %d" % id1,
                "Distinct connections get distinct ids.")


@case("join.first", "A joiner reads JOINED_CHATROOM before any chat of the room, even while a "
      "member posts, and its own announcement before any later chat.",
      hint="the join is announced to the room before the JOINED_CHATROOM reply is sent, or "
      "the reply is sent from another thread than the room's chat")
def join_first(ctx):
    a, b = ctx.client("alice"), ctx.client("bob")
    room = ctx.room("busy")
    ref, id_a = join(ctx, a, room)
    b.send(join_request(room, "bob"))
    a.send(chat_request(ref, id_a, "alice", "while bob joins"))
    first = b.peek("JOINED_CHATROOM")
    if not first.startswith(b"JOINED_CHATROOM: "):
        raise Fail("bob's first message is %s, not JOINED_CHATROOM" %
                   show_inline(b.next_message("JOINED_CHATROOM")), Q_JOINED)
    b.next_message("JOINED_CHATROOM")
    b.expect(chat_message(ref, "bob", "bob has joined this chatroom."),
             "bob's own join announcement right after JOINED_CHATROOM", Q_JOIN_ANNOUNCE)
    seen = a.sync()
    fail_unless(chat_message(ref, "alice", "while bob joins") in seen,
                "alice's chat did not come back to her", Q_CHAT)


@case("join.again", "Joining a room one is in again answers JOINED_CHATROOM with the same "
      "ROOM_REF and JOIN_ID and announces nothing.")
def join_again(ctx):
    a, b, ref, id_a, _ = two_in_a_room(ctx, "again")
    a.send(join_request(ctx.room("again"), "alice"))
    a.expect_shape(rb"JOINED_CHATROOM: %s\nSERVER_IP: [^\n]*\nPORT: \d+\nROOM_REF: %d\n"
                   rb"JOIN_ID: %d\n" % (re.escape(ctx.room("again").encode()), ref, id_a),
                   "the same JOINED_CHATROOM (ROOM_REF %d, JOIN_ID %d)" % (ref, id_a),
                   "Joining again a room the connection is already in answers "
                   "JOINED_CHATROOM again with the same ROOM_REF and JOIN_ID; there is no "
                   "second membership and no second announcement.")
    a.expect_nothing("no second announcement", Q_JOIN_ANNOUNCE)
    b.expect_nothing("no second announcement", Q_JOIN_ANNOUNCE)


@case("chat.relay", "A CHAT reaches every member, the sender included, exactly once, in the "
      "order sent, and no one outside the room.",
      hint="the member list is read while another thread changes it, or the sender is left "
      "out of its own broadcast")
def chat_relay(ctx):
    a, b, c, out = (ctx.client(n) for n in ("alice", "bob", "carol", "dave"))
    room = ctx.room("relay")
    ref, id_a = join(ctx, a, room)
    join(ctx, b, room, (a,))
    join(ctx, c, room, (a, b))
    join(ctx, out, ctx.room("elsewhere"))
    texts = ["first", "second", "third"]
    a.send_apart(*(chat_request(ref, id_a, "alice", text) for text in texts))
    for member in (a, b, c):
        for text in texts:
            member.expect(chat_message(ref, "alice", text), "alice's chat %r" % text, Q_CHAT)
        member.expect_nothing("each chat once", Q_CHAT)
    out.expect_nothing("a chat of a room it is not in", Q_CHAT)


@case("chat.multiline", "A MESSAGE of several lines, ended by its blank line, is relayed with "
      "its inner line breaks intact.")
def chat_multiline(ctx):
    a, b, ref, id_a, _ = two_in_a_room(ctx, "lines")
    text = "line one\nline two\n  indented three"
    a.send(chat_request(ref, id_a, "alice", text))
    for member in (a, b):
        member.expect(chat_message(ref, "alice", text), "the three-line message", Q_MULTILINE)


@case("leave.reply", "LEAVE_CHATROOM is answered with LEFT_CHATROOM and the server's JOIN_ID, "
      "then the leave announcement to the leaver and every member.")
def leave_reply(ctx):
    a, b, ref, id_a, _ = two_in_a_room(ctx, "leave")
    leave(a, ref, id_a, (b,))
    b.expect_nothing("one leave announcement", Q_LEFT)


@case("leave.repeat", "A repeated LEAVE gets the same LEFT_CHATROOM reply and announces nothing "
      "(WARN if it announces the leave again).")
def leave_repeat(ctx):
    a, b, ref, id_a, _ = two_in_a_room(ctx, "repeat")
    leave(a, ref, id_a, (b,))
    a.send(leave_request(ref, id_a, "alice"))
    a.expect(left_reply(ref, id_a), "the same LEFT_CHATROOM again", Q_REPEAT_LEAVE)
    again = chat_message(ref, "alice", left_text("alice"))
    extra_a, extra_b = a.sync(), b.sync()
    if extra_a or extra_b:
        if set(extra_a + extra_b) == {again}:
            told = " and ".join(n for n, extra in (("the leaver", extra_a), ("the room", extra_b))
                                if extra)
            raise Warn("the repeated LEAVE announced alice's leave again",
                       ours="a LEAVE of a room the connection is not in announces nothing",
                       theirs="every LEAVE announces \"has left\" (here to %s)" % told,
                       quote=Q_REPEAT_LEAVE)
        raise Fail("after the repeated LEAVE: %s" %
                   " then ".join(show_inline(m) for m in extra_a + extra_b), Q_REPEAT_LEAVE)


@case("leave.cuts", "After LEFT_CHATROOM and its announcement, the leaver receives no chat of "
      "that room, and keeps its connection.",
      hint="the leaver is taken off the room's list after its reply is sent, or a chat is "
      "built from a list read before the leave")
def leave_cuts(ctx):
    a, b, ref, id_a, id_b = two_in_a_room(ctx, "cut")
    leave(a, ref, id_a, (b,))
    chat(b, ref, id_b, "after alice left")
    a.expect_nothing("no chat of a room it has left", Q_LEFT_CUT)


@case("leave.join_id", "LEFT_CHATROOM carries the JOIN_ID the server gave, even when the LEAVE "
      "quotes another (WARN if it echoes the request's).")
def leave_join_id(ctx):
    a = ctx.client("alice")
    ref, id_a = join(ctx, a, ctx.room("quoted"))
    other = id_a + 1000
    a.send(leave_request(ref, other, "alice"))
    got = a.next_message("LEFT_CHATROOM")
    quote = ("LEFT_CHATROOM's JOIN_ID is the JOIN_ID the server gave this connection (the "
             "protocol text: \"integer previously provided by server on join\"), whatever the "
             "request quoted.")
    if got == left_reply(ref, other):
        raise Warn("LEFT_CHATROOM echoes the request's JOIN_ID %d, not %d" % (other, id_a),
                   ours="the JOIN_ID the server gave this connection on join",
                   theirs="the JOIN_ID the request quoted", quote=quote)
    fail_unless(got == left_reply(ref, id_a), "expected %s; got %s" % (
        show_inline(left_reply(ref, id_a)), show_inline(got)), quote)


@case("rooms.several", "One connection in two rooms receives the chat of each, others only "
      "their room's, and keeps one room after leaving the other.")
def rooms_several(ctx):
    a, b, c = ctx.client("alice"), ctx.client("bob"), ctx.client("carol")
    ref1, id_a = join(ctx, a, ctx.room("red"))
    ref2, _ = join(ctx, a, ctx.room("blue"))
    _, id_b = join(ctx, b, ctx.room("red"), (a,))
    _, id_c = join(ctx, c, ctx.room("blue"), (a,))
    chat(b, ref1, id_b, "to red", (a,))
    chat(c, ref2, id_c, "to blue", (a,))
    b.expect_nothing("blue's chat is not red's", Q_CHAT)
    c.expect_nothing("red's chat is not blue's", Q_CHAT)
    leave(a, ref1, id_a, (b,))
    chat(c, ref2, id_c, "blue again", (a,))


@case("disconnect.closes", "DISCONNECT sends the client its leave announcements, in ascending "
      "ROOM_REF order, to it and the members, then closes the connection.",
      hint="the socket is closed as soon as DISCONNECT is read, before the leave "
      "announcements queued for the client are sent")
def disconnect_closes(ctx):
    a, b = ctx.client("alice"), ctx.client("bob")
    refs = []
    for tag in ("d1", "d2"):
        ref, _ = join(ctx, a, ctx.room(tag))
        join(ctx, b, ctx.room(tag), (a,))
        refs.append(ref)
    a.send(disconnect_request("alice"))
    for ref in sorted(refs):
        announcement = chat_message(ref, "alice", left_text("alice"))
        a.expect(announcement, "alice's own leave announcement of room %d" % ref, Q_DISCONNECT)
    for ref in refs:
        b.expect(chat_message(ref, "alice", left_text("alice")),
                 "alice's leave announcement of room %d" % ref, Q_DISCONNECT)
    a.expect_closed("after DISCONNECT", Q_DISCONNECT)


MALFORMED = [
    ("a JOIN with a misnamed field",
     b"JOIN_CHATROOM: x\nCLIENT_ADDRESS: 0\nPORT: 0\nCLIENT_NAME: alice\n"),
    ("a JOIN with no room name", b"JOIN_CHATROOM: \nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice\n"),
    ("a CHAT whose ROOM_REF is not an integer",
     b"CHAT: lobby\nJOIN_ID: 1\nCLIENT_NAME: alice\nMESSAGE: hi\n\n"),
    ("a LEAVE whose JOIN_ID is not an integer",
     b"LEAVE_CHATROOM: 0\nJOIN_ID: one\nCLIENT_NAME: alice\n"),
]


@case("errors.malformed", "Each malformed request of a known kind gets ERROR_CODE and "
      "ERROR_DESCRIPTION, and the connection stays usable.",
      hint="a parsing exception closes the connection, or kills the thread that serves it")
def errors_malformed(ctx):
    a = ctx.client("alice")
    for what, request in MALFORMED:
        a.send(request)
        expect_error(a, what)
        a.send(b"HELO still here\n")
        expect_helo(ctx, a, b"HELO still here")


@case("errors.rooms", "A CHAT to a ROOM_REF no room has, and a CHAT to a room the connection "
      "has not joined, each get ERROR_CODE, and nobody receives the chat.")
def errors_rooms(ctx):
    a, b = ctx.client("alice"), ctx.client("bob")
    ref, _ = join(ctx, a, ctx.room("members"))
    _, id_b = join(ctx, b, ctx.room("other"))
    b.send(chat_request(987654321, id_b, "bob", "to no room"))
    expect_error(b, "a CHAT to a ROOM_REF no room has")
    b.send(chat_request(ref, id_b, "bob", "to a room bob is not in"))
    expect_error(b, "a CHAT to a room the connection has not joined")
    a.expect_nothing("no chat from a non-member", Q_CHAT)
    b.send(b"HELO still here\n")
    expect_helo(ctx, b, b"HELO still here")


@case("other.silent", "A one-line message of no known kind gets no reply at all: the next "
      "message is the reply to the next request.",
      hint="an unknown command answered with ERROR_CODE: the grader then reads the error "
      "where it expects its next reply")
def other_silent(ctx):
    a = ctx.client("alice")
    a.send_apart(b"WHAT_IS_THIS: an unknown message\n", b"HELO after unknown\n")
    if not a.peek("the HELO reply").startswith(b"HELO after unknown\n"):
        raise Fail("expected nothing for the unknown message, then the HELO reply; got %s" %
                   show_inline(a.next_message("the HELO reply")), Q_OTHER)
    expect_helo(ctx, a, b"HELO after unknown")

