"""kubelet API auth (``nodelet.server.kubeletauth``): kubelet's attribute mapping, the review
bodies, the caches on an injected clock, and the exact 401/403/500 answers, through a tiny
aiohttp app. The API server is a recording fake of the two review endpoints; the x509 path runs
over real TLS with a CA and certificates made for the test."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nodelet.server.kubeletauth import (
    ACCESS_REVIEW_PATH,
    TOKEN_REVIEW_PATH,
    USER_KEY,
    WS_TOKEN_PROTOCOL,
    AuthSettings,
    ReviewError,
    UserInfo,
    auth_middleware,
    bearer_token,
    is_subpath,
    request_attributes,
    user_from_peercert,
)
from tests.e2e.apiserver import Pki

pytestmark = pytest.mark.unit

Json = dict[str, Any]
NODE = "nlt-node-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeApi:
    """The API server's two review endpoints: records each body, answers from tables."""

    def __init__(self) -> None:
        self.tokens: dict[str, Json] = {}
        """token -> status.user of a valid token."""
        self.allowed: set[tuple[str, str, str]] = set()
        """(user, verb, subresource) a SubjectAccessReview allows."""
        self.posts: list[tuple[str, Json]] = []
        self.fail = False

    async def post(self, path: str, body: Json) -> Json:
        self.posts.append((path, body))
        if self.fail:
            raise ReviewError("connection refused")
        if path == TOKEN_REVIEW_PATH:
            user = self.tokens.get(body["spec"]["token"])
            status = {"authenticated": True, "user": user} if user else {"authenticated": False}
            return {**body, "status": status}
        assert path == ACCESS_REVIEW_PATH
        spec = body["spec"]
        attrs = spec["resourceAttributes"]
        allowed = (spec["user"], attrs["verb"], attrs["subresource"]) in self.allowed
        return {**body, "status": {"allowed": allowed, "reason": "table"}}

    def count(self, path: str) -> int:
        return sum(1 for sent, _ in self.posts if sent == path)


def settings(**changes: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "anonymous": False,
        "client_ca_file": None,
        "webhook_authentication": True,
        "authorization_mode": "Webhook",
    }
    values.update(changes)
    return AuthSettings(**values)


async def whoami(request: web.Request) -> web.Response:
    user: UserInfo = request[USER_KEY]
    return web.json_response({"name": user.name, "groups": list(user.groups)})


