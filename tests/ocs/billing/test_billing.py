"""Billing from real CDR files written by the exporter: exact amounts, idempotency, late
CDRs, tampering and malformed files."""

from __future__ import annotations

import calendar
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_support import CONFIG_DIR

from ocs.billing.reconcile import reconcile
from ocs.billing.run import Biller, BillingError, round_cents, round_ratio_cents
from ocs.cdr.export import CdrExporter
from ocs.charging.engine import ChargingEngine, EngineSettings
from ocs.charging.model import DebitRequest, IdKind
from ocs.config import BillingConfig, TaxRule
from ocs.provisioning import NewSubscriber, op_add_subscriber, op_load_plans
from ocs.rating.plans import Service, load_plans_file
from ocs.store import Store

NOV_10 = calendar.timegm((2026, 11, 10, 12, 0, 0))
NOV_20 = calendar.timegm((2026, 11, 20, 12, 0, 0))
AFTER = calendar.timegm((2030, 1, 1, 0, 0, 0))
"""The tests' clock for billing: every month they bill has ended."""
DEC_05 = calendar.timegm((2026, 12, 5, 12, 0, 0))
CFG = BillingConfig(due_days=14, taxes=(TaxRule(name="VAT", rate="0.081", prefix="41"),
                                        TaxRule(name="VAT", rate="0.19", prefix="")))
BIZ = "41790000004"
PRE = "41790000001"


class World:
    def __init__(self, root: Path):
        self.root = root
        self.store = Store(root / "data", map_size_mb=64)
        self.store.run_write(op_load_plans(load_plans_file(CONFIG_DIR / "plans.toml")))
        self.store.run_write(op_add_subscriber(NewSubscriber(
            msisdn=BIZ, plan_id="postpaid-business", postpaid=True, credit_limit="500"),
            now=NOV_10))
        self.store.run_write(op_add_subscriber(NewSubscriber(
            msisdn=PRE, plan_id="prepaid-basic", balance="50"), now=NOV_10 - 86400 * 30))
        self.engine = ChargingEngine(self.store, None, EngineSettings(node="b"))
        self.cdr_dir = root / "data" / "cdr"
        self.exporter = CdrExporter(self.store, self.cdr_dir, "b", rotate_s=3600,
                                    rotate_records=1000)
        self.n = 0

    def charge(self, msisdn: str, service: Service, units: int, dest: str, at: int,
               visited: str = "") -> int:
        self.n += 1
        d = self.engine.debit_sync(DebitRequest(
            request_key=b"k%d" % self.n, subscriber=((IdKind.MSISDN, msisdn),),
            service=service, units=units, destination=dest, visited_network=visited, now=at))
        assert d.ok, d
        return d.charged

    def flush(self, at: int) -> None:
        self.exporter.flush(at)

    def biller(self) -> Biller:
        return Biller(self.store, self.cdr_dir, CFG, clock=lambda: AFTER)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w  # type: ignore[misc]
    w.store.close()


def lines(inv_json: dict) -> list[tuple[str, int, str]]:  # type: ignore[type-arg]
    return [(ln["kind"], ln["quantity"], ln["amount"]) for ln in inv_json["lines"]]


def test_postpaid_invoice_exact(world: World) -> None:
    # roaming voice (no allowance): 125 s at 0.90/min in 60 s blocks = 180 s = 2.70
    assert world.charge(BIZ, Service.VOICE, 125, "41441234567", NOV_20, "310260") == 2_700_000
    # national voice per second at 0.05/min from the 36,000 s allowance: free
    assert world.charge(BIZ, Service.VOICE, 7, "41441234567", NOV_20) == 0
    # roaming SMS at 0.20 (no allowance abroad)
    assert world.charge(BIZ, Service.SMS, 1, "4179", NOV_20, "26201") == 200_000
    # prepaid usage: information only
    assert world.charge(PRE, Service.SMS, 2, "4915", NOV_20) == 300_000
    world.flush(NOV_20)
    out = world.root / "inv"
    summary, _ = world.biller().run("2026-11", out)
    assert summary.invoices == 2 and summary.rows == 4
    biz = json.loads((out / "INV-202611-000002.json").read_text())
    assert biz["msisdn"] == BIZ and biz["plan"] == "postpaid-business"
    # activated Nov 10 (Zurich): 21 of 30 days of 29.00 = 20.30
    assert lines(biz) == [
        ("fee", 21, "20.3000"),
        ("usage", 1, "0.2000"),
        ("allowance", 7, "0.0000"),  # the 7 national seconds, from the allowance
        ("usage", 125, "2.7000"),
        ("tax", 0, "1.8800"),  # 1.644 -> 1.64, 0.0162 -> 0.02, 0.2187 -> 0.22
    ]
    assert (biz["subtotal"], biz["tax"], biz["total"]) == ("23.2000", "1.8800", "25.0800")
    assert biz["due_date"] == "2026-12-15" and biz["currency"] == "EUR"
    pre = json.loads((out / "INV-202611-000001.json").read_text())
    assert pre["lines"] == [] and pre["total"] == "0.0000"
    assert pre["prepaid_usage"] == [{"service": "sms", "units": 2, "charged": "0.3000"}]
    csv_text = (out / "summary.csv").read_text().splitlines()
    assert csv_text[2] == (f"INV-202611-000002,{BIZ},2026-11,postpaid-business,EUR,23.2000,"
                           "1.8800,25.0800,2026-12-15")
    html = (out / "INV-202611-000002.html").read_text()
    assert "25.08 EUR" in html and "INV-202611-000002" in html


