"""Process plumbing: the embedded Redis, the gunicorn command, the `conveyor up` supervisor."""
