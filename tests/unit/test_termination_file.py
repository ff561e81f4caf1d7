"""Termination messages as kubelet reports them: the per-run file (path, mode, kubelet's tail
read and limits), the fallback to the logs, where the file is bound, and the manifest rules."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from nodelet.manifest.load import check_pod
from nodelet.pod import termination
from nodelet.pod.containerprep import build_container_config
from nodelet.pod.termination import (
    MAX_CONTAINER_MESSAGE_BYTES,
    create_file,
    ensure_file,
    message_file,
    read_file,
    termination_message,
)
from nodelet.util.safepath import UnsafePathError
from tests.unit.test_containerprep import ctx, make_pod
from tests.unit.test_image_containerconfig import image_info

pytestmark = pytest.mark.unit

TS = "2026-01-02T03:04:05.000000000Z"


def cri_log(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{TS} stdout F {line}\n" for line in lines))
    return path


def message(tmp_path: Path, file: Path | None, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "file": file,
        "policy": "File",
        "exit_code": 3,
        "reason": "Error",
        "runtime_message": None,
        "log_path": tmp_path / "0.log",
        "container_count": 1,
    }
    args.update(overrides)
    return termination_message(**args)


def test_one_file_per_run_beside_the_container_root(tmp_path: Path) -> None:
    path = message_file(tmp_path / "pods" / "uid", "app", 4)
    assert path == tmp_path / "pods" / "uid" / "containers" / "app" / "4" / "termination-log"
    with pytest.raises(UnsafePathError):
        message_file(tmp_path, "../escape", 0)


def test_created_empty_and_world_writable_whatever_the_umask(tmp_path: Path) -> None:
    path = message_file(tmp_path, "app", 0)
    previous = os.umask(0o077)
    try:
        create_file(path)
        path.write_text("old run's words")
        create_file(path)  # a start again for the same attempt: empty again
    finally:
        os.umask(previous)
    assert path.read_bytes() == b""
    assert path.stat().st_mode & 0o777 == 0o666
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_the_file_keeps_its_last_4096_bytes_as_kubelets_tail(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_bytes(b"a" * 1000 + b"b" * MAX_CONTAINER_MESSAGE_BYTES)
    assert read_file(path) == "b" * MAX_CONTAINER_MESSAGE_BYTES
    path.write_bytes(b"bye\n")
    assert read_file(path) == "bye\n"
    assert read_file(tmp_path / "missing") == ""
    directory = tmp_path / "dir"
    directory.mkdir()
    assert read_file(directory) == (
        f"Error on reading termination log {directory}: read {directory}: is a directory"
    )


def test_file_policy_reports_the_file_whatever_the_exit(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("bye")
    assert message(tmp_path, path, exit_code=0) == "bye"
    assert message(tmp_path, path, exit_code=3) == "bye"
    path.write_text("")
    cri_log(tmp_path / "0.log", ["the cause"])
    assert message(tmp_path, path) == ""  # File never looks at the logs
    assert message(tmp_path, None) == ""


def test_fallback_to_logs_only_for_an_empty_file_and_a_failed_run(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("")
    cri_log(tmp_path / "0.log", [f"line {n}" for n in range(100)])
    tail = "".join(f"line {n}\n" for n in range(20, 100))  # the last 80 lines
    fallback = {"policy": "FallbackToLogsOnError"}
    assert message(tmp_path, path, **fallback) == tail
    assert message(tmp_path, tmp_path / "no-file", **fallback) == tail
    assert message(tmp_path, None, **fallback) == tail
    assert message(tmp_path, path, exit_code=0, **fallback) == ""
    # A run that never started has no logs of its own to give.
    assert message(tmp_path, path, reason="StartError", **fallback) == ""
    path.write_text("from the file")
    assert message(tmp_path, path, **fallback) == "from the file"


def test_the_log_fallback_keeps_the_last_2048_bytes(tmp_path: Path) -> None:
    cri_log(tmp_path / "0.log", ["x" * 99 + str(n % 10) for n in range(40)])
    text = message(tmp_path, None, policy="FallbackToLogsOnError")
    whole = "".join("x" * 99 + str(n % 10) + "\n" for n in range(40))
    assert text == whole[-2048:]


def test_a_runtime_message_comes_first(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("bye")
    assert message(tmp_path, path, runtime_message="exec failed") == "exec failed: bye"
    path.write_text("")
    assert message(tmp_path, path, runtime_message="exec failed") == "exec failed"


def test_a_pods_containers_share_12_kib(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    path.write_text("m" * 4096)
    assert len(message(tmp_path, path, container_count=2)) == 4096
    assert len(message(tmp_path, path, container_count=4)) == 12 * 1024 // 4
    assert len(message(tmp_path, path, container_count=7)) == 12 * 1024 // 7


# -- where the file is bound --------------------------------------------------------------


def image_config(tmp_path: Path, container: dict[str, Any], **pod: Any) -> Any:
    info = image_info(tmp_path)
    context = dataclasses.replace(
        ctx(make_pod(**pod)), images=lambda _ref: info, pod_dir=tmp_path / "pod"
    )
    spec = {"name": "app", "image": "nlt/img:1", **container}
    return build_container_config(context, spec, 2)


def host_config(tmp_path: Path, container: dict[str, Any]) -> Any:
    context = dataclasses.replace(ctx(make_pod()), pod_dir=tmp_path / "pod")
    spec = {"name": "app", "image": "host", "command": ["true"], **container}
    return build_container_config(context, spec, 2)


def bound(config: Any) -> list[tuple[str, str, bool]]:
    return [(m.source, m.target, m.read_only) for m in config.mounts if "termination" in m.source]


def test_an_image_container_gets_its_file_last_over_its_volumes(tmp_path: Path) -> None:
    expected = str(tmp_path / "pod" / "containers" / "app" / "2" / "termination-log")
    mounts = [{"name": "data", "mountPath": "/dev"}]
    config = image_config(
        tmp_path, {"terminationMessagePath": "/dev/termination-log", "volumeMounts": mounts}
    )
    assert config.mounts[-1].target == "/dev/termination-log"
    assert bound(config) == [(expected, "/dev/termination-log", False)]
    custom = image_config(tmp_path, {"terminationMessagePath": "/var/run/why"})
    assert bound(custom) == [(expected, "/var/run/why", False)]
    assert bound(image_config(tmp_path, {"terminationMessagePath": ""})) == []
    # Built with an empty file (kubelet's makeMounts makes it); a rebuild (an adopted run's
    # config) keeps what the run wrote, and only a start empties it again.
    assert Path(expected).read_bytes() == b""
    assert Path(expected).stat().st_mode & 0o777 == 0o666
    Path(expected).write_text("the run's words")
    again = image_config(tmp_path, {"terminationMessagePath": "/var/run/why"})
    assert Path(expected).read_text() == "the run's words"
    ensure_file(again, tmp_path / "pod")
    assert Path(expected).read_bytes() == b""


def test_a_file_that_cannot_be_made_leaves_the_container_without_one(tmp_path: Path) -> None:
    (tmp_path / "pod").mkdir()
    (tmp_path / "pod" / "containers").write_text("not a dir")
    config = image_config(tmp_path, {"terminationMessagePath": "/dev/termination-log"})
    assert bound(config) == []


def test_a_privileged_image_container_never_gets_it_in_the_hosts_dev(tmp_path: Path) -> None:
    privileged = {"securityContext": {"privileged": True}}
    for target in ("/dev/termination-log", "/dev/../dev/x", "/dev"):
        assert bound(image_config(tmp_path, {"terminationMessagePath": target, **privileged})) == []
    inside = image_config(tmp_path, {"terminationMessagePath": "/tmp/why", **privileged})
    assert [target for _source, target, _ro in bound(inside)] == ["/tmp/why"]


def test_a_host_image_container_gets_it_only_over_a_file_the_host_has(tmp_path: Path) -> None:
    existing = tmp_path / "existing-file"
    existing.write_text("the host's")
    assert bound(host_config(tmp_path, {"terminationMessagePath": "/dev/termination-log"})) == []
    assert bound(host_config(tmp_path, {"terminationMessagePath": str(tmp_path)})) == []
    config = host_config(tmp_path, {"terminationMessagePath": str(existing)})
    assert [target for _source, target, _ro in bound(config)] == [str(existing)]
    privileged = {"terminationMessagePath": str(existing), "securityContext": {"privileged": True}}
    assert bound(host_config(tmp_path, privileged)) == []
    made = termination.message_file(tmp_path / "pod", "app", 2)
    made.unlink()
    ensure_file(host_config(tmp_path, {}), tmp_path / "pod")  # nothing bound, nothing made
    assert not made.exists()


# -- the manifest -------------------------------------------------------------------------


def problems(**container: Any) -> list[tuple[str, str]]:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "a", "image": "host", "command": ["true"], **container}]},
    }  # fmt: skip
    return check_pod(json.loads(json.dumps(pod)), "node")


def test_any_absolute_path_is_accepted() -> None:
    assert problems(terminationMessagePath="/tmp/why") == []
    assert problems(terminationMessagePath="/dev/termination-log") == []
    assert problems(terminationMessagePath="") == []  # the API server defaults it
    assert problems(terminationMessagePolicy="FallbackToLogsOnError") == []


def test_paths_and_policies_the_runtime_cannot_honour_are_refused() -> None:
    where = "spec.containers[0].terminationMessagePath"
    assert problems(terminationMessagePath="why") == [(where, "must be an absolute path")]
    assert problems(terminationMessagePath="/a/../b") == [(where, "must not contain '..'")]
    assert problems(terminationMessagePolicy="Bogus") == [
        (
            "spec.containers[0].terminationMessagePolicy",
            'Unsupported value: "Bogus": supported values: "File", "FallbackToLogsOnError"',
        )
    ]