def app_with(auth: AuthSettings, api: FakeApi, clock: Clock) -> web.Application:
    app = web.Application(
        middlewares=[auth_middleware(auth, NODE, lambda: None, post=api.post, clock=clock)]
    )
    app.router.add_route("*", "/{tail:.*}", whoami)
    return app


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_client(api: FakeApi, clock: Clock) -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(**changes: Any) -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(app_with(settings(**changes), api, clock)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# -- kubelet's attribute mapping (pkg/kubelet/server/auth.go) --------------------------------


@pytest.mark.parametrize(
    ("method", "path", "verb", "subresource"),
    [
        ("GET", "/stats/summary", "get", "stats"),
        ("GET", "/stats", "get", "stats"),
        ("GET", "/stats/", "get", "stats"),
        ("GET", "/statsx", "get", "proxy"),
        ("GET", "/metrics", "get", "metrics"),
        ("GET", "/metrics/cadvisor", "get", "metrics"),
        ("GET", "/metrics/resource", "get", "metrics"),
        ("GET", "/metrics/probes", "get", "metrics"),
        ("GET", "/metricsfoo", "get", "proxy"),
        ("GET", "/logs/", "get", "log"),
        ("GET", "/logs", "get", "log"),
        ("GET", "/logs/syslog", "get", "log"),
        ("GET", "/spec/", "get", "spec"),
        ("GET", "/spec", "get", "spec"),
        ("GET", "/configz", "get", "proxy"),
        ("GET", "/pods", "get", "proxy"),
        ("GET", "/healthz", "get", "proxy"),
        ("GET", "/containerLogs/ns/pod/c", "get", "proxy"),
        ("POST", "/exec/ns/pod/c", "create", "proxy"),
        ("GET", "/exec/ns/pod/c", "get", "proxy"),
        ("POST", "/portForward/ns/pod", "create", "proxy"),
        ("PUT", "/x", "update", "proxy"),
        ("PATCH", "/x", "patch", "proxy"),
        ("DELETE", "/x", "delete", "proxy"),
        ("HEAD", "/healthz", "", "proxy"),
        ("OPTIONS", "/stats/summary", "", "stats"),
    ],
)
def test_request_attributes_follow_kubelets_table(
    method: str, path: str, verb: str, subresource: str
) -> None:
    user = UserInfo("u", ("g",))
    attrs = request_attributes(user, method, path, NODE)
    assert (attrs.verb, attrs.resource, attrs.subresource, attrs.name) == (
        verb,
        "nodes",
        subresource,
        NODE,
    )
    assert (attrs.api_version, attrs.user, attrs.path) == ("v1", user, path)


def test_is_subpath_needs_a_slash_after_the_prefix() -> None:
    assert is_subpath("/logs", "/logs/") and is_subpath("/logs/a/b", "/logs/")
    assert not is_subpath("/logsx", "/logs/") and not is_subpath("/log", "/logs/")
    assert not is_subpath("/", "/logs/")


def test_peercert_cn_is_the_user_and_every_o_a_group() -> None:
    cert = {
        "subject": (
            (("organizationName", "system:masters"),),
            (("organizationName", "team-b"),),
            (("commonName", "first"),),
            (("commonName", "alice"),),
        )
    }
    assert user_from_peercert(cert) == UserInfo("alice", ("system:masters", "team-b"))
    assert user_from_peercert({"subject": ((("organizationName", "o"),),)}) is None
    assert user_from_peercert({}) is None
    assert user_from_peercert(None) is None


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ({"Authorization": "Bearer abc"}, "abc"),
        ({"Authorization": "bearer abc"}, "abc"),
        ({"Authorization": "  Bearer abc  "}, "abc"),
        ({"Authorization": "Bearer abc extra"}, "abc"),
        ({"Authorization": "Bearer "}, None),
        ({"Authorization": "Basic abc"}, None),
        ({"Authorization": "Bearer"}, None),
        ({}, None),
        (
            {"Sec-WebSocket-Protocol": "v4.channel.k8s.io, " + WS_TOKEN_PROTOCOL + "YWJjZA"},
            "abcd",
        ),
        ({"Sec-WebSocket-Protocol": WS_TOKEN_PROTOCOL + "!!"}, None),
    ],
)
def test_bearer_token_from_the_header_or_the_websocket_protocol(
    headers: dict[str, str], token: str | None
) -> None:
    assert bearer_token(headers) == token


# -- the middleware ---------------------------------------------------------------------------


async def test_no_credentials_is_401_with_kubelets_body(make_client: Any, api: FakeApi) -> None:
    client = await make_client()
    response = await client.get("/pods")
    assert response.status == 401
    assert await response.text() == "Unauthorized"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert api.posts == []


async def test_remote_user_headers_are_never_trusted(make_client: Any, api: FakeApi) -> None:
    client = await make_client()
    forged = {
        "X-Remote-User": "admin",
        "X-Remote-Group": "system:masters",
        "Impersonate-User": "admin",
    }
    response = await client.get("/pods", headers=forged)
    assert (response.status, await response.text()) == (401, "Unauthorized")
    anonymous = await make_client(anonymous=True)
    response = await anonymous.get("/pods", headers=forged)
    assert response.status == 403
    assert await response.text() == (
        "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource=proxy)"
    )


async def test_anonymous_when_enabled_is_reviewed_as_system_anonymous(
    make_client: Any, api: FakeApi
) -> None:
    api.allowed.add(("system:anonymous", "get", "stats"))
    client = await make_client(anonymous=True)
    response = await client.get("/stats/summary")
    assert await response.json() == {
        "name": "system:anonymous",
        "groups": ["system:unauthenticated"],
    }
    ((path, body),) = api.posts
    assert path == ACCESS_REVIEW_PATH
    assert body == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": "",
                "verb": "get",
                "group": "",
                "version": "v1",
                "resource": "nodes",
                "subresource": "stats",
                "name": NODE,
            },
            "user": "system:anonymous",
            "groups": ["system:unauthenticated"],
        },
    }


