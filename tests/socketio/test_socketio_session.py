"""The Socket.IO session core: what a client's CONNECT, DISCONNECT and ACK packets mean, whatever the
order they come in, and the connect deadline. Sans-IO: no sockets, no clock."""

from __future__ import annotations

import itertools

import pytest

from callbox.socketio import Decoder, Packet, PacketType, SocketIOSession
from callbox.socketio.session import NAMESPACE_TRANSITIONS, IllegalTransition, NsInput, NsState

T0 = 100.0
CONNECT_TIMEOUT = 45.0


def make() -> SocketIOSession:
    return SocketIOSession(now=T0, connect_timeout=CONNECT_TIMEOUT)


def test_connect_then_accept() -> None:
    s = make()
    assert s.connect("/") is True  # run the connect handler
    assert s.state_of("/") is NsState.CONNECTING
    assert s.accepted("/") is True  # answer CONNECT
    assert s.state_of("/") is NsState.CONNECTED


def test_a_repeated_connect_is_ignored_while_deciding_and_once_connected() -> None:
    s = make()
    s.connect("/")
    assert s.connect("/") is False
    s.accepted("/")
    assert s.connect("/") is False
    assert s.state_of("/") is NsState.CONNECTED


def test_refused_then_connect_again() -> None:
    s = make()
    s.connect("/admin")
    assert s.refused("/admin") is True  # answer CONNECT_ERROR
    assert s.state_of("/admin") is NsState.ABSENT
    assert s.connect("/admin") is True


def test_the_client_leaves_while_the_connect_handler_runs() -> None:
    s = make()
    s.connect("/")
    assert s.disconnect("/") is False  # was not connected: no disconnect handler
    assert s.accepted("/") is False  # the verdict changes nothing: no answer
    assert s.refused("/") is False
    assert s.state_of("/") is NsState.ABSENT


def test_disconnect_of_a_namespace_not_joined_is_ignored() -> None:
    s = make()
    assert s.disconnect("/nowhere") is False
    s.connect("/")
    s.accepted("/")
    assert s.disconnect("/") is True
    assert s.disconnect("/") is False


def test_namespaces_are_independent() -> None:
    s = make()
    s.connect("/")
    s.accepted("/")
    s.connect("/admin")
    assert s.namespaces == {"/": NsState.CONNECTED, "/admin": NsState.CONNECTING}


def test_the_connect_deadline_holds_until_a_namespace_is_connected() -> None:
    s = make()
    assert not s.connect_overdue(T0 + CONNECT_TIMEOUT - 0.001)
    assert s.connect_overdue(T0 + CONNECT_TIMEOUT)
    s.connect("/")
    assert s.connect_overdue(T0 + CONNECT_TIMEOUT)  # deciding is not connected
    s.accepted("/")
    assert s.connect_by is None and not s.connect_overdue(T0 + 10 * CONNECT_TIMEOUT)
    s.disconnect("/")
    assert not s.connect_overdue(T0 + 10 * CONNECT_TIMEOUT)  # it did connect once


def _ack(ack_id: int) -> Packet:
    packet = Decoder().receive_text(f"3{ack_id}[]")
    assert packet is not None and packet.type is PacketType.ACK
    return packet


def test_ack_ids_count_up_and_each_is_answered_once() -> None:
    s = make()
    assert [s.new_ack_id() for _ in range(3)] == [0, 1, 2]
    assert s.pending_acks == {0, 1, 2}
    assert s.ack_received(_ack(1)) is True
    assert s.ack_received(_ack(1)) is False
    s.ack_abandoned(0)  # timed out
    assert s.ack_received(_ack(0)) is False
    assert s.ack_received(_ack(7)) is False  # never asked
    assert s.pending_acks == {2}


@pytest.mark.parametrize(
    ("state", "what"),
    [(st, i) for st, i in itertools.product(NsState, NsInput) if (st, i) not in NAMESPACE_TRANSITIONS],
    ids=str,
)
def test_a_move_with_no_row_is_our_bug(state: NsState, what: NsInput) -> None:
    s = make()
    if state is not NsState.ABSENT:
        s.namespaces["/"] = state
    with pytest.raises(IllegalTransition):
        s._move("/", what)
    assert s.state_of("/") is state
