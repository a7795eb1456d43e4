"""Per-job sampling and text for the llama.cpp batch: sampler chains, stop strings, UTF-8.

Each running job owns one llama.cpp sampler chain, built in the order llama-cpp-python's
`Llama` builds its own (`Llama._init_sampler`), so a job samples the same tokens whether it
runs in the batch or through `Llama.create_completion`.
"""

from __future__ import annotations

import codecs
import ctypes
from dataclasses import dataclass

# What Llama.create_completion keeps in its repeat-penalty window (Llama.last_n_tokens_size).
PENALTY_LAST_N = 64


@dataclass(frozen=True)
class Sampling:
    """One job's sampling settings, as llama-cpp-python's create_completion takes them."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None
    grammar_root: str = "root"


def make_sampler(lib, vocab, n_vocab: int, s: Sampling):
    """Return a new llama.cpp sampler chain for one job (free it with llama_sampler_free).

    :raises ValueError: when the job's grammar does not parse.
    """
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())

    def add(sampler) -> None:
        lib.llama_sampler_chain_add(chain, sampler)

    add(
        lib.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
        )
    )
    if s.grammar is not None:
        grammar = lib.llama_sampler_init_grammar(
            vocab, s.grammar.encode("utf-8"), s.grammar_root.encode("utf-8")
        )
        if not grammar:
            lib.llama_sampler_free(chain)
            raise ValueError("llama.cpp could not parse the grammar of the response format")
        add(grammar)
    seed = lib.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
    if s.temperature < 0:
        add(lib.llama_sampler_init_dist(seed))
    elif s.temperature == 0:
        add(lib.llama_sampler_init_greedy())
    else:
        add(lib.llama_sampler_init_top_k(s.top_k))
        add(lib.llama_sampler_init_typical(s.typical_p, 1))
        add(lib.llama_sampler_init_top_p(s.top_p, 1))
        add(lib.llama_sampler_init_min_p(s.min_p, 1))
        add(lib.llama_sampler_init_temp(s.temperature))
        add(lib.llama_sampler_init_dist(seed))
    return chain


class Pieces:
    """Turn token ids into their bytes, as Llama.detokenize does (no special tokens)."""

    def __init__(self, lib, vocab) -> None:
        self._lib = lib
        self._vocab = vocab
        self._buf = ctypes.create_string_buffer(64)

    def __call__(self, token: int) -> bytes:
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:  # the piece is longer than the buffer: grow it to the size asked for
            self._buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(
                self._vocab, token, self._buf, len(self._buf), 0, False
            )
        return self._buf.raw[:n]


class TextStream:
    """A job's generated text: decoded as bytes arrive, held back while it may begin a stop.

    Text that could be the start of a stop string is not sent until the next tokens say it
    is not one, so a stop string never reaches the client, as with Llama's streaming.
    """

    def __init__(self, stop: list[str]) -> None:
        self._stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.text = ""
        self._sent = 0

    def push(self, piece: bytes) -> tuple[str, bool]:
        """Add one token's bytes; return (text that may be sent now, whether a stop matched)."""
        self.text += self._decoder.decode(piece)
        longest = max((len(s) for s in self._stop), default=0)
        start = max(0, self._sent - longest)
        hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held()), False

    def finish(self) -> str:
        """Return what is left to send once the job ends without a stop string."""
        self.text += self._decoder.decode(b"", final=True)
        return self._take(len(self.text))

    def _held(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        tail = self.text[self._sent :]
        for size in range(min(len(tail), max((len(s) for s in self._stop), default=0)), 0, -1):
            if any(s.startswith(tail[-size:]) for s in self._stop):
                return size
        return 0

    def _take(self, end: int) -> str:
        out = self.text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return out
