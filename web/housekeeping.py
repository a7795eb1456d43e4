"""What operators ask of the fleet: memory reports, payload-store usage and cleanups."""

from __future__ import annotations

import logging

from shared.payloads import PayloadStore
from shared.store.fleet import Fleet
from shared.store.jobs import JobStore
from shared.store.sweeper import sweep_payloads
from web.protocols.catalog import MemoryReport, PayloadSweep, PayloadUsage, WorkerMemory

log = logging.getLogger(__name__)


class Housekeeping:
    """Operator actions on the payload store and the workers."""

    def __init__(
        self, store: JobStore, payloads: PayloadStore, fleet: Fleet, *, orphan_grace_s: float
    ) -> None:
        self.store = store
        self.payloads = payloads
        self.fleet = fleet
        self.orphan_grace_s = orphan_grace_s

    def memory(self) -> MemoryReport:
        """Return what each worker online holds in memory."""
        return MemoryReport(workers=[WorkerMemory.of(w) for w in self.fleet.workers()])

    def payload_usage(self) -> PayloadUsage:
        """Return the payload store's usage."""
        return PayloadUsage(**self.payloads.usage())

    def sweep_payloads(self) -> PayloadSweep:
        """Delete payloads of ended jobs, and of vanished ones past the grace period, now."""
        removed = sweep_payloads(self.store, self.payloads, grace_s=self.orphan_grace_s)
        log.info("payload sweep removed the media of %d jobs", len(removed))
        return PayloadSweep(removed_jobs=len(removed), removed=removed, **self.payloads.usage())

    def free_worker_memory(self) -> int:
        """Ask every worker to release cached memory now; return how many listen."""
        return self.fleet.broadcast("cleanup")
