"""Issue 18, part 3: which lever makes the reward proxy agree with the evaluator, on task 1.

Reads a finished round 0 of `results/task1-round0` (its rollouts and prefix states in `runs/task1-round0`) and fits
reward proxies on the frozen policy's states in several ways. Every proxy is judged the same way: the measurement
issue's split of the 459 fit prompts (`prompt_split`, seed 0) into fit / choice / held-out prompts; every setting
(weight decay, layer, margin, ridge α) is chosen on the choice prompts' pairs, the chosen proxy is refitted on fit +
choice and read on the held-out prompts only: pair accuracy over every held-out ordered pair whose labels differ,
and the within-prompt Spearman with the evaluator's labels (prompts with constant predictions count 0).

Levers: features (the end state the reward head reads today, the state before the end token, the mean over the
closed prefixes, the end state at a middle layer chosen on the choice prompts), pairs kept by label margin,
pointwise (ridge on per-prompt centred labels) vs pairwise (Bradley–Terry) loss, data size (a share of the fit
prompts), and layers tuned: the top n transformer layers, the final norm and the head tuned by the library's own
trainer (`train/reward_trainer.py`, `RewardTuner.measure`: what `reward_model.layers: n` runs, without its last
tune on every pair), on the classifier's rendering of each (prompt, response). The trainer splits by
`prompt_split(its samples' prompt ids, seed)`; a prompt's side is a hash of (seed, id) alone (`prompt_draw`), so on
any subset of the prompts it is the side this script's split gives, which `layers_tuned` checks. Its learning rate,
AdamW decay and epochs (and the starting head's decay) are chosen on the choice prompts' pairs, its figures read on
the held-out prompts' samples and all their differing pairs, as for every other row. Tuning runs every layer forward
on every pair, so it is capped (`--layer-prompts` fit + choice prompts, `--layer-pairs` best-vs-worst pairs each;
held-out prompts all unless `--layer-heldout`), and the row also gives the head alone fitted on the same capped
pairs and features (the trainer's own start), the comparison the cap leaves fair. Writes `levers.md` and
`levers.json` beside this script (or in `--out`); `--only layers` computes only the layers-tuned rows and merges them
into the tables there (a row of the same n and caps is replaced, every other row kept).

    python results/reward-levers/levers.py runs/task1-round0 runs/task1-prompts/fit.jsonl
    python results/reward-levers/levers.py runs/task1-round0 runs/task1-prompts/fit.jsonl --only layers --layers 2 4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from spi_align.config import Config, DataConfig, RewardTrainConfig, build_config
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.data.prompts import load_prompts, prompt_split
from spi_align.hf.models import resolve_model_source
from spi_align.runs.files import read_jsonl
from spi_align.scoring import make_scorer
from spi_align.scoring.ranking import prompt_spearman
from spi_align.scoring.train_reward import all_pairs, preference_pairs, train_reward_head_on_states
from spi_align.values.prefix_states import load_states
from spi_align.values.round import flatten_rollouts

HERE = Path(__file__).parent
SEED = 0
LAYERS = "layers tuned"


def bt(states: torch.Tensor, groups: list[str], labels: list[float], pairs=None) -> dict:
    """Bradley–Terry head on `states` by the run's own procedure (weight decay chosen on the choice prompts)."""
    model = SimpleNamespace(head=torch.nn.Linear(states.shape[1], 1))
    return train_reward_head_on_states(model, states, groups, labels, RewardTrainConfig(), SEED, pairs)


