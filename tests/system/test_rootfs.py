"""Containers of a non-host image through the real agent (issue 15): an image built from
Debian's busybox-static is imported into the agent's own store, and each container reports
what it sees from inside its root; the host side (upper dir, host paths, mount table) is
checked from here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agentharness import Agent, wait_for
from tests.imagebuild import (
    BuiltImage,
    app_layer,
    busybox_layer,
    docker_archive,
    entry,
    file_entry,
    nodelet_image,
    tar_bytes,
)
from tests.system.test_wiring import manifest

pytestmark = pytest.mark.system

IMAGE = "nlt.test/rootfs:1"
NAMED_USER_IMAGE = "nlt.test/rootfs-named:1"
NO_COMMAND_IMAGE = "nlt.test/rootfs-nocommand:1"

REPORT = (
    "echo user=$(id -u):$(id -g); echo groups=$(id -G); echo pwd=$(pwd); echo greeting=$GREETING;"
    " echo path=$PATH; echo extra=$EXTRA; echo ready=1; sleep 3600"
)
"""The image's Cmd (run by its Entrypoint ``/bin/sh -c``): what a container with no command
prints about itself."""

DEV_MINIMAL = sorted(
    ["fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
     "termination-log", "tty", "urandom", "zero"]
)  # fmt: skip


@dataclass
class ConfiguredImage(BuiltImage):
    """``BuiltImage`` with the config fields these tests vary."""

    user: str = "1000:1000"
    env: tuple[str, ...] = ("PATH=/bin", "GREETING=hi", "EXTRA=from-image")

    def config(self) -> bytes:
        doc: dict[str, Any] = json.loads(super().config())
        doc["config"].update(User=self.user, Env=list(self.env))
        return json.dumps(doc).encode()


def group_layer() -> bytes:
    """/etc/group: ``app`` is a member of ``staff`` (50)."""
    return tar_bytes(
        [
            (entry("etc", tarfile.DIRTYPE), None),
            file_entry("etc/group", b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n"),
        ]
    )


@pytest.fixture
def agent(agents: Callable[[], Agent]) -> Agent:
    """A live agent whose store holds the test images (imported with ``nodelet image``)."""
    first = agents()
    base, app = busybox_layer(), app_layer()
    images: list[tuple[BuiltImage, list[str]]] = [
        (ConfiguredImage([base, app], cmd=[REPORT]), [IMAGE]),
        (ConfiguredImage([base, app, group_layer()], cmd=[REPORT], user="app"), [NAMED_USER_IMAGE]),
        (ConfiguredImage([base], entrypoint=[], cmd=[]), [NO_COMMAND_IMAGE]),
    ]  # fmt: skip
    nodelet_image(first.root, "import", "-", stdin=docker_archive(images))
    first.start()
    return first


def container(name: str, script: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "image": IMAGE, **extra}
    if script is not None:
        spec["command"] = ["/bin/sh", "-c", script + "; echo ready=1; sleep 3600"]
    return spec


def pod_dir(agent: Agent, pod: dict[str, Any]) -> Path:
    return agent.root / "pods" / str(pod["metadata"]["uid"])


def upper(agent: Agent, pod: dict[str, Any], name: str, attempt: int = 0) -> Path:
    return pod_dir(agent, pod) / "containers" / name / str(attempt) / "upper"


def our_mounts(agent: Agent) -> list[str]:
    """Mount points of this agent's dirs in the host's mount table."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        for line in table:
            point = line.split()[4]
            if point.startswith(str(agent.base)):
                points.append(point)
    return points


def value(agent: Agent, pod: dict[str, Any], name: str, key: str) -> str:
    return agent.log_value(pod, name, key)


