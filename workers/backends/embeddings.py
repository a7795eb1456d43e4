"""Sentence embeddings with sentence-transformers (all-MiniLM-L6-v2 and friends)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from shared.errors import ModelNotAvailable
from shared.inputs import EmbedInput
from workers.backends.base import Backend, JobContext, Result
from workers.backends.hf_loading import device_of, load_kwargs, typed_out_of_memory

log = logging.getLogger(__name__)
DEFAULT_BATCH = 32


class EmbeddingsBackend(Backend):
    tasks = ("embed",)
    inference_scope = torch.inference_mode

    def load_model(self, path) -> None:
        """Load the sentence-transformers model. :raises ModelNotAvailable:"""
        from sentence_transformers import SentenceTransformer

        kwargs = load_kwargs(self.spec)
        kwargs.pop("device_map", None)  # sentence-transformers places the model itself
        self.device = device_of(self.spec)
        try:
            self.model = SentenceTransformer(str(path), device=self.device, model_kwargs=kwargs)
        except (OSError, ValueError, ImportError) as exc:
            raise ModelNotAvailable(
                f"model {self.spec.id} failed to load from {path}: {exc}"
            ) from exc
        self.model.eval()
        self.dimensions = self.model.get_embedding_dimension()

    def warm_up(self) -> None:
        self.model.encode(["warm up"], show_progress_bar=False)

    def health(self) -> dict[str, Any]:
        info = super().health()
        if self.loaded:
            info.update(
                dimensions=self.dimensions,
                device=self.device,
                quantization=self.spec.quantization,
                max_seq_length=self.model.max_seq_length,
            )
        return info

    def close(self) -> None:
        self.model = None
        super().close()

    def embed(self, inputs: EmbedInput, ctx: JobContext) -> Result:
        """Embed texts batch by batch; cancellable between batches."""
        texts = inputs.all_texts()
        size = int(self.spec.options.get("batch_size") or DEFAULT_BATCH)
        parts: list[np.ndarray] = []
        tokens = 0
        t0 = time.perf_counter()
        for start in range(0, len(texts), size):
            if ctx.should_stop():
                break
            batch = texts[start : start + size]
            tokens += self._count_tokens(batch)
            with torch.inference_mode(), typed_out_of_memory():
                parts.append(
                    self.model.encode(
                        batch,
                        batch_size=size,
                        normalize_embeddings=inputs.normalize,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                )
        elapsed = time.perf_counter() - t0
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.dimensions))
        log.debug("embedded %s texts in %.3fs", len(vectors), elapsed)
        return Result(
            {"embeddings": vectors.astype(np.float32).tolist(), "dimensions": self.dimensions},
            {"prompt_tokens": tokens},
        )

    def _count_tokens(self, texts: list[str]) -> int:
        enc = self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)
        return sum(len(ids) for ids in enc["input_ids"])
