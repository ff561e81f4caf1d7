"""``--manifest-url``: pods served over HTTP run like kubelet's URL pods, beside the manifest
dir's, and stay when the server goes away."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.agentharness import NODE, Agent, agent_session, wait_for

pytestmark = pytest.mark.system

POLL = "0.5s"


def sleeper(name: str, marker: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "host",
                    "command": ["sh", "-c", f"echo marker={marker}; exec sleep 3600"],
                }
            ]
        },
    }


class PodServer:
    """An HTTP server on 127.0.0.1 that answers every GET with ``body`` and ``status``."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.headers: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.headers.append(dict(self.headers))
                body, status = owner.body, owner.status  # one answer, even while a test changes it
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._handler = Handler
        self.port = 0
        self.start()
        self.url = f"http://127.0.0.1:{self.port}/pods"

    def start(self) -> None:
        """Listen (again, on the same port after ``stop``)."""
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, document: dict[str, Any]) -> None:
        self.body = json.dumps(document).encode()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(10)
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[PodServer]:
    found = PodServer()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def url_agent(server: PodServer) -> Iterator[Callable[[], Agent]]:
    args = [
        "--manifest-url", server.url,
        "--manifest-url-header", "X-Token:s3cret",
        "--http-check-frequency", POLL,
    ]  # fmt: skip
    with agent_session(args) as make:
        try:
            yield make
        finally:  # an empty list removes the URL's pods, so the session's clean-up is quick
            if not server.thread.is_alive():
                server.start()
            server.status = 200
            server.serve({"apiVersion": "v1", "kind": "PodList", "items": []})


def test_a_served_pod_runs_as_kubelets_url_pods_do(
    server: PodServer, url_agent: Callable[[], Agent]
) -> None:
    server.serve(sleeper("web", "one"))
    agent = url_agent()
    agent.start()
    pod = wait_for(lambda: agent.running("web"), 30, "the URL's pod running")
    meta = pod["metadata"]
    assert meta["name"] == f"web-{NODE}"
    assert meta["annotations"]["kubernetes.io/config.source"] == "http"
    assert meta["annotations"]["kubernetes.io/config.hash"] == meta["uid"]
    assert pod["spec"]["nodeName"] == NODE
    # kubelet adds the NoExecute toleration to file pods only
    assert {"operator": "Exists", "effect": "NoExecute"} not in pod["spec"].get("tolerations", [])
    assert agent.log_value(pod, "main", "marker") == "one"
    assert server.headers[0]["X-Token"] == "s3cret"


def test_a_changed_answer_replaces_the_pod_and_a_gone_server_keeps_it(
    server: PodServer, url_agent: Callable[[], Agent]
) -> None:
    server.serve(sleeper("web", "one"))
    agent = url_agent()
    agent.start()
    first = wait_for(lambda: agent.running("web"), 30, "first version running")
    server.serve(sleeper("web", "two"))

    def replaced() -> dict[str, Any] | None:
        pod = agent.running("web")
        return pod if pod and pod["metadata"]["uid"] != first["metadata"]["uid"] else None

    second = wait_for(replaced, 40, "the pod replaced by the new answer")
    assert agent.log_value(second, "main", "marker") == "two"
    uids = [item["metadata"]["uid"] for item in agent.get("/pods")["items"]]
    assert uids == [second["metadata"]["uid"]]  # the old one is gone

    server.status = 500  # kubelet keeps the pods when the URL fails
    polled = len(server.headers)
    wait_for(lambda: len(server.headers) >= polled + 2, 10, "two failed polls")
    server.stop()
    time.sleep(2.0)  # several poll periods with no server at all
    kept = agent.running("web")
    assert kept is not None and kept["metadata"]["uid"] == second["metadata"]["uid"]
    assert agent.get("/rejected")["items"] == []


def test_url_pods_and_manifest_dir_pods_run_together(
    server: PodServer, url_agent: Callable[[], Agent]
) -> None:
    server.serve({"apiVersion": "v1", "kind": "PodList",
                  "items": [sleeper("url-a", "a"), sleeper("url-b", "b")]})  # fmt: skip
    agent = url_agent()
    agent.write_manifest("file.yaml", json.dumps(sleeper("from-file", "f")))
    agent.start()
    for name in ("url-a", "url-b", "from-file"):
        wait_for(functools.partial(agent.running, name), 30, f"{name} running")
    # One bad pod in a list: kubelet keeps the last good set; nodelet also says why.
    bad = sleeper("url-c", "c")
    bad["spec"]["containers"][0]["name"] = "Not_A_Name"
    server.serve({"apiVersion": "v1", "kind": "PodList", "items": [sleeper("url-a", "a"), bad]})
    rejected = wait_for(lambda: agent.get("/rejected")["items"], 10, "the bad list rejected")
    assert rejected[0]["path"] == server.url
    assert "items[1].spec.containers[0].name" in " ".join(rejected[0]["errors"])
    names = {item["metadata"]["name"] for item in agent.get("/pods")["items"]}
    assert names == {f"url-a-{NODE}", f"url-b-{NODE}", f"from-file-{NODE}"}
