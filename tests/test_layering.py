"""The cut between protocols, charging and the store, read from the source (every
import, function-local ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROTOCOLS_MAY_IMPORT = {
    "ocs.charging.api",  # charging: commands, answers, refusals, errors
    "ocs.noc.alarms",  # the NOC: notifications (SNMP traps) and the service raising them
    "ocs.noc.service",
    "ocs.sessions",  # the live-session table, its deadlines and review events
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


def import_graph() -> dict[str, set[str]]:
    """Our modules -> our modules they import (anywhere in the file: function-local and
    type-checking imports are edges too, they only hide a cycle)."""
    mods: dict[str, Path] = {}
    for pkg in ("ocs", "protocols", "sim"):
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    return {m: {o for i in imports(p) if (o := owner(i)) and o != m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_does_not_import_protocols() -> None:
    """Only the composition root (ocs.app) wires protocols to the core."""
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("protocols"))
           for m, deps in graph.items() if m.startswith("ocs") and m != "ocs.app"}
    assert {m: d for m, d in bad.items() if d} == {}
