"""Print shoal's package import graph and check it against the layering (ADR 010).

    python scripts/import_graph.py            # edges package -> package, with counts
    python scripts/import_graph.py --modules  # module-level edges and any module cycle
    python scripts/import_graph.py --check    # exit 1 on an upward import or a module cycle
    python scripts/import_graph.py --src /tmp/old/src/shoal   # another checkout (e.g. before ADR 010)

Every `import shoal.x` / `from shoal.x import` counts, at module level or inside a
function (a lazy import is still a dependency). Read from the source with `ast`;
nothing is imported.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "shoal"

# Lower number = lower layer. A package may import its own layer's modules and any lower layer;
# packages on one layer may not import each other unless listed in ALLOWED.
LAYERS: dict[str, int] = {
    "errors": 0, "utils": 0, "__init__": 0,
    "models": 1,
    "devices": 2, "data": 2,
    "predictors": 3,
    "profiling": 4,
    "plan": 5,
    "runtime": 6,
    "planner": 7,
    "commands": 8,
    "cli": 9, "__main__": 9,
}
ALLOWED: set[tuple[str, str]] = set()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_edges(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the shoal modules it imports (resolved to modules that exist)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: -node.level] if path.name != "__init__.py" else name.split(".")[
                        : len(name.split(".")) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
            for t in targets:
                if not t.startswith("shoal"):
                    continue
                while t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != name:
                    edges[name].add(t)
    return edges


def package_edges(edges: dict[str, set[str]]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for src, targets in edges.items():
        for t in targets:
            a, b = _package(src), _package(t)
            if a != b:
                out[(a, b)] += 1
    return out


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports that go up or sideways between packages: 'a.module -> b.module'."""
    bad = []
    for src, targets in sorted(edges.items()):
        for t in sorted(targets):
            a, b = _package(src), _package(t)
            if a == b or b in ("errors", "__init__") or (a, b) == ("__init__", "errors"):
                continue   # the root package (its version) and the error hierarchy are below everything
            if a not in LAYERS or b not in LAYERS:
                bad.append(f"{src} -> {t} (package not in the layering)")
            elif LAYERS[b] >= LAYERS[a] and (a, b) not in ALLOWED:
                bad.append(f"{src} -> {t}")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="module-level edges")
    parser.add_argument("--check", action="store_true", help="exit 1 on an upward import or a module cycle")
    parser.add_argument("--src", type=Path, default=ROOT, help="the shoal package to read (default: this tree's)")
    args = parser.parse_args()
    edges = module_edges(args.src.resolve())
    if args.modules:
        for src in sorted(edges):
            for t in sorted(edges[src]):
                print(f"{src} -> {t}")
    else:
        for (a, b), n in sorted(package_edges(edges).items(), key=lambda kv: (LAYERS.get(kv[0][0], 99), kv[0])):
            print(f"{a:>10} -> {b:<10} {n:3d}")
    bad, loops = upward(edges), cycles(edges)
    for line in bad:
        print(f"upward import: {line}")
    for comp in loops:
        print(f"module cycle: {' <-> '.join(comp)}")
    if args.check and (bad or loops):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
