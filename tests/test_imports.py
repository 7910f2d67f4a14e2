"""Layering: no module imports a module that imports it back (function-level imports included), and the
device SDK never imports the cloud side. The graph is read from the source with ``ast``, so an import
hidden inside a function counts as much as one at the top."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "edge_gr", "device_sim")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _targets(mod: str, node: ast.AST, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (importing ``a.b.c`` also runs ``a`` and ``a.b``)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for mod, f in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _targets(mod, node, f.name == "__init__.py"):
                parts = name.split(".")
                while parts and ".".join(parts) not in mods:
                    parts.pop()
                for i in range(1, len(parts) + 1):
                    t = ".".join(parts[:i])
                    if t in mods and t != mod and not mod.startswith(t + "."):  # a module's own packages are already running
                        deps.add(t)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_import_cycles(pkg):
    found = [c for c in cycles(import_graph()) if any(m.split(".")[0] == pkg for m in c)]
    assert not found, f"import cycles: {found}"


def test_model_and_device_layers():
    g = import_graph()
    assert not {d for m, ds in g.items() if m.split(".")[0] == "edge_gr" for d in ds if d.split(".")[0] != "edge_gr"}
    assert g["server.model"] <= set(), f"server.model imports {g['server.model']}: the model knows only itself"
