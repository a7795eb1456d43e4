#!/bin/sh
# Entrypoint of the worker image (Dockerfile.worker):
#   pull ID [ID...]    download hub models into the cache (HF_HOME), then exit
#   anything else      `conveyor worker` with those arguments, e.g. --model ID
# so `docker compose run --rm --no-deps worker-echo pull qwen2.5-vl-3b` fills the shared
# hf-cache volume. `exec` leaves the worker as the container's main process, so it gets
# the container's SIGTERM itself.
set -eu
if [ "${1:-}" = "pull" ]; then
    shift
    if [ "$#" -eq 0 ]; then
        echo "usage: pull MODEL_ID [MODEL_ID...]" >&2
        exit 2
    fi
    for model in "$@"; do
        conveyor models pull "$model"
    done
    exit 0
fi
exec conveyor worker "$@"
