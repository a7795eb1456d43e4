"""llama.cpp's CPU choices on this machine, side by side: extra buffer types and threads.

`python -m bench.llama_cpu` loads SmolLM2 as shipped (Q4_1, whose tensors llama.cpp's CPU
repack does not cover) and a Q4_0 copy quantized from it at run time (which it does),
with extra buffer types on and off and with 1, physical-core and logical-core thread
counts, and alternates 128-token greedy generations between the variants. It prints
tokens/s per variant, the ratio of each to the worker's default (`extra_buffers: auto`,
physical cores), and whether the two buffer choices give the same text. This is the
measurement behind `options.extra_buffers` and the thread default (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.batching import PROMPT, gguf_path
from workers.backends.llamacpp import _extra_buffer_types
from workers.cpu import default_threads, extra_buffers_enabled, read_cpu


def quantize_q4_0(src: str, folder: Path) -> str:
    """Write a Q4_0 copy of a GGUF with llama.cpp's own quantizer; return its path."""
    import llama_cpp as lc

    out = folder / "smollm2-q4_0.gguf"
    params = lc.llama_model_quantize_default_params()
    params.ftype = lc.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = default_threads(read_cpu())
    if lc.llama_model_quantize(src.encode(), str(out).encode(), params) != 0:
        raise RuntimeError("llama_model_quantize failed")
    return str(out)


def load(path: str, extra: bool, threads: int):
    from llama_cpp import Llama

    with _extra_buffer_types(extra):
        return Llama(
            model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False
        )


def generate(llm, tokens: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = llm.create_completion(
        PROMPT, max_tokens=tokens, temperature=0, logit_bias={2: -100.0}
    )  # token 2 is EOS: keep generating
    wall = time.perf_counter() - t0
    return out["usage"]["completion_tokens"] / wall, out["choices"][0]["text"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llama_cpu", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args(argv)
    cpu = read_cpu()
    default = (extra_buffers_enabled("auto", cpu), default_threads(cpu))
    counts = sorted({1, cpu.physical_cores, cpu.logical})
    extras = [True, False] if not cpu.has_amx else [False]  # `on` crashes on AMX CPUs
    print(
        f"# {cpu.model_name}, {cpu.logical} logical / {cpu.physical_cores} physical cores, "
        f"AMX {cpu.has_amx}; worker default: extra buffers {default[0]}, "
        f"{default[1]} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {"Q4_1 (shipped)": gguf_path(), "Q4_0": quantize_q4_0(gguf_path(), Path(tmp))}
        results = {}
        for name, path in files.items():
            models = {(e, t): load(path, e, t) for e in extras for t in counts}
            speeds: dict[tuple[bool, int], list[float]] = {k: [] for k in models}
            texts: dict[tuple[bool, int], str] = {}
            for llm in models.values():
                generate(llm, 8)  # warm-up
            for _ in range(args.rounds):  # alternate variants so drift hits all alike
                for key, llm in models.items():
                    tps, texts[key] = generate(llm, args.tokens)
                    speeds[key].append(tps)
            for llm in models.values():
                llm.close()
            base = statistics.median(speeds[default])
            print(f"\n## {name}\n| extra buffers | threads | tok/s (median) | vs default |")
            print("|---|---|---|---|")
            for (extra, threads), values in speeds.items():
                med = statistics.median(values)
                print(f"| {'on' if extra else 'off'} | {threads} | {med:.1f} | {med / base:.2f}x |")
            same = len({texts[k] for k in texts if k[1] == default[1]}) == 1
            print(f"same greedy text with extra buffers on and off: {same}")
            results[name] = {f"{'on' if e else 'off'}/{t}": v for (e, t), v in speeds.items()}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
