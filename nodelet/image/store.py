"""The image store under ``<root-dir>/images``: content-addressed blobs, unpacked layers and an
index of names.

Layout::

    images/lock                     flock: exclusive for the CLI's writers (import, rm, prune),
                                    shared for the agent's pulls, which run side by side
    images/index.lock               flock held only while index.json is read and replaced
    images/index.json               {"images": {name: record}}, replaced atomically
    images/blobs/sha256/<hex>       manifests, configs, layer blobs; verified before rename
    images/layers/<diff id hex>/    one unpacked layer (overlay lowerdir form), shared
    images/tmp/                     writes in progress; anything left here is never trusted

Trust rule: a path under ``blobs/`` or ``layers/`` exists only once its content was verified
against its digest and fsync'd (a file: fsync then rename; a layer dir: syncfs then rename; a
layer's blob pulled with it: that same syncfs, then both renamed), and
a name enters the index only once every blob and layer of its image is in place. So a kill at
any point leaves only ``tmp/`` debris, which the next exclusive writer clears. Writers that
share the lock (pulls of different images) never collide: temp names are unique, a blob renamed
over an equal one changes nothing, and a layer dir another pull renamed in first wins (the
loser's copy is dropped). Layers are keyed by diff
id, not chain id: an overlay lowerdir holds one layer's diff, which does not depend on the
layers below it, so any two images with the same diff share the dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nodelet.image import manifest as mf
from nodelet.image.reference import InvalidImageNameError, parse
from nodelet.image.unpack import start_writeback, unpack_layer

_CHUNK = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)

Progress = Callable[[int], None]
"""Told the byte count of each chunk as it is stored."""


class ImageStoreError(Exception):
    """A store operation that could not be done; the message names the image or digest."""


class DigestMismatchError(ImageStoreError):
    """Content whose sha256 or size is not what its descriptor says."""


@dataclass(frozen=True)
class ImageRecord:
    name: str
    digest: str
    """What the name resolved to: an index/manifest list, or the image manifest itself."""
    manifest: str
    """The image manifest for this node's platform."""
    config: str
    """The image ID, as containerd and crictl show it."""
    stored: float
    last_used: float | None = None
    """When a container last used it, as the agent's image garbage collection last wrote."""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "digest": self.digest,
            "manifest": self.manifest,
            "config": self.config,
            "stored": self.stored,
        }
        if self.last_used is not None:
            doc["lastUsed"] = self.last_used
        return doc


