"""The signalling service: requests in, events out, one ring timer per call.

:class:`Signalling` knows the protocol (which event does what, who is told what) and owns the
ringing timers; the registry decides what is allowed and holds the state; a :class:`Transport`
delivers events to sessions. The Socket.IO wiring (:mod:`._app`) is one transport; tests drive the
service directly with another.

Each request is handled to the end in the task that read it, with no checkpoint while the
registry changes, so two requests never interleave halfway. Two things outlive a request, in tasks
started through the transport (the server's nursery):

- a call's **ring timer**, whose deadline is the end of the ringing: an alarm (``callbox/alarms.py``:
  one heap, rung by one task while any call rings; a task per call cost about 10% of a call flow's
  CPU). Whatever ends the ringing (accept, reject, cancel, hang-up, a party leaving, shutdown) stops
  it through :meth:`_stop_timer`, the only place that does, so no timer outlives the ringing of its
  call.
- an away user's **reconnect grace** (:class:`_Grace`), a task that holds one cancel scope, started
  when the connection of a party of a call is lost. Events for that user wait in the grace's queue
  (bounded) instead of going out. The user's return, the grace's end, or the user leaving ends it
  through :meth:`_end_grace`, the only place that does: the queue goes out (to the returned
  session, or to a detached socket that may still be recovered) and the scope is cancelled.

With several nodes (a :class:`Shared`, :mod:`._cluster`) the deadlines live in the shared store
instead, in its time: a ring deadline or a grace's end is fired by whichever node finds it due
(:meth:`deadline_passed`), so it survives the node that set it. Each is set before the step that
makes what it guards (a deadline that finds nothing to end does nothing), so that a store failing
between the two never leaves a call ringing, or a user away, for ever. A grace's queue stays on the node
of the lost session (or the node that claimed it); another node ends it there through the
:class:`Shared` (:meth:`Shared.end_grace_at`).
"""

from __future__ import annotations

import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Annotated, Any, Final, Protocol, TypeVar, cast

import msgspec
import trio

from ..alarms import Alarms
from ..config import Config
from ..metrics import Registry as MetricsRegistry
from ..ratelimit import RateLimiter
from ..turn import ice_servers
from ._errors import ErrorCode, SignallingError
from ._observe import Observer
from ._payloads import (
    MAX_USER_ID_LENGTH,
    USER_ID_RULE,
    Accept,
    AckError,
    AckOk,
    Answer,
    AnswerRelay,
    CallAccepted,
    CallEnded,
    CallIncoming,
    CallInitiated,
    CallReconnected,
    CallReconnecting,
    CallRejected,
    CallTimeout,
    Candidate,
    CandidateRelay,
    End,
    EndReason,
    ErrorEvent,
    IceServer,
    Initiate,
    Join,
    Offer,
    OfferRelay,
    Reject,
    ResumedCall,
    UserJoined,
)
from ._registry import (
    Accepted,
    Call,
    Ended,
    Joined,
    MemoryRegistry,
    Registry,
    RegistryUnavailable,
    Returned,
    User,
)
from ._state import CallEvent, Outcome, Role

__all__ = ["Signalling", "Session", "Shared", "Transport", "Ack", "Payload", "Sent"]

Ack = AckOk | AckError
log = logging.getLogger("callbox.signalling")
T = TypeVar("T")

# An unknown event name is echoed in the error; past this it is cut (a name is a few words).
MAX_SHOWN_EVENT_NAME: Final = 64
_NULL: Final = msgspec.Raw(b"null")
# The relays' moves, as module names (why: callbox/enums.py).
_OFFER, _ANSWER, _CANDIDATE = CallEvent.OFFER, CallEvent.ANSWER, CallEvent.CANDIDATE


# What is sent: a payload to encode, or JSON as it is (an event another node sent on).
Payload = msgspec.Struct | msgspec.Raw


