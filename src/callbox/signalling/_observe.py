"""What the signalling service tells operators: Prometheus metrics and structured logs.

Labels come from closed sets only (the protocol's event names, our error codes, the call outcomes),
never from what a client sent. Logs carry call ids, user ids, reasons and durations; never SDP
bodies, ICE candidates or tokens.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from ..metrics import Counter, Gauge, Histogram, Registry
from ._errors import ErrorCode
from ._payloads import CLIENT_EVENTS, SERVER_EVENTS
from ._registry import Call, Ended
from ._state import CallState, Outcome

__all__ = ["Observer", "CALL_OUTCOMES"]

log = logging.getLogger("callbox.signalling")

# How a call attempt ended, once each: refused at once (busy, offline), answered, or ended while
# ringing (the rest). An answered call that later ends adds to the duration histogram instead.
# A callee who hangs up on a ringing call has declined it; every other ringing end is counted by
# its outcome's name.
_RINGING_OUTCOME: Final = {o: "rejected" if o is Outcome.HANGUP else o.value for o in Outcome}
CALL_OUTCOMES: Final = ("answered", "busy", "offline", *dict.fromkeys(_RINGING_OUTCOME.values()))
_ANSWERED: Final = frozenset({CallState.CONNECTING, CallState.CONNECTED})
# Set-up (initiate -> accept) takes seconds of a person's reaction; calls last minutes to hours.
SETUP_BUCKETS: Final = (0.5, 1, 2, 5, 10, 20, 30, 60)
DURATION_BUCKETS: Final = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# A blip: a reconnect takes about a second; a network change or a tunnel, tens of seconds.
AWAY_BUCKETS: Final = (0.5, 1, 2, 5, 10, 20, 30, 60, 120)
GRACE_OUTCOMES: Final = ("returned", "expired")


class Observer:
    def __init__(self, metrics: Registry) -> None:
        self.users_online = 0
        self.calls_active = 0
        self.calls_peak = 0
        self._started: dict[str, float] = {}  # call id -> initiated at
        self._answered: dict[str, float] = {}  # call id -> accepted at
        m = metrics
        m.add(Gauge("callbox_users_online", "Users joined now.", fn=lambda: {(): self.users_online}))
        m.add(Gauge("callbox_calls_active", "Calls now, ringing or answered.", fn=lambda: {(): self.calls_active}))
        m.add(Gauge("callbox_calls_peak", "Most calls at once since start.", fn=lambda: {(): self.calls_peak}))
        self.calls_total = m.add(Counter(
            "callbox_calls_total", "Call attempts by how they ended.", ["outcome"],
            initial=[(o,) for o in CALL_OUTCOMES],
        ))
        self.setup = m.add(Histogram("callbox_call_setup_seconds", "From call:initiate to call:accept.", SETUP_BUCKETS))
        self.duration = m.add(Histogram(
            "callbox_call_duration_seconds", "From call:accept to the end of an answered call.", DURATION_BUCKETS
        ))
        self.received = m.add(Counter(
            "callbox_events_received_total", "Client events received, by name ('unknown' for others).", ["event"],
            initial=[(e,) for e in (*CLIENT_EVENTS, "unknown")],
        ))
        self.sent = m.add(Counter(
            "callbox_events_sent_total", "Events sent to clients, by name.", ["event"],
            initial=[(e,) for e in SERVER_EVENTS],
        ))
        self.errors = m.add(Counter(
            "callbox_errors_total", "Requests refused, by error code.", ["code"],
            initial=[(c.value,) for c in ErrorCode],
        ))
        self._client_events = frozenset(CLIENT_EVENTS)
        self.graces = m.add(Counter(
            "callbox_reconnect_graces_total", "Reconnect graces (a party of a call lost its connection), by outcome.",
            ["outcome"], initial=[(o,) for o in GRACE_OUTCOMES],
        ))
        self.away = m.add(Histogram(
            "callbox_reconnect_away_seconds", "How long a party that came back within its grace was away.", AWAY_BUCKETS
        ))

    def event_received(self, event: str) -> None:
        self.received.inc(event if event in self._client_events else "unknown")

    def refused(self, event: str, code: ErrorCode, user_id: str | None) -> None:
        self.errors.inc(code.value)
        if event == "call:initiate" and code in (ErrorCode.USER_BUSY, ErrorCode.USER_OFFLINE):
            self.calls_total.inc("busy" if code is ErrorCode.USER_BUSY else "offline")
        log.info("request refused", extra={"fields": {"event": event if event in self._client_events else "unknown",
                                                     "code": code.value, "user": user_id}})

    def online(self, users: int) -> None:
        self.users_online = users

    def joined(self, user_id: str, socket_id: str, replaced: bool) -> None:
        log.info("user joined", extra={"fields": {"user": user_id, "socket": socket_id, "replaced": replaced}})

    def left(self, user_id: str, socket_id: str) -> None:
        log.info("user left", extra={"fields": {"user": user_id, "socket": socket_id}})

    def reconnecting(self, user_id: str, call_id: str) -> None:
        log.info("waiting for a party", extra={"fields": {"user": user_id, "call": call_id}})

    def returned(self, user_id: str, away: float) -> None:
        self.graces.inc("returned")
        self.away.observe(away)
        log.info("party returned", extra={"fields": {"user": user_id, "away_s": round(away, 3)}})

    def grace_expired(self, user_id: str) -> None:
        self.graces.inc("expired")
        log.info("reconnect grace expired", extra={"fields": {"user": user_id}})

    def call_started(self, call: Call) -> None:
        self._started[call.id] = trio.current_time()
        self.calls_active += 1
        self.calls_peak = max(self.calls_peak, self.calls_active)
        log.info("call initiated", extra={"fields": {
            "call": call.id, "caller": call.caller, "callee": call.callee, "type": call.call_type}})

    def call_accepted(self, call: Call) -> None:
        now = trio.current_time()
        setup = now - self._started.get(call.id, now)
        self._answered[call.id] = now
        self.calls_total.inc("answered")
        self.setup.observe(setup)
        log.info("call accepted", extra={"fields": {
            "call": call.id, "caller": call.caller, "callee": call.callee, "setup_s": round(setup, 3)}})

    def call_ended(self, ended: Ended) -> None:
        call = ended.call
        now = trio.current_time()
        started = self._started.pop(call.id, now)
        answered = self._answered.pop(call.id, None)
        self.calls_active -= 1
        fields: dict[str, object] = {"call": call.id, "caller": call.caller, "callee": call.callee,
                                     "reason": ended.outcome.value, "by": ended.by,
                                     "duration_s": round(now - started, 3)}
        if answered is not None or call.state in _ANSWERED:
            talk = now - (answered if answered is not None else started)
            self.duration.observe(talk)
            fields["talk_s"] = round(talk, 3)
        else:
            self.calls_total.inc(_RINGING_OUTCOME[ended.outcome])
        log.info("call ended", extra={"fields": fields})
