"""A user's Python function as a scorer: 'module:function' or 'path/to/file.py:function'.

The function takes `(prompts: list[Prompt], responses: list[str])` and returns one number per response. Whatever it
runs is not counted in a search's forward tokens (it counts 0, like a lexicon), unless it bills them itself to
`spi_align.core.records.billed()`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.scoring.finite import finite_scores


class CallableScorer:
    """Wraps `function(prompts, responses) -> floats`, checking what it returns."""

    def __init__(self, spec: str) -> None:
        self.name = spec
        self._fn = _resolve(spec)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """Call the function; SpiError unless it returns one finite number per response."""
        result = self._fn(list(prompts), list(responses))
        try:
            values = [float(v) for v in result]
        except (TypeError, ValueError):
            raise SpiError(f"scorer '{self.name}' must return a list of numbers, got {type(result).__name__}") from None
        if len(values) != len(responses):
            raise SpiError(f"scorer '{self.name}' returned {len(values)} scores for {len(responses)} responses")
        return finite_scores(self, values, responses)


def _resolve(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise SpiError(f"scorer '{spec}' is not of the form 'module:function'")
    module = _import(module_name, spec)
    fn = getattr(module, attr, None)
    if fn is None:
        raise SpiError(f"scorer '{spec}': module '{module_name}' has no '{attr}'")
    if not callable(fn):
        raise SpiError(f"scorer '{spec}': '{attr}' is not callable")
    return fn


def _import(module_name: str, spec: str) -> ModuleType:
    """Import a module by name (the working directory counts) or load a `.py` file by path."""
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise SpiError(f"scorer '{spec}': file not found: {path}")
        file_spec = importlib.util.spec_from_file_location(path.stem, path)
        if file_spec is None or file_spec.loader is None:
            raise SpiError(f"scorer '{spec}': cannot load {path}")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        return module
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SpiError(f"scorer '{spec}': cannot import module '{module_name}' ({exc})") from None
    finally:
        if added:
            sys.path.remove(cwd)
