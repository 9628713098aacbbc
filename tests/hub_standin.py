"""A Hugging Face Hub stand-in on loopback, for testing pushes and pulls with the real client.

It speaks the part of the Hub's HTTP protocol that the official ``huggingface_hub`` client
(2.4, run with ``HF_HUB_DISABLE_XET=1``) uses to create repos, branch, commit regular and LFS
files, tag, list and download.  What the client sends was read from its source
(``hf_api.py``, ``_commit_api.py``, ``lfs.py``, ``file_download.py``,
``_snapshot_download.py``, ``utils/_http.py``); each handler notes the facts it relies on.

State lives on disk under ``root``: a content-addressed object store (``objects/<sha256>``) and,
per repo, ``repo.json``, ``refs.json``, one JSON snapshot per commit (``commits/<oid>.json``:
parents, message, and every file's sha256, size, git oid and whether it is LFS) and an
append-only ``log.jsonl``.  Every request but the LFS upload ``PUT`` (which the client sends
without an Authorization header; it carries a signed URL instead) checks the bearer token.

Faults for tests: ``standin.fail("commit", "500", times=2)`` answers the next two commit calls
with HTTP 500 (``"tag"`` likewise for tag calls); ``standin.fail("lfs_upload", "reset")``
resets the connection halfway through the next LFS upload.  ``standin.requests`` records
method, path, status and whether an Authorization header came (never its value);
``standin.problems`` collects unknown routes and handler crashes.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.onnx", "*.npz", "*.png")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
LFS_MIN_SIZE = 10 * 1024 * 1024
BAD_CREDENTIALS = "Invalid credentials in Authorization header"  # the Hub's X-Error-Message
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"


class Reply(Exception):
    """Raised by handlers to answer with an error status."""

    def __init__(self, status: int, message: str, code: str | None = None, **headers: str):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers
        self.extra: dict = {}


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HubStandin:
    """The server and its on-disk state.  Use as a context manager or call start()/stop()."""

    def __init__(self, root: Path, tokens: dict[str, str]):
        self.root = Path(root)
        self.tokens = dict(tokens)  # token -> user name; a user may write to any namespace
        self.lock = threading.RLock()
        self.faults: dict[str, list[str]] = {"commit": [], "lfs_upload": [], "tag": []}
        self.requests: list[dict] = []
        self.problems: list[str] = []
        self._secret = os.urandom(16)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HubStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail(self, where: str, action: str, times: int = 1) -> None:
        """Answer the next ``times`` calls to ``where`` ('commit', 'lfs_upload') with ``action``
        ('500' or 'reset')."""
        with self.lock:
            self.faults[where] += [action] * times

    def clear_faults(self) -> None:
        with self.lock:
            for pending in self.faults.values():
                pending.clear()

    def _take_fault(self, where: str) -> str | None:
        with self.lock:
            return self.faults[where].pop(0) if self.faults[where] else None

    # ---- storage ----------------------------------------------------------------------------
    def _repo_dir(self, repo: str) -> Path:
        return self.root / "repos" / repo

    def _read(self, path: Path):
        return json.loads(path.read_text())

    def _write(self, path: Path, value) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def put_object(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "objects" / sha
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{sha}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def has_object(self, sha: str, size: int | None = None) -> bool:
        path = self.root / "objects" / sha
        return path.is_file() and (size is None or path.stat().st_size == size)

    def object(self, sha: str) -> bytes:
        return (self.root / "objects" / sha).read_bytes()

    def repo(self, repo: str) -> dict:
        path = self._repo_dir(repo) / "repo.json"
        if not path.is_file():
            raise Reply(404, "Repository not found", "RepoNotFound")
        return self._read(path)

    def refs(self, repo: str) -> dict:
        return self._read(self._repo_dir(repo) / "refs.json")

    def commit(self, repo: str, oid: str) -> dict:
        return self._read(self._repo_dir(repo) / "commits" / f"{oid}.json")

    def resolve(self, repo: str, rev: str) -> str:
        """Commit oid of a branch, tag or (possibly short) commit id."""
        refs = self.refs(repo)
        if rev in refs["heads"]:
            return refs["heads"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        if re.fullmatch(r"[0-9a-f]{5,40}", rev):
            found = [p.stem for p in (self._repo_dir(repo) / "commits").glob(f"{rev}*.json")]
            if len(found) == 1:
                return found[0]
        raise Reply(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def create_repo(self, repo: str, private: bool, author: str) -> None:
        self._write(self._repo_dir(repo) / "repo.json", {"private": private, "created": _now()})
        self._write(self._repo_dir(repo) / "refs.json", {"heads": {}, "tags": {}})
        sha = self.put_object(GITATTRIBUTES.encode())
        files = {
            ".gitattributes": _entry(
                sha, len(GITATTRIBUTES), False, git_oid(GITATTRIBUTES.encode())
            )
        }
        self.add_commit(repo, "main", None, files, "initial commit", "", author)

    def add_commit(self, repo, branch, parent, files, title, message, author) -> str:
        record = {"parents": [parent] if parent else [], "files": files, "title": title}
        record.update(message=message, date=_now(), authors=[author])
        oid = hashlib.sha1(
            json.dumps([record, time.time_ns()], sort_keys=True).encode()
        ).hexdigest()
        record["id"] = oid
        self._write(self._repo_dir(repo) / "commits" / f"{oid}.json", record)
        with open(self._repo_dir(repo) / "log.jsonl", "a") as log:
            log.write(json.dumps({"id": oid, "branch": branch, "title": title}) + "\n")
        refs = self.refs(repo)
        refs["heads"][branch] = oid
        self._write(self._repo_dir(repo) / "refs.json", refs)
        return oid

    def upload_mode(self, path: str, size: int, sample: bytes) -> str:
        name = path.rsplit("/", 1)[-1]
        lfs = any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or size >= LFS_MIN_SIZE
        return "lfs" if (lfs or b"\0" in sample) and size > 0 else "regular"

    def sign(self, repo: str, oid: str) -> str:
        return hmac.new(self._secret, f"{repo}@{oid}".encode(), "sha256").hexdigest()

    def has_lfs(self, repo: str, oid: str, size: int | None = None) -> bool:
        """LFS objects belong to a repo: each repo's uploads are recorded under it."""
        marker = self._repo_dir(repo) / "lfs" / oid
        return marker.is_file() and self.has_object(oid, size)

    def add_lfs(self, repo: str, data: bytes) -> str:
        oid = self.put_object(data)
        (self._repo_dir(repo) / "lfs").mkdir(exist_ok=True)
        (self._repo_dir(repo) / "lfs" / oid).touch()
        return oid


