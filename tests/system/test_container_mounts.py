"""A container's mount namespace (issue 14), as the holder's child sets it up: a forked child
calls ``mounts.apply(spec)`` and execs a Python program that reports what it sees as JSON.

Host objects live under a fresh ``/var/tmp/nlt-*`` (the host's root filesystem), tmpfs mounts
the tests make there are unmounted and the directory removed, even when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from nodelet.holder import mounts, protocol
from nodelet.security.paths import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS

pytestmark = pytest.mark.system

PRELUDE = """
import errno, json, os, signal, subprocess, sys
signal.alarm(30)
seen = {"mntns": os.readlink("/proc/self/ns/mnt")}
def code(err): return errno.errorcode[err.errno]
def write(path, text="x"):
    try:
        with open(path, "w") as f: f.write(text)
        return "ok"
    except OSError as err: return code(err)
def opens_for_write(path):
    # opened and closed, nothing written: harmless on the host if the test is wrong
    try: os.close(os.open(path, os.O_WRONLY)); return "ok"
    except OSError as err: return code(err)
def read(path):
    try:
        with open(path, "rb") as f: return f.read(65536).decode(errors="replace")
    except OSError as err: return code(err)
def mounted(path):
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == path for line in table)
def ready():
    print("ready", flush=True); sys.stdin.readline()
"""


@dataclass
class Seen:
    """What the contained program reported, or the MountError that stopped the start."""

    error: str | None = None
    mntns: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


def container_spec(**fields: Any) -> protocol.ContainerSpec:
    spec: dict[str, Any] = {
        "name": "c",
        "attempt": 0,
        "argv": [],
        "env": {},
        "log_path": "/dev/null",
        "working_dir": None,
        "mounts": [],
        "run_as_user": None,
        "run_as_group": None,
        "supplemental_groups": [],
        "no_new_privileges": False,
        "own_pid_namespace": False,
    }
    spec.update(fields)
    return cast(protocol.ContainerSpec, spec)


def volume(source: Path, target: Path, **fields: Any) -> protocol.MountSpec:
    return cast(
        protocol.MountSpec,
        {"source": str(source), "target": str(target), "read_only": False, **fields},
    )


def contained(
    spec: protocol.ContainerSpec, script: str, between: Callable[[], None] | None = None
) -> Seen:
    """Fork, apply ``spec`` in the child, exec ``script`` there; ``between`` runs on the host
    when the script calls ``ready()``."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out_w, 1)
            os.dup2(in_r, 0)
            try:
                mounts.apply(spec)
            except mounts.MountError as err:
                report = {"error": str(err), "mntns": os.readlink("/proc/self/ns/mnt")}
                os.write(1, json.dumps(report).encode() + b"\n")
                os._exit(0)
            program = PRELUDE + script + "\nprint(json.dumps(seen), flush=True)\n"
            os.execv(sys.executable, [sys.executable, "-I", "-c", program])
        except BaseException as err:
            os.write(1, json.dumps({"crash": repr(err)}).encode() + b"\n")
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(in_r)
    with os.fdopen(out_r, "r") as out, os.fdopen(in_w, "w") as answer:
        line = out.readline()
        if line == "ready\n":
            assert between is not None
            between()
            answer.write("\n")
            answer.flush()
            line = out.readline()
        rest = out.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, line + rest
    report = json.loads(line)
    assert "crash" not in report, report
    if "error" in report:
        return Seen(error=report["error"], mntns=report["mntns"])
    return Seen(mntns=report.pop("mntns"), facts=report)


HOST_MNTNS = os.readlink("/proc/self/ns/mnt")


@pytest.fixture
def area() -> Iterator[Path]:
    """A directory on the host's root filesystem; what the test mounted below it is unmounted."""
    root = Path(f"/var/tmp/nlt-{secrets.token_hex(4)}")
    root.mkdir(mode=0o755)
    try:
        yield root
    finally:
        for point in sorted(_mount_points_under(root), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _mount_points_under(root: Path) -> list[str]:
    return [point for point, _ in host_mounts() if point.startswith(f"{root}/")]


def host_mounts() -> list[tuple[str, str]]:
    """(mount point, mountinfo line without its ids) of this process's (the host's) mounts."""
    return [
        (point, " ".join(line.split()[2:]))
        for point, line in ((line.split()[4], line) for line in _mountinfo_lines())
    ]


def _mountinfo_lines() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def tmpfs(path: Path, *, shared: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "nlt-test", str(path)], check=True)
    if shared:
        subprocess.run(["mount", "--make-shared", str(path)], check=True)
    return path