def test_rerun_is_byte_identical_and_late_cdrs_adjust_next_period(world: World) -> None:
    world.charge(BIZ, Service.SMS, 1, "4179", NOV_20, "26201")
    world.flush(NOV_20)
    out1, out2 = world.root / "a", world.root / "b"
    world.biller().run("2026-11", out1)
    # a CDR of November arrives after November was billed (written to a new file)
    world.charge(BIZ, Service.SMS, 2, "4179", NOV_20 + 3600, "26201")
    world.flush(NOV_20 + 7200)
    s2, _ = world.biller().run("2026-11", out2)
    assert s2.rerun
    assert {p.name: p.read_bytes() for p in out1.iterdir()} == {
        p.name: p.read_bytes() for p in out2.iterdir()}
    world.charge(BIZ, Service.SMS, 1, "4179", DEC_05, "26201")
    world.flush(DEC_05)
    world.biller().run("2026-12", world.root / "dec")
    dec = json.loads((world.root / "dec" / "INV-202612-000001.json").read_text())
    assert lines(dec) == [
        ("fee", 31, "29.0000"),
        ("adjustment", 2, "0.4000"),
        ("usage", 1, "0.2000"),
        ("tax", 0, "2.4000"),  # 2.349 -> 2.35, 0.0324 -> 0.03, 0.0162 -> 0.02
    ]
    assert "from 2026-11" in dec["lines"][1]["description"]
    with pytest.raises(BillingError, match=r"2026-10 comes before .* already billed"):
        world.biller().run("2026-10", world.root / "oct")


def test_edited_cdr_file_is_caught(world: World) -> None:
    world.charge(BIZ, Service.SMS, 1, "4179", NOV_20, "26201")
    world.flush(NOV_20)
    world.biller().run("2026-11", world.root / "inv")
    assert reconcile(world.store, world.cdr_dir, "2026-11", CFG).ok
    (f,) = sorted(world.cdr_dir.glob("*.csv"))
    f.write_text(f.read_text().replace(",0.200000,", ",0.020000,"))
    rec = reconcile(world.store, world.cdr_dir, "2026-11", CFG)
    assert not rec.ok
    assert any("edited since 2026-11 was billed" in d for d in rec.differences)
    assert any(d.startswith(f"{BIZ}: CDR charges 0.0200 but the engine charged 0.2000")
               for d in rec.differences)
    with pytest.raises(BillingError, match="changed since period 2026-11"):
        world.biller().run("2026-11", world.root / "again")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda t: t[:-1], "truncated"),
    (lambda t: t[:-30], "expected 26 fields"),
    (lambda t: t.replace(",0.200000,", ",zero,"), "charge"),
    (lambda t: t.replace("2026-11-20T12:00:00Z", "20/11/2026"), "end_time"),
    (lambda t: t + "a,b,c\n", "expected 26 fields"),
])
def test_malformed_file_fails_with_file_and_line(world: World, damage, message) -> None:  # type: ignore[no-untyped-def]
    world.charge(BIZ, Service.SMS, 1, "4179", NOV_20, "26201")
    world.flush(NOV_20)
    (f,) = sorted(world.cdr_dir.glob("*.csv"))
    f.write_text(damage(f.read_text()))
    out = world.root / "inv"
    with pytest.raises(BillingError, match=rf"{f.name}:\d+: .*{message}"):
        world.biller().run("2026-11", out)
    assert not out.exists()
    assert world.biller().stored_run("2026-11") is None


