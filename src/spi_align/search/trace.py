"""The tree a search walked, recorded while it runs from what the search already holds (no extra forward pass):
what `spi inspect` draws and what `spi serve` returns when a request asks (`return_trace`).

A trace is per prompt: one node per chunk the policy sampled (a row's tokens since its parent's end), stored as
columns, node i at index i of every list, of ids and floats. A node holds only its own chunk, so no prefix is stored
twice; its whole response is the chunks on its path from the prompt.

- `parent`: the node the chunk continues, -1 for the prompt;
- `tokens`: the chunk's token ids; `text`: its text (the response decoded up to it, minus its parent's);
- `value`: the guidance that ranked it (None: it ended before a selection, or nothing guides the method);
- `terms` (with `weights`): per named term of the guidance (`core.records.report_term`: V_0, V_1, the reward on
  partial responses ...) its unweighted value; present only when a value function reported terms;
- `kept`: 1 when it became a parent of the next step, 0 when it was pruned, None when it ended;
- `cluster`: diversity-first's cluster, the first node of the same step and prompt with the same key (None:
  a selection without clusters);
- `finished`: 1 when the policy ended it (end of turn), 0 when it was cut at max_new_tokens, None while it went on;
- `candidate`: its index in the record's candidates when it ended (else None), and `score` that candidate's picking
  score (the reward), None when none was computed;
- `chosen` (one number): the node of the answer.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from spi_align.core.records import SearchResult

FLOAT_DIGITS = 6
"""Significant digits kept of every float in a trace (values are float32 anyway)."""


def compact_float(value: float | None) -> float | None:
    """`value` to `FLOAT_DIGITS` significant digits; None for None, NaN or an infinity (JSON has neither)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{FLOAT_DIGITS}g}")


@dataclass
class _Tree:
    """One prompt's nodes, column by column (see the module docstring)."""

    parent: list[int] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    """Response length at the end of each node's chunk (where its children's chunks start)."""
    value: list[float | None] = field(default_factory=list)
    terms: list[dict[str, float] | None] = field(default_factory=list)
    kept: list[int | None] = field(default_factory=list)
    cluster: list[int | None] = field(default_factory=list)
    finished: list[int | None] = field(default_factory=list)
    candidate: list[int | None] = field(default_factory=list)
    candidates: int = 0

    def add(self, parent: int, tokens: list[int], end: int) -> int:
        self.parent.append(parent)
        self.tokens.append(tokens)
        self.end.append(end)
        for column in (self.value, self.terms, self.kept, self.cluster, self.finished, self.candidate):
            column.append(None)
        return len(self.parent) - 1


class TreeTrace:
    """Records a batch's trees while a search runs; rows are followed by their node ids (one per row, per prompt).

    The search calls `grow` after every sampling step, `end` for rows that leave as candidates (in the order they
    join the pool), `rank` with the guidance, `select` with each prompt's choice, and `attach` on its results.
    """

    def __init__(self, prompts: int) -> None:
        self.trees = [_Tree() for _ in range(prompts)]
        self.weights: dict[str, float] = {}

    def grow(
        self, rows_prompt: Sequence[int], parents: Sequence[int], response: torch.Tensor, length: Sequence[int]
    ) -> list[int]:
        """Each row's node after a sampling step: a new node holding its tokens since its parent's end, or the parent
        itself when the row got none (a row that had ended, carried along). `response` is on the CPU."""
        nodes = []
        for r, (p, parent) in enumerate(zip(rows_prompt, parents, strict=True)):
            tree = self.trees[p]
            start = tree.end[parent] if parent >= 0 else 0
            if length[r] > start or parent < 0:
                nodes.append(tree.add(parent, response[r, start : length[r]].tolist(), length[r]))
            else:
                nodes.append(parent)
        return nodes

    def end(self, rows_prompt: Sequence[int], nodes: Sequence[int], done: Sequence[bool]) -> None:
        """These rows' nodes leave as candidates, in this order (the order their prompt's candidates are listed)."""
        for p, n, d in zip(rows_prompt, nodes, done, strict=True):
            tree = self.trees[p]
            tree.finished[n], tree.candidate[n] = int(d), tree.candidates
            tree.candidates += 1

    def rank(
        self, rows_prompt: Sequence[int], nodes: Sequence[int], values: Sequence[float], terms: Mapping[str, Any]
    ) -> None:
        """The guidance of each row (and its named terms, (weight, one value per row) each) at a selection."""
        columns = {name: values_of(v) for name, (_, v) in terms.items()}
        self.weights.update({name: float(w) for name, (w, _) in terms.items()})
        for r, (p, n) in enumerate(zip(rows_prompt, nodes, strict=True)):
            tree = self.trees[p]
            tree.value[n] = float(values[r])
            if columns:
                tree.terms[n] = {name: column[r] for name, column in columns.items()}

    def select(self, prompt: int, nodes: Sequence[int], chosen: Sequence[int], keys: Sequence[Hashable] | None) -> None:
        """One prompt's selection among its rows `nodes`: positions `chosen` are kept, the others pruned; `keys`
        are diversity-first's cluster keys (None: no clusters)."""
        tree = self.trees[prompt]
        picked = set(chosen)
        first: dict[Hashable, int] = {}
        for i, n in enumerate(nodes):
            tree.kept[n] = int(i in picked)
            if keys is not None:
                tree.cluster[n] = first.setdefault(keys[i], n)

    def keep(self, rows_prompt: Sequence[int], nodes: Sequence[int]) -> None:
        """These rows' nodes continue (a branching step: every live row is kept)."""
        for p, n in zip(rows_prompt, nodes, strict=True):
            self.trees[p].kept[n] = 1

    def attach(self, results: Sequence[SearchResult], tokenizer: Any) -> None:
        """Set each result's `trace`: its prompt's columns, every node's text decoded, scores from its candidates."""
        for result, tree in zip(results, self.trees, strict=True):
            result.trace = self.columns(tree, result, tokenizer)

    def columns(self, tree: _Tree, result: SearchResult, tokenizer: Any) -> dict[str, Any]:
        full: list[list[int]] = []
        for parent, tokens in zip(tree.parent, tree.tokens, strict=True):
            full.append((full[parent] if parent >= 0 else []) + tokens)  # parents come before their children
        texts = tokenizer.batch_decode(full, skip_special_tokens=True) if full else []
        chunks = []
        for parent, tokens, text in zip(tree.parent, tree.tokens, texts, strict=True):
            before = texts[parent] if parent >= 0 else ""
            chunks.append(
                text[len(before) :] if text.startswith(before) else tokenizer.decode(tokens, skip_special_tokens=True)
            )
        cands = result.candidates
        score = [None if c is None else compact_float(cands[c].score) for c in tree.candidate]
        chosen = next((n for n, c in enumerate(tree.candidate) if c is not None and cands[c] is result.chosen), None)
        out: dict[str, Any] = {
            "parent": tree.parent,
            "tokens": tree.tokens,
            "text": chunks,
            "value": [compact_float(v) for v in tree.value],
            "kept": tree.kept,
            "cluster": tree.cluster,
            "finished": tree.finished,
            "candidate": tree.candidate,
            "score": score,
            "chosen": chosen,
        }
        if any(t is not None for t in tree.terms):
            names = list(self.weights)
            out["weights"] = {name: compact_float(self.weights[name]) for name in names}
            out["terms"] = {
                name: [None if t is None else compact_float(t.get(name)) for t in tree.terms] for name in names
            }
        return out


def values_of(values: Any) -> list[float]:
    """A term's values (a tensor, or a sequence of numbers) as a list of floats."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().tolist()
    return [float(v) for v in values]
