"""The holder's spawn sequence applies capabilities, the user, no_new_privs and seccomp as runc
does: each test forks, runs ``spawn.run`` in the child (the holder's code path), and the
container is ``cat /proc/self/status``, so what it prints is the state the kernel left after
exec. The expected figures are what a containerd + runc container shows."""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import Any

import pytest

from nodelet.holder import protocol, spawn
from nodelet.runtime.api import CapabilitySets, ContainerConfig
from nodelet.runtime.wire import container_spec
from nodelet.security.capabilities import container_capabilities, status_capabilities

pytestmark = pytest.mark.system

with open("/proc/self/status") as _status:
    HOLDER_STATUS = _status.read()
NODE_CAPS = status_capabilities(HOLDER_STATUS)
ZERO = "0000000000000000"
DEFAULT = "00000000a80425fb"
ALLOW_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
"""A one-instruction classic-BPF program: ``ret SECCOMP_RET_ALLOW``."""


def spec_for(
    security_context: dict[str, Any] | None = None,
    *,
    argv: tuple[str, ...] = ("/bin/cat", "/proc/self/status"),
    privileged: bool = False,
    user: int | None = None,
    group: int | None = None,
    no_new_privileges: bool = False,
    seccomp: bytes | None = None,
    capabilities: CapabilitySets | None = None,
) -> protocol.ContainerSpec:
    if capabilities is None:
        capabilities = container_capabilities(security_context, privileged, node_caps=NODE_CAPS)
    config = ContainerConfig(
        name="nlt-caps", attempt=0, argv=list(argv),
        env={"PATH": "/usr/bin:/bin"}, log_path="/dev/null", run_as_user=user,
        run_as_group=group, no_new_privileges=no_new_privileges, capabilities=capabilities,
        seccomp_filter=seccomp, privileged=privileged,
    )  # fmt: skip
    return container_spec(config)


def run(spec: protocol.ContainerSpec) -> dict[str, str]:
    """Fork, apply ``spec`` with the holder's spawn, exec; the container's status fields, or
    the setup failure the holder would report (as ``{"failure": ...}``)."""
    out_r, out_w = os.pipe()
    status_r, status_w = os.pipe()
    os.set_inheritable(status_w, False)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(out_r)
            os.close(status_r)
            spawn.run(spec, out_w, out_w, status_w)
        finally:
            os._exit(126)
    os.close(out_w)
    os.close(status_w)
    try:
        failure = _read_all(status_r)
        output = _read_all(out_r)
    finally:
        os.close(status_r)
        os.close(out_r)
        os.waitpid(pid, 0)
    if failure:
        details: dict[str, str] = json.loads(failure)
        return {"failure": f"{details['reason']}: {details['message']}"}
    fields = {}
    for line in output.decode().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_default_root_container_has_containerds_fourteen() -> None:
    status = run(spec_for(None))
    assert status["Uid"].split() == ["0"] * 4
    assert (status["CapEff"], status["CapPrm"], status["CapBnd"]) == (DEFAULT,) * 3
    assert (status["CapInh"], status["CapAmb"]) == (ZERO, ZERO)
    assert status["NoNewPrivs"] == "0" and status["Seccomp"] == "0"


def test_non_root_drop_all_and_no_new_privs() -> None:
    status = run(spec_for(
        {"capabilities": {"drop": ["ALL"]}}, user=1000, group=1000, no_new_privileges=True
    ))  # fmt: skip
    assert status["Uid"].split() == ["1000"] * 4
    assert status["Gid"].split() == ["1000"] * 4
    assert status["Groups"] == ""
    for field in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert status[field] == ZERO, field
    assert status["NoNewPrivs"] == "1"


def test_non_root_with_an_added_capability_keeps_it_only_in_the_bounding_set() -> None:
    """containerd gives no ambient capabilities (kubernetes#56374): after exec a non-root
    process has none in effect, whatever it added; the bounding set still carries it."""
    sc = {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}
    status = run(spec_for(sc, user=1000, group=1000))
    assert status["Uid"].split() == ["1000"] * 4
    assert (status["CapEff"], status["CapPrm"], status["CapAmb"]) == (ZERO, ZERO, ZERO)
    assert status["CapBnd"] == "0000000000000400"
    default_plus = run(spec_for({"capabilities": {"add": ["NET_BIND_SERVICE"]}}, user=1000))
    assert (default_plus["CapEff"], default_plus["CapBnd"]) == (ZERO, DEFAULT)


def test_ambient_capabilities_survive_exec_for_non_root() -> None:
    """Not what containerd asks for, but what the wire allows: it needs the permitted set kept
    across the user switch, the capset of inheritable and the ambient raise."""
    bind = (10,)
    sets = CapabilitySets(bounding=bind, effective=bind, permitted=bind, inheritable=bind,
                          ambient=bind)  # fmt: skip
    status = run(spec_for(capabilities=sets, user=1000, group=1000))
    assert status["Uid"].split() == ["1000"] * 4
    for field in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert status[field] == "0000000000000400", field


def test_privileged_keeps_the_holders_own_capabilities() -> None:
    status = run(spec_for({"capabilities": {"drop": ["ALL"]}}, privileged=True))
    for field in ("CapEff", "CapPrm", "CapBnd"):
        holder = next(line for line in HOLDER_STATUS.splitlines() if line.startswith(field))
        assert status[field] == holder.split()[1], field


def test_a_capability_the_holder_lacks_is_a_setup_error() -> None:
    missing = min(set(range(41)) - NODE_CAPS, default=None)
    if missing is None:
        pytest.skip("the holder holds every capability")
    sets = CapabilitySets((missing,), (missing,), (missing,), (), ())
    status = run(spec_for(capabilities=sets))
    assert status["failure"].startswith(f"{protocol.SETUP_ERROR}: cannot apply the capability")
    assert "Operation not permitted" in status["failure"]


def test_seccomp_without_no_new_privs_is_installed_before_the_capabilities_drop() -> None:
    """Without no_new_privs only CAP_SYS_ADMIN allows a filter: after the drop it would fail."""
    status = run(spec_for({"capabilities": {"drop": ["ALL"]}}, user=1000, seccomp=ALLOW_ALL))
    assert "failure" not in status, status
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "0"
    assert status["CapBnd"] == ZERO


def test_seccomp_with_no_new_privs_is_installed_last() -> None:
    status = run(spec_for(
        {"capabilities": {"drop": ["ALL"]}}, user=1000, no_new_privileges=True, seccomp=ALLOW_ALL
    ))  # fmt: skip
    assert "failure" not in status, status
    assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"


def test_a_malformed_seccomp_program_is_a_setup_error() -> None:
    spec = spec_for(None, seccomp=b"\x06\x00")
    assert spec["seccomp_bpf"] == base64.b64encode(b"\x06\x00").decode()
    status = run(spec)
    assert status["failure"].startswith(f"{protocol.SETUP_ERROR}: cannot install the seccomp")


def test_a_non_root_container_can_reopen_its_stdout() -> None:
    """runc gives the stdio pipes to the container's user (``fixStdioPermissions``)."""
    argv = ("/bin/sh", "-c", "echo reopened > /dev/stdout && echo Uid: $(id -u)")
    status = run(spec_for({"capabilities": {"drop": ["ALL"]}}, user=1000, argv=argv))
    assert "reopened" in status and status["Uid"] == "1000", status
