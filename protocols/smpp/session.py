"""One SMPP bind as a sans-IO state machine (no sockets, no clock of its own).

``receive(pdu, now)`` returns what to do: PDUs to send, submits to charge, or closing.
The transport runs the submits through the agent and calls ``submit_done``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from protocols.smpp.pdu import (
    RESP,
    Bind,
    Cmd,
    Pdu,
    PduError,
    Status,
    Submit,
    Tag,
    cstr,
    decode_bind,
    decode_data_sm,
    decode_submit,
    tlv,
)


class State(Enum):
    OPEN = "open"
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    CLOSED = "closed"


_BIND_STATE = {Cmd.BIND_TRANSMITTER: State.BOUND_TX, Cmd.BIND_RECEIVER: State.BOUND_RX,
               Cmd.BIND_TRANSCEIVER: State.BOUND_TRX}
_KNOWN = {int(c) for c in Cmd}


@dataclass(frozen=True, slots=True)
class Send:
    pdu: Pdu


@dataclass(frozen=True, slots=True)
class Authenticate:
    sequence: int
    command_id: int
    bind: Bind


@dataclass(frozen=True, slots=True)
class Charge:
    sequence: int
    command_id: int
    submit: Submit


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


@dataclass(frozen=True, slots=True)
class Response:
    """The ESME answered one of our requests (deliver_sm_resp, ...)."""

    pdu: Pdu


Action = Send | Authenticate | Charge | Close | Response


def nack(status: int, seq: int) -> Send:
    return Send(Pdu(Cmd.GENERIC_NACK, status, seq))


class SmppSession:
    def __init__(self, *, window: int = 64, throttle_per_s: int = 0, system_id: str = "OCS",
                 enquire_link_s: float = 30.0, response_timeout_s: float = 10.0,
                 bind_timeout_s: float = 30.0, now: float = 0.0):
        self.enquire_link_s = enquire_link_s
        self.response_timeout_s = response_timeout_s
        self.bind_timeout_s = bind_timeout_s
        self.opened_at = now
        self.last_activity = now
        self.pending_enquire: tuple[int, float] | None = None
        self._our_seq = 0
        self.state = State.OPEN
        self.system_id = ""
        self.window = window
        self.throttle_per_s = throttle_per_s
        self.our_id = system_id
        self.outstanding = 0
        self._tokens = float(throttle_per_s)
        self._last: float | None = None
        self._binding = False

    def _throttled(self, now: float) -> bool:
        if self.throttle_per_s <= 0:
            return False
        if self._last is not None:
            self._tokens = min(float(self.throttle_per_s),
                               self._tokens + (now - self._last) * self.throttle_per_s)
        self._last = now
        if self._tokens < 1.0:
            return True
        self._tokens -= 1.0
        return False

    @property
    def receiver(self) -> bool:
        """Bound to receive deliver_sm (receiver or transceiver)."""
        return self.state in (State.BOUND_RX, State.BOUND_TRX)

    def next_sequence(self) -> int:
        """Our own sequence numbers: 1 .. 0x7FFFFFFF, then 1 again."""
        self._our_seq = self._our_seq % 0x7FFFFFFF + 1
        return self._our_seq

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to run next (None: never)."""
        if self.state is State.CLOSED:
            return None
        if self.state is State.OPEN:
            return self.opened_at + self.bind_timeout_s
        if self.pending_enquire is not None:
            return self.pending_enquire[1] + self.response_timeout_s
        return self.last_activity + self.enquire_link_s

    def handle_timer(self, now: float) -> list[Action]:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        if self.state is State.OPEN:
            self.state = State.CLOSED
            return [Close("no bind in time")]
        if self.pending_enquire is not None:
            self.state = State.CLOSED
            return [Close("enquire_link not answered")]
        seq = self.next_sequence()
        self.pending_enquire = (seq, now)
        return [Send(Pdu(Cmd.ENQUIRE_LINK, 0, seq))]

    def receive(self, pdu: Pdu, now: float) -> list[Action]:
        cmd, seq = pdu.command_id, pdu.sequence
        if self.state is State.CLOSED:
            return []
        self.last_activity = now
        if cmd & RESP:
            if (cmd == Cmd.ENQUIRE_LINK.resp and self.pending_enquire is not None
                    and self.pending_enquire[0] == seq):
                self.pending_enquire = None
                return []
            return [Response(pdu)]
        if cmd not in _KNOWN:
            return [nack(Status.RINVCMDID, seq)]
        if cmd in _BIND_STATE:
            if self.state is not State.OPEN or self._binding:
                return [Send(Pdu(cmd | RESP, Status.RALYBND, seq))]
            try:
                bind = decode_bind(pdu.body)
            except PduError as e:
                return [Send(Pdu(cmd | RESP, e.status, seq))]
            self._binding = True
            return [Authenticate(seq, cmd, bind)]
        if cmd == Cmd.ENQUIRE_LINK:
            if self.state is State.OPEN:
                return [nack(Status.RINVBNDSTS, seq)]
            return [Send(Pdu(Cmd.ENQUIRE_LINK.resp, Status.ROK, seq))]
        if self.state is State.OPEN:
            return [Send(Pdu(cmd | RESP, Status.RINVBNDSTS, seq))]
        if cmd == Cmd.UNBIND:
            self.state = State.CLOSED
            return [Send(Pdu(Cmd.UNBIND.resp, Status.ROK, seq)), Close("unbind")]
        if cmd in (Cmd.SUBMIT_SM, Cmd.DATA_SM):
            if self.state is State.BOUND_RX:
                return [Send(Pdu(cmd | RESP, Status.RINVBNDSTS, seq))]
            if self.outstanding >= self.window or self._throttled(now):
                return [Send(Pdu(cmd | RESP, Status.RTHROTTLED, seq))]
            try:
                sm = decode_submit(pdu.body) if cmd == Cmd.SUBMIT_SM else (
                    decode_data_sm(pdu.body))
            except PduError as e:
                return [Send(Pdu(cmd | RESP, e.status, seq))]
            self.outstanding += 1
            return [Charge(seq, cmd, sm)]
        # known but not offered by this SMSC (query_sm, cancel_sm, replace_sm, submit_multi,
        # deliver_sm from an ESME, outbind)
        return [nack(Status.RINVCMDID, seq)]

    def bind_done(self, seq: int, cmd: int, system_id: str, status: int,
                  interface_version: int) -> list[Action]:
        self._binding = False
        if status != Status.ROK:
            return [Send(Pdu(cmd | RESP, status, seq)), Close("bind refused")]
        self.state = _BIND_STATE[Cmd(cmd)]
        self.system_id = system_id
        body = cstr(self.our_id)
        if interface_version >= 0x34:
            body += tlv(Tag.SC_INTERFACE_VERSION, bytes((min(interface_version, 0x50),)))
        return [Send(Pdu(cmd | RESP, Status.ROK, seq, body))]

    def submit_done(self, seq: int, cmd: int, status: int, message_id: str) -> list[Action]:
        self.outstanding -= 1
        if self.state is State.CLOSED:
            return []
        body = cstr(message_id) if status == Status.ROK else b"\x00"
        return [Send(Pdu(cmd | RESP, status, seq, body))]
