"""The kubelet API on a node agent, as a cluster reaches it: `kubectl logs` and `get --raw
.../proxy/...` through a real kube-apiserver (which dials the agent's InternalIP with its
kubelet client certificate and checks the agent's serving certificate against the test CA), and
the agent's own authentication and authorization, asked directly over HTTPS: no credentials,
a certificate user RBAC gives nothing, one it gives `nodes/proxy`, a ServiceAccount token
allowed `nodes/log`, and forged `X-Remote-User` headers.

One agent (one node) for the module; every test adds only what it needs (trigger files, RBAC
objects with unique names, removed again).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import AuthenticationV1TokenRequest, CoreV1Api, V1TokenRequestSpec

from tests.agentharness import Agent, agent_session, free_port, wait_for
from tests.e2e.apiserver import ApiServer, api_client

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
CRI_LINE = re.compile(r"^(\S+) (stdout|stderr) (F|P) (.*)$")

ECHO = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "print('alpha', flush=True)\n"
    "print('beta on stderr', file=sys.stderr, flush=True)\n"
    "print('', flush=True)\n"
    "print('gr\\u00fc\\u00dfe \\u2713', flush=True)\n"
    "seen = set()\n"
    "while True:\n"
    "    for name in sorted(os.listdir(sys.argv[1])):\n"
    "        if name not in seen and not name.startswith('.'):\n"
    "            seen.add(name)\n"
    "            with open(os.path.join(sys.argv[1], name)) as f:\n"
    "                sys.stdout.write(f.read())\n"
    "            sys.stdout.flush()\n"
    "    time.sleep(0.05)\n"
)
"""Prints four lines, then the text of every file that appears in argv[1], in name order."""
CRASH_ONCE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "if not os.path.exists(sys.argv[1]):\n"
    "    open(sys.argv[1], 'w').close()\n"
    "    print('first run out', flush=True)\n"
    "    print('first run err', file=sys.stderr, flush=True)\n"
    "    sys.exit(3)\n"
    "print('second run', flush=True)\n"
    "time.sleep(3600)\n"
)


def manifest(triggers: Path, marker: Path) -> str:
    def container(name: str, code: str, arg: Path) -> list[str]:
        command = ["/usr/bin/python3", "-c", code, str(arg)]
        return [
            f"  - name: {name}",
            "    image: host",
            f"    command: {json.dumps(command)}",
            "    env: [{name: PYTHONIOENCODING, value: utf-8}]",
        ]

    return (
        "\n".join(
            [
                "apiVersion: v1",
                "kind: Pod",
                "metadata: {name: logs, namespace: default}",
                "spec:",
                "  terminationGracePeriodSeconds: 1",
                "  containers:",
                *container("c0", ECHO, triggers),
                *container("c1", CRASH_ONCE, marker),
            ]
        )
        + "\n"
    )


@dataclass(frozen=True)
class Entry:
    timestamp: str
    stream: str
    tag: str
    message: str


def rfc3339nano(timestamp: str) -> str:
    """Go's RFC3339Nano, as kubelet prints `--timestamps`: trailing zeros of the fraction go."""
    seconds, _, rest = timestamp.partition(".")
    fraction = rest.removesuffix("Z").rstrip("0")
    return f"{seconds}.{fraction}Z" if fraction else f"{seconds}Z"


def text_of(entries: list[Entry], timestamps: bool = False) -> str:
    """What `kubectl logs` prints for these CRI entries."""
    out = []
    for entry in entries:
        prefix = f"{rfc3339nano(entry.timestamp)} " if timestamps else ""
        out.append(prefix + entry.message + ("\n" if entry.tag == "F" else ""))
    return "".join(out)


