"""Sentence embeddings with sentence-transformers (all-MiniLM-L6-v2 and friends).

Texts from every job running on the worker go through one DynamicBatcher: 32 clients
sending one text each become one forward pass of 32 texts.
"""

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
from workers.batching import Batch, BatchOptions, DynamicBatcher, check_texts

log = logging.getLogger(__name__)
MAX_BATCH = 32
BATCH_WAIT_MS = 5.0


class EmbeddingsBackend(Backend):
    tasks = ("embed",)
    inference_scope = torch.inference_mode
    default_max_concurrency = 32  # enough jobs in flight to fill a pass of MAX_BATCH texts
    batcher: DynamicBatcher | None = None

    def load_model(self, path) -> None:
        """Load the sentence-transformers model. :raises ModelNotAvailable:"""
        from sentence_transformers import SentenceTransformer

        kwargs = load_kwargs(self.spec)
        kwargs.pop("device_map", None)  # sentence-transformers places the model itself
        self.device = device_of(self.spec)
        options = BatchOptions.from_spec(self.spec, max_batch=MAX_BATCH, wait_ms=BATCH_WAIT_MS)
        try:
            self.model = SentenceTransformer(str(path), device=self.device, model_kwargs=kwargs)
        except (OSError, ValueError, ImportError) as exc:
            raise ModelNotAvailable(
                f"model {self.spec.id} failed to load from {path}: {exc}"
            ) from exc
        self.model.eval()
        self.dimensions = self.model.get_embedding_dimension()
        self.batcher = DynamicBatcher(
            self.spec.id, self._encode, options, scope=torch.inference_mode
        )

    def warm_up(self) -> None:
        """One text through the batcher's thread, as a job's texts go."""
        self.batcher.run(["warm up"], None, key=True)

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
        """Embed the job's texts in passes shared with other jobs; cancellable while waiting."""
        texts = check_texts(inputs.all_texts(), "input.texts" if inputs.texts else "input.text")
        t0 = time.perf_counter()
        rows = self.batcher.run(texts, ctx, key=inputs.normalize)
        vectors = np.stack([v for v, _ in rows]) if rows else np.zeros((0, self.dimensions))
        log.debug("embedded %s texts in %.3fs", len(rows), time.perf_counter() - t0)
        return Result(
            {"embeddings": vectors.astype(np.float32).tolist(), "dimensions": self.dimensions},
            {"prompt_tokens": sum(n for _, n in rows)},
        )

    def _encode(self, batch: Batch) -> list[tuple[np.ndarray, int]]:
        """One forward pass (the batcher's thread): each text's vector and token count.

        The steps of SentenceTransformer.encode for one batch, keeping the attention mask
        so the texts are tokenized once.
        """
        from sentence_transformers.util import batch_to_device

        features = self.model.preprocess(batch.items)
        counts = features["attention_mask"].sum(dim=1).tolist()
        with typed_out_of_memory():
            vectors = self.model(batch_to_device(features, self.model.device))["sentence_embedding"]
        if batch.key:  # normalize
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return list(zip(vectors.float().cpu().numpy(), counts, strict=True))
