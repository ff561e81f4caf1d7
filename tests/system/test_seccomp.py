"""seccomp filters installed for real: a launcher process sets no_new_privs, installs the compiled
program with the holder's ``install`` and execs a probe program, as the holder's spawn does
between fork and exec. Every check looks at what the kernel does to the exec'd program."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nodelet.security import seccomp

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
"""Debian's python3, as the containers of the host image run it."""
LAUNCHER = """
import os, sys
sys.path.insert(0, {root!r})
from nodelet.holder import linux, seccomp
program = sys.stdin.buffer.read()
if {no_new_privs!r}:
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
if {drop_sys_admin!r}:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    assert libc.capget(header, data) == 0
    data[0] &= ~(1 << 21)
    assert libc.capset(header, data) == 0, ctypes.get_errno()
try:
    seccomp.install(program)
except OSError as err:
    print('{{"install": %d}}' % err.errno, flush=True)
    sys.exit(0)
os.execv({python!r}, [{python!r}, "-I", "-S", "-c", sys.argv[1]])
"""
PROBE_PRELUDE = """
import ctypes, errno, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def call(fn, *args):
    ctypes.set_errno(0)
    result = fn(*args)
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
def seccomp_mode():
    for line in open("/proc/self/status"):
        if line.startswith("Seccomp:"):
            return line.split()[1]
"""
KEYCTL = {"x86_64": 250, "aarch64": 219, "s390x": 280, "ppc64le": 283, "riscv64": 219}
KEYCTL_NR = KEYCTL.get(os.uname().machine, -1)
CLONE_NEWUSER = 0x10000000
CLONE_NEWUTS = 0x04000000
AF_VSOCK = 40
DEFAULT_CAPS = {
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
}