def test_rounding_helpers() -> None:
    assert round_cents(5_000) == 10_000 and round_cents(4_999) == 0
    assert round_cents(-5_000) == -10_000
    assert round_ratio_cents(29_000_000 * 21, 30) == 20_300_000
    assert round_ratio_cents(1, 3) == 0 and round_ratio_cents(15_000, 3) == 10_000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([Service.SMS, Service.VOICE]),
                          st.integers(1, 400), st.sampled_from(["310260", "26201", ""])),
                min_size=1, max_size=12))
def test_total_is_sum_of_lines_is_subtotal_plus_tax(tmp_path_factory: pytest.TempPathFactory,
                                                    events: list[tuple[Service, int, str]]) -> (
                                                        None):
    w = World(tmp_path_factory.mktemp("p"))
    try:
        for i, (svc, units, visited) in enumerate(events):
            w.charge(BIZ, svc, units if svc is Service.VOICE else units % 5 + 1, "41441234567",
                     NOV_20 + i, visited)
        w.flush(NOV_20 + 100)
        _s, invoices = w.biller().run("2026-11", None, dry_run=True)
        for inv in invoices:
            assert inv.total == sum(ln.amount for ln in inv.lines) == inv.subtotal + inv.tax
            assert all(ln.amount % 10_000 == 0 for ln in inv.lines)  # whole cents
            taxable = [ln.amount for ln in inv.lines if ln.kind != "tax"]
            assert inv.tax == sum(round_ratio_cents(a * 81_000, 1_000_000) for a in taxable)
    finally:
        w.store.close()


def test_plan_change_prorates_and_discount_applies(world: World) -> None:
    from ocs.config import Discount
    from ocs.provisioning import op_change_plan

    # a second postpaid plan exists only in this test: same mode and currency
    doc = load_plans_file(CONFIG_DIR / "plans.toml")
    extra = dict(next(p for p in doc.plans if p["id"] == "postpaid-business"))
    extra.update(id="postpaid-max", name="Max Postpaid", monthly_fee="59.00")
    from ocs.rating.plans import PlansDocument

    world.store.run_write(op_load_plans(PlansDocument(plans=(extra,), zones=())))
    # on business (29.00) from Nov 10, on max (59.00) from Nov 25 (Zurich days)
    world.store.run_write(op_change_plan(BIZ, "postpaid-max", now=calendar.timegm(
        (2026, 11, 25, 8, 0, 0))))
    world.charge(BIZ, Service.SMS, 1, "4179", NOV_20 + 10 * 86400, "26201")
    world.flush(NOV_20 + 10 * 86400)
    cfg = BillingConfig(taxes=CFG.taxes, due_days=14, discounts=(
        Discount(description="Bundle discount", percent="10", plan="postpaid-max",
                 applies_to="fee"),))
    _s, invoices = Biller(world.store, world.cdr_dir, cfg, clock=lambda: AFTER).run(
        "2026-11", None, dry_run=True)
    (inv,) = [i for i in invoices if i.msisdn == BIZ]
    assert inv.plan == "postpaid-max"
    got = [(ln.kind, ln.quantity, ln.amount) for ln in inv.lines]
    assert got == [
        ("fee", 15, 14_500_000),  # Nov 10-24 on Business: 29.00 * 15/30
        ("fee", 6, 11_800_000),   # Nov 25-30 on Max: 59.00 * 6/30
        ("usage", 1, 200_000),
        ("discount", 0, -2_630_000),  # 10 % of both fee lines (the plan on the invoice)
        # tax per line: 1.1745->1.17, 0.9558->0.96, 0.0162->0.02, -0.21303->-0.21
        ("tax", 0, 1_940_000),
    ]
    assert inv.total == 14_500_000 + 11_800_000 + 200_000 - 2_630_000 + 1_940_000
    with pytest.raises(Exception, match="already on"):
        world.store.run_write(op_change_plan(BIZ, "postpaid-max"))
    with pytest.raises(Exception, match="is prepaid"):
        world.store.run_write(op_change_plan(BIZ, "prepaid-basic"))


def test_allowance_boundary_then_overage(world: World) -> None:
    # Business includes 500 SMS a month at home; 498 + 5 = 503 messages: 3 are overage
    assert world.charge(BIZ, Service.SMS, 498, "4179", NOV_20) == 0
    assert world.charge(BIZ, Service.SMS, 5, "4179", NOV_20 + 60) == 150_000  # 3 x 0.05
    world.flush(NOV_20 + 60)
    _s, invoices = world.biller().run("2026-11", None, dry_run=True)
    (inv,) = [i for i in invoices if i.msisdn == BIZ]
    got = [(ln.kind, ln.quantity, ln.amount) for ln in inv.lines]
    assert got[1:3] == [("allowance", 500, 0), ("usage", 3, 150_000)]