async def test_token_reviewed_then_cached_for_two_minutes(
    make_client: Any, api: FakeApi, clock: Clock
) -> None:
    api.tokens["sa-token"] = {
        "username": "system:serviceaccount:default:reader",
        "uid": "u-1",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:default"],
        "extra": {"authentication.kubernetes.io/pod-name": ["p"]},
    }
    api.allowed.add(("system:serviceaccount:default:reader", "get", "log"))
    client = await make_client()
    bearer = {"Authorization": "Bearer sa-token"}
    response = await client.get("/logs/", headers=bearer)
    assert response.status == 200
    assert await response.json() == {
        "name": "system:serviceaccount:default:reader",
        "groups": [
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated",
        ],
    }
    review = api.posts[0]
    assert review == (
        TOKEN_REVIEW_PATH,
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": "sa-token"},
        },
    )
    sar = api.posts[1][1]["spec"]
    assert sar["uid"] == "u-1"
    assert sar["extra"] == {"authentication.kubernetes.io/pod-name": ["p"]}
    assert sar["groups"][-1] == "system:authenticated"

    clock.now += 119
    assert (await client.get("/logs/", headers=bearer)).status == 200
    assert api.count(TOKEN_REVIEW_PATH) == 1
    clock.now += 2
    assert (await client.get("/logs/", headers=bearer)).status == 200
    assert api.count(TOKEN_REVIEW_PATH) == 2


async def test_a_rejected_token_is_401_even_with_anonymous_and_is_cached_too(
    make_client: Any, api: FakeApi, clock: Clock
) -> None:
    api.allowed.add(("system:anonymous", "get", "proxy"))
    client = await make_client(anonymous=True)
    bad = {"Authorization": "Bearer forged"}
    for _ in range(2):
        response = await client.get("/pods", headers=bad)
        assert (response.status, await response.text()) == (401, "Unauthorized")
    assert api.count(TOKEN_REVIEW_PATH) == 1
    assert api.count(ACCESS_REVIEW_PATH) == 0
    clock.now += 121
    assert (await client.get("/pods", headers=bad)).status == 401
    assert api.count(TOKEN_REVIEW_PATH) == 2


async def test_a_failed_token_review_is_401_and_not_cached(make_client: Any, api: FakeApi) -> None:
    api.tokens["t"] = {"username": "bob", "groups": []}
    api.allowed.add(("bob", "get", "proxy"))
    client = await make_client()
    api.fail = True
    response = await client.get("/pods", headers={"Authorization": "Bearer t"})
    assert (response.status, await response.text()) == (401, "Unauthorized")
    api.fail = False
    assert (await client.get("/pods", headers={"Authorization": "Bearer t"})).status == 200


async def test_tokens_ignored_without_the_token_webhook(make_client: Any, api: FakeApi) -> None:
    api.tokens["t"] = {"username": "bob", "groups": []}
    client = await make_client(
        webhook_authentication=False, anonymous=True, authorization_mode="AlwaysAllow"
    )
    response = await client.get("/pods", headers={"Authorization": "Bearer t"})
    assert await response.json() == {
        "name": "system:anonymous",
        "groups": ["system:unauthenticated"],
    }
    assert api.posts == []


async def test_denied_is_403_with_kubelets_body_cached_30s_allowed_5min(
    make_client: Any, api: FakeApi, clock: Clock
) -> None:
    api.tokens["t"] = {"username": "bob", "groups": ["dev"]}
    client = await make_client()
    bearer = {"Authorization": "Bearer t"}
    response = await client.post("/exec/default/p/c", headers=bearer)
    assert response.status == 403
    assert await response.text() == (
        "Forbidden (user=bob, verb=create, resource=nodes, subresource=proxy)"
    )
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    api.allowed.add(("bob", "create", "proxy"))
    clock.now += 29
    assert (await client.post("/exec/default/p/c", headers=bearer)).status == 403
    assert api.count(ACCESS_REVIEW_PATH) == 1
    clock.now += 2
    assert (await client.post("/exec/default/p/c", headers=bearer)).status == 200
    assert api.count(ACCESS_REVIEW_PATH) == 2
    # Another path with the same attributes shares the answer: the spec is the key.
    assert (await client.post("/attach/default/p/c", headers=bearer)).status == 200
    assert api.count(ACCESS_REVIEW_PATH) == 2

    api.allowed.clear()
    clock.now += 100  # the token's 2-minute cache ends here, the allowed answer's 5 min not yet
    assert (await client.post("/exec/default/p/c", headers=bearer)).status == 200
    clock.now += 200
    assert (await client.post("/exec/default/p/c", headers=bearer)).status == 403
    assert api.count(ACCESS_REVIEW_PATH) == 3


