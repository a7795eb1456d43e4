"""Everything conveyor keeps in Redis, and the only code that talks to it.

keys.py names every key. jobs.py is JobStore, the job state machine (every state change a
compare-and-set: scripts.py, writes.py), on job_reads.py's reads of records, queues and
leases; events.py is a job's event log and end stream (event_buffer.py batches token
events); job_end.py does what follows every end. fleet.py is worker presence and operator
commands, on_demand.py what `conveyor up` starts on demand, webhook_snapshots.py queued
webhook events, chat_model.py the chosen default chat model, sweeper.py the payload
sweep; connection.py builds the client they share.
"""
