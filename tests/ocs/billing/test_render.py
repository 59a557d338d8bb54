"""The HTML invoice rendered by a real browser (headless Chromium), as a subscriber sees it."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from tests_support import require_tool

from ocs.billing.invoice import Invoice, Line
from ocs.billing.render import invoice_html


def test_invoice_renders_in_chromium(tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    inv = Invoice(
        invoice_id="INV-202611-000007", msisdn="41790000004", period="2026-11",
        plan="postpaid-business", plan_name="Business <Postpaid>", currency="EUR",
        lines=[Line("fee", "Monthly fee", 30, 29_000_000),
               Line("usage", "Voice calls (seconds)", 125, 2_700_000),
               Line("tax", "VAT 8.1 %", 0, 2_570_000)],
        subtotal=31_700_000, tax=2_570_000, total=34_270_000, due_date="2026-12-15",
        issue_date="2026-12-01", tax_name="VAT", tax_rate=81_000,
        prepaid_usage=[("data", 5_000_000, 50_000)])
    page = tmp_path / "invoice.html"
    text = invoice_html(inv)
    assert "Business &lt;Postpaid&gt;" in text  # escaped, not markup
    page.write_text(text)
    png = tmp_path / "invoice.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
                    "--window-size=900,1000", f"--screenshot={png}", page.as_uri()],
                   capture_output=True, timeout=120, check=False)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (900, 1000)
    assert len(data) > 20_000  # a rendered page with text, not a blank canvas
