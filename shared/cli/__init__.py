"""The `conveyor` command line: the service (`up`, `web`, `worker`) and the job client."""
