"""Hugging Face hub access: find weights in the local cache, or download them.

Downloads go through huggingface_hub (HF_HOME, HF_TOKEN, HF_ENDPOINT apply): files already
in the cache are skipped, and a transfer cut off mid-file resumes with a range request.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from shared.errors import ModelNotAvailable

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0


def logged_progress() -> type:
    """Return a tqdm class for huggingface_hub's `tqdm_class` that logs instead of drawing.

    Imported late: the web image, which also reaches this module, has no tqdm.
    """
    from tqdm import tqdm

    class LoggedProgress(tqdm):
        """A log line every few seconds: workers log to files, where a redrawn bar is noise."""

        monitor_interval = 0  # no tqdm monitor thread in a process that forks its pool

        def __init__(self, *args, **kwargs) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = False
            kwargs["mininterval"] = PROGRESS_EVERY_S
            kwargs["file"] = _Discard()  # tqdm still writes a newline when a bar closes
            self._logged_at = 0.0
            self._logged_n = -1
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None) -> bool:
            now = time.monotonic()
            done = bool(self.total) and self.n >= self.total
            if self.n == self._logged_n or (now - self._logged_at < PROGRESS_EVERY_S and not done):
                return True
            self._logged_at, self._logged_n = now, self.n
            info = dict(self.format_dict)
            info["bar_format"] = (
                "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}"
                if self.total
                else "{desc}: {n_fmt} {unit}, {rate_fmt}"
            )
            log.info("download %s", self.format_meter(**info))
            return True

    return LoggedProgress


class _Discard:
    """A stream that drops what is written to it."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


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


def pull(spec, *, cache_dir: str | None = None, progress: type | None = None) -> Path:
    """Download a hub model into the cache, resuming partial files, with progress bars
    (or the tqdm class `progress`, e.g. logged_progress()).

    :raises ModelNotAvailable: when the hub cannot be reached or the model is not on it.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    src = spec.source
    if not src.hf_repo:
        raise ModelNotAvailable(f"model {spec.id} is not a hub model; nothing to pull")
    try:
        if src.hf_file:
            path = hf_hub_download(
                src.hf_repo,
                src.hf_file,
                revision=src.revision,
                cache_dir=cache_dir,
                tqdm_class=progress,
            )
        else:
            path = snapshot_download(
                src.hf_repo, revision=src.revision, cache_dir=cache_dir, tqdm_class=progress
            )
    except Exception as exc:
        raise ModelNotAvailable(
            f"could not download {src.hf_repo}: {_why(exc)}. If this machine has no "
            f"internet access, " + _offline_hint(spec)
        ) from exc
    return Path(path)


def ensure_weights(spec, settings, *, cache_dir: str | None = None) -> None:
    """At a worker's start: download a hub model missing from the cache, unless
    CONVEYOR_AUTO_PULL=false or the hub is off (HF_HUB_OFFLINE); progress goes to the log.

    :raises ModelNotAvailable: when it is missing and could not be downloaded; the message
        is the one a worker without auto-pull gives, plus why the download did not happen.
    """
    if not spec.source.hf_repo:
        return
    try:
        local_snapshot(spec, cache_dir=cache_dir)
        return
    except ModelNotAvailable as exc:
        missing = exc
    from huggingface_hub import constants

    if not settings.auto_pull:
        raise ModelNotAvailable(
            f"{missing.message}\n(CONVEYOR_AUTO_PULL=false: workers do not download models)"
        ) from None
    if constants.HF_HUB_OFFLINE:
        raise missing
    src = spec.source
    log.info(
        "model %s: %s%s is not in the cache; downloading it from %s (CONVEYOR_AUTO_PULL)",
        spec.id,
        src.describe(),
        f"@{src.revision}" if src.revision else "",
        constants.ENDPOINT,
    )
    try:
        path = pull(spec, cache_dir=cache_dir, progress=logged_progress())
    except ModelNotAvailable as exc:
        why = _why(exc.__cause__) if exc.__cause__ is not None else exc.message
        log.error("model %s: download failed: %s", spec.id, why)
        raise ModelNotAvailable(f"{missing.message}\n(downloading it failed: {why})") from None
    log.info("model %s: downloaded to %s", spec.id, path)


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
