"""A loopback stand-in for the Hugging Face Hub's file endpoints, for real download tests.

It answers ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{path}`` the way the Hub does for
an LFS file: a 302 to a CDN origin carrying ``X-Repo-Commit``, ``X-Linked-Etag`` (the file's
sha256) and ``X-Linked-Size``; the CDN (a second server, so a different origin) serves the
bytes with ``Content-Length`` and ``ETag``. Errors carry the ``X-Error-Code`` values
huggingface_hub maps to its exceptions (RepoNotFound, RevisionNotFound, EntryNotFound).
Every request is recorded so tests can count them.

It also takes uploads the way ``HfApi.create_repo`` and ``create_commit`` send them:
``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}`` (LFS for weights
files, regular for text, as the Hub's default ``.gitattributes`` says), the LFS batch API
(``POST /{repo}.git/info/lfs/objects/batch``, then a basic-transfer ``PUT`` and a verify
``POST``) and ``POST /api/models/{repo}/commit/{rev}`` (NDJSON), which makes a new commit
on the branch. Xet storage is not served: uploading clients need ``HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import base64
import hashlib
import json
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
    # repo_id -> {"private": bool}: repos made by create_repo (they may have no commit yet)
    repos: dict[str, dict[str, object]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def has_repo(self, repo_id: str) -> bool:
        return repo_id in self.repos or any(r == repo_id for r, _ in self.files)

    def add_file(self, repo_id: str, commit: str, path: str, data: bytes) -> None:
        self.files.setdefault((repo_id, commit), {})[path] = data
        self.refs.setdefault((repo_id, "main"), commit)
        self.blobs[hashlib.sha256(data).hexdigest()] = data

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, _ in self.requests if method is None or m == method)


def validate_card(content: str) -> list[dict[str, str]]:
    """The Hub's README metadata checks that matter here: a YAML header, known fields' types."""
    import yaml

    if not content.startswith("---\n") or "\n---\n" not in content[3:]:
        return [{"message": "no YAML metadata header"}]
    try:
        meta = yaml.safe_load(content[4 : content.index("\n---\n", 3)])
    except yaml.YAMLError as exc:
        return [{"message": f"invalid YAML: {exc}"}]
    errors = []
    if not isinstance(meta, dict):
        return [{"message": "metadata is not a mapping"}]
    if meta.get("license") == "other" and not meta.get("license_name"):
        errors.append({"message": "license 'other' needs license_name"})
    if not isinstance(meta.get("tags", []), list):
        errors.append({"message": "tags must be a list"})
    for key in ("library_name", "pipeline_tag", "license"):
        if key in meta and not isinstance(meta[key], str):
            errors.append({"message": f"{key} must be a string"})
    return errors


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
        if not self.state.has_repo(repo_id):
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

    # ------------------------------------------------------------ uploads

    def do_POST(self) -> None:  # noqa: N802
        with self.state.lock:
            self.state.requests.append((self.command, self.path))
        parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
        data = self._body()
        if parts[:3] == ["api", "repos", "create"]:
            return self._create_repo(json.loads(data))
        if parts[-3:] == ["info", "lfs", "objects"] or parts[-1] == "batch":
            return self._lfs_batch(json.loads(data))
        if parts == ["api", "validate-yaml"]:
            errors = validate_card(json.loads(data)["content"])
            return self._json(400 if errors else 200, {"errors": errors, "warnings": []})
        if parts == ["lfs-verify"]:
            oid = json.loads(data)["oid"]
            return self._json(200 if oid in self.state.blobs else 404, {})
        if len(parts) >= 6 and parts[:2] == ["api", "models"]:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            if not self.state.has_repo(repo_id):
                return self._send(404, {"X-Error-Code": "RepoNotFound"}, b"no repo")
            if action == "preupload":
                return self._preupload(json.loads(data))
            if action == "commit":
                return self._commit(repo_id, revision, data)
            if action == "branch":
                if (repo_id, revision) in self.state.refs:
                    return self._json(409, {"error": "Reference already exists"})
                start = (json.loads(data or b"{}") or {}).get("startingPoint") or "main"
                self.state.refs[(repo_id, revision)] = self.state.refs.get((repo_id, start), start)
                return self._json(200, {})
        self._send(404, {}, b"unknown endpoint")

    def do_PUT(self) -> None:  # noqa: N802
        with self.state.lock:
            self.state.requests.append((self.command, self.path))
        oid = self.path.rsplit("/", 1)[-1]
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._send(400, {}, b"sha256 mismatch")
        self.state.blobs[oid] = data
        self._send(200, {}, b"")

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, code: int, value: object) -> None:
        self._send(code, {"Content-Type": "application/json"}, json.dumps(value).encode())

    def _origin(self) -> str:
        return f"http://{self.headers['Host']}"

    def _create_repo(self, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = {"url": f"{self._origin()}/{repo_id}"}
        if self.state.has_repo(repo_id):
            return self._json(409, {**url, "error": "You already created this model repo"})
        self.state.repos[repo_id] = {"private": payload.get("visibility") == "private"}
        self._json(200, url)

    def _preupload(self, payload: dict) -> None:
        lfs_suffixes = (".safetensors", ".onnx", ".pth", ".pt", ".bin")
        files = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(lfs_suffixes) else "regular",
                "shouldIgnore": False,
            }
            for f in payload["files"]
        ]
        self._json(200, {"files": files})

    def _lfs_batch(self, payload: dict) -> None:
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.blobs:  # already stored: nothing to upload
                entry["actions"] = {
                    "upload": {"href": f"{self._origin()}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self._origin()}/lfs-verify"},
                }
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo_id: str, branch: str, data: bytes) -> None:
        lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        parent = self.state.refs.get((repo_id, branch))
        files = dict(self.state.files.get((repo_id, parent), {})) if parent else {}
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.state.blobs:
                    return self._json(422, {"error": f"LFS object {value['oid']} was not uploaded"})
                files[value["path"]] = self.state.blobs[value["oid"]]
            elif item["key"] in {"deletedFile", "deletedFolder"}:
                files.pop(value["path"], None)
        digest = hashlib.sha1(f"{repo_id}\n{branch}\n{parent}".encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha256(files[path]).digest())
        commit = digest.hexdigest()
        with self.state.lock:
            self.state.files[(repo_id, commit)] = files
            self.state.refs[(repo_id, branch)] = commit
        url = f"{self._origin()}/{repo_id}/commit/{commit}"
        self._json(200, {"commitUrl": url, "commitOid": commit})

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
