"""The full-screen chat client's interface, without curses: what the screen shows, what a key does.

    keys (str) --Screen.key--> editor and history change, events (Submit, CycleRoom, Quit, Repaint)
    lines      --Screen.add--> scrollback
    Screen.render(rows, cols) --> Frame: one text and style per row, and where the cursor goes

The curses layer (chat_client.FullScreen) only turns curses' keys into the key names used here,
draws a Frame, and carries out the events; everything that decides something lives here and is
tested in memory (tools/test_screen.py), as ChatClient is for the protocol.

The layout is irssi's and WeeChat's: chat scrolls above, a status line, an input line at the
bottom that arriving messages never disturb (every frame is drawn whole from this model, so a
message arriving mid-line redraws the chat rows and puts the cursor back where it was).
Key bindings are GNU readline's emacs bindings, the ones a shell user already knows.

Safe rendering: everything shown passes through sanitize(). Text from the network can hold
control characters (an escape sequence recolours or retitles the terminal), bidi overrides
(U+202E shows "exe.txt" as "txt.exe"), zero-width characters and line or paragraph separators;
each is shown as PLACEHOLDER and never reaches the terminal. sansio/wire.py refuses the same
categories in names; message text is relayed as sent, so clients must do this themselves.
"""
import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Deque, List, Optional, Tuple, Union

from sansio.wire import MAX_NAME_CHARS, MAX_REQUEST_BYTES

# --- limits and settings ------------------------------------------------------------------------
# Shown instead of every character that must not reach the terminal: U+FFFD REPLACEMENT
# CHARACTER, the one the piped client has always shown for control characters, one cell wide.
PLACEHOLDER = "\ufffd"
# Unicode categories never written to the terminal: controls (Cc: C0, DEL, C1), format
# characters (Cf: bidi overrides and isolates, zero-width spaces and joiners, soft hyphen) and
# the line and paragraph separators (Zl, Zp). The categories sansio/wire.py refuses in names.
UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp"))
# Lines typed and sent, kept for Up/Down: a long session's worth, a few hundred kB at most.
HISTORY_SIZE = 500
# Lines of chat kept for PgUp. Each is at most one message (MAX_SERVER_MESSAGE), so this bounds
# what a flooding room can make us hold; an evening of busy chat fits.
SCROLLBACK_LINES = 5000
# The longest input line, in characters. A chat request holds the text plus the names; at up to
# 4 bytes per character this stays far below MAX_REQUEST_BYTES, past which the server
# would answer ERROR_CODE and the client would have to exit. Longer is a paste gone wrong.
MAX_INPUT_CHARS = 8000
# An escape sequence the terminal sends for a key is a few bytes; one longer than this is not
# a key, and is dropped rather than swallowing everything typed after it.
MAX_ESCAPE_CHARS = 16
# Rows after the first of a wrapped or multi-line message start this far in (chat_client's
# CONTINUATION_INDENT, so both modes indent alike).
WRAP_INDENT = "    "
# A tab from the network is shown as spaces up to the next multiple of this (curses would
# otherwise move the cursor itself, past our count of cells).
TAB_WIDTH = 8
# Below this the layout (chat, status line, input line) does not fit: say so instead.
MIN_ROWS = 3
MIN_COLS = 16
# The prompt shows the room plain lines go to, shortened to this part of the width.
PROMPT_SHARE = 3


# ---------------------------------------------------------------------------------------------
# Sanitizing and measuring text
# ---------------------------------------------------------------------------------------------

def is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


def sanitize(text: str, keep: str = "") -> str:
    """`text` with every unsafe character but those in `keep` replaced by PLACEHOLDER; as long
    as `text`, so an index into one is an index into the other."""
    if text.isprintable():          # the usual chat line: no look at each character
        return text
    return "".join(PLACEHOLDER if char not in keep and is_unsafe(char) else char
                   for char in text)


