"""Sequence classification: BERT-style models label texts with scores."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from shared.inputs import ClassifyInput
from workers.backends.base import JobContext, Result
from workers.backends.hf_loading import HFBackend, input_device, load_model, typed_out_of_memory

log = logging.getLogger(__name__)
DEFAULT_BATCH = 32
HEADS = ["classifier", "score", "out_proj"]


class ClassifierBackend(HFBackend):
    tasks = ("classify",)

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

    def warm_up(self) -> None:
        self.model(**self.tokenizer(["warm up"], return_tensors="pt").to(input_device(self.model)))

    def health(self) -> dict[str, Any]:
        info = super().health()
        if self.loaded:
            info["labels"] = self.labels
        return info

    def classify(self, inputs: ClassifyInput, ctx: JobContext) -> Result:
        """Score every label for each text; batches are cancellable between them."""
        texts = inputs.all_texts()
        size = int(self.spec.options.get("batch_size") or DEFAULT_BATCH)
        top_k = inputs.top_k or len(self.labels)
        results, tokens = [], 0
        t0 = time.perf_counter()
        for start in range(0, len(texts), size):
            if ctx.should_stop():
                break
            enc = self.tokenizer(
                texts[start : start + size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            tokens += int(enc["attention_mask"].sum())
            enc = {k: v.to(input_device(self.model)) for k, v in enc.items()}
            with torch.inference_mode(), typed_out_of_memory():
                logits = self.model(**enc).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else logits.softmax(-1)
            results.extend(self._ranked(row, top_k) for row in probs.tolist())
            del enc, logits, probs
        output = (
            {"labels": results[0]}
            if inputs.text is not None and results
            else {"results": [{"labels": r} for r in results]}
        )
        log.debug("classified %s texts in %.3fs", len(results), time.perf_counter() - t0)
        return Result(output, {"prompt_tokens": tokens})

    def _ranked(self, scores: list[float], top_k: int) -> list[dict[str, Any]]:
        ranked = sorted(zip(self.labels, scores, strict=True), key=lambda p: -p[1])[:top_k]
        return [{"label": label, "score": round(score, 6)} for label, score in ranked]
