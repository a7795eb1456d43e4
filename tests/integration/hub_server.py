"""A stand-in for the Hugging Face hub: the part of its HTTP API that downloads use.

Point HF_ENDPOINT at it and the real huggingface_hub client runs against it:
`GET /api/models/<repo>/revision/<rev>` (repo info: the commit a branch or tag points at),
`GET /api/models/<repo>/tree/<rev>` (the file list), and `HEAD`/`GET
/<repo>/resolve/<rev>/<file>` (metadata headers, then the bytes, with range requests).
Repositories are made by the test from files it builds; a private one answers 401 without
the right bearer token, as the hub does. Every request is recorded, and a file can be set to
break off half-way through its first download, to check that the client resumes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


@dataclass
class Repo:
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    token: str | None = None  # private: only this bearer token may read it

    def commit(self, rev: str) -> Commit | None:
        return self.commits.get(self.refs.get(rev, rev))


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


class StandInHub:
    """A hub on a loopback port; `url` is what HF_ENDPOINT takes."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.cut_once: set[str] = set()  # "repo/file": break the first GET off half-way
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StandInHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        ref: str = "main",
        token: str | None = None,
    ) -> str:
        """Publish files as a new commit of repo_id that `ref` points at; return its sha."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        sha = digest.hexdigest()
        repo = self.repos.setdefault(repo_id, Repo())
        repo.commits[sha] = Commit(sha, dict(files))
        repo.refs[ref] = sha
        repo.token = token or repo.token
        return sha

    def add_folder(self, repo_id: str, folder: Path, **kwargs) -> str:
        """Publish every file under a folder (a checkpoint built by the test)."""
        files = {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
        return self.add(repo_id, files, **kwargs)

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def downloads(self, path_part: str = "") -> list[Request]:
        """Return the GETs of files (not metadata) whose path contains path_part."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET" and "/resolve/" in r.path and path_part in r.path
            ]


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # the test's output stays quiet
            pass

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, *, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.record(
                Request(
                    self.command, path, self.headers.get("Range"), self.headers.get("Authorization")
                )
            )
            api, resolve = _API.match(path), _RESOLVE.match(path)
            match = api or resolve
            if match is None:
                return self._error(404, "EntryNotFound", "no such route")
            repo = hub.repos.get(match["repo"])
            if repo is None or (
                repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}"
            ):
                return self._error(401 if repo else 404, "RepoNotFound", "Repository not found")
            commit = repo.commit(match["rev"])
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {match['rev']}")
            if api and api["kind"] == "revision":
                siblings = [{"rfilename": name} for name in sorted(commit.files)]
                return self._json({"id": match["repo"], "sha": commit.sha, "siblings": siblings})
            if api:
                return self._json(
                    [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest(),
                        }
                        for name, data in sorted(commit.files.items())
                    ]
                )
            data = commit.files.get(resolve["file"])
            if data is None:
                return self._error(404, "EntryNotFound", f"{resolve['file']} does not exist")
            self._file(f"{match['repo']}/{resolve['file']}", commit.sha, data, body=body)

        def _file(self, key: str, sha: str, data: bytes, *, body: bool) -> None:
            start = 0
            wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if wanted and body:
                start = int(wanted[1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", sha)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if key in hub.cut_once and not start:
                hub.cut_once.discard(key)
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the transfer breaks off mid-file
                return
            self.wfile.write(data[start:])

        def _json(self, payload) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler
