"""Running a search over many prompts in batches, with a progress bar."""

from __future__ import annotations

from collections.abc import Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from spi_align.interfaces import Cost, Prompt, Search, SearchResult


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=transient,
    )


def run_batched(
    search: Search, prompts: Sequence[Prompt], batch_size: int, cost: Cost, label: str | None = None
) -> list[SearchResult]:
    """Run `search` over `prompts`, `batch_size` prompts at a time, showing progress."""
    results: list[SearchResult] = []
    with progress_bar() as bar:
        task = bar.add_task(label or search.name, total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            results.extend(search.run(batch, cost))
            bar.advance(task, len(batch))
    return results