def ridge(states: torch.Tensor, groups: list[str], labels: list[float]) -> dict:
    """Pointwise: ridge regression of the per-prompt centred label on standardised states, α chosen on the choice
    prompts by within-prompt Spearman, refitted on fit + choice, read on the held-out prompts."""
    fit_ids, choice_ids, held_ids = prompt_split(groups, SEED)
    x = states.double().numpy()
    y = np.asarray(labels, dtype=np.float64)
    g = np.asarray(groups)
    centred = y.copy()
    for p in set(groups):
        centred[g == p] -= y[g == p].mean()

    def fit(rows: np.ndarray, alpha: float) -> np.ndarray:
        mu, sd = x[rows].mean(0), x[rows].std(0) + 1e-6
        z = (x[rows] - mu) / sd
        w = np.linalg.solve(z.T @ z + alpha * len(rows) * np.eye(z.shape[1]), z.T @ centred[rows])
        return w / sd

    def score(w: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
        pred = x[rows] @ w
        ranked = prompt_spearman(pred.tolist(), y[rows].tolist(), g[rows].tolist())
        sub = [groups[i] for i in rows]
        pairs = all_pairs(sub, y[rows].tolist())
        acc = float(np.mean([pred[a] > pred[b] for a, b in pairs])) if pairs else float("nan")
        return acc, ranked.mean

    rows_fit = np.flatnonzero(np.isin(g, list(fit_ids)))
    rows_choice = np.flatnonzero(np.isin(g, list(choice_ids)))
    rows_held = np.flatnonzero(np.isin(g, list(held_ids)))
    by_alpha = {a: score(fit(rows_fit, a), rows_choice)[1] for a in (0.01, 0.1, 1.0, 10.0)}
    best = max(by_alpha, key=by_alpha.get)
    acc, rho = score(fit(np.concatenate([rows_fit, rows_choice]), best), rows_held)
    return {"alpha": best, "choice_spearman": by_alpha[best], "heldout_accuracy": acc,
            "heldout_spearman_with_labeller": rho}


@torch.no_grad()
def layer_end_states(run: Path, prompts: list[Prompt], tokens: list[list[int]], batch: int = 16) -> torch.Tensor:
    """(N, layers + 1, H): every layer's state at the last token of [prompt, response, end of turn] (the response's
    own end token when it closed itself): one forward per rollout, every layer kept."""
    from spi_align.hf.batches import pad_batch, positions_from_mask
    from spi_align.policy.load import load_policy

    cfg = build_config(Config, run / "config.yaml", [])
    policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
    eos = {int(e) for e in policy.eos_ids.tolist()}
    encoded = dict(zip([p.id for p in prompts], policy.prompt_ids(prompts), strict=True))
    out = []
    for start in range(0, len(tokens), batch):
        seqs = []
        for p, r in zip(prompts[start : start + batch], tokens[start : start + batch], strict=True):
            seqs.append(list(encoded[p.id]) + list(r) + ([] if r and r[-1] in eos else [int(policy.end_id)]))
        ids, mask = pad_batch(seqs, policy.pad_id, "left", policy.device)
        hs = policy.backbone(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask, ids.shape[1]),
            output_hidden_states=True, use_cache=False,
        ).hidden_states
        out.append(torch.stack([h[:, -1].float().cpu() for h in hs], dim=1))
    return torch.cat(out)


