"""The portal in real headless Chromium (Debian's, driven by Playwright; no browser
download) against ``ocs serve``: sign-in, search, top-up, suspend, alarm ack, KPIs — and
a user name carrying HTML is shown as text."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests_support import OCS, admin_healthy, free_tcp_port, init_server, serving

from ocs.noc import alarms as noc
from ocs.store import Store

CHROMIUM = "/usr/bin/chromium"
XSS = "<img/src=x/onerror=window.pwned=1>"


def cli(cfg: Path, *args: str) -> Any:
    p = subprocess.run([OCS, *args, "--config", str(cfg), "--json"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("OCS_REQUIRE_INTEROP"):
            pytest.fail(f"{CHROMIUM} is missing (Debian package chromium)")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync"])
        yield b
        b.close()


def test_care_and_noc_in_the_portal(browser: Any, tmp_path: Path) -> None:
    port, admin = free_tcp_port(), free_tcp_port()
    cfg = init_server(tmp_path, f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                                f'[api]\nlisten = "127.0.0.1:{port}"\n')
    cli(cfg, "subscriber", "add", "--msisdn", "41791112233", "--plan", "prepaid-basic",
        "--imsi", "228019999999999", "--balance", "5.00")
    cli(cfg, "subscriber", "add", "--msisdn", "41791112244", "--plan", "prepaid-basic",
        "--username", XSS)
    care = cli(cfg, "api", "token", "create", "--role", "care", "--name", "alice")["token"]
    nocs = cli(cfg, "api", "token", "create", "--role", "noc", "--name", "bob")["token"]
    with Store(tmp_path / "data") as store:
        store.run_write(lambda tx: noc.notify(tx, noc.Notification(
            element="bts-042", resource="ifIndex.3", alarm_type="communicationsAlarm",
            probable_cause="lossOfSignal", severity="major", at=1_790_000_000)))
    with serving(cfg, tmp_path, lambda: admin_healthy(admin)):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (errors.append("dialog " + d.message), d.dismiss()))
        page.goto(f"http://127.0.0.1:{port}/")
        # a wrong token is refused
        page.fill("#token", "ocs_" + "A" * 43)
        page.click("#signin-form button")
        page.wait_for_selector("#message.error")
        assert "not valid" in page.inner_text("#message")
        # care: sign in, search by IMSI, top up, the same reference again, suspend
        page.fill("#token", care)
        page.click("#signin-form button")
        page.wait_for_selector("#care:not([hidden])")
        assert page.inner_text("#who") == "alice (care)"
        page.fill("#search", "228019999999999")
        page.click("#search-form button")
        page.wait_for_selector("#subscriber:not([hidden])")
        assert page.inner_text("#sub-title") == "41791112233 (active)"
        assert "5.0000 EUR" in page.inner_text("#sub-facts")
        page.fill("#topup-amount", "2.50")
        page.fill("#topup-reference", "pay-portal-1")
        page.click("#topup-form button")
        page.wait_for_selector("#message:has-text('Topped up')")
        assert "7.5000 EUR" in page.inner_text("#sub-facts")
        page.fill("#topup-amount", "2.50")
        page.fill("#topup-reference", "pay-portal-1")
        page.click("#topup-form button")
        page.wait_for_selector("#message:has-text('already credited')")
        assert "pay-portal-1" in page.inner_text("#usage")
        page.screenshot(path=str(tmp_path / "care.png"), full_page=True)
        page.click("#suspend")
        page.wait_for_selector("#sub-title:has-text('suspended')")
        shown = cli(cfg, "subscriber", "show", "41791112233")
        assert (shown["balance"], shown["status"]) == ("7.5000", "suspended")
        # a user name with HTML in it is text on the page
        page.fill("#search", XSS)
        page.click("#search-form button")
        page.wait_for_selector("#sub-title:has-text('41791112244')")
        assert XSS in page.inner_text("#sub-facts")
        assert page.locator("img").count() == 0
        assert page.evaluate("window.pwned") is None
        # a care token sees the alarms but may not ack them: the page says so
        page.click("nav [data-view=noc]")
        page.locator("#alarms tbody tr button", has_text="Ack").click()
        page.wait_for_selector("#message.error")
        assert "may not" in page.inner_text("#message")
        # noc: sign in, ack the alarm
        page.click("#signout")
        page.fill("#token", nocs)
        page.click("#signin-form button")
        page.wait_for_selector("#alarms tbody tr")
        row = page.locator("#alarms tbody tr").first
        assert "bts-042" in row.inner_text() and "major" in row.inner_text()
        row.locator("button", has_text="Ack").click()
        page.wait_for_selector("#message:has-text('acknowledged')")
        page.screenshot(path=str(tmp_path / "noc.png"), full_page=True)
        alarms = cli(cfg, "alarms", "list")
        assert [(a["element"], a["acknowledged"]) for a in alarms] == [("bts-042", True)]
        # KPIs
        page.click("nav [data-view=kpis]")
        page.wait_for_selector("#kpi-facts div")
        assert "active subscribers" in page.inner_text("#kpi-facts")
        page.close()
        assert errors == []
    assert (tmp_path / "care.png").stat().st_size > 10_000
