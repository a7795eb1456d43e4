"""Transformers text backend: any causal LM (safetensors or a GGUF file), chat and completion."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shared.inputs import ChatInput, CompleteInput
from workers.backends.base import JobContext, Result
from workers.backends.hf_generation import generate, to_device
from workers.backends.hf_loading import HFBackend, greedy_token, input_device, load_model

log = logging.getLogger(__name__)


class TransformersTextBackend(HFBackend):
    tasks = ("chat", "complete")

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

    def warm_up(self) -> None:
        greedy_token(self.model, self.tokenizer)

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
        batch = to_device(dict(self._encode(messages)), input_device(self.model))
        return generate(self.model, self.tokenizer, batch, inputs.generation_params(self.spec), ctx)

    def complete(self, inputs: CompleteInput, ctx: JobContext) -> Result:
        """Continue a raw prompt."""
        batch = to_device(
            dict(self.tokenizer(inputs.prompt, return_tensors="pt")), input_device(self.model)
        )
        return generate(self.model, self.tokenizer, batch, inputs.generation_params(self.spec), ctx)
