"""Every payload of the signalling protocol, as msgspec Structs with their bounds.

Incoming payloads are decoded with typed decoders straight from the ``msgspec.Raw`` argument the
Socket.IO layer hands over; what is only relayed (an SDP, an ICE candidate) stays ``msgspec.Raw``
and is written back out byte for byte inside the outgoing Struct, never re-parsed. Unknown fields
are ignored, so that client apps that send a little more (a display name, a timestamp) keep working.

The JSON Schemas in ``protocol/schemas/`` are generated from these types (:mod:`.schemas`).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from ._errors import ErrorCode

__all__ = [
    "USER_ID_PATTERN",
    "MAX_USER_ID_LENGTH",
    "MAX_CALL_ID_LENGTH",
    "UserId",
    "CallId",
    "CallType",
    "EndReason",
    "Join",
    "Initiate",
    "Accept",
    "Reject",
    "Offer",
    "Answer",
    "Candidate",
    "End",
    "UserJoined",
    "IceServer",
    "CallIncoming",
    "CallInitiated",
    "CallAccepted",
    "CallRejected",
    "OfferRelay",
    "AnswerRelay",
    "CandidateRelay",
    "CallEnded",
    "CallTimeout",
    "CallReconnecting",
    "CallReconnected",
    "ResumedCall",
    "ErrorEvent",
    "AckOk",
    "AckError",
    "CLIENT_EVENTS",
    "SERVER_EVENTS",
]

# User ids are names apps already use: account ids, e-mail addresses, "sip:alice@host", phone
# numbers with "+". 128 characters covers all of them; ASCII only, so nothing can hide in look-alike
# characters or control codes. msgspec applies the pattern with re.search, where "$" also matches
# before a final newline: the look-ahead refuses that (it reads the same in JSON Schema's dialect).
USER_ID_PATTERN: Final = r"^[A-Za-z0-9_.@:+-]+$(?!\n)"
MAX_USER_ID_LENGTH: Final = 128
USER_ID_RULE: Final = "User ID must be 1-128 characters: ASCII letters, digits and _ - . @ : +"
# Call ids are ours (22 characters of secrets.token_urlsafe); 64 leaves room to change the scheme.
MAX_CALL_ID_LENGTH: Final = 64

UserId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_USER_ID_LENGTH,
        pattern=USER_ID_PATTERN,
        description="1-128 characters: ASCII letters, digits and _ - . @ : +",
    ),
]
CallId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CALL_ID_LENGTH, description="the server's call id")]
CallType = Literal["audio", "video"]
# A resume token is ours (22 characters of secrets.token_urlsafe); 64 leaves room to change the scheme.
MAX_RESUME_TOKEN_LENGTH: Final = 64
ResumeToken = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_RESUME_TOKEN_LENGTH,
                 description="the resumeToken of this user's last user:joined, to take its session back"),
]
EndReason = Literal[
    "hangup", "cancelled", "disconnected", "replaced", "server_shutdown", "answered_elsewhere", "rejected_elsewhere"
]
# A device id is the client's own name for one of a user's devices (kept by the app across reloads).
MAX_DEVICE_ID_LENGTH: Final = 64
DeviceId = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=MAX_DEVICE_ID_LENGTH, pattern=USER_ID_PATTERN,
                 description="1-64 characters: ASCII letters, digits and _ - . @ : +"),
]

_SDP_DOC = "an RTCSessionDescriptionInit ({type, sdp}), relayed byte for byte; size bounded by --max-sdp-bytes"
_CANDIDATE_DOC = (
    "an RTCIceCandidateInit, or null for the end of candidates; relayed byte for byte; "
    "size bounded by --max-candidate-bytes"
)
Sdp = Annotated[msgspec.Raw, msgspec.Meta(description=_SDP_DOC)]
IceCandidate = Annotated[msgspec.Raw, msgspec.Meta(description=_CANDIDATE_DOC)]


# Every payload is a small frozen value; none holds a container, so none needs the GC.

# -- client -> server ---------------------------------------------------------------------------


class Join(msgspec.Struct, frozen=True, gc=False):
    """user:join: claim a user id for this connection (taking it over from another connection; with
    several devices allowed, as the device ``deviceId``, replacing only that device). With the
    ``resumeToken`` of the connection that held it, within the reconnect grace: take that
    connection's session back, its call included."""

    userId: UserId
    resumeToken: ResumeToken | None = None
    deviceId: DeviceId | None = None


class Initiate(msgspec.Struct, frozen=True, gc=False):
    """call:initiate: call another user."""

    to: UserId
    callType: CallType


class Accept(msgspec.Struct, frozen=True, gc=False):
    """call:accept: the callee answers a ringing call. ``from``, if given, must be the caller."""

    callId: CallId
    from_: UserId | None = msgspec.field(default=None, name="from")


class Reject(msgspec.Struct, frozen=True, gc=False):
    """call:reject: the callee declines a ringing call. ``from``, if given, must be the caller."""

    callId: CallId
    from_: UserId | None = msgspec.field(default=None, name="from")


class Offer(msgspec.Struct, frozen=True, gc=False):
    """call:offer: an SDP offer for the other party of your call. Without callType, the call's."""

    to: UserId
    offer: Sdp
    callType: CallType | None = None


class Answer(msgspec.Struct, frozen=True, gc=False):
    """call:answer: an SDP answer for the other party of your call."""

    to: UserId
    answer: Sdp


class Candidate(msgspec.Struct, frozen=True, gc=False):
    """ice:candidate: an ICE candidate (or null: no more) for the other party of your call."""

    to: UserId
    candidate: IceCandidate


