"""The payload sweeper: remove media of jobs that ended or vanished.

Workers and the web delete a job's media when it ends; this is the backstop for what
they missed (a worker killed mid-job, a record that expired, a crash between writes).
"""

from __future__ import annotations

import logging

from shared.payloads import PayloadStore
from shared.store.jobs import JobStore

log = logging.getLogger(__name__)


def sweep_payloads(store: JobStore, payloads: PayloadStore, *, grace_s: float) -> list[str]:
    """Delete payloads of ended jobs now, and of jobs with no record once older than grace_s.

    A job with no record may be one a submit is writing right now (media are stored just
    before the record), hence the grace period for those.
    """
    removed = []
    for job_id in payloads.job_ids():
        job = store.get(job_id)
        if job is not None and not job.status.is_terminal():
            continue
        if job is None:
            age = payloads.age_s(job_id)
            if age is None or age < grace_s:
                continue
        payloads.delete(job_id)
        removed.append(job_id)
    if removed:
        log.info("payload sweep removed the media of %s jobs", len(removed))
    return removed


def sweep_if_due(
    store: JobStore, payloads: PayloadStore, *, interval_s: float, grace_s: float, owner: str
) -> list[str] | None:
    """Sweep unless another process of the fleet swept within interval_s; None if skipped."""
    if not store.take_sweep_turn(owner, interval_s):
        return None
    return sweep_payloads(store, payloads, grace_s=grace_s)
