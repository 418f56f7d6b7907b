#!/usr/bin/env bash
# Reproduces results/frontier-task1: task 1's compute frontier (issue 23) on 48 select prompts (training prompts no
# fit or choice saw), from the round 0 of results/task1-round0/vllm (runs/t1v: tree rollouts of 459 fit prompts, the
# reward head and V_0; made by ../task1-round0/vllm/command.sh, ~30 min). Its trained artefacts are reused as they
# are; the evaluations run on the transformers backend, where the trained reward head reads the policy's own states
# (a finished sample costs no extra forward), with the frontier section on: 64 samples a prompt for best-of-N at
# N = 1..64 (subset estimator) and SPI-1 at W,K,L = 4,4,16 / 2,4,16 / 8,4,16.
set -euo pipefail
cd "$(dirname "$0")/../.."
S="name=t1f policy.backend=hf data.limit=48 frontier.enabled=true"
V="policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648"
rm -rf runs/t1f && cp -r runs/t1v runs/t1f
rm -f runs/t1f/eval-* runs/t1f/report.md runs/t1f/results.json runs/t1f/*.png runs/t1f/run.lock
# the copy's saved config says what this command sets (a run folder refuses a command with other settings)
.venv/bin/python - runs/t1f/config.yaml <<'PY'
import sys, yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
cfg["name"] = "t1f"
cfg["policy"]["backend"] = "hf"
cfg["data"]["limit"] = 48
cfg.setdefault("frontier", {})["enabled"] = True
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
PY
.venv/bin/spi run results/task1-round0/config.yaml $S $V
mkdir -p results/frontier-task1
cp runs/t1f/{report.md,results.json,frontier.json,frontier.png,config.yaml} results/frontier-task1/