class End(msgspec.Struct, frozen=True, gc=False):
    """call:end: end your call, at any stage (the caller ending a ringing call cancels it)."""

    callId: CallId


# -- server -> client ---------------------------------------------------------------------------


class IceServer(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One entry of RTCPeerConnection's ``iceServers``: STUN URLs, or TURN URLs with time-limited
    credentials (TURN REST API: username ``<expiry>:<userId>``)."""

    urls: list[str]
    username: str | msgspec.UnsetType = msgspec.UNSET
    credential: str | msgspec.UnsetType = msgspec.UNSET


class ResumedCall(msgspec.Struct, frozen=True, gc=False):
    """The call a resumed session is in, as it is now."""

    callId: str
    peer: str
    role: Literal["caller", "callee"]
    state: Literal["initiating", "ringing", "connecting", "connected"]
    callType: CallType


class UserJoined(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """user:joined: this connection now holds ``userId``. ``iceServers`` when the server is set up
    with STUN/TURN (pass it to ``new RTCPeerConnection({iceServers})``). ``resumeToken`` when the
    server has a reconnect grace: keep it to resume this session from a new connection. ``resumed``
    and ``call`` when this join took a session back (``call``: the call it is in, if any)."""

    userId: str
    socketId: str
    iceServers: list[IceServer] | msgspec.UnsetType = msgspec.UNSET
    resumeToken: str | msgspec.UnsetType = msgspec.UNSET
    resumed: bool | msgspec.UnsetType = msgspec.UNSET
    call: ResumedCall | msgspec.UnsetType = msgspec.UNSET


class CallIncoming(msgspec.Struct, frozen=True, gc=False):
    """call:incoming: someone calls you; accept or reject ``callId``."""

    from_: str = msgspec.field(name="from")
    callType: CallType
    callId: str


class CallInitiated(msgspec.Struct, frozen=True, gc=False):
    """call:initiated: your call rings at ``to``."""

    callId: str
    to: str


class CallAccepted(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """call:accepted: the callee (``by``) accepted; the caller sends its offer now. ``merged``: the
    callee called the caller back while it rang (glare), and that answered it."""

    callId: str
    by: str
    merged: bool | msgspec.UnsetType = msgspec.UNSET


class CallRejected(msgspec.Struct, frozen=True, gc=False):
    """call:rejected: the callee (``by``) declined; the call is gone."""

    callId: str
    by: str


class OfferRelay(msgspec.Struct, frozen=True, gc=False):
    """call:offer: the other party's offer, as it sent it."""

    offer: Sdp
    from_: str = msgspec.field(name="from")
    callType: CallType
    callId: str


class AnswerRelay(msgspec.Struct, frozen=True, gc=False):
    """call:answer: the other party's answer, as it sent it."""

    answer: Sdp
    from_: str = msgspec.field(name="from")
    callId: str


class CandidateRelay(msgspec.Struct, frozen=True, gc=False):
    """ice:candidate: the other party's ICE candidate (null: no more), as it sent it."""

    candidate: IceCandidate
    from_: str = msgspec.field(name="from")
    callId: str


class CallEnded(msgspec.Struct, frozen=True, gc=False):
    """call:ended: the call is gone. ``by`` is the user whose act ended it (null on server shutdown)."""

    callId: str
    by: str | None
    reason: EndReason


class CallTimeout(msgspec.Struct, frozen=True, gc=False):
    """call:timeout: nobody answered within the ring timeout; the call is gone."""

    callId: str


class CallReconnecting(msgspec.Struct, frozen=True, gc=False):
    """call:reconnecting: ``userId`` lost its connection; the call waits for it (the reconnect grace)."""

    callId: str
    userId: str


class CallReconnected(msgspec.Struct, frozen=True, gc=False):
    """call:reconnected: ``userId`` is back; the call goes on (sent to both parties)."""

    callId: str
    userId: str


class ErrorEvent(msgspec.Struct, frozen=True, gc=False):
    """error: a request was refused (and the client did not ask for an ack)."""

    message: str
    code: ErrorCode


class AckOk(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """The ack of a request that succeeded (call:initiate's carries the callId)."""

    ok: Literal[True]
    callId: str | None = None
    userId: str | None = None
    socketId: str | None = None
    resumed: bool | None = None
    merged: bool | None = None


class AckError(msgspec.Struct, frozen=True, gc=False):
    """The ack of a request that was refused; no ``error`` event is sent then."""

    ok: Literal[False]
    code: ErrorCode
    message: str


# Event name -> payload type, both ways: the schemas and the documentation are built from these.
CLIENT_EVENTS: Final[dict[str, type[msgspec.Struct]]] = {
    "user:join": Join,
    "call:initiate": Initiate,
    "call:accept": Accept,
    "call:reject": Reject,
    "call:offer": Offer,
    "call:answer": Answer,
    "ice:candidate": Candidate,
    "call:end": End,
}
SERVER_EVENTS: Final[dict[str, type[msgspec.Struct]]] = {
    "user:joined": UserJoined,
    "call:incoming": CallIncoming,
    "call:initiated": CallInitiated,
    "call:accepted": CallAccepted,
    "call:rejected": CallRejected,
    "call:offer": OfferRelay,
    "call:answer": AnswerRelay,
    "ice:candidate": CandidateRelay,
    "call:ended": CallEnded,
    "call:timeout": CallTimeout,
    "call:reconnecting": CallReconnecting,
    "call:reconnected": CallReconnected,
    "error": ErrorEvent,
}