def layers_tuned(
    source: str, prompts: list[Prompt], texts: list[str], labels: list[float], layers: int,
    max_prompts: int | None, pairs_per_prompt: int | None, max_heldout: int | None, tune_lr: list[float] | None,
    save: Path | None = None,
) -> dict:  # fmt: skip
    """The top `layers` layers tuned by `RewardTuner.measure` on the samples of at most `max_prompts` fit + choice
    prompts (the first by id; None: all) with at most `pairs_per_prompt` best-vs-worst pairs each (None: every
    differing pair), and of at most `max_heldout` held-out prompts (the first by id) with all their differing pairs;
    the metrics, with the setting and the caps. `save`: a folder for the model the held-out figures were read on
    (tuned on the fit + choice pairs), a reward model `reward=` takes."""
    from spi_align.train.reward_trainer import RewardPairs, RewardTuner

    groups = [p.id for p in prompts]
    fit_ids, choice_ids, held_ids = prompt_split(groups, SEED)
    kept = set(sorted(fit_ids | choice_ids)[:max_prompts]) | set(sorted(held_ids)[:max_heldout])
    rows = [i for i, g in enumerate(groups) if g in kept]
    sub_groups = [groups[i] for i in rows]
    sub_labels = [labels[i] for i in rows]
    # the trainer splits its own samples' prompts: the same sides as the split above (a hash of seed and id alone)
    if prompt_split(sub_groups, SEED) != (fit_ids & kept, choice_ids & kept, held_ids & kept):
        raise SpiError("the capped prompts split otherwise than the whole set: raise --layer-prompts/--layer-heldout")
    capped = preference_pairs(sub_groups, sub_labels, pairs_per_prompt)
    pairs = [pr for pr in capped if sub_groups[pr[0]] not in held_ids]
    pairs += [pr for pr in all_pairs(sub_groups, sub_labels) if sub_groups[pr[0]] in held_ids]
    data = RewardPairs([prompts[i] for i in rows], [texts[i] for i in rows], sub_labels, pairs)
    cfg = RewardTrainConfig(layers=layers, **({"tune_lr": tune_lr} if tune_lr else {}))
    tuner = RewardTuner(source, data, cfg, SEED, device="cpu")
    metrics = tuner.measure()
    if save is not None and tuner.probe is not None:  # the model the held-out figures were read on
        tuner.save(tuner.probe, save)
    trained = [g for g in kept if g not in held_ids]
    setting = (
        f"top {layers} layers + final norm + head, Bradley–Terry by the library's Trainer from the head fit "
        f"(lr {metrics['lr']:g}, {metrics['epochs']} epoch(s) chosen on choice pairs); "
        f"{len(trained)} fit + choice prompts, "
        + (f"≤ {pairs_per_prompt} best-vs-worst pairs each" if pairs_per_prompt else "every differing pair")
        + f", {len(kept & held_ids)} held-out prompts; head alone on the same: "
        f"{metrics['head_heldout_accuracy']:.3f} / {metrics['head_heldout_spearman_with_labeller']:.3f}"
    )
    caps = {"layers": layers, "max_prompts": max_prompts, "pairs_per_prompt": pairs_per_prompt,
            "max_heldout": max_heldout, "tune_lr": cfg.tune_lr}
    return {"setting": setting, "key": caps, "fit_choice_prompts": len(trained),
            "heldout_prompts": len(kept & held_ids), "samples": len(rows), **metrics}


