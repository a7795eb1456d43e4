"""workers.batching.DynamicBatcher with jobs on real threads: passes are shared, results go
back to the job that sent them, one bad item fails only its job, and a stopped job stops
waiting. The batch function is plain Python, so what is checked is the batcher itself;
tests/integration/test_hf_batching.py runs the same paths through real models."""

from __future__ import annotations

import threading
import time

import pytest

from shared.errors import InputRejected, ModelNotAvailable
from shared.registry import ModelSpec
from tests.conftest import on_threads
from workers.backends.base import JobContext
from workers.batching import Batch, BatchOptions, DynamicBatcher, check_texts

pytestmark = pytest.mark.timeout(120)


class Recorder:
    """A batch function that squares numbers and remembers every pass it ran."""

    def __init__(self, delay_s: float = 0.02, bad=()) -> None:
        self.passes: list[tuple[object, list]] = []
        self.delay_s = delay_s
        self.bad = set(bad)
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> list:
        with self.lock:
            self.passes.append((batch.key, list(batch.items)))
        time.sleep(self.delay_s)  # a forward pass takes time; arrivals pile up meanwhile
        if self.bad & set(batch.items):
            raise ValueError(f"cannot take {sorted(self.bad & set(batch.items))}")
        return [x * x for x in batch.items]


def context(job_id: str, stop=lambda: False, deadline=None) -> JobContext:
    return JobContext(
        job_id,
        read_media=bytes,
        emit=lambda event, data: None,
        stop_requested=stop,
        deadline=deadline,
        check_interval_s=0.01,
    )


@pytest.fixture
def make_batcher():
    made = []

    def make(fn, max_batch=8, wait_ms=20.0):
        b = DynamicBatcher("test", fn, BatchOptions(max_batch=max_batch, wait_s=wait_ms / 1000))
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_jobs_on_threads_share_passes_and_get_their_own_results(make_batcher):
    fn = Recorder()
    batcher = make_batcher(fn, max_batch=8)
    results, errors = on_threads(lambda i: batcher.run([i, 100 + i], context(f"j{i}")), 16)
    assert errors == [None] * 16
    assert results == [[i * i, (100 + i) ** 2] for i in range(16)]
    assert all(len(items) <= 8 for _, items in fn.passes)
    assert sum(len(items) for _, items in fn.passes) == 32  # every item ran exactly once
    assert len(fn.passes) < 16, fn.passes  # fewer passes than jobs: they were shared


def test_a_lone_job_does_not_wait(make_batcher):
    fn = Recorder(delay_s=0)
    batcher = make_batcher(fn, wait_ms=2000)
    t0 = time.monotonic()
    assert batcher.run([3], context("one")) == [9]
    assert time.monotonic() - t0 < 1.0  # the 2 s batch wait applies only while jobs overlap


def test_items_batch_only_with_items_of_the_same_key(make_batcher):
    fn = Recorder()
    batcher = make_batcher(fn, max_batch=32)
    results, errors = on_threads(
        lambda i: batcher.run([i], context(f"j{i}"), key="en" if i % 2 else "fr"), 12
    )
    assert errors == [None] * 12
    assert results == [[i * i] for i in range(12)]
    for key, items in fn.passes:
        assert {("en" if x % 2 else "fr") for x in items} == {key}


def test_a_bad_item_fails_only_its_own_job(make_batcher):
    fn = Recorder(delay_s=0.2, bad={13})
    batcher = make_batcher(fn, max_batch=32)
    busy = threading.Thread(target=batcher.run, args=([0], context("busy")))
    busy.start()
    time.sleep(0.05)  # the eight jobs arrive during the busy pass and share the next one
    results, errors = on_threads(lambda i: batcher.run([10 + i], context(f"j{i}")), 8)
    busy.join()
    assert isinstance(errors[3], ValueError) and "13" in str(errors[3])
    for i in range(8):
        if i != 3:
            assert errors[i] is None and results[i] == [(10 + i) ** 2]
    mixed = [items for _, items in fn.passes if 13 in items and len(items) > 1]
    assert mixed, "the bad item never shared a pass; the retry path was not exercised"


def test_a_failing_pass_of_one_job_fails_that_job(make_batcher):
    """One job's own items are not retried one by one: its error (out of memory, say) stands."""
    fn = Recorder(bad={2})
    batcher = make_batcher(fn)
    with pytest.raises(ValueError, match="cannot take"):
        batcher.run([1, 2, 3], context("solo"))
    assert [items for _, items in fn.passes] == [[1, 2, 3]]


def test_a_canceled_job_stops_waiting_and_its_items_never_run(make_batcher):
    fn = Recorder(delay_s=0.3)
    batcher = make_batcher(fn, max_batch=2, wait_ms=0)
    stop = threading.Event()
    first = threading.Thread(target=batcher.run, args=([1, 2], context("busy")))
    first.start()
    time.sleep(0.05)  # the busy job's pass is running
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    got = batcher.run([5, 6, 7, 8], context("canceled", stop=stop.is_set))
    assert time.monotonic() - t0 < 0.28  # back before the busy pass ended
    assert got == []
    first.join()
    assert batcher.run([9], context("after")) == [81]
    ran = [x for _, items in fn.passes for x in items]
    assert not {5, 6, 7, 8} & set(ran), fn.passes


def test_a_job_past_its_deadline_stops_with_what_it_has(make_batcher):
    fn = Recorder(delay_s=0.2)
    batcher = make_batcher(fn, max_batch=1, wait_ms=0)
    got = batcher.run([1, 2, 3, 4], context("late", deadline=time.monotonic() + 0.3))
    assert got == [1]  # the first pass finished; the job stopped waiting during the second


def test_options_from_the_registry():
    spec = ModelSpec(id="m", backend="classifier", tasks=["classify"], options={"max_batch": 4})
    assert BatchOptions.from_spec(spec, max_batch=32, wait_ms=5) == BatchOptions(4, 0.005)
    spec = ModelSpec(id="m", backend="classifier", tasks=["classify"], options={"batch_wait_ms": 0})
    assert BatchOptions.from_spec(spec, max_batch=32, wait_ms=5) == BatchOptions(32, 0.0)
    for bad in ({"max_batch": "many"}, {"max_batch": -1}, {"batch_wait_ms": 99_999}):
        spec = ModelSpec(id="m", backend="classifier", tasks=["classify"], options=bad)
        with pytest.raises(ModelNotAvailable, match="options"):
            BatchOptions.from_spec(spec, max_batch=32, wait_ms=5)


def test_a_text_that_is_not_valid_unicode_is_rejected_before_batching():
    assert check_texts(["fine", "ça va"], "input.texts") == ["fine", "ça va"]
    with pytest.raises(InputRejected, match=r"input.texts\[1\] is not valid Unicode"):
        check_texts(["fine", "bad \ud800 surrogate"], "input.texts")