class Transport(Protocol):
    """Delivers events to sessions, by session id."""

    def send(self, socket_id: str, event: str, payload: Payload) -> bool:
        """Emit ``event`` to session ``socket_id``; False if it is not connected (nothing sent)."""
        ...

    async def disconnect(self, socket_id: str) -> None:
        """Disconnect session ``socket_id`` (its :meth:`Signalling.closed` runs meanwhile)."""
        ...

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run a background task that lives no longer than the server (RuntimeError once it is closing)."""
        ...


class Shared(Protocol):
    """What the service needs from the other nodes when several share the registry (:mod:`._cluster`)."""

    async def deadline(self, kind: str, key: str, seconds: float) -> None:
        """:meth:`Signalling.deadline_passed` runs (on some node, once) ``seconds`` from now."""
        ...

    async def take(self, key: str, burst: int, per_second: float) -> bool:
        """A token from the shared bucket ``key``; False if it is empty."""
        ...

    def end_grace_at(self, socket_id: str, deliver_to: str | None,
                     then: Sequence[Sent]) -> None:
        """Tell the node that holds the grace of ``socket_id`` to end it (see :meth:`Signalling._end_grace`)."""
        ...

    def later(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Run ``fn(*args)`` once the store answers again."""
        ...

    def own(self, socket_id: str) -> bool:
        """Whether session ``socket_id`` was opened on this node (not one of a dead node it claimed)."""
        ...

    async def relay(self, user_id: str, socket_id: str, target: str, event: CallEvent, name: str,
                    relay: OfferRelay | AnswerRelay | CandidateRelay) -> Call:
        """:meth:`Registry.relay`, which also sends ``relay`` (lacking the call's id, and type if the
        sender gave none) as event ``name`` to the target's sessions on other nodes."""
        ...


_Relay = OfferRelay | AnswerRelay | CandidateRelay
Sent = tuple[str, str, "Payload"]  # (session id, event, payload)


class Session:
    """One connection's signalling state: its id, and the user id (and device id) it holds once joined."""

    __slots__ = ("device_id", "socket_id", "token_user", "user_id")

    def __init__(self, socket_id: str, token_user: str | None = None) -> None:
        self.socket_id = socket_id
        self.user_id: str | None = None
        self.device_id = socket_id  # unless the client names its device
        # With token auth: the user id the connection's token proved; it may join as no other.
        self.token_user = token_user


class _Grace:
    """An away user's reconnect grace: what waits for it, and the scope of the task that ends it."""

    __slots__ = ("user_id", "socket_id", "scope", "since", "queue", "nbytes")

    def __init__(self, user_id: str, socket_id: str, scope: trio.CancelScope, since: float) -> None:
        self.user_id = user_id
        self.socket_id = socket_id
        self.scope = scope
        self.since = since
        self.queue: list[tuple[str, Payload]] = []
        self.nbytes = 0


class _JoinLoose(msgspec.Struct):
    userId: object = None


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (Join, Initiate, Accept, Reject, Offer, Answer, Candidate, End)
}
_join_loose = msgspec.json.Decoder(_JoinLoose)


# The user id's pattern is a regular expression, which msgspec runs through ``re`` on every decode:
# two thirds of the cost of decoding an ICE candidate's payload (515 against 188 ns), the usual
# event of a call. So the payloads that name the user they go ``to`` are first decoded with that
# field's pattern left out (its length bounds stay); an id not seen to pass the pattern before is
# decoded again with the whole type, which refuses it with the same error as ever. Ids that passed
# are remembered, up to MAX_CHECKED_USER_IDS, then forgotten all at once.
MAX_CHECKED_USER_IDS: Final = 10_000
_checked_user_ids: set[str] = set()
_UnpatternedUserId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_USER_ID_LENGTH)]