class Node:
    """The agent under test, its node name, kubelet API port and the API server."""

    def __init__(self, api: ApiServer, agent: Agent, name: str, port: int, triggers: Path) -> None:
        self.api = api
        self.agent = agent
        self.name = name
        self.port = port
        self.triggers = triggers
        self.mirror = f"logs-{name}"

    def local_pod(self) -> Json | None:
        for item in self.agent.get("/pods")["items"]:
            if item["metadata"]["name"] == self.mirror:
                found: Json = item
                return found
        return None

    def entries(self, container: str, attempt: int) -> list[Entry]:
        pod = self.local_pod()
        assert pod is not None
        path = self.agent.log_dir(pod, container) / f"{attempt}.log"
        entries = []
        for raw in path.read_text().splitlines():
            match = CRI_LINE.match(raw)
            assert match, f"not a CRI line in {path}: {raw!r}"
            entries.append(Entry(*match.groups()))
        return entries

    def say(self, name: str, text: str) -> None:
        """c0 prints `text` (atomically written, so it sees all of it)."""
        tmp = self.triggers / f".{name}"
        tmp.write_text(text)
        os.replace(tmp, self.triggers / name)
        lines = text.splitlines()
        wait_for(
            lambda: [e.message for e in self.entries("c0", 0)][-len(lines) :] == lines,
            10,
            f"{text!r} in c0's log",
        )

    def logs(self, *args: str) -> str:
        return self.api.kubectl("logs", self.mirror, *args).stdout

    def direct(
        self,
        method: str,
        path: str,
        cert: tuple[Path, Path] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """One HTTPS request straight to the agent's kubelet API (not through the API server)."""
        context = ssl.create_default_context(cafile=str(self.api.ca_path))
        if cert is not None:
            context.load_cert_chain(*cert)
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.port}{path}", method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=15) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


@pytest.fixture(scope="module")
def node(apiserver: ApiServer) -> Iterator[Node]:
    name = f"nlt-e2e-{secrets.token_hex(3)}"
    port = free_port()
    cert, key = apiserver.node_serving_cert(name)
    args = [
        "--hostname-override", name,
        "--kubeconfig", str(apiserver.node_kubeconfig(name)),
        "--node-status-update-frequency", "1s",
        "--address", "127.0.0.1",
        "--port", str(port),
        "--tls-cert-file", str(cert),
        "--tls-private-key-file", str(key),
        "--client-ca-file", str(apiserver.ca_path),
        "--authorization-mode", "Webhook",
        "--authentication-token-webhook",
    ]  # fmt: skip
    with agent_session(args) as make:
        agent = make()
        triggers = agent.base / "triggers"
        triggers.mkdir()
        agent.start()
        agent.write_manifest("logs.yaml", manifest(triggers, agent.base / "crashed-once"))
        node = Node(apiserver, agent, name, port, triggers)

        def settled() -> bool:
            pod = node.local_pod()
            statuses = {
                c["name"]: c for c in (pod or {}).get("status", {}).get("containerStatuses", [])
            }
            c1 = statuses.get("c1", {})
            return (
                "running" in statuses.get("c0", {}).get("state", {})
                and "running" in c1.get("state", {})
                and c1.get("restartCount") == 1
            )

        wait_for(settled, 30, "c0 running, c1 running after one crash")
        wait_for(lambda: node.entries("c0", 0)[3:4], 10, "c0's first lines")
        core = CoreV1Api(api_client(apiserver.admin_kubeconfig))

        def mirrored() -> bool:
            pod = core.read_namespaced_pod(node.mirror, "default")
            return bool(pod.status and pod.status.phase == "Running")

        wait_for(lambda: _quietly(mirrored), 30, "the mirror pod Running")
        yield node


def _quietly(probe: Any) -> Any:
    try:
        return probe()
    except Exception:
        return None


# -- through the API server -------------------------------------------------------------------


def test_kubectl_logs_match_the_containers_output(node: Node) -> None:
    c0 = node.logs("-c", "c0")
    assert c0 == text_of(node.entries("c0", 0))
    # stdout and stderr are two pipes: their lines interleave in the order the agent read them.
    assert sorted(c0.splitlines()) == ["", "alpha", "beta on stderr", "grüße ✓"]
    assert node.logs("-c", "c1") == "second run\n" == text_of(node.entries("c1", 1))
    previous = node.logs("-c", "c1", "--previous")
    assert previous == text_of(node.entries("c1", 0))
    assert sorted(previous.splitlines()) == ["first run err", "first run out"]