def test_masked_and_readonly_paths_hide_proc_and_sys(area: Path) -> None:
    secret = area / "secret.txt"
    secret.write_text("host secret\n")
    secret_dir = area / "secret.d"
    secret_dir.mkdir()
    (secret_dir / "key").write_text("k")
    assert Path("/proc/keys").read_text(), "the host's /proc/keys lists keys"
    assert os.listdir("/sys/firmware"), "the host has something under /sys/firmware"
    masked = [*DEFAULT_MASKED_PATHS, str(secret), str(secret_dir), str(area / "missing")]
    spec = container_spec(masked_paths=masked, readonly_paths=list(DEFAULT_READONLY_PATHS))
    seen = contained(
        spec,
        f"""
seen["keys"] = read("/proc/keys")
seen["secret"] = read({str(secret)!r})
seen["secret_dir"] = os.listdir({str(secret_dir)!r})
seen["secret_dir_write"] = write({str(secret_dir / "new")!r})
seen["firmware"] = os.listdir("/sys/firmware")
seen["proc_sys"] = opens_for_write("/proc/sys/kernel/hostname")
seen["proc_irq_ro"] = bool(os.statvfs("/proc/irq").f_flag & os.ST_RDONLY)
seen["proc_self"] = opens_for_write("/proc/self/oom_score_adj")
seen["sys"] = opens_for_write("/sys/kernel/rcu_expedited")
seen["sys_cgroup"] = opens_for_write("/sys/fs/cgroup/pids/cgroup.procs")
""",
    )
    assert seen.error is None
    assert seen.mntns != HOST_MNTNS
    facts = seen.facts
    assert facts["keys"] == "" and facts["secret"] == ""
    assert facts["secret_dir"] == [] and facts["secret_dir_write"] == "EROFS"
    assert facts["firmware"] == []
    assert facts["proc_sys"] == "EROFS" and facts["proc_irq_ro"] is True
    assert facts["proc_self"] == "ok", "/proc itself stays writable"
    assert facts["sys"] == "EROFS" and facts["sys_cgroup"] == "EROFS"
    assert secret.read_text() == "host secret\n", "the host still sees its own file"


def test_read_only_root_keeps_dev_proc_and_volumes_writable(area: Path) -> None:
    empty_dir = area / "emptydir"
    empty_dir.mkdir()
    target = area / "mnt"
    target.mkdir()
    host_submount = tmpfs(area / "submount")
    shm_name = f"nlt-{secrets.token_hex(4)}"
    spec = container_spec(read_only_root=True, mounts=[volume(empty_dir, target)])
    try:
        seen = contained(
            spec,
            f"""
seen["root"] = write({str(area / "file")!r})
seen["submount"] = write({str(host_submount / "file")!r})
seen["volume"] = write({str(target / "file")!r}, "from the container")
seen["dev_null"] = write("/dev/null")
seen["dev_shm"] = write("/dev/shm/{shm_name}")
seen["proc"] = opens_for_write("/proc/self/oom_score_adj")
seen["sys"] = opens_for_write("/sys/kernel/rcu_expedited")
""",
        )
    finally:
        Path(f"/dev/shm/{shm_name}").unlink(missing_ok=True)
    assert seen.error is None
    facts = seen.facts
    assert facts["root"] == "EROFS"
    assert facts["submount"] == "EROFS", "the root is read-only recursively"
    assert facts["volume"] == "ok"
    assert (empty_dir / "file").read_text() == "from the container"
    assert facts["dev_null"] == facts["dev_shm"] == facts["proc"] == "ok"
    assert facts["sys"] == "EROFS"
    (area / "file").write_text("the host's root is still writable")
    (host_submount / "file").write_text("and so is its submount")


def test_privileged_read_only_root_keeps_sys_writable(area: Path) -> None:
    spec = container_spec(privileged=True, read_only_root=True)
    seen = contained(
        spec,
        f"""
seen["root"] = write({str(area / "file")!r})
seen["sys"] = opens_for_write("/sys/kernel/rcu_expedited")
""",
    )
    assert seen.mntns != HOST_MNTNS
    assert seen.facts == {"root": "EROFS", "sys": "ok"}


