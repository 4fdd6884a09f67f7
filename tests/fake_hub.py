"""A Hugging Face Hub stand-in on 127.0.0.1 for the download tests: the Hub's URL scheme, tiny files.

It answers what ``huggingface_hub`` asks (``HF_ENDPOINT`` pointed at it): ``/api/models/{repo}[/revision/{rev}]``
(repository info: commit sha, gated flag, siblings), ``/api/models/{repo}/tree/{rev}`` (the file tree with sizes and
the LFS sha256 of every file), and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (the file, with ``X-Repo-Commit``,
``ETag`` and HTTP range requests). Plain ``/files/{name}`` URLs stand for direct downloads (torch hub checkpoints).

Knobs for the tests: ``gated`` repositories answer 401 ``X-Error-Code: GatedRepo`` to a download without an
``Authorization`` header; ``corrupt`` paths are served with other bytes of the same size (a published sha256 that
does not match); ``stall[path] = n`` sends the first ``n`` bytes of that file and then waits until ``release`` is
set (a transfer cut by a kill). ``requests`` records every (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class HubState:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    urls: dict[str, bytes] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    corrupt: set[tuple[str, str]] = field(default_factory=set)
    stall: dict[str, int] = field(default_factory=dict)
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()


def _tree_entry(path: str, data: bytes) -> dict:
    digest = sha256(data)
    return {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path,
            "lfs": {"oid": digest, "size": len(data), "pointerSize": 134}}


class _Handler(http.server.BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send_json(self, obj, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str | None = None, message: str = "") -> None:
        body = json.dumps({"error": message or code or "error"}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message or code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _repo_and_rest(self, parts: list[str]) -> tuple[str, list[str]] | None:
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in self.state.repos:
            return f"{parts[0]}/{parts[1]}", parts[2:]
        return None

    def _serve(self) -> None:
        state = self.state
        parsed = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
        state.requests.append((self.command, parsed.path, self.headers.get("Range")))
        if parts[:2] == ["api", "models"]:
            found = self._repo_and_rest(parts[2:])
            if found is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            repo, rest = found
            files = state.repos[repo]
            if not rest or rest[0] == "revision":
                return self._send_json({
                    "id": repo, "modelId": repo, "sha": state.commit(repo), "private": False,
                    "gated": "manual" if repo in state.gated else False, "disabled": False, "tags": [],
                    "siblings": [{"rfilename": path} for path in files],
                })
            if rest[0] == "tree":
                return self._send_json([_tree_entry(path, data) for path, data in files.items()])
            return self._error(404)
        if parts[0] == "files":
            data = state.urls.get("/".join(parts[1:]))
            if data is None:
                return self._error(404)
            return self._send_bytes("/".join(parts[1:]), data, {})
        found = self._repo_and_rest(parts)
        if found is None or len(found[1]) < 3 or found[1][0] != "resolve":
            return self._error(404, "RepoNotFound", "Repository not found")
        repo, rest = found
        path = "/".join(rest[2:])
        if repo in state.gated and not self.headers.get("Authorization"):
            return self._error(401, "GatedRepo", f"Access to model {repo} is restricted. You must have access "
                                                 "to it and be authenticated to access it.")
        data = state.repos[repo].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        if (repo, path) in state.corrupt:
            data = bytes(255 - b for b in data)
        return self._send_bytes(path, data, {"X-Repo-Commit": state.commit(repo),
                                             "ETag": f'"{sha256(state.repos[repo][path])}"'})

    def _send_bytes(self, name: str, data: bytes, headers: dict[str, str]) -> None:
        start = 0
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start = int(ranged[len("bytes="):].split("-")[0] or 0)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:]
        cut = self.state.stall.get(name)
        if cut is not None and start < cut:
            self.wfile.write(body[: cut - start])
            self.wfile.flush()
            self.state.stalled.set()
            self.state.release.wait(timeout=60)
            self.close_connection = True
            return
        self.wfile.write(body)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): a connection to it is refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeHub:
    """``with FakeHub() as hub: hub.url ...``: the server on a free loopback port, in a daemon thread."""

    def __init__(self) -> None:
        self.state = HubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.state.release.set()
        self.server.shutdown()
        self.server.server_close()
