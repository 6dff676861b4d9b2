"""Tests of tools/screen.py, the full-screen client's interface without curses: the sanitizer,
the measuring and wrapping of text, the line editor, the history, the key bindings and the
layout. All in memory: keys in as curses' get_wch() gives them, frames out as curses draws them.
"""
import random
import unicodedata
import unittest
from typing import List

from sansio.wire import MAX_NAME_CHARS, RequestError, join_request, parse_request
from tools import screen
from tools.screen import (PLACEHOLDER, CycleRoom, History, LineEditor, Quit, Repaint, Screen,
                          Status, Submit, cells, name_problem, sanitize, wrap)

# Characters from the network that must never reach a terminal, one of each kind.
HOSTILE = {
    "\x1b": "ESC, starts an escape sequence", "\x07": "BEL", "\r": "carriage return",
    "\x00": "NUL", "\x7f": "DEL", "\x9b": "C1 CSI (an escape sequence in one byte)",
    "\u202e": "RIGHT-TO-LEFT OVERRIDE", "\u2066": "LEFT-TO-RIGHT ISOLATE",
    "\u200b": "ZERO WIDTH SPACE", "\u200d": "ZERO WIDTH JOINER", "\ufeff": "BOM",
    "\u00ad": "SOFT HYPHEN", "\u2028": "LINE SEPARATOR", "\u2029": "PARAGRAPH SEPARATOR",
}


def type_keys(scr: Screen, *keys: str) -> List[object]:
    """Each argument is one key: a character, a string typed a character at a time (when it is
    not a key name), or a curses key name such as KEY_LEFT."""
    events: List[object] = []
    for key in keys:
        if key.startswith("KEY_") or key.startswith("k") and len(key) > 1 and key[1].isupper():
            events += scr.key(key)
        else:
            for char in key:
                events += scr.key(char)
    return events


