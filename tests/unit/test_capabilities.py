"""securityContext decisions: containerd's capability sets, what survives exec, kubelet's
runAsNonRoot check and the uid/gid/groups resolution (all pure)."""

from __future__ import annotations

from typing import Any

import pytest

from nodelet.model import StaticPod
from nodelet.runtime.api import CapabilitySets
from nodelet.security.capabilities import (
    CAPABILITY_NAMES,
    DEFAULT_CAPABILITIES,
    CapabilityError,
    container_capabilities,
    effective_after_exec,
    from_mask,
    name_of,
    number,
    status_capabilities,
    to_mask,
)
from nodelet.security.context import container_security
from nodelet.security.identity import IdentityError, resolve, verify_run_as_non_root

pytestmark = pytest.mark.unit

NODE_CAPS = frozenset(range(41)) - {24}
"""This machine's root: everything but CAP_SYS_RESOURCE."""
DEFAULT_MASK = 0xA80425FB
"""CapEff/CapPrm/CapBnd of a default containerd container (``/proc/<pid>/status``)."""


def caps(security_context: dict[str, Any] | None, privileged: bool = False) -> CapabilitySets:
    sets = container_capabilities(security_context, privileged, node_caps=NODE_CAPS)
    assert sets is not None
    return sets


def sc(add: list[str] | None = None, drop: list[str] | None = None) -> dict[str, Any]:
    return {"capabilities": {"add": add or [], "drop": drop or []}}


def mask(sets: CapabilitySets) -> int:
    """One mask for bounding = effective = permitted (containerd always fills the three alike)."""
    assert sets.bounding == sets.effective == sets.permitted
    assert sets.inheritable == () and sets.ambient == ()
    return to_mask(sets.bounding)


def test_names_and_numbers_cover_every_capability_up_to_checkpoint_restore() -> None:
    assert len(CAPABILITY_NAMES) == 41
    assert number("CHECKPOINT_RESTORE") == 40 and number("cap_chown") == 0
    assert number("CAP_NET_BIND_SERVICE") == number("net_bind_service") == 10
    assert name_of(21) == "CAP_SYS_ADMIN"
    with pytest.raises(CapabilityError, match="'NET_RAWW'"):
        number("NET_RAWW")


def test_default_is_containerds_fourteen() -> None:
    assert len(DEFAULT_CAPABILITIES) == 14
    assert mask(caps(None)) == DEFAULT_MASK
    assert mask(caps({})) == DEFAULT_MASK
    assert mask(caps({"capabilities": {}})) == DEFAULT_MASK


def test_add_and_drop_single_capabilities() -> None:
    sets = caps(sc(add=["NET_ADMIN", "SYS_TIME"], drop=["NET_RAW", "cap_mknod"]))
    expected = DEFAULT_MASK | 1 << 12 | 1 << 25
    expected &= ~(1 << 13 | 1 << 27)
    assert mask(sets) == expected
    assert sets.bounding == tuple(sorted(sets.bounding))


def test_drop_wins_over_add_of_the_same_capability() -> None:
    assert mask(caps(sc(add=["NET_ADMIN"], drop=["NET_ADMIN"]))) == DEFAULT_MASK


def test_add_all_grants_what_the_runtime_holds() -> None:
    assert from_mask(mask(caps(sc(add=["ALL"])))) == NODE_CAPS
    assert from_mask(mask(caps(sc(add=["all"], drop=["CHOWN"])))) == NODE_CAPS - {0}


def test_drop_all_then_add_individual() -> None:
    assert mask(caps(sc(drop=["ALL"]))) == 0
    assert mask(caps(sc(add=["NET_BIND_SERVICE"], drop=["all"]))) == 1 << 10


def test_add_all_and_drop_all_leave_only_the_named_adds() -> None:
    assert mask(caps(sc(add=["ALL", "KILL"], drop=["ALL"]))) == 1 << 5


def test_privileged_keeps_the_holders_own_whatever_the_lists_say() -> None:
    assert container_capabilities(sc(drop=["ALL"]), True, node_caps=NODE_CAPS) is None


def test_unknown_names_are_refused_in_add_and_drop() -> None:
    with pytest.raises(CapabilityError, match="'SYS_FOO'"):
        caps(sc(add=["SYS_FOO"]))
    with pytest.raises(CapabilityError, match="'CAP_BAR'"):
        caps(sc(drop=["ALL", "CAP_BAR"]))


def test_status_capabilities_reads_a_proc_status_mask() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n"
    assert status_capabilities(status) == NODE_CAPS
    assert status_capabilities(status, "CapInh") == frozenset()


def test_effective_after_exec_for_root_is_the_bounding_set() -> None:
    sets = caps(None)
    assert from_mask(DEFAULT_MASK) == {number(n) for n in DEFAULT_CAPABILITIES}
    expected = {f"CAP_{n}" for n in DEFAULT_CAPABILITIES}
    assert effective_after_exec(sets, 0) == expected
    narrowed = CapabilitySets((0, 5), (0,), (0,), (), ())
    assert effective_after_exec(narrowed, 0) == {"CAP_CHOWN", "CAP_KILL"}
    assert effective_after_exec(narrowed, 0, no_new_privileges=True) == {"CAP_CHOWN"}