def confined(
    program: bytes, probe: str, *, no_new_privs: bool = True, drop_sys_admin: bool = False
) -> dict[str, Any]:
    """Run ``probe`` (which prints one JSON object) under ``program``; return that object, or
    ``{"install": errno}`` when the launcher could not install the filter."""
    launcher = LAUNCHER.format(
        root=str(ROOT), no_new_privs=no_new_privs, drop_sys_admin=drop_sys_admin, python=PYTHON
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", launcher, PROBE_PRELUDE + probe],
        input=program,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    answer: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return answer


RUNTIME_DEFAULT_PROBE = f"""
import json, tempfile
out = {{"mode": seccomp_mode()}}
out["unshare_user"] = call(libc.unshare, {CLONE_NEWUSER})
out["unshare_uts"] = call(libc.unshare, {CLONE_NEWUTS})
out["keyctl"] = call(libc.syscall, {KEYCTL_NR}, 0, 0, 0, 0, 0)
try:
    socket.socket({AF_VSOCK}, socket.SOCK_STREAM).close()
    out["vsock"] = "ok"
except OSError as err:
    out["vsock"] = errno.errorcode[err.errno]
with tempfile.TemporaryDirectory(prefix="nlt-seccomp-") as tmp:
    path = os.path.join(tmp, "f")
    with open(path, "w") as f:
        f.write("data")
    os.mkdir(os.path.join(tmp, "d"))
    out["files"] = open(path).read() + ":" + ",".join(sorted(os.listdir(tmp)))
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname())
out["tcp"] = "ok"
client.close(); server.close()
out["child"] = subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True, text=True).stdout
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def default_program() -> bytes:
    return seccomp.compile_profile(seccomp.RUNTIME_DEFAULT, DEFAULT_CAPS)


@pytest.mark.skipif(os.uname().machine not in KEYCTL, reason="keyctl's number for this arch")
def test_runtime_default_refuses_namespaces_and_keyrings_and_allows_the_ordinary(
    default_program: bytes,
) -> None:
    out = confined(default_program, RUNTIME_DEFAULT_PROBE)
    assert out["mode"] == "2"
    assert out["unshare_user"] == "EPERM"
    assert out["unshare_uts"] == "EPERM"
    assert out["keyctl"] == "EPERM"
    assert out["vsock"] == "EPERM"
    assert out["files"] == "data:d,f"
    assert out["tcp"] == "ok"
    assert out["child"] == "hi\n"


def test_an_allow_all_filter_shows_the_probe_can_tell() -> None:
    """A filter that allows everything: what RuntimeDefault refuses is possible here, so the
    refusals above come from its rules (root may unshare)."""
    out = confined(
        seccomp.compile_profile({"defaultAction": "SCMP_ACT_ALLOW"}),
        "\n".join(
            [
                "import json",
                f"print(json.dumps({{'mode': seccomp_mode(), "
                f"'unshare_uts': call(libc.unshare, {CLONE_NEWUTS})}}))",
            ]
        ),
    )
    assert out == {"mode": "2", "unshare_uts": "ok"}


@pytest.mark.skipif(os.uname().machine not in KEYCTL, reason="keyctl's number for this arch")
def test_sys_admin_lets_runtime_default_unshare() -> None:
    program = seccomp.compile_profile(seccomp.RUNTIME_DEFAULT, {*DEFAULT_CAPS, "CAP_SYS_ADMIN"})
    probe = (
        "import json\n"
        f"print(json.dumps({{'mode': seccomp_mode(), 'unshare_user': "
        f"call(libc.unshare, {CLONE_NEWUSER}), 'keyctl': call(libc.syscall, {KEYCTL_NR}, 0)}}))\n"
    )
    assert confined(program, probe) == {"mode": "2", "unshare_user": "ok", "keyctl": "EPERM"}


MKDIR_PROBE = """
import json
out = {{"mode": seccomp_mode()}}
try:
    os.mkdir(os.path.join({work!r}, "d"))
    out["mkdir"] = "ok"
except OSError as err:
    out["mkdir"] = errno.errorcode[err.errno]
with open(os.path.join({work!r}, "f"), "w") as f:
    f.write("x")
out["write"] = open(os.path.join({work!r}, "f")).read()
print(json.dumps(out))
"""


def mkdir_probe(tmp_path: Path) -> str:
    work = tmp_path / "work"
    work.mkdir()
    return MKDIR_PROBE.format(work=str(work))


def localhost_program(tmp_path: Path, profile: dict[str, Any]) -> bytes:
    seccomp_dir = tmp_path / "seccomp"
    (seccomp_dir / "team").mkdir(parents=True)
    (seccomp_dir / "team" / "profile.json").write_text(json.dumps(profile))
    program = seccomp.filter_for(
        {"type": "Localhost", "localhostProfile": "team/profile.json"},
        DEFAULT_CAPS,
        False,
        seccomp_dir,
    )
    assert program is not None
    return program


def test_a_localhost_profile_denies_mkdir_only(tmp_path: Path) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
    }
    out = confined(localhost_program(tmp_path, profile), mkdir_probe(tmp_path))
    assert out == {"mode": "2", "mkdir": "EPERM", "write": "x"}


def test_errno_ret_is_the_errno_the_call_gets(tmp_path: Path) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 30},
            {"name": "mkdirat", "action": "SCMP_ACT_ERRNO", "errnoRet": 30},
        ],
    }
    out = confined(localhost_program(tmp_path, profile), mkdir_probe(tmp_path))
    assert out["mkdir"] == "EROFS"


@pytest.mark.skipif(os.uname().machine not in KEYCTL, reason="keyctl's number for this arch")
def test_default_errno_ret_applies_to_everything_unlisted() -> None:
    profile = seccomp.runtime_default(DEFAULT_CAPS)
    profile["defaultErrnoRet"] = 38
    probe = (
        "import json\n"
        f"print(json.dumps({{'keyctl': call(libc.syscall, {KEYCTL_NR}, "
        "0, 0, 0, 0, 0)}))\n"
    )
    assert confined(seccomp.compile_profile(profile), probe) == {"keyctl": "ENOSYS"}


def test_argument_conditions_are_compiled() -> None:
    """personality(2) is allowed for five personas only: the BPF compares the argument."""
    probe = (
        "import json\n"
        "print(json.dumps({'linux': call(libc.personality, 0),"
        " 'other': call(libc.personality, 0x0040000)}))\n"
    )
    out = confined(seccomp.compile_profile(seccomp.RUNTIME_DEFAULT, DEFAULT_CAPS), probe)
    assert out == {"linux": "ok", "other": "EPERM"}


def test_install_without_no_new_privs_needs_sys_admin(default_program: bytes) -> None:
    """Root holds CAP_SYS_ADMIN, so the kernel accepts the filter without no_new_privs (runc's
    order when no_new_privs is off: install before the capabilities are dropped)."""
    out = confined(
        default_program,
        "import json\nprint(json.dumps({'mode': seccomp_mode()}))\n",
        no_new_privs=False,
    )
    assert out == {"mode": "2"}
    refused = confined(default_program, "", no_new_privs=False, drop_sys_admin=True)
    assert refused == {"install": errno.EACCES}


@pytest.mark.parametrize("program", [b"", b"\x06\x00\x00\x00\x00\x00\xff", b"\0" * 8 * 4097])
def test_malformed_programs_are_refused_before_the_kernel(program: bytes) -> None:
    from nodelet.holder.seccomp import install

    with pytest.raises(OSError, match="seccomp filter of"):
        install(program)
