"""Who may call the kubelet API on :10250, decided as kubelet decides it.

Authentication is kubelet's union: an x509 client certificate verified against ``clientCAFile``
(the server's ``SSLContext`` did the verifying; CN is the user, O the groups), else a bearer
token checked by a ``TokenReview`` (cached ``cacheTTL``, keyed by a keyed hash of the token, so
neither the cache nor a log line holds a token), else ``system:anonymous`` when anonymous auth
is on. A token the API server rejects is a 401 even with anonymous auth on, as in kubelet.
Authorization is ``AlwaysAllow`` or ``Webhook``: a ``SubjectAccessReview`` with kubelet's
attribute mapping (``pkg/kubelet/server/auth.go``), allowed answers cached 5 min, denied 30 s.
Headers such as ``X-Remote-User`` are never read: only the TLS peer and the token say who calls.
Bodies and statuses are kubelet's: 401 ``Unauthorized``, 403 ``Forbidden (user=…, verb=…,
resource=…, subresource=…)``, 500 ``Authorization error (…)`` when the review could not be made.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import urllib3
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Json = dict[str, Any]
K = TypeVar("K")
V = TypeVar("V")

USER_KEY = "nodelet.user"
"""Where the middleware leaves the authenticated ``UserInfo`` on the request."""
ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
AUTHENTICATED = "system:authenticated"
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
REVIEW_TIMEOUT_SECONDS = 10.0
"""kubelet's webhook timeout for both reviews (``TokenAccessReviewTimeout``)."""
WS_TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io."
"""A browser-style WebSocket client's bearer token rides in Sec-WebSocket-Protocol."""

_VERBS = {"POST": "create", "GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
"""kubelet's table; any other method (HEAD, OPTIONS) leaves the verb empty, as kubelet does."""
_SUBRESOURCES = (
    ("/stats/", "stats"),
    ("/metrics", "metrics"),
    ("/logs/", "log"),
    ("/spec/", "spec"),
)
"""Path prefixes with a subresource of their own; every other path is ``proxy``."""


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...]
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthSettings:
    anonymous: bool
    """``--anonymous-auth``: nodelet's default is false (kubelet's is true)."""
    client_ca_file: Path | None
    """``--client-ca-file``: the server's SSLContext verifies peers against it."""
    webhook_authentication: bool
    """``--authentication-token-webhook``: bearer tokens through TokenReview."""
    authn_cache_ttl: float = 120.0
    authorization_mode: str = "AlwaysAllow"
    """``AlwaysAllow`` or ``Webhook``."""
    authz_cache_authorized_ttl: float = 300.0
    authz_cache_unauthorized_ttl: float = 30.0


@dataclass(frozen=True)
class Attributes:
    """What is asked of the authorizer: kubelet's ``AttributesRecord`` for one request."""

    user: UserInfo
    verb: str
    subresource: str
    name: str
    path: str
    resource: str = "nodes"
    api_version: str = "v1"


class ReviewError(Exception):
    """A review could not be made (no client yet, API server unreachable or refusing)."""


Post = Callable[[str, Json], Awaitable[Json]]
"""Sends one review object to an API path and returns the answer (raises ReviewError)."""


def is_subpath(subpath: str, path: str) -> bool:
    """kubelet's ``isSubpath``: ``/stats`` and ``/stats/x`` are under ``/stats/``, ``/statsx``
    is not."""
    path = path.removesuffix("/")
    return subpath == path or (
        subpath.startswith(path) and subpath[len(path) : len(path) + 1] == "/"
    )


def request_attributes(user: UserInfo, method: str, path: str, node_name: str) -> Attributes:
    """kubelet's ``GetRequestAttributes``: verb from the method, resource ``nodes`` named after
    the node, subresource by path prefix, ``proxy`` for everything else."""
    subresource = next((sub for prefix, sub in _SUBRESOURCES if is_subpath(path, prefix)), "proxy")
    return Attributes(user, _VERBS.get(method, ""), subresource, node_name, path)


def forbidden_text(attrs: Attributes) -> str:
    return (
        f"Forbidden (user={attrs.user.name}, verb={attrs.verb}, resource={attrs.resource}, "
        f"subresource={attrs.subresource})"
    )


def authorization_error_text(attrs: Attributes) -> str:
    return (
        f"Authorization error (user={attrs.user.name}, verb={attrs.verb}, "
        f"resource={attrs.resource}, subresource={attrs.subresource})"
    )


