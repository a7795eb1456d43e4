"""BLIP visual question answering: an image and a question in, a short answer out."""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteriaList

from shared.inputs import VqaInput
from workers.backends.base import JobContext, Result, tokens_per_second
from workers.backends.hf_generation import StopWhenAsked, to_device
from workers.backends.hf_loading import HFBackend, input_device, load_model, typed_out_of_memory
from workers.decoding import decode_image

DEFAULT_MAX_TOKENS = 20


class BlipVqaBackend(HFBackend):
    tasks = ("vqa",)

    def load_model(self, path) -> None:
        """Load the BLIP processor and question-answering model. :raises ModelNotAvailable:"""
        from transformers import BlipForQuestionAnswering, BlipProcessor

        self.processor = BlipProcessor.from_pretrained(str(path))
        self.model = load_model(BlipForQuestionAnswering, self.spec, path)

    def warm_up(self) -> None:
        from PIL import Image

        batch = self.processor(images=Image.new("RGB", (32, 32)), text="what?", return_tensors="pt")
        batch = to_device(dict(batch), input_device(self.model), self.model.dtype)
        self.model.generate(**batch, max_new_tokens=1)

    def vqa(self, inputs: VqaInput, ctx: JobContext) -> Result:
        """Answer a question about an image."""
        image = decode_image(ctx.media(inputs.image.model_dump()), "input.image")
        batch = self.processor(images=image, text=inputs.question, return_tensors="pt")
        batch = to_device(dict(batch), input_device(self.model), self.model.dtype)
        max_tokens = inputs.max_tokens or min(DEFAULT_MAX_TOKENS, self.spec.limits.max_tokens)
        t0 = time.perf_counter()
        with torch.inference_mode(), typed_out_of_memory():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_tokens,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([StopWhenAsked(ctx)]),
            )
        elapsed = time.perf_counter() - t0
        text = self.processor.decode(out[0], skip_special_tokens=True).strip()
        tokens = int(out.shape[-1])
        return Result(
            {"text": text},
            {
                "prompt_tokens": int(batch["input_ids"].shape[-1]),
                "completion_tokens": tokens,
                "tokens_per_second": tokens_per_second(tokens, elapsed),
            },
        )
