"""Layer 1, the codec (sansio/wire.py, sansio/replies.py): bytes -> frames -> requests (Framer,
parse_request), the builders, and the server's output read back (ReplyReader), in memory."""
import random
import re
import unittest

from sansio import wire
from sansio.replies import (ChatMessage, ErrorReply, HeloReply, JoinedReply, LeftReply,
                            ReplyReader, Unparsed)
from sansio.wire import (Chat, Disconnect, ErrorCode, Framer, Helo, Join, Kill, Leave, Other,
                         RequestError, chat_message, chat_request, disconnect_request,
                         error_reply, helo_reply, helo_request, join_request, joined_reply,
                         kill_request, leave_request, left_reply, parse_request,
                         parse_request_in_general)

# ---------------------------------------------------------------------------------------------
# 1. Framing and parsing
# ---------------------------------------------------------------------------------------------

JOIN = b"JOIN_CHATROOM: room1\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice\n"
LEAVE = b"LEAVE_CHATROOM: 0\nJOIN_ID: 1\nCLIENT_NAME: alice\n"
CHAT = b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: alice\nMESSAGE: hello\nsecond line\n\n"
DISCONNECT = b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: alice\n"
STREAM = b"HELO x\n" + JOIN + CHAT + LEAVE + b"UNKNOWN thing\n" + DISCONNECT + b"KILL_SERVICE\n"
STREAM_FRAMES = [
    b"HELO x",
    JOIN[:-1],
    b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: alice\nMESSAGE: hello\nsecond line",
    LEAVE[:-1],
    b"UNKNOWN thing",
    DISCONNECT[:-1],
    b"KILL_SERVICE",
]


def frames_of(framer):
    out = []
    while True:
        frame = framer.maybe_next_frame()
        if frame is None:
            return out
        out.append(frame)


def frame_all(data, chunk=None):
    """Feed `data` to a new Framer (in chunks of `chunk` bytes) and collect every frame."""
    framer = Framer()
    out = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        framer.receive_data(data[i:i + step])
        out += frames_of(framer)
    return out


