"""Pull from an OCI distribution registry (the Docker Registry HTTP API v2) with urllib.

Why not a library: the Python clients for the protocol (oras-py, dxf, docker-registry-client)
each pull in ``requests`` and more, handle only part of the auth dance or store blobs their own
way; what the node needs is small (a ping, a token, a manifest, blobs streamed into a store that
verifies them), so it is written here on the stdlib, ~200 lines.

Promises:
- HTTPS with the system CA bundle, plus ``ca_file`` and the registry's own CAs: every ``*.crt``
  in ``certs_dir/<host:port>/`` (docker's and containerd's ``certs.d/<host>/ca.crt`` layout; the
  agent and ``nodelet image`` use ``<root-dir>/certs.d``, see :func:`certs_dir_of`), so a node
  trusts a private registry's CA without touching the system store. Plain HTTP only for a
  registry in
  ``insecure`` or on loopback (``localhost``, ``127.0.0.0/8``, ``::1``), tried after HTTPS fails
  as docker does for insecure registries.
- Auth: a ``Bearer`` challenge is answered with a token from its realm (``service``, ``scope``;
  basic credentials sent to the realm when there are some), a ``Basic`` challenge with the
  credentials. The Authorization header is never sent on across a redirect (blob downloads are
  redirected to storage that must not see the registry's token).
- Manifests are fetched with every supported media type in ``Accept``; every blob is streamed
  into the store and verified there against its digest and size.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.client import HTTPResponse
from pathlib import Path
from typing import Any, BinaryIO

from nodelet.image import manifest as mf
from nodelet.image.assemble import MAX_MANIFEST_SIZE, store_image
from nodelet.image.reference import Reference, parse, registry_host
from nodelet.image.store import ImageRecord, ImageStore, ImageStoreError, Progress

log = logging.getLogger(__name__)

TIMEOUT = 30.0
USER_AGENT = "nodelet"


class RegistryError(ImageStoreError):
    """A registry refused or failed a request; the message carries its error code and text."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass
