"""Where job outputs (and live outputs asked for as URLs) go: a local folder (default) or S3-compatible object storage.

Keys: `<job id>/<file>` for job items, `outputs/<random id>/<file>` for live requests.
A local key never leads out of its folder: no `..`, and no link is followed (a link placed in
the folder reads as a missing file, and nothing is written through one).

A new backend implements `Storage` and is chosen in `make_storage` (COMFYBENTO_STORAGE); callers
only ever use the protocol: `get` is safe to serve to a client for whatever key it names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from comfybento.config import Settings
from comfybento.errors import STORAGE_ERRNOS, ConfigError, NotFound, StorageFull


@dataclass(frozen=True)
class Entry:
    """A stored file as a listing gives it: its key, when it was last written (epoch seconds) and its size."""

    key: str
    modified: float
    size: int


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes:
        """The bytes stored at a key; NotFound for a missing key and for any key that is not one of the store's own
        files (`..`, a link, a folder): the API serves what it returns for a key a client names."""
        ...
    def url(self, key: str, base_url: str) -> str: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def entries(self, prefix: str) -> Iterator[Entry]:
        """Every file under `prefix/` (retention's listing: jobs/retention.py), in no particular order."""
        ...


def make_storage(settings: Settings) -> Storage:
    """The output storage COMFYBENTO_STORAGE names: "local" (COMFYBENTO_OUTPUT_DIR) or "s3" (COMFYBENTO_S3_*)."""
    if settings.storage == "s3":
        return S3Storage(settings.s3_bucket, settings.s3_endpoint_url or None, settings.s3_prefix, settings.s3_url_ttl_s)
    return LocalStorage(settings.output_dir)


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise NotFound(f"no such file: {key!r}")
    return key


class LocalStorage:
    """Files under a folder; served by the API at /jobs/{id}/files/{name}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        """Where a key is written: no folder on the way may be a link (the file itself is replaced, never followed)."""
        path = self.root.joinpath(*_safe_key(key).split("/"))
        for folder in path.parents:
            if folder == self.root:
                break
            if folder.is_symlink():
                raise NotFound(f"no such file: {key}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Write the file whole or not at all; a write that finds no room (ENOSPC, EDQUOT, EROFS) is a StorageFull."""
        path = self._path(key)
        tmp = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if exc.errno not in STORAGE_ERRNOS:
                raise
            raise StorageFull(f"the outputs folder (COMFYBENTO_OUTPUT_DIR) has no room for {len(data)} bytes "
                              f"({STORAGE_ERRNOS[exc.errno]}); retry later", folder="outputs") from exc

    def get(self, key: str) -> bytes:
        """The regular file at the key, each folder and the file opened without following a link."""
        *folders, name = _safe_key(key).split("/")
        fd = -1
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            for folder in folders:
                inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = inner
            file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            raise NotFound(f"no such file: {key}") from None
        finally:
            if fd >= 0:
                os.close(fd)
        if not stat.S_ISREG(os.fstat(file).st_mode):  # a folder or a device (fdopen would refuse a folder with an OSError)
            os.close(file)
            raise NotFound(f"no such file: {key}")
        with os.fdopen(file, "rb") as fh:
            return fh.read()

    def url(self, key: str, base_url: str) -> str:
        first, name = key.split("/", 1)
        if first == "outputs":  # a live request's stored output (front/delivery.py)
            return f"{base_url}/outputs/{name}"
        return f"{base_url}/jobs/{first}/files/{name}"

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except NotFound:
            pass

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def entries(self, prefix: str) -> Iterator[Entry]:
        """The regular files under the prefix's folder; a link (to a file or a folder) is never listed nor followed."""
        try:
            top = self._path(prefix.rstrip("/"))
        except NotFound:
            return
        folders = [top]
        while folders:
            folder = folders.pop()
            try:
                found = list(os.scandir(folder))
            except OSError:  # gone meanwhile, or not a folder
                continue
            for entry in found:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        yield Entry(Path(entry.path).relative_to(self.root).as_posix(), info.st_mtime, info.st_size)


class S3Storage:
    """An S3-compatible bucket (AWS, MinIO, moto ...); results carry presigned URLs."""

    def __init__(self, bucket: str, endpoint_url: str | None, prefix: str, url_ttl_s: int, client: Any = None) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url_ttl_s = url_ttl_s
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url or None)
        try:
            self.client.head_bucket(Bucket=bucket)
        except Exception as exc:
            raise ConfigError(f"S3 bucket {bucket!r} at {endpoint_url or 'AWS'} is not reachable: {exc}") from exc

    def _key(self, key: str) -> str:
        key = _safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except self.client.exceptions.NoSuchKey:
            raise NotFound(f"no such file: {key}") from None

    def url(self, key: str, base_url: str) -> str:
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=self.url_ttl_s))

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/")) + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def entries(self, prefix: str) -> Iterator[Entry]:
        paginator = self.client.get_paginator("list_objects_v2")
        skip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/")) + "/"):
            for o in page.get("Contents", []):
                yield Entry(str(o["Key"])[skip:], o["LastModified"].timestamp(), int(o["Size"]))
