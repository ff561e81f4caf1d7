"""The security fields cross the wire intact, and only a version-3 holder is sent them."""

from __future__ import annotations

import base64

import pytest

from nodelet.holder import protocol
from nodelet.runtime import wire
from nodelet.runtime.api import CapabilitySets, ContainerConfig, Mount, SandboxConfig

pytestmark = pytest.mark.unit


def _config(**fields: object) -> ContainerConfig:
    return ContainerConfig(name="c", attempt=0, argv=["true"], env={}, log_path="/x", **fields)  # type: ignore[arg-type]


def test_a_plain_container_needs_no_version_3_holder() -> None:
    spec = wire.container_spec(_config(mounts=[Mount("/a", "/b", True)]))
    assert not protocol.needs_version_3(spec)
    assert spec["mounts"] == [{"source": "/a", "target": "/b", "read_only": True}]


def test_security_fields_are_sent_and_need_version_3() -> None:
    caps = CapabilitySets((0, 1), (0,), (0,), (), ())
    spec = wire.container_spec(
        _config(
            capabilities=caps,
            seccomp_filter=b"\x06\x00\x00\x00\x00\x00\xff\x7f",
            read_only_root=True,
            masked_paths=("/proc/kcore",),
            readonly_paths=("/proc/sys",),
            privileged=False,
        )
    )
    assert spec["capabilities"] == {
        "bounding": [0, 1], "effective": [0], "permitted": [0], "inheritable": [], "ambient": [],
    }  # fmt: skip
    assert base64.b64decode(spec["seccomp_bpf"]) == b"\x06\x00\x00\x00\x00\x00\xff\x7f"
    assert spec["read_only_root"] is True
    assert spec["masked_paths"] == ["/proc/kcore"]
    assert spec["readonly_paths"] == ["/proc/sys"]
    assert protocol.needs_version_3(spec)
    for key in protocol.SECURITY_KEYS:
        alone = {k: v for k, v in spec.items() if k not in protocol.SECURITY_KEYS or k == key}
        assert protocol.needs_version_3(alone)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mount", "key", "value"),
    [(Mount("/a", "/b", sub_path="x"), "sub_path", "x"),
     (Mount("/a", "/b", propagation="rslave"), "propagation", "rslave")],
)  # fmt: skip
def test_subpath_and_propagation_need_version_3(mount: Mount, key: str, value: str) -> None:
    spec = wire.container_spec(_config(mounts=[mount]))
    assert spec["mounts"][0].get(key) == value
    assert protocol.needs_version_3(spec)


def test_sysctls_go_to_the_sandbox_request(tmp_path: object) -> None:
    config = SandboxConfig("u", "ns", "p", "h", sysctls=(("kernel.shm_rmid_forced", "1"),))
    request = wire.sandbox_request(config, tmp_path)  # type: ignore[arg-type]
    assert request["sysctls"] == [["kernel.shm_rmid_forced", "1"]]
    assert "sysctls" not in wire.sandbox_request(SandboxConfig("u", "ns", "p", "h"), tmp_path)  # type: ignore[arg-type]