def name_problem(name: str, what: str = "--name") -> Optional[str]:
    """Why the server would refuse `name` as a CLIENT_NAME or room name (ERROR_CODE, and the
    client must then exit), or None when it is fine: the server's rules, checked before
    connecting."""
    if not name.strip():
        return "%s must not be empty" % what
    if len(name) > MAX_NAME_CHARS:
        return "%s is %d characters; at most %d, please" % (what, len(name), MAX_NAME_CHARS)
    for char in name:
        if is_unsafe(char):
            return ("%s holds the unprintable character U+%04X (%s); names are printable text"
                    % (what, ord(char), unicodedata.name(char, "a control character")))
    return None


def char_cells(char: str) -> int:
    """Terminal cells `char` takes: 2 for East Asian wide and full-width characters, 0 for
    combining marks (they sit on the character before), 1 otherwise. Terminals mostly agree."""
    if char < "\u0300":             # ASCII and Latin-1: one cell (controls are sanitized)
        return 1
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def cells(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(char_cells(char) for char in text)


def fit(text: str, width: int) -> str:
    """The longest start of `text` that takes at most `width` cells."""
    used = 0
    for at, char in enumerate(text):
        used += char_cells(char)
        if used > width:
            return text[:at]
    return text


def expand_tabs(text: str) -> str:
    """Tabs as spaces to the next multiple of TAB_WIDTH cells, line by line."""
    if "\t" not in text:
        return text
    rows = []
    for row in text.split("\n"):
        out = ""
        for part_number, part in enumerate(row.split("\t")):
            if part_number:
                out += " " * (TAB_WIDTH - cells(out) % TAB_WIDTH)
            out += part
        rows.append(out)
    return "\n".join(rows)


def wrap(text: str, width: int, indent: str = WRAP_INDENT) -> List[str]:
    """One line (no newline) as rows of at most `width` cells, broken after a space where one
    is near enough, else anywhere; rows after the first start with `indent`."""
    if cells(text) <= width:
        return [text]
    if cells(indent) * 2 > width:       # a narrow window: indenting would leave no room
        indent = WRAP_INDENT if cells(WRAP_INDENT) * 2 <= width else ""
    rows: List[str] = []
    rest, prefix = text, ""
    while rest:
        room = max(1, width - cells(prefix))
        head = fit(rest, room) or rest[0]           # at least one character per row
        if len(head) < len(rest):
            space = head.rfind(" ")
            if space >= len(head) // 2:             # a word break in the second half of the row
                head = head[:space + 1]
        rows.append(prefix + head.rstrip(" "))
        rest, prefix = rest[len(head):].lstrip(" "), indent
    return rows or [""]


# ---------------------------------------------------------------------------------------------
# The input line: editor and history
# ---------------------------------------------------------------------------------------------

class LineEditor:
    """One line of text and a cursor (an index into it, 0 to len(text)), edited readline's way.

    Deleting a word or a line puts it in a one-entry kill buffer that yank() puts back.
    """

    def __init__(self, limit: int = MAX_INPUT_CHARS) -> None:
        self.text = ""
        self.cursor = 0
        self.limit = limit
        self.killed = ""

    def set(self, text: str) -> None:
        self.text, self.cursor = text[:self.limit], min(len(text), self.limit)

    def take(self) -> str:
        """The line, leaving the editor empty (Enter)."""
        text = self.text
        self.set("")
        return text

    def insert(self, text: str) -> bool:
        """Insert at the cursor; False (nothing inserted) when the line would be too long."""
        if len(self.text) + len(text) > self.limit:
            return False
        self.text = self.text[:self.cursor] + text + self.text[self.cursor:]
        self.cursor += len(text)
        return True

    def left(self) -> None:
        self.cursor = max(0, self.cursor - 1)

    def right(self) -> None:
        self.cursor = min(len(self.text), self.cursor + 1)

    def home(self) -> None:
        self.cursor = 0

    def end(self) -> None:
        self.cursor = len(self.text)

    def backspace(self) -> None:
        if self.cursor:
            self.text = self.text[:self.cursor - 1] + self.text[self.cursor:]
            self.cursor -= 1

    def delete(self) -> None:
        self.text = self.text[:self.cursor] + self.text[self.cursor + 1:]

    def _kill(self, start: int, end: int) -> None:
        if start < end:
            self.killed = self.text[start:end]
            self.text = self.text[:start] + self.text[end:]
            self.cursor = start

    def kill_to_start(self) -> None:               # Ctrl-U (unix-line-discard)
        self._kill(0, self.cursor)

    def kill_to_end(self) -> None:                 # Ctrl-K (kill-line)
        self._kill(self.cursor, len(self.text))

    def kill_word_before(self) -> None:            # Ctrl-W (unix-word-rubout): to white space
        self._kill(self._back_to_word_start(lambda char: not char.isspace()), self.cursor)

    def word_start(self) -> int:
        """Where Alt-B goes: the start of this or the previous word (letters and digits)."""
        return self._back_to_word_start(str.isalnum)

    def _back_to_word_start(self, in_word: Callable[[str], bool]) -> int:
        """Back from the cursor over what is not a word, then over a word: where that word
        starts. `in_word` says which characters make words (readline has two kinds)."""
        at = self.cursor
        while at and not in_word(self.text[at - 1]):
            at -= 1
        while at and in_word(self.text[at - 1]):
            at -= 1
        return at

    def word_end(self) -> int:
        """Where Alt-F goes: the end of this or the next word."""
        at, end = self.cursor, len(self.text)
        while at < end and not self.text[at].isalnum():
            at += 1
        while at < end and self.text[at].isalnum():
            at += 1
        return at

    def word_left(self) -> None:                   # Alt-B, Ctrl-Left
        self.cursor = self.word_start()

    def word_right(self) -> None:                  # Alt-F, Ctrl-Right
        self.cursor = self.word_end()

    def kill_word_after(self) -> None:             # Alt-D
        self._kill(self.cursor, self.word_end())

    def kill_word_back(self) -> None:              # Alt-Backspace
        self._kill(self.word_start(), self.cursor)

    def yank(self) -> None:                        # Ctrl-Y
        self.insert(self.killed)


class History:
    """Lines sent, oldest first, and a place in them while Up and Down browse.

    The line being typed when browsing starts is kept and comes back after the newest entry,
    as in readline. A line the same as the one before it is kept once (bash's ignoredups).
    """

    def __init__(self, limit: int = HISTORY_SIZE) -> None:
        self.entries: Deque[str] = deque(maxlen=limit)
        self.at: Optional[int] = None      # index of the entry shown; None: the draft is shown
        self.draft = ""

    def add(self, line: str) -> None:
        if line.strip() and (not self.entries or self.entries[-1] != line):
            self.entries.append(line)
        self.at = None

    def older(self, shown: str) -> Optional[str]:
        """The entry before the one shown (`shown` is the editor's text), or None at the oldest."""
        if self.at is None:
            if not self.entries:
                return None
            self.draft, self.at = shown, len(self.entries)
        if self.at == 0:
            return None
        self.at -= 1
        return self.entries[self.at]

    def newer(self) -> Optional[str]:
        """The entry after the one shown, then the draft; None when the draft is shown."""
        if self.at is None:
            return None
        self.at += 1
        if self.at == len(self.entries):
            self.at = None
            return self.draft
        return self.entries[self.at]


# ---------------------------------------------------------------------------------------------
# What the screen shows
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    """A line in the scrollback: one message or note, which may span rows."""
    stamp: str                  # "HH:MM", or "" for none
    text: str                   # sanitized; may hold "\n"
    style: str                  # "chat", "note" (the client's own "* " lines) or "error"


# An indented line whose text continues after two spaces or more is a row of a two-column table
# (/help's "  /join ROOM        join ROOM"): its wrapped rows start under the second column.
_TABLE_ROW = re.compile(r"( +\S+(?: \S+)*  +)\S")


def hanging_indent(part: str) -> str:
    """Where the rows of a wrapped line start: under the second column of a table
    row, under the text of an indented line, else WRAP_INDENT. A narrow window gets the
    hanging indent only while it leaves half the width (wrap() drops one that does not)."""
    row = _TABLE_ROW.match(part)
    if row:
        return " " * cells(row.group(1))
    text = part.lstrip(" ")
    return " " * (len(part) - len(text)) if text and part[0] == " " else WRAP_INDENT


@lru_cache(maxsize=2 * SCROLLBACK_LINES)
def line_rows(line: Line, width: int) -> Tuple[str, ...]:
    """`line` as rows of at most `width` cells: the stamp on the first, every row after it
    indented by the stamp's width and then by hanging_indent. Cached: each line
    is wrapped once per width, not per frame."""
    lead = line.stamp + " " if line.stamp else ""
    pad = " " * cells(lead)
    rows: List[str] = []
    for part in line.text.split("\n"):
        for row in wrap(part, max(1, width - len(pad)), hanging_indent(part)):
            rows.append((lead if not rows else pad) + row)
    return tuple(rows)


@dataclass
class Status:
    """What the status line says; the curses layer fills it in from ChatClient each turn."""
    name: str = ""
    server: str = ""
    current: Optional[str] = None           # the room plain lines go to
    rooms: Tuple[str, ...] = ()
    state: str = "connected"


@dataclass(frozen=True)
class Frame:
    """One screenful: rows[i] is (text, style) for row i (text at most the width in cells;
    styles "chat", "note", "error", "status", "input"), and the cursor's (row, column)."""
    rows: List[Tuple[str, str]]
    cursor: Tuple[int, int]


# Events: what a key asks of the client (the curses layer carries them out).

@dataclass(frozen=True)
class Submit:
    line: str                   # Enter: a line for ChatClient.line_typed


@dataclass(frozen=True)
class CycleRoom:
    step: int                   # Tab (+1), Shift-Tab (-1): plain lines go to another room


@dataclass(frozen=True)
class Quit:
    pass                        # Ctrl-D on an empty line: end of input, as in a shell


@dataclass(frozen=True)
class Repaint:
    pass                        # Ctrl-L: clear the terminal and draw everything again


Event = Union[Submit, CycleRoom, Quit, Repaint]

# Keys that the terminal sends as an escape sequence curses did not recognise (the terminal
# description lacks it): CSI or SS3 sequence -> key name, as curses names them.
ESCAPE_KEYS = {"[A": "KEY_UP", "[B": "KEY_DOWN", "[C": "KEY_RIGHT", "[D": "KEY_LEFT",
               "OA": "KEY_UP", "OB": "KEY_DOWN", "OC": "KEY_RIGHT", "OD": "KEY_LEFT",
               "[H": "KEY_HOME", "[F": "KEY_END", "OH": "KEY_HOME", "OF": "KEY_END",
               "[1~": "KEY_HOME", "[4~": "KEY_END", "[7~": "KEY_HOME", "[8~": "KEY_END",
               "[3~": "KEY_DC", "[5~": "KEY_PPAGE", "[6~": "KEY_NPAGE", "[Z": "KEY_BTAB",
               "[1;5D": "kLFT5", "[1;5C": "kRIT5", "[1;3D": "kLFT3", "[1;3C": "kRIT3"}

KEYS_HELP = """\
keys (as in a shell's readline):
  Left/Right Ctrl-B/F   move a character
  Ctrl-Left/Right       move a word (also Alt-B/F)
  Home/End Ctrl-A/E     start or end of the line
  Backspace/Delete      delete a character (or Ctrl-D)
  Ctrl-W Alt-Backspace  delete the word before
  Ctrl-U / Ctrl-K       delete to the start / the end
  Ctrl-Y                put back what was deleted
  Up/Down Ctrl-P/N      lines sent before
  PgUp/PgDn             scroll the chat
  Tab/Shift-Tab         the next/previous room gets
                        plain lines
  Ctrl-L                redraw
  Ctrl-D, empty line    /quit"""


class Screen:
    """The full-screen client's model: scrollback, input line, history, status.

    key() edits and returns events; add() appends to the chat; render() lays it all out for a
    window of rows x cols. No I/O, no clock: the caller passes the time stamp in.
    """

    def __init__(self, scrollback: int = SCROLLBACK_LINES) -> None:
        self.lines: Deque[Line] = deque(maxlen=scrollback)
        self.editor = LineEditor()
        self.history = History()
        self.status = Status()
        self.scroll = 0             # rows of chat below the bottom of the view (0: the latest)
        self.unseen = 0             # lines added while scrolled back
        self.width = 80             # the last render's width: new lines' rows while scrolled
        self.page = 10              # the last render's chat height: what PgUp moves
        self.input_start = 0        # the first character of the input line shown (it scrolls)
        self._escape: Optional[str] = None   # an escape sequence being read, after its ESC
        self._bindings = {
            "KEY_LEFT": self.editor.left, "\x02": self.editor.left,
            "KEY_RIGHT": self.editor.right, "\x06": self.editor.right,
            "KEY_HOME": self.editor.home, "\x01": self.editor.home,
            "KEY_END": self.editor.end, "\x05": self.editor.end,
            "KEY_BACKSPACE": self.editor.backspace, "\x7f": self.editor.backspace,
            "\x08": self.editor.backspace, "KEY_DC": self.editor.delete,
            "\x15": self.editor.kill_to_start, "\x0b": self.editor.kill_to_end,
            "\x17": self.editor.kill_word_before, "\x19": self.editor.yank,
            "M-b": self.editor.word_left, "kLFT5": self.editor.word_left,
            "kLFT3": self.editor.word_left, "M-f": self.editor.word_right,
            "kRIT5": self.editor.word_right, "kRIT3": self.editor.word_right,
            "M-d": self.editor.kill_word_after, "M-\x7f": self.editor.kill_word_back,
            "M-\x08": self.editor.kill_word_back,
            "KEY_UP": self.history_older, "\x10": self.history_older,
            "KEY_DOWN": self.history_newer, "\x0e": self.history_newer,
            "KEY_PPAGE": self.page_up, "KEY_NPAGE": self.page_down,
            "KEY_SR": self.line_up, "KEY_SF": self.line_down,
        }

    # -- the chat ------------------------------------------------------------------------------

    def add(self, text: str, style: str = "chat", stamp: str = "") -> None:
        line = Line(stamp, expand_tabs(sanitize(text, keep="\n\t")), style)
        self.lines.append(line)
        if self.scroll:             # reading back: keep the same rows in view
            self.scroll += len(line_rows(line, self.width))
            self.unseen += 1

    def page_up(self) -> None:
        self.scroll += max(1, self.page - 1)        # a row of the last page stays in view

    def page_down(self) -> None:
        self.scroll = max(0, self.scroll - max(1, self.page - 1))
        if not self.scroll:
            self.unseen = 0

    def line_up(self) -> None:
        self.scroll += 1

    def line_down(self) -> None:
        self.scroll = max(0, self.scroll - 1)
        if not self.scroll:
            self.unseen = 0

    # -- keys ----------------------------------------------------------------------------------

    def history_older(self) -> None:
        entry = self.history.older(self.editor.text)
        if entry is not None:
            self.editor.set(entry)

    def history_newer(self) -> None:
        entry = self.history.newer()
        if entry is not None:
            self.editor.set(entry)

    def key(self, key: str) -> List[Event]:
        """One key: a character (as curses' get_wch returns it) or a curses key name
        ("KEY_LEFT", "kLFT5"). Returns what the client must do, usually nothing."""
        if self._escape is not None:
            return self._escape_key(key)
        if key == "\x1b":
            self._escape = ""
            return []
        if key in ("\n", "\r", "KEY_ENTER"):
            line = self.editor.take()
            self.history.add(line)
            self.input_start = 0
            self.scroll = self.unseen = 0           # back to the latest, to see it arrive
            return [Submit(line)]
        if key == "\t":
            return [CycleRoom(1)]
        if key == "KEY_BTAB":
            return [CycleRoom(-1)]
        if key == "\x0c":
            return [Repaint()]
        if key == "\x04":                          # Ctrl-D: delete, or end of input
            if not self.editor.text:
                return [Quit()]
            self.editor.delete()
            return []
        action = self._bindings.get(key)
        if action is not None:
            action()
        elif len(key) == 1 and not is_unsafe(key):  # typed text (controls never go in)
            self.editor.insert(key)
        return []

    def _escape_key(self, key: str) -> List[Event]:
        """After ESC: Alt+key (ESC then the key), or the rest of a CSI ("[") or SS3 ("O")
        sequence that curses did not turn into a key itself."""
        sequence = self._escape + key
        self._escape = None
        if len(key) > 1:                            # a key name: ESC was pressed on its own
            return self.key(key)
        if sequence == key:                         # the first character after ESC
            if key in ("[", "O"):
                self._escape = key
                return []
            return self.key("M-" + key)             # Alt+key: readline's Meta
        if sequence[0] == "O" or "\x40" <= key <= "\x7e" or len(sequence) > MAX_ESCAPE_CHARS:
            name = ESCAPE_KEYS.get(sequence)        # the sequence is complete
            return self.key(name) if name else []   # an unknown key does nothing
        self._escape = sequence                     # parameters: more to come
        return []

    # -- layout --------------------------------------------------------------------------------

    def render(self, rows: int, cols: int) -> Frame:
        if rows < MIN_ROWS or cols < MIN_COLS:
            return Frame([(fit("window too small", cols), "error")]
                         + [("", "chat")] * (rows - 1), (0, 0))
        height = rows - 2
        self.width, self.page = cols, height
        chat = self._chat_rows(height, cols)
        status = fit(self._status_text(), cols)
        prompt, shown, cursor_col = self._input_row(cols)
        frame_rows = chat + [(status + " " * (cols - cells(status)), "status"),
                             (prompt + shown, "input")]
        return Frame(frame_rows, (rows - 1, cursor_col))

    def _chat_rows(self, height: int, width: int) -> List[Tuple[str, str]]:
        """The rows in view, bottom-aligned, `scroll` rows up from the newest."""
        wanted = self.scroll + height
        tail: List[List[Tuple[str, str]]] = []      # lines' rows, newest first
        count = 0
        for line in reversed(self.lines):
            tail.append([(row, line.style) for row in line_rows(line, width)])
            count += len(tail[-1])
            if count >= wanted:
                break
        else:                                       # every line is in: no scrolling past it
            self.scroll = min(self.scroll, max(0, count - height))
            if not self.scroll:
                self.unseen = 0
        found = [row for line in reversed(tail) for row in line]
        end = len(found) - self.scroll
        view = found[max(0, end - height):end]
        return [("", "chat")] * (height - len(view)) + view

    def _status_text(self) -> str:
        status = self.status
        parts = []
        if self.scroll:
            parts.append("-- more: %d new --" % self.unseen if self.unseen else "-- scrolled --")
        parts.append(status.state)
        parts.append("%s @ %s" % (status.name, status.server))
        parts.append("room: [%s]" % status.current if status.current is not None
                     else "no room: /join ROOM")
        if status.rooms:
            parts.append("in: " + ", ".join(status.rooms))
        return sanitize(" " + " | ".join(parts))

    def prompt(self, cols: int) -> str:
        room = self.status.current
        if room is None:
            return "> "
        text = sanitize(room)
        longest = max(1, cols // PROMPT_SHARE - 3)
        if cells(text) > longest:
            text = fit(text, longest - 1) + "\u2026"
        return "[%s] " % text

    def _input_row(self, cols: int) -> Tuple[str, str, int]:
        """The prompt, the part of the line shown and the cursor's column. The line scrolls
        sideways so that the cursor stays in view, with the last cell kept for it."""
        prompt = self.prompt(cols)
        room = cols - cells(prompt) - 1
        text, cursor = sanitize(self.editor.text), self.editor.cursor
        if cursor < self.input_start:
            self.input_start = max(0, cursor - room // 2)
        start, used = cursor, 0                     # the leftmost start keeping the cursor in
        while start > 0 and used + char_cells(text[start - 1]) <= room:
            start -= 1
            used += char_cells(text[start])
        self.input_start = max(self.input_start, start)
        shown = fit(text[self.input_start:], room)
        return prompt, shown, cells(prompt) + cells(text[self.input_start:cursor])
