"""The package's shape (issue 21): folders are the pipeline's stages, each importing only downwards, no
import cycle (TYPE_CHECKING and function-level imports counted), no module over 450 lines, few top-level
modules, light subpackage ``__init__`` files. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "danet_edge"

#: The stages, lowest first: a folder may import its own modules and those of folders before it. export sits
#: above trt and runtime because it verifies each graph by running it (ONNX Runtime) and can build engines.
STAGES = ["core", "model", "data", "graph", "train", "trt", "runtime", "export", "infer", "check", "bench",
          "deploy"]
TOP = {"__init__", "demo"}  # the package face and the demo (which runs every stage)
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every danet_edge module ``name`` imports, anywhere in the file (TYPE_CHECKING blocks included)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "danet_edge":
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES + ["cli"]) else None


def test_top_level_is_the_package_face_only():
    top = {p.stem for p in PKG.glob("*.py")}
    assert top <= TOP, f"modules outside a stage folder: {sorted(top - TOP)}"
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(STAGES) | {"cli"}, folders


def test_no_module_over_450_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_stages_import_only_downwards():
    rank = {s: i for i, s in enumerate(STAGES)}
    bad = []
    for m, deps in _graph().items():
        s = _stage(m)
        if s not in rank:  # cli, demo and the package face may use every stage
            continue
        for d in deps:
            ds = _stage(d)
            if ds == "cli" or (ds in rank and rank[ds] > rank[s]):
                bad.append(f"{m} -> {d}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_subpackage_inits_are_light():
    """A subpackage ``__init__`` holds a docstring (and at most re-exports of modules that need no heavy
    library), so ``import danet_edge.<stage>.config`` never drags a stage's heavy modules in."""
    heavy = []
    for init in PKG.glob("*/__init__.py"):
        if init.parent.name == "cli":
            continue
        tree = ast.parse(init.read_text())
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
            heavy.append(init.parent.name)
    assert not heavy, f"subpackage __init__ files that import: {heavy}"