async def test_review_error_is_500_with_kubelets_body_and_not_cached(
    make_client: Any, api: FakeApi
) -> None:
    client = await make_client(anonymous=True)
    api.fail = True
    response = await client.get("/metrics")
    assert response.status == 500
    assert await response.text() == (
        "Authorization error (user=system:anonymous, verb=get, resource=nodes, subresource=metrics)"
    )
    api.fail = False
    api.allowed.add(("system:anonymous", "get", "metrics"))
    assert (await client.get("/metrics")).status == 200


async def test_always_allow_sends_no_review(make_client: Any, api: FakeApi) -> None:
    client = await make_client(anonymous=True, authorization_mode="AlwaysAllow")
    assert (await client.delete("/anything")).status == 200
    assert api.posts == []


async def test_no_authentication_method_refuses_everyone(
    make_client: Any, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(webhook_authentication=False, authorization_mode="AlwaysAllow")
    assert "no authentication method configured" in caplog.text
    response = await client.get("/healthz", headers={"Authorization": "Bearer t"})
    assert (response.status, await response.text()) == (401, "Unauthorized")
    assert api.posts == []


def test_unknown_authorization_mode_is_refused(api: FakeApi) -> None:
    with pytest.raises(ValueError, match="only AlwaysAllow and Webhook"):
        auth_middleware(settings(authorization_mode="RBAC"), NODE, lambda: None, post=api.post)


async def test_without_an_api_client_reviews_fail_closed() -> None:
    app = web.Application(
        middlewares=[auth_middleware(settings(anonymous=True), NODE, lambda: None)]
    )
    app.router.add_get("/{tail:.*}", whoami)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/pods", headers={"Authorization": "Bearer t"})
        assert (response.status, await response.text()) == (401, "Unauthorized")
        response = await client.get("/pods")
        assert response.status == 500


# -- x509 over real TLS -----------------------------------------------------------------------


async def test_client_certificate_user_and_groups_over_tls(
    tmp_path: Path, api: FakeApi, clock: Clock
) -> None:
    pki = Pki(tmp_path / "pki")
    serving = pki.issue("serving", "node", server_names=("127.0.0.1",))
    alice = pki.issue("alice", "alice", ("team-a", "team-b"))
    stranger = Pki(tmp_path / "other").issue("mallory", "mallory", ("system:masters",))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(*serving)
    server_context.load_verify_locations(pki.ca_path)
    server_context.verify_mode = ssl.CERT_OPTIONAL
    api.allowed.add(("alice", "get", "proxy"))
    app = app_with(settings(client_ca_file=pki.ca_path), api, clock)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
    await site.start()
    port = runner.addresses[0][1]
    url = f"https://127.0.0.1:{port}/pods"

    def client_context(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki.ca_path))
        if cert is not None:
            context.load_cert_chain(*cert)
        return context

    try:
        async with aiohttp.ClientSession() as session:
            headers = {"X-Remote-User": "root", "X-Remote-Group": "system:masters"}
            async with session.get(url, ssl=client_context(alice), headers=headers) as response:
                assert response.status == 200
                assert await response.json() == {
                    "name": "alice",
                    "groups": ["team-a", "team-b", "system:authenticated"],
                }
            async with session.get(url, ssl=client_context(None)) as response:
                assert (response.status, await response.text()) == (401, "Unauthorized")
            with pytest.raises(aiohttp.ClientError):  # a CA the server does not trust: no TLS
                async with session.get(url, ssl=client_context(stranger)) as response:
                    await response.read()
        assert [body["spec"]["user"] for _, body in api.posts] == ["alice"]
    finally:
        await runner.cleanup()
