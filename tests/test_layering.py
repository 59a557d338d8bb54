"""The cut between protocols, charging and the store, read from the source (every
import, function-local ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROTOCOLS_MAY_IMPORT = {
    "ocs.charging.api",  # charging: commands, answers, refusals, errors
    "ocs.noc.alarms",  # the NOC's notifications (SNMP traps)
    "ocs.config",
    "ocs.metrics",
    "ocs.passwords",
    "ocs.text",
}


def imports(path: Path) -> set[str]:
    """Modules ``path`` imports (``from a import b`` gives ``a.b`` when that is a module
    of ours, else ``a``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                parts = sub.split(".")
                is_module = (ROOT.joinpath(*parts).with_suffix(".py").exists()
                             or ROOT.joinpath(*parts, "__init__.py").exists())
                out.add(sub if is_module else node.module)
    return out


def ours(package: str) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): {m for m in imports(p)
                                       if m.split(".")[0] in ("ocs", "protocols", "sim")}
            for p in sorted((ROOT / package).rglob("*.py"))}


def test_protocols_reach_the_core_only_through_its_api() -> None:
    bad = {f: sorted(m for m in mods if m.startswith("ocs") and m not in PROTOCOLS_MAY_IMPORT)
           for f, mods in ours("protocols").items()}
    assert {f: m for f, m in bad.items() if m} == {}


def test_the_store_imports_nothing_from_charging_fraud_or_protocols() -> None:
    bad = {f: sorted(m for m in mods
                     if not m.startswith(("ocs.store", "ocs.errors", "ocs.logs")))
           for f, mods in ours("ocs/store").items()}
    assert {f: m for f, m in bad.items() if m} == {}


def test_the_charging_api_is_a_leaf_of_charging() -> None:
    """The API names commands and answers; it runs nothing (no engine, no writer)."""
    mods = imports(ROOT / "ocs/charging/api.py")
    assert not {m for m in mods if m.startswith(("ocs.charging.engine", "ocs.charging.service",
                                                 "ocs.store.writer", "ocs.store.procwriter",
                                                 "protocols"))}


def test_function_local_imports_are_seen(tmp_path: Path) -> None:
    """The check reads what it should: an import inside a function counts."""
    f = tmp_path / "probe.py"
    f.write_text("def f() -> None:\n    from ocs.store.env import SMS\n"
                 "    from ocs import metrics\n")
    assert imports(f) == {"ocs.store.env", "ocs.metrics"}
