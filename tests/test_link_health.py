"""The MQTT link's connection-health decisions (edge_gateway/link_health.py), without a broker: each
test feeds observations at explicit times and checks the exact verdicts. The same behaviour against
real brokers is in tests/test_uplink_refusals.py."""

from __future__ import annotations

from edge_gateway.link_health import BIRTH, SHORT_S, STABLE_S, TAKEN_OVER, LinkHealth, Verdict

EOF_CLOSE = 7  # paho's "connection lost" code on a plain close: not a DISCONNECT from the broker


def close(h: LinkHealth, now: float, pending: set[int], unacked: set[int], code: int | None = EOF_CLOSE,
          from_server: bool = False, errored: bool = False) -> Verdict:
    return h.judge(now, pending, unacked, code, from_server, errored)


def test_a_message_alone_on_three_closes_right_after_a_send_is_poison_and_the_next_start_is_slow():
    h = LinkHealth()
    verdicts = []
    for i in range(3):
        t = 100.0 * i
        h.connected(t)
        h.sent(t + 10)  # past SHORT_S after the CONNACK: not a takeover
        verdicts.append(close(h, t + 11, {BIRTH, 4}, {4, 5, 6}))
    assert verdicts[:2] == [Verdict(), Verdict()]
    assert verdicts[2] == Verdict(poison=4, poison_closes=3)
    # the poisoned token, refused, is no suspect any more: it would never be answered, and kept in the
    # slow start it held the window at one message plus one per answer until the link stayed up 30 s
    h.connected(300.0)
    assert h.window(20) == 20


def test_another_message_in_between_starts_the_poison_count_again():
    h = LinkHealth()
    for t, token in ((0.0, 4), (100.0, 4), (200.0, 5), (300.0, 5)):
        h.connected(t)
        h.sent(t + 10)
        assert close(h, t + 11, {token}, {4, 5}) == Verdict()
    h.connected(400.0)
    h.sent(410.0)
    assert close(h, 411.0, {5}, {4, 5}) == Verdict(poison=5, poison_closes=3)


def test_a_close_long_after_the_last_send_is_not_suspect():
    h = LinkHealth()
    for t in (0.0, 100.0, 200.0, 300.0):
        h.connected(t)
        h.sent(t + 10)
        assert close(h, t + 10 + SHORT_S, {4}, {4}) == Verdict()
    h.connected(400.0)
    assert h.window(20) == 20  # no slow start either


def test_the_slow_start_allows_one_more_per_answer_until_the_suspects_are_through():
    h = LinkHealth()
    h.connected(0.0)
    h.sent(10.0)
    assert close(h, 10.5, {1, 2, 3}, {1, 2, 3, 4}) == Verdict()
    h.connected(20.0)
    assert h.window(20) == 1
    h.acked(1)
    assert h.window(20) == 2
    h.acked(4)  # not a suspect, but an answer all the same
    h.acked(2)
    assert h.window(20) == 4 and h.window(3) == 3  # never above the broker's Receive Maximum
    h.acked(3)
    assert h.window(20) == 20


def test_a_link_level_message_is_given_up_on_its_second_failed_connection():
    h = LinkHealth()
    h.watch(7)
    h.connected(0.0)
    h.sent(10.0)
    assert close(h, 10.5, {7}, {7}) == Verdict()
    h.connected(20.0)
    h.sent(30.0)
    # given up, so not also counted towards poison or the slow start
    assert close(h, 30.5, {7}, {7}) == Verdict(gave_up=(7,))
    h.connected(40.0)
    assert h.window(20) == 20  # nothing left to probe for: 7 is no longer waited for


def test_the_birth_is_left_out_after_two_suspect_closes_until_a_connection_stays_up():
    h = LinkHealth()
    assert h.send_birth
    for t, expected in ((0.0, Verdict()), (100.0, Verdict(birth_dropped=True)), (200.0, Verdict())):
        h.connected(t)
        h.sent(t + 10)
        assert close(h, t + 11, {BIRTH}, set()) == expected
    assert not h.send_birth
    h.connected(300.0)
    assert h.settle(300.0 + STABLE_S) and h.send_birth


def test_an_answered_birth_resets_its_count():
    h = LinkHealth()
    for t in (0.0, 100.0, 200.0):
        h.connected(t)
        h.sent(t + 10)
        assert close(h, t + 11, {BIRTH}, set()) == Verdict()
        h.birth_acked()
    assert h.send_birth


def test_three_short_quiet_closes_name_a_takeover_once():
    h = LinkHealth()
    verdicts = []
    for t in (0.0, 10.0, 20.0, 30.0):
        h.connected(t)
        verdicts.append(close(h, t + 1, set(), set()))
    assert verdicts == [Verdict(), Verdict(), Verdict(takeovers=3, name_takeover=True), Verdict(takeovers=4)]
    h.connected(40.0)
    assert close(h, 41.0, set(), set(), errored=True) == Verdict()  # paho reported an error: not a takeover
    for t in (50.0, 60.0):
        h.connected(t)
        assert close(h, t + 1, set(), set()) == Verdict()


def test_disconnect_0x8e_is_a_takeover_even_with_messages_pending_and_is_not_suspect():
    h = LinkHealth()
    verdicts = []
    for t in (0.0, 10.0, 20.0):
        h.connected(t)
        h.sent(t + 0.5)
        verdicts.append(close(h, t + 1, {4}, {4}, code=TAKEN_OVER, from_server=True))
    assert verdicts == [Verdict(), Verdict(), Verdict(takeovers=3, name_takeover=True)]
    h.connected(30.0)
    assert h.window(20) == 20  # no slow start: the broker said why it closed


def test_a_disconnect_from_the_broker_with_nothing_pending_is_not_a_takeover():
    h = LinkHealth()
    for t in (0.0, 10.0, 20.0):
        h.connected(t)
        assert close(h, t + 1, set(), set(), code=0x89, from_server=True) == Verdict()


def test_only_a_stable_connection_resets_the_backoff_and_the_takeover_naming():
    h = LinkHealth(stable_after_s=2.0)
    assert [h.next_attempt() for _ in range(3)] == [0, 1, 2]
    h.connected(10.0)
    assert not h.settle(11.9) and h.attempt == 3
    assert h.settle(12.0) and h.attempt == 0 and h.stable
    assert not h.settle(50.0)  # once per connection
    for t in (60.0, 70.0, 80.0):
        h.connected(t)
        v = close(h, t + 1, set(), set())
    assert v == Verdict(takeovers=3, name_takeover=True)
    h.connected(90.0)
    assert h.settle(92.0)
    for t in (100.0, 110.0, 120.0):
        h.connected(t)
        v = close(h, t + 1, set(), set())
    assert v == Verdict(takeovers=3, name_takeover=True)  # said again after a stable connection


def test_a_refused_message_is_not_waited_for():
    h = LinkHealth()
    h.watch(7)
    h.connected(0.0)
    h.sent(10.0)
    assert close(h, 10.5, {7, 8}, {7, 8}) == Verdict()
    h.forget(7)
    h.forget(8)
    h.connected(20.0)
    assert h.window(20) == 20
    h.sent(30.0)
    assert close(h, 30.5, {7}, set()) == Verdict()  # 7 no longer watched: not given up twice
