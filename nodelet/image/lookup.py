"""What a container start needs of a stored image: its config and its layer dirs, and files
read out of those layers (``/etc/passwd``, ``/etc/group``) as the overlay would show them.

The seam between image pulls and container starts: the agent makes sure an image is present
(per imagePullPolicy), then every start looks it up here, in the local store only.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from nodelet.image import manifest as mf
from nodelet.image.manager import find_image
from nodelet.image.reference import InvalidImageNameError, parse
from nodelet.image.store import ImageStore, ImageStoreError
from nodelet.image.unpack import OPAQUE_XATTR

FILE_LIMIT = 4 << 20
"""A passwd or group file larger than this is not read (an image's, so not trusted)."""


@dataclass(frozen=True)
class ImageInfo:
    reference: str
    """The reference as the pod wrote it."""
    image_id: str
    """The config digest (what containerd and crictl call the image ID)."""
    repo_digest: str | None
    """``repo@sha256:…`` of the stored manifest or index: kubelet's ``imageID`` form."""
    config: mf.ImageConfig
    layers: tuple[str, ...]
    """Unpacked layer dirs, top layer first (overlayfs's lowerdir order)."""


class ImageLookupError(ValueError):
    """The store names the image but what it holds for it cannot be read."""


def local_image(store: ImageStore, reference: str) -> ImageInfo | None:
    """The stored image ``reference`` names (by the image manager's rule: its normalised name,
    or ``repo@digest`` for any name of the repo with that digest), or None when it is not
    (completely) stored. Raises ImageLookupError when its manifest or config is damaged."""
    try:
        ref = parse(reference)
    except InvalidImageNameError:
        return None
    try:
        record = find_image(store, ref)
        if record is None:
            return None
        manifest = mf.parse_manifest(store.read_blob(record.manifest), record.manifest)
        config = mf.parse_config(store.read_blob(manifest.config.digest), manifest.config.digest)
    except FileNotFoundError:
        return None  # pruned under us: as good as absent
    except (ImageStoreError, mf.ManifestError, OSError, ValueError) as err:
        raise ImageLookupError(f"image {reference!r} in the store: {err}") from None
    layers = tuple(str(store.layer_dir(d)) for d in reversed(config.diff_ids))
    if not all(os.path.isdir(layer) for layer in layers):
        return None
    return ImageInfo(reference, record.config, ref.with_digest(record.digest), config, layers)


class _Found(Enum):
    NOT_HERE = 1
    """This layer says nothing about the path: look in the one below."""
    ABSENT = 2
    """Whited out, hidden by an opaque dir, or not a regular file."""


def read_image_file(layers: Sequence[str], path: str) -> str | None:
    """The text of ``path`` as the container would see it in the overlay of ``layers`` (top
    first): whiteouts and opaque dirs respected, symlinks never followed (a symlinked file or
    parent reads as absent). None when absent or larger than ``FILE_LIMIT``."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    for layer in layers:
        found = _in_layer(layer, parts)
        if isinstance(found, str):
            return found
        if found is _Found.ABSENT:
            return None
    return None


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0)


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _in_layer(layer: str, parts: list[str]) -> str | _Found:
    directory = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    hidden_below = False
    try:
        for name in parts[:-1]:
            try:
                info = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                return _Found.ABSENT if hidden_below else _Found.NOT_HERE
            if not stat.S_ISDIR(info.st_mode):
                return _Found.ABSENT  # a whiteout or a non-dir covers the whole path
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=directory)  # fmt: skip
            os.close(directory)
            directory = child
            hidden_below = hidden_below or _opaque(directory)
        try:
            info = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return _Found.ABSENT if hidden_below else _Found.NOT_HERE
        if _is_whiteout(info) or not stat.S_ISREG(info.st_mode) or info.st_size > FILE_LIMIT:
            return _Found.ABSENT
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        with os.fdopen(fd, "rb") as file:
            return file.read(FILE_LIMIT).decode(errors="replace")
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.ELOOP):
            return _Found.ABSENT
        raise
    finally:
        os.close(directory)