def _to_unpatterned(kind: type[msgspec.Struct]) -> msgspec.json.Decoder[Any]:
    """A decoder for ``kind`` as it is (its fields, their JSON names, what it accepts), but for its
    ``to`` field: a user id without the pattern."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(kind):
        kept = _UnpatternedUserId if f.name == "to" else f.type
        fields.append((f.name, kept) if f.default is msgspec.NODEFAULT else (f.name, kept, f.default))
    config = kind.__struct_config__
    return msgspec.json.Decoder(msgspec.defstruct(
        kind.__name__, fields, frozen=True, gc=False, forbid_unknown_fields=config.forbid_unknown_fields,
        array_like=config.array_like, tag=config.tag, tag_field=config.tag_field,
        rename={f.name: f.encode_name for f in msgspec.structs.fields(kind)},
    ))


_to_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    t: _to_unpatterned(t) for t in _decoders if any(f.name == "to" for f in msgspec.structs.fields(t))
}


def _payload(args: Sequence[object], kind: type[T]) -> T:
    if not args:
        raise SignallingError(ErrorCode.INVALID_PAYLOAD, "A payload object is required")
    raw = args[0]
    if not isinstance(raw, msgspec.Raw):
        raise SignallingError(ErrorCode.INVALID_PAYLOAD, "Binary payloads are not accepted")
    value: T
    fast = _to_decoders.get(kind)
    if fast is not None:
        try:
            value = fast.decode(raw)  # the same fields, read the same way, but see above
        except msgspec.ValidationError:
            pass  # the whole type, below, says why (as it always has)
        else:
            if value.to in _checked_user_ids:  # type: ignore[attr-defined]
                return value
    try:
        value = _decoders[kind].decode(raw)
    except msgspec.ValidationError as exc:
        raise SignallingError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
    if fast is not None:
        if len(_checked_user_ids) >= MAX_CHECKED_USER_IDS:
            _checked_user_ids.clear()
        _checked_user_ids.add(value.to)  # type: ignore[attr-defined]
    return value


def _join_payload(args: Sequence[object]) -> Join:
    try:
        return _payload(args, Join)
    except SignallingError as exc:
        given: object = None
        if args and isinstance(args[0], msgspec.Raw):
            try:
                given = _join_loose.decode(args[0]).userId
            except msgspec.ValidationError:
                pass
        message = "User ID is required" if given is None or given == "" else USER_ID_RULE
        raise SignallingError(exc.code, message) from None


def _bounded(body: msgspec.Raw, limit: int, what: str, *, nullable: bool) -> None:
    if len(body) > limit:
        raise SignallingError(ErrorCode.INVALID_PAYLOAD, f"{what} is larger than {limit} bytes")
    if not nullable and body == _NULL:
        raise SignallingError(ErrorCode.INVALID_PAYLOAD, f"{what} is required")


def new_call_id() -> str:
    return secrets.token_urlsafe(16)


# A client event's operation: (session, its arguments) -> its ack.
_Op = Callable[[Session, Sequence[object]], Awaitable[AckOk]]


class Signalling:
    """The signalling protocol over a :class:`Transport` and a registry (see the module docstring):
    :meth:`handle` one client event, :meth:`closed` / :meth:`returned` as connections go and come
    back, :meth:`shutdown` at the end. ``shared``: several nodes (:mod:`._cluster`)."""

    def __init__(
        self,
        transport: Transport,
        registry: Registry | None = None,
        settings: Callable[[], Config] = Config,
        observer: Observer | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.transport = transport
        self.shared = shared
        self.registry: Registry = MemoryRegistry() if registry is None else registry
        self.observe = Observer(MetricsRegistry()) if observer is None else observer
        # Read at each use: callbox.serve() may hand the app its config after it was built.
        self.settings = settings
        self.limiter = RateLimiter()
        self._ring_timers: Alarms[str] = Alarms(transport.start_soon, self._time_out)  # by call id
        self.graces: dict[str, _Grace] = {}  # session id of an away user -> its reconnect grace
        self._ops: dict[str, _Op] = {
            "user:join": self._join,
            "call:initiate": self._initiate,
            "call:accept": self._accept,
            "call:reject": self._reject,
            "call:offer": self._offer,
            "call:answer": self._answer,
            "ice:candidate": self._candidate,
            "call:end": self._end,
        }

    @property
    def events(self) -> tuple[str, ...]:
        """The client events it handles."""
        return tuple(self._ops)

    def handle(self, session: Session, event: str, args: Sequence[object], *,
               ack: bool = False) -> Coroutine[Any, Any, Ack]:
        """Handle one client event; the result (awaited) is its ack. A refusal also goes to the client
        as an ``error`` event unless ``ack`` says the client asked for an ack (which then carries it)."""
        return self._handle(self._ops.get(event), event, session, args, ack)

    def handler(self, event: str) -> Callable[[Session, Sequence[object], bool], Coroutine[Any, Any, Ack]]:
        """:meth:`handle` for one of :attr:`events`, called as ``handler(session, args, ack)``, with the
        event's operation looked up once, here: for a transport that dispatches by event name itself
        (a Socket.IO namespace), so that the name is dispatched once."""
        return functools.partial(self._handle, self._ops[event], event)

    async def _handle(self, op: _Op | None, event: str, session: Session, args: Sequence[object], ack: bool) -> Ack:
        self.observe.event_received(event)
        try:
            if op is None:
                shown = event if len(event) <= MAX_SHOWN_EVENT_NAME else event[:MAX_SHOWN_EVENT_NAME] + "..."
                raise SignallingError(ErrorCode.INVALID_PAYLOAD, f"Unknown event {shown!r}")
            try:
                return await op(session, args)
            except RegistryUnavailable as exc:  # fail closed: refused, never done from local state
                log.warning("registry unavailable", extra={"fields": {"event": event, "error": str(exc)}})
                raise SignallingError(ErrorCode.UNAVAILABLE) from None
        except SignallingError as exc:
            self.observe.refused(event, exc.code, session.user_id)
            if not ack:
                self.transport.send(session.socket_id, "error", ErrorEvent(exc.message, exc.code))
            return AckError(False, exc.code, exc.message)

    async def closed(self, session: Session, lost: bool = False) -> None:
        """The session's connection went. ``lost``: without a goodbye (a network blip, a dead peer),
        so with a reconnect grace a user in a call is waited for: the peer is told
        ``call:reconnecting``. Otherwise (or not in a call) the user goes offline and its call ends
        for the peer."""
        try:
            await self._closed(session, lost)
        except RegistryUnavailable:
            if self.shared is None:
                raise
            # What is shared must not keep a session that went: it goes once the store answers.
            log.warning("registry unavailable: the session leaves once it is back",
                        extra={"fields": {"socket": session.socket_id}})
            self.shared.later(self.closed, session, lost)

    async def _closed(self, session: Session, lost: bool) -> None:
        user_id = session.user_id
        if user_id is None:
            return
        socket_id = session.socket_id
        user = await self.registry.user(user_id)
        if user is None or user.device(socket_id) is None:
            return  # left already (its socket's end follows its detach), or taken over
        grace = self.settings().reconnect_grace
        if lost and grace > 0:
            was_away = user.device(socket_id).away  # type: ignore[union-attr]
            if self.shared is not None and not was_away:
                # Before the step that makes it away: an away device always has its deadline (one
                # that finds it back, or gone, does nothing).
                await self.shared.deadline("grace", msgspec.json.encode([user_id, socket_id]).decode(), grace)
            call = await self.registry.detach(user_id, socket_id)
            if call is not None and (socket_id in self.graces
                                     or self._start_grace(user_id, socket_id, grace, call, was_away)):
                return
        ended = await self.registry.leave(user_id, socket_id)
        self._end_grace(socket_id, None)
        if ended is not None:
            self._ended(ended)
        self.observe.left(user_id, socket_id)
        self.observe.online((await self.registry.counts())[0])

    async def returned(self, session: Session) -> None:
        """The session's connection came back (a recovered Socket.IO socket): the call goes on, what
        waited goes out. A user that went offline meanwhile holds its id again if nobody took it."""
        user_id = session.user_id
        if user_id is None:
            return
        back = await self.registry.reattach(user_id, session.socket_id, None, None)
        if back is not None:
            self._welcome_back(back)
            return
        user = await self.registry.user(user_id)
        if user is not None and user.device(session.socket_id) is not None:
            return  # it never left (its connection went and came back before anyone noticed)
        max_devices = self.settings().max_devices
        if user is None or (len(user.devices) < max_devices
                            and all(d.device_id != session.device_id for d in user.devices)):
            # It left when its connection went; nobody took its place: it holds its id again.
            joined = await self.registry.join(user_id, session.socket_id, session.device_id, max_devices,
                                              self._resume_token())
            self._welcome(session, joined)  # its resume token is new: it is told
            self.observe.online((await self.registry.counts())[0])
        else:
            session.user_id = None  # taken over meanwhile: it is let go, as a replaced session is
            code = ErrorCode.SESSION_REPLACED
            self.transport.send(session.socket_id, "error", ErrorEvent(SignallingError(code).message, code))
            await self.transport.disconnect(session.socket_id)

    async def shutdown(self, handover: bool = False) -> None:
        """End every call (reason ``server_shutdown``), before the server disconnects everyone.

        Not with ``handover`` (the connections close as lost: each user's call waits for it to come
        back through another node), nor with several nodes (the calls are theirs too: each of this
        node's users leaves as its connection closes)."""
        if handover or self.shared is not None:
            return
        for ended in await self.registry.end_all(Outcome.SERVER_SHUTDOWN):
            self._ended(ended)

    async def deadline_passed(self, kind: str, key: str) -> None:
        """A shared deadline (:meth:`Shared.deadline`) passed: a call's ringing (``ring``, the call id),
        or an away user's grace (``grace``, the JSON of [user id, session id])."""
        if kind == "ring":
            ended = await self.registry.time_out(key)
            if ended is not None:
                self._ended(ended)
            return
        user_id, socket_id = msgspec.json.decode(key, type=tuple[str, str])
        user = await self.registry.user(user_id)
        device = None if user is None else user.device(socket_id)
        if device is None or not device.away:
            return  # it came back, or left, meanwhile
        await self._grace_over(user_id, socket_id)

    def deliver(self, socket_id: str, event: str, payload: Payload) -> None:
        """An event from another node for a session of this one (a relay may find its grace full:
        it is dropped, and logged, since its sender had its ack already)."""
        if socket_id in self.graces:
            if not self._send(socket_id, event, payload, bounded=True):
                log.warning("relay dropped: the away user's queue is full",
                            extra={"fields": {"socket": socket_id, "event": event}})
        else:
            self.transport.send(socket_id, event, payload)

    # -- telling the parties ----------------------------------------------------------------------

    def _send(self, socket_id: str, event: str, payload: Payload, *, bounded: bool = False) -> bool:
        """Send to a party: queued while its device is away. ``bounded`` (a relay from the peer):
        False past the grace's bounds; the server's own events (a few per call) always wait."""
        grace = self.graces.get(socket_id)
        if grace is None:
            return self.transport.send(socket_id, event, payload)
        config = self.settings()
        size = len(msgspec.json.encode(payload))
        if bounded and (len(grace.queue) >= config.recovery_max_events
                        or grace.nbytes + size > config.recovery_max_bytes):
            return False
        grace.queue.append((event, payload))
        grace.nbytes += size
        return True

    def _tell(self, sockets: tuple[str | None, ...], event: str, payload: msgspec.Struct) -> None:
        for socket_id in sockets:
            if socket_id is not None:
                self._send(socket_id, event, payload)

    def _ended(self, ended: Ended) -> None:
        """A call is gone: its timer stops and both parties are told how it ended (every device it
        rang, too: a reject from one device is "rejected elsewhere" for the others)."""
        call = ended.call
        self._stop_timer(call.id)
        self.observe.call_ended(ended)
        if ended.outcome is Outcome.REJECTED:
            assert ended.by is not None
            self._tell((call.caller_socket, ended.device), "call:rejected", CallRejected(call.id, ended.by))
            elsewhere = CallEnded(call.id, ended.by, "rejected_elsewhere")
            self._tell(tuple(s for s in call.ringing if s != ended.device), "call:ended", elsewhere)
        elif ended.outcome is Outcome.TIMEOUT:
            self._tell(call.parties, "call:timeout", CallTimeout(call.id))
        else:
            # call:ended's reason is the outcome's name (_payloads.EndReason lists the same words).
            reason = cast(EndReason, ended.outcome.value)
            self._tell(call.parties, "call:ended", CallEnded(call.id, ended.by, reason))

    def _answered(self, accepted: Accepted, by: str, merged: bool) -> None:
        """The first device to answer takes the call: both parties are told, the others stop ringing."""
        call = accepted.call
        self._stop_timer(call.id)
        self.observe.call_accepted(call)
        self._tell((call.caller_socket, call.callee_socket), "call:accepted",
                   CallAccepted(call.id, by, True if merged else msgspec.UNSET))
        self._tell(accepted.elsewhere, "call:ended", CallEnded(call.id, by, "answered_elsewhere"))

    def _ring_new_device(self, call: Call | None, socket_id: str) -> None:
        """A device joined while its user's call rings: it rings too."""
        if call is not None:
            self._send(socket_id, "call:incoming", CallIncoming(call.caller, call.call_type, call.id))

    # -- ring timers ------------------------------------------------------------------------------

    @property
    def timers(self) -> dict[str, list[Any]]:
        """The calls that ring now, by id (their alarms)."""
        return self._ring_timers.entries

    def _start_timer(self, call_id: str, seconds: float) -> None:
        self._ring_timers.set(call_id, trio.current_time() + seconds)

    def _stop_timer(self, call_id: str) -> None:
        self._ring_timers.cancel(call_id)

    async def _time_out(self, call_id: str) -> None:
        ended = await self.registry.time_out(call_id)
        if ended is not None:
            self._ended(ended)

    # -- reconnect graces -------------------------------------------------------------------------

    def _start_grace(self, user_id: str, socket_id: str, seconds: float, call: Call, was_away: bool) -> bool:
        """False if the server is closing (nothing may start): the user leaves instead. ``was_away``:
        a grace ran for it on another node already (this one claimed that node): it goes on.
        With several nodes, its deadline is shared, set already (see :meth:`_closed`)."""
        now = trio.current_time()
        grace = _Grace(user_id, socket_id, trio.CancelScope(deadline=now + seconds), now)
        if self.shared is None:
            try:
                self.transport.start_soon(self._wait_grace, grace)
            except RuntimeError:
                return False
        self.graces[socket_id] = grace
        if was_away:
            return True
        self.observe.reconnecting(user_id, call.id)
        peer = call.callee if user_id == call.caller else call.caller
        self._tell(call.sockets_of(peer), "call:reconnecting", CallReconnecting(call.id, user_id))
        return True

    def _end_grace(self, socket_id: str, deliver_to: str | None, then: Sequence[Sent] = ()) -> _Grace | None:
        """The grace of the user away on ``socket_id`` ends: its timer stops, and what waited goes to
        ``deliver_to`` (its new session), else to the session it left (which may be recovered); then
        the events ``then`` (``(session id, event, payload)``), grace or not.

        With several nodes, the grace of another node's session is ended there, through its inbox;
        so is one this node holds for a dead node's session (it reads that inbox): the end then comes
        after what was sent to that session before it."""
        if self.shared is not None and not self.shared.own(socket_id):
            self.shared.end_grace_at(socket_id, deliver_to, then)
            return None
        return self.end_grace_here(socket_id, deliver_to, then)

    def end_grace_here(self, socket_id: str, deliver_to: str | None, then: Sequence[Sent] = ()) -> _Grace | None:
        """:meth:`_end_grace` for a grace this node holds (None: it holds none for ``socket_id``)."""
        grace = self.graces.pop(socket_id, None)
        if grace is not None:
            grace.scope.cancel()
            for event, payload in grace.queue:
                self.transport.send(deliver_to or socket_id, event, payload)
        for to, event, payload in then:
            self._send(to, event, payload)
        return grace

    async def _wait_grace(self, grace: _Grace) -> None:
        with grace.scope:
            await trio.sleep_forever()
        if self.graces.get(grace.socket_id) is not grace:
            return  # the user came back, or left, and that ended the grace
        await self._grace_over(grace.user_id, grace.socket_id)

    async def _grace_over(self, user_id: str, socket_id: str) -> None:
        """The grace of the user away on ``socket_id`` passed: it leaves, its call ends."""
        self._end_grace(socket_id, None)
        self.observe.grace_expired(user_id)
        ended = await self.registry.leave(user_id, socket_id, away_only=True)
        if ended is not None:
            self._ended(ended)
        self.observe.left(user_id, socket_id)
        self.observe.online((await self.registry.counts())[0])

    def _welcome_back(self, back: Returned) -> None:
        """A device is back on ``back.socket_id``: what waited goes out, then both parties hear that
        the call goes on."""
        user = back.user
        call = back.call
        then: list[Sent] = []
        if call is not None:
            then = [(s, "call:reconnected", CallReconnected(call.id, user.id)) for s in call.parties]
        grace = self._end_grace(back.previous_socket, back.socket_id, then)
        if grace is not None:
            self.observe.returned(user.id, trio.current_time() - grace.since)

    def _resume_token(self) -> str | None:
        return secrets.token_urlsafe(16) if self.settings().reconnect_grace > 0 else None

    # -- requests ---------------------------------------------------------------------------------

    @staticmethod
    def _user(session: Session) -> str:
        if session.user_id is None:
            raise SignallingError(ErrorCode.NOT_JOINED)
        return session.user_id

    async def _join(self, session: Session, args: Sequence[object]) -> AckOk:
        request = _join_payload(args)
        user_id = request.userId
        if session.token_user is not None and user_id != session.token_user:
            raise SignallingError(ErrorCode.UNAUTHORIZED)
        if session.user_id is not None and session.user_id != user_id:
            raise SignallingError(ErrorCode.ALREADY_JOINED)
        if request.resumeToken is not None and self.settings().reconnect_grace > 0:
            back = await self.registry.reattach(user_id, session.socket_id, request.resumeToken, self._resume_token())
            if back is not None:
                return await self._resumed(session, back)
        device_id = session.socket_id if request.deviceId is None else request.deviceId
        max_devices = self.settings().max_devices
        joined = await self.registry.join(user_id, session.socket_id, device_id, max_devices, self._resume_token())
        session.user_id = user_id
        session.device_id = device_id
        old = joined.replaced_socket
        if old is not None:
            self._end_grace(old, None)  # an away user taken over: its session is let go as it is
            code = ErrorCode.SESSION_REPLACED
            self.transport.send(old, "error", ErrorEvent(SignallingError(code).message, code))
            if joined.ended is not None:
                self._ended(joined.ended)
            await self.transport.disconnect(old)
        self.observe.joined(user_id, session.socket_id, old is not None)
        self.observe.online((await self.registry.counts())[0])
        self._welcome(session, joined)
        return AckOk(True, userId=user_id, socketId=session.socket_id)

    def _welcome(self, session: Session, joined: Joined) -> None:
        """``user:joined`` to a device that holds its user id now; it rings if its user's call does."""
        self._send_joined(joined.user, session.socket_id)
        self._ring_new_device(joined.ringing, session.socket_id)

    def _send_joined(self, user: User, socket_id: str, resumed: bool | msgspec.UnsetType = msgspec.UNSET,
                     call: ResumedCall | msgspec.UnsetType = msgspec.UNSET) -> None:
        """``user:joined``, with the resume token of the device on ``socket_id`` (if it has one)."""
        device = user.device(socket_id)
        token = msgspec.UNSET if device is None or device.resume_token is None else device.resume_token
        joined_event = UserJoined(user.id, socket_id, self._ice_servers(user.id), token, resumed, call)
        self.transport.send(socket_id, "user:joined", joined_event)

    async def _resumed(self, session: Session, back: Returned) -> AckOk:
        """A new connection took its user's session back with the resume token: it is told so (with
        the call it is in), then gets what waited for it; the old connection is let go."""
        user = back.user
        session.user_id = user.id
        call = back.call
        resumed_call: ResumedCall | msgspec.UnsetType = msgspec.UNSET
        if call is not None:
            role = Role.CALLER if call.caller == user.id else Role.CALLEE
            resumed_call = ResumedCall(call.id, call.peer_of(role), role.value, call.state.value,  # type: ignore[arg-type]
                                       call.call_type)
        device = user.device(session.socket_id)
        assert device is not None
        session.device_id = device.device_id
        self._send_joined(user, session.socket_id, True, resumed_call)
        self._welcome_back(back)
        if back.previous_socket != session.socket_id:
            await self.transport.disconnect(back.previous_socket)
        self.observe.joined(user.id, session.socket_id, False)
        return AckOk(True, userId=user.id, socketId=session.socket_id, resumed=True)

    def _ice_servers(self, user_id: str) -> list[IceServer] | msgspec.UnsetType:
        config = self.settings()
        if not (config.stun_urls or config.turn_urls):
            return msgspec.UNSET
        servers = ice_servers(secret=config.turn_secret, turn_urls=config.turn_urls, stun_urls=config.stun_urls,
                              user_id=user_id, ttl=config.turn_ttl, now=time.time())
        return [IceServer(**server) for server in servers]

    async def _initiate(self, session: Session, args: Sequence[object]) -> AckOk:
        user_id = self._user(session)
        config = self.settings()
        # Every attempt takes a token, refused or malformed: probing who is online costs as much.
        rate = config.initiate_per_minute / 60
        if not (self.limiter.take(user_id, trio.current_time(), config.initiate_burst, rate) if self.shared is None
                else await self.shared.take("initiate:" + user_id, config.initiate_burst, rate)):
            raise SignallingError(ErrorCode.RATE_LIMITED)
        request = _payload(args, Initiate)
        call_id = new_call_id()
        if self.shared is not None:
            # Before the step that makes the call: it never rings without its deadline (one that
            # finds no call, or one answered, does nothing).
            await self.shared.deadline("ring", call_id, config.ring_timeout)
        call = await self.registry.initiate(user_id, session.socket_id, request.to, request.callType, call_id)
        if isinstance(call, Accepted):  # glare: the callee's own call rang here; this answers it
            self._answered(call, user_id, merged=True)
            return AckOk(True, callId=call.call.id, merged=True)
        self.observe.call_started(call)
        self._tell(call.ringing, "call:incoming", CallIncoming(user_id, call.call_type, call.id))
        self.transport.send(session.socket_id, "call:initiated", CallInitiated(call.id, call.callee))
        if await self.registry.ring(call.id) is not None and self.shared is None:
            self._start_timer(call.id, config.ring_timeout)
        return AckOk(True, callId=call.id)

    async def _accept(self, session: Session, args: Sequence[object]) -> AckOk:
        user_id = self._user(session)
        request = _payload(args, Accept)
        accepted = await self.registry.accept(request.callId, user_id, session.socket_id, request.from_)
        self._answered(accepted, user_id, merged=False)
        return AckOk(True, callId=accepted.call.id)

    async def _reject(self, session: Session, args: Sequence[object]) -> AckOk:
        user_id = self._user(session)
        request = _payload(args, Reject)
        ended = await self.registry.reject(request.callId, user_id, session.socket_id, request.from_)
        self._ended(ended)
        return AckOk(True, callId=ended.call.id)

    async def _end(self, session: Session, args: Sequence[object]) -> AckOk:
        user_id = self._user(session)
        request = _payload(args, End)
        ended = await self.registry.hang_up(request.callId, user_id, session.socket_id)
        self._ended(ended)
        return AckOk(True, callId=ended.call.id)

    async def _offer(self, session: Session, args: Sequence[object]) -> AckOk:
        user_id = self._user(session)
        request = _payload(args, Offer)
        _bounded(request.offer, self.settings().max_sdp_bytes, "offer", nullable=False)
        given = request.callType

        def build(call_id: Any, call_type: Any) -> OfferRelay:
            return OfferRelay(request.offer, user_id, call_type if given is None else given, call_id)

        call = await self._relay(session, user_id, request.to, _OFFER, "call:offer", build)
        return AckOk(True, callId=call.id)

    async def _answer(self, session: Session, args: Sequence[object]) -> AckOk:
        user_id = self._user(session)
        request = _payload(args, Answer)
        _bounded(request.answer, self.settings().max_sdp_bytes, "answer", nullable=False)
        call = await self._relay(session, user_id, request.to, _ANSWER, "call:answer",
                                 lambda call_id, call_type: AnswerRelay(request.answer, user_id, call_id))
        return AckOk(True, callId=call.id)

    async def _candidate(self, session: Session, args: Sequence[object]) -> AckOk:
        user_id = self._user(session)
        request = _payload(args, Candidate)
        _bounded(request.candidate, self.settings().max_candidate_bytes, "candidate", nullable=True)
        call = await self._relay(session, user_id, request.to, _CANDIDATE, "ice:candidate",
                                 lambda call_id, call_type: CandidateRelay(request.candidate, user_id, call_id))
        return AckOk(True, callId=call.id)

    async def _relay(self, session: Session, user_id: str, target: str, event: CallEvent, name: str,
                     build: Callable[[Any, Any], _Relay]) -> Call:
        """May the session's user send ``target`` this relay? Then it goes to the other party (every
        device it rings, until one answers). ``build(call_id, call_type)`` makes the payload from what
        the call says. With several nodes, the registry's step itself sends it to the party's sessions
        on other nodes (built without the two: the step adds them), and this node to its own.
        ``user_id``: the session's user, which the caller has checked (``_user``)."""
        if self.shared is None:
            call = await self.registry.relay(user_id, session.socket_id, target, event)
        else:
            partial = build(msgspec.UNSET, msgspec.UNSET)
            call = await self.shared.relay(user_id, session.socket_id, target, event, name, partial)
        payload = build(call.id, call.call_type)
        for socket_id in call.sockets_of(target):
            if self.shared is not None and not self.shared.own(socket_id):
                continue  # the registry's step sent it there
            if not self._send(socket_id, name, payload, bounded=True) and socket_id in self.graces:
                raise SignallingError(ErrorCode.PEER_QUEUE_FULL)
        return call
