"""The echo backend: no weights; returns its input (tests and overhead measurement)."""

from __future__ import annotations

import time

from shared.errors import JobFailure
from shared.inputs import EchoInput
from workers.backends.base import Backend, JobContext, Result

STEP_S = 0.05


class EchoBackend(Backend):
    tasks = ("echo",)

    def echo(self, inputs: EchoInput, ctx: JobContext) -> Result:
        """Sleep in small steps that honour cancellation, then echo the input back."""
        deadline = time.monotonic() + inputs.sleep_s
        steps = 0
        while time.monotonic() < deadline and not ctx.should_stop():
            time.sleep(min(STEP_S, max(0.0, deadline - time.monotonic())))
            steps += 1
            if steps % 20 == 0:
                ctx.progress(steps, int(inputs.sleep_s / STEP_S) or 1)
        if inputs.fail:
            raise JobFailure(inputs.fail, type="echo_failure")
        return Result({"echo": inputs.model_dump(mode="json", exclude_none=True)})
