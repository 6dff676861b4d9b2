"""Who may open a UDP session, and who makes way when the table is full (docs/UDP.md, Limits).

The UDP endpoint (sansio/udp_server.py) asks `refusal(host)` before it makes a session for a
handshake that passed the cookie check, and `maybe_victim()` when its table is full: a newcomer
takes the place of a session of the address that holds the most, so an address that floods the
table pays for every newcomer, and an address holding one session keeps it while any other
holds more. No sockets, no clock, nothing of the wire: sessions are any hashable objects, named
with their address (host) by the caller. Imports nothing of the project but policy/shares.py.
"""
from typing import Generic, Hashable, Optional, TypeVar

from policy.shares import Shares

Session = TypeVar("Session", bound=Hashable)

# What refusal() answers.
REFUSE = "refuse"   # the address holds its cap: tell the client no (REJECT)
WAIT = "wait"       # too many handshakes in flight: no answer, the client's next HELLO retries


class Admission(Generic[Session]):
    """The sessions and the unconfirmed sessions of every address, their caps, and each
    address's sessions in the order they would make way: never proven (no request delivered
    yet) first, oldest first; then proven, heard from longest ago first. Every call is O(1)."""

    __slots__ = ("per_address", "unconfirmed_cap", "unconfirmed_per_address", "hosts",
                 "unconfirmed_hosts", "unconfirmed", "unproven", "proven")

    def __init__(self, per_address: int, unconfirmed_cap: int,
                 unconfirmed_per_address: int) -> None:
        self.per_address = per_address
        self.unconfirmed_cap = unconfirmed_cap
        self.unconfirmed_per_address = unconfirmed_per_address
        self.hosts: Shares[str, Session] = Shares()
        self.unconfirmed_hosts: Shares[str, Session] = Shares()
        self.unconfirmed = 0
        self.unproven: Shares[str, Session] = Shares()     # in the order they came
        self.proven: Shares[str, Session] = Shares()       # in the order last heard from

    def refusal(self, host: str) -> Optional[str]:
        """Why no session may be made for `host` now, whatever room the table has: REFUSE or
        WAIT (above); None if it may."""
        if self.hosts.count(host) >= self.per_address:
            return REFUSE
        if self.unconfirmed >= self.unconfirmed_cap \
                or self.unconfirmed_hosts.count(host) >= self.unconfirmed_per_address:
            return WAIT
        return None

    def added(self, host: str, session: Session) -> None:
        """A new session, unconfirmed until `confirmed()`, unproven until `proved()`."""
        self.hosts.add(host, session)
        self.unconfirmed_hosts.add(host, session)
        self.unconfirmed += 1
        self.unproven.add(host, session)

    def confirmed(self, host: str, session: Session) -> None:
        self.unconfirmed_hosts.remove(host, session)
        self.unconfirmed -= 1

    def proved(self, host: str, session: Session) -> None:
        """The session delivered a request: from now on it makes way only by being idle."""
        self.unproven.remove(host, session)
        self.proven.remove(host, session)
        self.proven.add(host, session)

    def heard(self, host: str, session: Session) -> None:
        """The peer of a proven session was heard from (an unproven one keeps its place)."""
        if self.proven.holds(host, session):
            self.proven.remove(host, session)
            self.proven.add(host, session)

    def removed(self, host: str, session: Session, was_confirmed: bool) -> None:
        self.hosts.remove(host, session)
        self.unproven.remove(host, session)
        self.proven.remove(host, session)
        if not was_confirmed:
            self.confirmed(host, session)

    def maybe_victim(self) -> Optional[Session]:
        """The session to end for a newcomer when the table is full: of the address holding the
        most, the first in the order above. None if there is no session at all."""
        host = self.hosts.busiest()
        if host is None:
            return None
        for order in (self.unproven, self.proven):
            for session in order.held(host):
                return session
        return None
