"""What a run reads: the embedded default (the policy and prompts fetched into the asset cache, `assets.py`) and
prompt files (`prompts.py`)."""