def test_kubectl_logs_tail_and_timestamps(node: Node) -> None:
    node.say("01-tail", "one\ntwo\nthree\n")
    entries = node.entries("c0", 0)
    assert node.logs("-c", "c0", "--tail=2") == "two\nthree\n"
    assert node.logs("-c", "c0", "--tail=0") == ""
    stamped = node.logs("-c", "c0", "--timestamps")
    assert stamped == text_of(entries, timestamps=True)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z alpha\n", stamped)
    assert node.logs("-c", "c0", "--tail=1", "--timestamps") == text_of(entries[-1:], True)


def test_kubectl_logs_follow_sees_new_lines(node: Node) -> None:
    before = node.entries("c0", 0)
    follow = subprocess.Popen(
        [
            str(node.api.kubectl_path),
            "--kubeconfig", str(node.api.admin_kubeconfig),
            "logs", "-f", node.mirror, "-c", "c0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        got = b"".join(follow.stdout.readline() for _ in before).decode()
        assert got == text_of(before)
        node.say("02-follow", "followed 1\nfollowed 2\n")
        assert follow.stdout.readline() == b"followed 1\n"
        assert follow.stdout.readline() == b"followed 2\n"
        assert follow.poll() is None, "kubectl logs -f ended by itself"
    finally:
        follow.terminate()
        follow.wait(10)


def test_kubectl_logs_since(node: Node) -> None:
    def age(entry: Entry) -> float:
        seconds = entry.timestamp.split(".")[0]
        stamp = time.mktime(time.strptime(seconds, "%Y-%m-%dT%H:%M:%S")) - time.timezone
        return time.time() - stamp

    wait_for(lambda: age(node.entries("c0", 0)[-1]) > 7, 10, "c0's lines 7 s old", 0.2)
    node.say("03-late", "late\n")
    assert node.logs("-c", "c0", "--since=4s") == "late\n"
    assert node.logs("-c", "c0", "--since=1h") == text_of(node.entries("c0", 0))


def test_configz_through_the_api_server_shows_the_static_pod_path(node: Node) -> None:
    raw = node.api.kubectl("get", "--raw", f"/api/v1/nodes/{node.name}/proxy/configz").stdout
    config = json.loads(raw)["kubeletconfig"]
    assert config["staticPodPath"] == str(node.agent.manifests)


# -- the agent's own authentication and authorization -----------------------------------------


def test_no_credentials_is_401(node: Node) -> None:
    for method, path in [("GET", "/configz"), ("GET", "/pods"), ("GET", "/logs/")]:
        assert node.direct(method, path) == (401, "Unauthorized")
    assert node.direct("POST", f"/exec/default/{node.mirror}/c0?command=true") == (
        401,
        "Unauthorized",
    )
    bad_token = {"Authorization": "Bearer not-a-token"}
    assert node.direct("GET", "/configz", headers=bad_token) == (401, "Unauthorized")


def test_forged_remote_user_headers_are_not_trusted(node: Node) -> None:
    forged = {
        "X-Remote-User": "nodelet-e2e-admin",
        "X-Remote-Group": "system:masters",
        "Impersonate-User": "nodelet-e2e-admin",
        "Impersonate-Group": "system:masters",
    }
    assert node.direct("GET", "/configz", headers=forged) == (401, "Unauthorized")
    user = f"nlt-nobody-{secrets.token_hex(3)}"
    cert = node.api.pki.issue(f"direct-{user}", user)
    assert node.direct("GET", "/configz", cert=cert, headers=forged) == (
        403,
        f"Forbidden (user={user}, verb=get, resource=nodes, subresource=proxy)",
    )


@pytest.fixture
def rbac(node: Node) -> Iterator[list[tuple[str, str]]]:
    """Cluster-wide RBAC objects a test makes (kind, name), deleted after it."""
    made: list[tuple[str, str]] = []
    yield made
    for kind, name in reversed(made):
        node.api.kubectl("delete", kind, name, "--ignore-not-found", check=False)


def grant(node: Node, rbac: list[tuple[str, str]], subject: str, resource: str) -> None:
    """A ClusterRole allowing `get` on `resource` and a binding to `subject` (`--user=…` or
    `--serviceaccount=…`)."""
    name = f"nlt-{secrets.token_hex(4)}"
    node.api.kubectl("create", "clusterrole", name, "--verb=get", f"--resource={resource}")
    rbac.append(("clusterrole", name))
    node.api.kubectl("create", "clusterrolebinding", name, f"--clusterrole={name}", subject)
    rbac.append(("clusterrolebinding", name))


def test_certificate_users_are_authorized_by_subject_access_review(
    node: Node, rbac: list[tuple[str, str]]
) -> None:
    nobody = f"nlt-nobody-{secrets.token_hex(3)}"
    nobody_cert = node.api.pki.issue(f"direct-{nobody}", nobody, ("nlt-e2e-team",))
    assert node.direct("GET", "/configz", cert=nobody_cert) == (
        403,
        f"Forbidden (user={nobody}, verb=get, resource=nodes, subresource=proxy)",
    )
    reader = f"nlt-proxy-reader-{secrets.token_hex(3)}"
    grant(node, rbac, f"--user={reader}", "nodes/proxy")
    reader_cert = node.api.pki.issue(f"direct-{reader}", reader)
    status, body = node.direct("GET", "/configz", cert=reader_cert)
    assert status == 200, body
    assert json.loads(body)["kubeletconfig"]["staticPodPath"] == str(node.agent.manifests)
    assert node.direct(
        "POST", f"/exec/default/{node.mirror}/c0?command=true", cert=reader_cert
    ) == (
        403,
        f"Forbidden (user={reader}, verb=create, resource=nodes, subresource=proxy)",
    )
    assert node.direct("GET", "/stats/summary", cert=reader_cert) == (
        403,
        f"Forbidden (user={reader}, verb=get, resource=nodes, subresource=stats)",
    )


def test_service_account_token_with_nodes_log_reads_logs_but_cannot_exec(
    node: Node, rbac: list[tuple[str, str]]
) -> None:
    account = f"nlt-log-reader-{secrets.token_hex(3)}"
    node.api.kubectl("create", "serviceaccount", account, "-n", "default")
    try:
        grant(node, rbac, f"--serviceaccount=default:{account}", "nodes/log")
        core = CoreV1Api(api_client(node.api.admin_kubeconfig))
        # No controller manager runs here, so no token Secret appears: the TokenRequest API.
        answer = core.create_namespaced_service_account_token(
            account,
            "default",
            AuthenticationV1TokenRequest(spec=V1TokenRequestSpec(audiences=[])),
        )
        assert answer.status is not None
        bearer = {"Authorization": f"Bearer {answer.status.token}"}
        status, body = node.direct("GET", "/logs/", headers=bearer)
        assert status == 200, body
        user = f"system:serviceaccount:default:{account}"
        forbidden = f"Forbidden (user={user}, verb=create, resource=nodes, subresource=proxy)"
        exec_path = f"/exec/default/{node.mirror}/c0?command=true"
        assert node.direct("POST", exec_path, headers=bearer) == (403, forbidden)
        forged = {
            **bearer,
            "X-Remote-User": "nodelet-e2e-admin",
            "X-Remote-Group": "system:masters",
        }
        assert node.direct("POST", exec_path, headers=forged) == (403, forbidden)
        assert node.direct("GET", "/configz", headers=bearer) == (
            403,
            f"Forbidden (user={user}, verb=get, resource=nodes, subresource=proxy)",
        )
    finally:
        node.api.kubectl("delete", "serviceaccount", account, "-n", "default", check=False)
