"""What the model process tells the worker's supervisor (workers/main.py) about its jobs.

Kept apart from the runtime so the supervisor, which never loads a model, imports nothing
of the backends.
"""

from __future__ import annotations

EXIT_RECYCLE = 70  # the model process exits with this to be replaced by a fresh one


class Journal:
    """Where the runtime notes the jobs it runs, for whoever sees the process die (the
    worker's supervisor records why each one was lost). The default notes nothing."""

    def started(self, job_id: str) -> None:
        """A job started running here."""

    def ended(self, job_id: str) -> None:
        """This process is done with a job."""
