"""The echo backend: no weights; returns its input (tests and overhead measurement).

`options.crash` (a registry option, for tests): `warmup` or `job` makes that step die of a
real segmentation fault, as a native kernel that cannot run on this CPU does.
"""

from __future__ import annotations

import ctypes
import signal
import time

from shared.errors import JobFailure
from shared.inputs import EchoInput
from workers.backends.base import Backend, JobContext, Result

STEP_S = 0.05


class EchoBackend(Backend):
    tasks = ("echo",)

    needs_weights = False

    def warm_up(self) -> None:
        """Nothing to load; the warm-up checks the one thing that could crash."""
        self._maybe_crash("warmup")

    def _maybe_crash(self, step: str) -> None:
        if self.spec.options.get("crash") == step:
            ctypes.string_at(0)  # reads address 0: SIGSEGV

    def echo(self, inputs: EchoInput, ctx: JobContext) -> Result:
        """Sleep in small steps that honour cancellation, then echo the input back."""
        self._maybe_crash("job")
        deadline = time.monotonic() + inputs.sleep_s
        steps = 0
        while time.monotonic() < deadline and not ctx.should_stop():
            time.sleep(min(STEP_S, max(0.0, deadline - time.monotonic())))
            steps += 1
            if steps % 20 == 0:
                ctx.progress(steps, int(inputs.sleep_s / STEP_S) or 1)
        if inputs.block_s:  # a step that never checks in: only Celery's time limit ends it
            time.sleep(inputs.block_s)
        if inputs.native_block_s:  # deaf to the soft limit too: only the hard limit ends it
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
            try:
                time.sleep(inputs.native_block_s)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        if inputs.fail:
            raise JobFailure(inputs.fail, type="echo_failure")
        return Result({"echo": inputs.model_dump(mode="json", exclude_none=True)})
