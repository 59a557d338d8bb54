"""``ocs fraud scan`` over a generated month of CDR files: 100,000 ordinary subscribers
and a few injected anomalies, which must come out on top; the ranking is reproducible
and a saved model scores the same."""

from __future__ import annotations

import calendar
import json
import random
import subprocess
from pathlib import Path

from tests_support import CONFIG_DIR, OCS

from ocs.cdr.fileformat import HEADER, format_row
from ocs.store.records import CdrRecord

DAY = calendar.timegm((2026, 10, 14, 0, 0, 0))
ANOMALIES = {
    "41760000001": "sim box",        # hundreds of short calls to distinct numbers
    "41760000002": "night premium",  # long international calls at night
    "41760000003": "data burst",     # 40 GB in a day while roaming
    "41760000004": "sms spam",       # thousands of SMS
}


def rec(n: int, msisdn: str, service: str, at: int, *, dest: str = "", seconds: int = 0,
        units: int = 1, roaming: bool = False) -> CdrRecord:
    return CdrRecord(record_id=f"g-{n}", session_id=f"s{n}", msisdn=msisdn, imsi="",
                     service=service, rating_group=None, destination=dest, start_time=at,
                     end_time=at + seconds, duration_s=seconds, bytes_in=0,
                     bytes_out=units if service == "data" else 0, units=units, charge=1000,
                     currency="EUR", plan_id="prepaid-basic", rate_id="r", roaming=roaming,
                     visited_network="26201" if roaming else "", protocol="sim",
                     result="final" if service != "sms" else "event")


def generate(path: Path, subscribers: int = 100_000) -> None:
    rng = random.Random(11)
    n = 0
    with path.open("w") as f:
        f.write(HEADER)
        for i in range(subscribers):
            m = f"4177{i:07d}"
            for _ in range(rng.randint(1, 4)):
                n += 1
                at = DAY + rng.randint(8, 21) * 3600 + rng.randint(0, 3599)
                kind = rng.random()
                if kind < 0.5:
                    dest = f"41{rng.randint(0, 10**9):09d}"
                    f.write(format_row(rec(n, m, "voice", at, dest=dest,
                                           seconds=rng.randint(20, 600))))
                elif kind < 0.8:
                    dest = f"417{rng.randint(0, 10**8):08d}"
                    f.write(format_row(rec(n, m, "sms", at, dest=dest)))
                else:
                    volume = rng.randint(10**6, 3 * 10**8)
                    f.write(format_row(rec(n, m, "data", at, units=volume)))
        for m, kind in ANOMALIES.items():
            for j in range({"sim box": 400, "night premium": 30, "data burst": 8,
                            "sms spam": 3000}[kind]):
                n += 1
                if kind == "sim box":
                    r = rec(n, m, "voice", DAY + 9 * 3600 + j * 60, dest=f"4179{j:07d}",
                            seconds=15)
                elif kind == "night premium":
                    r = rec(n, m, "voice", DAY + 3600 + j * 300, dest=f"882{j:07d}",
                            seconds=3000)
                elif kind == "data burst":
                    r = rec(n, m, "data", DAY + 12 * 3600 + j, units=5 * 10**9, roaming=True)
                else:
                    r = rec(n, m, "sms", DAY + 10 * 3600 + j, dest=f"4178{j:07d}")
                f.write(format_row(r))


def test_scan_ranks_injected_anomalies_on_top(tmp_path: Path) -> None:
    cfg = tmp_path / "ocs.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    (tmp_path / "plans.toml").write_text((CONFIG_DIR / "plans.toml").read_text())
    subprocess.run([OCS, "init", "--config", str(cfg)], check=True, capture_output=True)
    cdr_dir = tmp_path / "data" / "cdr"
    cdr_dir.mkdir(parents=True, exist_ok=True)
    generate(cdr_dir / "cdr_gen_20261014T000000Z_000000.csv")

    def scan(*extra: str) -> list[dict[str, object]]:
        p = subprocess.run([OCS, "fraud", "scan", "--period", "2026-10", "--json", "--top",
                            "10", "--config", str(cfg), *extra], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return list(json.loads(p.stdout))

    model = tmp_path / "model.joblib"
    top = scan("--save-model", str(model), "--out", str(tmp_path / "a.csv"))
    assert {r["msisdn"] for r in top[:4]} == set(ANOMALIES), top
    assert scan("--out", str(tmp_path / "b.csv")) == top  # same seed, same ranking
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert scan("--model", str(model), "--out", str(tmp_path / "c.csv")) == top
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert lines[0].startswith("rank,msisdn,day,score,calls,minutes")
    assert len(lines) == 1 + 100_004
    bad = subprocess.run([OCS, "fraud", "scan", "--period", "2026-13", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "expected YYYY-MM" in bad.stderr
