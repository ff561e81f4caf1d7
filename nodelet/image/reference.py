"""Image references normalised as container tools do (docker/distribution's reference package).

``busybox`` is ``docker.io/library/busybox:latest``; the first path component is a registry host
only when it has a ``.`` or a ``:`` or is ``localhost``; a reference with neither tag nor digest
gets ``latest``. Pure: no IO, so the pod worker can decide on it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
HOST_IMAGE = "host"
"""``image: host``: the node's own filesystem, never pulled."""

NAME_TOTAL_LENGTH_MAX = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")


class InvalidImageNameError(ValueError):
    """kubelet's ``InvalidImageName`` reason: the reference does not parse."""


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The repository: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> str:
        """``repo@sha256:…``: kubelet's ``imageID`` form."""
        return f"{self.name}@{digest}"


def parse(text: str) -> Reference:
    """Normalise ``text``; ``InvalidImageNameError`` names what is wrong with it."""
    if not text or text != text.strip():
        raise InvalidImageNameError(
            f"invalid image reference {text!r}: empty or padded with spaces"
        )
    remainder, digest = text, None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidImageNameError(
                f"invalid image reference {text!r}: digest {digest!r} is not sha256:<64 hex>"
            )
    tag = None
    slash, colon = remainder.rfind("/"), remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidImageNameError(f"invalid image reference {text!r}: bad tag {tag!r}")
    domain, path = _split_domain(remainder, text)
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidImageNameError(
            f"invalid image reference {text!r}: repository name longer than "
            f"{NAME_TOTAL_LENGTH_MAX} characters"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def _split_domain(name: str, text: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
        if not _DOMAIN_RE.fullmatch(domain):
            raise InvalidImageNameError(
                f"invalid image reference {text!r}: bad registry {domain!r}"
            )
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    if not _PATH_RE.fullmatch(path):
        reason = "must be lowercase" if path.lower() != path else "has an invalid path"
        raise InvalidImageNameError(f"invalid image reference {text!r}: repository name {reason}")
    return domain, path


def is_host_image(image: str, host_images: tuple[str, ...] | list[str]) -> bool:
    """``image: host`` or a reference matching one of the ``hostImages`` globs.

    A glob is matched against the reference as written and as normalised, so both
    ``registry.k8s.io/etcd:*`` and ``etcd*`` read as an operator means them.
    """
    if image == HOST_IMAGE:
        return True
    candidates = {image}
    with contextlib.suppress(InvalidImageNameError):
        candidates.add(str(parse(image)))
    return any(fnmatch.fnmatchcase(c, glob) for glob in host_images for c in candidates)


def default_pull_policy(image: str) -> str:
    """kubelet's default (``SetDefaults_Container``): ``Always`` for ``:latest`` or no tag and
    no digest, ``IfNotPresent`` otherwise (a digest alone is ``IfNotPresent``)."""
    try:
        ref = parse(image)
    except InvalidImageNameError:
        return "IfNotPresent"  # validation reports the name; the default does not matter
    return "Always" if ref.tag == DEFAULT_TAG else "IfNotPresent"


def registry_host(domain: str) -> str:
    """Where ``docker.io`` images really are served from."""
    return "registry-1.docker.io" if domain == DEFAULT_DOMAIN else domain