SYS_PROBE = 'seen["sys"] = opens_for_write("/sys/kernel/rcu_expedited")'
"""Whether /sys is writable: a sysfs file opened for writing (nothing is written)."""


def test_privileged_without_mounts_keeps_the_hosts_namespace() -> None:
    seen = contained(container_spec(privileged=True), SYS_PROBE)
    assert seen.mntns == HOST_MNTNS
    assert seen.facts == {"sys": "ok"}


def test_unprivileged_without_mounts_gets_its_own_namespace() -> None:
    seen = contained(container_spec(), SYS_PROBE)
    assert seen.mntns != HOST_MNTNS
    assert seen.facts == {"sys": "EROFS"}


def test_read_only_volume_is_read_only_recursively(area: Path) -> None:
    source = area / "source"
    source.mkdir()
    nested = tmpfs(source / "nested")
    writable_target, read_only_target = area / "rw", area / "ro"
    writable_target.mkdir()
    read_only_target.mkdir()
    spec = container_spec(
        privileged=True,
        mounts=[
            volume(source, read_only_target, read_only=True),
            volume(source, writable_target),
        ],
    )
    seen = contained(
        spec,
        f"""
seen["ro"] = write({str(read_only_target / "file")!r})
seen["ro_nested"] = write({str(read_only_target / "nested" / "file")!r})
seen["rw_nested"] = write({str(writable_target / "nested" / "file")!r})
""",
    )
    assert seen.error is None
    assert seen.facts == {"ro": "EROFS", "ro_nested": "EROFS", "rw_nested": "ok"}
    assert (nested / "file").exists()
    (source / "file").write_text("the host's source is still writable")


def test_sub_path_mounts_a_subdirectory(area: Path) -> None:
    source = area / "volume"
    (source / "data").mkdir(parents=True)
    (source / "data" / "hello.txt").write_text("hello from data\n")
    (source / "alias").symlink_to("data")
    first, second = area / "t1", area / "t2"
    first.mkdir()
    second.mkdir()
    spec = container_spec(
        privileged=True,
        mounts=[
            volume(source, first, sub_path="data"),
            volume(source, second, sub_path="./alias/"),
        ],
    )
    seen = contained(
        spec,
        f"""
seen["first"] = sorted(os.listdir({str(first)!r}))
seen["second"] = read({str(second / "hello.txt")!r})
""",
    )
    assert seen.error is None
    assert seen.facts == {"first": ["hello.txt"], "second": "hello from data\n"}


def test_missing_sub_path_is_created_inside_the_volume(area: Path) -> None:
    source = area / "volume"
    source.mkdir()
    source.chmod(0o2775)
    target = area / "target"
    target.mkdir()
    spec = container_spec(
        privileged=True, mounts=[volume(source, target, sub_path="made/by/nodelet")]
    )
    seen = contained(spec, f'seen["write"] = write({str(target / "file")!r}, "in the subpath")')
    assert seen.error is None and seen.facts == {"write": "ok"}
    created = source / "made" / "by" / "nodelet"
    assert (created / "file").read_text() == "in the subpath"
    for directory in (source / "made", source / "made" / "by", created):
        assert directory.stat().st_mode & 0o7777 == 0o2775, "the volume's mode, as kubelet"


@pytest.mark.parametrize(
    "sub_path",
    ["etc", "etc/passwd", "etc/{fresh}/dir", "up", "up/{fresh}", "abs-inside"],
)
def test_sub_path_leading_out_of_the_volume_is_refused(area: Path, sub_path: str) -> None:
    source = area / "volume"
    (source / "inner").mkdir(parents=True)
    (source / "etc").symlink_to("/etc")
    (source / "up").symlink_to("../..")
    (source / "abs-inside").symlink_to(source / "inner")
    target = area / "target"
    target.mkdir()
    fresh = f"nlt-{secrets.token_hex(4)}"
    outside = [Path("/etc", fresh), area.parent / fresh]
    spec = container_spec(
        privileged=True, mounts=[volume(source, target, sub_path=sub_path.format(fresh=fresh))]
    )
    try:
        seen = contained(spec, 'seen["ran"] = True')
        assert seen.error is not None and "is outside of the volume" in seen.error, seen
        assert seen.mntns == HOST_MNTNS, "refused before anything was mounted"
        assert not any(path.exists() for path in outside), "nothing created outside"
    finally:
        for path in outside:
            shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("sub_path", ["../volume", "inner/../inner", "/etc"])
