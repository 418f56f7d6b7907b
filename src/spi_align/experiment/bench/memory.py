"""Peak resident memory of one method, each in a fresh subprocess (`python -m spi_align.experiment.bench.memory`).

In one long process, peak RSS cannot be split by method: the high-water mark only rises and the allocator keeps
freed memory. So every measured method runs once in its own process, which loads the same config, reads VmRSS
after loading (the baseline), runs the method over all bench prompts, and reads VmHWM (the peak) from
/proc/self/status.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from spi_align.core.errors import SpiError


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MiB; getrusage's peak where /proc is absent."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config_path: str, key: str) -> dict[str, Any]:
    """Load the bench config, run method `key` once, and report baseline and peak RSS (MiB)."""
    from spi_align.config import BenchConfig, build_config
    from spi_align.experiment.bench.context import BenchContext
    from spi_align.experiment.bench.timing import run_once

    cfg: BenchConfig = build_config(BenchConfig, config_path)
    ctx = BenchContext.load(cfg, value_model=False, other_backends=False)
    gc.collect()
    baseline = status_mb("VmRSS")
    wall, cost = run_once(key, ctx.methods[key], ctx.prompts, cfg.data.batch_size, ctx.reseed)
    peak = status_mb("VmHWM")
    return {
        "method": key,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "increment_mb": peak - baseline,
        "wall_s": wall,
        "tokens": cost.tokens_generated,
    }


def measure_in_subprocess(config_path: str | Path, key: str) -> dict[str, Any]:
    """`measure` in a fresh Python process; its result is the last line it prints."""
    cmd = [sys.executable, "-m", "spi_align.experiment.bench.memory", str(config_path), key]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SpiError(f"memory measurement of {key} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))
