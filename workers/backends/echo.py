"""The echo backend: no weights; returns its input (tests and overhead measurement).

`options.crash` (a registry option, for tests): `warmup` or `job` makes that step die of a
real segmentation fault, as a native kernel that cannot run on this CPU does.
"""

from __future__ import annotations

import ctypes
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
        if inputs.block_s:  # Python that never checks in: only the soft time limit ends it
            end = time.monotonic() + inputs.block_s
            while time.monotonic() < end:
                time.sleep(STEP_S)
        if inputs.native_block_s:  # one call that never returns to Python: only the hard limit
            time.sleep(inputs.native_block_s)
        if inputs.fail:
            raise JobFailure(inputs.fail, type="echo_failure")
        return Result({"echo": inputs.model_dump(mode="json", exclude_none=True)})
