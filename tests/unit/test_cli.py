import argparse
from typing import Any

import pytest

from nodelet.cli.pods import pod_display_status
from nodelet.cli.run import duration

pytestmark = pytest.mark.unit


def test_durations_like_kubelet_flags() -> None:
    assert duration("20s") == 20.0
    assert duration("1m") == 60.0
    assert duration("500ms") == 0.5
    assert duration("3") == 3.0
    with pytest.raises(argparse.ArgumentTypeError):
        duration("ten seconds")


def cs(name: str, state: dict[str, Any], ready: bool = False, restarts: int = 0) -> dict[str, Any]:
    return {"name": name, "state": state, "ready": ready, "restartCount": restarts}


def test_status_column_like_kubectl() -> None:
    running: dict[str, Any] = {"running": {}}
    initializing = cs("a", {"waiting": {"reason": "PodInitializing"}})
    init_running = {
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [cs("i", running)],
            "containerStatuses": [initializing],
        }
    }
    assert pod_display_status(init_running) == ("Init:0/1", 0, 0)
    looping = {"status": {"phase": "Running", "containerStatuses": [
        cs("a", running, ready=True),
        cs("b", {"waiting": {"reason": "CrashLoopBackOff"}}, restarts=4)]}}  # fmt: skip
    assert pod_display_status(looping) == ("CrashLoopBackOff", 1, 4)
    done = {"status": {"phase": "Succeeded", "containerStatuses": [
        cs("a", {"terminated": {"reason": "Completed", "exitCode": 0}})]}}  # fmt: skip
    assert pod_display_status(done) == ("Completed", 0, 0)


def test_pods_lists_files_held_by_a_writer_as_pending(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nodelet.cli import pods as pods_command
    from nodelet.cli.client import LocalAPIClient
    from nodelet.cli.main import build_parser

    answers = {
        "/pods": {"items": []},
        "/rejected": {"items": [
            {"path": "/m/a.yaml", "podName": None,
             "errors": ["/m/a.yaml: pending: held open for writing by pid 7 (vi)"]},
            {"path": "/m/b.yaml", "podName": "b", "errors": ["/m/b.yaml: kind: must be Pod"]},
        ]},
    }  # fmt: skip

    def get(client: LocalAPIClient, path: str) -> object:
        client.redacted = False
        return answers[path]

    monkeypatch.setattr(LocalAPIClient, "get", get)
    assert pods_command.pods(build_parser().parse_args(["pods"])) == 0
    out = capsys.readouterr().out
    assert "PENDING /m/a.yaml\n" in out
    assert "REJECTED /m/b.yaml (pod b)\n" in out
