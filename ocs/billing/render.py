"""Invoice outputs: JSON per invoice (machine), HTML per invoice (people), summary CSV.

Written into a temp directory next to the target and renamed into place, so a failed
run leaves no partial invoices and a re-run replaces the old set whole.
"""

from __future__ import annotations

import concurrent.futures
import csv
import html
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ocs.billing.invoice import SERVICE_TEXT, Invoice
from ocs.money import format_amount


def invoice_json(inv: Invoice) -> dict[str, Any]:
    return {
        "invoice_id": inv.invoice_id,
        "msisdn": inv.msisdn,
        "period": inv.period,
        "plan": inv.plan,
        "plan_name": inv.plan_name,
        "currency": inv.currency,
        "issue_date": inv.issue_date,
        "lines": [{"kind": ln.kind, "description": ln.description, "quantity": ln.quantity,
                   "amount": format_amount(ln.amount)} for ln in inv.lines],
        "subtotal": format_amount(inv.subtotal),
        "tax": format_amount(inv.tax),
        "total": format_amount(inv.total),
        "due_date": inv.due_date,
        "prepaid_usage": [{"service": s, "units": u, "charged": format_amount(c)}
                          for s, u, c in inv.prepaid_usage],
        "customer": {"name": inv.customer_name, "address": inv.billing_address},
        "issuer": {"name": inv.issuer_name, "address": inv.issuer_address,
                   "tax_id": inv.issuer_tax_id},
    }


