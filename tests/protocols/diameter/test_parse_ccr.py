"""parse_ccr (one pass over the top-level AVPs) against the find-based parser it
replaced, kept here as the oracle: for any CCR hypothesis builds from the AVPs the parser
reads (in any order, repeated, missing, malformed), both give the same Ccr or the same
error (Result-Code and Failed-AVP)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocs.charging.api import Identity, IdKind
from protocols.diameter import codec as c
from protocols.diameter.codec import A, Avp, Cmd, Message, MessageError, Rc
from protocols.diameter.gy import (
    CHECK_BALANCE,
    DIRECT_DEBITING,
    EVENT,
    INITIAL,
    PRICE_ENQUIRY,
    REFUND_ACCOUNT,
    SUB_E164,
    SUB_IMSI,
    SUB_NAI,
    SUB_PRIVATE,
    SUB_SIP_URI,
    TERMINATION,
    UPDATE,
    VENDOR_3GPP,
    Ccr,
    Mscc,
    _digits_of_address,
    _guess_service,
    _nested,
    _service_of,
    _units,
    parse_ccr,
)

# -- the parser before (verbatim but for its name) --------------------------------------

def _ref_identity(msg: Message) -> Identity:
    ids: list[tuple[IdKind, str]] = []
    for sub in msg.find_all(A.SUBSCRIPTION_ID):
        kind, data = None, ""
        for a in sub.group():
            if a.vendor:
                continue
            if a.code == A.SUBSCRIPTION_ID_TYPE:
                kind = a.u32
            elif a.code == A.SUBSCRIPTION_ID_DATA:
                data = a.text
        if kind is None or not data:
            raise MessageError(Rc.MISSING_AVP, "Subscription-Id needs Type and Data",
                               c.zero_filled(A.SUBSCRIPTION_ID_TYPE if kind is None
                                             else A.SUBSCRIPTION_ID_DATA))
        if kind == SUB_E164:
            ids.append((IdKind.MSISDN, _digits_of_address(data)))
        elif kind == SUB_IMSI:
            ids.append((IdKind.IMSI, data))
        elif kind == SUB_SIP_URI:
            digits = _digits_of_address(data)
            if digits:
                ids.append((IdKind.MSISDN, digits))
        elif kind in (SUB_NAI, SUB_PRIVATE):
            ids.append((IdKind.USERNAME, data))
    user = msg.find(A.USER_NAME)
    if user is not None and user.data:
        ids.append((IdKind.USERNAME, user.text))
    return tuple(ids)


def _ref_required(msg: Message, code: int) -> Avp:
    a = msg.find(code)
    if a is None:
        raise MessageError(Rc.MISSING_AVP, f"missing AVP {code}", c.zero_filled(code))
    return a


_REF_SINGLE = frozenset({A.SESSION_ID, A.CC_REQUEST_TYPE, A.CC_REQUEST_NUMBER, A.ORIGIN_HOST,
                     A.ORIGIN_REALM, A.SERVICE_CONTEXT_ID, A.REQUESTED_ACTION,
                     A.DESTINATION_REALM, A.AUTH_APPLICATION_ID})
"""AVPs the CCR grammar allows once (RFC 4006 §3.1): a second copy is 5009."""


def _ref_only_once(msg: Message) -> None:
    seen: set[int] = set()
    for a in msg.avps:
        code = a.code
        if code in _REF_SINGLE and not a.vendor:
            if code in seen:
                raise MessageError(Rc.AVP_OCCURS_TOO_MANY_TIMES, f"AVP {code} more than once",
                                   a.encode())
            seen.add(code)



def reference_parse_ccr(msg: Message) -> Ccr:
    """The credit-control view of a checked CCR; MessageError for a bad or missing AVP."""
    _ref_only_once(msg)
    sid = _ref_required(msg, A.SESSION_ID).text
    if not sid:
        raise MessageError(Rc.INVALID_AVP_VALUE, "empty Session-Id",
                           _ref_required(msg, A.SESSION_ID).encode())
    origin_host = _ref_required(msg, A.ORIGIN_HOST).text
    origin_realm = _ref_required(msg, A.ORIGIN_REALM).text
    dest_realm = _ref_required(msg, A.DESTINATION_REALM).text
    app = _ref_required(msg, A.AUTH_APPLICATION_ID)
    if app.u32 != c.App.CREDIT_CONTROL:
        raise MessageError(Rc.INVALID_AVP_VALUE, f"Auth-Application-Id {app.u32}", app.encode())
    context_avp = _ref_required(msg, A.SERVICE_CONTEXT_ID)
    context_id = context_avp.text
    rt_avp = _ref_required(msg, A.CC_REQUEST_TYPE)
    request_type = rt_avp.u32
    if request_type not in (INITIAL, UPDATE, TERMINATION, EVENT):
        raise MessageError(Rc.INVALID_AVP_VALUE, f"CC-Request-Type {request_type}",
                           rt_avp.encode())
    request_number = _ref_required(msg, A.CC_REQUEST_NUMBER).u32
    action = DIRECT_DEBITING
    ra = msg.find(A.REQUESTED_ACTION)
    if ra is not None:
        action = ra.u32
        if action not in (DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY):
            raise MessageError(Rc.INVALID_AVP_VALUE, f"Requested-Action {action}", ra.encode())
    msccs: list[Mscc] = []
    for m in msg.find_all(A.MULTIPLE_SERVICES_CREDIT_CONTROL):
        item = Mscc()
        for a in m.group():
            if a.vendor == VENDOR_3GPP:
                if a.code == A.REPORTING_REASON:
                    item.reporting_reason = a.u32
                continue
            if a.vendor:
                continue
            if a.code == A.RATING_GROUP:
                item.rating_group = a.u32
            elif a.code == A.SERVICE_IDENTIFIER:
                item.service_identifier = a.u32
            elif a.code == A.REQUESTED_SERVICE_UNIT:
                item.requested = _units(a)
            elif a.code == A.USED_SERVICE_UNIT:
                used = _units(a)
                if item.used is None:
                    item.used = used
                else:
                    item.used.add(used)
                for inner in a.group(2):
                    if inner.vendor == VENDOR_3GPP and inner.code == A.REPORTING_REASON:
                        item.reporting_reason = inner.u32
        msccs.append(item)
    single = None
    rsu, usu = msg.find(A.REQUESTED_SERVICE_UNIT), msg.find_all(A.USED_SERVICE_UNIT)
    if rsu is not None or usu:
        single = Mscc(requested=_units(rsu) if rsu is not None else None)
        for u in usu:
            if single.used is None:
                single.used = _units(u)
            else:
                single.used.add(_units(u))
    service = _service_of(context_id) or _guess_service(msccs, single)
    if service is None:
        raise MessageError(Rc.RATING_FAILED, f"no service for Service-Context-Id {context_id}",
                           context_avp.encode())
    svc_info = msg.find(A.SERVICE_INFORMATION, VENDOR_3GPP)
    destination = visited = ""
    if svc_info is not None:
        info = svc_info.group()
        ps = _nested(info, (A.PS_INFORMATION, VENDOR_3GPP))
        if ps is not None:
            mccmnc = c.find(ps.group(2), A.TGPP_SGSN_MCC_MNC, VENDOR_3GPP)
            if mccmnc is not None:
                visited = mccmnc.text
        called = _nested(info, (A.IMS_INFORMATION, VENDOR_3GPP),
                         (A.CALLED_PARTY_ADDRESS, VENDOR_3GPP))
        if called is not None:
            destination = _digits_of_address(called.text)
        recipient = _nested(info, (A.SMS_INFORMATION, VENDOR_3GPP),
                            (A.RECIPIENT_INFO, VENDOR_3GPP),
                            (A.RECIPIENT_ADDRESS, VENDOR_3GPP),
                            (A.ADDRESS_DATA, VENDOR_3GPP))
        if recipient is not None:
            destination = _digits_of_address(recipient.text)
    top_mccmnc = msg.find(A.TGPP_SGSN_MCC_MNC, VENDOR_3GPP)
    if not visited and top_mccmnc is not None:
        visited = top_mccmnc.text
    tc = msg.find(A.TERMINATION_CAUSE)
    return Ccr(
        session_id=sid, origin_host=origin_host, origin_realm=origin_realm,
        destination_realm=dest_realm, request_type=request_type,
        request_number=request_number, context_id=context_id, service=service,
        identity=_ref_identity(msg), requested_action=action, msccs=msccs, single=single,
        destination=destination, visited_network=visited,
        termination_cause=tc.u32 if tc is not None else None,
    )



# -- generated CCRs ----------------------------------------------------------------------

T = VENDOR_3GPP
text = st.one_of(st.sampled_from(["", "pgw;1;1", "tel:+41790000001", "sip:+4179@x",
                                  "228011234567890", "41790000001", "user@realm"]),
                 st.text(max_size=12))
raw_text = st.one_of(text.map(str.encode), st.binary(max_size=6))  # invalid UTF-8 too
small = st.integers(0, 6)
u32v = st.one_of(small, st.integers(0, 2**32 - 1))


def units_avp(code: int) -> st.SearchStrategy[bytes]:
    inner = st.lists(st.one_of(
        st.builds(c.u32, st.just(A.CC_TIME), u32v),
        st.builds(c.u64, st.just(A.CC_TOTAL_OCTETS), st.integers(0, 2**64 - 1)),
        st.builds(c.u64, st.just(A.CC_INPUT_OCTETS), st.integers(0, 2**40)),
        st.builds(c.u64, st.just(A.CC_OUTPUT_OCTETS), st.integers(0, 2**40)),
        st.builds(c.u64, st.just(A.CC_SERVICE_SPECIFIC_UNITS), st.integers(0, 100)),
        st.builds(c.u32, st.just(A.REPORTING_REASON), small, st.just(c.AVP_M), st.just(T)),
    ), max_size=3)
    return inner.map(lambda kids: c.grouped(code, *kids))


mscc = st.lists(st.one_of(
    st.builds(c.u32, st.just(A.RATING_GROUP), u32v),
    st.builds(c.u32, st.just(A.SERVICE_IDENTIFIER), u32v),
    units_avp(A.REQUESTED_SERVICE_UNIT),
    units_avp(A.USED_SERVICE_UNIT),
    st.builds(c.u32, st.just(A.REPORTING_REASON), small, st.just(c.AVP_M), st.just(T)),
), max_size=4).map(lambda kids: c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, *kids))

subscription = st.lists(st.one_of(
    st.builds(c.u32, st.just(A.SUBSCRIPTION_ID_TYPE),
              st.sampled_from([SUB_E164, SUB_IMSI, SUB_SIP_URI, SUB_NAI, SUB_PRIVATE, 9])),
    st.builds(c.octets, st.just(A.SUBSCRIPTION_ID_DATA), raw_text),
), max_size=3).map(lambda kids: c.grouped(A.SUBSCRIPTION_ID, *kids))

service_information = st.lists(st.one_of(
    st.builds(lambda v: c.grouped(A.PS_INFORMATION, c.octets(A.TGPP_SGSN_MCC_MNC, v, vendor=T),
                                  vendor=T), raw_text),
    st.builds(lambda v: c.grouped(A.IMS_INFORMATION, c.octets(A.CALLED_PARTY_ADDRESS, v,
                                                              vendor=T), vendor=T), raw_text),
    st.builds(lambda v: c.grouped(A.SMS_INFORMATION, c.grouped(
        A.RECIPIENT_INFO, c.grouped(A.RECIPIENT_ADDRESS, c.octets(
            A.ADDRESS_DATA, v, vendor=T), vendor=T), vendor=T), vendor=T), raw_text),
), max_size=3).map(lambda kids: c.grouped(A.SERVICE_INFORMATION, *kids, vendor=T))

avp = st.one_of(
    st.builds(c.octets, st.just(A.SESSION_ID), raw_text),
    st.builds(c.octets, st.just(A.ORIGIN_HOST), raw_text),
    st.builds(c.octets, st.just(A.ORIGIN_REALM), raw_text),
    st.builds(c.octets, st.just(A.DESTINATION_REALM), raw_text),
    st.builds(c.u32, st.just(A.AUTH_APPLICATION_ID), st.sampled_from([4, 4, 4, 0, 16777238])),
    st.builds(c.utf8, st.just(A.SERVICE_CONTEXT_ID), st.sampled_from([
        "32251@3gpp.org", "32260@3gpp.org", "32274@3gpp.org", "8.32251@3gpp.org",
        "x@example", ""])),
    st.builds(c.u32, st.just(A.CC_REQUEST_TYPE), st.sampled_from(
        [INITIAL, UPDATE, TERMINATION, EVENT, 0, 7])),
    st.builds(c.u32, st.just(A.CC_REQUEST_NUMBER), u32v),
    st.builds(c.u32, st.just(A.REQUESTED_ACTION), st.sampled_from(
        [DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY, 9])),
    st.builds(c.u32, st.just(A.TERMINATION_CAUSE), small),
    st.builds(c.octets, st.just(A.USER_NAME), raw_text),
    st.builds(c.octets, st.just(A.TGPP_SGSN_MCC_MNC), raw_text, st.just(c.AVP_M),
              st.just(T)),
    units_avp(A.REQUESTED_SERVICE_UNIT),
    units_avp(A.USED_SERVICE_UNIT),
    mscc, subscription, service_information,
    st.builds(c.octets, st.integers(1, 2**32 - 1), st.binary(max_size=4), st.just(0),
              st.just(10415)),
)

MANDATORY = [c.utf8(A.SESSION_ID, "pgw;1;1"), c.octets(A.ORIGIN_HOST, b"pgw"),
             c.octets(A.ORIGIN_REALM, b"r"), c.octets(A.DESTINATION_REALM, b"r"),
             c.u32(A.AUTH_APPLICATION_ID, 4), c.utf8(A.SERVICE_CONTEXT_ID, "32251@3gpp.org"),
             c.u32(A.CC_REQUEST_TYPE, UPDATE), c.u32(A.CC_REQUEST_NUMBER, 1)]


def outcome(parse: object, msg: Message) -> object:
    try:
        return parse(msg)  # type: ignore[operator]
    except MessageError as exc:
        return ("error", exc.result_code, exc.failed_avp)


@settings(max_examples=1500, deadline=None)
@given(drop=st.sets(st.integers(0, len(MANDATORY) - 1), max_size=1),
       dup=st.lists(st.sampled_from(MANDATORY), max_size=1),
       more=st.lists(avp, max_size=8), order=st.randoms(use_true_random=False))
def test_the_one_pass_parser_answers_as_the_find_based_one(
        drop: set[int], dup: list[bytes], more: list[bytes], order: object) -> None:
    parts = [a for i, a in enumerate(MANDATORY) if i not in drop] + dup + more
    order.shuffle(parts)  # type: ignore[attr-defined]
    msg = c.decode(c.encode_message(Cmd.CCR, c.FLAG_R | c.FLAG_P, 4, 1, 2, b"".join(parts)))
    try:
        c.check(msg.avps)
    except MessageError:
        return  # parse_ccr reads checked messages only
    assert outcome(parse_ccr, msg) == outcome(reference_parse_ccr, msg)


def test_the_comparison_sees_a_difference() -> None:
    """A parser that differs is caught: the reference on a CCR without Termination-Cause
    against one with it."""
    m1 = c.decode(c.encode_message(Cmd.CCR, c.FLAG_R, 4, 1, 2, b"".join(MANDATORY)))
    m2 = c.decode(c.encode_message(Cmd.CCR, c.FLAG_R, 4, 1, 2, b"".join(
        [*MANDATORY, c.u32(A.TERMINATION_CAUSE, 1)])))
    assert outcome(parse_ccr, m1) != outcome(reference_parse_ccr, m2)
    assert isinstance(outcome(parse_ccr, m1), Ccr)


def _si(visited: bytes, called: bytes) -> bytes:
    return c.grouped(A.SERVICE_INFORMATION, c.grouped(
        A.PS_INFORMATION, c.octets(A.TGPP_SGSN_MCC_MNC, visited, vendor=T), vendor=T),
        c.grouped(A.IMS_INFORMATION, c.octets(A.CALLED_PARTY_ADDRESS, called, vendor=T),
                  vendor=T), vendor=T)


def _octets_unit(code: int, n: int) -> bytes:
    return c.grouped(code, c.u64(A.CC_TOTAL_OCTETS, n))


REPEATED = {
    "Service-Information": (_si(b"22801", b"tel:+4179"), _si(b"31026", b"tel:+4930")),
    "3GPP-SGSN-MCC-MNC": (c.octets(A.TGPP_SGSN_MCC_MNC, b"22801", vendor=T),
                          c.octets(A.TGPP_SGSN_MCC_MNC, b"31026", vendor=T)),
    "User-Name": (c.utf8(A.USER_NAME, "a@x"), c.utf8(A.USER_NAME, "b@x")),
    "Subscription-Id": tuple(c.grouped(A.SUBSCRIPTION_ID, c.u32(A.SUBSCRIPTION_ID_TYPE, 0),
                                       c.utf8(A.SUBSCRIPTION_ID_DATA, m))
                             for m in ("41790000001", "41790000002")),
    "Requested-Service-Unit": (_octets_unit(A.REQUESTED_SERVICE_UNIT, 1),
                               _octets_unit(A.REQUESTED_SERVICE_UNIT, 2)),
    "Used-Service-Unit": (_octets_unit(A.USED_SERVICE_UNIT, 3),
                          _octets_unit(A.USED_SERVICE_UNIT, 4)),
    "Termination-Cause": (c.u32(A.TERMINATION_CAUSE, 1), c.u32(A.TERMINATION_CAUSE, 4)),
    "MSCC": (c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, c.u32(A.RATING_GROUP, 1)),
             c.grouped(A.MULTIPLE_SERVICES_CREDIT_CONTROL, c.u32(A.RATING_GROUP, 2))),
    "Origin-Host": (c.octets(A.ORIGIN_HOST, b"other"),),  # a second one: 5009
}


@pytest.mark.parametrize("name", sorted(REPEATED))
def test_a_repeated_avp_reads_as_the_reference_reads_it(name: str) -> None:
    """Which copy counts (the first, all, or a 5009) when an AVP comes twice."""
    msg = c.decode(c.encode_message(Cmd.CCR, c.FLAG_R, 4, 1, 2, b"".join(
        [*MANDATORY, *REPEATED[name]])))
    c.check(msg.avps)
    assert outcome(parse_ccr, msg) == outcome(reference_parse_ccr, msg)
