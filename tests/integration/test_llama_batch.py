"""llama.cpp continuous batching, with the real SmolLM2 GGUF and a real JobContext per job.

Jobs are run the way the worker runs them: `backend.run()` called from one thread per job.
What is checked is the order of events (who got tokens while what happened), never timing.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from shared.errors import InputRejected
from shared.inputs import ChatInput, CompleteInput
from shared.registry import load_registry
from workers.backends.base import JobContext
from workers.backends.llamacpp import LlamaCppBackend

pytestmark = pytest.mark.timeout(600)

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "What is 2+2?",
    "Say hello in Spanish.",
    "What is the largest planet?",
    "Who wrote Hamlet?",
    "What is water made of?",
    "Name a fruit.",
]
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def make_backend(settings, **options) -> LlamaCppBackend:
    spec = load_registry(settings.registry).get("smollm2-135m")
    spec.options.update(options)
    backend = LlamaCppBackend(spec, settings)
    backend.load()
    return backend


@pytest.fixture(scope="module")
def backend(make_settings):
    backend = make_backend(make_settings())
    assert backend.max_concurrency == 8  # the llama.cpp default
    yield backend
    backend.close()


class Journal:
    """Every job's events, in the order they happened, across all job threads."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()

    def add(self, job: str, kind: str, data: dict) -> None:
        with self._lock:
            self.events.append((job, kind, data))

    def position(self, job: str, kind: str) -> int:
        return next(i for i, e in enumerate(self.events) if e[:2] == (job, kind))

    def tokens(self, job: str, after: int = 0, before: int | None = None) -> int:
        return sum(1 for e in self.events[after:before] if e[:2] == (job, "token"))

    def text(self, job: str) -> str:
        return "".join(e[2]["text"] for e in self.events if e[:2] == (job, "token"))


class Job:
    """One job: a real JobContext whose cancel flag the test sets, run in its own thread."""

    def __init__(self, journal: Journal, name: str, deadline_s: float | None = None) -> None:
        self.name = name
        self.journal = journal
        self.cancel = threading.Event()
        self.ctx = JobContext(
            name,
            read_media=lambda ref: b"",
            emit=lambda kind, data: journal.add(name, kind, data),
            stop_requested=self.cancel.is_set,
            deadline=time.monotonic() + deadline_s if deadline_s else None,
            check_interval_s=0.02,
        )
        self.result = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self, backend, task: str, inputs) -> Job:
        def go() -> None:
            self.journal.add(self.name, "submitted", {})
            try:
                self.result = backend.run(task, inputs, self.ctx)
            except BaseException as exc:  # re-raised in the test thread by wait()
                self.error = exc
            self.journal.add(self.name, "ended", {})

        self.thread = threading.Thread(target=go)
        self.thread.start()
        return self

    def wait(self):
        self.thread.join(300)
        assert not self.thread.is_alive(), f"job {self.name} did not end"
        if self.error is not None:
            raise self.error
        return self.result


def chat(question: str, **fields) -> ChatInput:
    return ChatInput(messages=[{"role": "user", "content": question}], **fields)


