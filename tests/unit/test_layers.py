"""The package's stages import one way only, and no module imports itself
back through others (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parents[2] / "kdumpsim"
# Bottom to top: a stage may import its own and lower stages, never higher ones.
LAYERS = [
    {"errors", "names", "units", "defaults", "atomic", "paths", "__init__"},
    {"config"},
    {"formats", "trace"},
    {"firstkernel"},
    {"machine"},
    {"kexec"},
    {"crash"},
    {"measure"},
    {"sweep", "lab", "importer"},
    {"cli", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    """kdumpsim modules imported when the code runs (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdumpsim"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kdumpsim"))
    return found


def _graph() -> nx.DiGraph:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    g = nx.DiGraph()
    for mod, path in files.items():
        g.add_node(mod)
        for imp in _runtime_imports(path):
            if imp in files and imp != mod:
                g.add_edge(mod, imp)
    return g


def _stage(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_stage_has_a_layer():
    stages = {_stage(m) for m in _graph()}
    assert stages - RANK.keys() == set(), "add new packages to LAYERS"


def test_imports_point_down_the_data_flow():
    bad = [f"{a} -> {b}" for a, b in _graph().edges
           if RANK[_stage(b)] > RANK[_stage(a)]]
    assert bad == []


def test_no_import_cycles():
    g = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if b.startswith(a + ".") or a.startswith(b + ".")])
    assert list(nx.simple_cycles(g)) == []
