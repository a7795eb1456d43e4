"""Loading Hugging Face models the one way every transformers backend does.

The registry's `quantization` (none | int8 | nf4 | fp4) becomes a bitsandbytes
`BitsAndBytesConfig`; `options.dtype` and `options.device` pick the precision and
placement (`device_map="auto"` on CUDA, the CPU otherwise). bitsandbytes >= 0.45
quantizes on the CPU too, so the same path runs on a laptop and on a GPU box.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from shared.errors import ModelNotAvailable
from shared.registry import ModelSpec
from workers.backends.base import Backend

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def device_of(spec: ModelSpec) -> str:
    """Return 'cuda' or 'cpu' for a spec's `options.device` (auto picks CUDA when present).

    :raises ModelNotAvailable: when CUDA is asked for and absent.
    """
    wanted = str(spec.options.get("device") or "auto")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ModelNotAvailable(
            f"model {spec.id} asks for device {wanted} but CUDA is not available on this machine"
        )
    return wanted


def dtype_of(spec: ModelSpec, device: str) -> torch.dtype:
    """Return the compute dtype: `options.dtype`, else bfloat16 on CUDA and float32 on CPU."""
    name = str(spec.options.get("dtype") or "auto")
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelNotAvailable(
            f"model {spec.id}: unknown dtype {name!r}; use auto or one of {sorted(DTYPES)}"
        ) from None


def quantization_config(spec: ModelSpec, dtype: torch.dtype, skip: list[str] | None = None):
    """Return the BitsAndBytesConfig for a spec's quantization, or None for 'none'.

    `skip` names modules kept unquantized (`options.quantization_skip_modules` wins).
    """
    if spec.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    skip = spec.options.get("quantization_skip_modules") or skip
    if spec.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quantization,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,
        llm_int8_skip_modules=skip,
    )


def load_kwargs(spec: ModelSpec, skip_modules: list[str] | None = None) -> dict[str, Any]:
    """Return the `from_pretrained` keyword arguments for a spec."""
    device = device_of(spec)
    dtype = dtype_of(spec, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    quant = quantization_config(spec, dtype, skip_modules)
    if quant is not None:
        kwargs["quantization_config"] = quant
    kwargs["device_map"] = "auto" if device == "cuda" else device
    if spec.options.get("gguf_file"):
        kwargs["gguf_file"] = spec.options["gguf_file"]
    return kwargs


def load_model(
    cls, spec: ModelSpec, path: Path | str, *, skip_modules: list[str] | None = None, **extra
):
    """Load a model class from a folder with the spec's quantization, dtype and device.

    :raises ModelNotAvailable: when the files are unusable or bitsandbytes is missing.
    """
    kwargs = {**load_kwargs(spec, skip_modules), **extra}
    log.info(
        "model %s: loading %s from %s (quantization=%s dtype=%s device_map=%s)",
        spec.id,
        cls.__name__,
        path,
        spec.quantization,
        kwargs["dtype"],
        kwargs["device_map"],
    )
    try:
        model = cls.from_pretrained(str(path), **kwargs)
    except ImportError as exc:  # bitsandbytes, gguf or accelerate missing
        raise ModelNotAvailable(f"model {spec.id} cannot load: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(f"model {spec.id} failed to load from {path}: {exc}") from exc
    model.eval()
    return model


def input_device(model) -> torch.device:
    """Return the device a model's inputs belong on (its first parameter's)."""
    return next(model.parameters()).device


def describe(model, spec: ModelSpec) -> dict[str, Any]:
    """Return what the admin views show about a loaded transformers model."""
    return {
        "class": type(model).__name__,
        "quantization": spec.quantization,
        "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
        "device": str(input_device(model)),
        "footprint_bytes": int(model.get_memory_footprint()),
    }


def greedy_token(model, tokenizer) -> None:
    """Generate one token from a short text prompt (the warm-up of generative models)."""
    batch = tokenizer("Hello", return_tensors="pt").to(input_device(model))
    model.generate(**batch, max_new_tokens=1, do_sample=False)


@contextmanager
def typed_out_of_memory():
    """Turn the CPU allocator's untyped failure into torch.OutOfMemoryError.

    CUDA raises torch.OutOfMemoryError; torch's CPU allocator raises a bare RuntimeError
    (c10's "DefaultCPUAllocator: can't allocate memory"), which carries no type to test.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        if "DefaultCPUAllocator: can't allocate memory" in str(exc):
            raise torch.OutOfMemoryError(str(exc)) from exc
        raise


class HFBackend(Backend):
    """A transformers backend: health describes the loaded model, close drops it."""

    inference_scope = torch.inference_mode
    model = None
    # Everything besides the model that holds weights or big tables; dropped on close().
    companions = ("processor", "tokenizer", "inputs")

    def health(self) -> dict[str, Any]:
        info = super().health()
        if self.loaded:
            info.update(describe(self.model, self.spec))
        return info

    def close(self) -> None:
        self.model = None
        for name in self.companions:
            if hasattr(self, name):
                setattr(self, name, None)
        super().close()