def _money(micros: int, currency: str) -> str:
    return f"{format_amount(micros, 2)} {html.escape(currency)}"


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1d2733;
margin:0;background:#f3f5f8}
.page{max-width:780px;margin:32px auto;background:#fff;padding:40px 48px;
box-shadow:0 1px 4px rgba(0,0,0,.12);border-radius:6px}
header{display:flex;justify-content:space-between;align-items:flex-start;
border-bottom:3px solid #0b5cad;padding-bottom:16px;margin-bottom:24px}
h1{margin:0;font-size:28px;color:#0b5cad;letter-spacing:.5px}
.meta{text-align:right;font-size:14px;line-height:1.6}
.meta b{display:inline-block;min-width:90px;text-align:left;color:#5a6b7d;font-weight:600}
table{width:100%;border-collapse:collapse;font-size:14px}
.parties{display:flex;justify-content:space-between;gap:32px;margin-bottom:24px;
font-size:14px;line-height:1.5}
.parties h2{font-size:12px;text-transform:uppercase;color:#5a6b7d;margin:0 0 4px}
th{text-align:left;color:#5a6b7d;font-weight:600;border-bottom:1px solid #d5dce4;
padding:8px 6px}
td{padding:8px 6px;border-bottom:1px solid #eef1f4}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.tax td{color:#5a6b7d}
tr.total td{font-weight:700;font-size:17px;border-top:2px solid #1d2733;border-bottom:none}
.section{margin-top:28px}
h2{font-size:15px;color:#5a6b7d;text-transform:uppercase;letter-spacing:1px;margin:0 0 8px}
.note{font-size:12px;color:#5a6b7d;margin-top:28px;line-height:1.5}
.nw{white-space:nowrap}
"""


def _lines_html(*parts: str) -> str:
    return "<br>".join(html.escape(line) for part in parts for line in part.splitlines()
                       if line)


def _parties_html(inv: Invoice) -> str:
    """The issuer (with its tax id) and the customer's name and billing address."""
    issuer = _lines_html(inv.issuer_name, inv.issuer_address) + (
        f"<br>Tax id {html.escape(inv.issuer_tax_id)}" if inv.issuer_tax_id else "")
    customer = _lines_html(inv.customer_name, inv.billing_address)
    if not issuer and not customer:
        return ""
    return (f'<div class="parties"><div><h2>From</h2>{issuer or "&nbsp;"}</div>'
            f'<div><h2>Bill to</h2>{customer or "+" + html.escape(inv.msisdn)}</div></div>')


def invoice_html(inv: Invoice) -> str:
    e = html.escape
    rows = []
    for ln in inv.lines:
        if ln.kind == "tax":
            continue
        qty = "" if ln.kind == "credit" and not ln.quantity else f"{ln.quantity:,}"
        if ln.kind == "fee":
            qty = f"{ln.quantity} days"
        if ln.kind == "allowance":
            rows.append(f'<tr class="tax"><td>{e(ln.description)}</td><td class="num">{qty}'
                        '</td><td class="num">included</td></tr>')
            continue
        rows.append(f'<tr><td>{e(ln.description)}</td><td class="num">{qty}</td>'
                    f'<td class="num">{_money(ln.amount, inv.currency)}</td></tr>')
    rows.append(f'<tr><td colspan="2">Subtotal</td><td class="num">'
                f'{_money(inv.subtotal, inv.currency)}</td></tr>')
    for ln in inv.lines:
        if ln.kind == "tax":
            rows.append(f'<tr class="tax"><td colspan="2">{e(ln.description)}</td>'
                        f'<td class="num">{_money(ln.amount, inv.currency)}</td></tr>')
    rows.append(f'<tr class="total"><td colspan="2">Total due</td><td class="num">'
                f'{_money(inv.total, inv.currency)}</td></tr>')
    prepaid = ""
    if inv.prepaid_usage:
        items = "".join(
            f'<tr><td>{e(SERVICE_TEXT.get(s, (s, "units"))[0])}</td><td class="num">{u:,} '
            f'{e(SERVICE_TEXT.get(s, (s, "units"))[1])}</td><td class="num">'
            f'{_money(c, inv.currency)}</td></tr>' for s, u, c in inv.prepaid_usage)
        prepaid = ('<div class="section"><h2>Prepaid usage (already paid, for information)'
                   '</h2><table><tr><th>Service</th><th class="num">Quantity</th>'
                   f'<th class="num">Charged</th></tr>{items}</table></div>')
    parties = _parties_html(inv)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Invoice {e(inv.invoice_id)}</title>
<style>{_CSS}</style></head>
<body><div class="page">
<header><div><h1>Invoice</h1><div>{e(inv.plan_name)}</div></div>
<div class="meta"><div><b>Invoice</b>{e(inv.invoice_id)}</div>
<div><b>Number</b>+{e(inv.msisdn)}</div><div><b>Period</b>{e(inv.period)}</div>
<div><b>Issued</b>{e(inv.issue_date)}</div><div><b>Due</b>{e(inv.due_date)}</div></div>
</header>
{parties}
<table><tr><th>Description</th><th class="num">Quantity</th><th class="num">Amount</th></tr>
{"".join(rows)}
</table>
{prepaid}
<p class="note">Amounts are rounded to the cent line by line; tax is computed on each line
and stated once. Please pay <span class="nw">{_money(inv.total, inv.currency)}</span> by
<span class="nw">{e(inv.due_date)}</span>.</p>
</div></body></html>
"""


def summary_csv(invoices: list[Invoice]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["invoice_id", "msisdn", "period", "plan", "currency", "subtotal", "tax",
                "total", "due_date"])
    for inv in invoices:
        w.writerow([inv.invoice_id, inv.msisdn, inv.period, inv.plan, inv.currency,
                    format_amount(inv.subtotal), format_amount(inv.tax),
                    format_amount(inv.total), inv.due_date])
    return buf.getvalue()


def write_invoices(invoices: list[Invoice], out_dir: Path, *, pdf: bool = False) -> None:
    """The invoices of a run as ``<id>.json`` and ``<id>.html`` (and ``<id>.pdf``) plus
    ``summary.csv``, replacing ``out_dir`` whole once everything is written."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    def write(path: Path, text: str) -> None:
        path.write_bytes(text.encode("utf-8"))

    def write_pdf(path: Path, doc: dict[str, Any]) -> None:
        from ocs.billing.pdf import invoice_pdf  # fpdf2 (and Pillow): 0.28 s to import,
        # paid by every `ocs` command that imports billing unless asked for
        path.write_bytes(invoice_pdf(doc))

    try:
        # Creating a file is slow I/O that releases the GIL: overlap it in a few threads.
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            futures = []
            for inv in invoices:
                futures.append(pool.submit(write, tmp / f"{inv.invoice_id}.json",
                                           json.dumps(invoice_json(inv), indent=2) + "\n"))
                futures.append(pool.submit(write, tmp / f"{inv.invoice_id}.html",
                                           invoice_html(inv)))
                if pdf:
                    futures.append(pool.submit(write_pdf, tmp / f"{inv.invoice_id}.pdf",
                                               invoice_json(inv)))
            futures.append(pool.submit(write, tmp / "summary.csv", summary_csv(invoices)))
            for f in futures:
                f.result()
        # One flush for the whole set (an fsync per file costs seconds per 10,000
        # invoices); a period's invoices can be rebuilt byte for byte from its run record.
        os.sync()
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
