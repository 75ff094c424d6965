"""The BIG-bench fetcher, offline: a fake sdist served by a local PEP 691 index (or given as a file).

The pinned sha256 is patched to the fake's where a test needs the happy path; the real download is
exercised by tests/eval (session fixture `bigbench_dir`).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tensorllm.base.errors import UserError
from tensorllm.data import bigbench as bb

CONTENT = {
    rel: json.dumps({"examples": [{"input": f"{rel} is", "target": "x"}]}).encode()
    for rel in bb.MEMBERS.values()
}


def fake_sdist(extra_members: int = 3, drop: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(bb._PREFIX + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i in range(extra_members):
            add(f"bigbench/benchmark_tasks/other_{i}/task.json", b"{}" * 1000)
        for rel, data in CONTENT.items():
            if rel != drop:
                add(rel, data)
    return buf.getvalue()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(bb.SDIST_ENV, raising=False)
    return tmp_path / "cache" / "data" / "bigbench" / f"bigbench-{bb.VERSION}"


@pytest.fixture
def index(monkeypatch):
    """A local simple index: JSON (PEP 691) for the project page, the fake sdist under /files/."""
    state = {"sdist": fake_sdist(), "accept": [], "html": False}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/simple/bigbench/":
                state["accept"].append(self.headers.get("Accept", ""))
                if state["html"]:
                    link = b'<a href="../../files/bigbench-1.0.0.tar.gz#sha256=00">x</a>'
                    body = b"<html><body>" + link + b"</body></html>"
                    ctype = "text/html"
                else:
                    body = json.dumps(
                        {
                            "meta": {"api-version": "1.1"},
                            "name": "bigbench",
                            "files": [
                                {"filename": "bigbench-0.0.1.tar.gz", "url": "../../files/old.tar.gz"},
                                {
                                    "filename": bb.SDIST,
                                    "url": "../../files/bigbench-1.0.0.tar.gz",
                                    "size": len(state["sdist"]),
                                },
                            ],
                        }
                    ).encode()
                    ctype = "application/vnd.pypi.simple.v1+json"
            elif self.path == "/files/bigbench-1.0.0.tar.gz":
                body, ctype = state["sdist"], "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_address[1]}/simple")
    yield state
    server.shutdown()
    server.server_close()


def test_index_url_follows_pip(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.2:8000/simple http://127.0.0.3/simple")
    assert bb.index_url() == "http://127.0.0.2:8000/simple"
    monkeypatch.delenv("PIP_INDEX_URL")
    url = bb.index_url()  # pip's config, else pip's default; never a name written in our code
    assert url.startswith(("http://", "https://", "file:"))


def test_fetch_through_json_index_then_cached(cache, index, monkeypatch):
    monkeypatch.setattr(bb, "SDIST_SHA256", hashlib.sha256(index["sdist"]).hexdigest())
    res = bb.fetch_bigbench(progress=False)
    assert res.fetched and res.directory == cache and res.source.endswith("/files/bigbench-1.0.0.tar.gz")
    assert "application/vnd.pypi.simple.v1+json" in index["accept"][0]
    for rel, data in CONTENT.items():
        assert (cache / rel).read_bytes() == data
    manifest = json.loads((cache / "manifest.json").read_text())
    assert set(manifest["members"]) == set(bb.MEMBERS.values())
    assert not (cache / "bigbench/benchmark_tasks/other_0").exists()  # only the members we need
    again = bb.fetch_bigbench(progress=False)
    assert not again.fetched and again.source == "cache" and len(index["accept"]) == 1  # no network at all
    assert bb.bigbench_file("qa_wikidata") == cache / bb.MEMBERS["qa_wikidata"]


def test_html_index_fallback(cache, index, monkeypatch):
    index["html"] = True
    monkeypatch.setattr(bb, "SDIST_SHA256", hashlib.sha256(index["sdist"]).hexdigest())
    assert bb.fetch_bigbench(progress=False).fetched


def test_wrong_sha256_caches_nothing(cache, index):
    with pytest.raises(UserError, match="does not have the sha256"):
        bb.fetch_bigbench(progress=False)
    assert not cache.exists() and not list(cache.parent.glob(".*"))


def test_local_sdist_and_env(cache, tmp_path, monkeypatch):
    data = fake_sdist()
    path = tmp_path / bb.SDIST
    path.write_bytes(data)
    monkeypatch.setattr(bb, "SDIST_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setenv(bb.SDIST_ENV, str(path))
    res = bb.fetch_bigbench(progress=False)
    assert res.fetched and res.source == str(path)
    assert (cache / bb.MEMBERS["paragraphs"]).read_bytes() == CONTENT[bb.MEMBERS["paragraphs"]]


def test_local_sdist_problems(cache, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        bb.fetch_bigbench(tmp_path / "nope.tar.gz", progress=False)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a gzip file" * 10)
    with pytest.raises(UserError, match="is not a readable"):
        bb.fetch_bigbench(junk, progress=False)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(fake_sdist()[:300])
    with pytest.raises(UserError, match="is not a readable|does not have the sha256"):  # the hash catches it
        bb.fetch_bigbench(truncated, progress=False)
    short = fake_sdist(drop=bb.MEMBERS["fever"])
    incomplete = tmp_path / "short.tar.gz"
    incomplete.write_bytes(short)
    monkeypatch.setattr(bb, "SDIST_SHA256", hashlib.sha256(short).hexdigest())
    with pytest.raises(UserError, match="lacks .*fever/task.json"):
        bb.fetch_bigbench(incomplete, progress=False)
    assert not cache.exists()


def test_unreachable_index_says_what_to_do(cache, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # discard port: refused at once
    with pytest.raises(UserError, match="cannot reach the package index.*--sdist PATH"):
        bb.fetch_bigbench(progress=False)


def test_default_text_is_the_paragraph_sets_in_order_each_paragraph_once(cache, monkeypatch):
    """New-Wikipedia first (so short runs read only it), then SQuAD dev's Wikipedia, then NYT."""
    from tensorllm.data import TEXT_MEMBERS, default_calibration_text

    cache.mkdir(parents=True)
    paras = {
        "paragraphs": ["wiki one", "wiki two", "wiki one"],
        "wiki_squad_dev": ["dev one", "wiki two"],
        "nyt": ["news one"],
    }
    for key, texts in paras.items():
        (cache / bb.MEMBERS[key]).parent.mkdir(parents=True, exist_ok=True)
        doc = {"data": [{"title": key, "paragraphs": [{"context": f" {t} "} for t in texts]}]}
        (cache / bb.MEMBERS[key]).write_text(json.dumps(doc))
    for key in set(bb.MEMBERS) - set(paras):
        (cache / bb.MEMBERS[key]).parent.mkdir(parents=True, exist_ok=True)
        (cache / bb.MEMBERS[key]).write_text("{}")
    (cache / "manifest.json").write_text(json.dumps({"members": list(bb.MEMBERS.values())}))
    assert TEXT_MEMBERS == ("paragraphs", "wiki_squad_dev", "nyt")
    assert default_calibration_text() == "wiki one\n\nwiki two\n\ndev one\n\nnews one"


