"""A Hugging Face Hub that serves local folders: the repo-shaped fixture behind the `hf://` tests.

This machine reaches no hub, so the tests point `huggingface_hub` (HF_ENDPOINT) at this server and let
the real client code run: `HfFileSystem` resolves the repo and revision, asks `paths-info` for a file,
lists `tree/`, and reads `resolve/` URLs with HTTP ranges, exactly as against huggingface.co. Only the
endpoints those calls use are served; anything else is a 404 the client reads as "not found".

Example:
    with hub_server({"datasets/acme/problems": tmp_path / "repo"}) as endpoint:
        env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}
        ...   # hf://datasets/acme/problems/data/train.jsonl is tmp_path/repo/data/train.jsonl
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

SHA = "0" * 39 + "1"  # the one revision every served repo has (also reachable as "main")


@contextmanager
def hub_server(repos: dict[str, Path], uploads: Path | None = None):
    """Serve `{"datasets/<owner>/<name>": folder}`; yields the endpoint URL. With `uploads`, repos can
    be created (`HfApi.create_repo`, as `uploads/<type>/<owner>/<name>`) and committed to
    (`upload_folder`: every file sent inline, the Hub's "regular" upload mode)."""
    handler = type("Hub", (_Hub,), {"repos": {k: Path(v) for k, v in repos.items()}, "uploads": uploads})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class _Hub(http.server.BaseHTTPRequestHandler):
    repos: dict[str, Path]
    uploads: Path | None

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._route(body=False)

    def do_GET(self):
        self._route(body=True)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        self._route(body=True)

    def _route(self, body: bool):
        path = unquote(urlsplit(self.path).path)
        if self.command == "POST" and path == "/api/repos/create":
            return self._create()
        if self.command == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(self._body)["content"])
        if m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/preupload/([^/]+)", path):
            files = json.loads(self._body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        if m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/commit/([^/]+)", path):
            return self._commit(f"{m[1]}/{m[2]}")
        if m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self._repo_info(f"{m[1]}/{m[2]}", m[3])
        if m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/paths-info/([^/]+)", path):
            return self._paths_info(f"{m[1]}/{m[2]}", parse_qs(self._body.decode()).get("paths", []))
        if m := re.fullmatch(r"/api/(datasets|models)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            return self._tree(f"{m[1]}/{m[2]}", (m[4] or "").strip("/"))
        if m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(f"{m[1] or 'models/'}{m[2]}", m[4], body)
        self._send(404, b"", {"X-Error-Code": "EntryNotFound"})

    def _create(self):
        ask = json.loads(self._body)
        repo = f"{ask.get('type') or 'model'}s/{ask['organization']}/{ask['name']}"
        if repo in self.repos:
            return self._send(409, b'{"error": "You already created this repo"}', {"Content-Type": "application/json"})
        self.repos[repo] = self.uploads / repo
        self.repos[repo].mkdir(parents=True)
        (self.repos[repo].parent / f"{ask['name']}.visibility").write_text(ask.get("visibility") or "public")
        self._json({"url": f"http://{self.headers['Host']}/{repo.removeprefix('models/')}"})

    def _validate_yaml(self, readme: str):
        """The card's YAML header must parse to a mapping (the Hub checks more: its schema of the keys)."""
        import yaml

        try:
            header = readme.split("---\n", 2)[1] if readme.startswith("---\n") else ""
            meta = yaml.safe_load(header)
            assert isinstance(meta, dict), "the YAML header is not a mapping"
        except (yaml.YAMLError, IndexError, AssertionError) as exc:
            body = json.dumps({"errors": [{"message": f"invalid YAML: {exc}"}]}).encode()
            return self._send(400, body, {"Content-Type": "application/json"})
        self._json({"warnings": []})

    def _commit(self, repo: str):
        import base64

        folder = self._folder(repo)
        if folder is None:
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
        for line in self._body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                target = folder / item["value"]["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(item["value"]["content"]))
        self._json({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{SHA}", "commitOid": SHA})

    def _folder(self, repo: str) -> Path | None:
        return self.repos.get(repo.rstrip("/"))

    def _repo_info(self, repo: str, revision: str | None):
        folder = self._folder(repo)
        if folder is None:
            return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        if revision not in (None, "main", SHA):
            return self._send(404, b'{"error": "Revision not found"}', {"X-Error-Code": "RevisionNotFound"})
        siblings = [{"rfilename": str(p.relative_to(folder))} for p in sorted(folder.rglob("*")) if p.is_file()]
        self._json({"id": repo.split("/", 1)[1], "sha": SHA, "private": False, "siblings": siblings})

    def _entry(self, folder: Path, file: Path) -> dict:
        relative = str(file.relative_to(folder))
        if file.is_dir():
            return {"type": "directory", "path": relative, "oid": hashlib.sha1(relative.encode()).hexdigest()}
        return {"type": "file", "path": relative, "size": file.stat().st_size,
                "oid": hashlib.sha1(file.read_bytes()).hexdigest()}

    def _paths_info(self, repo: str, paths: list[str]):
        folder = self._folder(repo)
        if folder is None:
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
        self._json([self._entry(folder, folder / p) for p in paths if (folder / p).exists()])

    def _tree(self, repo: str, under: str):
        folder = self._folder(repo)
        if folder is None or not (folder / under).is_dir():
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
        self._json([self._entry(folder, p) for p in sorted((folder / under).iterdir())])

    def _resolve(self, repo: str, file: str, body: bool):
        folder = self._folder(repo)
        if folder is None:
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"})
        target = folder / file
        if not target.is_file():
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
        data = target.read_bytes()
        headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": SHA, "Accept-Ranges": "bytes"}
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start, end = int(m[1]), int(m[2]) if m[2] else len(data) - 1
            part = data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
            return self._send(206, part if body else b"", headers, length=len(part))
        self._send(200, data if body else b"", headers, length=len(data))

    def _json(self, value):
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _send(self, status: int, data: bytes, headers: dict, length: int | None = None):
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if data:
            self.wfile.write(data)