def test_container_sees_its_image_and_writes_only_to_its_upper_dir(agent: Agent) -> None:
    host_marker = f"/nlt-rootfs-{os.getpid()}"
    script = (
        "echo busybox=$(test -x /bin/busybox && echo yes); "
        "echo debian=$(test -e /etc/debian_version && echo yes || echo no); "
        "echo motd=$(test -e /etc/motd && echo yes || echo no); "
        "echo hello=$(cat /app/hello); "
        f"echo written > {host_marker}; echo wrote=$?; "
        "echo vol=$(test -d /nlt/deep/vol && echo yes); touch /nlt/deep/vol/in-volume; "
        "echo procs=$(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '); "
        "echo init=$(tr '\\0' ' ' < /proc/1/cmdline | cut -c1-7); "
        "echo dev=$(ls -A /dev | sort | tr '\\n' ' '); "
        "echo pts=$(ls -A /dev/pts | tr '\\n' ' '); "
        "echo shm=$(touch /dev/shm/x && echo yes); "
        "echo sys=$(touch /sys/nlt 2>&1 | grep -c Read-only); "
        "echo acpi=$(grep ' /proc/acpi ' /proc/self/mountinfo | cut -d' ' -f9); "
        "echo procsys=$( (echo x > /proc/sys/kernel/hostname) 2>&1 | grep -c Read-only)"
    )
    pod_manifest = manifest(
        "rootfs",
        [
            container(
                "app",
                script,
                volumeMounts=[{"name": "data", "mountPath": "/nlt/deep/vol"}],
                securityContext={"runAsUser": 0},  # the image's user may not write to /
                # exec'd into the container's mount namespace: only the image has /app/hello
                readinessProbe={
                    "exec": {"command": ["/bin/sh", "-c", "test -e /app/hello"]},
                    "periodSeconds": 1,
                },
            )
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    agent.write_manifest("rootfs.json", pod_manifest)
    pod = wait_for(lambda: agent.running("rootfs"), 30, "rootfs running")
    assert value(agent, pod, "app", "ready") == "1"
    assert value(agent, pod, "app", "busybox") == "yes"
    assert value(agent, pod, "app", "debian") == "no"
    assert Path("/etc/debian_version").exists()  # the host's is there: the container's is not
    assert value(agent, pod, "app", "motd") == "no"  # whited out by the app layer
    assert value(agent, pod, "app", "hello") == "hello from the app layer"
    assert value(agent, pod, "app", "wrote") == "0"
    up = upper(agent, pod, "app")
    assert (up / host_marker.lstrip("/")).read_text() == "written\n"
    assert not Path(host_marker).exists()
    # The mountPath was made in the upper dir only; the volume itself got the write.
    assert value(agent, pod, "app", "vol") == "yes"
    assert (up / "nlt" / "deep" / "vol").is_dir()
    assert not Path("/nlt").exists()
    volume = pod_dir(agent, pod) / "volumes" / "kubernetes.io~empty-dir" / "data"
    assert (volume / "in-volume").exists()
    assert not (up / "nlt" / "deep" / "vol" / "in-volume").exists()
    # Its own PID namespace (no shareProcessNamespace): /proc shows the shell as PID 1 and
    # the few processes of its own pipeline, none of the host's.
    procs = [int(pid) for pid in value(agent, pod, "app", "procs").split()]
    assert 1 in procs and len(procs) <= 6 and max(procs) < 20, procs
    assert value(agent, pod, "app", "init") == "/bin/sh"
    assert value(agent, pod, "app", "dev").split() == DEV_MINIMAL
    assert value(agent, pod, "app", "pts").split() == ["ptmx"]  # a devpts of its own
    assert value(agent, pod, "app", "shm") == "yes"
    assert value(agent, pod, "app", "sys") == "1"
    # runc's masked and read-only paths, on the fresh /proc.
    assert value(agent, pod, "app", "acpi") == "tmpfs"  # an empty read-only tmpfs over it
    assert value(agent, pod, "app", "procsys") == "1"
    # Nothing of the container root is mounted on the host (its own mount namespace); only
    # the pod's shm tmpfs, under the pod's dir.
    assert our_mounts(agent) == [str(pod_dir(agent, pod) / "shm")]
    ready = lambda: (agent.container_status("rootfs", "app") or {}).get("ready")  # noqa: E731
    wait_for(ready, 20, "the exec probe run in the image's root")

    (agent.manifests / "rootfs.json").unlink()
    wait_for(lambda: agent.pod("rootfs") is None, 30, "rootfs removed")
    wait_for(lambda: not pod_dir(agent, pod).exists(), 30, "the pod's dir removed")
    assert our_mounts(agent) == []


def test_image_config_applies_the_kubernetes_way(agent: Agent) -> None:
    containers = [
        container("plain"),
        container("with-args", args=["echo args-replace-cmd=yes; " + REPORT]),
        container("with-command", command=["/bin/sh", "-c", "echo only=$0$1; sleep 3600", "x"]),
        container(
            "overrides",
            env=[{"name": "GREETING", "value": "from-pod"}],
            workingDir="/made/by/runtime",
            securityContext={"runAsUser": 0},
        ),
        container("group-only", securityContext={"runAsGroup": 7}),
        {"name": "named", "image": NAMED_USER_IMAGE},
    ]
    agent.write_manifest("config.json", manifest("config", containers))
    pod = wait_for(lambda: agent.running("config"), 30, "config running")
    # No command, no args: Entrypoint + Cmd, as the image's user, in its WorkingDir, its Env.
    assert value(agent, pod, "plain", "user") == "1000:1000"
    assert value(agent, pod, "plain", "pwd") == "/app"
    assert value(agent, pod, "plain", "greeting") == "hi"
    assert value(agent, pod, "plain", "path") == "/bin"
    assert value(agent, pod, "plain", "extra") == "from-image"
    # args replace Cmd, the Entrypoint stays.
    assert value(agent, pod, "with-args", "args-replace-cmd") == "yes"
    assert value(agent, pod, "with-args", "user") == "1000:1000"
    # command replaces the Entrypoint and drops Cmd: $0 is "x", and no Cmd follows it.
    assert value(agent, pod, "with-command", "only") == "x"
    assert agent.log_lines(pod, "with-command") == ["only=x"]
    # The pod's env overrides the image's, the image's other entries stay; workingDir is
    # made in the upper dir; runAsUser wins over the image's User (gid from its passwd).
    assert value(agent, pod, "overrides", "greeting") == "from-pod"
    assert value(agent, pod, "overrides", "extra") == "from-image"
    assert value(agent, pod, "overrides", "pwd") == "/made/by/runtime"
    assert (upper(agent, pod, "overrides") / "made" / "by" / "runtime").is_dir()
    assert not Path("/made").exists()
    assert value(agent, pod, "overrides", "user") == "0:0"
    # runAsGroup alone: the image's user with the pod's group.
    assert value(agent, pod, "group-only", "user") == "1000:7"
    # A User name, resolved in the image's own passwd and group files.
    assert value(agent, pod, "named", "user") == "1000:1000"
    assert "50" in value(agent, pod, "named", "groups").split()
    (agent.manifests / "config.json").unlink()
    wait_for(lambda: not pod_dir(agent, pod).exists(), 30, "the pod's dir removed")
    assert our_mounts(agent) == []


def test_read_only_root_and_missing_command(agent: Agent) -> None:
    containers = [
        container(
            "ro",
            "echo root=$(touch /x 2>&1 | grep -c Read-only); "
            "echo vol=$(touch /scratch/x && echo writable); "
            "echo tmp=$(touch /dev/shm/y && echo writable)",
            volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
            securityContext={"readOnlyRootFilesystem": True},
        ),
        container(
            "privileged",
            "while ! test -e /dev/shm/y; do sleep 0.1; done; echo shared=yes; "
            "echo devs=$(ls /dev | wc -l); echo sys=$(touch /sys/kernel/nlt 2>&1 | grep -c Read)",
            securityContext={"privileged": True},
        ),
        {"name": "nothing-to-run", "image": NO_COMMAND_IMAGE},
        {
            "name": "absent",
            "image": "nlt.test/not-stored:1",
            "imagePullPolicy": "Never",  # ErrImageNeverPull once the agent pulls
            "command": ["/bin/true"],
        },
    ]
    agent.write_manifest(
        "ro.json", manifest("ro", containers, volumes=[{"name": "scratch", "emptyDir": {}}])
    )
    pod = wait_for(lambda: agent.running("ro", "ro"), 30, "ro running")
    assert value(agent, pod, "ro", "root") == "1"
    assert value(agent, pod, "ro", "vol") == "writable"
    assert value(agent, pod, "ro", "tmp") == "writable"
    assert not (upper(agent, pod, "ro") / "x").exists()
    # /dev/shm is the pod's: what "ro" wrote there, "privileged" sees. Privileged: the
    # host's /dev, and a writable /sys (the write fails, but not on a read-only mount).
    assert value(agent, pod, "privileged", "shared") == "yes"
    assert int(value(agent, pod, "privileged", "devs")) > len(DEV_MINIMAL)
    assert value(agent, pod, "privileged", "sys") == "0"

    def waiting(name: str) -> str | None:
        status = agent.container_status("ro", name) or {}
        message: str | None = (status.get("state", {}).get("waiting") or {}).get("message")
        return message

    assert "no command specified" in wait_for(lambda: waiting("nothing-to-run"), 20, "error")
    assert "not present" in wait_for(lambda: waiting("absent"), 20, "absent image error")
    (agent.manifests / "ro.json").unlink()
    wait_for(lambda: not pod_dir(agent, pod).exists(), 30, "the pod's dir removed")
    assert our_mounts(agent) == []


CGROUP_REPORT = (
    "if test -e /sys/fs/cgroup/cgroup.controllers; then mem=/sys/fs/cgroup; lim=memory.max; "
    "else mem=/sys/fs/cgroup/memory; lim=memory.limit_in_bytes; fi; "
    "echo limit=$(cat $mem/$lim); echo procs=$(cat $mem/cgroup.procs | wc -l); "
    "echo subdir=$(mkdir $mem/nlt 2>&1 | grep -c Read-only); "
    "echo names=$(ls /sys/fs/cgroup | tr '\\n' ' ')"
)
"""What a container prints of its ``/sys/fs/cgroup`` on cgroup v2 or v1."""


def test_a_container_sees_its_own_cgroups_read_only(agent: Agent) -> None:
    def limited(name: str, memory: str, **extra: Any) -> dict[str, Any]:
        return container(name, CGROUP_REPORT, resources={"limits": {"memory": memory}}, **extra)

    containers = [
        limited("small", "32Mi"),
        limited("large", "64Mi"),
        limited("admin", "48Mi", securityContext={"privileged": True}),
    ]
    agent.write_manifest("cgview.json", manifest("cgview", containers))
    pod = wait_for(lambda: agent.running("cgview", "small"), 30, "cgview running")
    wait_for(lambda: agent.running("cgview", "admin"), 30, "cgview running")
    # Each its own cgroup, not the pod's (144Mi) nor the node's (no limit).
    assert value(agent, pod, "small", "limit") == str(32 << 20)
    assert value(agent, pod, "large", "limit") == str(64 << 20)
    assert value(agent, pod, "admin", "limit") == str(48 << 20)
    # Its own processes only: the shell and the pipeline that counts them (the node's
    # cgroup would list hundreds).
    assert 1 <= int(value(agent, pod, "small", "procs")) <= 6
    # Read-only unless privileged (mkdir in a cgroup is how a child cgroup is made).
    assert value(agent, pod, "small", "subdir") == "1"
    assert value(agent, pod, "admin", "subdir") == "0"
    names = value(agent, pod, "small", "names").split()
    if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
        assert "memory.max" in names
    else:
        # v1: the hierarchies the container has a cgroup of its own in, no other.
        assert "memory" in names and "cpu" in names
        assert not {"devices", "freezer", "blkio"} & set(names), names
    assert not any(name.startswith("nlt-") for name in names), names
    (agent.manifests / "cgview.json").unlink()
    wait_for(lambda: not pod_dir(agent, pod).exists(), 30, "the pod's dir removed")
    assert our_mounts(agent) == []


def test_host_users_false_runs_the_image_in_the_pods_user_namespace(agent: Agent) -> None:
    """The layers are idmapped with the pod's user namespace: its root owns the image's files
    and its own "/", what it writes lands on the node as the pod's host ids, and the shared
    layer on the node is untouched."""
    script = (
        "echo uid=$(id -u); echo map=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'); "
        "echo owner=$(stat -c %u:%g /bin/busybox); echo rootdir=$(stat -c %u:%g /); "
        "echo changed >> /app/hello; echo appended=$?; touch /new; echo wrote=$?; "
        "echo workdir=$(pwd):$(stat -c %u .); echo mountpath=$(stat -c %u /nlt); "
        "echo dev=$(stat -c %u /dev); "
        "echo tty=$(grep ' /dev/pts ' /proc/self/mountinfo | tr , '\\n' | grep ^gid=)"
    )
    pod_manifest = manifest(
        "unsimage",
        [
            container(
                "app",
                script,
                workingDir="/work/dir",
                volumeMounts=[{"name": "data", "mountPath": "/nlt/vol"}],
                securityContext={"runAsUser": 0},
                readinessProbe={
                    "exec": {"command": ["/bin/sh", "-c", 'test "$(stat -c %u /new)" = 0']},
                    "periodSeconds": 1,
                },
            )
        ],
        volumes=[{"name": "data", "emptyDir": {}}],
        hostUsers=False,
    )
    agent.write_manifest("unsimage.json", pod_manifest)
    pod = wait_for(lambda: agent.running("unsimage"), 30, "unsimage running")
    record = json.loads((pod_dir(agent, pod) / "userns").read_text())
    base = record["uidMappings"][0]["hostId"]
    assert base > 0
    assert value(agent, pod, "app", "uid") == "0"
    assert value(agent, pod, "app", "map") == f"0 {base} 65536"
    # Without the idmap the host's root would be the overflow id (65534) in here.
    assert value(agent, pod, "app", "owner") == "0:0"
    assert value(agent, pod, "app", "rootdir") == "0:0"
    assert value(agent, pod, "app", "appended") == "0"
    assert value(agent, pod, "app", "wrote") == "0"
    assert value(agent, pod, "app", "workdir") == "/work/dir:0"
    assert value(agent, pod, "app", "mountpath") == "0"
    assert value(agent, pod, "app", "dev") == "0"
    # New ttys go to the pod's tty group, its gid 5 (the kernel shows the option as the node's
    # id); gid=5 here would be the node's tty group, outside the pod's range.
    assert value(agent, pod, "app", "tty") == f"gid={base + 5}"
    up = upper(agent, pod, "app")
    for path in (up / "new", up / "work" / "dir", up / "nlt"):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (base, base), path
    # /app/hello is uid 1000's in the image: copied up as the pod's uid 1000.
    hello = up / "app" / "hello"
    assert hello.read_text() == "hello from the app layer\nchanged\n"
    assert (os.stat(hello).st_uid, os.stat(hello).st_gid) == (base + 1000, base + 1000)
    layers = list((agent.root / "images" / "layers").glob("*/app/hello"))
    assert [p.read_text() for p in layers] == ["hello from the app layer\n"]
    assert os.stat(layers[0]).st_uid == 1000
    # The idmapped layers were mounted in the container's own mount namespace only.
    assert our_mounts(agent) == [str(pod_dir(agent, pod) / "shm")]
    # Probes and nodelet exec join the same namespaces and see the same ids.
    ready = lambda: (agent.container_status("unsimage", "app") or {}).get("ready")  # noqa: E731
    wait_for(ready, 20, "the exec probe run in the pod's user namespace")
    argv = [sys.executable, "-m", "nodelet", "exec", "--run-dir", str(agent.run_dir),
            pod["metadata"]["name"], "-c", "app", "--",
            "/bin/sh", "-c", "stat -c %u:%g /bin/busybox"]  # fmt: skip
    exec_owner = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert (exec_owner.returncode, exec_owner.stdout) == (0, "0:0\n"), exec_owner.stderr
    (agent.manifests / "unsimage.json").unlink()
    wait_for(lambda: not pod_dir(agent, pod).exists(), 30, "the pod's dir removed")
    assert our_mounts(agent) == []
