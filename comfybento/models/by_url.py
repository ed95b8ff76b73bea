"""Models by URL at request time: downloaded once into the models folder, safetensors only, within a disk bound.

A request may name a model by `{"url": ..., "sha256": ...}` where its workflow's sidecar allows it (`urls:`).
The engine resolves it here before the request is queued:

- **Once.** A file is stored by its content, `<models>/<folder>/comfybento-url/<sha256>.safetensors` (the name
  ComfyUI's loader gets), and the URL is remembered to point at it (an index beside the models). A request whose
  `sha256` names a stored file, or whose URL was fetched before (no `sha256`), is a hit: no network. Requests for a
  URL that is being downloaded wait for that one download and share its result, or its failure.
- **Guarded.** Every hop, redirects included, passes the allow-list (comfybento/urlguard.py: DNS resolved once, the
  connection pinned to an approved address); the body is counted against `max_bytes` as it arrives (a larger
  Content-Length is refused unread), within COMFYBENTO_MODEL_FETCH_S and its minimum rate (comfybento/transfer.py).
- **Safetensors only**, by content: 8 bytes of little-endian header length, then a JSON object of tensors whose
  offsets lie within the file. A pickle (.ckpt, .pt, .bin) is refused as soon as its first bytes arrive.
- **Bounded.** The stored files take at most `cache_bytes` together; after each download the least recently used
  leave first, except those a queued request holds (`resolve` leases a file until `release`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from comfybento import metrics
from comfybento.errors import (
    STORAGE_ERRNOS,
    ComfyBentoError,
    EngineUnavailable,
    InvalidRequest,
    StorageFull,
    TooLarge,
    UnsupportedFile,
    UrlRefused,
)
from comfybento.transfer import TooSlow, TransferLimits, Watchdog
from comfybento.urlguard import AllowList, send_checked

log = logging.getLogger(__name__)

CACHE_FOLDER = "comfybento-url"  # under each models folder: what ComfyUI lists as comfybento-url/<sha256>.safetensors
INDEX_FILE = ".comfybento-url-models.json"  # in the models folder: (folder, url) -> sha256
MAX_HEADER_BYTES = 100 << 20  # a safetensors header is a few MB at most (the format's own readers refuse more)
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class UrlModelLimits:
    max_bytes: int  # COMFYBENTO_MODEL_URL_MAX_BYTES
    cache_bytes: int  # COMFYBENTO_MODEL_URL_CACHE_BYTES
    transfer: TransferLimits  # COMFYBENTO_MODEL_FETCH_S and COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S
    max_redirects: int = 5


@dataclass(frozen=True)
class CachedModel:
    folder: str
    sha256: str
    size: int

    @property
    def name(self) -> str:
        """The file name a loader node takes (relative to its models folder)."""
        return f"{CACHE_FOLDER}/{self.sha256}{SUFFIX}"


class SafetensorsCheck:
    """Fed a file's bytes in order: raises UnsupportedFile as soon as they cannot be a safetensors file."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._head = bytearray()
        self._header_len: int | None = None
        self.data_end = 0  # the largest tensor end offset, once the header is read

    def feed(self, chunk: bytes) -> None:
        if self._header_len is not None and len(self._head) >= 8 + self._header_len:
            return
        self._head += chunk[:MAX_HEADER_BYTES + 8]
        if self._header_len is None and len(self._head) >= 8:
            (self._header_len,) = struct.unpack("<Q", bytes(self._head[:8]))
            if not 2 <= self._header_len <= MAX_HEADER_BYTES or self._head[8:9] not in (b"{", b""):
                raise self._refuse("it does not start with a safetensors header (8 bytes of length, then JSON)")
        if self._header_len is not None and len(self._head) >= 8 + self._header_len:
            self.data_end = self._parse(bytes(self._head[8:8 + self._header_len]))

    def finish(self, size: int) -> None:
        """The whole file has arrived: its header complete and its tensors within its `size` bytes."""
        if self._header_len is None or len(self._head) < 8 + self._header_len:
            raise self._refuse("it ends before its safetensors header does")
        if 8 + self._header_len + self.data_end > size:
            raise self._refuse(f"its tensors reach byte {8 + self._header_len + self.data_end}, past its end ({size} bytes)")

    def _parse(self, header: bytes) -> int:
        try:
            table = json.loads(header.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise self._refuse("its safetensors header is not JSON") from None
        if not isinstance(table, dict):
            raise self._refuse("its safetensors header is not a JSON object")
        end = 0
        for key, tensor in table.items():
            if key == "__metadata__":
                continue
            offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
            if (not isinstance(tensor, dict) or not isinstance(tensor.get("dtype"), str) or not isinstance(tensor.get("shape"), list)
                    or not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                    or not 0 <= offsets[0] <= offsets[1]):
                raise self._refuse(f"tensor {key!r} of its safetensors header has no valid dtype, shape and data_offsets")
            end = max(end, offsets[1])
        return end

    def _refuse(self, why: str) -> UnsupportedFile:
        return UnsupportedFile(f"{self.what} is not a safetensors file: {why}; only .safetensors models are taken "
                               "by URL (never a pickle: .ckpt, .pt, .bin)")


class UrlModels:
    """The store of models downloaded by URL, in `models_dir`; thread-safe (requests are prepared in threads)."""

    def __init__(self, models_dir: Path, limits: UrlModelLimits) -> None:
        self.models_dir = models_dir
        self.limits = limits
        self._lock = threading.Lock()
        self._index: dict[tuple[str, str], str] = self._load_index()
        self._inflight: dict[tuple[str, str], Future[CachedModel]] = {}
        self._leases: Counter[Path] = Counter()
        for part in models_dir.glob(f"*/{CACHE_FOLDER}/.part-*"):  # a download a crash left behind
            part.unlink(missing_ok=True)
        metrics.MODEL_URL_CACHE_BYTES.set(sum(size for _, size, _ in self._files()))

    # ------------------------------------------------------------ requests

    def resolve(self, field: str, folder: str, url: str, sha256: str | None, allow: AllowList) -> CachedModel:
        """The stored model `url` brings into `folder`, leased until `release`. Raises a 4xx naming `field`."""
        want = sha256.lower() if sha256 else None
        key = (folder, url)
        while True:
            with self._lock:
                found = self._stored(folder, url, want)
                if found is not None:
                    self._leases[self._path(found)] += 1
                future = self._inflight.get(key)
                owner = found is None and future is None
                if owner:
                    future = self._inflight[key] = Future()
            if found is not None:
                os.utime(self._path(found))  # recently used: the last to leave
                return self._count("hit", self._matching(field, url, want, found))
            assert future is not None
            if owner:
                return self._count("download", self._matching(field, url, want, self._download_for(key, field, allow, future)))
            try:
                model = future.result()
            except ComfyBentoError as exc:
                raise self._count_error(exc) from None
            with self._lock:
                if not self._path(model).is_file():
                    continue  # evicted since (the cache is small and busy): look again
                self._leases[self._path(model)] += 1
            return self._count("shared", self._matching(field, url, want, model))

    def release(self, model: CachedModel) -> None:
        """A request that held `model` has finished: it may leave the cache again."""
        with self._lock:
            path = self._path(model)
            self._leases[path] -= 1
            if self._leases[path] <= 0:
                del self._leases[path]

    # ------------------------------------------------------------ the store

    def _path(self, model: CachedModel) -> Path:
        return self.models_dir / model.folder / model.name

    def _stored(self, folder: str, url: str, want: str | None) -> CachedModel | None:
        """A stored file: the one `want` names, else (no sha256 asked) the one `url` brought last time."""
        sha = want or self._index.get((folder, url))
        if sha is None:
            return None
        model = CachedModel(folder, sha, 0)
        try:
            return CachedModel(folder, sha, self._path(model).stat().st_size)
        except OSError:
            return None

    def _matching(self, field: str, url: str, want: str | None, model: CachedModel) -> CachedModel:
        if want is not None and model.sha256 != want:
            self.release(model)
            metrics.MODEL_URL_FETCHES.labels(result="refused").inc()
            raise InvalidRequest(f"field '{field}': {url!r} has sha256 {model.sha256}, not the {want} the request asks for")
        return model

    def _download_for(self, key: tuple[str, str], field: str, allow: AllowList,
                      future: Future[CachedModel]) -> CachedModel:
        """Download as the owner of `future`: every request waiting on it gets the same model or error."""
        try:
            model = self._download(key, field, allow)
        except BaseException as exc:
            future.set_exception(exc)
            if isinstance(exc, ComfyBentoError):
                self._count_error(exc)
            raise
        else:
            future.set_result(model)
            return model
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _download(self, key: tuple[str, str], field: str, allow: AllowList) -> CachedModel:
        folder, url = key
        dest = self.models_dir / folder / CACHE_FOLDER
        try:
            dest.mkdir(parents=True, exist_ok=True)
            handle, part = tempfile.mkstemp(dir=dest, prefix=".part-")  # no extension: ComfyUI does not list it
        except OSError as exc:
            raise _unwritable(field, folder, exc) from exc
        try:
            with os.fdopen(handle, "wb") as out:
                sha, size = fetch_safetensors(field, url, allow, self.limits, out, dest)
            model = CachedModel(folder, sha, size)
            os.replace(part, self._path(model))
        except BaseException as exc:
            Path(part).unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, ComfyBentoError):
                raise _unwritable(field, folder, exc) from exc
            raise
        with self._lock:
            self._index[key] = sha
            self._leases[self._path(model)] += 1
            self._evict()
            self._save_index()
        log.info("model %s: downloaded %s (%d bytes) into %s/%s", url, sha, size, folder, model.name)
        return model

    def _files(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every stored file, least recently used first."""
        found = []
        for path in self.models_dir.glob(f"*/{CACHE_FOLDER}/*{SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return sorted(found)

    def _evict(self) -> None:
        """Least recently used files out until the rest fit in cache_bytes (leased ones stay). Under the lock."""
        files = self._files()
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= self.limits.cache_bytes:
                break
            if self._leases[path] > 0:
                continue
            path.unlink(missing_ok=True)
            total -= size
            gone = (path.parent.parent.name, path.name.removesuffix(SUFFIX))
            self._index = {k: v for k, v in self._index.items() if (k[0], v) != gone}
            log.info("model cache by URL: %s left (least recently used; COMFYBENTO_MODEL_URL_CACHE_BYTES=%d)", path.name,
                     self.limits.cache_bytes)
        metrics.MODEL_URL_CACHE_BYTES.set(total)

    def _load_index(self) -> dict[tuple[str, str], str]:
        try:
            rows = json.loads((self.models_dir / INDEX_FILE).read_text(encoding="utf-8"))
            return {(str(r["folder"]), str(r["url"])): str(r["sha256"]) for r in rows}
        except (OSError, ValueError, TypeError, KeyError):
            return {}

    def _save_index(self) -> None:
        rows = [{"folder": f, "url": u, "sha256": s} for (f, u), s in sorted(self._index.items())]
        part = self.models_dir / f"{INDEX_FILE}.part"
        part.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        part.replace(self.models_dir / INDEX_FILE)

    # ------------------------------------------------------------ metrics

    @staticmethod
    def _count(result: str, model: CachedModel) -> CachedModel:
        metrics.MODEL_URL_FETCHES.labels(result=result).inc()
        return model

    @staticmethod
    def _count_error(exc: ComfyBentoError) -> ComfyBentoError:
        refused = isinstance(exc, (UrlRefused, UnsupportedFile, TooLarge)) and not isinstance(exc, _Slow)
        metrics.MODEL_URL_FETCHES.labels(result="refused" if refused else "failed").inc()
        return exc


class _Slow(TooLarge):
    """The download passed its deadline or fell below its minimum rate (a 413 naming the limit, counted as failed)."""


def _unwritable(field: str, folder: str, exc: OSError) -> ComfyBentoError:
    """A write into the models folder that failed: no room (507, transient), or a folder the engine may not write
    (503 naming COMFYBENTO_MODELS: the operator must fix it; the models.lock entries keep working)."""
    log.warning("model download for field '%s' could not write into %s: %s", field, folder, exc)
    if exc.errno in STORAGE_ERRNOS:
        return StorageFull(f"field '{field}': the models folder has no room for the download ({STORAGE_ERRNOS[exc.errno]}); "
                           "retry later", folder="models")
    return EngineUnavailable(f"field '{field}': the models folder (COMFYBENTO_MODELS, {folder}/{CACHE_FOLDER}) cannot be "
                             f"written ({exc.strerror or exc}), so models by URL cannot be downloaded; its models.lock "
                             "models still work")


def fetch_safetensors(field: str, url: str, allow: AllowList, limits: UrlModelLimits, out: IO[bytes],
                      folder: Path) -> tuple[str, int]:
    """Write the safetensors file `url` brings into `out` (a file in `folder`), every hop allowed; (its sha256, its size).

    A declared size the disk has no room for is a StorageFull (507) before any byte is read; a write that fails for
    lack of room is one too (errors.storage_full).
    """
    with Watchdog(limits.transfer) as watchdog:
        try:
            return _fetch(field, url, allow, limits, out, watchdog, folder)
        except TooSlow as exc:
            raise _Slow(f"field '{field}': {url!r} {exc} (COMFYBENTO_MODEL_FETCH_S={limits.transfer.total_s:g}, "
                        f"COMFYBENTO_MODEL_FETCH_MIN_BYTES_PER_S={limits.transfer.min_bytes_per_s})") from None


def _fetch(field: str, url: str, allow: AllowList, limits: UrlModelLimits, out: IO[bytes],
           watchdog: Watchdog, folder: Path) -> tuple[str, int]:
    with httpx.Client(headers={"user-agent": "comfybento-model-fetch"}, trust_env=False) as client:
        for _ in range(limits.max_redirects + 1):
            try:
                addresses = allow.check(url, f"field '{field}'")
            except InvalidRequest as exc:
                raise UrlRefused(str(exc)) from None
            watchdog.check()
            request = client.build_request("GET", url, timeout=watchdog.remaining(), extensions={"trace": watchdog.trace})
            try:
                response = send_checked(client, request, addresses, stream=True)
            except httpx.HTTPError as exc:
                watchdog.check()
                raise _broken(field, url, exc) from None
            try:
                if response.is_redirect and "location" in response.headers:
                    url = str(httpx.URL(url).join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(f"field '{field}': {url!r} answered HTTP {response.status_code}, not 200")
                return _read_body(field, url, response, limits, out, watchdog, folder)
            finally:
                response.close()
    raise InvalidRequest(f"field '{field}': {url!r}: more than {limits.max_redirects} redirects")


def _broken(field: str, url: str, exc: httpx.HTTPError) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return TooSlow("was not complete in time")
    return InvalidRequest(f"field '{field}': {url!r} cannot be fetched ({type(exc).__name__}: {exc})")


def _read_body(field: str, url: str, response: httpx.Response, limits: UrlModelLimits, out: IO[bytes],
               watchdog: Watchdog, folder: Path) -> tuple[str, int]:
    declared = response.headers.get("content-length", "")
    over = f"more than the limit of {limits.max_bytes} bytes (COMFYBENTO_MODEL_URL_MAX_BYTES)"
    if declared.isdigit() and (len(declared) > 18 or int(declared) > limits.max_bytes):
        raise TooLarge(f"field '{field}': {url!r} is {declared} bytes, {over}")
    free = shutil.disk_usage(folder).free
    if declared.isdigit() and int(declared) > free:
        raise StorageFull(f"field '{field}': {url!r} is {declared} bytes; the models folder has {free} free; retry later",
                          folder="models", free_bytes=free)
    digest, size = hashlib.sha256(), 0
    check = SafetensorsCheck(f"field '{field}': {url!r}")
    try:
        for chunk in response.iter_raw():  # the bytes as stored: a model is never content-encoded on purpose
            size += len(chunk)
            if size > limits.max_bytes:
                raise TooLarge(f"field '{field}': {url!r} is {over}")
            check.feed(chunk)
            digest.update(chunk)
            out.write(chunk)
            watchdog.count(len(chunk))
    except httpx.HTTPError as exc:
        watchdog.check()
        raise _broken(field, url, exc) from None
    check.finish(size)
    return digest.hexdigest(), size