def user_from_peercert(peercert: Mapping[str, Any] | None) -> UserInfo | None:
    """The user of a verified client certificate (``SSLSocket.getpeercert()``'s dict): the last
    CN, as Go's ``pkix.Name`` keeps it, and every O in order; None without a cert or a CN."""
    if not peercert:
        return None
    common_name, organizations = "", []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = str(value)
            elif key == "organizationName":
                organizations.append(str(value))
    if not common_name:
        return None
    return UserInfo(common_name, tuple(organizations))


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """apiserver's ``bearertoken`` and WebSocket ``protocol`` authenticators: ``Authorization:
    Bearer <token>``, else a ``base64url.bearer.authorization.k8s.io.<b64>`` subprotocol."""
    parts = headers.get("Authorization", "").strip().split(" ", 2)
    if len(parts) >= 2 and parts[0].lower() == "bearer" and parts[1]:
        return parts[1]
    for protocol in headers.get("Sec-WebSocket-Protocol", "").split(","):
        encoded = protocol.strip()
        if encoded.startswith(WS_TOKEN_PROTOCOL):
            encoded = encoded[len(WS_TOKEN_PROTOCOL) :]
            try:
                token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            return token or None
    return None


def with_authenticated(user: UserInfo) -> UserInfo:
    """apiserver's ``AuthenticatedGroupAdder``: every authenticated user is in
    ``system:authenticated``."""
    if AUTHENTICATED in user.groups or user.name == ANONYMOUS:
        return user
    return UserInfo(user.name, (*user.groups, AUTHENTICATED), user.uid, user.extra)


class TtlCache(Generic[K, V]):
    """Entries that expire ``ttl`` seconds after they were put, on an injected clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        now = self._clock()
        if len(self._entries) > 4096:  # many distinct callers: drop what has expired
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
        self._entries[key] = (now + ttl, value)


@dataclass(frozen=True)
class _TokenResult:
    user: UserInfo | None
    """None: the API server said the token is not valid."""


class TokenAuthenticator:
    """Bearer tokens through ``TokenReview``; answers (valid or not) cached ``ttl``, errors not."""

    def __init__(self, post: Post, ttl: float, clock: Callable[[], float]) -> None:
        self._post = post
        self._ttl = ttl
        self._cache: TtlCache[str, _TokenResult] = TtlCache(clock)
        self._key = secrets.token_bytes(32)
        self.reviews = 0
        """TokenReviews sent (tests read it to see the cache work)."""

    async def authenticate(self, token: str) -> UserInfo | None:
        """The token's user, None when the API server says it is not valid; ReviewError."""
        key = hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()
        cached = self._cache.get(key)
        if cached is None:
            cached = await self._review(token)
            self._cache.put(key, cached, self._ttl)
        return cached.user

    async def _review(self, token: str) -> _TokenResult:
        self.reviews += 1
        answer = await self._post(
            TOKEN_REVIEW_PATH,
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token},
            },
        )
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return _TokenResult(None)
        user = status.get("user") or {}
        extra = {
            str(k): tuple(str(v) for v in vs or ()) for k, vs in (user.get("extra") or {}).items()
        }
        return _TokenResult(
            UserInfo(
                str(user.get("username", "")),
                tuple(str(g) for g in user.get("groups") or ()),
                str(user.get("uid", "")),
                extra,
            )
        )


def access_review_spec(attrs: Attributes) -> Json:
    """The ``SubjectAccessReview`` spec kubelet's webhook authorizer sends for ``attrs``."""
    spec: Json = {
        "resourceAttributes": {
            "namespace": "",
            "verb": attrs.verb,
            "group": "",
            "version": attrs.api_version,
            "resource": attrs.resource,
            "subresource": attrs.subresource,
            "name": attrs.name,
        },
        "user": attrs.user.name,
        "groups": list(attrs.user.groups),
    }
    if attrs.user.uid:
        spec["uid"] = attrs.user.uid
    if attrs.user.extra:
        spec["extra"] = {key: list(values) for key, values in attrs.user.extra.items()}
    return spec


