"""The rating page (`nhr label RUN --sample N`), driven in headless Chromium over the DevTools
protocol: two raters, a reload mid-way, keyboard shortcuts, and an instruction holding markup
that must be shown as text."""

import contextlib
import http.client
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

from helpers import CHROMIUM_FLAGS
from nhr import records
from nhr.cli import main
from nhr.label_sample import run_sample
from nhr.label_server import RatingSession, make_server, rater_key, serve
from nhr.labels import LabelsError, read_labels
from nhr.store import RunStore

HOSTILE = '<script>document.title="pwned"</script><b>bold</b> & more'
SAMPLE = 5


@pytest.fixture(scope="module")
def hostile_run(mined, tmp_path_factory):
    """A copy of the small run whose candidates' instructions carry markup."""
    run_dir, _ = mined
    copy = tmp_path_factory.mktemp("rating") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("labels"))
    store = RunStore(copy)
    for shard in store.done_shards("edit"):
        rows = store.read_rows("edit", shard)
        for number, row in enumerate(rows):
            row["instruction"] = f"{HOSTILE} {shard}.{number}"
        store.write_rows("edit", shard, rows, records.CANDIDATE)
    return copy


@contextlib.contextmanager
def serving(run):
    store = RunStore(run)
    sample = run_sample(store, SAMPLE, seed=0)
    server = make_server(RatingSession(store, sample))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", store, sample
    server.shutdown()
    server.server_close()


@pytest.fixture()
def page_server(hostile_run):
    with serving(hostile_run) as served:
        yield served


@pytest.fixture(scope="module")
def shared_server(hostile_run):
    """One server for the many requests that save nothing (a shutdown takes half a second)."""
    with serving(hostile_run) as served:
        yield served