class RegistryOptions:
    insecure: tuple[str, ...] = ()
    """Registries (``host`` or ``host:port``) that may be reached over plain HTTP."""
    ca_file: Path | None = None
    certs_dir: Path | None = None
    """Per-registry CAs: ``certs_dir/<host:port>/*.crt`` (docker's and containerd's layout)."""
    credentials: dict[str, Credentials] = field(default_factory=dict)
    """By registry host, as in a docker ``config.json``'s ``auths``."""
    timeout: float = TIMEOUT
    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Registry (as references name it: ``docker.io``) -> mirror endpoints
    (``https://host[:port]``, ``http://`` for insecure or loopback ones), tried in order before
    the registry itself, as containerd's ``hosts.toml`` mirrors with pull and resolve."""


def parse_mirrors(items: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``REGISTRY=URL`` items (the flags' form) -> registry -> endpoints, in order."""
    mirrors: dict[str, list[str]] = {}
    for item in items:
        registry, equals, endpoint = item.partition("=")
        if not equals or not registry.strip() or not endpoint.strip():
            raise ValueError(f"{item!r}: expected REGISTRY=URL")
        mirrors.setdefault(registry.strip(), []).append(endpoint.strip())
    return {registry: tuple(endpoints) for registry, endpoints in mirrors.items()}


def mirror_problem(registry: str, endpoint: str, insecure: tuple[str, ...]) -> str | None:
    """Why a ``registryMirrors`` entry cannot be used; None when it can."""
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme not in ("https", "http") or not url.netloc:
        return f"{registry}: {endpoint!r} is not an https:// or http:// URL of a registry"
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        return f"{registry}: {endpoint!r} must name a host (and port) only, no path"
    if url.scheme == "http" and url.netloc not in insecure and not is_loopback(url.netloc):
        return (
            f"{registry}: {endpoint!r} is plain HTTP: list {url.netloc} in insecureRegistries "
            "(or use https://)"
        )
    return None


def certs_dir_of(root_dir: Path) -> Path:
    """Where a node keeps its registries' CAs: ``<root-dir>/certs.d/<host:port>/ca.crt``."""
    return root_dir / "certs.d"


def registry_cas(certs_dir: Path, host: str) -> list[Path]:
    """The ``*.crt`` files (PEM CAs) for ``host`` under ``certs_dir``, sorted."""
    if "/" in host or host in ("", ".", ".."):
        return []
    return sorted(p for p in (certs_dir / host).glob("*.crt") if p.is_file())


def load_docker_config(path: Path) -> dict[str, Credentials]:
    """``auths`` of a docker-style ``config.json`` (``auth`` = base64 ``user:password``, or
    ``username`` and ``password``); keys may be URLs (``https://index.docker.io/v1/``)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    found: dict[str, Credentials] = {}
    for key, entry in (doc.get("auths") or {}).items():
        host = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if host in ("index.docker.io", "docker.io"):
            host = "registry-1.docker.io"
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            found[host] = Credentials(user, password)
        elif entry.get("username"):
            found[host] = Credentials(entry["username"], entry.get("password", ""))
    return found


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or "]" in host else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """One registry host; keeps its scheme and token between requests."""

    def __init__(self, host: str, options: RegistryOptions, scheme: str = "https") -> None:
        self.host = host
        self.options = options
        self.scheme = scheme
        self.token: str | None = None
        self.basic = False
        context = ssl.create_default_context()
        if options.ca_file is not None:
            context.load_verify_locations(cafile=str(options.ca_file))
        if options.certs_dir is not None:
            for ca in registry_cas(options.certs_dir, host):
                context.load_verify_locations(cafile=str(ca))
        # urllib's redirect handler follows 30x for GET and drops "unredirected" headers,
        # which is how Authorization is added here.
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        self.may_use_http = host in options.insecure or is_loopback(host)

    def _open(self, path: str, headers: dict[str, str], auth: bool) -> HTTPResponse:
        request = urllib.request.Request(f"{self.scheme}://{self.host}{path}")
        request.add_header("User-Agent", USER_AGENT)
        for key, value in headers.items():
            request.add_header(key, value)
        creds = self.options.credentials.get(self.host)
        if auth and self.token is not None:
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        elif auth and self.basic and creds is not None:
            request.add_unredirected_header("Authorization", _basic(creds))
        response: HTTPResponse = self.opener.open(request, timeout=self.options.timeout)
        return response

    def ping(self) -> None:
        """``GET /v2/``: settles the scheme and learns how to authenticate."""
        try:
            self._open("/v2/", {}, auth=False).close()
            return
        except urllib.error.HTTPError as error:
            if error.code != 401:
                raise _registry_error(self.host, "GET /v2/", error) from None
            error.close()
        except (urllib.error.URLError, OSError) as error:
            if not self.may_use_http or self.scheme == "http":
                raise RegistryError(f"registry {self.host}: {_reason(error)}") from None
            self.scheme = "http"
            try:
                self.ping()
            except RegistryError as plain:
                # Both failed: the HTTPS error first (an untrusted certificate is the likely
                # cause), not only the "400" an HTTPS-only server answers plain HTTP with.
                why = str(plain).removeprefix(f"registry {self.host}: ")
                raise RegistryError(
                    f"registry {self.host}: {_reason(error)} (plain HTTP: {why})"
                ) from None

    def _authenticate(self, challenge: str, scope: str) -> None:
        kind, _, params = challenge.partition(" ")
        creds = self.options.credentials.get(self.host)
        if kind.lower() == "basic":
            if creds is None:
                raise RegistryError(f"registry {self.host}: needs credentials (basic auth)")
            self.basic = True
            return
        if kind.lower() != "bearer":
            raise RegistryError(f"registry {self.host}: unsupported auth challenge {kind!r}")
        fields = _challenge_params(params)
        realm = fields.get("realm")
        if not realm:
            raise RegistryError(f"registry {self.host}: Bearer challenge without a realm")
        query = {"scope": fields.get("scope") or scope}
        if fields.get("service"):
            query["service"] = fields["service"]
        request = urllib.request.Request(f"{realm}?{urllib.parse.urlencode(query)}")
        request.add_header("User-Agent", USER_AGENT)
        if creds is not None:
            request.add_unredirected_header("Authorization", _basic(creds))
        try:
            with self.opener.open(request, timeout=self.options.timeout) as response:
                doc = json.loads(response.read(1 << 20))
        except urllib.error.HTTPError as error:
            what = f"token from {realm}" + (" (no credentials for it)" if creds is None else "")
            raise _registry_error(self.host, what, error) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise RegistryError(f"registry {self.host}: token from {realm}: {error}") from None
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"registry {self.host}: token server {realm} sent no token")
        self.token = token

    def get(self, path: str, headers: dict[str, str], scope: str) -> HTTPResponse:
        """GET with auth: one retry after answering a 401's challenge."""
        for attempt in range(2):
            try:
                return self._open(path, headers, auth=True)
            except urllib.error.HTTPError as error:
                challenge = error.headers.get("WWW-Authenticate", "")
                if error.code != 401 or attempt or not challenge:
                    raise _registry_error(self.host, f"GET {path}", error) from None
                error.close()
                self._authenticate(challenge, scope)
            except (urllib.error.URLError, OSError) as error:
                raise RegistryError(f"registry {self.host}: GET {path}: {_reason(error)}") from None
        raise AssertionError("unreachable")


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _challenge_params(text: str) -> dict[str, str]:
    """``realm="https://auth",service="registry",scope="repository:x:pull"``."""
    fields: dict[str, str] = {}
    rest = text.strip()
    while rest:
        key, _, rest = rest.partition("=")
        rest = rest.lstrip()
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
        else:
            value, _, rest = rest.partition(",")
            rest = "," + rest
        fields[key.strip().lower()] = value
        rest = rest.lstrip().removeprefix(",").lstrip()
    return fields


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error)


def _registry_error(host: str, what: str, error: urllib.error.HTTPError) -> RegistryError:
    """The registry's own error codes and messages (``{"errors": [{"code", "message"}]}``)."""
    detail = ""
    try:
        doc: Any = json.loads(error.read(1 << 16))
        errors = doc.get("errors") or []
        detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
    except (ValueError, AttributeError, OSError):
        pass
    finally:
        error.close()
    return RegistryError(
        f"registry {host}: {what}: {error.code} {error.reason}" + (f" ({detail})" if detail else "")
    )


def pull(
    store: ImageStore,
    image: str,
    options: RegistryOptions,
    progress: Progress | None = None,
    want: mf.Platform | None = None,
) -> ImageRecord:
    """Pull ``image`` into the store and name it, from its registry's mirrors in order, then
    from the registry itself; a source that fails is logged and the next one tried, and when
    all fail the error names each. The image keeps its own name whoever served it. Under
    ``store.writer()`` or ``store.puller()``."""
    ref = parse(image)
    upstream = RegistryClient(registry_host(ref.domain), options)
    sources = [_mirror_client(url, options) for url in options.mirrors.get(ref.domain, ())]
    failures: list[str] = []
    for client in [*sources, upstream]:
        try:
            return _pull_from(client, store, ref, progress, want)
        except (ImageStoreError, OSError) as error:
            if client is upstream:
                if not failures:
                    raise
                failures.append(str(error))
                break
            log.warning("pull of %s from mirror %s failed, trying the next source: %s",
                        image, client.host, error)  # fmt: skip
            failures.append(f"mirror {client.host}: {error}")
    raise RegistryError(f"every source failed: {'; '.join(failures)}")


def _mirror_client(endpoint: str, options: RegistryOptions) -> RegistryClient:
    url = urllib.parse.urlsplit(endpoint)
    return RegistryClient(url.netloc, options, scheme=url.scheme)


def _pull_from(
    client: RegistryClient,
    store: ImageStore,
    ref: Reference,
    progress: Progress | None,
    want: mf.Platform | None,
) -> ImageRecord:
    client.ping()
    scope = f"repository:{ref.path}:pull"
    top = _top_descriptor(store, client, ref, scope)

    @contextlib.contextmanager
    def fetch(desc: mf.Descriptor) -> Iterator[BinaryIO]:
        kind = "manifests" if desc.media_type in mf.ACCEPT else "blobs"
        headers = {"Accept": ", ".join(mf.ACCEPT)} if kind == "manifests" else {}
        with client.get(f"/v2/{ref.path}/{kind}/{desc.digest}", headers, scope) as response:
            yield response

    return store_image(store, fetch, top, [str(ref)], want, progress=progress)


def _top_descriptor(
    store: ImageStore, client: RegistryClient, ref: Reference, scope: str
) -> mf.Descriptor:
    """The descriptor the reference names, its manifest (or index) stored: by digest, the
    bytes must hash to it; by tag, the digest is computed from the bytes (and must agree with
    ``Docker-Content-Digest`` when the registry sends one)."""
    path = f"/v2/{ref.path}/manifests/{ref.digest or ref.tag}"
    with client.get(path, {"Accept": ", ".join(mf.ACCEPT)}, scope) as response:
        data = response.read(MAX_MANIFEST_SIZE + 1)
        headers: Message = response.headers
    if len(data) > MAX_MANIFEST_SIZE:
        raise RegistryError(f"registry {client.host}: {path}: manifest too large")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    declared = headers.get("Docker-Content-Digest")
    for expected in (ref.digest, declared):
        if expected and expected != digest:
            raise RegistryError(
                f"registry {client.host}: {path}: expected {expected} but the manifest is {digest}"
            )
    store.put_bytes(data, digest)
    media_type = mf.media_type_of(data, headers.get_content_type(), path)
    return mf.Descriptor(media_type, digest, len(data))