def wait_until(predicate, what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_eight_concurrent_chats_match_each_alone(backend):
    """Greedy output is the same token for token whether a job ran alone or with 7 others."""
    alone = {}
    for q in QUESTIONS:
        alone[q] = Job(Journal(), "alone").start(backend, "chat", chat(q, max_tokens=48)).wait()
    journal = Journal()
    jobs = {
        q: Job(journal, f"j{i}").start(backend, "chat", chat(q, max_tokens=48))
        for i, q in enumerate(QUESTIONS)
    }
    for i, q in enumerate(QUESTIONS):
        result = jobs[q].wait()
        assert result.output == alone[q].output, q
        assert result.output["finish_reason"] in ("stop", "length")
        assert journal.text(f"j{i}") == result.output["text"]  # streamed, token by token
        assert result.metrics["completion_tokens"] == alone[q].metrics["completion_tokens"] > 0
        assert result.metrics["prompt_tokens"] == alone[q].metrics["prompt_tokens"] > 10
    assert "Paris" in jobs[QUESTIONS[0]].result.output["text"]
    # the eight streams interleaved: several jobs got tokens before the first one ended
    first_end = min(journal.position(f"j{i}", "ended") for i in range(8))
    assert sum(1 for i in range(8) if journal.tokens(f"j{i}", before=first_end)) >= 4


def test_one_job_in_the_batch_equals_llama_cpp_pythons_own_completion(backend):
    """What a job gets is what llama-cpp-python's Llama.create_completion gives (the path a
    worker ran before batching), sampled with the same settings."""
    params = {"temperature": 0.7, "top_p": 0.9, "top_k": 30, "seed": 42, "repeat_penalty": 1.2}
    ours = backend.run(
        "complete", CompleteInput(prompt="The sea at night", max_tokens=24, **params), None
    )
    reference = backend.engine.call(
        lambda: backend.llm.create_completion("The sea at night", max_tokens=24, **params)
    )
    assert ours.output["text"] == reference["choices"][0]["text"]
    assert ours.metrics["prompt_tokens"] == reference["usage"]["prompt_tokens"]


def test_a_job_joins_a_running_batch(backend):
    journal = Journal()
    long = Job(journal, "long").start(
        backend, "complete", CompleteInput(prompt=COUNTING, max_tokens=150, temperature=0)
    )
    wait_until(lambda: journal.tokens("long") >= 5, "the first job's tokens")
    short = Job(journal, "short").start(backend, "chat", chat(QUESTIONS[0], max_tokens=20))
    assert "Paris" in short.wait().output["text"]
    assert long.wait().output["finish_reason"] == "length"
    joined, ended = journal.position("short", "submitted"), journal.position("short", "ended")
    # the short job ran to its end while the long one was still producing tokens
    assert ended < journal.position("long", "ended")
    assert journal.tokens("long", after=joined, before=ended) >= 3


def test_cancel_one_job_mid_batch_while_the_others_finish(backend):
    alone = backend.run("chat", chat(QUESTIONS[5], max_tokens=40), None).output
    backend.engine.call(backend.engine.clear)  # no slot holds an earlier prompt
    journal = Journal()
    victim = Job(journal, "victim").start(
        backend, "complete", CompleteInput(prompt=COUNTING, max_tokens=300, temperature=0)
    )
    others = [
        Job(journal, f"o{i}").start(backend, "chat", chat(QUESTIONS[5], max_tokens=40))
        for i in range(3)
    ]
    wait_until(lambda: journal.tokens("victim") >= 5, "the victim's tokens")
    victim.cancel.set()
    result = victim.wait()
    assert result.output["finish_reason"] == "canceled"
    assert 5 <= result.metrics["completion_tokens"] < 300
    assert result.output["text"] == journal.text("victim")
    for job in others:
        assert job.wait().output == alone
    # a canceled job's cells are all freed; finished jobs keep only their prompt (a prefix
    # cache for the slot's next job)
    (prompt,) = {j.result.metrics["prompt_tokens"] for j in others}
    held = backend.engine.call(backend.engine.kv_tokens)
    assert sorted(held) == [0] * (len(held) - 3) + [prompt] * 3, held


def test_a_deadline_expires_inside_a_batch(backend):
    journal = Journal()
    late = Job(journal, "late", deadline_s=1.0).start(
        backend, "complete", CompleteInput(prompt=COUNTING, max_tokens=1000, temperature=0)
    )
    others = [
        Job(journal, f"o{i}").start(backend, "chat", chat(q, max_tokens=24))
        for i, q in enumerate(QUESTIONS[:3])
    ]
    result = late.wait()
    assert result.output["finish_reason"] == "timeout"
    assert result.metrics["completion_tokens"] < 1000
    assert all(j.wait().output["finish_reason"] in ("stop", "length") for j in others)


def test_stop_strings_end_the_job_and_never_reach_the_stream(backend):
    journal = Journal()
    job = Job(journal, "stop").start(
        backend,
        "complete",
        CompleteInput(prompt=COUNTING, max_tokens=60, temperature=0, stop=[" 14", "zzz"]),
    )
    others = [
        Job(journal, f"o{i}").start(backend, "chat", chat(QUESTIONS[i], max_tokens=20))
        for i in range(2)
    ]
    result = job.wait()
    assert result.output["finish_reason"] == "stop"
    assert result.output["text"].startswith(" 11, 12, 13,")
    assert "14" not in result.output["text"]
    assert journal.text("stop") == result.output["text"]
    for job in others:
        job.wait()


def test_max_tokens_ends_each_job_at_its_own_length(backend):
    journal = Journal()
    jobs = [
        Job(journal, f"n{n}").start(
            backend, "complete", CompleteInput(prompt=COUNTING, max_tokens=n, temperature=0)
        )
        for n in (3, 9, 17)
    ]
    for n, job in zip((3, 9, 17), jobs, strict=True):
        result = job.wait()
        assert result.metrics["completion_tokens"] == n
        assert result.output["finish_reason"] == "length"


def test_response_format_json_schema_gives_valid_json_in_a_batch(backend):
    schema = {
        "type": "object",
        "properties": {
            "capital": {"type": "string", "maxLength": 20},
            "country": {"type": "string"},
        },
        "required": ["capital", "country"],
    }
    journal = Journal()
    fmt = {"type": "json_object", "schema": schema}
    jobs = [
        Job(journal, f"json{i}").start(
            backend, "chat", chat(QUESTIONS[0], max_tokens=60, response_format=fmt)
        )
        for i in range(2)
    ]
    plain = Job(journal, "plain").start(backend, "chat", chat(QUESTIONS[1], max_tokens=30))
    for job in jobs:
        answer = json.loads(job.wait().output["text"])
        assert set(answer) == {"capital", "country"}
    assert not plain.wait().output["text"].lstrip().startswith("{")


def test_tools_run_on_the_side_path_beside_the_batch(backend):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    journal = Journal()
    batch = [
        Job(journal, f"b{i}").start(backend, "chat", chat(q, max_tokens=30))
        for i, q in enumerate(QUESTIONS[:3])
    ]
    call = Job(journal, "tool").start(
        backend,
        "chat",
        chat(
            "What is the weather in Paris?",
            max_tokens=60,
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        ),
    )
    out = call.wait().output
    assert out["finish_reason"] == "tool_calls"
    assert isinstance(json.loads(out["tool_calls"][0]["function"]["arguments"])["city"], str)
    for job in batch:
        assert job.wait().output["text"]


def test_a_long_prompt_does_not_stall_the_other_streams(make_settings):
    """The long prompt is evaluated in n_batch-sized chunks between the other job's steps."""
    backend = make_backend(make_settings(), n_batch=64, n_ctx=2048)
    try:
        journal = Journal()
        running = Job(journal, "running").start(
            backend, "complete", CompleteInput(prompt=COUNTING, max_tokens=400, temperature=0)
        )
        wait_until(lambda: journal.tokens("running") >= 3, "the running job's tokens")
        words = " ".join(f"word{i}" for i in range(450))
        long = Job(journal, "long").start(
            backend, "complete", CompleteInput(prompt=words, max_tokens=4, temperature=0)
        )
        assert long.wait().metrics["prompt_tokens"] > 1500
        running.cancel.set()
        running.wait()
        submitted, first = journal.position("long", "submitted"), journal.position("long", "token")
        # > 1500 prompt tokens in chunks of at most 63 (64 less the running job's token):
        # at least 24 steps, each with a token for the running job (its thread may publish
        # a few of them late; in one call the prompt would have let through one or two)
        assert journal.tokens("running", after=submitted, before=first) >= 14
    finally:
        backend.close()


def test_a_prompt_over_the_context_is_rejected(make_settings):
    backend = make_backend(make_settings(), n_ctx=256, warmup=False)
    try:
        words = " ".join(f"word{i}" for i in range(300))
        with pytest.raises(InputRejected, match="context window"):
            backend.run("complete", CompleteInput(prompt=words, max_tokens=4), None)
        with pytest.raises(InputRejected, match="context window"):
            backend.run("chat", chat(words, max_tokens=4), None)
        ok = backend.run("complete", CompleteInput(prompt=COUNTING, max_tokens=400), None)
        assert ok.metrics["completion_tokens"] < 256  # trimmed to what the context holds
    finally:
        backend.close()


def test_a_shared_system_prompt_is_reused_across_slots(backend, caplog):
    """A job whose long system prompt another running job holds copies those cells instead
    of evaluating them again, and answers as it does alone."""
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: be brief." for i in range(30))

    def ask(question: str, **fields) -> ChatInput:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]
        return ChatInput(messages=messages, **fields)

    alone = backend.run("chat", ask(QUESTIONS[0], max_tokens=24), None).output
    backend.engine.call(backend.engine.clear)
    caplog.set_level("DEBUG", logger="workers.backends.llama_batch")
    journal = Journal()
    first = Job(journal, "first").start(
        backend, "chat", ask("Count from one to fifty.", max_tokens=120)
    )
    wait_until(lambda: journal.tokens("first") >= 3, "the first job's tokens")
    second = Job(journal, "second").start(backend, "chat", ask(QUESTIONS[0], max_tokens=24))
    assert second.wait().output == alone
    first.cancel.set()
    first.wait()
    admitted = [r.getMessage() for r in caplog.records if "prompt tokens" in r.getMessage()]
    shared = int(admitted[-1].split(", ")[1].split()[0])
    assert shared > 100, admitted  # the system prompt came from the first job's slot


def test_max_concurrency_one_runs_jobs_one_after_another(make_settings, caplog):
    caplog.set_level("DEBUG", logger="workers.backends.llama_batch")
    settings = make_settings()
    spec = load_registry(settings.registry).get("smollm2-135m")
    spec.max_concurrency = 1
    backend = LlamaCppBackend(spec, settings)
    backend.load()
    try:
        assert backend.health()["slots"] == 1
        journal = Journal()
        jobs = [
            Job(journal, f"j{i}").start(backend, "chat", chat(q, max_tokens=16))
            for i, q in enumerate(QUESTIONS[:2])
        ]
        results = [job.wait() for job in jobs]
        # the engine's own record: the second job was admitted once the first had ended
        steps = [
            "ended" if "ended" in r.getMessage() else "admitted"
            for r in caplog.records
            if "ended" in r.getMessage() or "prompt tokens" in r.getMessage()
        ]
        assert steps[-4:] == ["admitted", "ended", "admitted", "ended"], steps
        for q, result in zip(QUESTIONS[:2], results, strict=True):
            assert result.output == backend.run("chat", chat(q, max_tokens=16), None).output
    finally:
        backend.close()
