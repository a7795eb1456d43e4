"""The parts of a worker that runs several jobs at once: the registry's max_concurrency, the
running jobs' time limits, and when memory is released."""

from __future__ import annotations

import textwrap
import threading
import time

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from shared.config import Settings
from shared.registry import load_registry
from workers.backends.echo import EchoBackend
from workers.memory import Releaser
from workers.slots import Slots


def registry(tmp_path, extra: str):
    path = tmp_path / "models.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            models:
              - id: echo-n
                backend: echo
                tasks: [echo]
                {extra}
            """
        )
    )
    return load_registry(path)


def test_max_concurrency_comes_from_the_registry_else_the_backend(tmp_path):
    settings = Settings()
    spec = registry(tmp_path, "max_concurrency: 12").get("echo-n")
    assert EchoBackend(spec, settings).max_concurrency == 12
    default = registry(tmp_path, "").get("echo-n")
    assert default.max_concurrency is None
    assert EchoBackend(default, settings).max_concurrency == EchoBackend.default_max_concurrency


@pytest.mark.parametrize("value", [0, 257, "many"])
def test_max_concurrency_out_of_bounds_names_the_model(tmp_path, value):
    with pytest.raises(ValueError, match="(?s)model echo-n:.*max_concurrency"):
        registry(tmp_path, f"max_concurrency: {value}")


def run_in_thread(slots: Slots, soft_s: float, hard_s: float, body) -> dict:
    """Run body(slot) in a thread registered in slots; return what happened."""
    out: dict = {}

    def target():
        slot = slots.enter("job", soft_s, hard_s)
        try:
            body(slot)
            out["result"] = "returned"
        except SoftTimeLimitExceeded:
            out["result"] = "interrupted"
        finally:
            slots.leave(slot)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    out["thread"] = thread
    return out


def test_the_soft_limit_interrupts_python_that_never_checks_in():
    slots, stop, hard = Slots(), threading.Event(), []
    slots.watch(stop, hard.append)

    def busy(slot):
        while True:  # Python that never looks at a deadline
            time.sleep(0.01)

    out = run_in_thread(slots, 0.3, 5, busy)
    out["thread"].join(3)
    stop.set()
    assert out["result"] == "interrupted" and hard == []
    assert slots.live() == 0


def test_no_interruption_once_the_job_left_the_backend():
    slots, stop, hard = Slots(), threading.Event(), []
    slots.watch(stop, hard.append)

    def finishes_then_writes(slot):
        slots.finishing(slot)
        time.sleep(0.8)  # past the soft limit, writing its result

    out = run_in_thread(slots, 0.2, 5, finishes_then_writes)
    out["thread"].join(3)
    stop.set()
    assert out["result"] == "returned"


def test_a_step_past_its_hard_limit_is_abandoned_and_reported():
    slots, stop, hard = Slots(), threading.Event(), []
    slots.watch(stop, hard.append)
    out = run_in_thread(slots, 0.1, 0.5, lambda slot: time.sleep(2))  # one native-like call
    wait_until = time.monotonic() + 3
    while not hard and time.monotonic() < wait_until:
        time.sleep(0.05)
    assert [s.job_id for s in hard] == ["job"]
    assert slots.live() == 0 and slots.live_ids() == []  # drained, though its thread runs
    assert slots.wait_drained(stop)
    out["thread"].join(3)
    stop.set()


def test_memory_is_released_when_the_batch_drains_or_every_n_jobs():
    releaser = Releaser(every_jobs=4)
    assert releaser.after_job(drained=True)
    assert [releaser.after_job(drained=False) for _ in range(4)] == [False, False, False, True]
    assert releaser.releases == 2
    assert not releaser.after_job(drained=False)
    assert releaser.after_job(drained=True)  # a drain releases at once and restarts the count
    assert releaser.releases == 3 and releaser.last_seconds is not None


def test_two_threads_never_release_at_once():
    releaser = Releaser()
    releaser._running.acquire()  # another thread is releasing
    try:
        assert not releaser.after_job(drained=True)
    finally:
        releaser._running.release()
    assert releaser.after_job(drained=True)
