"""Hugging Face hub access: find weights in the local cache, or download them."""

from __future__ import annotations

import logging
from pathlib import Path

from shared.errors import ModelNotAvailable

log = logging.getLogger(__name__)


def _offline_hint(spec) -> str:
    return (
        f"point `source` of model {spec.id} in models.yaml at a local folder instead, e.g.\n"
        f"    source: {{path: /models/{spec.id}}}\n"
        f"after copying the files of {spec.source.hf_repo} there"
    )


def local_snapshot(spec, *, cache_dir: str | None = None) -> Path:
    """Return the cached snapshot (or file) of a hub model without touching the network.

    :raises ModelNotAvailable: when it has not been downloaded.
    """
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
    except ImportError as exc:
        raise ModelNotAvailable(
            f"model {spec.id} comes from the hub but huggingface-hub is not installed"
        ) from exc
    src = spec.source
    try:
        if src.hf_file:
            return Path(
                hf_hub_download(
                    src.hf_repo,
                    src.hf_file,
                    revision=src.revision,
                    cache_dir=cache_dir,
                    local_files_only=True,
                )
            )
        return Path(
            snapshot_download(
                src.hf_repo, revision=src.revision, cache_dir=cache_dir, local_files_only=True
            )
        )
    except Exception as exc:  # the hub raises several unrelated types for "not cached"
        raise ModelNotAvailable(
            f"model {spec.id} is not on disk ({src.hf_repo} is not in the local cache); "
            f"run `conveyor models pull {spec.id}` on a machine that reaches the hub, or "
            + _offline_hint(spec)
        ) from exc


def pull(spec, *, cache_dir: str | None = None) -> Path:
    """Download a hub model into the cache, resuming partial files, with progress bars.

    :raises ModelNotAvailable: when the hub cannot be reached or the model is not on it.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    src = spec.source
    if not src.hf_repo:
        raise ModelNotAvailable(f"model {spec.id} is not a hub model; nothing to pull")
    try:
        if src.hf_file:
            path = hf_hub_download(
                src.hf_repo, src.hf_file, revision=src.revision, cache_dir=cache_dir
            )
        else:
            path = snapshot_download(src.hf_repo, revision=src.revision, cache_dir=cache_dir)
    except Exception as exc:
        raise ModelNotAvailable(
            f"could not download {src.hf_repo}: {_why(exc)}. If this machine has no "
            f"internet access, " + _offline_hint(spec)
        ) from exc
    return Path(path)


def _why(exc: Exception) -> str:
    """Say in one phrase why a download failed: offline, unreachable, or not on the hub."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        return "the Hugging Face hub is not reachable: offline mode is on (HF_HUB_OFFLINE=1)"
    if isinstance(exc, GatedRepoError):
        return "the repository is gated; accept its terms on the hub and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError):
        return "no such repository or revision on the hub (or it is private)"
    if isinstance(exc, LocalEntryNotFoundError):  # what the hub client raises when offline
        return f"the Hugging Face hub at {constants.ENDPOINT} is unreachable"
    return f"{type(exc).__name__}: {exc}"
