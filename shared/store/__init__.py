"""The job store: the job state machine, its events, leases and the fleet, in Redis."""
