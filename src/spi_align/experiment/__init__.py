"""The experiment harness: run directories, resumable method runs, baselines wiring, reports, sweeps, bench."""