def test_effective_after_exec_for_non_root_is_only_ambient() -> None:
    assert effective_after_exec(caps(None), 1000) == frozenset()
    assert effective_after_exec(caps(sc(add=["NET_BIND_SERVICE"])), 1000) == frozenset()
    ambient = CapabilitySets((10,), (10,), (10,), (10,), (10,))
    assert effective_after_exec(ambient, 1000) == {"CAP_NET_BIND_SERVICE"}


def pod_spec(**security_context: Any) -> dict[str, Any]:
    return {"securityContext": security_context, "containers": []}


def container(**security_context: Any) -> dict[str, Any]:
    return {"name": "app", "securityContext": security_context}


POD = "web-n1_prod(u1)"


def test_run_as_non_root_with_root_user_is_kubelets_message() -> None:
    with pytest.raises(IdentityError) as err:
        verify_run_as_non_root(pod_spec(runAsNonRoot=True), container(runAsUser=0), POD)
    expected = (
        'container\'s runAsUser breaks non-root policy (pod: "web-n1_prod(u1)", container: app)'
    )
    assert str(err.value) == expected


def test_run_as_non_root_without_user_and_root_image_is_kubelets_message() -> None:
    with pytest.raises(IdentityError) as err:
        verify_run_as_non_root(pod_spec(), container(runAsNonRoot=True), POD)
    expected = (
        'container has runAsNonRoot and image will run as root (pod: "web-n1_prod(u1)", '
        "container: app)"
    )
    assert str(err.value) == expected


def test_run_as_non_root_passes_for_a_user_and_the_container_overrides_the_pod() -> None:
    verify_run_as_non_root(pod_spec(runAsNonRoot=True), container(runAsUser=1000), POD)
    verify_run_as_non_root(pod_spec(runAsNonRoot=True, runAsUser=1000), container(), POD)
    verify_run_as_non_root(pod_spec(runAsNonRoot=True), container(runAsNonRoot=False), POD)
    verify_run_as_non_root(pod_spec(runAsNonRoot=True), container(), POD, image_uid=1000)
    with pytest.raises(IdentityError, match="breaks non-root"):
        verify_run_as_non_root(pod_spec(runAsNonRoot=True, runAsUser=1000),
                               container(runAsUser=0), POD)  # fmt: skip


PASSWD = "root:x:0:0:root:/root:/bin/bash\nweb:x:1000:1001::/home/web:/bin/sh\n"
GROUP = "root:x:0:\nweb:x:1001:web\nadm:x:4:web,ops\nstaff:x:50:ops\n"


def test_identity_container_wins_and_fs_group_joins_the_groups() -> None:
    spec = pod_spec(runAsUser=1, runAsGroup=2, fsGroup=3, supplementalGroups=[5, 4])
    ident = resolve(spec, container(runAsUser=10, runAsGroup=20))
    assert (ident.run_as_user, ident.run_as_group) == (10, 20)
    assert ident.supplemental_groups == (3, 4, 5, 20)


def test_identity_defaults_from_the_image_files() -> None:
    ident = resolve(pod_spec(), container(runAsUser=1000), passwd=PASSWD, group=GROUP)
    assert (ident.run_as_user, ident.run_as_group, ident.supplemental_groups) == (
        1000,
        1001,
        (4, 1001),
    )
    unknown = resolve(pod_spec(), container(runAsUser=4242), passwd=PASSWD, group=GROUP)
    assert (unknown.run_as_group, unknown.supplemental_groups) == (0, (0,))
    root = resolve(pod_spec(), container(), passwd=PASSWD, group=GROUP)
    assert (root.run_as_user, root.run_as_group, root.supplemental_groups) == (0, 0, (0,))


def test_container_security_is_the_one_call_for_container_prep() -> None:
    manifest = {"metadata": {"name": "web-n1", "namespace": "prod", "uid": "u1"},
                "spec": pod_spec(runAsNonRoot=True, runAsUser=1000)}  # fmt: skip
    pod = StaticPod("u1", "prod", "web-n1", "/m/web.yaml", manifest)
    app = {"name": "app", "securityContext": {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}  # fmt: skip
    result = container_security(pod, app, node_caps=NODE_CAPS, passwd=PASSWD, group=GROUP)
    assert result.capabilities is not None and result.capabilities.bounding == (10,)
    assert result.no_new_privileges and result.read_only_root and not result.privileged
    assert (result.run_as_user, result.run_as_group) == (1000, 1001)
    privileged = container_security(pod, {"name": "p", "securityContext": {"privileged": True}},
                                    node_caps=NODE_CAPS)  # fmt: skip
    assert privileged.capabilities is None and privileged.privileged
    assert not privileged.no_new_privileges
    with pytest.raises(IdentityError, match=r'\(pod: "web-n1_prod\(u1\)", container: root\)'):
        container_security(pod, {"name": "root", "securityContext": {"runAsUser": 0}},
                           node_caps=NODE_CAPS)  # fmt: skip
