#!/usr/bin/env bash
# Reproduces results/frontier-task1-eval200: task 1's compute frontier (issue 23) on the 200 AlpacaEval eval prompts,
# on the vLLM backend, from the round 0 that ../strength-task1 trained (tree rollouts of the 459 fit prompts, the
# reward head and V_0; `spi sweep ../strength-task1/sweep.yaml` makes it, ~30 min) and with the search strength
# chosen there on training prompts (STRENGTH below). The round 0 is reused as it is (its costs are recorded, so the
# frontier spreads them over the queries served); the eval prompts were never used by any fit or choice.
# Frontier: 64 samples a prompt for best-of-N at N = 1..64 (subset estimator), SPI-1 at three beam budgets.
set -euo pipefail
cd "$(dirname "$0")/../.."
CELL=${CELL:-runs/sweeps/strength-task1/cells/32ae169c62fb}  # the sweep's cell with the chosen strength
STRENGTH=${STRENGTH:-"spi.selection=diversity"}
S="name=t1e run_dir=runs data.prompts=default data.split=eval data.limit=200 data.train_prompts=runs/task1-prompts/fit.jsonl"
F="frontier.enabled=true frontier.budgets=[[4,4,16],[2,4,16],[2,2,16]]"
V="policy.backend=vllm policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648"
export OMP_NUM_THREADS=2
rm -rf runs/t1e && cp -r "$CELL" runs/t1e
rm -f runs/t1e/eval-* runs/t1e/frontier* runs/t1e/report.md runs/t1e/results.json runs/t1e/*.png runs/t1e/run.lock
# the copy's saved config says what this command sets (a run folder refuses a command with other settings)
.venv/bin/python - runs/t1e/config.yaml $S $F $STRENGTH <<'PY'
import sys
import yaml
from spi_align.config import set_dotted
path, settings = sys.argv[1], sys.argv[2:]
cfg = yaml.safe_load(open(path))
for item in settings:
    key, value = item.split("=", 1)
    set_dotted(cfg, key, yaml.safe_load(value))
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
PY
.venv/bin/spi run runs/t1e/config.yaml $S $F $V $STRENGTH
mkdir -p results/frontier-task1-eval200
cp runs/t1e/{report.md,results.json,frontier.json,frontier.png,config.yaml} results/frontier-task1-eval200/
