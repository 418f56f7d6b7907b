# Sourced (from the repository root) by the task-1 commands on the 200 eval prompts that start from
# ../frontier-task1-eval200's round 0: the vLLM engine settings ($V), two threads, and task 1's prompt split.
source results/vllm-cpu.sh  # sets $V, the engine settings
export OMP_NUM_THREADS=2
[ -s runs/task1-prompts/fit.jsonl ] || .venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
