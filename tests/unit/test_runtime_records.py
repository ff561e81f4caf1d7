"""What the runtime reads back from disk is checked, never trusted: journals, pod records, paths.

Each case is a damage seen on a real node (a torn write, a stray byte, a record of the wrong
shape, a name that is a path) and what the runtime must make of it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from nodelet.holder import protocol
from nodelet.logs import retention
from nodelet.pod.actions import compute_pod_actions, sandbox_backoff_key
from nodelet.pod.backoff import Backoff
from nodelet.pod.podrecord import RecordError, pod_from_record
from nodelet.runtime import journal, rundir
from nodelet.runtime.api import SandboxStatus
from nodelet.util import safepath

pytestmark = pytest.mark.unit

START = {"type": "start", "name": "app", "attempt": 0, "pid": 41, "started_at": 100.0}
EXIT = {**START, "type": "exit", "finished_at": 101.0, "exit_code": 1, "signal": None}
RESTART = {"type": "start", "name": "app", "attempt": 1, "pid": 42, "started_at": 102.0}


def write_journal(directory: Path, *chunks: bytes, name: str = protocol.JOURNAL_NAME) -> None:
    (directory / name).write_bytes(b"".join(chunks))


def test_records_round_trip_with_a_checksum(tmp_path: Path) -> None:
    write_journal(tmp_path, *(protocol.encode_record(e) for e in (START, EXIT, RESTART)))
    runs = journal.read_journals(tmp_path)
    assert [(r.attempt, r.exit_code, r.running) for r in runs] == [(0, 1, False), (1, None, True)]


def test_a_torn_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    torn = protocol.encode_record(EXIT)[:-9]  # a write cut short: no newline, no tail
    write_journal(tmp_path, protocol.encode_record(START), torn, protocol.encode_record(RESTART))
    runs = journal.read_journals(tmp_path)
    assert [(r.attempt, r.running) for r in runs] == [(0, True), (1, True)]


def test_garbage_and_bad_checksums_are_skipped(tmp_path: Path, caplog: Any) -> None:
    good = protocol.encode_record(START)
    flipped = good.replace(b'"pid":41', b'"pid":49')  # same length, checksum now wrong
    write_journal(tmp_path, b"\x00\xffgarbage{{{", flipped, b"\n{not json}\n", good)
    runs = journal.read_journals(tmp_path)
    assert [(r.pid, r.attempt) for r in runs] == [(41, 0)]
    assert "damaged journal record" in caplog.text


@pytest.mark.parametrize(
    "entry",
    [
        {**START, "attempt": "0"},
        {**START, "pid": None},
        {**START, "pid": -1},
        {**START, "name": ""},
        {**START, "started_at": True},
        {**EXIT, "exit_code": None},
        {**EXIT, "finished_at": "soon"},
        {**EXIT, "signal": "KILL"},
        {"type": "exit"},
        {**START, "type": "hello"},
    ],
)
def test_entries_of_the_wrong_shape_are_skipped(tmp_path: Path, entry: dict[str, Any]) -> None:
    write_journal(tmp_path, protocol.encode_record(entry), protocol.encode_record(RESTART))
    assert [r.attempt for r in journal.read_journals(tmp_path)] == [1]


def test_version_1_journals_are_still_read(tmp_path: Path) -> None:
    """Holders started by an older agent wrote bare JSON lines; their history must survive."""
    write_journal(tmp_path, json.dumps(START).encode() + b"\n" + json.dumps(EXIT).encode())
    assert [r.exit_code for r in journal.read_journals(tmp_path)] == [1]


def test_archived_journals_are_read_in_numeric_order(tmp_path: Path) -> None:
    for number in (10, 2):
        attempt = {10: 1, 2: 0}[number]
        entry = {**START, "attempt": attempt, "pid": 50 + attempt}
        write_journal(tmp_path, protocol.encode_record(entry), name=f"journal-{number}.jsonl")
    write_journal(tmp_path, protocol.encode_record({**START, "attempt": 2, "pid": 60}))
    assert [r.attempt for r in journal.read_journals(tmp_path)] == [0, 1, 2]
    assert journal.next_archive(tmp_path).name == "journal-11.jsonl"


def valid_record(uid: str = "0123abcd") -> dict[str, Any]:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-node", "namespace": "default", "uid": uid},
        "spec": {"containers": [{"name": "app", "image": "host", "command": ["true"]}]},
    }
    return {
        "uid": uid,
        "namespace": "default",
        "name": "web-node",
        "sourcePath": "/m/web.yaml",
        "manifest": manifest,
    }


def test_a_valid_pod_record_is_adopted() -> None:
    assert pod_from_record(valid_record(), "0123abcd").spec["containers"][0]["name"] == "app"


@pytest.mark.parametrize(
    "damage",
    [
        lambda r: r.update(manifest="oops"),
        lambda r: r.update(uid="other"),
        lambda r: r.pop("name"),
        lambda r: r["manifest"]["spec"].update(containers=[None]),
        lambda r: r["manifest"]["spec"].update(containers=[]),
        lambda r: r["manifest"]["spec"].update(containers="app"),
        lambda r: r["manifest"]["spec"].update(terminationGracePeriodSeconds="30"),
        lambda r: r["manifest"]["metadata"].update(uid="../../etc"),
        lambda r: r["manifest"].update(spec=None),
    ],
)
def test_a_damaged_pod_record_is_refused(damage: Any) -> None:
    record = valid_record()
    damage(record)
    with pytest.raises(RecordError):
        pod_from_record(record, "0123abcd")


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc", "x\0y"])
def test_a_name_that_is_a_path_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(safepath.UnsafePathError):
        safepath.child(tmp_path, name)


def test_remove_tree_never_leaves_its_directory(tmp_path: Path) -> None:
    base, victim = tmp_path / "base", tmp_path / "victim"
    (base / "pod" / "sub").mkdir(parents=True)
    victim.mkdir()
    (victim / "keep").write_text("x")
    (base / "pod" / "sub" / "link").symlink_to(victim)
    (base / "evil").symlink_to(victim)
    for outside in (victim, base / ".." / "victim", base / "evil", base):
        with pytest.raises(safepath.UnsafePathError):
            safepath.remove_tree(base, outside)
    safepath.remove_tree(base, base / "pod")
    assert not (base / "pod").exists()
    assert (victim / "keep").read_text() == "x"  # the link inside was removed, not followed


def test_a_resumed_stop_keeps_its_deadline(tmp_path: Path) -> None:
    marker = rundir.mark_terminating(tmp_path, 30.0)
    assert oct(os.stat(tmp_path / protocol.TERMINATING_NAME).st_mode & 0o777) == "0o600"
    assert rundir.read_terminating(tmp_path) == marker
    assert rundir.remaining_grace(marker, 30.0, marker["since"] + 20) == pytest.approx(10.0)
    assert rundir.remaining_grace(marker, 5.0, marker["since"] + 20) == 5.0
    assert rundir.remaining_grace(marker, 30.0, marker["since"] + 40) == 0.0
    (tmp_path / protocol.TERMINATING_NAME).write_text('{"since": "x"}')
    assert rundir.read_terminating(tmp_path) == {"since": 0.0, "grace_seconds": 0.0}


def test_a_holder_identity_with_a_reused_pid_is_not_trusted(tmp_path: Path) -> None:
    me = os.getpid()
    with open(f"/proc/{me}/stat", "rb") as stat:
        started = int(stat.read().rsplit(b")", 1)[1].split()[19])
    identity = tmp_path / protocol.HOLDER_ID_NAME
    identity.write_text(json.dumps({"pid": me, "start_time": started}))
    assert rundir.read_holder_identity(tmp_path) is not None
    identity.write_text(json.dumps({"pid": me, "start_time": started + 1}))
    assert rundir.read_holder_identity(tmp_path) is None
    identity.write_text("[1, 2]")
    assert rundir.read_holder_identity(tmp_path) is None


def dead_sandbox(finished_at: float) -> SandboxStatus:
    return SandboxStatus("uid1", False, None, 50.0, finished_at=finished_at)


def test_a_dying_holder_is_recreated_with_back_off() -> None:
    spec = {"containers": [{"name": "app"}], "restartPolicy": "Always"}
    backoff = Backoff(10.0, 300.0)

    def actions(finished: float, now: float) -> Any:
        return compute_pod_actions("uid1", "p", spec, dead_sandbox(finished), {}, backoff, now)

    assert actions(100.0, 100.5).create_sandbox  # the first re-creation is immediate
    backoff.next(sandbox_backoff_key("uid1"), 100.0, 100.5)
    again = actions(101.0, 101.5)
    assert not again.create_sandbox
    assert again.sandbox_waiting is not None and again.sandbox_waiting.reason == "SandboxBackOff"
    assert again.wake_at == pytest.approx(111.0)
    assert actions(101.0, 111.1).create_sandbox
    assert compute_pod_actions("uid1", "p", spec, None, {}, backoff, 1.0).create_sandbox


def test_log_gc_removes_only_marked_dirs_of_gone_pods(tmp_path: Path) -> None:
    gone, live, foreign = (tmp_path / f"default_{n}_uid-{n}" for n in ("gone", "live", "other"))
    retention.mark(gone)
    retention.mark(live)
    foreign.mkdir()
    old = time.time() - 120
    for path in (gone, live, foreign):
        os.utime(path, (old, old))
    assert retention.sweep(tmp_path, {"uid-live"}) == 1
    assert not gone.exists() and live.exists() and foreign.exists()
    fresh = tmp_path / "default_new_uid-new"
    retention.mark(fresh)
    assert retention.sweep(tmp_path, {"uid-live"}) == 0  # removed pods keep their logs a while
    assert fresh.exists()


def test_stray_json_in_a_checksummed_journal_is_damage(tmp_path: Path) -> None:
    write_journal(tmp_path, protocol.encode_record(START), json.dumps(EXIT).encode() + b"\n")
    assert [r.running for r in journal.read_journals(tmp_path)] == [True]


def test_the_schema_cache_holds_the_pod_models_and_is_rebuilt_when_damaged(tmp_path: Path) -> None:
    from nodelet.manifest import schema, schemacache

    cache = tmp_path / "schema-cache.json"
    schemacache.warm(cache)  # built from the client's models
    stored = json.loads(cache.read_text())
    assert stored["models"]["V1Pod"]["spec"] == "V1PodSpec"
    assert "V1Container" in stored["models"] and "V1EnvVar" in stored["models"]
    assert stored["models"] == schema.pod_models()
    assert oct(os.stat(cache).st_mode & 0o777) == "0o600"
    for damage in ("{", '{"kubernetes": "0.0", "models": {}}', '{"kubernetes": 1}'):
        cache.write_text(damage)
        schemacache.warm(cache)
        assert json.loads(cache.read_text())["models"] == stored["models"]


def test_status_never_claims_a_process_that_is_gone(tmp_path: Path) -> None:
    """A run the journal still shows running is reported running only while its process
    exists as the holder's child (here the test process plays the holder)."""
    import subprocess

    from nodelet.runtime.api import ContainerRecord
    from nodelet.runtime.sandbox import Sandbox

    live = subprocess.Popen(["sleep", "30"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        box = Sandbox(uid="u", directory=tmp_path, record={}, holder_pid=os.getpid(),
                      created_at=0.0, alive=True)  # fmt: skip
        box.records = [
            ContainerRecord("a", 0, live.pid, 1.0),
            ContainerRecord("b", 0, gone.pid, 1.0),
        ]
        a, b = box.status().containers
        assert a.running
        assert not b.running and b.reason == "ContainerStatusUnknown" and b.exit_code == 137
    finally:
        live.kill()
        live.wait()
