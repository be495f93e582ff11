"""`nhr label RUN --sample N`: a local rating page for human raters.

One process, bound to 127.0.0.1, no account: a rater types a name and rates the sample
(nhr/label_sample.py) one triplet at a time, source and edited image side by side with the
instruction, on the two 1-5 scales of the paper (arXiv 2507.14119). Every rating is saved at
once: each rater's ratings are one Parquet file, RUN/labels/page-<name>.parquet, written whole
through the run's storage, so a killed server or a reloaded page loses nothing and a rater
resumes where they stopped (a rating given again replaces the earlier one).

Safety: model-written strings (instructions, categories) reach the page only as JSON and are
shown with `textContent`, never parsed as HTML; the Content-Security-Policy allows no inline
script; requests must name a loopback address (127.0.0.1, localhost or [::1], any port, so a
forwarded port works) as their Host (no DNS rebinding) and ratings must come as JSON (no
cross-site form posts). A malformed request gets a 400 with a JSON error, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nhr.labels import LABELS_FOLDER, LabelsError, read_labels, validate_row, write_labels

PAGE_PREFIX = "page-"
MAX_BODY = 64 * 1024
MAX_RATER = 80
# Loopback names with any port: a DNS-rebinding page has a foreign name in Host, while an SSH
# forward (`ssh -L 9000:127.0.0.1:8765`) keeps a loopback name but changes the port.
LOOPBACK_HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?", re.IGNORECASE)


def rater_key(rater: str) -> str:
    """The file of one rater's ratings: a readable slug plus a digest, so two names that slug
    alike still get their own file."""
    slug = re.sub(r"[^a-z0-9]+", "-", rater.lower()).strip("-")[:40] or "rater"
    digest = hashlib.sha256(rater.encode("utf-8")).hexdigest()[:8]
    return f"{LABELS_FOLDER}/{PAGE_PREFIX}{slug}-{digest}.parquet"


class RatingSession:
    """The sample, and the ratings given on the page so far (per rater, per item)."""

    def __init__(self, store: Any, sample: list[dict[str, Any]]) -> None:
        self.store = store
        self.sample = sample
        self.by_item = {item["item"]: item for item in sample}
        self.images = {item[field] for item in sample for field in ("source_image", "edited_image")}
        self.lock = threading.Lock()
        self.ratings: dict[str, dict[str, dict[str, Any]]] = {}
        for name in store.storage.names(LABELS_FOLDER):
            if name.startswith(PAGE_PREFIX) and name.endswith(".parquet"):
                for row in read_labels(store.where(f"{LABELS_FOLDER}/{name}")):
                    self.ratings.setdefault(row["rater"], {})[row["item"]] = row

    def items_json(self) -> list[dict[str, Any]]:
        return [
            {
                "item": item["item"],
                "instruction": item["instruction"],
                "category": item["category"],
                "source": f"/image/{item['source_image']}",
                "edited": f"/image/{item['edited_image']}",
            }
            for item in self.sample
        ]

    def progress(self, rater: str) -> dict[str, Any]:
        with self.lock:
            given = self.ratings.get(rater, {})
            mine = {item: row for item, row in given.items() if item in self.by_item}
            return {
                "rater": rater,
                "total": len(self.sample),
                "rated": {
                    item: [row["instruction_score"], row["aesthetics_score"]]
                    for item, row in mine.items()
                },
                # the page shows a saved comment again, so saving again does not wipe it
                "comments": {item: row["comment"] for item, row in mine.items() if row["comment"]},
            }

    def rate(self, body: dict[str, Any]) -> dict[str, Any]:
        rater = body.get("rater")
        if not isinstance(rater, str) or not rater.strip() or len(rater) > MAX_RATER:
            raise LabelsError(f"rating: a rater name of 1 to {MAX_RATER} characters is needed")
        rater = rater.strip()
        item_id = body.get("item")
        # isinstance first: an unhashable id (a list) must not reach the dict lookup
        item = self.by_item.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise LabelsError("rating: not an item of this sample")
        comment = body.get("comment") or None
        if comment is not None and not isinstance(comment, str):
            raise LabelsError("rating: the comment must be text")
        row = validate_row(
            "rating",
            item["item"],
            {
                "item": item["item"],
                "instruction": item["instruction"],
                "category": item["category"],
                "rater": rater,
                "instruction_score": body.get("instruction_score"),
                "aesthetics_score": body.get("aesthetics_score"),
                "comment": comment,
            },
        )
        with self.lock:
            given = self.ratings.setdefault(rater, {})
            given[row["item"]] = row
            write_labels(self.store.storage, rater_key(rater), list(given.values()))
        return self.progress(rater)


def make_server(session: RatingSession, port: int = 0) -> ThreadingHTTPServer:
    """The page's HTTP server on 127.0.0.1 (port 0: a free one); call serve_forever()."""

    class Handler(_Handler):
        pass

    Handler.session = session
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


