"""The API server's rules for securityContext, sysctls, AppArmor annotations and the volume
fields nodelet now honours: each rule accepts its valid neighbours and refuses a broken value
with the field path and the API server's text."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodelet.manifest.load import check_pod
from nodelet.manifest.validation import validate

pytestmark = pytest.mark.unit

C = "spec.containers[0]"
SC = f"{C}.securityContext"
V = "spec.volumes[0]"
M = f"{C}.volumeMounts[0]"
APPARMOR_KEY = "container.apparmor.security.beta.kubernetes.io/c"


def base() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": "host"}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
    }


def errors(pod: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    validate(pod, "node1", lambda where, why: found.append((where, why)))
    return found


def container_sc(**context: Any) -> dict[str, Any]:
    pod = base()
    pod["spec"]["containers"][0]["securityContext"] = context
    return pod


def pod_sc(**context: Any) -> dict[str, Any]:
    pod = base()
    pod["spec"]["securityContext"] = context
    return pod


def spec(**fields: Any) -> dict[str, Any]:
    pod = base()
    pod["spec"].update(fields)
    return pod


def mount(**fields: Any) -> dict[str, Any]:
    pod = base()
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "v", "mountPath": "/m", **fields}]
    return pod


def volume(**source: Any) -> dict[str, Any]:
    pod = base()
    pod["spec"]["volumes"] = [{"name": "v", **source}]
    return pod


def downward(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return volume(downwardAPI={"items": list(items), **fields})


def annotated(value: str, key: str = APPARMOR_KEY, **context: Any) -> dict[str, Any]:
    pod = container_sc(**context) if context else base()
    pod["metadata"]["annotations"] = {key: value}
    return pod


ACCEPTED = [
    container_sc(capabilities={"add": ["NET_ADMIN", "CAP_SYS_TIME", "net_raw"], "drop": ["ALL"]}),
    container_sc(procMount="Default", readOnlyRootFilesystem=True, privileged=True),
    container_sc(seccompProfile={"type": "RuntimeDefault"}),
    container_sc(seccompProfile={"type": "Localhost", "localhostProfile": "profiles/a.json"}),
    container_sc(appArmorProfile={"type": "Localhost", "localhostProfile": "k8s-nginx"}),
    container_sc(appArmorProfile={"type": "RuntimeDefault"}),
    container_sc(allowPrivilegeEscalation=True, privileged=True),
    pod_sc(fsGroup=0, fsGroupChangePolicy="OnRootMismatch", seccompProfile={"type": "Unconfined"}),
    pod_sc(fsGroup=2**31 - 1, fsGroupChangePolicy="Always"),
    pod_sc(sysctls=[{"name": "net.ipv4.ip_local_port_range", "value": "1024 65000"},
                    {"name": "kernel/shm_rmid_forced", "value": "1"},
                    {"name": "net.ipv4.conf.eth0/100.rp_filter", "value": "1"}]),
    spec(hostIPC=True, securityContext={"sysctls": [{"name": "net.core.somaxconn", "value": "1"}]}),
    spec(hostNetwork=True, securityContext={"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}),
    spec(securityContext={"windowsOptions": {"runAsUserName": "x"}}),  # no os: ignored
    mount(subPath="a/b..c/d"),
    mount(subPathExpr="$(POD_NAME)/logs"),
    mount(mountPropagation="HostToContainer"),
    mount(mountPropagation="None"),
    volume(emptyDir={"medium": "Memory", "sizeLimit": "64Mi"}),
    volume(emptyDir={"medium": "", "sizeLimit": 1}),
    downward(
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "a/name", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['example.com/tier']"}},
        {"path": "note", "fieldRef": {"fieldPath": "metadata.annotations['Note']"}},
        {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu",
                                             "divisor": "1m"}},
        {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "requests.memory",
                                             "divisor": "1Mi"}, "mode": 0o644},
        {"path": "a..b/..c", "fieldRef": {"fieldPath": "metadata.uid"}, "mode": 0},
        defaultMode=0o777,
    ),
    annotated("runtime/default"),
    annotated("unconfined"),
    annotated("localhost/k8s-nginx", appArmorProfile={"type": "Localhost",
                                                      "localhostProfile": "k8s-nginx"}),
    annotated("runtime/default", appArmorProfile={"type": "RuntimeDefault"}),
]  # fmt: skip


@pytest.mark.parametrize("pod", ACCEPTED)
def test_valid_values_are_accepted(pod: dict[str, Any]) -> None:
    assert errors(pod) == []


def test_a_pod_using_the_new_fields_passes_every_check() -> None:
    """Schema, field table and rules together: nothing of the new API is refused on its own."""
    pod = copy.deepcopy(ACCEPTED[0])
    container = pod["spec"]["containers"][0]
    container["securityContext"].update(
        readOnlyRootFilesystem=True, procMount="Default", allowPrivilegeEscalation=False,
        seccompProfile={"type": "RuntimeDefault"}, appArmorProfile={"type": "RuntimeDefault"},
        runAsUser=1000, runAsGroup=1000, runAsNonRoot=True,
    )  # fmt: skip
    container["volumeMounts"] = [
        {"name": "v", "mountPath": "/m", "subPath": "a", "readOnly": True},
        {"name": "d", "mountPath": "/d", "mountPropagation": "HostToContainer"},
        {"name": "h", "mountPath": "/h", "subPathExpr": "$(X)"},
    ]
    pod["spec"]["volumes"] = [
        {"name": "v", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "d", "downwardAPI": {"items": [{"path": "n", "fieldRef": {
            "fieldPath": "metadata.name"}}], "defaultMode": 0o644}},
        {"name": "h", "hostPath": {"path": "/srv", "type": "DirectoryOrCreate"}},
    ]  # fmt: skip
    pod["spec"]["securityContext"] = {
        "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch", "supplementalGroups": [3],
        "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}],
        "seccompProfile": {"type": "RuntimeDefault"}, "seLinuxOptions": {"level": "s0:c1"},
        "appArmorProfile": {"type": "Unconfined"}, "supplementalGroupsPolicy": "Merge",
    }  # fmt: skip
    assert check_pod(pod, "node1") == []


REFUSED = [
    (
        container_sc(capabilities={"add": ["NET_ADMINN"]}),
        [(f"{SC}.capabilities.add[0]", 'unknown capability "NET_ADMINN": expected a Linux '
          'capability such as "NET_ADMIN" (or "CAP_NET_ADMIN"), or "ALL"')],
    ),
    (
        container_sc(capabilities={"drop": ["CAP_"]}),
        [(f"{SC}.capabilities.drop[0]", 'unknown capability "CAP_": expected a Linux '
          'capability such as "NET_ADMIN" (or "CAP_NET_ADMIN"), or "ALL"')],
    ),
    (
        container_sc(procMount="Masked"),
        [(f"{SC}.procMount",
          'Unsupported value: "Masked": supported values: "Default", "Unmasked"')],
    ),
    (
        container_sc(procMount="Unmasked"),
        [(f"{SC}.procMount", "`hostUsers` must be false to use `Unmasked`")],
    ),
    (
        container_sc(seccompProfile={"type": "Localhost"}),
        [(f"{SC}.seccompProfile.localhostProfile", "must be set when seccomp type is Localhost")],
    ),
    (
        container_sc(seccompProfile={"type": "RuntimeDefault", "localhostProfile": "a"}),
        [(f"{SC}.seccompProfile.localhostProfile",
          "can only be set when seccomp type is Localhost")],
    ),
    (
        pod_sc(seccompProfile={"type": "Localhost", "localhostProfile": "/etc/x.json"}),
        [("spec.securityContext.seccompProfile.localhostProfile", "must be a relative path")],
    ),
    (
        container_sc(seccompProfile={"type": "Localhost", "localhostProfile": "a/../../b"}),
        [(f"{SC}.seccompProfile.localhostProfile", "must not contain '..'")],
    ),
    (
        container_sc(seccompProfile={"type": "Unconfined2"}),
        [(f"{SC}.seccompProfile.type", 'Unsupported value: "Unconfined2": supported values: '
          '"Localhost", "RuntimeDefault", "Unconfined"')],
    ),
    (
        container_sc(seccompProfile={}),
        [(f"{SC}.seccompProfile.type", "type is required when seccompProfile is set")],
    ),
    (
        container_sc(allowPrivilegeEscalation=False, privileged=True),
        [(SC, "cannot set `allowPrivilegeEscalation` to false and `privileged` to true")],
    ),
    (
        container_sc(allowPrivilegeEscalation=False, capabilities={"add": ["CAP_SYS_ADMIN"]}),
        [(SC, "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` "
              "CAP_SYS_ADMIN")],
    ),
    (
        # Stricter than the API server, which compares the literal "CAP_SYS_ADMIN": any
        # spelling that grants the capability contradicts no_new_privs the same way.
        container_sc(allowPrivilegeEscalation=False, capabilities={"add": ["sys_admin"]}),
        [(SC, "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` "
              "CAP_SYS_ADMIN")],
    ),
    (
        container_sc(appArmorProfile={"type": "Localhost"}),
        [(f"{SC}.appArmorProfile.localhostProfile",
          "must be set when AppArmor type is Localhost")],
    ),
    (
        container_sc(appArmorProfile={"type": "Localhost", "localhostProfile": " p"}),
        [(f"{SC}.appArmorProfile.localhostProfile", "must not be padded with whitespace")],
    ),
    (
        container_sc(appArmorProfile={"type": "Localhost", "localhostProfile": "p" * 4096}),
        [(f"{SC}.appArmorProfile.localhostProfile", "Too long: may not be more than 4095 bytes")],
    ),
    (
        pod_sc(appArmorProfile={"type": "Unconfined", "localhostProfile": "p"}),
        [("spec.securityContext.appArmorProfile.localhostProfile",
          "can only be set when AppArmor type is Localhost")],
    ),
    (
        pod_sc(appArmorProfile={"type": "Enforce"}),
        [("spec.securityContext.appArmorProfile.type", 'Unsupported value: "Enforce": '
          'supported values: "Localhost", "RuntimeDefault", "Unconfined"')],
    ),
    (
        container_sc(appArmorProfile={"localhostProfile": "p"}),
        [(f"{SC}.appArmorProfile.type", "type is required when appArmorProfile is set")],
    ),
    (
        annotated("enforce"),
        [(f"metadata.annotations[\"{APPARMOR_KEY}\"]",
          'invalid AppArmor profile name: "enforce"')],
    ),
    (
        annotated("runtime/default", key="container.apparmor.security.beta.kubernetes.io/x"),
        [('metadata.annotations["container.apparmor.security.beta.kubernetes.io/x"]',
          "container not found")],
    ),
    (
        annotated("unconfined", appArmorProfile={"type": "RuntimeDefault"}),
        [(f"{SC}.appArmorProfile.type", "apparmor type in annotation and field must match")],
    ),
    (
        annotated("localhost/a", appArmorProfile={"type": "Localhost", "localhostProfile": "b"}),
        [(f"{SC}.appArmorProfile.localhostProfile",
          "apparmor profile in annotation and field must match")],
    ),
    (
        spec(os={"name": "linux"}, securityContext={"windowsOptions": {"runAsUserName": "x"}}),
        [("spec.securityContext.windowsOptions", "windows options cannot be set for a linux pod")],
    ),
    (
        pod_sc(fsGroup=-1),
        [("spec.securityContext.fsGroup", "must be between 0 and 2147483647")],
    ),
    (
        pod_sc(fsGroupChangePolicy="Sometimes"),
        [("spec.securityContext.fsGroupChangePolicy", 'Unsupported value: "Sometimes": '
          'supported values: "Always", "OnRootMismatch"')],
    ),
    (
        pod_sc(sysctls=[{"name": "net..ipv4", "value": "1"}]),
        [("spec.securityContext.sysctls[0].name", "must have at most 253 characters and match "
          "regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$")],
    ),
    (
        pod_sc(sysctls=[{"name": "", "value": "1"}]),
        [("spec.securityContext.sysctls[0].name", "required")],
    ),
    (
        pod_sc(sysctls=[{"name": "kernel.sem", "value": "1"},
                        {"name": "kernel.sem", "value": "2"}]),
        [("spec.securityContext.sysctls[1].name", 'Duplicate value: "kernel.sem"')],
    ),
    (
        spec(hostNetwork=True,
             securityContext={"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
        [("spec.securityContext.sysctls[0].name",
          "may not be specified when 'hostNetwork' is true")],
    ),
    (
        spec(hostIPC=True, securityContext={"sysctls": [{"name": "fs.mqueue.msg_max",
                                                         "value": "1"}]}),
        [("spec.securityContext.sysctls[0].name", "may not be specified when 'hostIPC' is true")],
    ),
    (
        mount(subPath="/abs"),
        [(f"{M}.subPath", "must be a relative path")],
    ),
    (
        mount(subPath="a/../../etc"),
        [(f"{M}.subPath", "must not contain '..'")],
    ),
    (
        mount(subPath="a", subPathExpr="$(X)"),
        [(f"{M}.subPathExpr", "subPathExpr and subPath are mutually exclusive")],
    ),
    (
        mount(subPathExpr="../$(X)"),
        [(f"{M}.subPathExpr", "must not contain '..'")],
    ),
    (
        mount(mountPropagation="Bidirectional"),
        [(f"{M}.mountPropagation",
          "Bidirectional mount propagation is available only to privileged containers")],
    ),
    (
        mount(mountPropagation="Shared"),
        [(f"{M}.mountPropagation", 'Unsupported value: "Shared": supported values: '
          '"Bidirectional", "HostToContainer", "None"')],
    ),
    (
        volume(emptyDir={"medium": "HugePages-2Mi"}),
        [(f"{V}.emptyDir.medium", "unsupported: medium 'HugePages-2Mi' (nodelet has no "
          "hugepages)")],
    ),
    (
        volume(emptyDir={"medium": "memory"}),
        [(f"{V}.emptyDir.medium", 'Unsupported value: "memory": supported values: "", "Memory"')],
    ),
    (
        volume(emptyDir={"sizeLimit": "-1Mi"}),
        [(f"{V}.emptyDir.sizeLimit", "SizeLimit field must be a valid resource quantity")],
    ),
    (
        volume(emptyDir={"medium": "Memory", "sizeLimit": "0"}),
        [(f"{V}.emptyDir.sizeLimit",
          "must be greater than zero (a limit of 0 would be no limit)")],
    ),
    (
        downward({"path": "/abs", "fieldRef": {"fieldPath": "metadata.name"}}),
        [(f"{V}.downwardAPI.items[0].path", "must be a relative path")],
    ),
    (
        downward({"path": "a/../b", "fieldRef": {"fieldPath": "metadata.name"}}),
        [(f"{V}.downwardAPI.items[0].path", "must not contain '..'")],
    ),
    (
        downward({"path": "..a", "fieldRef": {"fieldPath": "metadata.name"}}),
        [(f"{V}.downwardAPI.items[0].path", "must not start with '..'")],
    ),
    (
        downward({"fieldRef": {"fieldPath": "metadata.name"}}),
        [(f"{V}.downwardAPI.items[0].path", "required")],
    ),
    (
        downward({"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}),
        [(f"{V}.downwardAPI.items[0].fieldRef.fieldPath", 'Unsupported value: "status.podIP": '
          'supported values: "metadata.annotations", "metadata.labels", "metadata.name", '
          '"metadata.namespace", "metadata.uid"')],
    ),
    (
        downward({"path": "n", "fieldRef": {"fieldPath": "metadata.name['x']"}}),
        [(f"{V}.downwardAPI.items[0].fieldRef", "'metadata.name' does not support subscript")],
    ),
    (
        downward({"path": "n", "fieldRef": {"fieldPath": "metadata.labels['-bad-']"}}),
        [(f"{V}.downwardAPI.items[0].fieldRef", "invalid key '-bad-'")],
    ),
    (
        downward({"path": "n", "fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}}),
        [(f"{V}.downwardAPI.items[0].fieldRef.apiVersion", "unsupported pod version: 'v2'")],
    ),
    (
        downward({"path": "n", "fieldRef": {"fieldPath": "metadata.name"},
                  "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}}),
        [(f"{V}.downwardAPI.items[0]",
          "fieldRef and resourceFieldRef can not be specified simultaneously")],
    ),
    (
        downward({"path": "n"}),
        [(f"{V}.downwardAPI.items[0]", "one of fieldRef and resourceFieldRef is required")],
    ),
    (
        downward({"path": "n", "resourceFieldRef": {"resource": "limits.cpu"}}),
        [(f"{V}.downwardAPI.items[0].resourceFieldRef.containerName", "required")],
    ),
    (
        downward({"path": "n", "resourceFieldRef": {"containerName": "x",
                                                     "resource": "limits.cpu"}}),
        [(f"{V}.downwardAPI.items[0].resourceFieldRef.containerName",
          "no container is named 'x'")],
    ),
    (
        downward({"path": "n", "resourceFieldRef": {"containerName": "c",
                                                     "resource": "limits.ephemeral-storage"}}),
        [(f"{V}.downwardAPI.items[0].resourceFieldRef.resource",
          'Unsupported value: "limits.ephemeral-storage": supported values: "limits.cpu", '
          '"limits.memory", "requests.cpu", "requests.memory"')],
    ),
    (
        downward({"path": "n", "resourceFieldRef": {"containerName": "c",
                                                     "resource": "limits.cpu", "divisor": "1Mi"}}),
        [(f"{V}.downwardAPI.items[0].resourceFieldRef.divisor",
          "only divisor's values 1m and 1 are supported with the cpu resource")],
    ),
    (
        downward({"path": "n", "resourceFieldRef": {"containerName": "c",
                                                     "resource": "limits.memory",
                                                     "divisor": "3"}}),
        [(f"{V}.downwardAPI.items[0].resourceFieldRef.divisor",
          "only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are "
          "supported with the memory resource")],
    ),
    (
        downward({"path": "n", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o1000}),
        [(f"{V}.downwardAPI.items[0].mode",
          "must be a number between 0 and 0777 (octal), both inclusive")],
    ),
    (
        downward(defaultMode=-1),
        [(f"{V}.downwardAPI.defaultMode",
          "must be a number between 0 and 0777 (octal), both inclusive")],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("pod", "expected"), REFUSED)
def test_broken_values_are_refused_with_the_api_servers_reason(
    pod: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors(pod) == expected


def test_bidirectional_propagation_is_allowed_to_a_privileged_container() -> None:
    pod = mount(mountPropagation="Bidirectional")
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    assert errors(pod) == []


def test_rules_are_total_on_shapes_the_schema_reports() -> None:
    """Wrong shapes reach the rules after the structural check reported them: no exception."""
    for pod in (
        container_sc(capabilities=["x"], seccompProfile="a", appArmorProfile=3),
        pod_sc(sysctls={"a": 1}, fsGroup="x", seccompProfile=[1]),
        pod_sc(sysctls=[None, 3, {"name": ["x"]}]),
        volume(downwardAPI={"items": [None, {"path": 3, "fieldRef": "x"}]}),
        volume(emptyDir={"sizeLimit": [1], "medium": 3}),
        annotated("x", key="container.apparmor.security.beta.kubernetes.io/"),
        spec(containers=[{"name": ["c"], "image": "host",
                          "volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": 3}]}]),
    ):  # fmt: skip
        errors(pod)
