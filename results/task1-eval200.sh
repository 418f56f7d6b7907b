# Sourced (from the repository root) by the task-1 commands on the 200 eval prompts that start from
# ../frontier-task1-eval200's round 0: the vLLM engine settings ($V), two threads, task 1's prompt split, and fork_run.
source results/vllm-cpu.sh  # sets $V, the engine settings
export OMP_NUM_THREADS=2
[ -s runs/task1-prompts/fit.jsonl ] || .venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts

# fork_run NEW FROM FROM_RESULTS [--drop SECTION] KEY=VALUE...: runs/NEW as a copy of the finished or stopped run
# runs/FROM (loaded from results/FROM_RESULTS' snapshot where runs/FROM is missing), its report dropped and its saved
# config saying what the calling command sets (a run folder refuses a command with other settings). Copied whole or
# not at all (a half copy would be taken for the run and refill its gaps); nothing where runs/NEW exists.
fork_run() {
  local new=$1 from=$2 from_results=$3
  shift 3
  [ -d "runs/$new" ] && return 0
  [ -d "runs/$from" ] || .venv/bin/python results/snapshot.py load "$from" "$from_results"
  rm -rf "runs/$new.part"
  cp -r "runs/$from" "runs/$new.part"
  rm -f "runs/$new.part"/{report.md,results.json,frontier.json,run.lock} "runs/$new.part"/*.png
  .venv/bin/python results/set_config.py "runs/$new.part/config.yaml" "$@"
  mv "runs/$new.part" "runs/$new"
}
