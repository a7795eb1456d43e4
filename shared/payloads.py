"""The payload store: job media on any fsspec filesystem, kept under the job id.

A local folder serves one machine (or one host's containers sharing a volume); an object
store serves many hosts: `s3://BUCKET/PREFIX` through s3fs (the `s3` extra, in both images),
with credentials and endpoint from the environment as boto reads them (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL for S3-compatible stores, or a role).
"""

from __future__ import annotations

import asyncio
import logging
import time

import fsspec

from shared.errors import PayloadTooLarge

log = logging.getLogger(__name__)


class PayloadStore:
    """Media bytes by job id; refs look like '<job_id>/<name>'."""

    def __init__(self, url: str, *, max_bytes: int) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.max_bytes = max_bytes
        self._call("makedirs", self.root, exist_ok=True)

    def _call(self, method: str, *args, **kwargs):
        """Call a filesystem method. An async filesystem's (s3fs) is awaited on its loop
        here rather than through fsspec's sync wrapper, which refuses to run where gevent
        has patched threads (the web's gunicorn workers): its loop then runs in a greenlet
        of this very thread, and waiting on the future yields to it."""
        if not getattr(self.fs, "async_impl", False):
            return getattr(self.fs, method)(*args, **kwargs)
        coro = getattr(self.fs, f"_{method}")(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(coro, self.fs.loop).result()

    def _path(self, ref: str) -> str:
        if ".." in ref.split("/") or ref.startswith("/"):
            raise ValueError(f"bad payload ref {ref!r}")
        return f"{self.root}/{ref}"

    def put(self, job_id: str, name: str, data: bytes) -> str:
        """Store bytes for a job and return their ref.

        :raises PayloadTooLarge: when the item is over the size limit.
        """
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(
                f"{name}: {len(data)} bytes is over the {self.max_bytes}-byte media limit",
                param=name,
            )
        ref = f"{job_id}/{name}"
        self._call("makedirs", self._path(job_id), exist_ok=True)
        self._call("pipe_file", self._path(ref), data)
        return ref

    def read(self, ref: str) -> bytes:
        """Return the bytes behind a ref.

        :raises FileNotFoundError: when it was deleted or never stored.
        """
        return self._call("cat_file", self._path(ref))

    def local_path(self, ref: str) -> str | None:
        """Return a local filename for a ref when the store is on local disk."""
        protocol = self.fs.protocol
        protocols = protocol if isinstance(protocol, tuple) else (protocol,)
        return self._path(ref) if "file" in protocols or "local" in protocols else None

    def _fresh(self, path: str | None = None) -> None:
        # Object stores' filesystems cache listings (a path and its parents; None: all),
        # while other hosts write and delete.
        self.fs.invalidate_cache(path)

    def delete(self, job_id: str) -> None:
        """Remove every payload of a job; a job with none is fine."""
        path = self._path(job_id)
        self._fresh(path)
        try:
            if self._call("exists", path):
                self._call("rm", path, recursive=True)
        except FileNotFoundError:
            pass

    def job_ids(self) -> list[str]:
        """Return the ids of jobs that have payloads stored."""
        self._fresh(self.root)
        try:
            entries = self._call("ls", self.root, detail=False)
        except FileNotFoundError:
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def usage(self) -> dict:
        """Return how many jobs, files and bytes the store holds."""
        self._fresh()
        files = self._call("find", self.root, detail=True)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return {
            "url": f"{protocol}://{self.root}",
            "jobs": len(self.job_ids()),
            "files": len(files),
            "bytes": sum(int(info.get("size") or 0) for info in files.values()),
        }

    def age_s(self, job_id: str) -> float | None:
        """Return seconds since a job's newest payload was written; None when it has none."""
        path = self._path(job_id)
        self._fresh(path)
        try:
            stamps = [_mtime(self._call("info", path))]
            stamps += [_mtime(info) for info in self._call("find", path, detail=True).values()]
        except FileNotFoundError:
            return None
        known = [s for s in stamps if s is not None]
        return time.time() - max(known) if known else float("inf")


def _mtime(info: dict) -> float | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("created")
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
