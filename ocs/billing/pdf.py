"""An invoice as PDF (fpdf2), drawn from its JSON document (``<invoice_id>.json``): the
same content as the HTML page, so a PDF can be made at the run (``ocs bill run --pdf``) or
later from the stored JSON (``GET /api/v1/invoices/...?format=pdf``), identically.

Text is set in DejaVu Sans when the system has it (any script the font covers); without
it, in the PDF core font Helvetica, which covers Latin-1 only (other characters become
"?").
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fpdf import FPDF

from ocs.billing.invoice import SERVICE_TEXT
from ocs.money import format_amount, parse_amount

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"),
             Path("/usr/local/share/fonts"))


def _font_files() -> tuple[Path, Path] | None:
    for d in FONT_DIRS:
        regular, bold = d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


class _Doc(FPDF):
    def __init__(self) -> None:
        super().__init__(format="A4", unit="mm")
        self.set_auto_page_break(auto=True, margin=18)
        files = _font_files()
        if files is not None:
            self.add_font("body", "", str(files[0]))
            self.add_font("body", "B", str(files[1]))
            self._face, self._wide = "body", True
        else:
            self._face, self._wide = "helvetica", False

    def fit(self, s: str) -> str:
        """``s`` in what the font can set (the core font: Latin-1, others as "?")."""
        return s if self._wide else s.encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False) -> None:
        self.set_font(self._face, "B" if bold else "", size)


def _money(amount: str, currency: str) -> str:
    """"12.3400" -> "12.34 EUR", as the HTML page shows it (never rounded away)."""
    return f"{format_amount(parse_amount(amount), 2)} {currency}"


def invoice_pdf(doc: dict[str, Any]) -> bytes:
    """The PDF of an invoice document (``invoice_json``)."""
    pdf = _Doc()
    issued = dt.datetime.fromisoformat(str(doc["issue_date"]))
    pdf.set_creation_date(issued.replace(tzinfo=issued.tzinfo or dt.UTC))  # same bytes
    t = pdf.fit
    cur = str(doc["currency"])
    pdf.add_page()
    pdf.font(22, bold=True)
    pdf.set_text_color(11, 92, 173)
    pdf.cell(100, 10, "Invoice")
    pdf.set_text_color(29, 39, 51)
    pdf.font(10)
    y = pdf.get_y()
    for label, value in (("Invoice", doc["invoice_id"]), ("Number", "+" + doc["msisdn"]),
                         ("Period", doc["period"]), ("Issued", doc["issue_date"]),
                         ("Due", doc["due_date"])):
        pdf.set_xy(120, y)
        pdf.cell(25, 5, t(label))
        pdf.cell(0, 5, t(str(value)), align="R")
        y += 5
    pdf.set_xy(pdf.l_margin, 22)
    pdf.font(10)
    pdf.cell(0, 5, t(str(doc["plan_name"])))
    issuer, customer = doc.get("issuer") or {}, doc.get("customer") or {}
    pdf.set_y(max(y, 40) + 4)
    top = pdf.get_y()
    for x, title, lines in (
            (pdf.l_margin, "FROM", [issuer.get("name", ""), *str(issuer.get("address", ""))
                                    .splitlines()] + ([f"Tax id {issuer['tax_id']}"]
                                                      if issuer.get("tax_id") else [])),
            (110, "BILL TO", [customer.get("name", ""),
                              *str(customer.get("address", "")).splitlines()])):
        lines = [ln for ln in lines if ln] or (["+" + doc["msisdn"]] if title == "BILL TO"
                                               else [])
        if not lines:
            continue
        pdf.set_xy(x, top)
        pdf.font(8, bold=True)
        pdf.cell(80, 5, title)
        pdf.font(10)
        for i, line in enumerate(lines):
            pdf.set_xy(x, top + 5 + 5 * i)
            pdf.cell(85, 5, t(line))
    pdf.set_y(top + 40)
    widths = (110, 30, 40)
    pdf.font(9, bold=True)
    for w, head, align in zip(widths, ("Description", "Quantity", "Amount"),
                              ("L", "R", "R"), strict=True):
        pdf.cell(w, 7, head, border="B", align=align)
    pdf.ln()
    pdf.font(10)
    taxes = []
    for ln in doc["lines"]:
        if ln["kind"] == "tax":
            taxes.append(ln)
            continue
        qty = (f"{ln['quantity']} days" if ln["kind"] == "fee" else
               "" if ln["kind"] == "credit" and not ln["quantity"] else f"{ln['quantity']:,}")
        amount = "included" if ln["kind"] == "allowance" else _money(ln["amount"], cur)
        pdf.cell(widths[0], 7, t(str(ln["description"])), border="B")
        pdf.cell(widths[1], 7, qty, border="B", align="R")
        pdf.cell(widths[2], 7, t(amount), border="B", align="R")
        pdf.ln()
    for label, amount, bold in ([("Subtotal", doc["subtotal"], False)]
                                + [(str(x["description"]), x["amount"], False) for x in taxes]
                                + [("Total due", doc["total"], True)]):
        pdf.font(12 if bold else 10, bold=bold)
        pdf.cell(widths[0] + widths[1], 8, t(label), border="T" if bold else "")
        pdf.cell(widths[2], 8, t(_money(amount, cur)), border="T" if bold else "", align="R")
        pdf.ln()
    prepaid = doc.get("prepaid_usage") or []
    if prepaid:
        pdf.ln(4)
        pdf.font(11, bold=True)
        pdf.cell(0, 7, "Prepaid usage (already paid, for information)")
        pdf.ln()
        pdf.font(10)
        for p in prepaid:
            name, unit = SERVICE_TEXT.get(p["service"], (p["service"], "units"))
            pdf.cell(widths[0], 6, t(name))
            pdf.cell(widths[1], 6, f"{p['units']:,} {unit}", align="R")
            pdf.cell(widths[2], 6, t(_money(p["charged"], cur)), align="R")
            pdf.ln()
    pdf.ln(6)
    pdf.font(8)
    pdf.multi_cell(0, 4, t(f"Amounts are rounded to the cent line by line; tax is computed "
                           f"on each line and stated once. Please pay "
                           f"{_money(doc['total'], cur)} by {doc['due_date']}."))
    return bytes(pdf.output())
