"""BLIP visual question answering: an image and a question in, a short answer out.

Questions of every running job share generate() passes (workers.batching); each job's
image is decoded on its own thread first, so a broken image fails only its own job.
"""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteriaList

from shared.inputs import VqaInput
from workers.backends.base import JobContext, Result, tokens_per_second
from workers.backends.hf_generation import RowsStopped, to_device
from workers.backends.hf_loading import HFBackend, input_device, load_model, typed_out_of_memory
from workers.batching import Batch, BatchOptions, DynamicBatcher
from workers.decoding import decode_image

DEFAULT_MAX_TOKENS = 20
MAX_BATCH = 16
BATCH_WAIT_MS = 5.0


class BlipVqaBackend(HFBackend):
    tasks = ("vqa",)
    default_max_concurrency = 16
    batcher: DynamicBatcher | None = None

    def load_model(self, path) -> None:
        """Load the BLIP processor and question-answering model. :raises ModelNotAvailable:"""
        from transformers import BlipForQuestionAnswering, BlipProcessor

        self.processor = BlipProcessor.from_pretrained(str(path))
        self.model = load_model(BlipForQuestionAnswering, self.spec, path)
        options = BatchOptions.from_spec(self.spec, max_batch=MAX_BATCH, wait_ms=BATCH_WAIT_MS)
        self.batcher = DynamicBatcher(
            self.spec.id, self._answers, options, scope=torch.inference_mode
        )

    def warm_up(self) -> None:
        """A blank image and a question through the batcher's thread, one token long."""
        from PIL import Image

        self.batcher.run([(Image.new("RGB", (32, 32)), "what?")], None, key=1)

    def vqa(self, inputs: VqaInput, ctx: JobContext) -> Result:
        """Answer a question about an image."""
        image = decode_image(ctx.media(inputs.image.model_dump()), "input.image")
        max_tokens = inputs.max_tokens or min(DEFAULT_MAX_TOKENS, self.spec.limits.max_tokens)
        t0 = time.perf_counter()
        rows = self.batcher.run([(image, inputs.question)], ctx, key=max_tokens)
        elapsed = time.perf_counter() - t0
        text, prompt_tokens, tokens = rows[0] if rows else ("", 0, 0)
        return Result(
            {"text": text},
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "tokens_per_second": tokens_per_second(tokens, elapsed),
            },
        )

    def _answers(self, batch: Batch) -> list[tuple[str, int, int]]:
        """One generate() over (image, question) pairs (the batcher's thread)."""
        images, questions = zip(*batch.items, strict=True)
        enc = self.processor(
            images=list(images), text=list(questions), padding=True, return_tensors="pt"
        )
        prompts = enc["attention_mask"].sum(dim=1).tolist()
        enc = to_device(dict(enc), input_device(self.model), self.model.dtype)
        with typed_out_of_memory():
            out = self.model.generate(
                **enc,
                max_new_tokens=batch.key,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([RowsStopped(batch.stopped)]),
            )
        pad = self.processor.tokenizer.pad_token_id
        return [
            (
                self.processor.decode(row, skip_special_tokens=True).strip(),
                prompt,
                int((row != pad).sum()),
            )
            for row, prompt in zip(out, prompts, strict=True)
        ]