class FramerTests(unittest.TestCase):

    def test_each_request_kind_is_framed_by_its_first_line(self):
        self.assertEqual(frame_all(STREAM), STREAM_FRAMES)

    def test_split_at_every_byte_gives_the_same_frames(self):
        self.assertEqual(frame_all(STREAM, chunk=1), STREAM_FRAMES)
        self.assertEqual(frame_all(STREAM, chunk=7), STREAM_FRAMES)

    def test_crlf_is_the_same_as_lf_even_split_between_chunks(self):
        crlf = STREAM.replace(b"\n", b"\r\n")
        self.assertEqual(frame_all(crlf), STREAM_FRAMES)
        self.assertEqual(frame_all(crlf, chunk=1), STREAM_FRAMES)

    def test_every_cr_before_an_lf_goes_even_split_between_chunks(self):
        # One pass of replace(b"\r\n", b"\n") would leave "\r\n" from "\r\r\n", and a
        # relayed "\r\n\r\n" looks like a blank line to a client that reads CRLF as LF:
        # the rest would pass for a chat from somebody else.
        spoof = (b"CHAT: 0\nJOIN_ID: 2\nCLIENT_NAME: bob\nMESSAGE: hi\r\r\n\r\r\n"
                 b"CHAT: 0\r\r\nCLIENT_NAME: alice\r\r\nMESSAGE: I am alice\n\n")
        for chunk in (None, 1, 3):
            frames = frame_all(spoof, chunk)
            self.assertEqual(frames[0], b"CHAT: 0\nJOIN_ID: 2\nCLIENT_NAME: bob\nMESSAGE: hi")
            self.assertFalse(any(b"\r" in frame for frame in frames), frames)

    def test_a_request_at_the_limit_is_accepted_however_its_crlf_is_split(self):
        head = b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: "
        for frame in (b"HELO " + b"h" * 95, head + b"m" * (100 - len(head))):
            ending = b"\r\n\r\n" if frame.startswith(b"CHAT") else b"\r\n"
            for split in range(len(frame), len(frame) + len(ending)):
                framer = Framer(max_request=100)
                framer.receive_data((frame + ending)[:split])
                self.assertIsNone(framer.maybe_next_frame())
                framer.receive_data((frame + ending)[split:])
                self.assertEqual(framer.maybe_next_frame(), frame, split)

    def test_an_endless_run_of_crs_is_refused(self):
        framer = Framer(max_request=100)
        framer.receive_data(b"HELO " + b"\r" * 101)
        with self.assertRaises(RequestError):
            framer.maybe_next_frame()

    def test_a_lone_cr_is_kept(self):
        self.assertEqual(frame_all(b"HELO a\rb\n"), [b"HELO a\rb"])

    def test_blank_lines_between_requests_are_skipped(self):
        self.assertEqual(frame_all(b"\n\n\r\nHELO x\n\n\nKILL_SERVICE\n"), [b"HELO x", b"KILL_SERVICE"])

    def test_chat_waits_for_its_blank_line(self):
        framer = Framer()
        framer.receive_data(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: one\n")
        self.assertIsNone(framer.maybe_next_frame())
        framer.receive_data(b"two\n")
        self.assertIsNone(framer.maybe_next_frame())
        framer.receive_data(b"\nHELO")
        self.assertEqual(framer.maybe_next_frame(),
                         b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: one\ntwo")
        self.assertIsNone(framer.maybe_next_frame())

    def test_a_blank_line_cuts_a_fixed_size_request_short(self):
        # the forgotten CLIENT_NAME must not swallow the HELO that follows
        self.assertEqual(frame_all(b"LEAVE_CHATROOM: 0\nJOIN_ID: 1\n\nHELO x\n"),
                         [b"LEAVE_CHATROOM: 0\nJOIN_ID: 1", b"HELO x"])

    def test_keyword_may_have_spaces_around_it(self):
        self.assertEqual(frame_all(b"JOIN_CHATROOM : r\nA\nB\nC\nHELO\n"),
                         [b"JOIN_CHATROOM : r\nA\nB\nC", b"HELO"])

    def test_incomplete_request_past_the_limit_is_refused(self):
        framer = Framer(max_request=100)
        framer.receive_data(b"x" * 100)
        self.assertIsNone(framer.maybe_next_frame())
        framer.receive_data(b"x")
        with self.assertRaises(RequestError) as caught:
            framer.maybe_next_frame()
        self.assertEqual(caught.exception.code, ErrorCode.REQUEST_TOO_LONG)

    def test_complete_request_past_the_limit_is_refused(self):
        framer = Framer(max_request=100)
        framer.receive_data(b"CHAT: 0\n" + b"y\n" * 60 + b"\n")
        with self.assertRaises(RequestError) as caught:
            framer.maybe_next_frame()
        self.assertEqual(caught.exception.code, ErrorCode.REQUEST_TOO_LONG)

    def test_chat_at_the_limit_is_accepted_however_its_blank_line_is_split(self):
        head = b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: "
        frame = head + b"x" * (100 - len(head))
        for split in (len(frame), len(frame) + 1):
            stream = frame + b"\n\n"
            framer = Framer(max_request=100)
            framer.receive_data(stream[:split])
            self.assertIsNone(framer.maybe_next_frame())
            framer.receive_data(stream[split:])
            self.assertEqual(framer.maybe_next_frame(), frame, split)

    def test_framer_and_parser_agree_on_the_keyword(self):
        # \x1c is white space to str.strip() but not to bytes.strip(). The framer once cut this
        # line alone as an unknown command while the parser called it a malformed CHAT; now
        # both say: not a CHAT (the lines after it are requests of their own, as for any
        # unknown first line).
        stream = b"\x1cCHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: m\n\n"
        self.assertEqual(frame_all(stream)[0], b"\x1cCHAT: 0")
        self.assertEqual(parse_request(b"\x1cCHAT: 0"), Other("\x1cCHAT: 0"))
        self.assertEqual(set(wire._FRAME_LINES), set(wire._PARSERS))

    def test_kill_service_is_only_the_ascii_keyword(self):
        self.assertEqual(parse_request("\u00a0KILL_SERVICE".encode()), Other("\u00a0KILL_SERVICE"))
        self.assertEqual(parse_request(b"\x1cKILL_SERVICE"), Other("\x1cKILL_SERVICE"))
        self.assertEqual(parse_request(b" KILL_SERVICE "), Kill())

    def test_request_at_the_limit_is_accepted(self):
        framer = Framer(max_request=10)
        framer.receive_data(b"HELO 12345\n")
        self.assertEqual(framer.maybe_next_frame(), b"HELO 12345")

    def test_trickled_request_is_not_rescanned(self):
        # The search resumes where it stopped: after a byte-by-byte line the framer has looked
        # at each byte once. (White-box: the bound that keeps a slow sender O(n).)
        framer = Framer()
        for _ in range(1000):
            framer.receive_data(b"z")
            self.assertIsNone(framer.maybe_next_frame())
        self.assertEqual(framer._scanned, 1000)
        framer.receive_data(b"\n")
        self.assertEqual(framer.maybe_next_frame(), b"z" * 1000)


class ParseTests(unittest.TestCase):

    def assertError(self, frame, code):
        with self.assertRaises(RequestError) as caught:
            parse_request(frame)
        self.assertEqual(caught.exception.code, code, caught.exception.description)
        self.assertTrue(caught.exception.description)

    def test_helo_keeps_its_whole_line(self):
        self.assertEqual(parse_request(b"HELO  some text "), Helo("HELO  some text "))

    def test_kill_service(self):
        self.assertEqual(parse_request(b"KILL_SERVICE"), Kill())

    def test_join(self):
        self.assertEqual(parse_request(b"JOIN_CHATROOM:  my room \nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME:bob "),
                         Join("my room", "bob"))

    def test_join_room_name_may_be_any_unicode(self):
        self.assertEqual(parse_request("JOIN_CHATROOM: café ☕\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: é".encode()),
                         Join("café ☕", "é"))

    def test_leave(self):
        self.assertEqual(parse_request(LEAVE[:-1]), Leave(0, "1", "alice"))

    def test_chat_keeps_inner_newlines_and_trims_the_ends(self):
        self.assertEqual(parse_request(b"CHAT: 3 \nJOIN_ID: 7\nCLIENT_NAME: a\nMESSAGE:  hi\n there  "),
                         Chat(3, "7", "a", "hi\n there"))

    def test_a_multi_line_message_is_trimmed_as_a_whole_not_line_by_line(self):
        # docs/PROTOCOL.md, "Chat": white space (tabs, line breaks and Unicode spaces too) goes
        # only at the very start and end of the message; each line inside keeps its own.
        frame = ("CHAT: 3\nJOIN_ID: 7\nCLIENT_NAME: a\nMESSAGE: \t\n  one  \n\ttwo\t\n"
                 "  three \u3000").encode()
        for parse in (parse_request, parse_request_in_general):     # shortcut and general way
            self.assertEqual(parse(frame).message, "one  \n\ttwo\t\n  three", parse)

    def test_disconnect(self):
        self.assertEqual(parse_request(DISCONNECT[:-1]), Disconnect("alice"))

    def test_unknown_first_lines_are_other_messages(self):
        for line in ("HELLO", "KILL_SERVICE now", "CHAT 0", "join_chatroom: x", "HELO:x", ""):
            self.assertEqual(parse_request(line.encode()), Other(line), line)

    def test_missing_field(self):
        self.assertError(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a", ErrorCode.MALFORMED_REQUEST)
        self.assertError(b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0", ErrorCode.MALFORMED_REQUEST)

    def test_misnamed_or_reordered_field(self):
        self.assertError(b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORTS: 0\nCLIENT_NAME: a",
                         ErrorCode.MALFORMED_REQUEST)
        self.assertError(b"LEAVE_CHATROOM: 0\nCLIENT_NAME: a\nJOIN_ID: 1", ErrorCode.MALFORMED_REQUEST)
        self.assertError(b"DISCONNECT: 0\nPORT 0\nCLIENT_NAME: a", ErrorCode.MALFORMED_REQUEST)

    def test_refs_and_ids_must_be_plain_non_negative_integers(self):
        for bad in ("x", "-1", "+1", "1_0", "1.0", "\u0661", ""):
            self.assertError(("CHAT: %s\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: m" % bad).encode(),
                             ErrorCode.BAD_INTEGER)
        self.assertError(b"LEAVE_CHATROOM: 0\nJOIN_ID: one\nCLIENT_NAME: a", ErrorCode.BAD_INTEGER)

    def test_huge_ref_is_an_integer(self):
        self.assertEqual(parse_request(b"LEAVE_CHATROOM: 999999999999999999\nJOIN_ID: 0\nCLIENT_NAME: a").ref,
                         999999999999999999)
        self.assertEqual(parse_request(b"LEAVE_CHATROOM: 000000000000000000007\nJOIN_ID: 0\nCLIENT_NAME: a").ref, 7)
        self.assertError(b"LEAVE_CHATROOM: 9999999999999999999\nJOIN_ID: 0\nCLIENT_NAME: a",
                         ErrorCode.UNKNOWN_ROOM)       # more digits than any ref can have

    def test_a_ref_too_long_for_int_names_no_room(self):
        self.assertError(b"LEAVE_CHATROOM: " + b"9" * 5000 + b"\nJOIN_ID: 0\nCLIENT_NAME: a",
                         ErrorCode.UNKNOWN_ROOM)

    def test_join_id_is_kept_as_sent(self):
        self.assertEqual(parse_request(b"CHAT: 0\nJOIN_ID: 007\nCLIENT_NAME: a\nMESSAGE: m").join_id, "007")
        self.assertEqual(parse_request(b"CHAT: 0\nJOIN_ID: " + b"9" * 5000 + b"\nCLIENT_NAME: a\nMESSAGE: m").join_id,
                         "9" * 5000)

    def test_empty_names(self):
        self.assertError(b"JOIN_CHATROOM:  \nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: a", ErrorCode.EMPTY_ROOM_NAME)
        self.assertError(b"JOIN_CHATROOM: r\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME:", ErrorCode.EMPTY_CLIENT_NAME)
        self.assertError(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: \nMESSAGE: m", ErrorCode.EMPTY_CLIENT_NAME)

    def test_invalid_utf8(self):
        self.assertError(b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: a\nMESSAGE: \xff", ErrorCode.INVALID_UTF8)
        self.assertError(b"\xc3", ErrorCode.INVALID_UTF8)

    def test_plain_chat_shortcut_agrees_with_the_general_parser(self):
        # Random CHAT-like frames, mostly well-formed, each piece sometimes replaced by one near
        # the shortcut's edges: both ways must give the same request or the same error code.
        rng = random.Random(20261128)
        pieces = {  # (usual choices, unusual ones)
            "space": (["", " ", "  ", "\t"], ["\xa0", "\x1c", "\r", " \u3000", "\x0b"]),
            "number": (["0", "7", "12", "007"], ["", "x", "-1", "1 2", "\u0661", "9" * 4400,
                                                 "0" * 30 + "1", "9" * 19]),
            "name": (["a", "bob smith", "na:me", "\u00e9"], ["", " ", "\udcff"]),
            "message": (["hi", "", " two\nlines ", "a: b", "\u2603"], ["x\udcff", "x\n\ny"]),
        }
        keys = ["CHAT:", "JOIN_ID:", "CLIENT_NAME:", "MESSAGE:"]
        odd_keys = ["CHAT :", " CHAT:", "MESSAGE :", "message:", "CHAT:", "JOIN_ID:", "X:"]

        def pick(kind):
            usual, unusual = pieces[kind]
            return rng.choice(unusual if rng.random() < .1 else usual)
        for _ in range(5000):
            lines = [(rng.choice(odd_keys) if rng.random() < .05 else key) + pick("space")
                     + pick(kind) + pick("space")
                     for key, kind in zip(keys, ("number", "number", "name", "message"))]
            if rng.random() < .03:
                rng.shuffle(lines)
            frame = "\n".join(lines[:4 if rng.random() < .95 else rng.choice([1, 2, 3])])
            frame = frame.encode("utf-8", "surrogateescape")
            outcomes = []
            for parse in (parse_request, parse_request_in_general):
                try:
                    outcomes.append(parse(frame))
                except RequestError as err:
                    outcomes.append(err.code)
            self.assertEqual(outcomes[0], outcomes[1], frame)

    def test_a_joins_callback_address_is_an_ip_literal_and_a_port(self):
        self.assertIsNone(wire.maybe_callback_address("0", "0"))        # "back to the source"
        self.assertIsNone(wire.maybe_callback_address("10.1.2.3", "0"))
        self.assertEqual(wire.maybe_callback_address(" 10.1.2.3 ", "5000 "), ("10.1.2.3", 5000))
        self.assertEqual(wire.maybe_callback_address("::1", "7"), ("::1", 7))
        for ip, port in (("example.com", "1"), ("10.1.2.3", "65536"), ("10.1.2.3", "-1"),
                         ("10.1.2.3", "x")):
            with self.assertRaises(ValueError):
                wire.maybe_callback_address(ip, port)

    def test_error_codes_are_distinct(self):
        codes = [int(code) for code in ErrorCode]
        self.assertEqual(len(codes), len(set(codes)))


class FramingShortcutTests(unittest.TestCase):

    def test_chat_framing_shortcut_agrees_with_the_general_path(self):
        # "CHAT :" is a CHAT to the general path (the keyword is trimmed) but not to the shortcut,
        # which only takes an exact "CHAT:": the same streams must be cut at the same places.
        rng = random.Random(7)
        pieces = [b"CHAT:", b"CHAT: 0", b"\n", b"\n\n", b"JOIN_ID: 1", b"MESSAGE: m", b"x",
                  b"\r\n", b"HELO a", b"LEAVE_CHATROOM: 1"]
        for _ in range(3000):
            body = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
            stream = b"\n".join([b"CHAT:" + body, b"CHAT:" + body + b"\n\n", b"HELO end\n"])
            plain = frame_all(stream, chunk=rng.randint(1, 9))
            general = frame_all(stream.replace(b"CHAT:", b"CHAT :"), chunk=rng.randint(1, 9))
            self.assertEqual(plain, [f.replace(b"CHAT :", b"CHAT:") for f in general], stream)


    def test_a_plain_chat_in_a_buffer_ends_where_the_first_blank_line_does(self):
        # The greedy pattern takes what the plain (.*?)\n\n does, and only that, from buffers
        # of lines, blank lines and spaces cut anywhere.
        lazy = re.compile(wire._PLAIN_CHAT_HEAD + rb"(.*?)\n\n", re.DOTALL)
        rng = random.Random(12)
        head = b"CHAT: 1\nJOIN_ID: 2\nCLIENT_NAME: n\nMESSAGE:"
        for _ in range(3000):
            tail = bytes(rng.choice(b"ab \n\n\t") for _ in range(rng.randint(0, 12)))
            buf = bytearray(head + tail)
            want, got = lazy.match(buf), wire._PLAIN_CHAT_IN_BUFFER.match(buf)
            self.assertEqual(want and (want.groups(), want.end()),
                             got and (got.groups(), got.end()), buf)

    def test_taking_a_plain_chat_agrees_with_framing_and_parsing(self):
        # Streams of CHAT-like requests (plain, oddly spaced, broken, too long, blank lines
        # between), cut into random chunks: taking plain CHATs whole from the buffer first must
        # give the same requests and errors, and leave the same bytes buffered, as framing and
        # parsing each request in general.
        rng = random.Random(11)
        pieces = [wire.chat_request(1, 2, "al", "hi"), wire.chat_request(3, 4, " b ", " x\ny "),
                  b"CHAT: 5\nJOIN_ID: 6\nCLIENT_NAME: \nMESSAGE: m\n\n", b"\n", b"\r\n",
                  b"CHAT : 7\nJOIN_ID: 8\nCLIENT_NAME: c\nMESSAGE: m\n\n", b"HELO a\n",
                  b"CHAT: 9\nJOIN_ID: 1\nCLIENT_NAME: \xff\nMESSAGE: m\n\n",
                  wire.chat_request(1, 2, "long", "z" * 90), b"CHAT: 1\nJOIN_ID: 2\n",
                  b"CLIENT_NAME: d\nMESSAGE: e\n\n", b"JOIN_CHATROOM: r\n",
                  b"CHAT: 2\nJOIN_ID: 3\nCLIENT_NAME: f\nMESSAGE:\n\n",
                  b"CHAT: 2\nJOIN_ID: 3\nCLIENT_NAME: g\nMESSAGE:\nh\n i\n\n\n"]

        def outcomes(framer, shortcut):
            out = []
            while True:
                try:
                    request = framer.maybe_take_plain_chat() if shortcut else None
                    if request is None:
                        frame = framer.maybe_next_frame()
                        if frame is None:
                            return out
                        request = wire.parse_request_in_general(frame)
                except RequestError as err:
                    request = err.code
                    if err.code == ErrorCode.REQUEST_TOO_LONG:
                        return out + [request]      # (the framer is of no further use)
                out.append((request, framer.buffered()))
        for _ in range(2000):
            stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
            results, step = [], rng.randint(1, 40)
            for shortcut in (True, False):
                framer, seen = Framer(max_request=100), []
                for i in range(0, len(stream), step):
                    framer.receive_data(stream[i:i + step])
                    seen += outcomes(framer, shortcut)
                    if seen and seen[-1] is ErrorCode.REQUEST_TOO_LONG:
                        break               # (the connection is closed)
                results.append(seen)
            self.assertEqual(results[0], results[1], stream)


class BuilderTests(unittest.TestCase):
    """Every builder against bytes written out by hand (so a wrong builder cannot vouch for
    itself through the reader)."""

    def test_requests(self):
        self.assertEqual(helo_request("hi there"), b"HELO hi there\n")
        self.assertEqual(kill_request(), b"KILL_SERVICE\n")
        self.assertEqual(join_request("room 1", "alice"),
                         b"JOIN_CHATROOM: room 1\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: alice\n")
        self.assertEqual(join_request("r", "a", "10.1.2.3", 5000),
                         b"JOIN_CHATROOM: r\nCLIENT_IP: 10.1.2.3\nPORT: 5000\nCLIENT_NAME: a\n")
        self.assertEqual(leave_request(3, 7, "bob"),
                         b"LEAVE_CHATROOM: 3\nJOIN_ID: 7\nCLIENT_NAME: bob\n")
        self.assertEqual(chat_request(0, 1, "al", "two\nlines"),
                         b"CHAT: 0\nJOIN_ID: 1\nCLIENT_NAME: al\nMESSAGE: two\nlines\n\n")
        self.assertEqual(disconnect_request("al"),
                         b"DISCONNECT: 0\nPORT: 0\nCLIENT_NAME: al\n")
        self.assertEqual(join_request("\u65e5", "\u00e9"),
                         "JOIN_CHATROOM: \u65e5\nCLIENT_IP: 0\nPORT: 0\nCLIENT_NAME: \u00e9\n"
                         .encode("utf-8"))

    def test_replies(self):
        self.assertEqual(helo_reply("HELO x", "10.0.0.1", 8080, "12345678"),
                         b"HELO x\nIP:10.0.0.1\nPort:8080\nStudentID:12345678\n")
        self.assertEqual(joined_reply("r", "10.0.0.1", 8080, 2, 5),
                         b"JOINED_CHATROOM: r\nSERVER_IP: 10.0.0.1\nPORT: 8080\nROOM_REF: 2\n"
                         b"JOIN_ID: 5\n")
        self.assertEqual(left_reply(2, 5), b"LEFT_CHATROOM: 2\nJOIN_ID: 5\n")
        self.assertEqual(left_reply(2, "007"), b"LEFT_CHATROOM: 2\nJOIN_ID: 007\n")
        self.assertEqual(error_reply(5, "no\nroom"),
                         b"ERROR_CODE: 5\nERROR_DESCRIPTION: no room\n")
        self.assertEqual(chat_message(1, "bob", "hi"),
                         b"CHAT: 1\nCLIENT_NAME: bob\nMESSAGE: hi\n\n")

    def test_every_request_builder_is_parsed_back_by_the_server(self):
        self.assertEqual(parse_request(helo_request("x")[:-1]), Helo("HELO x"))
        self.assertEqual(parse_request(kill_request()[:-1]), Kill())
        self.assertEqual(parse_request(join_request("r", "a")[:-1]), Join("r", "a"))
        self.assertEqual(parse_request(leave_request(1, 2, "a")[:-1]), Leave(1, "2", "a"))
        self.assertEqual(parse_request(chat_request(1, 2, "a", "m")[:-2]),
                         Chat(1, "2", "a", "m"))
        self.assertEqual(parse_request(disconnect_request("a")[:-1]), Disconnect("a"))


class ReplyReaderTests(unittest.TestCase):

    STREAM = (b"HELO x y\nIP:10.0.0.1\nPort:8080\nStudentID:12345678\n"
              b"JOINED_CHATROOM: room 1\nSERVER_IP: 10.0.0.1\nPORT: 8080\nROOM_REF: 0\nJOIN_ID: 1\n"
              b"CHAT: 0\nCLIENT_NAME: alice\nMESSAGE: alice has joined this chatroom.\n\n"
              b"CHAT: 0\nCLIENT_NAME: bob\nMESSAGE: two\nlines\n\n"
              b"\n"
              b"ERROR_CODE: 5\nERROR_DESCRIPTION: no room has ROOM_REF '7'\n"
              b"LEFT_CHATROOM: 0\nJOIN_ID: 1\n")
    REPLIES = [
        HeloReply("HELO x y", "10.0.0.1", 8080, "12345678"),
        JoinedReply("room 1", "10.0.0.1", 8080, 0, 1),
        ChatMessage(0, "alice", "alice has joined this chatroom."),
        ChatMessage(0, "bob", "two\nlines"),
        ErrorReply(5, "no room has ROOM_REF '7'"),
        LeftReply(0, 1),
    ]

    @staticmethod
    def read_all(reader):
        replies = []
        while True:
            reply = reader.maybe_next_reply()
            if reply is None:
                return replies
            replies.append(reply)

    def test_every_kind_of_reply(self):
        reader = ReplyReader()
        reader.receive_data(self.STREAM)
        self.assertEqual(self.read_all(reader), self.REPLIES)
        self.assertEqual(reader.pending(), b"")

    def test_split_at_every_byte_gives_the_same_replies(self):
        for cut in range(len(self.STREAM) + 1):
            reader = ReplyReader()
            reader.receive_data(self.STREAM[:cut])
            first = self.read_all(reader)
            reader.receive_data(self.STREAM[cut:])
            self.assertEqual(first + self.read_all(reader), self.REPLIES, cut)

    def test_replies_are_frozen(self):
        with self.assertRaises(Exception):
            self.REPLIES[1].ref = 9

    def test_what_the_server_never_sends_is_unparsed_not_lost(self):
        reader = ReplyReader()
        reader.receive_data(b"WHAT\nLEFT_CHATROOM: x\nJOIN_ID: 1\nJOINED_CHATROOM: r\nPORT: 1\n"
                            b"SERVER_IP: a\nROOM_REF: 0\nJOIN_ID: 1\nLEFT_CHATROOM: 3\nJOIN_ID: 4\n")
        replies = self.read_all(reader)
        self.assertEqual([type(r).__name__ for r in replies],
                         ["Unparsed", "Unparsed", "Unparsed", "LeftReply"])
        self.assertEqual(replies[0].text, "WHAT")
        self.assertEqual(replies[3], LeftReply(3, 4))

    def test_count_chats_takes_whole_runs_and_stops_before_anything_else(self):
        chats = b"".join(chat_message(4, "n%d" % i, "m%d" % i) for i in range(50))
        other = chat_message(5, "x", "y") + error_reply(6, "e")
        for tail in (b"", b"CHAT: 4\nCLIENT_NAME: a"):
            reader = ReplyReader()
            reader.receive_data(chats + tail)
            self.assertEqual(reader.count_chats(4), 50)
            self.assertEqual(reader.count_chats(4), 0)
            self.assertEqual(reader.pending(), tail)
        reader = ReplyReader()
        reader.receive_data(chats + other + chats)
        self.assertEqual(reader.count_chats(4), 50)
        self.assertEqual(reader.maybe_next_reply(), ChatMessage(5, "x", "y"))
        self.assertEqual(reader.count_chats(4), 0)
        self.assertEqual(reader.maybe_next_reply(), ErrorReply(6, "e"))
        self.assertEqual(reader.count_chats(4), 50)

    def test_count_chats_with_a_suffix_counts_only_matching_texts(self):
        reader = ReplyReader()
        reader.receive_data(chat_message(0, "a", "a has joined this chatroom.")
                            + chat_message(0, "a", "hello"))
        self.assertEqual(reader.count_chats(0, " has joined this chatroom."), 1)
        self.assertEqual(reader.maybe_next_reply(), ChatMessage(0, "a", "hello"))


class ReplyReaderLongStreamTests(unittest.TestCase):

    def test_replies_stay_whole_after_the_consumed_head_is_dropped(self):
        # the reader drops what it has consumed once that passes 64 KiB: every reply before
        # and after that point must come out whole
        reader = ReplyReader()
        messages = [chat_message(i, "n%d" % i, "m" * 1000) for i in range(300)]
        for message in messages:
            reader.receive_data(message)
        for index in range(300):
            self.assertEqual(reader.maybe_next_reply(),
                             ChatMessage(index, "n%d" % index, "m" * 1000), index)

    def test_a_join_id_too_long_for_int_is_kept_as_its_digits(self):
        reader = ReplyReader()
        reader.receive_data(left_reply(0, "7" * 5000) + left_reply(1, "x"))
        reply = reader.maybe_next_reply()
        self.assertIsInstance(reply, LeftReply)     # (an ErrorReply(0, "77...") is an equal tuple)
        self.assertEqual(reply, LeftReply(0, "7" * 5000))
        self.assertIsInstance(reader.maybe_next_reply(), Unparsed)