class _Handler(BaseHTTPRequestHandler):
    session: RatingSession
    server_version = "nhr-label"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal is the UI
        pass

    def _host_ok(self) -> bool:
        return LOOPBACK_HOST.fullmatch(self.headers.get("Host") or "") is not None

    def _send(self, status: int, body: bytes, kind: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "
            "style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        )
        self.send_header("Cache-Control", "max-age=86400, immutable" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._send(HTTPStatus.FORBIDDEN, b"wrong host", "text/plain")
        path, _, query = self.path.partition("?")
        if path == "/":
            return self._send(HTTPStatus.OK, PAGE.encode("utf-8"), "text/html; charset=utf-8")
        if path == "/app.js":
            return self._send(HTTPStatus.OK, SCRIPT.encode("utf-8"), "text/javascript")
        if path == "/style.css":
            return self._send(HTTPStatus.OK, STYLE.encode("utf-8"), "text/css")
        if path == "/api/items":
            return self._json(self.session.items_json())
        if path == "/api/progress":
            from urllib.parse import parse_qs

            rater = (parse_qs(query).get("rater") or [""])[0].strip()
            return self._json(self.session.progress(rater))
        if path.startswith("/image/"):
            digest = path[len("/image/") :]
            if digest in self.session.images:
                data = self.session.store.images.get(digest)
                return self._send(HTTPStatus.OK, data, "image/png", cache=True)
        self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._send(HTTPStatus.FORBIDDEN, b"wrong host", "text/plain")
        if self.path != "/api/rate":
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._json({"error": "ratings come as JSON"}, HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        length = self.headers.get("Content-Length") or "0"
        # digits only: int() would also take "-1" (read to EOF: a hung thread) or " 1_0"
        if not length.isascii() or not length.isdigit():
            self.close_connection = True  # the body's end is unknown: do not read another request
            return self._json({"error": "a bad Content-Length"}, HTTPStatus.BAD_REQUEST)
        if len(length) > 9 or int(length) > MAX_BODY:  # len first: int() refuses huge strings
            self.close_connection = True
            return self._json({"error": "too large"}, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            body = json.loads(self.rfile.read(int(length)) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("a rating is a JSON object")
            return self._json(self.session.rate(body))
        except (ValueError, TypeError, OverflowError, RecursionError) as error:
            # any malformed body (LabelsError is a ValueError): a reason, not a traceback;
            # OverflowError: a score like 1e400 written as an integer, RecursionError: [[[...]]]
            return self._json({"error": str(error) or "malformed rating"}, HTTPStatus.BAD_REQUEST)


def serve(store: Any, sample: list[dict[str, Any]], port: int | None = None) -> None:
    """Serve the page until interrupted, printing its address first."""
    # checked here: the socket layer answers an out-of-range port with an OverflowError
    if port is not None and not 0 <= port <= 65535:
        raise LabelsError(f"--port {port}: a port from 1 to 65535, or 0 or none for a free one")
    session = RatingSession(store, sample)
    try:
        server = make_server(session, port or 0)
    except OSError as error:  # the port is taken or privileged
        raise LabelsError(
            f"cannot serve on 127.0.0.1:{port} ({error.strerror}): pass another --port, or "
            "none for a free one"
        ) from None
    print(
        f"rating page: http://127.0.0.1:{server.server_address[1]}/ "
        f"({len(sample)} triplets; ratings go to {store.where(LABELS_FOLDER)}; Ctrl-C to stop)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>nhr rating</title>
<link rel="stylesheet" href="/style.css">
<script src="/app.js" defer></script>
</head>
<body>
<header>
  <form id="who">
    <label>Rater name <input id="rater" autocomplete="username" maxlength="80" required></label>
    <button type="submit">Start</button>
  </form>
  <span id="progress" aria-live="polite"></span>
</header>
<main id="task" hidden>
  <p class="instruction">Instruction: <q id="instruction"></q> <span id="category"></span></p>
  <div class="pair">
    <figure><img id="source" alt="original image"><figcaption>original</figcaption></figure>
    <figure><img id="edited" alt="edited image"><figcaption>edited</figcaption></figure>
  </div>
  <fieldset id="scale-instruction" class="scale active">
    <legend>Instruction adherence: carried out fully, nothing else changed</legend>
  </fieldset>
  <fieldset id="scale-aesthetics" class="scale">
    <legend>Aesthetics: coherent, pleasing, no artefacts</legend>
  </fieldset>
  <label class="comment">Comment (optional) <input id="comment" maxlength="500"></label>
  <p>
    <button id="prev" type="button">&larr; previous</button>
    <button id="save" type="button">Save &amp; next (Enter)</button>
    <button id="next" type="button">next &rarr;</button>
  </p>
  <p class="keys">Keys: 1-5 score the highlighted scale (adherence, then aesthetics),
  Tab switches scale, Enter saves, &larr; &rarr; move.</p>
  <p id="status" role="status"></p>
</main>
<p id="done" hidden>All triplets rated. Thank you! You can close this page.</p>
</body>
</html>
"""

STYLE = """body { font-family: system-ui, sans-serif; margin: 1em 2em; }
header { display: flex; gap: 2em; align-items: center; }
.pair { display: flex; gap: 1em; }
.pair figure { margin: 0; flex: 1; }
.pair img { max-width: 100%; max-height: 60vh; border: 1px solid #ccc; }
.scale { border: 2px solid #ddd; margin: .5em 0; }
.scale.active { border-color: #2a6; }
.scale label { margin-right: 1.2em; }
.instruction { font-size: 1.2em; }
#category { color: #666; font-size: .8em; }
#status { color: #a22; }
.keys { color: #666; font-size: .9em; }
"""

SCRIPT = """"use strict";
// Model-written text only ever goes through textContent: nothing here parses HTML.
const state = { items: [], rated: {}, comments: {}, index: 0, rater: "", scale: 0 };
const $ = (id) => document.getElementById(id);
const scales = ["instruction", "aesthetics"];

function buildScales() {
  for (const scale of scales) {
    const box = $("scale-" + scale);
    for (let value = 1; value <= 5; value++) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio"; input.name = scale; input.value = String(value);
      label.append(input, " " + value);
      box.append(label);
    }
  }
}

function chosen(scale) {
  const input = document.querySelector('input[name="' + scale + '"]:checked');
  return input ? Number(input.value) : null;
}

function setScale(index) {
  state.scale = index;
  scales.forEach((s, i) => $("scale-" + s).classList.toggle("active", i === index));
}

function showProgress() {
  const count = state.items.filter((it) => it.item in state.rated).length;
  $("progress").textContent = state.rater
    ? state.rater + ": " + count + " / " + state.items.length + " rated"
    : "";
}

function show() {
  showProgress();
  const allDone = state.items.every((it) => it.item in state.rated);
  if (state.index >= state.items.length) {
    $("task").hidden = true; $("done").hidden = !allDone;
    if (!allDone) { state.index = firstUnrated(); return show(); }
    return;
  }
  $("done").hidden = true; $("task").hidden = false;
  const item = state.items[state.index];
  $("task").dataset.item = item.item;
  $("instruction").textContent = item.instruction;
  $("category").textContent = item.category ? "(" + item.category + ")" : "";
  $("source").src = item.source;
  $("edited").src = item.edited;
  const given = state.rated[item.item] || [null, null];
  scales.forEach((scale, i) => {
    document.querySelectorAll('input[name="' + scale + '"]').forEach((input) => {
      input.checked = given[i] !== null && Number(input.value) === given[i];
    });
  });
  $("comment").value = state.comments[item.item] || "";  // saving again keeps it
  $("status").textContent = "";
  setScale(0);
}

function firstUnrated() {
  const index = state.items.findIndex((it) => !(it.item in state.rated));
  return index < 0 ? state.items.length : index;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": " + response.status);
  return response.json();
}

async function start(rater) {
  state.rater = rater.trim();
  if (!state.rater) return;
  localStorage.setItem("nhr-rater", state.rater);
  $("rater").value = state.rater;
  const progress = await getJSON("/api/progress?rater=" + encodeURIComponent(state.rater));
  state.rated = progress.rated;
  state.comments = progress.comments;
  state.index = firstUnrated();
  document.body.dataset.ready = "1";
  show();
}

async function save() {
  const item = state.items[state.index];
  const instruction = chosen("instruction"), aesthetics = chosen("aesthetics");
  if (!item || instruction === null || aesthetics === null) {
    $("status").textContent = "Choose both scores first.";
    return;
  }
  const response = await fetch("/api/rate", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      rater: state.rater, item: item.item, instruction_score: instruction,
      aesthetics_score: aesthetics, comment: $("comment").value,
    }),
  });
  const answer = await response.json();
  if (!response.ok) { $("status").textContent = answer.error; return; }
  state.rated = answer.rated;
  state.comments = answer.comments;
  state.index = state.index + 1 < state.items.length && !(state.items[state.index + 1].item in state.rated)
    ? state.index + 1 : firstUnrated();
  show();
}

function move(step) {
  state.index = Math.min(Math.max(state.index + step, 0), state.items.length - 1);
  show();
}

document.addEventListener("keydown", (event) => {
  if ($("task").hidden || event.target.tagName === "INPUT" && event.target.type !== "radio") {
    if (event.key === "Enter" && event.target.id === "comment") { event.preventDefault(); save(); }
    return;
  }
  if (event.key >= "1" && event.key <= "5") {
    const input = document.querySelector(
      'input[name="' + scales[state.scale] + '"][value="' + event.key + '"]');
    input.checked = true;
    if (state.scale === 0) setScale(1);
    event.preventDefault();
  } else if (event.key === "Tab") {
    setScale(1 - state.scale); event.preventDefault();
  } else if (event.key === "Enter") {
    event.preventDefault(); save();
  } else if (event.key === "ArrowLeft") {
    move(-1);
  } else if (event.key === "ArrowRight") {
    move(1);
  }
});

document.addEventListener("DOMContentLoaded", async () => {
  buildScales();
  $("who").addEventListener("submit", (event) => {
    event.preventDefault(); start($("rater").value); $("rater").blur();
  });
  $("save").addEventListener("click", save);
  $("prev").addEventListener("click", () => move(-1));
  $("next").addEventListener("click", () => move(1));
  state.items = await getJSON("/api/items");
  const known = localStorage.getItem("nhr-rater");
  if (known) await start(known); else { $("rater").focus(); document.body.dataset.ready = "1"; }
});
"""