def write_tables(out: Path, rows: list[dict], groups: list[str], labels: list[float], merge: bool) -> None:
    """`levers.json` and `levers.md` in `out`; with `merge`, `rows` replace the rows there of the same lever and
    setting (a layers-tuned row: of the same n and caps) and are added after the others."""

    def key(row: dict) -> str:
        return json.dumps([row["lever"], row.get("key", row["setting"])], sort_keys=True)

    if merge and (out / "levers.json").is_file():
        new = {key(r): r for r in rows}
        old = json.loads((out / "levers.json").read_text())
        rows = [new.pop(key(r), r) for r in old] + list(new.values())
    (out / "levers.json").write_text(json.dumps(rows, indent=1) + "\n")
    fit_ids, choice_ids, held_ids = prompt_split(groups, SEED)
    lines = ["| lever | setting | held-out pair accuracy | held-out Spearman with the evaluator | CPU s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['lever']} | {r['setting']} | {r['heldout_accuracy']:.3f} | "
                     f"{r['heldout_spearman_with_labeller']:.3f} | {r['cpu_s']} |")
    lines.append(f"\n{len(fit_ids)} fit, {len(choice_ids)} choice, {len(held_ids)} held-out prompts; "
                 f"{len(groups)} rollouts, {len(all_pairs(groups, labels))} ordered pairs whose labels differ.")
    (out / "levers.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = Path(args.run)
    if not (run / "config.yaml").is_file() or not (run / "rollouts-0.jsonl").is_file():
        raise SpiError(f"{run} holds no round 0 (config.yaml and rollouts-0.jsonl)")
    cfg = build_config(Config, run / "config.yaml", [])
    source = resolve_model_source(cfg.policy.model)
    train = load_prompts(DataConfig(prompts=args.fit_file, split="train"))
    rollouts = read_jsonl(run / "rollouts-0.jsonl")
    by_id = {p.id: p for p in train}
    if missing := {r["id"] for r in rollouts} - set(by_id):
        raise SpiError(f"{args.fit_file} lacks {len(missing)} prompts of {run}'s round 0 (e.g. {min(missing)})")
    prompts, tokens, _ = flatten_rollouts(rollouts, by_id)
    groups = [p.id for p in prompts]
    from transformers import AutoTokenizer

    texts = AutoTokenizer.from_pretrained(source).batch_decode(tokens, skip_special_tokens=True)
    labels = [float(s) for s in make_scorer("similarity").score(prompts, texts)]
    rows: list[dict] = []

    def lever(name: str, fn) -> None:
        t0, w0 = time.process_time(), time.perf_counter()
        m = fn()
        cpu, wall = round(time.process_time() - t0, 1), round(time.perf_counter() - w0, 1)
        rows.append({"lever": name, "setting": m.pop("setting"), "cpu_s": cpu, "wall_s": wall, **m})
        print(json.dumps(rows[-1]), flush=True)

    if args.only is None:
        rows += state_levers(run, prompts, tokens, groups, labels)
    for n in args.layers:
        lever(LAYERS, lambda n=n: layers_tuned(source, prompts, texts, labels, n, args.layer_prompts,
                                               args.layer_pairs, args.layer_heldout, args.tune_lr,
                                               Path(args.save) / f"layers-{n}" if args.save else None))
    write_tables(Path(args.out), rows, groups, labels, merge=args.only is not None)


def state_levers(run: Path, prompts: list[Prompt], tokens: list[list[int]], groups: list[str],
                 labels: list[float]) -> list[dict]:
    """Every lever on the frozen policy's states (features, loss, pairs by margin, data size, middle layers)."""
    states = load_states(run / "rollouts-0.states")
    end = torch.stack([s.closed[-1] for s in states]).float()
    before = torch.stack([s.hidden[-1] for s in states]).float()
    mean_closed = torch.stack([s.closed.mean(0) for s in states]).float()
    rows: list[dict] = []

    def lever(name: str, setting: str, fn) -> None:
        t0 = time.process_time()
        m = fn()
        rows.append({"lever": name, "setting": setting, "cpu_s": round(time.process_time() - t0, 1), **m})
        print(json.dumps(rows[-1]), flush=True)

    lever("baseline", "Bradley–Terry head on the end state (today's reward: train)", lambda: bt(end, groups, labels))
    lever("features", "state before the end token", lambda: bt(before, groups, labels))
    lever("features", "mean of the closed prefixes (16/32/48/end)", lambda: bt(mean_closed, groups, labels))
    lever("features", "end state ‖ mean closed", lambda: bt(torch.cat([end, mean_closed], 1), groups, labels))
    lever("loss", "pointwise ridge on centred labels, end state", lambda: ridge(end, groups, labels))
    lever("loss", "pointwise ridge on centred labels, mean closed", lambda: ridge(mean_closed, groups, labels))

    fit_ids, choice_ids, held_ids = prompt_split(groups, SEED)
    pairs = all_pairs(groups, labels)
    gaps = [abs(labels[a] - labels[b]) for a, b in pairs]
    for q in (0.25, 0.5):
        cut = float(np.quantile(gaps, q))
        kept = [pr for pr, d in zip(pairs, gaps, strict=True) if d >= cut or groups[pr[0]] not in fit_ids]
        lever("pairs by margin", f"fit pairs with label gap ≥ {cut:.3f} (top {1 - q:.0%}); choice, held-out all",
              lambda kept=kept: bt(end, groups, labels, kept))
    for share in (0.25, 0.5):
        keep_fit = set(sorted(fit_ids)[: int(len(fit_ids) * share)])
        kept = [pr for pr in pairs if groups[pr[0]] in keep_fit or groups[pr[0]] not in fit_ids]
        lever("data size", f"{share:.0%} of the fit prompts", lambda kept=kept: bt(end, groups, labels, kept))

    t0 = time.process_time()
    layers = layer_end_states(run, prompts, tokens)
    pass_s = time.process_time() - t0
    by_layer = {k: bt(layers[:, k], groups, labels) for k in range(4, layers.shape[1], 4)}
    best = max(by_layer, key=lambda k: by_layer[k]["choice_accuracy"])
    rows.append({"lever": "features", "setting": f"end state at layer {best} of {layers.shape[1] - 1} (chosen on "
                 "choice pairs among every 4th)", "cpu_s": round(pass_s, 1), **by_layer[best],
                 "choice_accuracy_by_layer": {k: v["choice_accuracy"] for k, v in by_layer.items()}})
    print(json.dumps(rows[-1]), flush=True)
    mid = layers[:, best]
    lever("features", f"layer {best} end state ‖ last-layer mean closed",
          lambda: bt(torch.cat([mid, mean_closed], 1), groups, labels))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def cap(text: str) -> int | None:
        if text == "all":
            return None
        if not text.isdigit() or int(text) == 0:
            raise argparse.ArgumentTypeError(f"not a positive count or 'all': {text}")
        return int(text)

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) == 0:
            raise argparse.ArgumentTypeError(f"not a positive integer: {text}")
        return int(text)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run folder with round 0 (config.yaml, rollouts-0.jsonl, rollouts-0.states)")
    parser.add_argument("fit_file", help="the training prompts file round 0 was rolled out on")
    parser.add_argument("--only", choices=["layers"], help="only the layers-tuned rows, merged in --out")
    parser.add_argument("--layers", type=positive, nargs="+", default=[2], help="top layers tuned, one row each")
    # The default caps aim at ~20 CPU minutes a row. Measured (RewardTuner, top 2 layers, on a random model shaped
    # like SmolLM2-135M, task-1-like texts of 128 tokens on average, 1 thread, niced on a busy machine): a forward
    # ~0.3 CPU s a sample, a tuning epoch ~0.95 CPU s a pair. `measure` runs a forward over every sample (the
    # head's features), 2 lr candidates x 2 epochs on the fit pairs reading the choice samples after each epoch, the
    # probe (<= 2 epochs) on fit + choice pairs and a read of the held-out samples: with 7.9 samples a prompt and
    # all 102 held-out prompts, ~470 s + 4 s a fit/choice prompt + 5 s a fit/choice pair (worst case, 2 epochs
    # chosen), so 50 prompts x 2 pairs is ~1170 CPU s; the lead's own forward pass (levers.md: 0.44 CPU s a sample
    # with every layer kept) says it may be up to ~1.4x that. Each n in --layers costs a row of its own.
    parser.add_argument("--layer-prompts", type=cap, default=50, help="fit + choice prompts tuned on (or 'all')")
    parser.add_argument("--layer-pairs", type=cap, default=2, help="best-vs-worst pairs a fit/choice prompt")
    parser.add_argument("--layer-heldout", type=cap, default=None, help="held-out prompts read (default all)")
    parser.add_argument("--tune-lr", type=float, nargs="+", help="learning-rate candidates (default the library's)")
    parser.add_argument("--save", help="a folder for each layers-tuned model read on the held-out prompts (layers-N)")
    parser.add_argument("--out", default=str(HERE), help="where levers.json and levers.md are (default beside this)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        main()
    except SpiError as exc:
        print(f"levers: error: {exc}", file=sys.stderr)
        sys.exit(2)
