"""The package's layers, checked on its source: imports point one way, no cycles, no private names across modules.

Layers, bottom to top (a module may import its own layer and those below):
  0 errors, interfaces, config, files      1 assets, models, data, rundir, resumable, backbone
  2 policy/, scoring/, values/, search/, train/      3 spi (Algorithm 1 as an API)
  4 experiment/      5 evaluation/      6 cli/, serve/
"""

from __future__ import annotations

import ast
from pathlib import Path

import spi_align

ROOT = Path(spi_align.__file__).parent
LAYERS = {
    "errors": 0, "interfaces": 0, "config": 0, "files": 0, "backbone": 1,
    "assets": 1, "models": 1, "data": 1, "rundir": 1, "resumable": 1,
    "policy": 2, "scoring": 2, "values": 2, "search": 2, "train": 2,
    "spi": 3, "experiment": 4, "evaluation": 5, "cli": 6, "serve": 6,
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, module: str, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every `spi_align` import; top-level ones only when asked (lazy imports inside
    functions and `if TYPE_CHECKING:` blocks do not load at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.stmt] = []

    def collect(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                continue  # annotations only: never imported at run time
            nodes.append(node)
            if top_level_only:
                continue
            for field in ("body", "orelse", "finalbody"):
                collect([s for s in getattr(node, field, []) if isinstance(s, ast.stmt)])
            for handler in getattr(node, "handlers", []):
                collect(handler.body)

    collect(tree.body)
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spi_align"):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("spi_align")]
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    assert len(parts) >= 2, module
    assert parts[1] in LAYERS, f"{module}: add its package to the layer map in this test"
    return LAYERS[parts[1]]


def test_every_import_points_down_or_sideways():
    wrong = []
    for module, path in _modules().items():
        if module == "spi_align":
            continue
        for target, _ in _imports(path, module, top_level_only=False):
            if target != "spi_align" and _layer(target) > _layer(module):
                wrong.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_at_import_time():
    modules = _modules()
    graph = {
        m: {t for t, _ in _imports(p, m, top_level_only=True) if t in modules and t != m} for m, p in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_private_name_is_imported_from_another_module():
    found = [
        f"{module} imports {name} from {target}"
        for module, path in _modules().items()
        for target, names in _imports(path, module, top_level_only=False)
        for name in names
        if name.startswith("_")
    ]
    assert not found, "\n".join(found)


def test_the_checks_see_a_cycle_and_an_upward_import(tmp_path):
    """The walker itself: a planted upward import is seen (guards against a walker that finds nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from spi_align.cli.main import main\n")
    assert _imports(bad, "spi_align.policy.bad", top_level_only=True) == [("spi_align.cli.main", ["main"])]
    assert _layer("spi_align.cli.main") > _layer("spi_align.policy.bad")