class Browser:
    """Headless Chromium, one page, driven over the DevTools protocol."""

    def __init__(self, chromium: str, profile) -> None:
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and active.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = active.read_text().splitlines()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.closing = contextlib.ExitStack()
        self.socket = self.closing.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None)
        )
        self.counter = 0
        self.errors: list[str] = []
        self.call("Runtime.enable")

    def call(self, method: str, **params):
        self.counter += 1
        self.socket.send(json.dumps({"id": self.counter, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(message["params"])[:500])
            if message.get("id") == self.counter:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && document.body.dataset.ready === '1'")

    def reload(self) -> None:
        self.evaluate("document.body.dataset.ready = ''")
        self.call("Page.reload", ignoreCache=True)
        self.wait_for("document.readyState === 'complete' && document.body.dataset.ready === '1'")

    def key(self, key: str) -> None:
        code = {"Enter": 13, "ArrowLeft": 37, "ArrowRight": 39, "Tab": 9}.get(key, ord(key[0]))
        text = {"Enter": "\r"}.get(key, key if len(key) == 1 else "")
        for kind in ("keyDown", "keyUp"):
            self.call(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                text=text if kind == "keyDown" else "",
                windowsVirtualKeyCode=code,
            )

    def close(self) -> None:
        self.closing.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture()
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    pytest.importorskip("websockets")
    driver = Browser(chromium, tmp_path / "profile")
    yield driver
    driver.close()


def sign_in(browser: Browser, name: str) -> None:
    browser.evaluate(
        f"document.getElementById('rater').value = {json.dumps(name)};"
        "document.getElementById('who').requestSubmit();"
    )
    browser.wait_for(
        f"document.getElementById('progress').textContent.startsWith({json.dumps(name)})"
    )


def current_item(browser: Browser) -> str:
    return browser.evaluate("document.getElementById('task').dataset.item")


def rate_current(browser: Browser, adherence: str, aesthetics: str) -> str:
    item = current_item(browser)
    before = browser.evaluate("document.getElementById('progress').textContent")
    browser.key(adherence)
    browser.key(aesthetics)
    browser.key("Enter")
    browser.wait_for(f"document.getElementById('progress').textContent !== {json.dumps(before)}")
    return item


def test_two_raters_with_a_reload_and_escaped_instructions(page_server, browser):
    url, store, sample = page_server
    browser.open(url)
    sign_in(browser, "alice")
    assert browser.evaluate("document.getElementById('progress').textContent") == (
        f"alice: 0 / {SAMPLE} rated"
    )

    # the instruction is shown as text: no element was made of it and no script ran
    shown = browser.evaluate("document.getElementById('instruction').textContent")
    assert shown.startswith(HOSTILE)
    assert browser.evaluate("document.getElementById('instruction').children.length") == 0
    assert browser.evaluate("document.querySelectorAll('b').length") == 0
    assert browser.evaluate("document.title") == "nhr rating"
    assert browser.evaluate(
        "document.getElementById('source').complete && "
        "document.getElementById('source').naturalWidth > 0"
    )

    browser.evaluate("document.getElementById('comment').value = 'smudge on the left'")
    first = rate_current(browser, "4", "5")
    assert browser.evaluate("document.getElementById('comment').value") == ""  # a new item
    second = rate_current(browser, "2", "3")
    assert [first, second] == [item["item"] for item in sample[:2]]

    # a reload mid-way: the rater is remembered and resumes at the first unrated triplet
    browser.reload()
    assert browser.evaluate("document.getElementById('progress').textContent") == (
        f"alice: 2 / {SAMPLE} rated"
    )
    assert current_item(browser) == sample[2]["item"]
    # going back shows the rating already given
    browser.key("ArrowLeft")
    assert current_item(browser) == second
    assert (
        browser.evaluate("document.querySelector('input[name=instruction]:checked').value") == "2"
    )
    assert browser.evaluate("document.getElementById('comment').value") == ""
    # the first one shows its saved comment, and saving it again keeps the comment
    browser.key("ArrowLeft")
    assert current_item(browser) == first
    assert browser.evaluate("document.getElementById('comment').value") == "smudge on the left"
    browser.key("Enter")
    browser.wait_for(
        f"document.getElementById('task').dataset.item === {json.dumps(sample[2]['item'])}"
    )
    while browser.evaluate("!document.getElementById('task').hidden"):
        rate_current(browser, "5", "5")
    assert browser.evaluate("!document.getElementById('done').hidden")

    # a second rater on the same page
    sign_in(browser, "Bob <b>")
    assert browser.evaluate("document.getElementById('progress').textContent") == (
        f"Bob <b>: 0 / {SAMPLE} rated"
    )
    rate_current(browser, "1", "2")
    assert not browser.errors

    rows = read_labels(hostile_run_labels(store))
    by_rater = {}
    for row in rows:
        by_rater.setdefault(row["rater"], {})[row["item"]] = row
    assert len(by_rater["alice"]) == SAMPLE
    assert by_rater["alice"][first]["instruction_score"] == 4.0
    assert by_rater["alice"][first]["aesthetics_score"] == 5.0
    assert by_rater["alice"][first]["comment"] == "smudge on the left"
    assert by_rater["alice"][second]["instruction_score"] == 2.0
    assert list(by_rater["Bob <b>"].values())[0]["instruction_score"] == 1.0
    assert store.storage.exists(rater_key("alice"))


def hostile_run_labels(store):
    return store.where("labels")


def test_the_page_refuses_foreign_hosts_and_form_posts(page_server):
    url, _, _ = page_server
    request = urllib.request.Request(url, headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 403
    form = urllib.request.Request(
        url + "api/rate",
        data=b"rater=x&item=y",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(form)
    assert refused.value.code == 415
    page = urllib.request.urlopen(url)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_a_bad_rating_is_refused_with_a_reason(page_server):
    url, _, sample = page_server
    body = json.dumps(
        {"rater": "carol", "item": sample[0]["item"], "instruction_score": 9, "aesthetics_score": 3}
    ).encode()
    request = urllib.request.Request(
        url + "api/rate", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 400
    assert "instruction_score must be from 1 to 5" in json.loads(refused.value.read())["error"]


def test_ratings_survive_a_restarted_server(hostile_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(hostile_run, copy, ignore=shutil.ignore_patterns("labels"))
    store = RunStore(copy)
    sample = run_sample(store, SAMPLE, seed=0)
    first = RatingSession(store, sample)
    for item, score in zip(sample[:2], (2, 3)):
        first.rate(
            {
                "rater": "dana",
                "item": item["item"],
                "instruction_score": score,
                "aesthetics_score": 4,
            }
        )
    first.rate(  # a second rating of the same triplet replaces the first
        {"rater": "dana", "item": sample[0]["item"], "instruction_score": 5, "aesthetics_score": 5}
    )
    again = RatingSession(store, sample).progress("dana")
    assert again["rated"] == {sample[0]["item"]: [5.0, 5.0], sample[1]["item"]: [3.0, 4.0]}
    assert len(read_labels(copy)) == 2


def request(url, method, path, body=b"", headers=()):
    """(status, body) of one raw request, with exactly the headers given (Host included)."""
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:9000", "localhost:1", "LOCALHOST:8765", "[::1]:9000", "127.0.0.1", "localhost"],
)
def test_the_page_answers_loopback_names_on_any_port(shared_server, host):
    # an SSH forward (ssh -L 9000:127.0.0.1:PORT) keeps a loopback name but not the port
    url, _, _ = shared_server
    status, body = request(url, "GET", "/", headers=[("Host", host)])
    assert status == 200 and b"nhr rating" in body


@pytest.mark.parametrize(
    "host",
    ["evil.example:9000", "127.0.0.1.evil.example", "localhost.evil.example:80", "127.0.0.2:1", ""],
)
def test_the_page_refuses_foreign_host_names_on_any_port(shared_server, host):
    url, _, _ = shared_server
    headers = [("Host", host)] if host else []
    assert request(url, "GET", "/", headers=headers)[0] == 403


def rating(**fields):
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "body, length",
    [
        pytest.param(rating(rater="e", item=[], instruction_score=3), None, id="item-a-list"),
        pytest.param(rating(item=[]), None, id="no-rater"),
        pytest.param(rating(rater="e", item={"a": 1}), None, id="item-an-object"),
        pytest.param(rating(rater=["e"], item="x"), None, id="rater-a-list"),
        pytest.param(
            rating(rater="e", item="ITEM", instruction_score={}, aesthetics_score=3),
            None,
            id="score-an-object",
        ),
        pytest.param(
            rating(rater="e", item="ITEM", instruction_score=3, aesthetics_score=[3]),
            None,
            id="score-a-list",
        ),
        pytest.param(
            rating(rater="e", item="ITEM", instruction_score=3, aesthetics_score=3, comment=[1]),
            None,
            id="comment-a-list",
        ),
        pytest.param(
            b'{"rater": "e", "item": "ITEM", "instruction_score": 1' + b"0" * 400 + b"}",
            None,
            id="score-too-big-for-a-float",
        ),
        pytest.param(b"[" * 30000 + b"]" * 30000, None, id="nesting-too-deep"),
        pytest.param(b"not json", None, id="not-json"),
        pytest.param(b"\xff\xfe", None, id="not-utf-8"),
        pytest.param(b"[1, 2]", None, id="not-an-object"),
        pytest.param(rating(rater="e"), "abc", id="length-abc"),
        pytest.param(rating(rater="e"), "-1", id="length-negative"),
        pytest.param(rating(rater="e"), "1e3", id="length-1e3"),
        pytest.param(rating(rater="e"), "9" * 5000, id="length-huge"),
    ],
)
def test_a_malformed_rating_request_is_a_400_with_a_reason(shared_server, capfd, body, length):
    url, _, sample = shared_server
    body = body.replace(b"ITEM", sample[0]["item"].encode())
    host = ("Host", urllib.parse.urlsplit(url).netloc)
    headers = [host, ("Content-Type", "application/json")]
    headers.append(("Content-Length", str(len(body)) if length is None else length))
    status, answer = request(url, "POST", "/api/rate", body, headers)
    assert status in (400, 413)
    assert json.loads(answer)["error"]
    assert "Traceback" not in capfd.readouterr().err  # nothing on the server's terminal
    assert request(url, "GET", "/api/items", headers=[host])[0] == 200


def test_the_progress_returns_the_saved_comments(hostile_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(hostile_run, copy, ignore=shutil.ignore_patterns("labels"))
    store = RunStore(copy)
    sample = run_sample(store, SAMPLE, seed=0)
    first, second = (item["item"] for item in sample[:2])
    session = RatingSession(store, sample)
    for item, comment in ((first, "too dark"), (second, "")):
        session.rate(
            {
                "rater": "erin",
                "item": item,
                "instruction_score": 3,
                "aesthetics_score": 3,
                "comment": comment,
            }
        )
    assert RatingSession(store, sample).progress("erin")["comments"] == {first: "too dark"}


@pytest.mark.parametrize("port", [99999, 65536, -1])
def test_a_port_out_of_range_is_refused(hostile_run, port):
    store = RunStore(hostile_run)
    with pytest.raises(LabelsError, match=f"--port {port}: a port from 1 to 65535"):
        serve(store, run_sample(store, 1), port)


def test_cli_refuses_a_port_out_of_range_in_one_line(hostile_run, capsys):
    assert main(["label", str(hostile_run), "--sample", "3", "--port", "99999"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("nhr: error: --port 99999") and error.count("\n") == 1
