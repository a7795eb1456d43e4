"""`generate()` for every transformers backend: sampling, streaming, cancellation.

Tokens reach the job's event stream as they are produced (a streamer calls
`ctx.token` from inside `generate`), and a stopping criterion asks `ctx.should_stop()`
between tokens, so canceling a job stops it at the next token with its partial text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from workers.backends.base import JobContext, Result, tokens_per_second
from workers.backends.hf_loading import typed_out_of_memory


class StopWhenAsked(StoppingCriteria):
    """Stop generating once the job is canceled or past its deadline."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        stop = self.ctx.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class RowsStopped(StoppingCriteria):
    """Stop the rows of a batched generate() whose jobs stopped waiting for them."""

    def __init__(self, stopped: Callable[[], list[bool]]) -> None:
        self.stopped = stopped

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.stopped(), dtype=torch.bool, device=input_ids.device)


class JobStreamer(TextStreamer):
    """Publish decoded text deltas to the job's event stream as they are finalized."""

    def __init__(self, tokenizer, ctx: JobContext) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.ctx = ctx
        self.generated = 0

    def put(self, value) -> None:
        if not self.next_tokens_are_prompt:
            self.generated += value.numel()
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.ctx.token(text)


def sampling_kwargs(params: dict[str, Any], tokenizer) -> dict[str, Any]:
    """Return generate() keyword arguments for conveyor's sampling parameters."""
    sample = params["temperature"] > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": params["max_tokens"],
        "do_sample": sample,
        "repetition_penalty": params["repeat_penalty"],
    }
    if sample:
        kwargs.update(
            temperature=params["temperature"], top_p=params["top_p"], top_k=params["top_k"] or None
        )
    else:  # greedy: clear any sampling defaults the checkpoint's generation_config carries
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if params["stop"]:
        kwargs.update(stop_strings=params["stop"], tokenizer=tokenizer)
    return kwargs


def _trim_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate(
    model,
    tokenizer,
    inputs: dict[str, Any],
    params: dict[str, Any],
    ctx: JobContext,
    *,
    decoder=None,
    **extra,
) -> Result:
    """Run generate() on prepared inputs, streaming tokens; return {text, finish_reason}.

    `decoder` is the object with `decode()` (a processor or tokenizer); it defaults to
    the tokenizer. Extra keyword arguments go to generate() unchanged.
    """
    decoder = decoder or tokenizer
    prompt_len = int(inputs["input_ids"].shape[-1])
    streamer = JobStreamer(decoder, ctx)
    if params.get("seed") is not None:
        torch.manual_seed(int(params["seed"]))
    t0 = time.perf_counter()
    with torch.inference_mode(), typed_out_of_memory():
        out = model.generate(
            **inputs,
            **sampling_kwargs(params, tokenizer),
            **extra,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([StopWhenAsked(ctx)]),
        )
    elapsed = time.perf_counter() - t0
    sequences = out.sequences if hasattr(out, "sequences") else out
    new_tokens = sequences[0, prompt_len:]
    completion = int(new_tokens.numel())
    text = decoder.decode(new_tokens, skip_special_tokens=True)
    text, stopped_on_string = _trim_stop(text, params["stop"])
    if ctx.should_stop():
        finish = "canceled" if ctx.canceled else "timeout"
    elif stopped_on_string or completion < params["max_tokens"]:
        finish = "stop"
    else:
        finish = "length"
    del out, sequences, new_tokens
    return Result(
        {"text": text, "finish_reason": finish},
        {
            "prompt_tokens": prompt_len,
            "completion_tokens": completion,
            "tokens_per_second": tokens_per_second(completion, elapsed),
        },
    )


def to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None = None):
    """Move a processor's output to a device; float tensors take the model's dtype."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            if dtype is not None and value.is_floating_point():
                value = value.to(device=device, dtype=dtype)
            else:
                value = value.to(device)
        out[key] = value
    return out
