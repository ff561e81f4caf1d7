"""Unpack one layer tar into an empty dir, safely, in overlayfs' on-disk form.

Safety: every entry name is checked (no absolute path, no ``..``) and every parent dir is
opened component by component from the layer dir's fd with ``O_NOFOLLOW | O_DIRECTORY``, so a
symlink that an earlier entry planted is never followed; hard link sources are resolved the
same way, so they stay inside the layer. Nothing outside the layer dir is ever opened for
writing. A refused entry fails the whole layer (``UnsafeLayerError``): a half-unpacked layer is
never used, the store throws the dir away.

Whiteouts: ``.wh.NAME`` becomes overlayfs' whiteout (a 0/0 char device ``NAME``), and
``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its dir, so the layer dirs can be
overlay lowerdirs as they are. ``trusted.overlay.*`` xattrs from the tar itself are dropped (a
layer must not plant redirects or metacopy for the overlay). Owners are numeric, as container
tools write them; modes (setuid included), mtimes, device nodes, fifos and xattrs are kept.

Compression is sniffed from the blob's first bytes (media types lie in docker-archives, whose
layers are plain tars): gzip through the stdlib's zlib; zstd through Debian's ``zstd`` binary as a
pipe. Python 3.11 has no zstd module; the ``zstandard`` wheel would be a compiled dependency
for a format few images use, while ``zstd`` is a small Debian package the Makefile installs
(and ``libzstd`` is already on every Debian). A missing binary fails the layer with a message
naming the package.

The uncompressed stream is hashed while it is read: the layer is accepted only when that
digest equals the config's ``diff_id``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Iterator
from typing import IO, Protocol

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX = "SCHILY.xattr."
_CHUNK = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_MIN = 256 << 10  # smaller files are left to the layer's syncfs
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 2, 4, 8, 16  # gzip header flags (RFC 1952)
_GZIP_TRAILER = 8  # CRC-32 and size
_HEADER, _BODY, _TRAILER, _BETWEEN = range(4)  # where a gzip stream is read


class Readable(Protocol):
    """A layer blob: a file, bytes in memory, or a download being stored as it is read."""

    def read(self, size: int = -1, /) -> bytes: ...


class UnsafeLayerError(Exception):
    """An entry that would write outside the layer dir, or a layer that is not what its
    digest says; the message names the entry."""


class _LayerReader:
    """The layer's tar stream for ``tarfile``, hashed as it is produced.

    gzip is inflated here with ``zlib`` from large reads of the blob, and the uncompressed
    bytes are hashed a chunk at a time: ``GzipFile`` reads 8 KiB at a time and ``tarfile``'s
    stream mode asks for 10 KiB at a time, so going through them cost more Python calls than
    the inflating and hashing themselves. Members are inflated raw (their headers parsed here,
    their CRC-32 and size trailers skipped): the diff_id's sha256 over the same bytes is the
    stronger check, and the CRC cost a tenth of a pull's CPU. ``tarfile`` still reads small
    pieces; they are served from the current chunk by offset, without copying the rest.
    """

    def __init__(self, raw: Readable, gzipped: bool, head: bytes = b"") -> None:
        """``head``: bytes already read from ``raw`` (to sniff the compression)."""
        self.raw = raw
        self.hash = hashlib.sha256()
        self._gzipped = gzipped
        self._state = _HEADER
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._trailer = 0
        self._pending = head  # compressed input not inflated yet (bounded by max_length)
        self._chunk = b""
        self._offset = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if self._offset >= len(self._chunk) and not self._fill():
            return b""
        if size < 0:
            size = len(self._chunk) - self._offset
        start = self._offset
        self._offset = min(len(self._chunk), start + size)
        if start == 0 and self._offset == len(self._chunk):
            return self._chunk
        return self._chunk[start : self._offset]

    def drain(self) -> None:
        """Hash the rest: the tar's end blocks and padding belong to the diff_id too."""
        while self._fill():
            pass

    def _fill(self) -> bool:
        """The next uncompressed chunk, hashed; False at the end of the stream."""
        while not self._done:
            chunk = self._next() if self._gzipped else self._next_plain()
            if chunk:
                self.hash.update(chunk)
                self._chunk, self._offset = chunk, 0
                return True
        self._chunk, self._offset = b"", 0
        return False

    def _next_plain(self) -> bytes:
        data, self._pending = self._pending or self.raw.read(_CHUNK), b""
        self._done = not data
        return data

    def _next(self) -> bytes:
        """One step through the gzip members: some output, or b"" after a step without any."""
        if self._state == _BODY:
            out = self._inflated()  # also what zlib still holds once all input is in
            if out or self._state != _BODY or self._pending:
                return out
        if not self._pending:
            self._pending = self.raw.read(_CHUNK)
            if not self._pending:
                if self._state != _BETWEEN:
                    raise UnsafeLayerError("layer's gzip stream ends before its last member does")
                self._done = True
                return b""
        if self._state == _BETWEEN:  # zero padding, then another member (gzip allows both)
            self._pending = self._pending.lstrip(b"\0")
            if self._pending:
                self._state = _HEADER
        elif self._state == _HEADER:
            size = _gzip_header_size(self._pending)
            if size is None:  # split across reads
                more = self.raw.read(_CHUNK)
                if not more or len(self._pending) > _CHUNK:
                    raise UnsafeLayerError("layer's gzip stream is damaged: a bad member header")
                self._pending += more
            else:
                self._pending = self._pending[size:]
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                self._state = _BODY
        elif self._state == _TRAILER:
            taken = min(self._trailer, len(self._pending))
            self._pending, self._trailer = self._pending[taken:], self._trailer - taken
            if not self._trailer:
                self._state = _BETWEEN
        return b""

    def _inflated(self) -> bytes:
        try:
            out = self._inflate.decompress(self._pending, _CHUNK)
        except zlib.error as error:
            raise UnsafeLayerError(f"layer's gzip stream is damaged: {error}") from None
        if self._inflate.eof:
            self._pending = self._inflate.unused_data
            self._state, self._trailer = _TRAILER, _GZIP_TRAILER
        else:
            self._pending = self._inflate.unconsumed_tail
        return out