def _hex(digest: str) -> str:
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise ImageStoreError(f"not a sha256 digest: {digest!r}")
    return digest[7:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


class _StoringReader:
    """What the unpacker reads of a download, written to the blob's temp file and hashed on
    the way; the stream's own errors are kept, so they are raised as they are, not as the
    unpacker's."""

    def __init__(
        self, stream: BinaryIO, out: BinaryIO, size: int, progress: Progress | None
    ) -> None:
        self.stream, self.out, self.size, self.progress = stream, out, size, progress
        self.hash = hashlib.sha256()
        self.written = 0
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if self.error is not None:
            raise self.error
        try:
            data = self.stream.read(size if size >= 0 else _CHUNK)
        except BaseException as error:
            self.error = error
            raise
        self.hash.update(data)
        self.out.write(data)
        self.out.flush()  # the disk starts on big pieces now (the reads here are 1 MiB)
        start_writeback(self.out.fileno(), self.written, len(data))
        self.written += len(data)
        if self.written > self.size:
            self.error = DigestMismatchError(f"content is more than the {self.size} bytes expected")
            raise self.error
        if self.progress is not None and data:
            self.progress(len(data))
        return data

    def finish(self, expected: str) -> None:
        """Read and store the rest (bytes the unpacker did not need), then check the blob;
        a failed download or a wrong blob raises here."""
        if self.error is None:
            while self.read(_CHUNK):
                pass
        if self.error is not None:
            raise self.error
        digest = "sha256:" + self.hash.hexdigest()
        if digest != expected or self.written != self.size:
            raise DigestMismatchError(
                f"content is {digest} ({self.written} bytes), expected {expected} "
                f"({self.size} bytes)"
            )


class ImageStore:
    def __init__(self, root_dir: Path) -> None:
        self.base = root_dir / "images"
        self.blobs = self.base / "blobs" / "sha256"
        self.layers = self.base / "layers"
        self.tmp = self.base / "tmp"
        self.index_path = self.base / "index.json"
        self.lock_path = self.base / "lock"
        self.index_lock_path = self.base / "index.lock"

    # -- locking -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the store's writer lock alone; ``on_wait`` is told when someone else has it.

        Taking it clears ``tmp/``: no live writer is using it then.
        """
        with self._lock(self.lock_path, fcntl.LOCK_EX, on_wait):
            self._clear_tmp()
            yield

    @contextlib.contextmanager
    def puller(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the writer lock shared with other pulls (the agent's: one image's pull must
        not wait for another's). An exclusive writer (``prune`` above all, which would remove
        blobs not named yet) waits until no pull holds it. ``tmp/`` is not cleared here: a
        sibling's writes are in it."""
        with self._lock(self.lock_path, fcntl.LOCK_SH, on_wait):
            yield

    def try_clear_tmp(self) -> bool:
        """Clear ``tmp/`` debris now if no writer holds the lock (an agent at start); False
        when one does (it, or the next exclusive writer, clears it)."""
        try:
            with self._lock(self.lock_path, fcntl.LOCK_EX | fcntl.LOCK_NB, None):
                self._clear_tmp()
                return True
        except BlockingIOError:
            return False

    @contextlib.contextmanager
    def _lock(self, path: Path, mode: int, on_wait: Callable[[], None] | None) -> Iterator[None]:
        """flock ``path``; every open is its own lock, so threads of one process exclude each
        other as processes do."""
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in (self.blobs, self.layers, self.tmp):
            sub.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if mode & fcntl.LOCK_NB:
                fcntl.flock(fd, mode)
            else:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait is not None:
                        on_wait()
                    fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def _clear_tmp(self) -> int:
        freed = 0
        for entry in self.tmp.iterdir():
            freed += _tree_size(entry)
            _remove_tree(entry)
        return freed

    def temp_path(self, prefix: str) -> Path:
        return self.tmp / f"{prefix}-{os.getpid()}-{secrets.token_hex(6)}"

    # -- blobs -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def ingest(
        self,
        stream: BinaryIO,
        expected: str | None = None,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> tuple[str, int]:
        """Store ``stream``'s bytes, hashing as they come; refuse them if ``expected`` (digest)
        or ``size`` do not match. Returns (digest, size)."""
        temp = self.temp_path("blob")
        hasher, written = hashlib.sha256(), 0
        with open(temp, "xb") as out:
            while chunk := stream.read(_CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                written += len(chunk)
                if size is not None and written > size:
                    break
                if progress is not None:
                    progress(len(chunk))
            digest = "sha256:" + hasher.hexdigest()
            if (expected is not None and digest != expected) or (
                size is not None and written != size
            ):
                temp.unlink()
                raise DigestMismatchError(
                    f"content is {digest} ({written} bytes), expected "
                    f"{expected or 'any digest'} ({size if size is not None else 'any'} bytes)"
                )
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o600)
        os.rename(temp, self.blob_path(digest))
        _fsync_dir(self.blobs)
        return digest, written

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise DigestMismatchError(f"content is {digest}, expected {expected}")
        if not self.has_blob(digest):
            self.ingest(io.BytesIO(data), digest, len(data))
        return digest

    def read_blob(self, digest: str) -> bytes:
        """A small blob (manifest, config), checked again: reading it is cheap and a disk
        that flipped a bit should not hand out a wrong entrypoint."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageStoreError(f"blob {digest} is not in the store") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatchError(f"stored blob {digest} is corrupt")
        return data

    # -- layers ------------------------------------------------------------------------------

    def layer_dir(self, diff_id: str) -> Path:
        return self.layers / _hex(diff_id)

    def ensure_layer(self, blob_digest: str, diff_id: str) -> Path:
        """The unpacked dir of ``diff_id``, unpacking ``blob_digest`` the first time."""
        final = self.layer_dir(diff_id)
        if final.is_dir():
            return final
        work = self.temp_path("layer")
        work.mkdir(mode=0o755)
        try:
            with open(self.blob_path(blob_digest), "rb") as blob:
                unpack_layer(blob, str(work), diff_id)
            _syncfs(work)
            try:
                os.rename(work, final)
            except OSError as error:
                # A sibling pull (another image, same diff) renamed its copy in first.
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                    raise
                _remove_tree(work)
                return final
        except BaseException:
            if work.exists():
                _remove_tree(work)
            raise
        _fsync_dir(self.layers)
        return final

    def ingest_layer(
        self,
        stream: BinaryIO,
        blob_digest: str,
        size: int,
        diff_id: str,
        progress: Progress | None = None,
    ) -> Path:
        """Store a layer's blob and unpack it in the same pass over ``stream`` (a download),
        rather than writing the blob and reading it back; both are verified (digest and size,
        diff_id) before either is renamed in. One syncfs makes the blob and the layer durable
        (instead of an fsync for the blob and a syncfs for the layer). A failure of the
        download itself, or a blob that is not what its digest says, is raised as ``ingest``
        raises it; an unpack failure of an intact blob as ``ImageStoreError("layer D: ...")``."""
        final = self.layer_dir(diff_id)
        blob_temp, work = self.temp_path("blob"), self.temp_path("layer")
        work.mkdir(mode=0o755)
        try:
            with open(blob_temp, "xb") as out:
                tee = _StoringReader(stream, out, size, progress)
                try:
                    unpack_layer(tee, str(work), diff_id)
                except Exception as error:
                    tee.finish(blob_digest)  # a damaged download is the cause, if it is one
                    raise ImageStoreError(f"layer {blob_digest}: {error}") from error
                tee.finish(blob_digest)
            os.chmod(blob_temp, 0o600)
            _syncfs(work)
            os.rename(blob_temp, self.blob_path(blob_digest))
            try:
                os.rename(work, final)
            except OSError as error:
                # A sibling pull (another image, same diff) renamed its copy in first.
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                    raise
                _remove_tree(work)
        except BaseException:
            blob_temp.unlink(missing_ok=True)
            if work.exists():
                _remove_tree(work)
            raise
        _fsync_dir(self.blobs)
        _fsync_dir(self.layers)
        return final

    # -- index -------------------------------------------------------------------------------

    def records(self) -> dict[str, ImageRecord]:
        try:
            doc = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        return {
            name: ImageRecord(
                name,
                rec["digest"],
                rec["manifest"],
                rec["config"],
                float(rec["stored"]),
                float(rec["lastUsed"]) if rec.get("lastUsed") is not None else None,
            )
            for name, rec in doc.get("images", {}).items()
        }

    def set_last_used(self, by_image_id: dict[str, float]) -> None:
        """Record when images (by ID) were last used, where that is later than the index says;
        the index is rewritten only when something changed."""
        with self._lock(self.index_lock_path, fcntl.LOCK_EX, None):
            records = self.records()
            changed = False
            for name, record in records.items():
                when = by_image_id.get(record.config)
                if when is not None and (record.last_used is None or when > record.last_used):
                    records[name] = dataclasses.replace(record, last_used=when)
                    changed = True
            if changed:
                self._write_index(records)

    def _write_index(self, records: dict[str, ImageRecord]) -> None:
        doc = {"version": 1, "images": {n: r.to_json() for n, r in sorted(records.items())}}
        temp = self.temp_path("index")
        with open(temp, "x") as out:
            json.dump(doc, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, self.index_path)
        _fsync_dir(self.base)

    def commit_image(self, names: list[str], digest: str, manifest_digest: str) -> ImageRecord:
        """Name an image whose manifest, config and unpacked layers are all stored (checked
        here, so a name never points at an incomplete image). A layer's blob may be absent when
        another image brought the same diff in another compression. Under ``writer()`` or
        ``puller()``; the index itself is read and replaced under its own short lock."""
        manifest = mf.parse_manifest(self.read_blob(manifest_digest), manifest_digest)
        config = mf.parse_config(self.read_blob(manifest.config.digest), manifest.config.digest)
        if len(config.diff_ids) != len(manifest.layers):
            raise ImageStoreError(
                f"image {manifest_digest}: {len(manifest.layers)} layers but "
                f"{len(config.diff_ids)} diff_ids in its config"
            )
        for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
            if not self.layer_dir(diff_id).is_dir():
                raise ImageStoreError(f"image {manifest_digest}: layer {layer.digest} missing")
        now = time.time()
        record = ImageRecord("", digest, manifest_digest, manifest.config.digest, now)
        with self._lock(self.index_lock_path, fcntl.LOCK_EX, None):
            records = self.records()
            for name in names:
                records[name] = ImageRecord(name, digest, manifest_digest, record.config, now)
            self._write_index(records)
        return record

    def resolve(self, text: str) -> list[ImageRecord]:
        """The records ``text`` names: a reference (normalised), a digest, or an image ID
        prefix (12+ hex chars, as crictl prints them)."""
        records = self.records()
        with contextlib.suppress(InvalidImageNameError):
            name = str(parse(text))
            if name in records:
                return [records[name]]
        hex_part = text.removeprefix("sha256:")
        if len(hex_part) >= 12 and all(c in "0123456789abcdef" for c in hex_part):
            return [
                r
                for r in records.values()
                if any(_hex(d).startswith(hex_part) for d in (r.config, r.manifest, r.digest))
            ]
        return []

    def remove(self, names: list[str]) -> None:
        """Untag ``names``; their content goes with the next ``prune``. Under ``writer()``."""
        with self._lock(self.index_lock_path, fcntl.LOCK_EX, None):
            records = self.records()
            for name in names:
                records.pop(name, None)
            self._write_index(records)

    def referenced(self) -> tuple[set[str], set[str]]:
        """Blob digests and layer diff ids that some name needs."""
        blobs: set[str] = set()
        layers: set[str] = set()
        for record in self.records().values():
            blobs.update((record.digest, record.manifest, record.config))
            manifest = mf.parse_manifest(self.read_blob(record.manifest), record.manifest)
            config = mf.parse_config(self.read_blob(record.config), record.config)
            blobs.update(layer.digest for layer in manifest.layers)
            layers.update(config.diff_ids)
        return blobs, layers

    def prune(self) -> tuple[int, int, int]:
        """Remove blobs and layers no name needs, and ``tmp/`` debris. Under ``writer()``.
        Returns (blobs removed, layers removed, bytes freed)."""
        blobs, layers = self.referenced()
        keep_blobs = {_hex(d) for d in blobs}
        keep_layers = {_hex(d) for d in layers}
        freed = self._clear_tmp()
        gone_blobs = gone_layers = 0
        for entry in self.blobs.iterdir():
            if entry.name not in keep_blobs:
                freed += entry.stat().st_size
                entry.unlink()
                gone_blobs += 1
        for entry in self.layers.iterdir():
            if entry.name not in keep_layers:
                freed += _tree_size(entry)
                # Renamed into tmp/ first: a kill mid-removal leaves debris, not a layer dir
                # that looks complete.
                doomed = self.temp_path("gone")
                os.rename(entry, doomed)
                _remove_tree(doomed)
                gone_layers += 1
        return gone_blobs, gone_layers, freed

    def image_size(self, record: ImageRecord) -> int:
        """Stored bytes of the image's blobs (compressed layers), as crictl's SIZE."""
        manifest = mf.parse_manifest(self.read_blob(record.manifest), record.manifest)
        return manifest.config.size + sum(layer.size for layer in manifest.layers)

    def inspect(self, record: ImageRecord) -> dict[str, Any]:
        manifest = mf.parse_manifest(self.read_blob(record.manifest), record.manifest)
        config = mf.parse_config(self.read_blob(record.config), record.config)
        names = sorted(n for n, r in self.records().items() if r.manifest == record.manifest)
        repo_digests = sorted({f"{parse(n).name}@{record.digest}" for n in names})
        return {
            "id": record.config,
            "repoTags": names,
            "repoDigests": repo_digests,
            "manifest": record.manifest,
            "mediaType": manifest.media_type,
            "size": self.image_size(record),
            "platform": str(config.platform),
            "created": config.created,
            "config": {
                "Entrypoint": list(config.entrypoint),
                "Cmd": list(config.cmd),
                "Env": list(config.env),
                "WorkingDir": config.working_dir,
                "User": config.user,
            },
            "layers": [
                {
                    "digest": layer.digest,
                    "mediaType": layer.media_type,
                    "size": layer.size,
                    "diffID": diff_id,
                    "dir": str(self.layer_dir(diff_id)),
                }
                for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
            ],
        }


def _tree_size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _remove_tree(path: Path) -> None:
    """Remove a file or a layer tree; dirs an unpack left 0000 or immutable-looking still go
    (we are root; rmtree does not follow symlinks)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path)
