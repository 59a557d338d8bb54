"""The real ``ocs`` console script, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

OCS = str(Path(sys.executable).parent / "ocs")


def ocs(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([OCS, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def inited(repo_cwd: Path) -> Path:
    ocs("init", "--demo", cwd=repo_cwd)
    return repo_cwd


def test_init_tour(inited: Path) -> None:
    cwd = inited
    out = json.loads(ocs("subscriber", "list", "--json", cwd=cwd).stdout)
    assert len(out) == 5
    ocs("subscriber", "add", "--msisdn", "+41791112233", "--plan", "prepaid-basic",
        "--imsi", "228019999999999", "--username", "zoe@example.net", "--password", "pw",
        "--balance", "5.25", "--no-roaming", cwd=cwd)
    show = json.loads(ocs("subscriber", "show", "41791112233", "--json", cwd=cwd).stdout)
    assert show["balance"] == "5.2500" and show["available"] == "5.2500"
    assert show["reserved"] == "0.0000" and show["roaming"] is False
    assert show["plan"] == "prepaid-basic" and show["status"] == "active"
    assert "password" not in json.dumps(show) and "pw" not in show.values()
    for key in ("msisdn", "imsi", "username", "plan", "mode", "status", "currency",
                "balance", "reserved", "available", "allowances"):
        assert key in show
    ch = json.loads(ocs("charge", "41791112233", "--service", "voice", "--units", "61",
                        "--destination", "41900123456", "--json", cwd=cwd).stdout)
    assert ch["ok"] and ch["charged"] == "4.5000" and ch["rate_id"] == "voice-premium"
    ocs("subscriber", "topup", "41791112233", "1.5", cwd=cwd)
    show = json.loads(ocs("subscriber", "show", "41791112233", "--json", cwd=cwd).stdout)
    assert show["balance"] == "2.2500"
    refused = ocs("charge", "41791112233", "--service", "voice", "--units", "61",
                  "--destination", "41900123456", cwd=cwd, ok=False)
    assert refused.returncode == 1 and "out_of_credit" in refused.stderr
    flush = ocs("cdr", "flush", cwd=cwd)
    assert "closed cdr_ocs-1_" in flush.stdout
    files = json.loads(ocs("cdr", "list", "--json", cwd=cwd).stdout)
    assert len(files) == 1 and files[0]["records"] == 1
    text = Path(files[0]["path"]).read_text()
    assert "41791112233" in text and ",4.500000,EUR,prepaid-basic,voice-premium," in text
    ocs("subscriber", "plan", "41791112233", "prepaid-data", cwd=cwd)
    show = json.loads(ocs("subscriber", "show", "41791112233", "--json", cwd=cwd).stdout)
    assert show["plan"] == "prepaid-data" and show["balance"] == "2.2500"
    bad = ocs("subscriber", "plan", "41791112233", "postpaid-business", cwd=cwd, ok=False)
    assert bad.returncode == 2 and "is postpaid" in bad.stderr
    for action, status in (("suspend", "suspended"), ("resume", "active"),
                           ("delete", "terminated")):
        ocs("subscriber", action, "41791112233", cwd=cwd)
        show = json.loads(ocs("subscriber", "show", "41791112233", "--json", cwd=cwd).stdout)
        assert show["status"] == status
    plans = json.loads(ocs("plan", "list", "--json", cwd=cwd).stdout)
    assert {p["id"] for p in plans} == {"prepaid-basic", "prepaid-data", "postpaid-business",
                                        "wifi-hourly"}
    one = json.loads(ocs("plan", "show", "prepaid-basic", "--json", cwd=cwd).stdout)
    assert one["rates"][0]["price"] == "0.0100"


def _store_snapshot(cwd: Path) -> str:
    return ocs("subscriber", "list", "--json", cwd=cwd).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["subscriber", "add", "--msisdn", "12ab", "--plan", "prepaid-basic"], "invalid MSISDN"),
        (["subscriber", "add", "--msisdn", "41791234567", "--plan", "prepaid-basic",
          "--imsi", "123"], "invalid IMSI"),
        (["subscriber", "add", "--msisdn", "41791234567", "--plan", "gold"], "unknown plan"),
        (["subscriber", "add", "--msisdn", "41790000001", "--plan", "prepaid-basic"],
         "already exists"),
        (["subscriber", "add", "--msisdn", "41791234567", "--plan", "prepaid-basic",
          "--balance", "1.0000001"], "more than 6 decimals"),
        (["subscriber", "add", "--msisdn", "41791234567", "--plan", "prepaid-basic",
          "--balance", "-3"], "must not be negative"),
        (["subscriber", "add", "--msisdn", "41791234567", "--plan", "prepaid-basic",
          "--imsi", "228010000000001"], "IMSI 228010000000001 already belongs"),
        (["subscriber", "topup", "41790000001", "-1"], "must not be negative"),
        (["subscriber", "topup", "41790000001", "NaN"], "not a decimal amount"),
        (["subscriber", "topup", "41799999999", "1"], "no subscriber"),
        (["subscriber", "show", "41799999999"], "no subscriber"),
        (["subscriber", "resume", "41790000001"], "cannot resume"),
        (["plan", "show", "nope"], "no plan"),
        (["subscriber", "frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(inited: Path, args: list[str],
                                                   message: str) -> None:
    before = _store_snapshot(inited)
    p = ocs(*args, cwd=inited, ok=False)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert _store_snapshot(inited) == before


def test_malformed_plans_file_names_key(inited: Path) -> None:
    bad = inited / "bad.toml"
    bad.write_text('[[plans]]\nid = "x"\n[[plans.rates]]\nid = "r"\nservice = "data"\n'
                   'price = 0.01\n')
    p = ocs("plan", "load", str(bad), cwd=inited, ok=False)
    assert p.returncode == 2
    assert "plans[0].rates[0].price" in p.stderr and "bad.toml" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert "x" not in {pl["id"] for pl in json.loads(
        ocs("plan", "list", "--json", cwd=inited).stdout)}


def test_unknown_config_key(repo_cwd: Path) -> None:
    cfg = repo_cwd / "config" / "ocs.toml"
    cfg.write_text(cfg.read_text().replace("[store]\n", "[store]\nturbo = true\n"))
    p = ocs("init", "--demo", cwd=repo_cwd, ok=False)
    assert p.returncode == 2
    assert "config/ocs.toml: store.turbo: unknown key" in p.stderr
    assert not (repo_cwd / "data").exists()


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("commit_max_ops = 256", "commit_max_ops = -1"), "store.commit_max_ops: must be"),
        (("commit_max_ops = 256", 'commit_max_ops = "many"'), "store.commit_max_ops: expected"),
        (('listen = "127.0.0.1:9100"', 'listen = "nowhere"'), "admin.listen"),
        (('currency = "EUR"', 'currency = "EURO"'), "node.currency"),
        (("[cdr]", "[cdrs]"), "cdrs: unknown section"),
    ],
)
def test_bad_config_values(repo_cwd: Path, replace: tuple[str, str], message: str) -> None:
    cfg = repo_cwd / "config" / "ocs.toml"
    cfg.write_text(cfg.read_text().replace(*replace, 1))
    p = ocs("subscriber", "list", cwd=repo_cwd, ok=False)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_data_dir_override_and_missing_store(repo_cwd: Path) -> None:
    p = ocs("subscriber", "list", "--data-dir", str(repo_cwd / "elsewhere"), cwd=repo_cwd,
            ok=False)
    assert p.returncode == 1 and "ocs init" in p.stderr
    ocs("init", "--data-dir", str(repo_cwd / "elsewhere"), cwd=repo_cwd)
    assert (repo_cwd / "elsewhere" / "ocs.lmdb").exists()


def test_import(repo_cwd: Path) -> None:
    ocs("init", cwd=repo_cwd)
    csv = repo_cwd / "subs.csv"
    rows = ["msisdn,plan,imsi,balance"] + [
        f"4179{i:07d},prepaid-basic,22801{i:010d},1.50" for i in range(2000)]
    csv.write_text("\n".join(rows) + "\n")
    out = ocs("subscriber", "import", str(csv), cwd=repo_cwd)
    assert "imported 2000 subscribers" in out.stdout
    show = json.loads(ocs("subscriber", "show", "41790001999", "--json", cwd=repo_cwd).stdout)
    assert show["balance"] == "1.5000" and show["imsi"] == "228010000001999"
    # a bad row anywhere: nothing of the file is written
    bad = repo_cwd / "bad.csv"
    bad.write_text("msisdn,plan\n41780000001,prepaid-basic\n41780000002,gold\n")
    p = ocs("subscriber", "import", str(bad), cwd=repo_cwd, ok=False)
    assert p.returncode == 2 and "bad.csv:3: unknown plan 'gold'" in p.stderr
    assert ocs("subscriber", "show", "41780000001", cwd=repo_cwd, ok=False).returncode == 2
    dup = repo_cwd / "dup.csv"
    dup.write_text("msisdn,plan\n41780000001,prepaid-basic\n41780000001,prepaid-basic\n")
    p = ocs("subscriber", "import", str(dup), cwd=repo_cwd, ok=False)
    assert "dup.csv:3: subscriber 41780000001 already exists" in p.stderr


def test_rate_and_cdr_explain(inited: Path) -> None:
    cwd = inited
    ch = json.loads(ocs("charge", "41790000001", "--service", "voice", "--units", "61",
                        "--destination", "41900123456", "--json", cwd=cwd).stdout)
    assert ch["charged"] == "4.5000"
    x = json.loads(ocs("rate", "explain", "--msisdn", "41790000001", "--service", "voice",
                       "--units", "61", "--destination", "41900123456", "--at",
                       "2026-11-21T12:00Z", "--json", cwd=cwd).stdout)
    assert x["winner"] == "voice-premium" and x["charge"] == "4.5000"
    assert x["charge_micro"] == 4_500_000 and x["billed_units"] == 120
    assert x["local_time"] == "2026-11-21T13:00:00+01:00" and x["msisdn"] == "41790000001"
    weekend = next(c for c in x["candidates"] if c["rate"] == "voice-national-weekend")
    assert weekend["matched"] and weekend["specificity"]["band_named"] == 1
    text = ocs("rate", "explain", "--plan", "prepaid-basic", "--service", "sms",
               cwd=cwd).stdout
    assert "winner: sms" in text and "charge = " in text
    none = ocs("rate", "explain", "--plan", "prepaid-basic", "--service", "time", cwd=cwd,
               ok=False)
    assert none.returncode == 1 and "no time rate" in none.stdout
    bad = ocs("rate", "explain", "--plan", "prepaid-basic", "--service", "sms", "--at",
              "2026-11-21T12:00", cwd=cwd, ok=False)
    assert bad.returncode == 2 and "no time zone" in bad.stderr
    assert ocs("rate", "explain", "--plan", "nope", "--service", "sms", cwd=cwd,
               ok=False).returncode == 1
    cdr = json.loads(ocs("cdr", "explain", ch["record_id"], "--json", cwd=cwd).stdout)
    assert cdr["reproduced"] is True and cdr["charge_micro"] == 4_500_000
    assert cdr["explanation"]["winner"] == "voice-premium"
    ocs("cdr", "flush", cwd=cwd)  # from a closed file as well
    text = ocs("cdr", "explain", ch["record_id"], cwd=cwd).stdout
    assert "reproduced exactly" in text and "4500000 micro" in text
    missing = ocs("cdr", "explain", "nope-1", cwd=cwd, ok=False)
    assert missing.returncode == 1 and "no CDR" in missing.stderr


def test_plan_versions_history_and_effective(inited: Path) -> None:
    cwd = inited
    plans = cwd / "config" / "plans.toml"
    hist = json.loads(ocs("plan", "history", "prepaid-basic", "--json", cwd=cwd).stdout)
    assert [(h["version"], h["effective_at"], h["in_effect_now"]) for h in hist] == [
        (1, "from the start", True)]
    same = json.loads(ocs("plan", "load", str(plans), "--json", cwd=cwd).stdout)
    assert same["new_versions"] == {}
    changed = cwd / "changed.toml"
    changed.write_text(plans.read_text().replace(
        'id = "voice-premium"\nservice = "voice"\nprice = "2.0000"',
        'id = "voice-premium"\nservice = "voice"\nprice = "3.0000"'))
    out = json.loads(ocs("plan", "load", str(changed), "--effective", "2099-01-01T00:00Z",
                         "--json", cwd=cwd).stdout)
    assert out["new_versions"] == {"prepaid-basic": 2}
    assert out["effective_at"] == "2099-01-01T00:00:00Z"
    hist = json.loads(ocs("plan", "history", "prepaid-basic", "--json", cwd=cwd).stdout)
    assert [(h["version"], h["in_effect_now"]) for h in hist] == [(1, True), (2, False)]
    assert hist[1]["effective_at"] == "2099-01-01T00:00:00Z"

    def premium(at: str) -> dict:  # type: ignore[type-arg]
        return json.loads(ocs("rate", "explain", "--plan", "prepaid-basic", "--service",
                              "voice", "--units", "60", "--destination", "41900123456",
                              "--at", at, "--json", cwd=cwd).stdout)

    assert (premium("2098-12-31T23:59Z")["plan_version"],
            premium("2098-12-31T23:59Z")["charge"]) == (1, "2.5000")
    assert (premium("2099-01-01T00:00Z")["plan_version"],
            premium("2099-01-01T00:00Z")["charge"]) == (2, "3.5000")
    ch = json.loads(ocs("charge", "41790000001", "--service", "voice", "--units", "60",
                        "--destination", "41900123456", "--json", cwd=cwd).stdout)
    assert ch["charged"] == "2.5000"  # today: version 1
    cdr = json.loads(ocs("cdr", "explain", ch["record_id"], "--json", cwd=cwd).stdout)
    assert cdr["plan_version"] == 1 and cdr["reproduced"] is True
    bad = ocs("plan", "load", str(changed), "--effective", "tomorrow", cwd=cwd, ok=False)
    assert bad.returncode == 2 and "--effective" in bad.stderr
    assert ocs("plan", "history", "nope", cwd=cwd, ok=False).returncode == 1


def test_plan_import_rates(inited: Path) -> None:
    cwd = inited
    good = cwd / "deck.csv"
    good.write_text("prefix,price,first_increment_s,increment_s\n4930,0.2,30,6\n44,0.25,1,1\n")
    out = json.loads(ocs("plan", "import-rates", str(good), "--plan", "prepaid-basic",
                         "--service", "voice", "--json", cwd=cwd).stdout)
    assert (out["rates"], out["version"]) == (2, 2)
    x = json.loads(ocs("rate", "explain", "--plan", "prepaid-basic", "--service", "voice",
                       "--destination", "4930123456", "--units", "61", "--json",
                       cwd=cwd).stdout)
    assert (x["winner"], x["charge"], x["plan_version"]) == ("deck-voice-4930", "0.2200", 2)
    again = json.loads(ocs("plan", "import-rates", str(good), "--plan", "prepaid-basic",
                           "--service", "voice", "--json", cwd=cwd).stdout)
    assert again["version"] is None  # the same deck: no new version
    bad = cwd / "bad.csv"
    bad.write_text("prefix,price\n33,0.1\n34,zero\n")
    fail = ocs("plan", "import-rates", str(bad), "--plan", "prepaid-basic", "--service",
               "voice", cwd=cwd, ok=False)
    assert fail.returncode == 2 and "bad.csv:3: price" in fail.stderr
    hist = json.loads(ocs("plan", "history", "prepaid-basic", "--json", cwd=cwd).stdout)
    assert len(hist) == 2  # nothing of the bad file applied
    assert ocs("plan", "import-rates", str(good), "--plan", "nope", "--service", "voice",
               cwd=cwd, ok=False).returncode == 1


def test_plan_export_round_trips(inited: Path) -> None:
    cwd = inited
    deck = cwd / "deck.csv"
    deck.write_text("prefix,price,first_increment_s,increment_s,zone,id\n4930,0.2,30,6,,\n"
                    "44,0.25,1,1,EU,uk-from-eu\n")
    ocs("plan", "import-rates", str(deck), "--plan", "prepaid-basic", "--service", "voice",
        cwd=cwd)
    toml = ocs("plan", "export", "prepaid-basic", cwd=cwd).stdout
    assert toml.startswith("# plan prepaid-basic version 2") and 'id = "EU"' in toml
    (cwd / "out.toml").write_text(toml)
    back = json.loads(ocs("plan", "load", str(cwd / "out.toml"), "--json", cwd=cwd).stdout)
    assert back["new_versions"] == {}  # the same plan: nothing new
    csv_text = ocs("plan", "export", "prepaid-basic", "--deck", "voice", cwd=cwd).stdout
    assert csv_text.splitlines()[1:] == ["4930,0.2,30,6,,,,,", "44,0.25,1,1,,EU,,,uk-from-eu"]
    (cwd / "again.csv").write_text(csv_text)
    again = json.loads(ocs("plan", "import-rates", str(cwd / "again.csv"), "--plan",
                           "prepaid-basic", "--service", "voice", "--json", cwd=cwd).stdout)
    assert again["version"] is None
    v1 = ocs("plan", "export", "prepaid-basic", "--version", "1", cwd=cwd).stdout
    assert "deck-voice" not in v1 and "version 1" in v1
    assert ocs("plan", "export", "prepaid-basic", "--version", "9", cwd=cwd,
               ok=False).returncode == 1


def test_rerate_then_bill_then_reconcile(inited: Path) -> None:
    """A postpaid subscriber's premium calls re-rated at a corrected price: the exact
    difference moved once (a second run with the same id moves nothing, a dry run
    nothing), the invoice shows it as a line, and reconciliation stays exact."""
    import datetime as dt

    cwd = inited
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    for units in (61, 125):  # roaming (no allowance): 2 and 3 minutes at 0.90
        ch = json.loads(ocs("charge", "41790000004", "--service", "voice", "--units",
                            str(units), "--destination", "41441234567", "--visited-network",
                            "310260", "--json", cwd=cwd).stdout)
        assert ch["ok"] and ch["charged"] in ("1.8000", "2.7000"), ch
    plans = cwd / "config" / "plans.toml"
    fixed = cwd / "fixed.toml"
    fixed.write_text(plans.read_text().replace('price = "0.9000"', 'price = "0.6000"'))
    dry = json.loads(ocs("rerate", "--period", period, "--plans", str(fixed), "--run-id",
                         "fix-1", "--dry-run", "--json", cwd=cwd).stdout)
    assert dry["adjustments"] == {} and dry["report"] is None
    show = json.loads(ocs("subscriber", "show", "41790000004", "--json", cwd=cwd).stdout)
    before = show["balance"]
    rows = {r["msisdn"]: r for r in dry["by_subscriber"]}
    delta = rows["41790000004"]["delta"]
    assert delta == "-1.5000"  # 5 minutes at 0.30 less: a credit
    run = json.loads(ocs("rerate", "--period", period, "--plans", str(fixed), "--run-id",
                         "fix-1", "--json", cwd=cwd).stdout)
    assert run["adjustments"]["41790000004"]["moved"] == delta
    assert Path(run["report"]).read_text().startswith("msisdn,cdrs,old_total")
    again = json.loads(ocs("rerate", "--period", period, "--plans", str(fixed), "--run-id",
                           "fix-1", "--json", cwd=cwd).stdout)
    assert again["adjustments"] == {} and again["delta"] == "0.0000"
    show = json.loads(ocs("subscriber", "show", "41790000004", "--json", cwd=cwd).stdout)
    from decimal import Decimal

    assert Decimal(show["balance"]) == Decimal(before) - Decimal(delta)
    early = json.loads(ocs("bill", "reconcile", "--period", period, "--json",
                           cwd=cwd).stdout)  # the current period, not billed yet
    assert (early["ok"], early["billed"], early["differences"]) == (True, False, [])
    ocs("cdr", "flush", cwd=cwd)
    refused = ocs("bill", "run", "--period", period, "--out", str(cwd / "inv"), cwd=cwd,
                  ok=False)  # the current month has not ended
    assert refused.returncode == 2 and "has not ended yet" in refused.stderr
    assert not (cwd / "inv").exists()
    bill = json.loads(ocs("bill", "run", "--period", period, "--out", str(cwd / "inv"),
                          "--preview", "--json", cwd=cwd).stdout)
    assert bill["invoices"] >= 1 and bill["preview"] is True
    html = next((cwd / "inv").glob("*41790000004*.html"), None) or next(
        p for p in (cwd / "inv").rglob("*") if p.is_file() and "41790000004" in p.read_text(
            errors="replace"))
    assert "Re-rating adjustment" in html.read_text()
    rec = json.loads(ocs("bill", "reconcile", "--period", period, "--json", cwd=cwd).stdout)
    assert rec["differences"] == [] and rec["billed"] is False, rec  # a preview bills nothing


def test_topup_reference_history_and_the_ledger_in_reconcile(inited: Path) -> None:
    import datetime as dt

    cwd = inited
    top = json.loads(ocs("subscriber", "topup", "41790000002", "3", "--reference", "pay-1",
                         "--json", cwd=cwd).stdout)
    assert (top["balance"], top["replayed"]) == ("3.5000", False)
    again = json.loads(ocs("subscriber", "topup", "41790000002", "3", "--reference",
                           "pay-1", "--json", cwd=cwd).stdout)
    assert (again["balance"], again["replayed"]) == ("3.5000", True)  # not 6.50
    clash = ocs("subscriber", "topup", "41790000002", "4", "--reference", "pay-1", cwd=cwd,
                ok=False)
    assert clash.returncode == 2 and "was a top-up of 3.0000" in clash.stderr
    ch = json.loads(ocs("charge", "41790000002", "--service", "sms", "--json",
                        cwd=cwd).stdout)
    assert ch["charged"] == "0.1500"  # no destination: the rate without a prefix
    hist = json.loads(ocs("subscriber", "history", "41790000002", "--json", cwd=cwd).stdout)
    assert [(h["kind"], h["amount"]) for h in hist] == [
        ("opening", "0.5000"), ("topup", "3.0000"), ("charge", "-0.1500")]
    assert hist[1]["reference"] == "pay-1" and hist[1]["actor"].startswith("cli:")
    assert hist[2]["record_id"] == ch["record_id"]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert json.loads(ocs("subscriber", "history", "41790000002", "--from",
                          later.isoformat(), "--json", cwd=cwd).stdout) == []
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    rec = json.loads(ocs("bill", "reconcile", "--period", period, "--json", cwd=cwd).stdout)
    assert rec["ok"], rec
    # money put on a balance around the ledger is found
    from ocs.store import Store
    from ocs.store.env import BALANCES
    from ocs.store.records import dec_balance, encode

    with Store(cwd / "data", create=False) as store:
        def bump(tx):  # type: ignore[no-untyped-def]
            bal = dec_balance.decode(tx.get(BALANCES, b"41790000002"))
            bal.balance += 1_000_000
            bal.topped_up_total += 1_000_000
            tx.put(BALANCES, b"41790000002", encode(bal))

        store.run_write(bump)
    bad = ocs("bill", "reconcile", "--period", period, "--json", cwd=cwd, ok=False)
    assert bad.returncode == 1
    assert any("the ledger's top-ups add up to 3.5000, the balance's to 4.5000" in d
               for d in json.loads(bad.stdout)["differences"])


def test_subscriber_set(inited: Path) -> None:
    cwd = inited
    out = json.loads(ocs("subscriber", "set", "41790000004", "--credit-limit", "150",
                         "--no-roaming", "--imsi", "228019999999991", "--json",
                         cwd=cwd).stdout)
    assert out["changed"] == ["imsi", "credit_limit", "roaming"]
    show = json.loads(ocs("subscriber", "show", "41790000004", "--json", cwd=cwd).stdout)
    assert (show["imsi"], show["roaming"]) == ("228019999999991", False)
    assert "150" in json.dumps(show)
    clash = ocs("subscriber", "set", "41790000004", "--imsi", "228010000000001", cwd=cwd,
                ok=False)
    assert clash.returncode == 2 and "already belongs" in clash.stderr
    assert ocs("subscriber", "set", "41790000004", cwd=cwd, ok=False).returncode == 2
    assert "s3cret" not in ocs("subscriber", "set", "41790000004", "--password", "s3cret",
                               "--json", cwd=cwd).stdout
