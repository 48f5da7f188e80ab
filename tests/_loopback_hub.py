"""A loopback stand-in for the Hugging Face Hub's file endpoints, for real download tests.

It answers ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{path}`` the way the Hub does for
an LFS file: a 302 to a CDN origin carrying ``X-Repo-Commit``, ``X-Linked-Etag`` (the file's
sha256) and ``X-Linked-Size``; the CDN (a second server, so a different origin) serves the
bytes with ``Content-Length`` and ``ETag``. Errors carry the ``X-Error-Code`` values
huggingface_hub maps to its exceptions (RepoNotFound, RevisionNotFound, EntryNotFound).
Every request is recorded so tests can count them.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class HubState:
    """Repos → revisions → files, and the log of requests served."""

    # (repo_id, commit) -> {path: bytes}
    files: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    # (repo_id, branch) -> commit
    refs: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_file(self, repo_id: str, commit: str, path: str, data: bytes) -> None:
        self.files.setdefault((repo_id, commit), {})[path] = data
        self.refs.setdefault((repo_id, "main"), commit)
        self.blobs[hashlib.sha256(data).hexdigest()] = data

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, _ in self.requests if method is None or m == method)


class _Handler(BaseHTTPRequestHandler):
    server_version = "LoopbackHub/1"
    state: HubState
    cdn_origin: str
    is_cdn: bool

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:  # noqa: N802 (http.server naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _send(self, code: int, headers: dict[str, str], data: bytes = b"", body: bool = True):
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body and data:
            self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        with self.state.lock:
            self.state.requests.append((self.command, self.path))
        if self.is_cdn:
            return self._serve_blob(body)
        parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"not found", body)
        repo_id, revision, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        if not any(r == repo_id for r, _ in self.state.files):
            return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"no repo", body)
        commit = self.state.refs.get((repo_id, revision), revision)
        files = self.state.files.get((repo_id, commit))
        if files is None:
            return self._send(404, {"X-Error-Code": "RevisionNotFound"}, b"no rev", body)
        if path not in files:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}
            return self._send(404, headers, b"no entry", body)
        data = files[path]
        sha = hashlib.sha256(data).hexdigest()
        self.state.blobs[sha] = data
        headers = {
            "Location": f"{self.cdn_origin}/blobs/{sha}",
            "X-Repo-Commit": commit,
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',  # the git pointer's etag
        }
        self._send(302, headers, b"", body)

    def _serve_blob(self, body: bool) -> None:
        sha = self.path.rsplit("/", 1)[-1]
        data = self.state.blobs.get(sha)
        if data is None:
            return self._send(404, {}, b"gone", body)
        self._send(
            200, {"ETag": f'"{sha}"', "Content-Type": "application/octet-stream"}, data, body
        )


class LoopbackHub:
    """Two loopback servers (Hub + CDN) sharing one :class:`HubState`."""

    def __init__(self) -> None:
        self.state = HubState()
        self._cdn = self._start(is_cdn=True, cdn_origin="")
        cdn_origin = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._hub = self._start(is_cdn=False, cdn_origin=cdn_origin)
        self.endpoint = f"http://127.0.0.1:{self._hub.server_address[1]}"

    def _start(self, *, is_cdn: bool, cdn_origin: str) -> ThreadingHTTPServer:
        handler = type(
            "Handler",
            (_Handler,),
            {"state": self.state, "cdn_origin": cdn_origin, "is_cdn": is_cdn},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return server

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()