def test_a_cache_from_before_a_member_was_added_serves_the_members_it_has(cache, monkeypatch):
    old = ["qa_wikidata", "fever", "paragraphs"]
    for key in old:
        (cache / bb.MEMBERS[key]).parent.mkdir(parents=True, exist_ok=True)
        (cache / bb.MEMBERS[key]).write_bytes(CONTENT[bb.MEMBERS[key]])
    (cache / "manifest.json").write_text(json.dumps({"members": [bb.MEMBERS[k] for k in old]}))
    fetches = []
    monkeypatch.setattr(bb, "fetch_bigbench", lambda *a, **k: fetches.append(1))
    assert bb.bigbench_file("qa_wikidata") == cache / bb.MEMBERS["qa_wikidata"] and not fetches  # offline
    bb.bigbench_file("nyt")  # a member it lacks: fetched
    assert fetches == [1]


def test_a_cache_fetched_before_epistemic_reasoning_refetches_only_when_it_is_asked_for(cache, monkeypatch):
    before = [k for k in bb.MEMBERS if k != "epistemic_reasoning"]  # the members of the earlier releases
    for key in before:
        (cache / bb.MEMBERS[key]).parent.mkdir(parents=True, exist_ok=True)
        (cache / bb.MEMBERS[key]).write_bytes(CONTENT[bb.MEMBERS[key]])
    (cache / "manifest.json").write_text(json.dumps({"members": {bb.MEMBERS[k]: "0" * 64 for k in before}}))
    fetches = []
    monkeypatch.setattr(bb, "fetch_bigbench", lambda *a, **k: fetches.append(1))
    for key in before:
        assert bb.bigbench_file(key) == cache / bb.MEMBERS[key]
    assert not fetches and not bb._complete(cache)  # every old member served, no download
    assert bb.bigbench_file("epistemic_reasoning") == cache / bb.MEMBERS["epistemic_reasoning"]
    assert fetches == [1]  # the new member is fetched (the whole sdist, under the cache lock)
