"""Run folders and their files: atomic writes and appended JSONL (`files.py`), a locked, resumable run directory
(`rundir.py`), and running a method batch by batch so that a rerun resumes it (`resumable.py`)."""
