"""`reward: train` with `reward_model.layers` > 0 as a step of its own: the reward model's top layers tuned on a run's
preference pairs (`train/reward_trainer.py`), inside `spi run` or launched over GPUs and nodes:

    accelerate launch [--config_file ACCELERATE.yaml] -m spi_align.experiment.tune_reward runs/NAME

`spi run` writes the pairs (`reward_pairs.json`: round 0's samples, the evaluator's labels, the pairs) before it tunes;
this entry reads them and the run's `config.yaml`, and writes what `spi run` would (`reward_model/`, a transformers
sequence classifier, and `reward_model.json`, its metrics), from the main process. Rerunning the `spi run` command
then resumes after this step. Each process computes the frozen features itself; DDP, DeepSpeed ZeRO-1/2 and FSDP
(full state dicts, `use_orig_params`) configs of `accelerate config` work as for any `Trainer`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spi_align.config import Config, build_config
from spi_align.core.errors import SpiError
from spi_align.hf.models import resolve_model_source
from spi_align.runs.rundir import RunDir
from spi_align.spi import REWARD_DIR
from spi_align.train.reward_trainer import RewardPairs, tune_reward_model

log = logging.getLogger(__name__)

PAIRS_FILE = "reward_pairs.json"
METRICS_FILE = "reward_model.json"


def launch_command(run: RunDir) -> str:
    """The command that runs this step on its own for `run` (over GPUs with `accelerate launch`)."""
    return f"accelerate launch -m spi_align.experiment.tune_reward {run.path}"


def is_main_process() -> bool:
    """Whether this is the process that writes (rank 0 of `accelerate launch` / `torchrun`, or the only one): read
    from the launcher's environment, so that the `Trainer` still sets up the distributed state itself."""
    return os.environ.get("RANK", "0") == "0"


def tune_into_run(run: RunDir, cfg: Config, data: RewardPairs) -> dict[str, Any]:
    """Tune the reward model of `run` on `data` with `cfg.reward_model`; the main process writes `reward_model/` and
    its metrics (the metrics first: the folder counts as done once it is in place), other processes only train."""
    source = resolve_model_source(cfg.policy.model)

    def tune(out: str | Path) -> dict[str, Any]:
        return tune_reward_model(source, data, cfg.reward_model, out, cfg.seed, cfg.policy.device, cfg.policy.dtype)

    if not is_main_process():
        with tempfile.TemporaryDirectory() as scratch:  # the main process saves; the others take part in it
            return tune(scratch)
    with run.folder(REWARD_DIR) as tmp:
        metrics = tune(tmp)
        run.write_json(METRICS_FILE, metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Tune the reward model of the run folder given (see the module docstring); exit 2 with one line on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m spi_align.experiment.tune_reward",
        description="Tune a run's reward model (reward: train, reward_model.layers > 0) on its preference pairs.",
    )
    parser.add_argument("run", help="the run folder (written by `spi run` up to its preference pairs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # as `spi` does: its own log lines, not the loads' reports and bars
    hf_logging.set_verbosity_error()
    folder = Path(args.run)
    try:
        if not (folder / "config.yaml").is_file() or not (folder / PAIRS_FILE).is_file():
            raise SpiError(f"{folder} holds no run with preference pairs (config.yaml and {PAIRS_FILE})")
        cfg: Config = build_config(Config, str(folder / "config.yaml"), [])
        if cfg.reward != "train" or cfg.reward_model.layers == 0:
            raise SpiError(f"{folder} was not run with reward: train and reward_model.layers > 0")
        run = RunDir(folder.parent, folder.name)
        if is_main_process():
            run.lock()  # no `spi run` of this folder meanwhile
        metrics = tune_into_run(run, cfg, RewardPairs.load(folder / PAIRS_FILE))
        log.info("reward model tuned: held-out accuracy %s", metrics.get("heldout_accuracy"))
        return 0
    except SpiError as exc:
        print(f"tune_reward: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
