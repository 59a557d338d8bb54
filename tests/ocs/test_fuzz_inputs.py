"""Every decoder of outside input either decodes or raises its own error, never crashes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tests_support import CONFIG_DIR

from ocs.cdr.fileformat import HEADER
from ocs.cdr.reader import CdrFormatError, read_cdr_file
from ocs.config import ConfigError, load_config
from ocs.rating.plans import PlanError, parse_plans_document

PLANS_TEXT = (CONFIG_DIR / "plans.toml").read_text()
CONFIG_TEXT = (CONFIG_DIR / "ocs.toml").read_text()
GOOD_ROW = ("n1-1,s,41790000001,228010000000001,sms,,4179,2026-11-18T12:00:00Z,"
            "2026-11-18T12:00:00Z,0,0,0,1,0.050000,EUR,prepaid-basic,sms-national,0,,cli,"
            "event,0,0\n")


def _mutate(text: str, data: st.DataObject) -> str:
    if not text:
        return text
    i = data.draw(st.integers(0, len(text) - 1))
    j = data.draw(st.integers(i, min(len(text), i + 40)))
    return text[:i] + data.draw(st.text(max_size=20)) + text[j:]


@settings(max_examples=300, deadline=None)
@given(st.data())
@example(data=None)  # type: ignore[arg-type]
def test_plans_parser(data: st.DataObject | None) -> None:
    text = PLANS_TEXT if data is None else _mutate(PLANS_TEXT, data)
    try:
        parse_plans_document(text, "fuzz.toml")
    except PlanError as exc:
        assert str(exc).startswith("fuzz.toml")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_config_loader(data: st.DataObject) -> None:
    text = _mutate(CONFIG_TEXT, data)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ocs.toml"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(p)
        except ConfigError as exc:
            assert str(p) in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.data()))
def test_cdr_reader(data: bytes | st.DataObject) -> None:
    if isinstance(data, bytes):
        body = data
    else:
        body = _mutate(HEADER + GOOD_ROW * 3, data).encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.csv"
        p.write_bytes(body)
        try:
            for _ in read_cdr_file(p):
                pass
        except CdrFormatError as exc:
            assert "f.csv:" in str(exc)
