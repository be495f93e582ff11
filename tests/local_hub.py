"""A local stand-in for the Hugging Face Hub's HTTP API, for tests that push datasets.

`LocalHub` is an HTTP server on 127.0.0.1 (a free port, a thread of the test process) that
speaks just enough of the Hub's API for the real, unpatched `huggingface_hub.HfApi` and
`datasets.DatasetDict.push_to_hub` to create a dataset repository, commit files to it and read
them back. Each repository is a folder, `root/<namespace>/<name>`, holding the files of its
latest commit (there is no history: the only revisions are `main` and the latest commit's id).

How files travel, as on the Hub: the preupload endpoint answers "regular" for text files (their
bytes then ride inline, base64, in the commit) and "lfs" for binary ones such as the parquet
shards (uploaded before the commit, which then only names them by sha256). It has to be "lfs"
for the shards: `datasets` deletes each shard's temporary file right after
`preupload_lfs_files`, so a "regular" shard is gone by commit time.

For an "lfs" file huggingface_hub 2.4 picks the transfer itself: Xet whenever `hf_xet` is
installed and HF_HUB_DISABLE_XET is not set (`_upload_files` in huggingface_hub/_commit_api.py;
no answer of the server changes that), else the LFS batch API with the "basic" transfer: one
PUT per object, then a verify call. This server implements the latter only, so `use_hub` sets
HF_HUB_DISABLE_XET.

A request the server has no route for is answered 404 and kept in `LocalHub.unknown`, so a test
can assert that the client asked for nothing this stand-in does not know.
"""

import base64
import hashlib
import json
import re
import shutil
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"
OID = r"(?P<oid>[0-9a-f]{64})"

# Binary files go to LFS. The Hub decides from the repository's .gitattributes (whose default
# lists *.parquet, *.arrow, ...) and from a sample of the file's first bytes; so does this.
LFS_SUFFIXES = (".parquet", ".arrow")


