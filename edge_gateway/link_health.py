"""Whether the MQTT link's connections are healthy, and what to do when they are not: the decisions
of uplink.py's network thread, kept apart from its I/O so that they can be tested without a broker.

:class:`LinkHealth` is fed observations (monotonic times, message tokens, a DISCONNECT's reason code)
and returns decisions (docs/uplink.md, "Refusals"):

- a connection closed within :data:`SHORT_S` of a send, with messages unacknowledged, is *suspect*:
  the next connections slow-start from one message outstanding (:meth:`LinkHealth.window`), and a
  message alone unacknowledged at :data:`SUSPECT_AFTER` suspect closes in a row is poison;
- a link-level message (status, command reply) unacknowledged on two connections is given up, and
  so is the birth after two suspect closes, until a connection stays up;
- :data:`SUSPECT_AFTER` closes in a row within :data:`SHORT_S` of the CONNACK, with nothing pending,
  look like a session takeover (another client with our client id);
- only a connection up :data:`STABLE_S` resets the reconnect backoff and all of the above, so a
  broker that accepts connections and closes them again is not stormed.

Not here: paho, sockets, threads, logging, the messages themselves (uplink.py keeps them, acts on
a :class:`Verdict` and says why), nor the backoff formula (backoff.py). Not thread-safe: the link
calls it from its network thread, and under its lock where another thread can reach the same state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet

STABLE_S = 30.0  # a connection up this long resets the reconnect backoff (and the takeover count)
SHORT_S = 5.0  # a connection closed sooner than this after a send (or its CONNACK: takeover) is suspect
SUSPECT_AFTER = 3  # suspect connections in a row before a message is refused as poison / a takeover is named
TAKEN_OVER = 0x8E  # DISCONNECT reason code "Session taken over" (MQTT 5)
BIRTH = 0  # the token of the birth message (message tokens start at 1)


@dataclass(frozen=True)
class Verdict:
    """What :meth:`LinkHealth.judge` decided about a connection that ended; the link acts on it."""

    gave_up: tuple[int, ...] = ()  # link-level tokens unacknowledged on two connections: not sent again
    birth_dropped: bool = False  # the birth has just failed twice: left out until a connection stays up
    poison: int = 0  # a token to refuse as POISON (0: none)
    poison_closes: int = 0  # suspect closes in a row with that token alone unacknowledged
    takeovers: int = 0  # short closes in a row, once SUSPECT_AFTER or more (else 0): a session takeover
    name_takeover: bool = False  # the first such verdict since the last stable connection: say it


class LinkHealth:
    """The link's memory across connections: reconnect attempts, suspect closes, the slow start.

    Times are arguments (monotonic seconds), so that every decision is deterministic under test."""

    def __init__(self, stable_after_s: float = STABLE_S) -> None:
        self.stable_after_s = stable_after_s
        self.attempt = 0  # reconnect attempts since the last stable connection: the backoff's exponent
        self.stable = False  # the current connection has been up stable_after_s
        self._up_since = 0.0
        self._last_send = 0.0
        self._own: dict[int, int] = {}  # link-level tokens -> connections that failed with it unacked
        self._probe: set[int] = set()  # left unacknowledged by a suspect close: the window starts from 1
        self._probe_cap = 1  # while probing: messages that may be outstanding, one more per answer
        self._suspect = (0, 0)  # (token, suspect closes in a row with it alone unacknowledged)
        self._birth_fails = 0  # suspect closes in a row with only the birth unacknowledged
        self._takeovers = 0  # short connections in a row the broker closed with nothing unacknowledged
        self._takeover_said = False

    # --- observations -------------------------------------------------------------------------

    def next_attempt(self) -> int:
        """The attempt number to back off for before the next connect (then one more)."""
        n = self.attempt
        self.attempt += 1
        return n

    def connected(self, now: float) -> None:
        """A CONNACK accepted the session: the slow start (if any) begins again from one message."""
        self._probe_cap = 1
        self._up_since = now
        self.stable = False

    def settle(self, now: float) -> bool:
        """Session up at ``now``: True when it has just become stable, which forgives the past (the
        backoff, takeovers, the birth's failures, the slow start)."""
        if self.stable or now - self._up_since < self.stable_after_s:
            return False
        self.stable = True
        self.attempt = self._takeovers = self._birth_fails = 0
        self._takeover_said = False
        self._probe.clear()
        return True

    def sent(self, now: float) -> None:
        """A PUBLISH went to paho at ``now`` (a close soon after is suspect)."""
        self._last_send = now

    def watch(self, token: int) -> None:
        """``token`` is a link-level message: sent again at most once after a failed connection."""
        self._own[token] = 0

    def acked(self, token: int) -> None:
        """The broker answered ``token`` (any reason code): while slow-starting, one more may go."""
        self._own.pop(token, None)
        if self._probe:
            self._probe.discard(token)
            self._probe_cap += 1

    def birth_acked(self) -> None:
        self._birth_fails = 0

    def forget(self, token: int) -> None:
        """``token`` will not be sent again (refused locally): nothing to wait for."""
        self._own.pop(token, None)
        self._probe.discard(token)

    # --- decisions ----------------------------------------------------------------------------

    @property
    def send_birth(self) -> bool:
        """False once the birth failed on two suspect connections, until one stays up."""
        return self._birth_fails < 2

    def window(self, cap: int) -> int:
        """Messages that may be outstanding, given the broker's ``cap`` (its Receive Maximum)."""
        return min(cap, self._probe_cap) if self._probe else cap

    def judge(self, now: float, pending: set[int], unacked: AbstractSet[int], code: int | None,
              from_server: bool, errored: bool) -> Verdict:
        """A connection the gateway did not close has ended at ``now``.

        ``pending``: tokens sent on it and unanswered (:data:`BIRTH` for the birth); ``unacked``: the
        tokens of every message the link still holds; ``code``: the DISCONNECT's reason code, if
        any; ``from_server``: the broker sent a DISCONNECT; ``errored``: paho reported an error.

        A close within SHORT_S of a send, with messages unacknowledged, is suspect: whatever the
        broker does unannounced with one of them (a size limit, an ACL that closes under 3.1.1),
        closing may also have lost the acknowledgements of the others. So the next connections start
        from one message outstanding, after the birth's answer, and allow one more per answer (a
        slow start: a window of n again after log2(n) round trips) until those are through; the
        message that closes them is then the oldest, and alone on the wire. Closes within SHORT_S of
        the CONNACK with nothing pending look like a session takeover."""
        suspect = bool(pending) and code != TAKEN_OVER and now - self._last_send < SHORT_S
        gave_up = []
        for token in pending & self._own.keys():
            self._own[token] += 1
            if self._own[token] >= 2:
                del self._own[token]
                self._probe.discard(token)
                gave_up.append(token)
        data = (pending & unacked) - set(gave_up)
        birth_dropped = False
        if suspect and BIRTH in pending and not data:
            self._birth_fails += 1
            birth_dropped = self._birth_fails == 2
        poison = closes = 0
        if suspect and len(data) == 1:
            (token,) = data
            n = self._suspect[1] + 1 if self._suspect[0] == token else 1
            self._suspect = (token, n)
            if n >= SUSPECT_AFTER:
                self._suspect = (0, 0)
                poison, closes = token, n
                self.forget(token)
        else:
            self._suspect = (0, 0)
        if suspect:
            self._probe |= data - {poison}  # a refused poison is through: it must not hold the window down
        # a takeover: DISCONNECT 0x8E, or (Mosquitto, 3.1.1) a plain close with nothing pending and no error
        short = now - self._up_since < SHORT_S
        taken = short and (code == TAKEN_OVER or not (from_server or suspect or errored))
        self._takeovers = self._takeovers + 1 if taken else 0
        takeovers, name = 0, False
        if self._takeovers >= SUSPECT_AFTER:
            takeovers = self._takeovers
            name, self._takeover_said = not self._takeover_said, True
        return Verdict(tuple(gave_up), birth_dropped, poison, closes, takeovers, name)
