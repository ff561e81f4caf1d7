"""``/containers`` (the operator CLI's lookups): latest runs with pids, the exec spec only for
one named container and only for the run its config started, 404s that name what is missing."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from nodelet.model import StaticPod
from nodelet.runtime.api import ContainerConfig, SandboxConfig
from nodelet.server.containers import containers_route
from tests.fakes.runtime import FakeClock, FakeRuntime

pytestmark = pytest.mark.unit

PROGRAM = b"\x06\x00\x00\x00\x00\x00\xff\x7f"


def pod() -> StaticPod:
    spec = {"initContainers": [{"name": "init"}], "containers": [{"name": "app"}, {"name": "b"}]}
    manifest = {"metadata": {"name": "web-n1", "namespace": "prod"}, "spec": spec}
    return StaticPod("u1", "prod", "web-n1", "/m/web.yaml", manifest)


def config(name: str, attempt: int) -> ContainerConfig:
    return ContainerConfig(name, attempt, ["sleep"], {"SECRET": "s3"}, f"/l/{attempt}.log",
                           working_dir="/srv", seccomp_filter=PROGRAM,
                           no_new_privileges=True)  # fmt: skip


def ask(query: dict[str, str], configs: dict[str, ContainerConfig]) -> tuple[int, Any]:
    async def scenario() -> tuple[int, Any]:
        runtime = FakeRuntime(FakeClock())
        await runtime.run_sandbox(SandboxConfig("u1", "prod", "web-n1", "web-n1"), {})
        await runtime.start_container("u1", config("init", 0))
        runtime.exit("u1", "init", 0)
        await runtime.start_container("u1", config("app", 0))
        runtime.exit("u1", "app", 1)
        await runtime.start_container("u1", config("app", 1))
        route = containers_route(lambda: [pod()], runtime, lambda _uid, n: configs.get(n))
        return await route(query)

    return asyncio.run(scenario())


def test_every_container_with_its_latest_run() -> None:
    status, body = ask({}, {})
    assert status == 200
    runs = {item["container"]: item for item in body["items"]}
    assert list(runs) == ["init", "app", "b"]
    assert runs["init"]["state"] == "Exited" and runs["init"]["exitCode"] == 0
    assert runs["init"]["pid"] is None and runs["init"]["init"] is True
    assert runs["app"]["state"] == "Running" and runs["app"]["attempt"] == 1
    assert runs["app"]["pid"] and runs["app"]["holderPid"] == 1
    assert runs["b"]["state"] == "Created" and runs["b"]["pid"] is None
    assert all("exec" not in item for item in body["items"])  # env values: one container only


def test_the_exec_spec_of_one_container_is_the_config_of_its_running_attempt() -> None:
    status, body = ask({"pod": "prod/web-n1", "container": "app"}, {"app": config("app", 1)})
    assert status == 200
    spec = body["items"][0]["exec"]
    assert spec["known"] is True and spec["env"] == {"SECRET": "s3"}
    assert spec["workingDir"] == "/srv" and spec["noNewPrivileges"] is True
    assert base64.b64decode(spec["seccompBPF"]) == PROGRAM
    # A config of another attempt (this agent did not start the running one) is not used.
    _, stale = ask({"pod": "prod/web-n1", "container": "app"}, {"app": config("app", 0)})
    assert stale["items"][0]["exec"] == {"known": False}


def test_unknown_pods_and_containers_are_404s() -> None:
    assert ask({"pod": "prod/nope"}, {}) == (404, "pod prod/nope not found\n")
    status, text = ask({"pod": "prod/web-n1", "container": "c"}, {})
    assert (status, text) == (404, "container c not found in pod prod/web-n1\n")
