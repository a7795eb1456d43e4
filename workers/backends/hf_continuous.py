"""Continuous batching for transformers causal LMs, with transformers' own manager.

`model.init_continuous_batching()` starts transformers' ContinuousBatchingManager: one
background thread runs a paged KV cache and a scheduler, so jobs join the running batch
between decode steps, long prompts are prefilled in chunks of `max_batch_tokens`, and a
finished or canceled request frees its pages at once. Each job's thread adds its request,
then reads its own tokens from a queue this module's router fills: it streams them with
`ctx.token`, cuts at stop strings and cancels its request when the job stops.

Sampling is per request: temperature, top_p and top_k are the manager's per-request
logits processors (greedy is top_k 1), and the repeat penalty is one of ours
(RepeatPenalty, the same arithmetic as generate()'s). A request the batch cannot honour
(a seed: the batch shares one random generator) runs on the side: the manager pauses
between steps, the job runs plain `generate()`, and the batch resumes where it was.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from shared.errors import InputRejected, JobFailure, ModelNotAvailable
from shared.registry import ModelSpec
from workers.backends.base import JobContext, Result, tokens_per_second

log = logging.getLogger(__name__)

POLL_S = 0.02
KV_TOKENS_PER_JOB = 1024  # default KV cache: this many tokens for each concurrent job
PAGE_TOKENS = 64
MAX_BATCH_TOKENS = 256  # tokens per step: the prefill chunk a long prompt is cut into


def batchable(params: dict[str, Any]) -> bool:
    """Return whether a job's sampling runs inside the batch (else on the side path)."""
    return params.get("seed") is None


