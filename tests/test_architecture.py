"""The package's layers, checked on its source by import-linter (the contracts in pyproject.toml, run by `make lint`).

Layers, top to bottom (a module may import its own layer and those below; lazy imports inside functions and
`if TYPE_CHECKING:` imports count too):
  cli > serve : evaluation > experiment > spi > search : values : train > scoring > policy > hf > data > runs >
  config > core
Siblings joined by ':' may not import each other (independence contracts), and no package's modules or subpackages
import each other in a cycle (acyclic siblings). The checks are shown to fail on a copy of the package with an
upward import or a cycle planted in it. No module imports a private name from another.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import spi_align

PACKAGE = Path(spi_align.__file__).parent
REPO = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with `config` on the `spi_align` package found in `src` (ahead of the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [sys.executable, "-c", LINT, str(config), "--no-cache"],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_import_contracts():
    result = lint_imports(PACKAGE.parent, REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


PLANTED = {
    "a lazy upward import": (
        "core/errors.py",
        "\n\ndef _planted():\n    from spi_align.cli.main import main\n\n    return main\n",
        "Imports point down the layers BROKEN",
    ),
    "a cycle through a TYPE_CHECKING import": (
        "experiment/sweep_spec.py",
        "\nimport typing\n\nif typing.TYPE_CHECKING:\n    from spi_align.experiment.sweep import run_sweep\n",
        "No import cycle between the modules (or subpackages) of any one package BROKEN",
    ),
    "an import between independent siblings": (
        "values/train.py",
        "\n\ndef _planted():\n    from spi_align.search.beam import ChunkBeamSearch\n\n    return ChunkBeamSearch\n",
        "do not know each other (they meet in spi and experiment) BROKEN",
    ),
}


@pytest.mark.parametrize("planted", list(PLANTED))
def test_the_contracts_catch_a_planted_violation(tmp_path, planted):
    """A copy of the package with one bad import added fails the check, naming the contract and the import."""
    module, code, broken = PLANTED[planted]
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "spi_align", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(src, tmp_path / "pyproject.toml").returncode == 0  # the copy itself is clean
    with (src / "spi_align" / module).open("a", encoding="utf-8") as f:
        f.write(code)
    result = lint_imports(src, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    assert broken in " ".join(result.stdout.split()), result.stdout
    assert Path(module).stem in result.stdout  # the report names the planted import


def test_no_private_name_is_imported_from_another_module():
    found = [
        f"{path.relative_to(PACKAGE)} imports {alias.name} from {node.module}"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spi_align")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert not found, "\n".join(found)