def test_a_period_not_ended_is_refused_and_a_preview_locks_nothing(world: World) -> None:
    world.charge(BIZ, Service.VOICE, 60, "41791234567", NOV_20)
    world.flush(NOV_20 + 60)
    # 30 Nov 23:30 UTC is 1 Dec 00:30 in Zurich, but the UTC month has not ended yet
    almost = calendar.timegm((2026, 11, 30, 23, 30, 0))
    early = Biller(world.store, world.cdr_dir, CFG, clock=lambda: almost)
    assert early.period_end("2026-11") == (calendar.timegm((2026, 12, 1, 0, 0, 0)), "UTC")
    with pytest.raises(BillingError, match="has not ended yet"):
        early.run("2026-11", world.root / "early")
    assert not (world.root / "early").exists()
    summary, invoices = early.run("2026-11", world.root / "preview", preview=True)
    assert summary.invoices == len(invoices) >= 1
    assert (world.root / "preview" / "summary.csv").exists()
    assert early.stored_run("2026-11") is None  # nothing recorded, nothing locked
    # a charge after the preview is on the real run's invoice
    world.charge(BIZ, Service.VOICE, 60, "41791234567", NOV_20 + 3600)
    world.flush(NOV_20 + 3700)
    done = Biller(world.store, world.cdr_dir, CFG, clock=lambda: almost + 3600)
    real, _invoices = done.run("2026-11", world.root / "real")
    assert real.rows == summary.rows + 1
    assert done.stored_run("2026-11") is not None


def test_invoices_carry_the_customer_and_the_issuer_in_json_html_and_pdf(
        world: World) -> None:
    import io

    from pypdf import PdfReader

    from ocs.billing.pdf import invoice_pdf
    from ocs.provisioning import SubscriberChange, op_set_subscriber

    world.store.run_write(op_set_subscriber(BIZ, SubscriberChange(
        name="Łukasz <Zoë> Müller", address="Bahnhofstrasse 1\n8001 Zürich")))
    assert world.charge(BIZ, Service.SMS, 1, "4179", NOV_20, "26201") == 200_000
    world.flush(NOV_20)
    cfg = BillingConfig(taxes=CFG.taxes, due_days=14, issuer_name="Helvetia Mobile AG",
                        issuer_address="Seestrasse 5\n8002 Zürich",
                        issuer_tax_id="CHE-123.456.789 MWST")
    out = world.root / "inv"
    Biller(world.store, world.cdr_dir, cfg, clock=lambda: AFTER).run("2026-11", out,
                                                                      pdf=True)
    (name,) = [p.stem for p in out.glob("*.json")
               if json.loads(p.read_text())["msisdn"] == BIZ]
    doc = json.loads((out / f"{name}.json").read_text())
    assert doc["customer"] == {"name": "Łukasz <Zoë> Müller",
                               "address": "Bahnhofstrasse 1\n8001 Zürich"}
    assert doc["issuer"] == {"name": "Helvetia Mobile AG",
                             "address": "Seestrasse 5\n8002 Zürich",
                             "tax_id": "CHE-123.456.789 MWST"}
    html = (out / f"{name}.html").read_text()
    assert "Łukasz &lt;Zoë&gt; Müller<br>Bahnhofstrasse 1<br>8001 Zürich" in html
    assert "Tax id CHE-123.456.789 MWST" in html
    pdf = (out / f"{name}.pdf").read_bytes()
    assert pdf == invoice_pdf(doc)  # the run's PDF is the one drawn from the JSON later
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    for expected in ("Helvetia Mobile AG", "CHE-123.456.789 MWST", "8001 Zürich",
                     "Müller", name, f"Total due {doc['total'][:-2]} EUR"):
        assert expected in text, (expected, text)
    # a later change of the issuer does not change a billed period's invoices
    moved = BillingConfig(taxes=CFG.taxes, due_days=14, issuer_name="Other AG")
    Biller(world.store, world.cdr_dir, moved, clock=lambda: AFTER).run("2026-11",
                                                                        world.root / "re")
    again = json.loads((world.root / "re" / f"{name}.json").read_text())
    assert again == doc
