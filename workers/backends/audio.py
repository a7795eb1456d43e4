"""Audio backends: Whisper transcription, and Qwen2-Audio (audio + prompt -> text).

Audio arrives as bytes (wav, flac, ogg, mp3) and is decoded, mixed to mono and
resampled to the model's rate by workers.decoding.decode_audio.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteriaList

from shared.errors import InputRejected
from shared.inputs import ChatInput, TranscribeInput
from workers.backends.base import JobContext, Result, tokens_per_second
from workers.backends.hf_generation import RowsStopped, generate, to_device
from workers.backends.hf_loading import (
    HFBackend,
    greedy_token,
    input_device,
    load_model,
    typed_out_of_memory,
)
from workers.backends.qwen_inputs import attach_media, split_media
from workers.batching import Batch, BatchOptions, DynamicBatcher
from workers.decoding import decode_audio

WHISPER_WINDOW_S = 30  # Whisper sees 30 s at a time; longer audio goes window by window
MAX_BATCH = 8  # windows in one generate()
BATCH_WAIT_MS = 10.0
TRANSCRIBE_PROMPT = "Transcribe the speech in this audio."


class WhisperBackend(HFBackend):
    """Whisper: 30-second windows of every running job share generate() passes."""

    tasks = ("transcribe",)
    default_max_concurrency = 8
    batcher: DynamicBatcher | None = None

    def load_model(self, path) -> None:
        """Load the Whisper processor and model. :raises ModelNotAvailable:"""
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(str(path))
        self.model = load_model(AutoModelForSpeechSeq2Seq, self.spec, path)
        self.special = set(self.processor.tokenizer.all_special_ids)
        options = BatchOptions.from_spec(self.spec, max_batch=MAX_BATCH, wait_ms=BATCH_WAIT_MS)
        self.batcher = DynamicBatcher(
            self.spec.id, self._windows, options, scope=torch.inference_mode
        )

    def warm_up(self) -> None:
        """One second of silence through the batcher's thread, one token long."""
        rate = self.processor.feature_extractor.sampling_rate
        self.batcher.run([np.zeros(rate, np.float32)], None, key=(None, None, 1))

    def transcribe(self, inputs: TranscribeInput, ctx: JobContext) -> Result:
        """Transcribe speech window by window; each window's text streams as it is ready."""
        rate = self.processor.feature_extractor.sampling_rate
        samples = decode_audio(
            ctx.media(inputs.audio.model_dump()), rate, self.spec.limits, "input.audio"
        )
        window = WHISPER_WINDOW_S * rate
        chunks = [samples[i : i + window] for i in range(0, len(samples), window)]
        # Windows batch with windows asking for the same language, prompt and length.
        key = (inputs.language, inputs.prompt, inputs.max_tokens or self._max_new_tokens())
        texts, tokens = [], 0
        t0 = time.perf_counter()
        for n, (text, count) in enumerate(self.batcher.stream(chunks, ctx, key=key)):
            texts.append(text)
            tokens += count
            ctx.token(text)
            if len(chunks) > 1:
                ctx.progress(n + 1, len(chunks))
        elapsed = time.perf_counter() - t0
        output = {
            "text": " ".join(t for t in texts if t).strip(),
            "duration": round(len(samples) / rate, 3),
        }
        if inputs.language:
            output["language"] = inputs.language
        return Result(
            output,
            {
                "completion_tokens": tokens,
                "tokens_per_second": tokens_per_second(tokens, elapsed),
            },
        )

    def _max_new_tokens(self) -> int:
        # Whisper's decoder holds max_target_positions tokens, a few taken by the prompt.
        room = self.model.config.max_target_positions - 4
        return max(1, min(self.spec.limits.max_tokens, room))

    def _windows(self, batch: Batch) -> list[tuple[str, int]]:
        """One generate() over windows of audio (the batcher's thread): text and tokens each."""
        language, prompt, max_new_tokens = batch.key
        gen: dict[str, Any] = {"task": "transcribe", "max_new_tokens": max_new_tokens}
        if language:
            gen["language"] = language
        if prompt:
            gen["prompt_ids"] = torch.as_tensor(self.processor.get_prompt_ids(prompt))
        rate = self.processor.feature_extractor.sampling_rate
        feats = self.processor.feature_extractor(
            batch.items, sampling_rate=rate, return_tensors="pt"
        )
        feats = to_device(dict(feats), input_device(self.model), self.model.dtype)
        try:
            with typed_out_of_memory():
                out = self.model.generate(
                    **feats,
                    **gen,
                    return_dict_in_generate=True,
                    stopping_criteria=StoppingCriteriaList([RowsStopped(batch.stopped)]),
                )
        except ValueError as exc:  # an unknown language code, say
            raise InputRejected(f"whisper: {exc}") from exc
        rows = []
        for tokens in out.sequences:
            text = self.processor.decode(tokens, skip_special_tokens=True).strip()
            rows.append((text, sum(1 for t in tokens.tolist() if t not in self.special)))
        return rows


class QwenAudioBackend(HFBackend):
    """Qwen2-Audio: chat with audio parts, and transcription as a fixed instruction."""

    tasks = ("chat", "transcribe")

    def load_model(self, path) -> None:
        """Load the Qwen2-Audio processor and model. :raises ModelNotAvailable:"""
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(str(path))
        self.model = load_model(Qwen2AudioForConditionalGeneration, self.spec, path)

    def warm_up(self) -> None:
        greedy_token(self.model, self.processor.tokenizer)

    def chat(self, inputs: ChatInput, ctx: JobContext) -> Result:
        """Answer a chat whose user turns may hold audio parts (or input.audio)."""
        if inputs.image or inputs.images or inputs.video:
            raise InputRejected(f"model {self.spec.id} takes text and audio only")
        messages = inputs.chat_messages(self.spec.options.get("system_prompt"))
        if inputs.audio:
            attach_media(messages, [("audio", inputs.audio.model_dump())])
        return self._answer(messages, inputs.generation_params(self.spec), ctx)

    def transcribe(self, inputs: TranscribeInput, ctx: JobContext) -> Result:
        """Transcribe by asking the model to, with the audio attached."""
        prompt = inputs.prompt or self.spec.options.get("transcribe_prompt") or TRANSCRIBE_PROMPT
        if inputs.language:
            prompt += f" The language is {inputs.language}."
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "audio", "audio": inputs.audio.model_dump()},
                    {"type": "text", "text": prompt},
                ],
            }
        ]
        max_tokens = inputs.max_tokens or min(256, self.spec.limits.max_tokens)
        params = {
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 0,
            "stop": [],
            "seed": None,
            "repeat_penalty": 1.0,
        }
        result = self._answer(messages, params, ctx)
        result.output.pop("finish_reason", None)
        return result

    def _answer(self, messages: list[dict], params: dict, ctx: JobContext) -> Result:
        messages, media = split_media(messages, ("audio",), self.spec.id)
        rate = self.processor.feature_extractor.sampling_rate
        audios = [
            decode_audio(ctx.media(ref), rate, self.spec.limits, f"audio #{n + 1}")
            for n, (_, ref) in enumerate(media)
        ]
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        batch = self.processor(
            text=text, audio=audios or None, sampling_rate=rate, return_tensors="pt"
        )
        batch = to_device(dict(batch), input_device(self.model), self.model.dtype)
        return generate(self.model, self.processor.tokenizer, batch, params, ctx)