def test_sub_path_with_backsteps_or_absolute_is_refused(area: Path, sub_path: str) -> None:
    source = area / "volume"
    (source / "inner").mkdir(parents=True)
    target = area / "target"
    target.mkdir()
    spec = container_spec(privileged=True, mounts=[volume(source, target, sub_path=sub_path)])
    seen = contained(spec, 'seen["ran"] = True')
    assert seen.error is not None
    assert "must not contain '..'" in seen.error or "must not be an absolute path" in seen.error
    assert seen.mntns == HOST_MNTNS


@pytest.mark.parametrize(("propagation", "receives"), [("rslave", True), (None, False)])
def test_host_to_container_propagation(area: Path, propagation: str | None, receives: bool) -> None:
    shared = tmpfs(area / "shared", shared=True)
    target = area / "target"
    target.mkdir()
    extra = {"propagation": propagation} if propagation else {}
    spec = container_spec(mounts=[volume(shared, target, **extra)])

    def mount_on_the_host() -> None:
        tmpfs(shared / "late")

    seen = contained(
        spec,
        f"""
ready()
seen["late"] = mounted({str(target / "late")!r})
""",
        between=mount_on_the_host,
    )
    assert seen.error is None
    assert seen.facts == {"late": receives}


def test_bidirectional_propagation_reaches_the_host(area: Path) -> None:
    shared = tmpfs(area / "shared", shared=True)
    (shared / "from-container").mkdir()
    target = area / "target"
    target.mkdir()
    spec = container_spec(privileged=True, mounts=[volume(shared, target, propagation="rshared")])
    seen = contained(
        spec,
        f"""
point = {str(target / "from-container")!r}
seen["mount"] = subprocess.run(["mount", "-t", "tmpfs", "nlt-test", point]).returncode
""",
    )
    assert seen.error is None and seen.facts == {"mount": 0}
    assert os.path.ismount(shared / "from-container")


@pytest.mark.parametrize(
    ("propagation", "message"),
    [("rshared", "not a shared mount"), ("rslave", "not a shared or slave mount")],
)
def test_propagation_needs_a_shared_host_mount(area: Path, propagation: str, message: str) -> None:
    private = tmpfs(area / "private")
    target = area / "target"
    target.mkdir()
    spec = container_spec(mounts=[volume(private, target, propagation=propagation)])
    seen = contained(spec, 'seen["ran"] = True')
    assert seen.error is not None and message in seen.error, seen
    assert f'is mounted on "{private}"' in seen.error


def test_missing_mount_path_is_refused(area: Path) -> None:
    spec = container_spec(mounts=[volume(area, area / "absent")])
    seen = contained(spec, 'seen["ran"] = True')
    assert seen.error is not None and "does not exist on the host" in seen.error
    assert not (area / "absent").exists()


def test_the_hosts_mount_table_is_untouched(area: Path) -> None:
    source = area / "volume"
    source.mkdir()
    tmpfs(source / "nested")
    shared = tmpfs(area / "shared", shared=True)
    (shared / "secret").write_text("masked in the container only")
    targets = [shared / name for name in ("a", "b", "c")]
    for target in targets:
        target.mkdir()
    spec = container_spec(
        read_only_root=True,
        masked_paths=[*DEFAULT_MASKED_PATHS, str(shared / "secret")],
        readonly_paths=list(DEFAULT_READONLY_PATHS),
        mounts=[
            volume(source, targets[0]),
            volume(source, targets[1], read_only=True),
            volume(source, targets[2], sub_path="created"),
        ],
    )

    def relevant() -> list[tuple[str, str]]:
        watched = (str(area), "/proc", "/sys", "/dev")
        return [
            (point, line)
            for point, line in host_mounts()
            if point == "/" or any(point == w or point.startswith(w + "/") for w in watched)
        ]

    before = relevant()
    seen = contained(spec, f'seen["mounted"] = mounted({str(targets[0])!r})')
    assert seen.error is None and seen.facts == {"mounted": True}
    assert relevant() == before
