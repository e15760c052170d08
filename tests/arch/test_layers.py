"""The layers of pgvault, enforced: every import (lazy ones too) goes down or sideways, never up,
and no modules import each other in a circle. docs/architecture.md explains the layers."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "pgvault"
# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    {"errors", ""},                                                   # "" = the package's __init__
    {"lsn", "clock", "fsutil", "proc", "pg", "statedir", "patroni", "crypt", "signals"},
    {"sites"},
    {"policy"},
    {"catalog"},
    {"methods", "wal"},
    {"backup", "expire", "restore", "drills", "notify"},
    {"tick"},
    {"status", "checks"},                                             # read what the tick recorded
    {"sandbox"},                                                      # harness: demo, tests, benchmarks
    {"cli", "__main__"},
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = ("pgvault",) + f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every pgvault module ``name`` imports, at any depth of its code."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[: len(pkg) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.rstrip(".")
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def unit(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in g.items() for b in deps if RANK[unit(b)] > RANK[unit(a)])


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v); on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert sorted({unit(m) for m in modules()} - set(RANK)) == []


def test_no_import_goes_up_a_layer():
    assert upward(graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(graph()) == []


def test_the_checker_sees_an_upward_import_and_a_circle():
    g = {"pgvault.sites.s3": {"pgvault.cli.check"}, "pgvault.cli.check": set(),
         "pgvault.wal.a": {"pgvault.wal.b"}, "pgvault.wal.b": {"pgvault.wal.a"}}
    assert upward(g) == ["pgvault.sites.s3 -> pgvault.cli.check"]
    assert circles(g) == [["pgvault.wal.a", "pgvault.wal.b"]]