def _gzip_header_size(data: bytes) -> int | None:
    """The length of the gzip member header ``data`` starts with (RFC 1952); None when
    ``data`` ends inside it."""
    if len(data) < 10:
        return None
    if not data.startswith(GZIP_MAGIC) or data[2] != 8 or data[3] & 0xE0:
        raise UnsafeLayerError("layer's gzip stream is damaged: not a gzip member")
    flags, size = data[3], 10
    if flags & _FEXTRA:
        if len(data) < size + 2:
            return None
        size += 2 + int.from_bytes(data[size : size + 2], "little")
    for flag in (_FNAME, _FCOMMENT):  # zero-terminated
        if flags & flag:
            end = data.find(b"\0", size)
            if end < 0:
                return None
            size = end + 1
    if flags & _FHCRC:
        size += 2
    return size if size <= len(data) else None


@contextlib.contextmanager
def decompressed(blob: Readable) -> Iterator[_LayerReader]:
    """The layer's tar stream, whatever the compression its first bytes show. ``blob`` is read
    once, front to back, never sought: it may be a download stored as it is unpacked."""
    head = b""
    while len(head) < 4 and (more := blob.read(4 - len(head))):  # a stream may give less
        head += more
    if head.startswith(GZIP_MAGIC):
        yield _LayerReader(blob, gzipped=True, head=head)
        return
    if head == ZSTD_MAGIC:
        if shutil.which("zstd") is None:
            raise UnsafeLayerError(
                "layer is zstd-compressed and the zstd binary is missing (install Debian's zstd)"
            )
        with subprocess.Popen(
            ["zstd", "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            feeder = threading.Thread(target=_feed, args=(head, blob, proc.stdin), daemon=True)
            feeder.start()
            try:
                yield _LayerReader(proc.stdout, gzipped=False)
                proc.stdout.read()
            finally:
                proc.stdout.close()
                code = proc.wait()
                feeder.join()
            if code != 0:
                raise UnsafeLayerError(f"zstd could not decompress the layer (exit {code})")
        return
    yield _LayerReader(blob, gzipped=False, head=head)


def _feed(head: bytes, source: Readable, sink: IO[bytes]) -> None:
    try:
        sink.write(head)
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
    except BrokenPipeError:
        pass  # zstd stopped early: its exit status tells why
    finally:
        with contextlib.suppress(BrokenPipeError):
            sink.close()


def unpack_layer(blob: Readable, dest: str, diff_id: str | None) -> None:
    """Unpack ``blob`` into the empty dir ``dest``; check the uncompressed digest."""
    root = os.open(dest, _DIR_FLAGS)
    try:
        with decompressed(blob) as reader:
            dirs = _extract_all(reader, root)
            reader.drain()
        for name, member in reversed(dirs):
            try:
                fd = _open_dir(root, name, create=False)
            except (UnsafeLayerError, FileNotFoundError):
                continue  # a later entry replaced the dir (or a parent) with a non-dir
            try:
                _set_metadata_fd(fd, member)
            finally:
                os.close(fd)
    finally:
        os.close(root)
    got = "sha256:" + reader.hash.hexdigest()
    if diff_id is not None and got != diff_id:
        raise UnsafeLayerError(f"layer content is {got}, its config says {diff_id}")


def _extract_all(reader: _LayerReader, root: int) -> list[tuple[str, tarfile.TarInfo]]:
    dirs: dict[str, tarfile.TarInfo] = {}
    try:
        tar = tarfile.open(fileobj=reader, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
    except tarfile.TarError as error:
        raise UnsafeLayerError(f"layer is not a tar: {error}") from None
    with tar:
        try:
            for member in tar:
                name = safe_name(member.name)
                if name is None:
                    if member.isdir():
                        dirs[""] = member
                    continue
                _extract_one(tar, member, name, root)
                if member.isdir():
                    dirs[name] = member
        except tarfile.TarError as error:
            raise UnsafeLayerError(f"layer tar is damaged: {error}") from None
    return list(dirs.items())


def safe_name(raw: str) -> str | None:
    """The entry's path relative to the layer dir; ``None`` for the root itself.

    Absolute names and ``..`` components are refused, not rewritten: a layer that carries
    them was made to attack the host.
    """
    if raw.startswith("/"):
        raise UnsafeLayerError(f"layer entry {raw!r}: absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayerError(f"layer entry {raw!r}: '..' in the path")
    if any("\0" in p for p in parts):
        raise UnsafeLayerError(f"layer entry {raw!r}: NUL in the path")
    return "/".join(parts) if parts else None


def _open_dir(root: int, path: str, create: bool) -> int:
    """An fd for ``path`` under ``root``, opened one component at a time without following
    a symlink; missing dirs are made (0755, as tar does for implied parents) when ``create``."""
    fd = os.dup(root)
    for part in path.split("/") if path else []:
        try:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeLayerError(
                    f"layer path {path!r}: {part!r} is a symlink or not a dir"
                ) from None
            raise
        os.close(fd)
        fd = nxt
    return fd


def _remove(parent: int, base: str) -> None:
    """Clear ``base`` for a new entry: tar's last entry wins. A dir is kept for a dir entry
    (the caller checks), removed with its contents otherwise."""
    try:
        info = os.stat(base, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        try:
            _clear_dir(fd)
        finally:
            os.close(fd)
        os.rmdir(base, dir_fd=parent)
    else:
        os.unlink(base, dir_fd=parent)


def _clear_dir(fd: int) -> None:
    for entry in os.listdir(fd):
        _remove(fd, entry)


def _extract_one(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, root: int) -> None:
    parent_path, _, base = name.rpartition("/")
    parent = _open_dir(root, parent_path, create=True)
    try:
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs' own bookkeeping (.wh..wh.plnk): nothing for overlay
        if base.startswith(WHITEOUT_PREFIX):
            hidden = base[len(WHITEOUT_PREFIX) :]
            if not hidden or "/" in hidden or hidden in (".", ".."):
                raise UnsafeLayerError(f"layer entry {member.name!r}: bad whiteout")
            _remove(parent, hidden)
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
            return
        _make_entry(tar, member, parent, root, base)
    finally:
        os.close(parent)


def _make_entry(
    tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, root: int, base: str
) -> None:
    if member.isdir():
        try:
            info = os.stat(base, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode):
                _remove(parent, base)
                os.mkdir(base, 0o700, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(base, 0o700, dir_fd=parent)
        return  # metadata once every child is in (children change the dir's mtime)
    _remove(parent, base)
    if member.isreg():
        fd = os.open(
            base,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=parent,
        )
        try:
            source = tar.extractfile(member)
            assert source is not None
            offset = 0
            while chunk := source.read(_CHUNK):
                _write_all(fd, chunk)
                start_writeback(fd, offset, len(chunk))
                offset += len(chunk)
            _set_metadata_fd(fd, member)
        finally:
            os.close(fd)
        return
    if member.issym():
        os.symlink(member.linkname, base, dir_fd=parent)
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        _set_xattrs_path(parent, base, member)
        os.utime(base, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        return
    if member.islnk():
        _hard_link(member, parent, root, base)
        return
    if member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        os.mknod(base, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(base, stat.S_IMODE(member.mode), dir_fd=parent)
        _set_xattrs_path(parent, base, member)
        os.utime(base, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        return
    raise UnsafeLayerError(f"layer entry {member.name!r}: unsupported type {member.type!r}")


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a big piece of a file to disk now (``sync_file_range``, not waiting), so
    the disk works while the rest is downloaded and unpacked, and the sync that makes the
    layer durable finds little left to write. Advisory: an error changes nothing."""
    if length >= _WRITEBACK_MIN:
        _libc.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hard_link(member: tarfile.TarInfo, parent: int, root: int, base: str) -> None:
    target = safe_name(member.linkname)
    if target is None:
        raise UnsafeLayerError(f"layer entry {member.name!r}: hard link to the layer root")
    src_parent_path, _, src_base = target.rpartition("/")
    src_parent = _open_dir(root, src_parent_path, create=False)
    try:
        info = os.stat(src_base, dir_fd=src_parent, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            raise UnsafeLayerError(f"layer entry {member.name!r}: hard link to a dir")
        os.link(src_base, base, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        raise UnsafeLayerError(
            f"layer entry {member.name!r}: hard link to {member.linkname!r}, not in this layer"
        ) from None
    finally:
        os.close(src_parent)


def _set_metadata_fd(fd: int, member: tarfile.TarInfo) -> None:
    os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, stat.S_IMODE(member.mode))  # after chown: chown clears setuid/setgid
    for key, value in _xattrs(member):
        os.setxattr(fd, key, value)
    os.utime(fd, (member.mtime, member.mtime))


def _set_xattrs_path(parent: int, base: str, member: tarfile.TarInfo) -> None:
    xattrs = list(_xattrs(member))
    if not xattrs:
        return
    # Linux has no *xattrat before 6.13's setxattrat; /proc/self/fd/N/base under the parent
    # fd keeps the lookup inside the layer and does not follow ``base`` itself.
    path = f"/proc/self/fd/{parent}/{base}"
    for key, value in xattrs:
        os.setxattr(path, key, value, follow_symlinks=False)


def _xattrs(member: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PAX):
            continue
        name = key[len(_XATTR_PAX) :]
        if name.startswith("trusted.overlay."):
            continue
        yield name, value.encode("utf-8", "surrogateescape")
