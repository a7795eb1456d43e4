"""Transformers text backend: any causal LM (safetensors or a GGUF file), chat and completion.

Jobs running at once on a worker share one continuous batch (workers.backends.hf_continuous,
transformers' own manager); `options.continuous_batching: false`, or `max_concurrency: 1`,
runs one generate() at a time instead.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from shared.inputs import ChatInput, CompleteInput
from workers.backends.base import JobContext, Result
from workers.backends.hf_continuous import ContinuousGenerator, batchable
from workers.backends.hf_generation import generate, to_device
from workers.backends.hf_loading import HFBackend, greedy_token, input_device, load_model

log = logging.getLogger(__name__)


class TransformersTextBackend(HFBackend):
    tasks = ("chat", "complete")
    default_max_concurrency = 8
    continuous: ContinuousGenerator | None = None

    def load_model(self, path: Path) -> None:
        """Load tokenizer and model; a .gguf source is dequantized by transformers."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        extra: dict[str, Any] = {}
        gguf = self.spec.options.get("gguf_file")
        if path.is_file():  # a source naming the .gguf file itself
            path, gguf = path.parent, path.name
        if gguf:
            extra["gguf_file"] = gguf
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **extra)
        self.model = load_model(AutoModelForCausalLM, self.spec, path, **extra)
        template = self.spec.options.get("chat_template")
        if template:
            self.tokenizer.chat_template = template
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._one_at_a_time = threading.Lock()
        if self.max_concurrency > 1 and self.spec.options.get("continuous_batching", True):
            try:
                self.continuous = ContinuousGenerator(
                    self.model, self.tokenizer, self.spec, self.max_concurrency
                )
            except (NotImplementedError, ValueError, TypeError) as exc:  # an architecture
                # transformers cannot page: jobs still run, one generate() at a time.
                log.warning(
                    "model %s: no continuous batching (%s); one generate() at a time",
                    self.spec.id,
                    exc,
                )

    def warm_up(self) -> None:
        """One greedy token, through the continuous batch when there is one."""
        if self.continuous is None:
            greedy_token(self.model, self.tokenizer)
            return
        ids = self.tokenizer("Hello")["input_ids"]
        params = {"max_tokens": 1, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "stop": []}
        ctx = JobContext(
            "warm-up",
            read_media=bytes,
            emit=lambda event, data: None,
            stop_requested=lambda: False,
            deadline=None,
            check_interval_s=1.0,
        )
        self.continuous.generate(ids, params, ctx)

    def health(self) -> dict[str, Any]:
        info = super().health()
        if self.loaded:
            cb = self.continuous
            info["continuous_batching"] = (
                {"jobs_in_batch": cb.batched, "jobs_beside": cb.beside} if cb else False
            )
        return info

    def close(self) -> None:
        if self.continuous is not None:
            self.continuous.close()
            self.continuous = None
        super().close()

    def _encode(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        # No template (DialoGPT and other older chat models): turns separated by EOS.
        eos = self.tokenizer.eos_token or ""
        text = "".join(m["content"] + eos for m in messages if m["role"] != "system")
        return self.tokenizer(text, return_tensors="pt")

    def chat(self, inputs: ChatInput, ctx: JobContext) -> Result:
        """Chat from OpenAI-style messages through the model's chat template."""
        messages = inputs.text_messages(self.spec.id, self.spec.options.get("system_prompt"))
        return self._generate(
            dict(self._encode(messages)), inputs.generation_params(self.spec), ctx
        )

    def complete(self, inputs: CompleteInput, ctx: JobContext) -> Result:
        """Continue a raw prompt."""
        batch = dict(self.tokenizer(inputs.prompt, return_tensors="pt"))
        return self._generate(batch, inputs.generation_params(self.spec), ctx)

    def _generate(self, batch: dict[str, Any], params: dict[str, Any], ctx: JobContext) -> Result:
        """In the continuous batch when the job's sampling allows, else one generate()."""
        if self.continuous is not None and batchable(params):
            return self.continuous.generate(batch["input_ids"][0].tolist(), params, ctx)

        def alone() -> Result:
            moved = to_device(batch, input_device(self.model))
            return generate(self.model, self.tokenizer, moved, params, ctx)

        if self.continuous is not None:
            return self.continuous.side(alone)
        with self._one_at_a_time:
            return alone()
