"""Turn a job into a batch request exactly as llama-cpp-python's single-job path would run it.

A chat is rendered by the `Llama` object's own chat handler (the GGUF's template, or the
registry's `chat_format`), which also picks the stop strings, the stopping criteria and the
response format's grammar (llama-cpp-python's JSON-schema converter), and then calls
`llama.create_completion(...)`. Here the handler is given a stand-in for `Llama` that records
that call instead of running it; the batch runs what was recorded. A handler that needs more
of `Llama` than tokenizing (multimodal, function-calling formats) raises `NotBatchable`, and
that job runs on the side path, through `Llama.create_chat_completion` itself.
"""

from __future__ import annotations

from typing import Any

from shared.errors import InputRejected
from workers.backends.llama_batch import Request
from workers.backends.llama_sampling import Sampling


class NotBatchable(Exception):
    """The request needs llama-cpp-python's own completion loop (the side path)."""


class _Recorder:
    """Stands in for `Llama` while its chat handler renders a request."""

    _PASS = frozenset(
        {"tokenize", "detokenize", "verbose", "token_eos", "token_bos", "metadata", "model_path"}
    )

    def __init__(self, llm) -> None:
        self._llm = llm
        self.call: dict[str, Any] | None = None

    def __getattr__(self, name: str):
        if name in self._PASS:
            return getattr(self._llm, name)
        raise NotBatchable(f"the chat handler uses Llama.{name}")

    def create_completion(self, **kwargs: Any):
        self.call = kwargs
        return iter(())


def chat_request(
    llm, n_ctx: int, messages: list[dict], response_format: dict | None, params: dict
) -> Request:
    """Render a chat with the model's chat handler into a batch request.

    :raises NotBatchable: for handlers or settings only Llama's own loop runs.
    :raises InputRejected: for a prompt over the context window or an unusable schema.
    """
    params = {**params, "stream": True}
    from llama_cpp import llama_chat_format

    handler = (
        llm.chat_handler
        or llm._chat_handlers.get(llm.chat_format)
        or llama_chat_format.get_chat_completion_handler(llm.chat_format)
    )
    recorder = _Recorder(llm)
    try:
        handler(
            llama=recorder,
            messages=messages,
            response_format=response_format,
            **params,
        )
    except (ValueError, RuntimeError) as exc:  # a schema llama-cpp-python cannot convert
        raise InputRejected(f"llama.cpp rejected the request: {exc}") from None
    call = recorder.call
    if call is None or not isinstance(call.get("prompt"), list):
        raise NotBatchable("the chat handler did not hand over a tokenized prompt")
    if call.get("mirostat_mode") or call.get("logits_processor") or call.get("logit_bias"):
        raise NotBatchable("mirostat, logits processors and logit bias run in Llama's loop")
    if call.get("logprobs") is not None or call.get("suffix") is not None:
        raise NotBatchable("logprobs and suffixes run in Llama's loop")
    grammar = call.get("grammar")
    sampling = Sampling(
        temperature=call.get("temperature", 0.8),
        top_p=call.get("top_p", 0.95),
        top_k=call.get("top_k", 40),
        min_p=call.get("min_p", 0.05),
        typical_p=call.get("typical_p", 1.0),
        repeat_penalty=call.get("repeat_penalty", 1.0),
        frequency_penalty=call.get("frequency_penalty", 0.0),
        presence_penalty=call.get("presence_penalty", 0.0),
        seed=call.get("seed"),
        grammar=grammar._grammar if grammar is not None else None,
        grammar_root=grammar._root if grammar is not None else "root",
    )
    return _request(
        call["prompt"],
        n_ctx,
        sampling,
        call.get("max_tokens"),
        call.get("stop"),
        call.get("stopping_criteria"),
    )


def completion_request(llm, n_ctx: int, prompt: str, params: dict) -> Request:
    """Tokenize a raw prompt as Llama.create_completion does, into a batch request.

    :raises InputRejected: for a prompt over the context window.
    """
    model = llm._model
    bos = model.token_cls() if model.token_cls() != -1 else llm.token_bos()
    head = [bos] if model.add_bos_token() and bos != -1 else []
    sep = model.token_sep()
    tail = [sep if sep != -1 else llm.token_eos()] if model.add_eos_token() or sep != -1 else []
    body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
    tokens = head + body + tail or [llm.token_bos()]
    sampling = Sampling(
        temperature=params["temperature"],
        top_p=params["top_p"],
        top_k=params["top_k"],
        repeat_penalty=params["repeat_penalty"],
        seed=params["seed"],
    )
    return _request(tokens, n_ctx, sampling, params["max_tokens"], params["stop"], None)


def _request(tokens, n_ctx, sampling, max_tokens, stop, criteria) -> Request:
    n = len(tokens)
    if n >= n_ctx:
        raise InputRejected(
            "the prompt does not fit the model's context window: "
            f"Requested tokens ({n}) exceed context window of {n_ctx}"
        )
    if not max_tokens or max_tokens <= 0 or max_tokens + n >= n_ctx:
        max_tokens = n_ctx - n  # as Llama.create_completion trims it
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    return Request(tokens, sampling, max_tokens, stop, criteria)
