"""Cost of scoring a chunk search with a separate value model: own KV cache vs re-encoding every prefix.

Simulates the search's access pattern on the real value backbone (default: the embedded SmolLM2, head only):
R rows, L new tokens per row per step, parents re-selected with repeats after each step (`Rows.select`), and
the value read after every chunk up to `max_tokens`. Prints the median total scoring time of a search (over
repeats) for each length, both ways, their ratio and the largest difference between the two's values.

    flock /tmp/torch.lock .venv/bin/python scripts/bench_value_cache.py --lengths 64 256 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from spi_align.core.records import Prompt
from spi_align.core.rows import Rows
from spi_align.values.guide import ValueModelGuide, _left_pad
from spi_align.values.model import ValueModel

PROMPTS = [
    Prompt("a", "Give three tips for staying healthy."),
    Prompt("b", "Explain why the sky is blue to a ten-year-old, in a short paragraph."),
]


def make_rows(model: ValueModel, rows: int, max_tokens: int, seed: int) -> Rows:
    """Rows as the search holds them (the policy's own cache is irrelevant here: an empty one)."""
    tok = model.tokenizer
    prompt_tokens = [model.prompt_ids(p.text) for p in PROMPTS]
    gen = torch.Generator().manual_seed(seed)
    return Rows(
        prompt_index=torch.arange(len(PROMPTS)).repeat_interleave(rows // len(PROMPTS)),
        cache=DynamicCache(),
        attention_mask=torch.ones(rows, 1, dtype=torch.long),
        next_logits=torch.zeros(rows, 1),
        hidden=torch.zeros(rows, 1),
        response=torch.randint(100, len(tok) - 100, (rows, max_tokens), generator=gen),
        length=torch.zeros(rows, dtype=torch.long),
        done=torch.zeros(rows, dtype=torch.bool),
        logprob=torch.zeros(rows),
        prompt_tokens=prompt_tokens,
        prompts=PROMPTS,
    )


@torch.no_grad()
def from_scratch(model: ValueModel, rows: Rows) -> torch.Tensor:
    """Every row's prompt + response so far, encoded whole (what a cache-less scorer pays each step)."""
    seqs = [rows.prompt_tokens[p] + t for p, t in zip(rows.prompt_index.tolist(), rows.token_lists(), strict=True)]
    ids, mask = _left_pad(seqs, model.pad_id, model.device)
    return model.value(model.hidden(ids, mask)[:, -1])


def search(score, model: ValueModel, n_rows: int, max_tokens: int, chunk: int, width: int, seed: int):
    """One simulated search; returns (seconds spent scoring, values of every step)."""
    rows = make_rows(model, n_rows, max_tokens, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    spent, values = 0.0, []
    for _ in range(max_tokens // chunk):
        rows.length += chunk
        start = time.perf_counter()
        values.append(score(rows))
        spent += time.perf_counter() - start
        per = n_rows // len(PROMPTS)
        parents = [
            p * per + int(i) for p in range(len(PROMPTS)) for i in torch.randint(0, per, (width,), generator=gen)
        ]
        rows = rows.select(torch.tensor(parents).repeat_interleave(n_rows // (width * len(PROMPTS))))
    return spent, torch.stack(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="value backbone: 'default' (SmolLM2) or a model dir")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--width", type=int, default=2, help="parents kept per prompt after each step")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ValueModel.from_source(args.model, train_layers=0)
    torch.manual_seed(0)
    model.head.weight.normal_(0.0, 1.0)  # values of order 1–10, so |ΔV| is read against a visible scale
    guide = ValueModelGuide([model], [1.0], model.tokenizer)
    print(f"{args.model}: {args.rows} rows, chunk {args.chunk}, torch threads {torch.get_num_threads()}")
    print("| tokens | own KV cache (s) | re-encode (s) | ratio | max |ΔV| |")
    print("| --- | --- | --- | --- | --- |", flush=True)
    for length in args.lengths:
        cached, full, diff = [], [], 0.0
        for rep in range(args.repeats):
            t_c, v_c = search(guide, model, args.rows, length, args.chunk, args.width, seed=rep)
            t_f, v_f = search(lambda r: from_scratch(model, r), model, args.rows, length, args.chunk, args.width, rep)
            cached.append(t_c)
            full.append(t_f)
            diff = max(diff, float((v_c - v_f).abs().max()))
        c, f = statistics.median(cached), statistics.median(full)
        print(f"| {length} | {c:.2f} | {f:.2f} | {f / c:.1f}× | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
