"""A model's files across servers: the manifest a generator publishes, the fetch of a peer.

Servers that share a models directory see each other's models at once (the registry reads the
directory on every lookup). Servers that do not (containers without a shared volume) fetch a
missing model from the generator: ``GET /api/generator/models/{name}/files`` gives the
manifest (each file's name, size and sha256), ``.../files/{file}`` its bytes. Every file is
checked against its digest and the whole directory appears at once (written in a staging
directory beside it, then renamed), so a half-fetched model is never visible to the registry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .checkpoint import CONFIG_FILE, WEIGHTS_FILE
from .registry import ModelRegistry

logger = logging.getLogger(__name__)

MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)
CHUNK_BYTES = 1 << 20


class ModelFetchError(RuntimeError):
    """The generator does not have the model, or what it sent does not match its manifest."""


@dataclass(frozen=True)
class FileDigest:
    name: str
    size: int
    sha256: str


_digests: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256
_digests_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """The file's sha256, remembered while its size and modification time stay the same."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _digests_lock:
        known = _digests.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            digest.update(block)
    value = digest.hexdigest()
    with _digests_lock:
        _digests[key] = value
    return value


def manifest(registry: ModelRegistry, name: str) -> list[FileDigest]:
    """The model's files with sizes and digests (raises the registry's errors)."""
    path = registry.path_of(name)
    registry.info(name)  # ModelNotFoundError for an incomplete or missing model
    return [
        FileDigest(file, (path / file).stat().st_size, sha256_file(path / file))
        for file in MODEL_FILES
    ]


_fetch_locks: dict[str, threading.Lock] = {}
_fetch_locks_guard = threading.Lock()


def fetch_model(
    registry: ModelRegistry,
    name: str,
    *,
    generator_url: str,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> bool:
    """Copy model ``name`` from the generator at ``generator_url`` into ``registry``.

    Returns False when the generator has no such model; raises ModelFetchError when it
    answers otherwise than expected. Concurrent fetches of one name in this process wait for
    the first; a model that appeared meanwhile (another process) is kept as it is.
    """
    target = registry.path_of(name)  # validates the name before it goes into a URL
    with _fetch_locks_guard:
        lock = _fetch_locks.setdefault(str(target), threading.Lock())
    with lock:
        if registry.exists(name):
            return True
        base = f"{generator_url}/api/generator/models/{name}/files"
        with httpx.Client(headers=headers or {}, timeout=timeout_s, follow_redirects=False) as http:
            listed = http.get(base)
            if listed.status_code == 404:
                return False
            _expect_ok(listed, base)
            files = _parse_manifest(listed.json())
            staging = target.with_name(f".{name}.fetch-{uuid.uuid4().hex[:8]}")
            staging.mkdir(parents=True)
            try:
                for entry in files:
                    _download(http, f"{base}/{entry.name}", staging / entry.name, entry)
                _publish(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    logger.info("fetched model %s from %s", name, generator_url)
    return True


def _parse_manifest(body: Any) -> list[FileDigest]:
    try:
        files = [
            FileDigest(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in body["files"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFetchError(f"the generator's manifest is malformed: {exc}") from None
    if sorted(f.name for f in files) != sorted(MODEL_FILES):
        raise ModelFetchError(f"the manifest lists {[f.name for f in files]}, not {MODEL_FILES}")
    return files


def _download(http: httpx.Client, url: str, destination: Path, entry: FileDigest) -> None:
    digest, size = hashlib.sha256(), 0
    with http.stream("GET", url) as response, destination.open("wb") as out:
        _expect_ok(response, url)
        for block in response.iter_bytes(CHUNK_BYTES):
            size += len(block)
            if size > entry.size:
                raise ModelFetchError(f"{url} sent more than the {entry.size} bytes listed")
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise ModelFetchError(
            f"{entry.name} does not match the manifest (size {size} of {entry.size}, "
            f"sha256 {digest.hexdigest()[:12]}… of {entry.sha256[:12]}…)"
        )
    os.chmod(destination, 0o644)


def _publish(staging: Path, target: Path) -> None:
    """Rename the complete directory into place; one that got there first is kept."""
    try:
        staging.rename(target)
    except OSError:
        if not target.exists():
            raise
        logger.info("model %s appeared while it was fetched; keeping that copy", target.name)


def _expect_ok(response: httpx.Response, url: str) -> None:
    if response.status_code != 200:
        response.read()
        raise ModelFetchError(f"{url} answered {response.status_code}: {response.text[:200]}")