def repeat_penalty_processor():
    """Return a per-request repetition penalty for the continuous batch.

    The manager's processors get one number per request; the tokens each request has
    seen are kept by prepare_tensor_args for the __call__ of the same step (the manager
    runs them in that order on its thread, with async batching off).
    """
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class RepeatPenalty(ContinuousBatchingLogitsProcessor):
        supported_kwargs = {"repeat_penalty": float}
        ignored_kwargs = ()

        def __init__(self) -> None:
            self.seen: list[list[int]] = []

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.copy_(torch.ones_like(int32_tensor, dtype=torch.float32).view(torch.int32))

        def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
            states = [r.state for r in requests_with_new_token]
            self.seen = [s.initial_tokens + s.generated_tokens for s in states]
            values = [float(s.logit_processor_kwargs.get("repeat_penalty", 1.0)) for s in states]
            return torch.tensor(values, dtype=torch.float32).view(torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            penalties = tensor_arg[: scores.size(0)].view(torch.float32).tolist()
            for row, (penalty, seen) in enumerate(zip(penalties, self.seen, strict=False)):
                if penalty == 1.0 or not seen:
                    continue
                ids = torch.tensor(seen, device=scores.device)
                score = scores[row].gather(0, ids)
                score = torch.where(score < 0, score * penalty, score / penalty)
                scores[row].scatter_(0, ids, score)
            return scores

    return RepeatPenalty()


class ContinuousGenerator:
    """One ContinuousBatchingManager for a loaded model, shared by every running job."""

    def __init__(self, model, tokenizer, spec: ModelSpec, slots: int) -> None:
        """Start the manager and its router. :raises ModelNotAvailable: bad options."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        opts = spec.options
        try:
            kv_tokens = int(opts.get("kv_cache_tokens") or slots * KV_TOKENS_PER_JOB)
            step_tokens = int(opts.get("max_batch_tokens") or MAX_BATCH_TOKENS)
        except (TypeError, ValueError) as exc:
            raise ModelNotAvailable(f"model {spec.id}: options: {exc}") from None
        self.tokenizer = tokenizer
        self.vocab = len(tokenizer)
        self.kv_tokens = kv_tokens
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        # The sampling processors exist only when the config's values are not neutral;
        # each request then sets its own (greedy requests: top_k 1).
        config = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_k=50,
            top_p=0.9,
            max_new_tokens=spec.limits.max_tokens,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        cb_config = ContinuousBatchingConfig(
            per_request_processors=True,
            page_size=PAGE_TOKENS,
            num_blocks=max(1, math.ceil(kv_tokens / PAGE_TOKENS)),
            max_batch_tokens=step_tokens,
            max_requests_per_batch=slots,
            use_cuda_graph=None if model.device.type == "cuda" else False,
            use_async_batching=False,  # RepeatPenalty reads the step it prepared
        )
        self.manager = model.init_continuous_batching(
            generation_config=config, continuous_batching_config=cb_config
        )
        processors = self.manager.logit_processor
        processors.logits_processor.insert(0, repeat_penalty_processor())  # first, as generate()
        processors.tensors_required += 1
        processors._retrieve_processors_kwargs()
        with torch.inference_mode():  # the manager's thread takes the caller's mode
            self.manager.start()
        self._waiting: dict[str, queue.SimpleQueue] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._side = threading.Lock()
        self._closed = threading.Event()
        self.batched = 0  # jobs run inside the batch, and beside it (health, tests)
        self.beside = 0
        self._router = threading.Thread(target=self._route, name="cb-router", daemon=True)
        self._router.start()
        log.info(
            "model %s: continuous batching, %s jobs, KV cache %s tokens, %s tokens a step",
            spec.id,
            slots,
            kv_tokens,
            step_tokens,
        )

    def close(self) -> None:
        self._closed.set()
        self.manager.stop(block=True, timeout=30)
        self._router.join(5)

    def side(self, run: Callable[[], Result]) -> Result:
        """Run a job the batch cannot take while the batch waits between steps."""
        with self._side, self.manager.pause():
            self.beside += 1
            return run()

    def generate(self, input_ids: list[int], params: dict[str, Any], ctx: JobContext) -> Result:
        """Generate inside the running batch, streaming this job's tokens from its thread."""
        need = len(input_ids) + params["max_tokens"]
        if need > self.kv_tokens:  # alone past the cache, it would stop the whole batch
            raise InputRejected(
                f"the prompt's {len(input_ids)} tokens plus max_tokens {params['max_tokens']} "
                f"do not fit this worker's KV cache of {self.kv_tokens} tokens "
                f"(options.kv_cache_tokens); send a shorter prompt or a lower max_tokens"
            )
        self._keep_running()
        rid = f"{ctx.job_id}#{next(self._ids)}"
        self.batched += 1
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._waiting[rid] = inbox
        sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 1}  # greedy
        if params["temperature"] > 0:
            sampling = {
                "temperature": float(params["temperature"]),
                "top_p": float(params["top_p"]),
                "top_k": int(params["top_k"] or self.vocab),
            }
        sampling["repeat_penalty"] = float(params.get("repeat_penalty") or 1.0)
        text = _Text(self.tokenizer, params["stop"], ctx)
        tokens: list[int] = []
        finished = False
        t0 = time.perf_counter()
        try:
            added = self.manager.add_request(
                input_ids,
                request_id=rid,
                max_new_tokens=params["max_tokens"],
                streaming=True,
                **sampling,
            )
            if added is None:
                raise JobFailure("the batch is not taking jobs", type="generation_failed")
            while not finished:
                try:
                    out = inbox.get(timeout=POLL_S)
                except queue.Empty:
                    out = None
                if ctx.should_stop():
                    break
                if out is None:
                    continue
                if out.error:
                    raise JobFailure(f"generation failed: {out.error}", type="generation_failed")
                tokens = out.generated_tokens
                finished = out.is_finished()
                if text.update(tokens):  # a stop string
                    break
        finally:
            if not finished:
                self.manager.cancel_request(rid)
            with self._lock:
                self._waiting.pop(rid, None)
        elapsed = time.perf_counter() - t0
        final = text.finish(tokens)
        if ctx.should_stop():
            finish = "canceled" if ctx.canceled else "timeout"
        elif text.stopped or len(tokens) < params["max_tokens"]:
            finish = "stop"
        else:
            finish = "length"
        return Result(
            {"text": final, "finish_reason": finish},
            {
                "prompt_tokens": len(input_ids),
                "completion_tokens": len(tokens),
                "tokens_per_second": tokens_per_second(len(tokens), elapsed),
            },
        )

    def _keep_running(self) -> None:
        """Start the manager again if its thread died (its jobs were failed already)."""
        if self.manager.is_running() or self._closed.is_set():
            return
        with self._lock:
            if not self.manager.is_running():
                log.warning("continuous batching thread had stopped; starting it again")
                self.manager.batch_processor = None
                with torch.inference_mode():
                    self.manager.start()

    def _route(self) -> None:
        """Hand each output of the manager to the job waiting for it."""
        while not self._closed.is_set():
            out = self.manager.get_result(timeout=0.1)
            if out is None:
                error = self.manager.background_thread_status.fatal_error
                if error is not None or not self.manager.is_running():
                    self._fail_all(error)
                    self._closed.wait(0.1)
                continue
            with self._lock:
                inbox = self._waiting.get(out.request_id)
            if inbox is not None:
                inbox.put(out)

    def _fail_all(self, error: Exception | None) -> None:
        from transformers.generation.continuous_batching.requests import (
            GenerationOutput,
            RequestStatus,
        )

        reason = str(error) if error else "the batching thread stopped"
        with self._lock:
            waiting = list(self._waiting.items())
        for rid, inbox in waiting:
            inbox.put(GenerationOutput(rid, error=reason, status=RequestStatus.FAILED))


class _Text:
    """A job's generated text: streamed as tokens arrive, held back near a stop string."""

    def __init__(self, tokenizer, stops: list[str], ctx: JobContext) -> None:
        self.tokenizer = tokenizer
        self.stops = stops or []
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ctx = ctx
        self.sent = 0
        self.text = ""
        self.stopped = False

    def update(self, tokens: list[int]) -> bool:
        """Decode, publish what is safe to publish; return True at a stop string."""
        self.text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            self._send(len(self.text))
            return True
        if not self.text.endswith("\ufffd"):  # not in the middle of a multi-byte character
            self._send(len(self.text) - self.hold)
        return False

    def finish(self, tokens: list[int]) -> str:
        if not self.stopped:
            self.update(tokens)
            if not self.stopped:
                self._send(len(self.text))
        return self.text

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            self.ctx.token(self.text[self.sent : upto])
            self.sent = upto
