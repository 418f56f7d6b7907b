"""Reference similarity: cosine similarity of all-MiniLM-L6-v2 embeddings of a response and its reference.

The encoder is a transformer: inside a search its forward tokens (every text it encodes, padding-free, after
its truncation) are billed to the search's cost as "reward" (`core/records.py:billed`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt, billed
from spi_align.data.assets import minilm_dir

if TYPE_CHECKING:
    import torch


class ReferenceSimilarity:
    """Scores a response by how close its meaning is to the prompt's reference answer (cosine, in [-1, 1])."""

    name = "similarity"

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder ships in a package: never ask the hub
        from sentence_transformers import SentenceTransformer

        self.batch_size = batch_size
        self._encoder = SentenceTransformer(str(minilm_dir()), device=device, local_files_only=True)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        cost = billed()
        if cost is not None and texts:
            encoder = self._encoder
            tokenize = getattr(encoder, "preprocess", None) or encoder.tokenize  # `tokenize` before 5.x
            cost.count_forward("reward", int(tokenize(texts)["attention_mask"].sum()))
        return self._encoder.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """Cosine similarity of each response to its prompt's reference; each reference is encoded once."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not responses:
            return []
        missing = next((p for p in prompts if not p.reference), None)
        if missing is not None:
            raise SpiError(
                f"the similarity scorer needs reference answers; prompt '{missing.id}' has none "
                "(use a prompts file with a reference column, or another scorer)"
            )
        wanted = [p.reference or "" for p in prompts]  # every prompt has one (checked above)
        references = list(dict.fromkeys(wanted))
        row = {text: i for i, text in enumerate(references)}
        ref_emb = self._embed(references)[[row[text] for text in wanted]]
        resp_emb = self._embed(list(responses))
        return (resp_emb * ref_emb).sum(dim=-1).float().cpu().tolist()