def _entry(sha256: str, size: int, lfs: bool, oid: str) -> dict:
    return {"sha256": sha256, "size": size, "lfs": lfs, "oid": oid}


def _file_oid(entry: dict) -> str:
    """The oid the preupload endpoint reports: sha256 for LFS files, git sha1 for the rest."""
    return entry["sha256"] if entry["lfs"] else entry["oid"]


def _handler_for(hub: HubStandin):
    class Handler(_Handler):
        standin = hub

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: HubStandin

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # ---- plumbing ---------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        hub = self.standin
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.user = None
        record = {"method": method, "path": split.path, "auth": "authorization" in self._lower}
        status = 500
        try:
            handler, match = self._route(method, split.path)
            if handler is None:
                hub.problems.append(f"no route: {method} {split.path}")
                raise Reply(404, "stand-in: no such route")
            if handler != "lfs_put":
                self.body = self._read_body()
                self._authenticate()
            status = getattr(self, f"h_{handler}")(**{k: unquote(v) for k, v in match.items() if v})
        except Reply as reply:
            status = reply.status
            headers = dict(reply.headers)
            if reply.code:
                headers["X-Error-Code"] = reply.code
            if reply.status == 401 and str(reply) == BAD_CREDENTIALS:
                headers["X-Error-Message"] = BAD_CREDENTIALS
            self._send(reply.status, {"error": str(reply), **reply.extra}, headers)
        except _Reset:
            status = "reset"
        except Exception as err:  # a stand-in bug: report it to the test, answer 500
            hub.problems.append(f"{method} {split.path}: {type(err).__name__}: {err}")
            self._send(500, {"error": f"stand-in crashed: {err}"})
        record["status"] = status
        with hub.lock:
            hub.requests.append(record)

    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "harnesses"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"/api/models/{_REPO}/preupload/{_REV}", "preupload"),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", rf"/lfs-upload/{_REPO}/(?P<oid>[0-9a-f]{{64}})", "lfs_put"),
        ("POST", rf"/lfs-verify/{_REPO}", "lfs_verify"),
        ("POST", rf"/api/models/{_REPO}/commit/{_REV}", "commit"),
        ("GET", rf"/api/models/{_REPO}(?:/revision/{_REV})?", "info"),
        ("GET", rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.+))?", "tree"),
        ("GET", rf"/api/models/{_REPO}/refs", "refs"),
        ("GET", rf"/api/models/{_REPO}/commits/{_REV}", "commits"),
        ("POST", rf"/api/models/{_REPO}/tag/{_REV}", "tag"),
        ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", "branch"),
        ("GET", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve"),
    ]

    def _route(self, method: str, path: str):
        for verb, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                return name, match.groupdict()
        return None, {}

    @property
    def _lower(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _read_body(self, limit: int | None = None) -> bytes:
        """The request body (Content-Length or chunked); stops after ``limit`` bytes."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
                if limit is not None and sum(map(len, chunks)) >= limit:
                    return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length if limit is None else min(limit, length))

    def _authenticate(self) -> None:
        """A present token must be valid (401 with the Hub's message otherwise)."""
        value = self._lower.get("authorization")
        if value is None:
            return
        token = value[7:] if value.lower().startswith("bearer ") else ""
        if token not in self.standin.tokens:
            raise Reply(401, BAD_CREDENTIALS)
        self.user = self.standin.tokens[token]

    def _need_user(self) -> str:
        if self.user is None:
            raise Reply(401, "You must be authenticated to do this")
        return self.user

    def _readable(self, repo: str) -> dict:
        info = self.standin.repo(repo)
        if info["private"] and self.user is None:
            raise Reply(401, "Repository not found", "RepoNotFound")
        return info

    def _json(self):
        return json.loads(self.body or b"{}")

    def _send(self, status: int, payload=None, headers=None, raw: bytes | None = None) -> int:
        body = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        kind = "application/octet-stream" if raw is not None else "application/json"
        headers = {"Content-Type": kind, "Content-Length": str(len(body)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _reset(self) -> None:
        """Abort the connection with a TCP reset, as a dropped upload looks to the client."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        raise _Reset

    # ---- handlers ---------------------------------------------------------------------------
    def h_whoami(self):
        user = self._need_user()
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return self._send(200, {"type": "user", "name": user, "fullname": user, "auth": auth})

    def h_harnesses(self):
        # fetched once a day, unauthenticated, by the client's user-agent agent detection
        return self._send(200, {"standardEnvVars": [], "harnesses": {}})

    def h_create_repo(self):
        # create_repo posts {"name", "organization", "visibility"|"private", "type"?}; 409 means
        # "exists" to exist_ok=True; the answer's "url" is parsed by RepoUrl.
        user = self._need_user()
        body = self._json()
        repo = f"{body.get('organization') or user}/{body['name']}"
        private = body.get("visibility", "private" if body.get("private") else "public")
        with self.standin.lock:
            if (self.standin._repo_dir(repo) / "repo.json").exists():
                # create_repo(exist_ok=True) reads "url" from this 409 answer too
                reply = Reply(409, "You already created this model repo")
                reply.extra["url"] = f"{self.standin.url}/{repo}"
                raise reply
            self.standin.create_repo(repo, private == "private", user)
        return self._send(200, {"url": f"{self.standin.url}/{repo}", "name": repo, "id": repo})

    def h_validate_yaml(self):
        # commits that add README.md first post {"content", "repoType"}; json read before status
        return self._send(200, {"errors": [], "warnings": []})

    def h_preupload(self, repo, rev):
        # {"files": [{"path", "sample" (base64 of the first 512 bytes), "size"}]} ->
        # {"files": [{"path", "uploadMode": "lfs"|"regular", "shouldIgnore", "oid"?}]}; the
        # client skips files whose "oid" equals its own (sha256 for LFS, git sha1 otherwise).
        self._need_user()
        self._readable(repo)
        with self.standin.lock:
            tree = self.standin.commit(repo, self.standin.resolve(repo, rev))["files"]
        files = []
        for item in self._json()["files"]:
            sample = base64.b64decode(item["sample"])
            mode = self.standin.upload_mode(item["path"], item["size"], sample)
            answer = {"path": item["path"], "uploadMode": mode, "shouldIgnore": False}
            if item["path"] in tree:
                answer["oid"] = _file_oid(tree[item["path"]])
            files.append(answer)
        return self._send(200, {"files": files, "commitOid": None})

    def h_lfs_batch(self, repo):
        # git-lfs batch API: {"operation": "upload", "objects": [{"oid", "size"}], "transfers",
        # "hash_algo", "ref"}.  Objects already stored get no "actions" (the client skips them).
        self._need_user()
        self._readable(repo)
        body = self._json()
        if body.get("operation") != "upload":
            raise Reply(422, "the stand-in serves LFS uploads only")
        objects = []
        for obj in body["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.standin.has_lfs(repo, obj["oid"], obj["size"]):
                sig = self.standin.sign(repo, obj["oid"])
                put = f"{self.standin.url}/lfs-upload/{repo}/{obj['oid']}?sig={sig}"
                verify = f"{self.standin.url}/lfs-verify/{repo}"
                answer["actions"] = {"upload": {"href": put}, "verify": {"href": verify}}
            objects.append(answer)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        return self._send(200, {"transfer": "basic", "objects": objects}, headers)

    def h_lfs_put(self, repo, oid):
        # The client PUTs the raw bytes to the href, with no Authorization header (signed URL).
        if not hmac.compare_digest(self.query.get("sig", ""), self.standin.sign(repo, oid)):
            self._read_body()
            raise Reply(403, "bad signature")
        if self.standin._take_fault("lfs_upload") == "reset":
            self._read_body(limit=64 * 1024)
            self._reset()
        data = self._read_body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise Reply(400, "content does not match the oid")
        self.standin.add_lfs(repo, data)
        return self._send(200, raw=b"", headers={"ETag": f'"{oid}"'})

    def h_lfs_verify(self, repo):
        self._need_user()
        body = self._json()
        if not self.standin.has_lfs(repo, body["oid"], body["size"]):
            raise Reply(404, "object not uploaded")
        return self._send(200, {"success": True})

    def h_commit(self, repo, rev):
        # NDJSON: {"key": "header", "value": {"summary", "description", "parentCommit"?}}, then
        # "file" {path, content (base64), encoding}, "lfsFile" {path, algo, oid, size},
        # "deletedFile" / "deletedFolder" {path}.  Answer {"commitOid", "commitUrl"}.
        user = self._need_user()
        fault = self.standin._take_fault("commit")
        if fault == "reset":
            self._reset()
        if fault == "500":
            raise Reply(500, "Internal Error - We're working hard to fix this as soon as possible!")
        self._readable(repo)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise Reply(400, "the first line must be the header")
        header = lines[0]["value"]
        self.repo_id = repo
        with self.standin.lock:
            head = self.standin.refs(repo)["heads"].get(rev)
            if head is None:
                raise Reply(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            if header.get("parentCommit") and not head.startswith(header["parentCommit"]):
                raise Reply(412, "A commit has happened since. Please refresh and try again.")
            files = dict(self.standin.commit(repo, head)["files"])
            for line in lines[1:]:
                self._apply(files, line["key"], line["value"])
            oid = self.standin.add_commit(
                repo, rev, head, files, header["summary"], header.get("description", ""), user
            )
        url = f"{self.standin.url}/{repo}/commit/{oid}"
        return self._send(200, {"commitOid": oid, "commitUrl": url, "pullRequestUrl": None})

    def _apply(self, files: dict, key: str, value: dict) -> None:
        path = value["path"]
        if key == "file":
            data = base64.b64decode(value["content"])
            files[path] = _entry(self.standin.put_object(data), len(data), False, git_oid(data))
        elif key == "lfsFile":
            if not self.standin.has_lfs(self.repo_id, value["oid"], value.get("size")):
                raise Reply(422, f"LFS object {value['oid']} was not uploaded")
            size = (self.standin.root / "objects" / value["oid"]).stat().st_size
            files[path] = _entry(value["oid"], size, True, git_oid(lfs_pointer(value["oid"], size)))
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise Reply(404, "A file with this name doesn't exist", "EntryNotFound")
        elif key == "deletedFolder":
            inside = [p for p in files if p.startswith(path.rstrip("/") + "/")]
            if not inside:
                raise Reply(404, "A folder with this name doesn't exist", "EntryNotFound")
            for p in inside:
                del files[p]
        else:
            raise Reply(400, f"unknown commit operation {key!r}")

    def h_info(self, repo, rev="main"):
        # model_info / repo_info: GET /api/models/{repo}[/revision/{rev}]; snapshot_download
        # needs "sha", upload_folder-like callers read "siblings".
        info = self._readable(repo)
        with self.standin.lock:
            commit = self.standin.commit(repo, self.standin.resolve(repo, rev))
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling = {"rfilename": path}
            if self.query.get("blobs") in ("true", "True", "1"):
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    pointer = len(lfs_pointer(entry["sha256"], entry["size"]))
                    sibling["lfs"] = {"sha256": entry["sha256"], "size": entry["size"]}
                    sibling["lfs"]["pointerSize"] = pointer
            siblings.append(sibling)
        payload = {"_id": repo, "id": repo, "modelId": repo, "author": repo.split("/")[0]}
        payload.update(sha=commit["id"], private=info["private"], lastModified=commit["date"])
        payload.update(createdAt=info["created"], siblings=siblings, tags=[], downloads=0, likes=0)
        return self._send(200, payload)

    def h_tree(self, repo, rev, path=""):
        # GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...&expand=...: a list of
        # {"type": "file", "path", "oid", "size", "lfs"?: {"oid", "size", "pointerSize"}} and
        # {"type": "directory", "path", "oid", "size": 0}; no Link header (one page).
        self._readable(repo)
        recursive = self.query.get("recursive", "false").lower() in ("true", "1")
        with self.standin.lock:
            files = self.standin.commit(repo, self.standin.resolve(repo, rev))["files"]
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        below = {p: e for p, e in files.items() if p.startswith(prefix)}
        if prefix and not below:
            raise Reply(404, f"{path} does not exist", "EntryNotFound")
        entries, folders = [], set()
        for name, entry in sorted(below.items()):
            rest = name[len(prefix) :].split("/")
            for depth in range(1, len(rest) if recursive else min(2, len(rest))):
                folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                item = {"type": "file", "path": name, "oid": entry["oid"], "size": entry["size"]}
                if entry["lfs"]:
                    pointer = len(lfs_pointer(entry["sha256"], entry["size"]))
                    item["lfs"] = {"oid": entry["sha256"], "size": entry["size"]}
                    item["lfs"]["pointerSize"] = pointer
                entries.append(item)
        for folder in sorted(folders):
            oid = hashlib.sha1(folder.encode()).hexdigest()
            entries.append({"type": "directory", "path": folder, "oid": oid, "size": 0})
        return self._send(200, entries)

    def h_refs(self, repo):
        # list_repo_refs reads "branches", "converts", "tags" (and "pullRequests" on request)
        self._readable(repo)
        with self.standin.lock:
            refs = self.standin.refs(repo)

        def refs_of(kind, prefix):
            return [
                {"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": c}
                for n, c in sorted(refs[kind].items())
            ]

        payload = {"branches": refs_of("heads", "heads"), "tags": refs_of("tags", "tags")}
        return self._send(200, {**payload, "converts": [], "pullRequests": []})

    def h_commits(self, repo, rev):
        # list_repo_commits: [{"id", "title", "message", "date", "authors": [{"user"}]}], newest
        # first, paginated by a Link header (one page here)
        self._readable(repo)
        out = []
        with self.standin.lock:
            oid = self.standin.resolve(repo, rev)
            while oid:
                commit = self.standin.commit(repo, oid)
                authors = [{"user": a, "avatar": ""} for a in commit["authors"]]
                out.append({"id": oid, "title": commit["title"], "message": commit["message"]})
                out[-1].update(date=commit["date"], authors=authors)
                oid = commit["parents"][0] if commit["parents"] else None
        return self._send(200, out)

    def h_tag(self, repo, rev):
        # create_tag: POST .../tag/{revision} {"tag", "message"?}; 409 if it exists
        self._need_user()
        self._readable(repo)
        if self.standin._take_fault("tag") == "500":
            raise Reply(500, "Internal Error")
        tag = self._json().get("tag", "")
        if not re.fullmatch(r"[\w.][\w.\-/]*", tag) or ".." in tag:
            raise Reply(400, f"invalid tag name {tag!r}")
        with self.standin.lock:
            oid = self.standin.resolve(repo, rev)
            refs = self.standin.refs(repo)
            if tag in refs["tags"]:
                raise Reply(409, "Tag already exists")
            refs["tags"][tag] = oid
            self.standin._write(self.standin._repo_dir(repo) / "refs.json", refs)
        return self._send(200, {})

    def h_branch(self, repo, branch):
        # create_branch: POST .../branch/{branch} {"startingPoint"?}; 409 if it exists
        self._need_user()
        self._readable(repo)
        start = self._json().get("startingPoint") or "main"
        with self.standin.lock:
            refs = self.standin.refs(repo)
            if branch in refs["heads"]:
                raise Reply(409, "Reference already exists")
            refs["heads"][branch] = self.standin.resolve(repo, start)
            self.standin._write(self.standin._repo_dir(repo) / "refs.json", refs)
        return self._send(200, {})

    def h_resolve(self, repo, rev, path):
        # hf_hub_download: HEAD then GET /{repo}/resolve/{rev}/{path}.  It needs X-Repo-Commit
        # and an ETag (git sha1; for LFS files X-Linked-Etag = sha256 and X-Linked-Size).
        self._readable(repo)
        with self.standin.lock:
            oid = self.standin.resolve(repo, rev)
            entry = self.standin.commit(repo, oid)["files"].get(path)
        if entry is None:
            raise Reply(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": oid})
        headers = {"X-Repo-Commit": oid, "ETag": f'"{entry["oid"]}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers["ETag"] = f'"{entry["sha256"]}"'
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"'})
            headers["X-Linked-Size"] = str(entry["size"])
        data = self.standin.object(entry["sha256"])
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted and self.command == "GET":
            start = int(wanted[1])
            end = int(wanted[2]) if wanted[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, raw=data[start : end + 1], headers=headers)
        return self._send(200, raw=data, headers=headers)


class _Reset(Exception):
    """The handler reset the connection; nothing more is sent."""
