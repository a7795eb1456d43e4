"""Sequence classification: BERT-style models label texts with scores.

Texts from every job running on the worker share forward passes (workers.batching).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from shared.inputs import ClassifyInput
from workers.backends.base import JobContext, Result
from workers.backends.hf_loading import HFBackend, input_device, load_model, typed_out_of_memory
from workers.batching import Batch, BatchOptions, DynamicBatcher, check_texts

log = logging.getLogger(__name__)
MAX_BATCH = 32
BATCH_WAIT_MS = 5.0
HEADS = ["classifier", "score", "out_proj"]


class ClassifierBackend(HFBackend):
    tasks = ("classify",)
    default_max_concurrency = 32
    batcher: DynamicBatcher | None = None

    def load_model(self, path) -> None:
        """Load tokenizer and classifier. :raises ModelNotAvailable:"""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # The label head stays unquantized: it is tiny, and bitsandbytes' CPU 4-bit
        # kernels need output widths in blocks of 32, which a 2-label head is not.
        self.model = load_model(
            AutoModelForSequenceClassification, self.spec, path, skip_modules=HEADS
        )
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.multi_label = self.model.config.problem_type == "multi_label_classification"
        self.max_length = min(
            int(self.spec.options.get("max_length") or 512), self.tokenizer.model_max_length
        )
        options = BatchOptions.from_spec(self.spec, max_batch=MAX_BATCH, wait_ms=BATCH_WAIT_MS)
        self.batcher = DynamicBatcher(
            self.spec.id, self._scores, options, scope=torch.inference_mode
        )

    def warm_up(self) -> None:
        """One text through the batcher's thread, as a job's texts go."""
        self.batcher.run(["warm up"], None)

    def health(self) -> dict[str, Any]:
        info = super().health()
        if self.loaded:
            info["labels"] = self.labels
        return info

    def classify(self, inputs: ClassifyInput, ctx: JobContext) -> Result:
        """Score every label for each text in passes shared with other jobs."""
        texts = check_texts(inputs.all_texts(), "input.texts" if inputs.texts else "input.text")
        top_k = inputs.top_k or len(self.labels)
        t0 = time.perf_counter()
        rows = self.batcher.run(texts, ctx)
        results = [self._ranked(scores, top_k) for scores, _ in rows]
        output = (
            {"labels": results[0]}
            if inputs.text is not None and results
            else {"results": [{"labels": r} for r in results]}
        )
        log.debug("classified %s texts in %.3fs", len(results), time.perf_counter() - t0)
        return Result(output, {"prompt_tokens": sum(n for _, n in rows)})

    def _scores(self, batch: Batch) -> list[tuple[list[float], int]]:
        """One forward pass (the batcher's thread): each text's label scores and tokens."""
        enc = self.tokenizer(
            batch.items,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        counts = enc["attention_mask"].sum(dim=1).tolist()
        enc = {k: v.to(input_device(self.model)) for k, v in enc.items()}
        with typed_out_of_memory():
            logits = self.model(**enc).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else logits.softmax(-1)
        return list(zip(probs.tolist(), counts, strict=True))

    def _ranked(self, scores: list[float], top_k: int) -> list[dict[str, Any]]:
        ranked = sorted(zip(self.labels, scores, strict=True), key=lambda p: -p[1])[:top_k]
        return [{"label": label, "score": round(score, 6)} for label, score in ranked]
