"""A Bus (sansio/bus.py) with both links up, and Redis played by hand: for tests/test_bus_core.py
and tests/test_bus_links.py. The RESP here is written independently of sansio/resp.py."""
import unittest

from sansio import bus_links, bus_scripts
from sansio.bus import Bus, Chats, LocalState
from sansio.wire import chat_message


def resp(value) -> bytes:
    """A RESP2 reply, written independently of sansio/resp.py."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(resp(item) for item in value)


def said(ref, seq, text, node="other", conn=7, name="ann") -> bytes:
    """One chat as the chats script publishes and logs it: a batch of one."""
    return batch(ref, seq, [(conn, name, text)], node)


def batch(ref, first, chats, node="other") -> bytes:
    """Chats (conn, name, text), numbered from `first`, as the chats script publishes them (the
    CONN of each is not in it: the sending node knows its chats by their numbers)."""
    parts = [chat_message(ref, name, text) for _conn, name, text in chats]
    return b"B %d %d %s %d\n" % (ref, first, node.encode(), len(parts)) + b"".join(parts)


def texts_of(chats: Chats) -> list:
    """The MESSAGE of each chat of a batch handed out."""
    return [one[one.index("\nMESSAGE: ") + 10:]
            for one in chats.data.decode().split("\n\n")[:-1]]


def pushed(event: bytes) -> bytes:
    return resp([b"message", b"p:events", event])


class BusHarness:
    """A Bus with both links up and in step, and helpers to play Redis's part."""

    def __init__(self, test: unittest.TestCase, prefix: str = "p") -> None:
        self.test = test
        self.now = 100.0
        self.bus = Bus(prefix, "me", lambda: LocalState([], [], {}))
        for name in bus_links.LINKS:
            self.bus.connecting(name, self.now)
            self.bus.link_up(name, self.now)
        self.sent = {name: b"" for name in bus_links.LINKS}
        self.take_sent()
        self.reply(*["ok-sha"] * len(bus_scripts.SCRIPTS))                 # SCRIPT LOAD, each
        self.reply([b"epoch1", 0, 0])                              # the epoch script
        self.reply([0, 0])                         # the sync script: none added, none removed
        self.reply([1, 0])                  # the first heartbeat (sent as soon as in step)
        self.bus.receive("sub", resp([b"subscribe", prefix.encode() + b":events", 1]), self.now)
        test.assertTrue(self.bus.up)
        test.assertTrue(self.bus.subscribed)
        self.events()
        self.take_sent()

    def reply(self, *values) -> None:
        self.bus.receive("cmd", b"".join(resp(v) for v in values), self.now)

    def publish(self, *events: bytes) -> None:
        self.bus.receive("sub", b"".join(pushed(e) for e in events), self.now)

    def take_sent(self) -> dict:
        for name in bus_links.LINKS:
            self.sent[name] += self.bus.data_to_send(name)
        sent, self.sent = self.sent, {name: b"" for name in bus_links.LINKS}
        return sent

    def events(self) -> list:
        return self.bus.take_events()

    def texts(self) -> list:
        return [text for e in self.events() if isinstance(e, Chats) for text in texts_of(e)]