class SanitizeTest(unittest.TestCase):

    def test_each_hostile_character_becomes_the_placeholder(self) -> None:
        for char, what in HOSTILE.items():
            with self.subTest(what):
                self.assertEqual(sanitize("a%sb" % char), "a%sb" % PLACEHOLDER)

    def test_no_unsafe_code_point_survives_and_nothing_else_changes(self) -> None:
        every = "".join(chr(code) for code in range(0x110000) if not 0xd800 <= code < 0xe000)
        clean = sanitize(every)
        self.assertEqual(len(clean), len(every))      # indexes into both agree
        changed = {a for a, b in zip(every, clean) if a != b}
        unsafe = {c for c in every if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")}
        self.assertEqual(changed, unsafe)

    def test_newline_and_tab_are_kept_only_when_asked(self) -> None:
        self.assertEqual(sanitize("a\nb\tc"), "a%sb%sc" % (PLACEHOLDER, PLACEHOLDER))
        self.assertEqual(sanitize("a\nb\tc\x1b", keep="\n\t"), "a\nb\tc" + PLACEHOLDER)

    def test_ordinary_text_is_untouched(self) -> None:
        for text in ("hello", "Zoë, ça va ?", "中文 宽字符", "emoji \U0001f600", "a  b"):
            self.assertEqual(sanitize(text), text)


class NameTest(unittest.TestCase):

    def server_refuses(self, name: str) -> bool:
        frame = join_request("room", name).rstrip(b"\n")
        try:
            parse_request(frame)
        except RequestError:
            return True
        return False

    def test_the_client_refuses_exactly_what_the_server_would(self) -> None:
        names = ["alice", "Zoë K", "x" * MAX_NAME_CHARS,
                 "x" * (MAX_NAME_CHARS + 1)] + ["a%sb" % c for c in HOSTILE]
        for name in names:
            with self.subTest(name=name[:20]):
                self.assertEqual(name_problem(name) is not None, self.server_refuses(name))

    def test_problems_say_what_is_wrong(self) -> None:
        self.assertEqual(name_problem("x" * 300), "--name is 300 characters; at most 256, please")
        self.assertIn("U+202E (RIGHT-TO-LEFT OVERRIDE)", name_problem("evil\u202eeve"))
        self.assertIn("U+001B", name_problem("a\x1bb"))
        self.assertEqual(name_problem("  "), "--name must not be empty")


class MeasureAndWrapTest(unittest.TestCase):

    def test_cells_counts_wide_and_combining_characters(self) -> None:
        self.assertEqual(cells("abc"), 3)
        self.assertEqual(cells("宽字"), 4)
        self.assertEqual(cells("e\u0301"), 1)           # e and a combining acute accent

    def test_wrap_breaks_after_spaces_and_indents(self) -> None:
        self.assertEqual(wrap("the quick brown fox", 10), ["the quick", "    brown", "    fox"])
        self.assertEqual(wrap("abcdefghijkl", 8), ["abcdefgh", "    ijkl"])
        self.assertEqual(wrap("short", 10), ["short"])

    def test_wrapped_rows_never_pass_the_width(self) -> None:
        rng = random.Random(7)
        alphabet = "ab c宽\u0301é  "
        for _ in range(300):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
            width = rng.randrange(2, 30)
            rows = wrap(text, width)
            for row in rows:
                self.assertLessEqual(cells(row), width, (text, width, rows))
            self.assertEqual("".join(rows).replace(" ", ""), text.replace(" ", ""))


class LineEditorTest(unittest.TestCase):

    def editor(self, text: str, cursor: int) -> LineEditor:
        editor = LineEditor()
        editor.set(text)
        editor.cursor = cursor
        return editor

    def test_moving_and_deleting_characters(self) -> None:
        editor = self.editor("helo", 3)
        self.assertTrue(editor.insert("l"))
        self.assertEqual((editor.text, editor.cursor), ("hello", 4))
        editor.home()
        editor.delete()
        editor.end()
        editor.backspace()
        editor.left()
        editor.right()
        editor.right()                                  # stops at the end
        self.assertEqual((editor.text, editor.cursor), ("ell", 3))
        editor.home()
        editor.left()
        editor.backspace()                              # nothing before the start
        self.assertEqual((editor.text, editor.cursor), ("ell", 0))

    def test_kills_and_yank_work_as_in_readline(self) -> None:
        editor = self.editor("one two  three", 9)       # after "two  "
        editor.kill_word_before()                       # Ctrl-W: "two  "
        self.assertEqual((editor.text, editor.cursor), ("one three", 4))
        editor.kill_to_end()                            # Ctrl-K
        self.assertEqual(editor.text, "one ")
        editor.yank()                                   # Ctrl-Y: "three" back
        self.assertEqual(editor.text, "one three")
        editor.cursor = 4
        editor.kill_to_start()                          # Ctrl-U
        self.assertEqual((editor.text, editor.cursor), ("three", 0))

    def test_word_motions_stop_at_letters_and_digits(self) -> None:
        editor = self.editor("say hello, world", 16)
        editor.word_left()
        self.assertEqual(editor.cursor, 11)
        editor.word_left()
        self.assertEqual(editor.cursor, 4)
        editor.word_right()
        self.assertEqual(editor.cursor, 9)
        editor.kill_word_after()                        # Alt-D: ", world"
        self.assertEqual(editor.text, "say hello")
        editor.kill_word_back()                         # Alt-Backspace
        self.assertEqual(editor.text, "say ")

    def test_the_line_has_a_limit(self) -> None:
        editor = LineEditor(limit=5)
        self.assertTrue(editor.insert("abcd"))
        self.assertFalse(editor.insert("ef"))
        self.assertEqual(editor.text, "abcd")


class HistoryTest(unittest.TestCase):

    def test_up_and_down_walk_the_lines_and_bring_the_draft_back(self) -> None:
        history = History()
        for line in ("one", "two", "two", "", "three"):
            history.add(line)
        self.assertEqual(list(history.entries), ["one", "two", "three"])   # no repeats, blanks
        self.assertEqual(history.older("draft"), "three")
        self.assertEqual(history.older("three"), "two")
        self.assertEqual(history.older("two"), "one")
        self.assertIsNone(history.older("one"))         # the oldest: stays
        self.assertEqual(history.newer(), "two")
        self.assertEqual(history.newer(), "three")
        self.assertEqual(history.newer(), "draft")
        self.assertIsNone(history.newer())

    def test_the_oldest_lines_go_past_the_limit(self) -> None:
        history = History(limit=3)
        for number in range(5):
            history.add(str(number))
        self.assertEqual(list(history.entries), ["2", "3", "4"])


class KeysTest(unittest.TestCase):

    def test_readline_keys_edit_the_line(self) -> None:
        scr = Screen()
        type_keys(scr, "wrld", "KEY_HOME", "hello ", "\x05", "KEY_LEFT", "KEY_LEFT", "KEY_LEFT",
                  "o", "\x01", "\x06", "\x02", "\x04")  # Ctrl-E, Ctrl-A, Ctrl-F, Ctrl-B, Ctrl-D
        self.assertEqual(scr.editor.text, "ello world")
        type_keys(scr, "\x05", "\x17", "\x7f", "KEY_BACKSPACE", "\x08")     # Ctrl-W, 3 backspaces
        self.assertEqual(scr.editor.text, "el")

    def test_escape_sequences_curses_did_not_know_are_keys_not_text(self) -> None:
        scr = Screen()
        type_keys(scr, "abc", "\x1b[D", "\x1bOD", "X", "\x1b[15~", "\x1b[1;5C", "\x1bb")
        self.assertEqual((scr.editor.text, scr.editor.cursor), ("aXbc", 0))

    def test_enter_submits_and_keeps_history(self) -> None:
        scr = Screen()
        self.assertEqual(type_keys(scr, "first\n"), [Submit("first")])
        self.assertEqual(type_keys(scr, "second", "KEY_ENTER"), [Submit("second")])
        type_keys(scr, "draft", "KEY_UP", "KEY_UP")
        self.assertEqual(scr.editor.text, "first")
        type_keys(scr, "\x0e", "KEY_DOWN")              # Ctrl-N, Down
        self.assertEqual(scr.editor.text, "draft")

    def test_keys_that_ask_the_client_for_something(self) -> None:
        scr = Screen()
        self.assertEqual(type_keys(scr, "\t", "KEY_BTAB", "\x0c"),
                         [CycleRoom(1), CycleRoom(-1), Repaint()])
        self.assertEqual(type_keys(scr, "\x04"), [Quit()])  # Ctrl-D on an empty line
        type_keys(scr, "x", "KEY_HOME")
        self.assertEqual(type_keys(scr, "\x04"), [])        # otherwise it deletes
        self.assertEqual(scr.editor.text, "")

    def test_control_characters_typed_are_not_inserted(self) -> None:
        scr = Screen()
        type_keys(scr, "a\x00\x1f\u202eb", "KEY_F(5)")
        self.assertEqual(scr.editor.text, "ab")


class RenderTest(unittest.TestCase):

    def screen_with(self, count: int) -> Screen:
        scr = Screen()
        scr.status = Status("alice", "127.0.0.1:5000", "lobby", ("lobby", "dev"), "connected")
        for number in range(count):
            scr.add("[lobby] bob: message %d" % number, stamp="12:%02d" % (number % 60))
        return scr

    def test_layout_chat_then_status_then_input_with_the_cursor_on_it(self) -> None:
        scr = self.screen_with(3)
        type_keys(scr, "half typed")
        frame = scr.render(6, 60)
        texts = [text for text, _style in frame.rows]
        self.assertEqual(texts, [
            "",
            "12:00 [lobby] bob: message 0",
            "12:01 [lobby] bob: message 1",
            "12:02 [lobby] bob: message 2",
            " connected | alice @ 127.0.0.1:5000 | room: [lobby] | in: lo",
            "[lobby] half typed",
        ])
        self.assertEqual(frame.rows[4][1], "status")
        self.assertEqual(frame.cursor, (5, len("[lobby] half typed")))

    def test_a_message_arriving_mid_line_leaves_the_input_line_alone(self) -> None:
        scr = self.screen_with(3)
        type_keys(scr, "hello wor", "KEY_LEFT")
        before = scr.render(6, 60)
        scr.add("[lobby] bob: interrupting", stamp="12:03")
        after = scr.render(6, 60)
        self.assertEqual(after.rows[-1], before.rows[-1])
        self.assertEqual(after.cursor, before.cursor)
        self.assertEqual(after.rows[-3][0], "12:03 [lobby] bob: interrupting")

    def test_hostile_text_never_reaches_a_row(self) -> None:
        scr = self.screen_with(0)
        scr.status = Status("alice", "h", "ro\u202eom", ("ro\u202eom",), "connected")
        scr.add("[ro\u202eom] ev\x1bil: " + "".join(HOSTILE) + "\nsecond\tline")
        type_keys(scr, "typed")
        for text, _style in scr.render(8, 40).rows:
            self.assertFalse(any(unicodedata.category(c) in screen.UNSAFE_CATEGORIES
                                 for c in text), repr(text))
        self.assertIn("%s" % PLACEHOLDER * len(HOSTILE), scr.render(8, 200).rows[-4][0])

    def test_page_up_scrolls_back_and_new_lines_do_not_move_the_view(self) -> None:
        scr = self.screen_with(50)
        height = 10 - 2
        scr.render(10, 60)
        scr.page_up()
        frame = scr.render(10, 60)
        self.assertEqual(frame.rows[height - 1][0], "12:42 [lobby] bob: message 42")
        self.assertTrue(frame.rows[height][0].startswith(" -- scrolled --"))
        scr.add("[lobby] bob: new one", stamp="13:00")
        frame = scr.render(10, 60)
        self.assertEqual(frame.rows[height - 1][0], "12:42 [lobby] bob: message 42")
        self.assertTrue(frame.rows[height][0].startswith(" -- more: 1 new --"))
        for _ in range(20):                         # far past the top: stops at the first line
            scr.page_up()
        self.assertEqual(scr.render(10, 60).rows[0][0], "12:00 [lobby] bob: message 0")
        for _ in range(20):
            scr.page_down()
        frame = scr.render(10, 60)
        self.assertEqual(frame.rows[height - 1][0], "13:00 [lobby] bob: new one")
        self.assertTrue(frame.rows[height][0].startswith(" connected"))

    def test_enter_goes_back_to_the_latest_lines(self) -> None:
        scr = self.screen_with(50)
        scr.render(10, 60)
        scr.page_up()
        type_keys(scr, "sent\n")
        self.assertEqual(scr.render(10, 60).rows[7][0], "12:49 [lobby] bob: message 49")

    def test_a_narrower_window_wraps_again(self) -> None:
        # 30 cells: 6 for the stamp, 24 for the text, of which 4 indent the rows after the first
        scr = self.screen_with(0)
        scr.add("[lobby] bob: a rather long message that will need wrapping", stamp="12:00")
        rows = [text for text, _ in scr.render(8, 30).rows[:-2] if text]
        self.assertEqual(rows, ["12:00 [lobby] bob: a rather", "          long message that",
                                "          will need wrapping"])
        for rows_, cols in ((8, 30), (4, 16), (3, 80)):
            for text, _ in scr.render(rows_, cols).rows:
                self.assertLessEqual(cells(text), cols)

    def test_help_keeps_its_two_columns_at_60_columns_and_wider(self) -> None:
        from tools.chat_client import COMMANDS      # what /help shows, with KEYS_HELP
        for cols in (60, 80, 100):
            scr = self.screen_with(0)
            scr.add(COMMANDS + "\n" + screen.KEYS_HELP, stamp="12:00")
            rows = [text for text, _ in scr.render(60, cols).rows[:-2] if text]
            for table, first in (("commands", "/join ROOM"), ("keys", "Left/Right")):
                # a table: its first row's second column, then rows until the next heading
                start = next(i for i, text in enumerate(rows) if first in text)
                column = len(rows[start]) - len(rows[start][rows[start].index(first):]
                                                .split("  ", 1)[1].lstrip(" "))
                for text in rows[start:]:
                    if not text.startswith("      " + "  "):     # the stamp's width, then 2
                        break                                   # the next heading
                    with self.subTest(cols=cols, table=table, row=text):
                        self.assertLessEqual(cells(text), cols)
                        # a key and its text, or more text: either way, the text at the column
                        self.assertEqual(text[column - 2:column], "  ")
                        self.assertNotEqual(text[column], " ")

    def test_a_wrapped_table_row_continues_under_its_second_column(self) -> None:
        scr = self.screen_with(0)
        scr.add("  /msg ROOM TEXT  post TEXT to ROOM, one of your rooms, and more", stamp="")
        rows = [text for text, _ in scr.render(8, 40).rows[:-2] if text]
        self.assertEqual(rows, ["  /msg ROOM TEXT  post TEXT to ROOM,",
                                "                  one of your rooms,",
                                "                  and more"])

    def test_a_tiny_window_says_so(self) -> None:
        frame = self.screen_with(3).render(2, 40)
        self.assertEqual(frame.rows[0][0], "window too small")
        self.assertEqual(len(frame.rows), 2)

    def test_a_long_input_line_scrolls_to_keep_the_cursor_in_view(self) -> None:
        scr = self.screen_with(0)
        type_keys(scr, "0123456789" * 5)
        frame = scr.render(5, 30)
        prompt = "[lobby] "
        text = frame.rows[-1][0]
        self.assertTrue(text.startswith(prompt) and text.endswith("6789"), text)
        self.assertEqual(frame.cursor, (4, 29))         # the last cell, kept for the cursor
        type_keys(scr, "KEY_HOME")
        frame = scr.render(5, 30)
        self.assertEqual(frame.rows[-1][0], prompt + "012345678901234567890")   # 21 cells
        self.assertEqual(frame.cursor, (4, len(prompt)))

    def test_the_prompt_shows_the_current_room_shortened(self) -> None:
        scr = self.screen_with(0)
        scr.status = Status("alice", "h", "a very long room name indeed", (), "connected")
        self.assertEqual(scr.prompt(30), "[a very\u2026] ")
        scr.status = Status("alice", "h", None, (), "connected")
        self.assertEqual(scr.prompt(30), "> ")


if __name__ == "__main__":
    unittest.main()