def is_lfs(path: str, head: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or b"\0" in head[:512]


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content, which the Hub reports as a regular file's `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LocalHub:
    """The server and the repositories it holds. Use as a context manager (starts and stops
    the server thread); `url` is what `HF_ENDPOINT` should be."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.visibility: dict[str, str | None] = {}  # repo id -> what the create call asked
        self.sha: dict[str, str] = {}  # repo id -> id of its latest commit
        self.commits: list[tuple[str, str]] = []  # (repo id, summary), oldest first
        self.lfs: dict[str, bytes] = {}  # sha256 -> content of the LFS objects uploaded
        self.requests: list[str] = []  # "METHOD /path" of every request, in order
        self.unknown: list[str] = []  # those that had no route
        self.failures: list[str] = []  # requests whose handler raised (answered 500)
        self.lock = threading.Lock()  # one request changes or reads a repository at a time
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        # (a short poll interval: shutdown() waits for one)
        serve = {"poll_interval": 0.05}
        threading.Thread(target=self.server.serve_forever, kwargs=serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def folder(self, repo_id: str) -> Path:
        return self.root / repo_id

    def files(self, repo_id: str) -> list[str]:
        """Paths of the repository's files, relative, `/`-separated, sorted."""
        folder = self.folder(repo_id)
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    # -- what the routes need -------------------------------------------------------------------

    def entry(self, repo_id: str, path: str) -> dict | None:
        """A file or folder as the Hub's tree endpoint describes it. An LFS
        file also has `lfs` (its sha256); its `oid` on the Hub would be the pointer file's."""
        target = self.folder(repo_id) / path
        if target.is_file():
            data = target.read_bytes()
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if is_lfs(path, data):
                sha256 = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            return entry
        if target.is_dir() and path:
            return {
                "type": "directory",
                "path": path,
                "oid": hashlib.sha1(path.encode()).hexdigest(),
            }
        return None

    def info(self, repo_id: str) -> dict:
        """The fields of `GET /api/datasets/{repo}` that `DatasetInfo` reads."""
        return {
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": self.sha[repo_id],
            "private": self.visibility[repo_id] == "private",
            "lastModified": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "siblings": [{"rfilename": path} for path in self.files(repo_id)],
        }


def _handler_for(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

        # -- plumbing ---------------------------------------------------------------------------

        def do_GET(self):
            self.route("GET")

        def do_POST(self):
            self.route("POST")

        def do_PUT(self):
            self.route("PUT")

        def route(self, method):
            hub.requests.append(f"{method} {self.path}")
            path = unquote(urlsplit(self.path).path)
            for verb, pattern, handler in ROUTES:
                match = re.fullmatch(pattern, path)
                if verb == method and match:
                    try:
                        with hub.lock:
                            return handler(self, **match.groupdict())
                    except Exception as error:  # a bug here, or a request it cannot parse
                        hub.failures.append(f"{method} {self.path}: {error!r}")
                        return self.error(500, f"local Hub: {error!r}")
            hub.unknown.append(f"{method} {self.path}")
            self.error(404, "no such route in the local Hub")

        def body(self) -> bytes:
            # (the client sends every body with a Content-Length, never chunked)
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def query(self) -> dict[str, list[str]]:
            return parse_qs(urlsplit(self.path).query)

        def reply(self, status, payload=None, *, data=None, headers=None):
            data = json.dumps(payload).encode() if data is None else data
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if "Content-Type" not in (headers or {}):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, message, code=None, **extra):
            """huggingface_hub turns `X-Error-Code` into its exception classes (RepoNotFound ->
            RepositoryNotFoundError, ...)."""
            headers = {"X-Error-Code": code, "X-Error-Message": message} if code else {}
            self.reply(status, {"error": message, **extra}, headers=headers)

        def known_repo(self, repo, rev=None) -> bool:
            """Answer 404 the way the Hub does when the repository or revision is unknown."""
            if repo not in hub.sha:
                self.error(404, "Repository not found", "RepoNotFound")
                return False
            if rev is not None and rev not in ("main", hub.sha[repo]):
                self.error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                return False
            return True

        # -- endpoints --------------------------------------------------------------------------

        def agent_harnesses(self):
            """huggingface_hub fetches the list of AI-agent harnesses for its user agent
            (utils/_detect_agent.py), once a day and best effort. None here: no agent."""
            self.reply(200, {"standardEnvVars": [], "harnesses": {}})

        def create_repo(self):
            """`HfApi.create_repo`: {name, organization, type, visibility}. 409 (with the url)
            if it exists, which `exist_ok=True` accepts."""
            payload = json.loads(self.body())
            if payload.get("type") != "dataset":
                return self.error(400, "the local Hub holds dataset repositories only")
            repo = f"{payload['organization']}/{payload['name']}"
            url = f"{hub.url}/datasets/{repo}"
            if repo in hub.sha:
                return self.error(409, "You already created this dataset repo", url=url)
            hub.visibility[repo] = payload.get("visibility")
            hub.sha[repo] = hashlib.sha1(f"initial commit of {repo}".encode()).hexdigest()
            hub.folder(repo).mkdir(parents=True)
            self.reply(200, {"url": url, "name": repo, "id": repo})

        def validate_yaml(self):
            """`HfApi.create_commit` sends a README.md's metadata here before anything else.
            The Hub checks it against its schema; the tests load the card themselves."""
            self.reply(200, {"errors": [], "warnings": []})

        def repo_info(self, repo, rev=None):
            """`HfApi.repo_info` (datasets asks it for the id of the commit to build on) and
            `HfFileSystem`, which resolves revisions with it."""
            if self.known_repo(repo, rev):
                self.reply(200, hub.info(repo))

        def preupload(self, repo, rev):
            """`preupload_lfs_files` asks how each file is to travel, given its path and first
            bytes: "regular" or "lfs" (see the module docstring). `oid` is that of the file
            already there (git blob id, or sha256 for LFS), so that the client leaves out of
            the commit files that have not changed, as against the Hub."""
            if not self.known_repo(repo, rev):
                return
            files = []
            for file in json.loads(self.body())["files"]:
                mode = (
                    "lfs" if is_lfs(file["path"], base64.b64decode(file["sample"])) else "regular"
                )
                current = hub.entry(repo, file["path"])
                oid = None
                if current and current["type"] == "file":
                    oid = current["lfs"]["oid"] if "lfs" in current else current["oid"]
                files.append(
                    {"path": file["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid}
                )
            self.reply(200, {"files": files, "commitOid": hub.sha[repo]})

        def lfs_batch(self, repo):
            """The git-LFS batch API (`post_lfs_batch_info`): for each object not stored yet,
            where to PUT it ("basic" transfer) and where to verify it. Objects already stored
            get no actions, which the client takes as "already uploaded"."""
            if not self.known_repo(repo):
                return
            request = json.loads(self.body())
            if request["operation"] != "upload" or "basic" not in request["transfers"]:
                return self.error(400, f"the local Hub takes basic uploads only: {request}")
            objects = []
            for obj in request["objects"]:
                if obj["oid"] not in hub.lfs:
                    obj = {
                        **obj,
                        "actions": {
                            "upload": {"href": f"{hub.url}/lfs-objects/{obj['oid']}"},
                            "verify": {"href": f"{hub.url}/lfs-objects/{obj['oid']}/verify"},
                        },
                    }
                objects.append(obj)
            self.reply(200, {"transfer": "basic", "objects": objects})

        def lfs_upload(self, oid):
            """The "basic" transfer's PUT of one object's bytes (on the Hub, to S3)."""
            data = self.body()
            if hashlib.sha256(data).hexdigest() != oid:
                return self.error(400, f"the content's sha256 is not {oid}")
            hub.lfs[oid] = data
            self.reply(200, {})

        def lfs_verify(self, oid):
            """After the PUT the client asks whether the object arrived whole: {oid, size}."""
            request = json.loads(self.body())
            if len(hub.lfs.get(oid, b"")) != request["size"] or request["oid"] != oid:
                return self.error(404, f"no LFS object {oid} of {request['size']} bytes")
            self.reply(200, {})

        def commit(self, repo, rev):
            """`create_commit`: ndjson, a header line ({summary, description, parentCommit?})
            then one line per operation: file (base64 content), lfsFile (an uploaded object by
            sha256), deletedFile, deletedFolder. A parentCommit that is not the latest commit
            is refused with 412, as on the Hub (datasets then retries)."""
            if not self.known_repo(repo, rev):
                return
            if self.query().get("create_pr"):
                return self.error(400, "the local Hub has no pull requests")
            lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
            header = lines[0]["value"]
            if header.get("parentCommit", hub.sha[repo]) != hub.sha[repo]:
                return self.error(412, "A commit has happened since. Please refresh and try again.")
            missing = [
                line["value"]["oid"]
                for line in lines[1:]
                if line["key"] == "lfsFile" and line["value"]["oid"] not in hub.lfs
            ]
            if missing:
                return self.error(400, f"LFS objects never uploaded: {missing}")
            folder = hub.folder(repo)
            for line in lines[1:]:
                key, value = line["key"], line["value"]
                target = folder / value["path"]
                if key in ("file", "lfsFile"):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if key == "file":
                        target.write_bytes(base64.b64decode(value["content"]))
                    else:
                        target.write_bytes(hub.lfs[value["oid"]])
                elif key == "deletedFile":
                    target.unlink()
                elif key == "deletedFolder":
                    shutil.rmtree(target)
                else:  # copies: nhr never asks for them
                    return self.error(400, f"the local Hub does not take {key!r} operations")
            sha = hashlib.sha1((hub.sha[repo] + json.dumps(lines)).encode()).hexdigest()
            hub.sha[repo] = sha
            hub.commits.append((repo, header["summary"]))
            commit_url = f"{hub.url}/datasets/{repo}/commit/{sha}"
            self.reply(200, {"commitUrl": commit_url, "commitOid": sha, "pullRequestUrl": None})

        def tree(self, repo, rev, path=""):
            """`list_repo_tree`, which `HfFileSystem` uses to list and glob (datasets globs
            `data/*` to delete the shards of an earlier push). One page, no `Link: next`."""
            if not self.known_repo(repo, rev):
                return
            path = (path or "").strip("/")
            folder = hub.folder(repo) / path
            if not folder.is_dir():
                return self.error(404, f"{path} does not exist", "EntryNotFound")
            recursive = self.query().get("recursive") == ["true"]
            children = folder.rglob("*") if recursive else folder.iterdir()
            rel = [p.relative_to(hub.folder(repo)).as_posix() for p in sorted(children)]
            self.reply(200, [hub.entry(repo, p) for p in rel])

        def resolve(self, repo, rev, path):
            """File download, `GET /datasets/{repo}/resolve/{rev}/{path}`: how `HfFileSystem`
            reads the README.md already there (datasets keeps its text and adds
            `dataset_info`)."""
            if not self.known_repo(repo, rev):
                return
            target = hub.folder(repo) / path
            if not target.is_file():
                return self.error(404, f"{path} does not exist", "EntryNotFound")
            data = target.read_bytes()
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{git_blob_id(data)}"',
                "X-Repo-Commit": hub.sha[repo],
            }
            self.reply(200, data=data, headers=headers)

    ROUTES = [
        ("GET", r"/api/agent-harnesses", Handler.agent_harnesses),
        ("POST", r"/api/repos/create", Handler.create_repo),
        ("POST", r"/api/validate-yaml", Handler.validate_yaml),
        ("GET", rf"/api/datasets/{REPO}", Handler.repo_info),
        ("GET", rf"/api/datasets/{REPO}/revision/{REV}", Handler.repo_info),
        ("POST", rf"/api/datasets/{REPO}/preupload/{REV}", Handler.preupload),
        ("POST", rf"/datasets/{REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
        ("PUT", rf"/lfs-objects/{OID}", Handler.lfs_upload),
        ("POST", rf"/lfs-objects/{OID}/verify", Handler.lfs_verify),
        ("POST", rf"/api/datasets/{REPO}/commit/{REV}", Handler.commit),
        ("GET", rf"/api/datasets/{REPO}/tree/{REV}(?:/(?P<path>.*))?", Handler.tree),
        ("GET", rf"/datasets/{REPO}/resolve/{REV}/(?P<path>.+)", Handler.resolve),
    ]
    return Handler


# -- pointing the clients at a local Hub ---------------------------------------------------------


def use_hub(monkeypatch, endpoint: str, home: Path) -> None:
    """Point huggingface_hub and datasets at `endpoint` with a fake token and caches under
    `home`. Both libraries read their environment once, at import (huggingface_hub.constants,
    datasets.config), and the test process has imported them already, so the module-level
    values are patched along with the environment. conftest.py sets HF_HUB_OFFLINE=1 for the
    whole suite; it is lifted here for huggingface_hub only (datasets' own offline flag stays
    on: the push does not read it, and it keeps `load_dataset` from pinging S3 for download
    counts)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": "hf_localHubFakeToken",
        "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(home / "datasets"),
    }.items():
        monkeypatch.setenv(name, value)

    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    url_template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url_template)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # LFS "basic" uploads (module docstring)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    # where the agent-harness list above is cached
    monkeypatch.setattr(hub_constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    hub_datasets_url = endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", hub_datasets_url)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)


def forbid_network(monkeypatch) -> list:
    """Make every connection and name lookup of the process to anything but 127.0.0.1 fail
    (an OSError, as a network that is down would give) and record it in the returned list,
    for the test to assert empty: the libraries may swallow the error."""
    attempts = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "127.0.0.1":
            attempts.append(address)
            raise ConnectionRefusedError(f"test: no network beyond 127.0.0.1 ({address})")
        return connect(sock, address)

    def local_getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            attempts.append(host)
            raise socket.gaierror(f"test: no name lookups ({host})")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", local_connect)
    monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)
    return attempts
