"""The Engine.IO session state machine, driven with explicit ``now`` values: no clock, no trio."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.engineio import (
    CloseReason,
    EngineIOProtocolError,
    EngineSession,
    IllegalTransition,
    PollConflict,
    SessionState,
)
from callbox.engineio.session import CLOSE_FLUSH_TIMEOUT, TRANSITIONS, UPGRADE_TIMEOUT, Effect, Input, Sent

S = SessionState
INTERVAL = 25.0
TIMEOUT = 20.0
T0 = 1000.0  # sessions are made at this time: deadlines are absolute on the caller's clock


def make(*, websocket: bool = False, now: float = T0, max_outbox_bytes: int = 10_000, **kw: Any) -> EngineSession:
    return EngineSession(
        "sid123",
        websocket=websocket,
        now=now,
        ping_interval=kw.get("ping_interval", INTERVAL),
        ping_timeout=kw.get("ping_timeout", TIMEOUT),
        max_outbox_bytes=max_outbox_bytes,
        **{k: v for k, v in kw.items() if k in ("event_rate", "event_burst")},
    )


def upgraded(now: float = T0) -> EngineSession:
    """A session opened over polling and upgraded to WebSocket."""
    s = make(now=now)
    s.begin_upgrade(now)
    assert s.receive_ws_text("2probe", now) == (None, "3probe")
    assert s.receive_ws_text("5", now) == (None, None)
    assert s.state is S.WEBSOCKET
    return s


@pytest.fixture(params=["polling", "websocket"])
def session(request: pytest.FixtureRequest) -> EngineSession:
    return make(websocket=request.param == "websocket")


def pong(s: EngineSession, now: float) -> None:
    if s.state is S.WEBSOCKET:
        assert s.receive_ws_text("3", now) == (None, None)
    else:
        assert s.receive_payload(b"3", now) == []


# -- handshake ----------------------------------------------------------------------------------


def test_handshake_packet_polling() -> None:
    s = make()
    assert s.handshake_packet(upgrades=["websocket"], max_payload=1_000_000) == (
        '0{"sid":"sid123","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'
    )


def test_handshake_packet_direct_websocket() -> None:
    s = make(websocket=True, ping_interval=0.3, ping_timeout=0.2)
    assert s.handshake_packet(upgrades=[], max_payload=100) == (
        '0{"sid":"sid123","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":100}'
    )


def test_new_sessions() -> None:
    p = make()
    assert (p.state, p.is_open, p.has_output, p.close_reason) == (S.POLLING, True, False, None)
    w = make(websocket=True)
    assert (w.state, w.is_open, w.has_output, w.close_reason) == (S.WEBSOCKET, True, False, None)
    assert p.next_deadline() == w.next_deadline() == T0 + INTERVAL


# -- heartbeat ----------------------------------------------------------------------------------


def test_ping_due_at_ping_interval(session: EngineSession) -> None:
    session.handle_timeout(T0 + INTERVAL - 0.001)
    assert not session.has_output
    assert session.next_deadline() == T0 + INTERVAL
    session.handle_timeout(T0 + INTERVAL)
    assert session.take_output() == ["2"]
    assert session.next_deadline() == T0 + INTERVAL + TIMEOUT
    assert session.is_open


def test_no_pong_closes_after_ping_timeout(session: EngineSession) -> None:
    session.handle_timeout(T0 + INTERVAL)
    session.take_output()
    session.handle_timeout(T0 + INTERVAL + TIMEOUT - 0.001)
    assert session.is_open and not session.has_output  # no second ping while one is unanswered
    session.handle_timeout(T0 + INTERVAL + TIMEOUT)
    assert session.state is S.CLOSED
    assert session.close_reason is CloseReason.PING_TIMEOUT
    assert session.next_deadline() == math.inf
    assert not session.has_output


def test_fresh_session_that_never_answers_is_gone_by_interval_plus_timeout(session: EngineSession) -> None:
    # The caller sleeps until each deadline and calls handle_timeout then (a late wake-up too).
    session.handle_timeout(session.next_deadline() + 0.5)
    assert session.has_output
    assert session.next_deadline() == T0 + INTERVAL + 0.5 + TIMEOUT  # the whole timeout, from the late ping
    session.handle_timeout(session.next_deadline())
    assert session.state is S.CLOSED and session.close_reason is CloseReason.PING_TIMEOUT


def test_ping_not_answered_but_polled_still_times_out() -> None:
    s = make()
    s.begin_poll(T0)
    s.handle_timeout(T0 + INTERVAL)
    assert s.poll_ready
    assert s.finish_poll() == b"2"
    s.handle_timeout(T0 + INTERVAL + TIMEOUT)
    assert s.state is S.CLOSED and s.close_reason is CloseReason.PING_TIMEOUT


def test_ping_over_polling_goes_after_what_was_queued() -> None:
    s = make()
    s.send("hello")
    s.handle_timeout(T0 + INTERVAL)
    s.begin_poll(T0 + INTERVAL)
    assert s.poll_ready
    assert s.finish_poll() == b"4hello\x1e2"


def test_pong_moves_the_next_ping(session: EngineSession) -> None:
    session.handle_timeout(T0 + INTERVAL)
    session.take_output()
    pong(session, T0 + 30)
    assert session.next_deadline() == T0 + 30 + INTERVAL
    session.handle_timeout(T0 + INTERVAL + TIMEOUT)  # the old pong deadline: nothing happens
    assert session.is_open and not session.has_output
    session.handle_timeout(T0 + 30 + INTERVAL)
    assert session.take_output() == ["2"]
    assert session.next_deadline() == T0 + 30 + INTERVAL + TIMEOUT


def test_unsolicited_pong_changes_nothing(session: EngineSession) -> None:
    pong(session, T0 + 10)
    assert session.next_deadline() == T0 + INTERVAL
    session.handle_timeout(T0 + INTERVAL)
    assert session.take_output() == ["2"]
    pong(session, T0 + 26)
    pong(session, T0 + 40)  # a second pong for the same ping: unsolicited
    assert session.next_deadline() == T0 + 26 + INTERVAL
    assert session.is_open


def test_heartbeat_through_several_rounds() -> None:
    s = make(websocket=True)
    now = T0
    for _ in range(5):
        now = s.next_deadline()
        s.handle_timeout(now)
        assert s.take_output() == ["2"]
        now += 1.0
        pong(s, now)
        assert s.next_deadline() == now + INTERVAL
    assert s.is_open


def test_pong_during_upgrade_over_polling_counts() -> None:
    s = make()
    s.begin_upgrade(T0 + 20)
    s.handle_timeout(T0 + INTERVAL)
    assert s.state is S.PROBING
    assert s.take_output() == ["2"]
    assert s.receive_payload(b"3", T0 + 27) == []
    assert s.next_deadline() == T0 + 20 + UPGRADE_TIMEOUT  # the upgrade deadline comes first
    s.upgrade_failed()
    assert s.next_deadline() == T0 + 27 + INTERVAL


# -- sending and receiving ----------------------------------------------------------------------


def test_polling_round_trip() -> None:
    s = make()
    s.begin_poll(T0)
    assert not s.poll_ready  # held until something is queued
    assert s.send('2["hello"]') is Sent.QUEUED
    assert s.send(b"\x01\x02\x03") is Sent.QUEUED
    assert s.send("") is Sent.QUEUED
    assert s.poll_ready
    assert s.finish_poll() == b'42["hello"]\x1ebAQID\x1e4'
    assert not s.poll_ready and not s.has_output
    s.begin_poll(T0 + 1)  # the next GET is not a conflict
    assert not s.poll_ready


def test_finish_poll_body_is_utf8() -> None:
    s = make()
    s.begin_poll(T0)
    s.send("héllo €😀")
    assert s.finish_poll() == "4héllo €😀".encode()


def test_websocket_output() -> None:
    s = make(websocket=True)
    s.send("a")
    s.send(b"\x00")
    assert s.take_output() == ["4a", b"\x00"]
    assert s.take_output() == []


def test_receive_payload() -> None:
    s = make()
    assert s.receive_payload(b'42["a"]\x1ebAQI=\x1e6\x1e4', T0) == ['2["a"]', b"\x01\x02", ""]
    assert s.is_open


def test_receive_websocket_frames() -> None:
    s = make(websocket=True)
    assert s.receive_ws_text('42["a"]', T0) == ('2["a"]', None)
    assert s.receive_ws_text("4", T0) == ("", None)
    assert s.receive_ws_text("6", T0) == (None, None)
    assert s.receive_ws_binary(b"\x01", 0.0) == b"\x01"
    assert s.is_open


@pytest.mark.parametrize("body", [b"0{}", b"2", b"2probe", b"5", b"4a\x1e5", b"", b"7", b"4a\x1e", b"b!!", b"4\xff"])
def test_bad_packets_over_polling(body: bytes) -> None:
    with pytest.raises(EngineIOProtocolError):
        make().receive_payload(body, T0)


@pytest.mark.parametrize("text", ["0{}", "2", "2probe", "5", "", "7", "bAQ!"])
def test_bad_packets_over_websocket(text: str) -> None:
    s = make(websocket=True)
    with pytest.raises(EngineIOProtocolError):
        s.receive_ws_text(text, T0)


def test_base64_binary_is_taken_on_every_transport() -> None:
    # engine.io-client's forceBase64 sends binary over WebSocket as a text frame b + base64.
    assert make(websocket=True).receive_ws_text("bAQI=", T0) == (b"\x01\x02", None)
    assert make().receive_payload(b"bAQI=\x1e4x", T0) == [b"\x01\x02", "x"]


@pytest.mark.parametrize("websocket", [True, False])
def test_a_base64_client_is_sent_binary_as_text(websocket: bool) -> None:
    s = EngineSession("sid", websocket=websocket, now=T0, ping_interval=INTERVAL, ping_timeout=TIMEOUT,
                      max_outbox_bytes=10_000, base64=True)
    s.send(b"\x01\x02")
    s.send("x")
    assert s.take_output() == ["bAQI=", "4x"]  # each a WebSocket text frame, or a polling record
    plain = make(websocket=True)
    plain.send(b"\x01\x02")
    assert plain.take_output() == [b"\x01\x02"]  # a binary frame


def test_close_from_client_over_polling_releases_pending_get_with_noop() -> None:
    s = make()
    s.begin_poll(T0)
    assert s.receive_payload(b"4a\x1e1\x1e4b", T0) == ["a"]  # nothing after the close
    assert s.state is S.CLOSED and s.close_reason is CloseReason.CLIENT_CLOSE
    assert s.poll_ready
    assert s.finish_poll() == b"6"
    with pytest.raises(EngineIOProtocolError):  # later requests: 400
        s.begin_poll(T0)
    with pytest.raises(EngineIOProtocolError):
        s.receive_payload(b"4c", T0)
    assert s.send("x") is Sent.NOT_OPEN


def test_close_from_client_over_websocket() -> None:
    s = make(websocket=True)
    s.send("queued")
    assert s.receive_ws_text("1", T0) == (None, None)
    assert s.state is S.CLOSED and s.close_reason is CloseReason.CLIENT_CLOSE
    assert not s.has_output
    assert s.next_deadline() == math.inf
    assert s.receive_ws_text("4late", T0) == (None, None)
    assert s.receive_ws_binary(b"late", 0.0) is None


@pytest.mark.parametrize(("waited", "reason"), [
    (0.0, CloseReason.CLIENT_CLOSE),  # a ping just sent: the pong is simply on its way
    (TIMEOUT / 2 - 0.01, CloseReason.CLIENT_CLOSE),
    (TIMEOUT / 2, CloseReason.TRANSPORT_CLOSE),  # the client gave up on a link that lost our ping
])
def test_a_goodbye_while_our_ping_goes_unanswered_is_a_lost_connection(waited: float, reason: CloseReason) -> None:
    s = make(websocket=True)
    pinged_at = T0 + INTERVAL
    s.handle_timeout(pinged_at)
    assert s.take_output() == ["2"]
    assert s.receive_ws_text("1", pinged_at + waited) == (None, None)
    assert s.close_reason is reason


# -- polling conflicts and aborts ---------------------------------------------------------------


def test_concurrent_poll_conflict() -> None:
    s = make()
    s.send("dropped")
    s.begin_poll(T0)
    with pytest.raises(PollConflict):
        s.begin_poll(T0 + 1)
    assert s.state is S.CLOSING and not s.is_open
    assert s.close_reason is CloseReason.TRANSPORT_ERROR
    assert s.send("x") is Sent.NOT_OPEN
    assert s.poll_ready
    assert s.finish_poll() == b"1"  # the first GET gets the close packet
    assert s.state is S.CLOSED
    with pytest.raises(EngineIOProtocolError):
        s.begin_poll(T0 + 2)


def test_concurrent_post_conflict() -> None:
    # Engine.IO v4: a POST while another is being handled is answered 400 and the session closes.
    s = make()
    s.begin_post(T0)
    assert s.receive_payload(b"4hello", T0) == ["hello"]
    with pytest.raises(PollConflict):
        s.begin_post(T0 + 0.1)
    assert not s.is_open and s.close_reason is CloseReason.TRANSPORT_ERROR
    s.end_post()
    with pytest.raises(EngineIOProtocolError):
        s.begin_post(T0 + 0.2)  # later POSTs: 400, the session is over


def test_posts_one_after_another_are_fine() -> None:
    s = make()
    for i in range(3):
        s.begin_post(T0 + i)
        assert s.receive_payload(b"4m", T0 + i) == ["m"]
        s.end_post()
    assert s.is_open


def test_poll_conflict_unanswered_is_dropped_after_flush_timeout() -> None:
    s = make()
    s.begin_poll(T0)
    with pytest.raises(PollConflict):
        s.begin_poll(T0 + 1)
    assert s.next_deadline() == T0 + 1 + CLOSE_FLUSH_TIMEOUT
    s.handle_timeout(T0 + 1 + CLOSE_FLUSH_TIMEOUT)
    assert s.state is S.CLOSED and s.close_reason is CloseReason.TRANSPORT_ERROR


def test_abort_poll_closes_the_session() -> None:
    s = make()
    s.begin_poll(T0)
    s.send("x")
    s.abort_poll()
    assert s.state is S.CLOSED and s.close_reason is CloseReason.TRANSPORT_CLOSE
    assert not s.has_output
    assert s.send("y") is Sent.NOT_OPEN
    with pytest.raises(EngineIOProtocolError):
        s.begin_poll(T0)


def test_poll_on_a_websocket_session_is_refused() -> None:
    with pytest.raises(EngineIOProtocolError):
        make(websocket=True).begin_poll(T0)
    with pytest.raises(EngineIOProtocolError):
        make(websocket=True).receive_payload(b"4a", T0)


# -- upgrade ------------------------------------------------------------------------------------


def test_upgrade() -> None:
    s = make()
    s.begin_poll(T0)
    s.begin_upgrade(T0)
    assert s.state is S.PROBING and s.is_open
    assert not s.poll_ready
    assert s.receive_ws_text("2probe", T0) == (None, "3probe")
    assert s.poll_ready  # the pending GET is released with a noop ...
    assert s.send("during") is Sent.QUEUED
    assert s.finish_poll() == b"6"  # ... and what is queued waits for the WebSocket
    assert s.has_output
    assert s.receive_payload(b"4from-polling", T0) == ["from-polling"]  # a POST still in flight
    assert s.receive_ws_text("5", T0) == (None, None)
    assert s.state is S.WEBSOCKET
    s.send("after")
    assert s.take_output() == ["4during", "4after"]
    assert s.receive_ws_text("4hi", T0) == ("hi", None)
    with pytest.raises(EngineIOProtocolError):  # a later polling request: 400
        s.begin_poll(T0)
    with pytest.raises(EngineIOProtocolError):
        s.receive_payload(b"4x", T0)


def test_upgrade_with_data_queued_before_the_probe() -> None:
    s = make()
    s.send("early")
    s.begin_upgrade(T0)
    s.begin_poll(T0)
    assert s.poll_ready
    assert s.finish_poll() == b"4early"  # not yet probed: polling still delivers
    s.begin_poll(T0)
    s.receive_ws_text("2probe", T0)
    assert s.finish_poll() == b"6"


def test_upgrade_flushes_pending_ping_on_the_websocket() -> None:
    s = make()
    s.begin_upgrade(T0 + 20)
    s.receive_ws_text("2probe", T0 + 20)
    s.handle_timeout(T0 + INTERVAL)
    assert s.state is S.PROBED
    s.receive_ws_text("5", T0 + INTERVAL)
    assert s.take_output() == ["2"]
    assert s.receive_ws_text("3", T0 + INTERVAL + 1) == (None, None)
    assert s.next_deadline() == T0 + INTERVAL + 1 + INTERVAL


def test_pending_get_is_released_with_noop_once() -> None:
    s = make()
    s.begin_poll(T0)
    s.begin_upgrade(T0)
    s.receive_ws_text("2probe", T0)
    assert s.finish_poll() == b"6"
    s.begin_poll(T0)  # a GET after the noop: served as usual, not released again
    assert not s.poll_ready
    s.send("x")
    assert s.poll_ready
    assert s.finish_poll() == b"4x"


def test_upgrade_timeout_goes_back_to_polling() -> None:
    s = make()
    s.begin_upgrade(T0 + 1)
    assert s.next_deadline() == T0 + 1 + UPGRADE_TIMEOUT  # before the first ping (T0 + 25)
    s.receive_ws_text("2probe", T0 + 2)
    s.handle_timeout(T0 + 1 + UPGRADE_TIMEOUT - 0.001)
    assert s.state is S.PROBED
    s.handle_timeout(T0 + 1 + UPGRADE_TIMEOUT)
    assert s.state is S.POLLING and s.is_open
    assert s.next_deadline() == T0 + INTERVAL
    with pytest.raises(EngineIOProtocolError):  # the stalled probe's late "5" is refused
        s.receive_ws_text("5", T0 + 12)
    s.begin_upgrade(T0 + 13)  # a new attempt is allowed
    assert s.state is S.PROBING


def test_finished_upgrade_has_no_upgrade_deadline() -> None:
    s = upgraded()
    assert s.next_deadline() == T0 + INTERVAL
    s.handle_timeout(T0 + UPGRADE_TIMEOUT)
    assert s.state is S.WEBSOCKET


@pytest.mark.parametrize("prepare", ["upgrading", "probed", "websocket", "direct-websocket", "closing", "closed"])
def test_begin_upgrade_refused(prepare: str) -> None:
    s = make(websocket=prepare == "direct-websocket")
    if prepare in ("upgrading", "probed"):
        s.begin_upgrade(T0)
        if prepare == "probed":
            s.receive_ws_text("2probe", T0)
    elif prepare == "websocket":
        s = upgraded()
    elif prepare == "closing":
        s.close(CloseReason.FORCED_CLOSE, T0)
    elif prepare == "closed":
        s.lost(CloseReason.TRANSPORT_CLOSE)
    before = s.state
    with pytest.raises(EngineIOProtocolError):
        s.begin_upgrade(T0)
    assert s.state is before


@pytest.mark.parametrize(
    "frames",
    [["5"], ["2probe", "2probe"], ["4hello"], ["2probe", "4hello"], ["3"], ["2"], ["1"], [""], ["2probex"], ["6"]],
)
def test_unexpected_frames_while_probing(frames: list[str]) -> None:
    s = make()
    s.begin_upgrade(T0)
    *ok, bad = frames
    for f in ok:
        s.receive_ws_text(f, T0)
    with pytest.raises(EngineIOProtocolError):
        s.receive_ws_text(bad, T0)


def test_binary_frame_while_probing() -> None:
    s = make()
    s.begin_upgrade(T0)
    with pytest.raises(EngineIOProtocolError):
        s.receive_ws_binary(b"x", 0.0)


@pytest.mark.parametrize("probed", [False, True])
def test_upgrade_failed_goes_back_to_polling(probed: bool) -> None:
    s = make()
    s.begin_upgrade(T0)
    if probed:
        s.receive_ws_text("2probe", T0)
    s.upgrade_failed()
    assert s.state is S.POLLING and s.is_open
    s.begin_poll(T0)
    assert not s.poll_ready  # no longer released with a noop
    s.send("x")
    assert s.finish_poll() == b"4x"
    s.begin_upgrade(T0)  # a new attempt starts from scratch: "5" before a probe is refused
    with pytest.raises(EngineIOProtocolError):
        s.receive_ws_text("5", T0)


def test_upgrade_failed_outside_upgrading_changes_nothing() -> None:
    s = make()
    s.upgrade_failed()
    assert s.state is S.POLLING
    w = upgraded()
    w.upgrade_failed()
    assert w.state is S.WEBSOCKET


# -- closing ------------------------------------------------------------------------------------


def test_close_over_websocket() -> None:
    s = make(websocket=True)
    s.send("a")
    s.send(b"\x01")
    s.close(CloseReason.FORCED_CLOSE, T0 + 1)
    assert s.state is S.CLOSING and not s.is_open
    assert s.close_reason is CloseReason.FORCED_CLOSE
    assert s.send("late") is Sent.NOT_OPEN
    assert s.receive_ws_text("4from-client", T0 + 1) == (None, None)  # a closing session takes no messages
    assert s.take_output() == ["4a", b"\x01", "1"]
    assert s.state is S.CLOSED
    assert s.close_reason is CloseReason.FORCED_CLOSE
    assert s.next_deadline() == math.inf


def test_close_over_polling() -> None:
    s = make()
    s.send("a")
    s.close(CloseReason.SERVER_SHUTDOWN, T0)
    s.begin_poll(T0)
    assert s.poll_ready
    assert s.finish_poll() == b"4a\x1e1"
    assert s.state is S.CLOSED and s.close_reason is CloseReason.SERVER_SHUTDOWN
    with pytest.raises(EngineIOProtocolError):
        s.begin_poll(T0)


def test_close_twice_and_after_closed_changes_nothing() -> None:
    s = make(websocket=True)
    s.close(CloseReason.FORCED_CLOSE, T0)
    s.close(CloseReason.SERVER_SHUTDOWN, T0 + 1)
    assert s.close_reason is CloseReason.FORCED_CLOSE
    assert s.next_deadline() == T0 + CLOSE_FLUSH_TIMEOUT
    assert s.take_output() == ["1"]
    s.close(CloseReason.SERVER_SHUTDOWN, T0 + 2)
    assert s.state is S.CLOSED and not s.has_output


def test_closing_session_is_dropped_after_flush_timeout(session: EngineSession) -> None:
    session.close(CloseReason.FORCED_CLOSE, T0 + 24)
    assert session.next_deadline() == T0 + 24 + CLOSE_FLUSH_TIMEOUT
    session.handle_timeout(T0 + 24 + CLOSE_FLUSH_TIMEOUT - 0.001)  # the ping was due at T0 + 25: none
    assert session.state is S.CLOSING
    assert session.has_output  # the close packet, not yet fetched
    session.handle_timeout(T0 + 24 + CLOSE_FLUSH_TIMEOUT)
    assert session.state is S.CLOSED
    assert session.close_reason is CloseReason.FORCED_CLOSE
    assert not session.has_output
    assert session.next_deadline() == math.inf


def test_no_ping_while_closing() -> None:
    s = make(websocket=True)
    s.close(CloseReason.FORCED_CLOSE, T0 + 24)
    s.handle_timeout(T0 + 25)
    assert s.take_output() == ["1"]


def test_lost_keeps_the_first_reason() -> None:
    s = make()
    s.close(CloseReason.FORCED_CLOSE, T0)
    s.lost(CloseReason.TRANSPORT_ERROR)
    assert s.state is S.CLOSED and s.close_reason is CloseReason.FORCED_CLOSE
    s2 = make()
    s2.lost(CloseReason.PARSE_ERROR)
    s2.lost(CloseReason.TRANSPORT_CLOSE)
    assert s2.close_reason is CloseReason.PARSE_ERROR


@pytest.mark.parametrize("how", ["lost", "closing", "closed-after-close", "ping-timeout"])
def test_send_on_a_closed_session(how: str) -> None:
    s = make(websocket=True)
    if how == "lost":
        s.lost(CloseReason.TRANSPORT_CLOSE)
    elif how == "closing":
        s.close(CloseReason.FORCED_CLOSE, T0)
    elif how == "closed-after-close":
        s.close(CloseReason.FORCED_CLOSE, T0)
        s.take_output()
    else:
        s.handle_timeout(T0 + INTERVAL)
        s.handle_timeout(T0 + INTERVAL + TIMEOUT)
    queued = s.has_output
    assert s.send("x") is Sent.NOT_OPEN
    assert s.send(b"x") is Sent.NOT_OPEN
    assert s.has_output == queued


# -- outbox bound -------------------------------------------------------------------------------


def test_outbox_over_max_closes_with_outbox_full() -> None:
    s = make(websocket=True, max_outbox_bytes=10)
    assert s.send("123") is Sent.QUEUED  # "4123": 4
    assert s.send(b"\x00\x01\x02\x03\x04\x05") is Sent.QUEUED  # 10: at the bound
    assert s.send("") is Sent.OUTBOX_FULL  # "4": 11
    assert s.state is S.CLOSED and s.close_reason is CloseReason.OUTBOX_FULL
    assert not s.has_output
    assert s.send("") is Sent.NOT_OPEN


def test_outbox_counts_utf8_bytes_not_characters() -> None:
    # max_outbox is documented in bytes ("bytes queued for one client"); text goes out as UTF-8.
    s = make(websocket=True, max_outbox_bytes=10)
    assert s.send("1") is Sent.QUEUED  # "41": 2 bytes
    assert s.send("😀😀") is Sent.OUTBOX_FULL  # "4😀😀": 9 bytes, 11 in all (but only 3 characters)
    assert s.close_reason is CloseReason.OUTBOX_FULL


def test_outbox_drained_in_time_stays_open() -> None:
    s = make(websocket=True, max_outbox_bytes=10)
    for _ in range(20):
        assert s.send("12345678") is Sent.QUEUED
        assert s.take_output() == ["412345678"]
    assert s.is_open


def test_outbox_counts_the_pending_ping() -> None:
    s = make(websocket=True, max_outbox_bytes=10)
    s.handle_timeout(T0 + INTERVAL)  # "2" queued
    assert s.send("12345678") is Sent.QUEUED  # 1 + 9 = 10
    assert s.send("") is Sent.OUTBOX_FULL
    assert s.close_reason is CloseReason.OUTBOX_FULL


def test_outbox_full_over_polling() -> None:
    s = make(max_outbox_bytes=8)
    s.begin_poll(T0)
    s.send("1234")
    assert s.send("1234") is Sent.OUTBOX_FULL
    assert s.state is S.CLOSED and s.close_reason is CloseReason.OUTBOX_FULL
    assert s.poll_ready
    assert s.finish_poll() == b"6"


# -- transitions --------------------------------------------------------------------------------

# Where each state may go next, from the docstring's diagram: the property test below checks that
# no sequence of calls makes any other move.
_ALLOWED = {
    S.POLLING: {S.PROBING, S.CLOSING, S.CLOSED},
    S.PROBING: {S.PROBED, S.POLLING, S.CLOSING, S.CLOSED},
    S.PROBED: {S.WEBSOCKET, S.POLLING, S.CLOSING, S.CLOSED},
    S.WEBSOCKET: {S.CLOSING, S.CLOSED},
    S.CLOSING: {S.CLOSED},
    S.CLOSED: set(),
}


@pytest.mark.parametrize(
    ("state", "what"),
    [(st_, in_) for st_, in_ in itertools.product(S, Input) if (st_, in_) not in TRANSITIONS],
    ids=str,
)
def test_an_input_with_no_row_raises_and_changes_nothing(state: SessionState, what: Input) -> None:
    s = make()
    s.state = state
    with pytest.raises(IllegalTransition):
        s._move(what)
    assert s.state is state


# Operations a shell may call in any order, each with the errors it may raise.
_OPS = st.sampled_from(
    [
        "begin_poll",
        "finish_poll",
        "abort_poll",
        "begin_upgrade",
        "upgrade_failed",
        "ws:2probe",
        "ws:5",
        "ws:3",
        "ws:1",
        "ws:4m",
        "ws:2",
        "ws-binary",
        "post:4m",
        "post:3",
        "post:1",
        "post:bAQI=",
        "send",
        "send-bytes",
        "close",
        "lost",
        "timeout",
        "take_output",
        "tick",
    ]
)


@settings(max_examples=500)
@given(st.booleans(), st.lists(_OPS, max_size=40))
def test_random_operation_sequences(websocket: bool, ops: list[str]) -> None:
    """No sequence of calls makes an illegal move or raises anything but the documented errors."""
    s = make(websocket=websocket, max_outbox_bytes=64)
    now = T0
    ever_closed = False
    for op in ops:
        before = s.state
        try:
            if op == "begin_poll":
                s.begin_poll(now)
            elif op == "finish_poll":
                assert isinstance(s.finish_poll(), bytes)
            elif op == "abort_poll":
                s.abort_poll()
            elif op == "begin_upgrade":
                s.begin_upgrade(now)
            elif op == "upgrade_failed":
                s.upgrade_failed()
            elif op.startswith("ws:"):
                s.receive_ws_text(op[3:], now)
            elif op == "ws-binary":
                s.receive_ws_binary(b"\x01", 0.0)
            elif op.startswith("post:"):
                s.receive_payload(op[5:].encode(), now)
            elif op in ("send", "send-bytes"):
                sent = s.send("m" * 10 if op == "send" else b"b" * 10)
                assert (sent is Sent.QUEUED) == s.is_open or sent is Sent.OUTBOX_FULL
            elif op == "close":
                s.close(CloseReason.FORCED_CLOSE, now)
            elif op == "lost":
                s.lost(CloseReason.TRANSPORT_ERROR)
            elif op == "timeout":
                now = max(now, s.next_deadline()) if s.next_deadline() != math.inf else now + 1
                s.handle_timeout(now)
            elif op == "take_output":
                s.take_output()
            else:
                now += 1.0
        except (EngineIOProtocolError, PollConflict):
            pass
        assert s.state is before or s.state in _ALLOWED[before], (before, s.state, op)
        for effect in s.take_effects():
            assert isinstance(effect, Effect)
        if s.state is S.CLOSED:
            ever_closed = True
            assert not s.has_output
            assert s.next_deadline() == math.inf
            assert s.close_reason is not None
        assert not (ever_closed and s.state is not S.CLOSED)
        assert s.is_open == (s.state in (S.POLLING, S.PROBING, S.PROBED, S.WEBSOCKET))


# -- effects and send outcomes: what the shell is told --------------------------------------------


def test_output_is_reported_once_per_batch() -> None:
    s = make(websocket=True)
    s.take_effects()
    s.send("a")
    s.send("b")
    assert s.take_effects() == [Effect.OUTPUT]
    s.take_output()
    s.send("c")
    assert s.take_effects() == [Effect.OUTPUT]


def test_a_send_to_a_closing_session_is_not_open_and_changes_nothing() -> None:
    """The late send: the final flush (queued data, the close packet) must survive it."""
    s = make(websocket=True)
    s.send("a" * 100)
    s.close(CloseReason.RATE_LIMITED, T0)
    s.take_effects()
    assert s.send("late") is Sent.NOT_OPEN
    assert s.take_effects() == []
    assert s.take_output() == ["4" + "a" * 100, "1"]
    assert s.take_effects() == [Effect.CLOSED]
    assert s.close_reason is CloseReason.RATE_LIMITED


def test_a_send_over_the_outbox_limit_is_reported_as_lost() -> None:
    s = make(websocket=True, max_outbox_bytes=10)
    s.send("123456789")
    s.take_effects()
    assert s.send("x") is Sent.OUTBOX_FULL
    assert s.take_effects() == [Effect.LOST]
    assert s.send("y") is Sent.NOT_OPEN
    assert s.take_effects() == []


def test_upgrade_effects() -> None:
    s = make()
    s.send("early")
    s.begin_upgrade(T0)
    s.take_effects()
    s.receive_ws_text("2probe", T0)
    assert s.take_effects() == [Effect.OUTPUT]  # release the pending (or coming) GET with a noop
    s.receive_ws_text("5", T0)
    assert s.take_effects() == [Effect.UPGRADED, Effect.OUTPUT]  # and write what waited
    t = make()
    t.begin_upgrade(T0)
    t.take_effects()
    t.handle_timeout(T0 + UPGRADE_TIMEOUT)
    assert t.take_effects() == [Effect.UPGRADE_ABANDONED]
    t.upgrade_failed()  # reported again by the probe's reader: nothing more to do
    assert t.take_effects() == []


def test_rate_limit_reports_each_dropped_packet() -> None:
    s = make(websocket=True, event_rate=1.0, event_burst=2)
    for _ in range(3):
        s.receive_ws_text("4x", T0)
    assert s.take_effects() == [Effect.DROPPED]
    s.receive_ws_text("4x", T0)  # two in debt: cut off
    assert s.take_effects() == [Effect.DROPPED, Effect.OUTPUT]
    assert s.state is S.CLOSING and s.close_reason is CloseReason.RATE_LIMITED
