"""python-diameter's own Node as an independent Gy client (PROTOCOLS.md §2.5), one CCR per run.

Usage: gy_client.py HOST PORT I|U|T|E [ACTION] [CONTEXT]
Environment: PEER (server Origin-Host), SID, MSISDN, RG, NUMBER (CC-Request-Number),
ORIGIN (client Origin-Host), REALM, VISITED (3GPP-SGSN-MCC-MNC), RAR_WAIT (seconds to
stay up answering RAR/ASR), GRACEFUL (stop with DPR/DPA instead of exiting at once).
Prints one line: CCA <result> [(rg, result, gsu, validity, fui), ...] plus check/cost.
"""

import os
import sys
import time

from diameter.message.avp.grouped import (
    PsInformation,
    RequestedServiceUnit,
    ServiceInformation,
    UsedServiceUnit,
)
from diameter.message.commands import CreditControlRequest
from diameter.message.constants import (
    APP_DIAMETER_CREDIT_CONTROL_APPLICATION,
    E_RESULT_CODE_DIAMETER_LIMITED_SUCCESS,
    E_RESULT_CODE_DIAMETER_SUCCESS,
    E_SUBSCRIPTION_ID_TYPE_END_USER_E164,
)
from diameter.node import Node
from diameter.node.application import SimpleThreadingApplication

host, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
action = int(sys.argv[4]) if len(sys.argv) > 4 else 0
ctx = sys.argv[5] if len(sys.argv) > 5 else "32251@3gpp.org"
origin = os.environ.get("ORIGIN", "pgw.test.realm")
realm = os.environ.get("REALM", "test.realm")
received = []


def on_request(app, req):  # server-initiated RAR / ASR
    received.append(req.header.command_code)
    print("SERVER-REQUEST", req.header.command_code, flush=True)
    ans = app.generate_answer(req)
    ans.result_code = (E_RESULT_CODE_DIAMETER_LIMITED_SUCCESS if req.header.command_code == 258
                       else E_RESULT_CODE_DIAMETER_SUCCESS)
    return ans


node = Node(origin, realm)
peer = node.add_peer(f"aaa://{os.environ.get('PEER', 'ocs.test.realm')}:{port};transport=tcp",
                     realm, ip_addresses=[host], is_persistent=True, is_default=True)
app = SimpleThreadingApplication(APP_DIAMETER_CREDIT_CONTROL_APPLICATION,
                                 is_auth_application=True, request_handler=on_request)
node.add_application(app, [peer])
node.start()
app.wait_for_ready()
r = CreditControlRequest()
r.session_id = os.environ.get("SID", f"{origin};1;1")
r.origin_host = origin.encode()
r.origin_realm = realm.encode()
r.destination_realm = realm.encode()
r.auth_application_id = 4
r.service_context_id = ctx
r.cc_request_type = {"I": 1, "U": 2, "T": 3, "E": 4}[kind]
r.cc_request_number = int(os.environ.get("NUMBER", {"I": 0, "U": 1, "T": 2, "E": 0}[kind]))
r.add_subscription_id(E_SUBSCRIPTION_ID_TYPE_END_USER_E164, os.environ.get("MSISDN", "41790000001"))
r.multiple_services_indicator = 1
rg = int(os.environ.get("RG", "10"))
if os.environ.get("VISITED"):
    r.service_information = ServiceInformation(
        ps_information=PsInformation(tgpp_sgsn_mcc_mnc=os.environ["VISITED"]))
ims = ctx.startswith("32260")
rsu = RequestedServiceUnit(cc_time=60) if ims else RequestedServiceUnit(cc_total_octets=1_000_000)
usu = UsedServiceUnit(cc_time=30) if ims else UsedServiceUnit(cc_total_octets=500_000)
if kind == "E":
    r.requested_action = action
    r.add_multiple_services_credit_control(
        service_identifier=1, rating_group=rg,
        requested_service_unit=RequestedServiceUnit(cc_service_specific_units=1))
else:
    r.add_multiple_services_credit_control(
        rating_group=rg, requested_service_unit=None if kind == "T" else rsu,
        used_service_unit=None if kind == "I" else usu)
try:
    a = app.send_request(r, timeout=5)
    extra = []
    if getattr(a, "check_balance_result", None) is not None:
        extra.append(f"check={a.check_balance_result}")
    ci = getattr(a, "cost_information", None)
    if ci is not None:
        extra.append(f"cost={ci.unit_value.value_digits}e{ci.unit_value.exponent or 0}"
                     f"/{ci.currency_code}")
    print("CCA", a.result_code, a.cc_request_type, a.cc_request_number,
          [(m.rating_group, m.result_code,
            (m.granted_service_unit.cc_total_octets or m.granted_service_unit.cc_time
             or m.granted_service_unit.cc_service_specific_units)
            if m.granted_service_unit else None,
            m.validity_time,
            m.final_unit_indication.final_unit_action if m.final_unit_indication else None)
           for m in a.multiple_services_credit_control], *extra, flush=True)
    wait = float(os.environ.get("RAR_WAIT", "0"))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not received:
        time.sleep(0.05)
    if received:  # the handler returned the answer; give python-diameter time to send it
        time.sleep(0.5)
finally:
    if os.environ.get("GRACEFUL"):
        node.stop(5)  # DPR/DPA, then python-diameter joins its threads (~9 s)
    else:
        sys.stdout.flush()
        os._exit(0)