class WebhookAuthorizer:
    """``SubjectAccessReview`` per distinct spec; allowed answers cached ``allowed_ttl``,
    denied ones ``denied_ttl``, errors never (the next request asks again)."""

    def __init__(
        self, post: Post, allowed_ttl: float, denied_ttl: float, clock: Callable[[], float]
    ) -> None:
        self._post = post
        self._allowed_ttl = allowed_ttl
        self._denied_ttl = denied_ttl
        self._cache: TtlCache[str, bool] = TtlCache(clock)
        self.reviews = 0

    async def authorize(self, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, the reviewer's reason); raises ReviewError."""
        spec = access_review_spec(attrs)
        key = json.dumps(spec, sort_keys=True)
        cached = self._cache.get(key)
        if cached is not None:
            return cached, "cached"
        self.reviews += 1
        answer = await self._post(
            ACCESS_REVIEW_PATH,
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        )
        status = answer.get("status") or {}
        allowed = status.get("allowed") is True
        self._cache.put(key, allowed, self._allowed_ttl if allowed else self._denied_ttl)
        return allowed, str(status.get("reason", ""))


class AlwaysAllow:
    async def authorize(self, attrs: Attributes) -> tuple[bool, str]:
        return True, ""


def api_poster(api: Callable[[], ApiClient | None]) -> Post:
    """Posts through the agent's ``kubernetes`` client, on a thread (the client blocks)."""

    async def post(path: str, body: Json) -> Json:
        client = api()
        if client is None:
            raise ReviewError("no API server client (no --kubeconfig, or not connected yet)")
        return await asyncio.to_thread(_post_sync, client, path, body)

    return post


def _post_sync(client: ApiClient, path: str, body: Json) -> Json:
    try:
        _, url, headers, _, _ = client.param_serialize(
            "POST",
            path,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = client.call_api(
            "POST", url, headers, body, _request_timeout=REVIEW_TIMEOUT_SECONDS
        )
        data = response.read()  # type: ignore[no-untyped-call]
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as err:
        raise ReviewError(f"POST {path}: {err}") from None
    if response.status >= 300:
        raise ReviewError(f"POST {path}: HTTP {response.status}: {data[:200]!r}")
    try:
        decoded = json.loads(data)
    except ValueError:
        raise ReviewError(f"POST {path}: answer is not JSON") from None
    if not isinstance(decoded, dict):
        raise ReviewError(f"POST {path}: answer is not an object")
    return decoded


class UnauthenticatedError(Exception):
    """Reason (for the log only) a request gets 401."""


class KubeletAuth:
    """One request's identity and permission, as kubelet's auth filter decides them."""

    def __init__(
        self,
        settings: AuthSettings,
        node_name: str,
        post: Post,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (settings.client_ca_file or settings.webhook_authentication or settings.anonymous):
            # kubelet refuses to start here; nodelet's API is on by default and anonymous auth
            # off, so a standalone node would never start: it serves, and refuses everyone.
            log.warning(
                "kubelet API: no authentication method configured (--client-ca-file, "
                "--authentication-token-webhook or --anonymous-auth): every request gets 401"
            )
        self.settings = settings
        self.node_name = node_name
        self.tokens = (
            TokenAuthenticator(post, settings.authn_cache_ttl, clock)
            if settings.webhook_authentication
            else None
        )
        self.authorizer: WebhookAuthorizer | AlwaysAllow
        if settings.authorization_mode == "Webhook":
            self.authorizer = WebhookAuthorizer(
                post,
                settings.authz_cache_authorized_ttl,
                settings.authz_cache_unauthorized_ttl,
                clock,
            )
        elif settings.authorization_mode == "AlwaysAllow":
            self.authorizer = AlwaysAllow()
        else:
            raise ValueError(
                f"authorization mode {settings.authorization_mode!r}: "
                "only AlwaysAllow and Webhook are supported"
            )

    async def authenticate(
        self, peercert: Mapping[str, Any] | None, headers: Mapping[str, str]
    ) -> UserInfo:
        """The caller, or ``UnauthenticatedError``. Order as kubelet's union: certificate, token,
        then anonymous only when no authenticator failed."""
        failure = ""
        if self.settings.client_ca_file is not None:
            user = user_from_peercert(peercert)
            if user is not None:
                return with_authenticated(user)
        token = bearer_token(headers) if self.tokens is not None else None
        if self.tokens is not None and token is not None:
            try:
                user = await self.tokens.authenticate(token)
            except ReviewError as err:
                failure = f"token review failed: {err}"
            else:
                if user is not None:
                    return with_authenticated(user)
                failure = "invalid bearer token"
        if failure:
            raise UnauthenticatedError(failure)
        if self.settings.anonymous:
            return UserInfo(ANONYMOUS, (UNAUTHENTICATED,))
        raise UnauthenticatedError("no client certificate or bearer token")

    async def check(self, request: web.Request) -> web.Response | None:
        """None when the request may go on (the user is on it), else the refusal to send."""
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        try:
            user = await self.authenticate(peercert, request.headers)
        except UnauthenticatedError as err:
            log.debug(
                "401 for %s %s from %s: %s", request.method, request.path, request.remote, err
            )
            return web.Response(status=401, text="Unauthorized")
        request[USER_KEY] = user
        attrs = request_attributes(user, request.method, request.rel_url.path_safe, self.node_name)
        try:
            allowed, reason = await self.authorizer.authorize(attrs)
        except ReviewError as err:
            log.error("%s: %s", authorization_error_text(attrs), err)
            return web.Response(status=500, text=authorization_error_text(attrs))
        if not allowed:
            log.info("%s. Reason: %r.", forbidden_text(attrs), reason)
            return web.Response(status=403, text=forbidden_text(attrs))
        return None


def auth_middleware(
    settings: AuthSettings,
    node_name: str,
    api: Callable[[], ApiClient | None],
    *,
    post: Post | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Middleware:
    """The aiohttp middleware for the :10250 server: every route is authenticated and
    authorized first. ``post`` replaces the API client (tests); ``clock`` drives the caches."""
    auth = KubeletAuth(settings, node_name, post or api_poster(api), clock)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = await auth.check(request)
        if refusal is not None:
            return refusal
        return await handler(request)

    return middleware
