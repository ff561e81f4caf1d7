"""The e2e fixture runs a real API server that holds a node to kubelet's rules.

With nothing but a node's client certificate and the official `kubernetes` client, the node
registers itself, creates a mirror pod exactly as NodeRestriction demands and reports its status,
which kubectl then shows as a user would see it. The refusals are checked one by one, with the
message of the plugin that refuses (NodeRestriction, the ServiceAccount admission plugin before
it, or the Node authorizer): they are the rules the agent's mirror pods must follow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client import CoreV1Api, V1Node, V1Pod
from kubernetes.client.exceptions import ApiException

from tests.e2e.apiserver import ApiServer, api_client

pytestmark = pytest.mark.e2e

NODE = "nlt-fixture-node"
OTHER_NODE = "nlt-fixture-other"
MIRROR = "kubernetes.io/config.mirror"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
"""The generated client defaults a PATCH to JSON-patch; a dict body needs this content type."""

Pod = dict[str, Any]


def register_node(api: CoreV1Api, name: str) -> str:
    """Creates the Node with the node's own credentials, as kubelet does; returns its UID."""
    node = V1Node.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        }
    )
    assert node is not None
    created = api.create_node(node)
    assert created.metadata is not None and created.metadata.uid is not None
    return created.metadata.uid


def create_pod(api: CoreV1Api, pod: Pod) -> None:
    model = V1Pod.from_dict(pod)
    assert model is not None
    api.create_namespaced_pod("default", model)


def forbidden(call: Callable[[], object]) -> str:
    """Runs `call`, which the API server must refuse with 403; returns its message."""
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 403, refused.value.body
    message: str = json.loads(refused.value.body or "{}")["message"]
    return message


@pytest.fixture(scope="module")
def node_api(apiserver: ApiServer) -> CoreV1Api:
    return CoreV1Api(api_client(apiserver.node_kubeconfig(NODE)))


@pytest.fixture(scope="module")
def node_uid(node_api: CoreV1Api) -> str:
    return register_node(node_api, NODE)


@pytest.fixture(scope="module")
def default_service_account(apiserver: ApiServer) -> None:
    """What the controller manager (not run here) would make in every namespace."""
    apiserver.kubectl("create", "serviceaccount", "default", "--namespace", "default")


def mirror_pod(name: str, node_uid: str, node: str = NODE) -> Pod:
    """A mirror pod as kubelet makes it: mirror annotation, bound to the node, owned by it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{name}-{node}",
            "namespace": "default",
            "annotations": {
                MIRROR: "0123456789abcdef",
                "kubernetes.io/config.hash": "0123456789abcdef",
                "kubernetes.io/config.source": "file",
                "kubernetes.io/config.seen": "2026-01-01T00:00:00.000000000Z",
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": node,
                    "uid": node_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "host", "command": ["sleep", "inf"]}],
        },
    }


def running_status(name: str) -> Pod:
    """A status patch for one ready, running container, as the agent would send it."""
    ready = [
        {"type": kind, "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"}
        for kind in ("Initialized", "ContainersReady", "Ready", "PodScheduled")
    ]
    return {
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "10.88.0.5",
            "podIPs": [{"ip": "10.88.0.5"}],
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": ready,
            "containerStatuses": [
                {
                    "name": "main",
                    "image": "host",
                    "imageID": "",
                    "containerID": f"nodelet://{name}/main",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}},
                }
            ],
        }
    }


def test_node_creates_its_mirror_pod_and_kubectl_sees_its_status(
    apiserver: ApiServer, node_api: CoreV1Api, node_uid: str
) -> None:
    pod = mirror_pod("web", node_uid)
    name = pod["metadata"]["name"]
    create_pod(node_api, pod)
    node_api.patch_namespaced_pod_status(
        name, "default", running_status(name), _content_type=STRATEGIC_MERGE
    )

    listing = apiserver.kubectl("get", "pods", "-o", "wide", "--no-headers").stdout
    row = next(line.split() for line in listing.splitlines() if line.split()[0] == name)
    # NAME READY STATUS RESTARTS AGE IP NODE NOMINATED-NODE READINESS-GATES
    assert row[1:4] == ["1/1", "Running", "0"]
    assert row[5:7] == ["10.88.0.5", NODE]

    stored = apiserver.kubectl("get", "pod", name, "-o", "jsonpath={.metadata.ownerReferences}")
    assert f'"uid":"{node_uid}"' in stored.stdout.replace(" ", "")
    assert apiserver.kubectl("get", "node", NODE, "--no-headers").stdout.startswith(NODE)


def _drop_annotation(pod: Pod) -> None:
    del pod["metadata"]["annotations"][MIRROR]
    # Not a mirror pod, so the ServiceAccount plugin (before NodeRestriction) gives it the
    # `default` service account and wants its token: no controller manager makes one here.
    pod["spec"]["automountServiceAccountToken"] = False


def _other_node(pod: Pod) -> None:
    pod["spec"]["nodeName"] = OTHER_NODE


def _no_owner(pod: Pod) -> None:
    del pod["metadata"]["ownerReferences"]


def _two_owners(pod: Pod) -> None:
    owners = pod["metadata"]["ownerReferences"]
    owners.append({**owners[0], "controller": False})


def _owner_other_node(pod: Pod) -> None:
    pod["metadata"]["ownerReferences"][0]["name"] = OTHER_NODE


def _owner_not_controller(pod: Pod) -> None:
    pod["metadata"]["ownerReferences"][0]["controller"] = False


def _owner_blocks_deletion(pod: Pod) -> None:
    pod["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = True


def _owner_wrong_uid(pod: Pod) -> None:
    pod["metadata"]["ownerReferences"][0]["uid"] = "00000000-0000-0000-0000-000000000000"


def _service_account(pod: Pod) -> None:
    pod["spec"]["serviceAccountName"] = "default"


def _secret_volume(pod: Pod) -> None:
    pod["spec"]["volumes"] = [{"name": "s", "secret": {"secretName": "s"}}]


def _config_map_env(pod: Pod) -> None:
    pod["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "c"}}]


REFUSED: list[tuple[Callable[[Pod], None], str]] = [
    (_drop_annotation, 'pod does not have "kubernetes.io/config.mirror" annotation'),
    (_other_node, "can only create pods with spec.nodeName set to itself"),
    (_no_owner, "can only create pods with an owner reference set to itself"),
    (_two_owners, "can only create pods with a single owner reference set to itself"),
    (_owner_other_node, "can only create pods with an owner reference set to itself"),
    (_owner_not_controller, "can only create pods with a controller owner reference"),
    (_owner_blocks_deletion, "must not set blockOwnerDeletion on an owner reference"),
    (_owner_wrong_uid, "UID mismatch"),
    # The ServiceAccount admission plugin refuses these before NodeRestriction would.
    (_service_account, "a mirror pod may not reference service accounts"),
    (_secret_volume, "a mirror pod may not reference secrets"),
    (_config_map_env, "can not create pods that reference configmaps"),
]


@pytest.mark.parametrize(
    ("change", "reason"), REFUSED, ids=[change.__name__.lstrip("_") for change, _ in REFUSED]
)
@pytest.mark.usefixtures("default_service_account")
def test_node_restriction_refuses_pods_that_are_not_its_own_mirror_pods(
    node_api: CoreV1Api, node_uid: str, change: Callable[[Pod], None], reason: str
) -> None:
    pod = mirror_pod("refused", node_uid)
    change(pod)
    assert reason in forbidden(lambda: create_pod(node_api, pod))


def test_node_may_delete_its_mirror_pod_but_not_update_it(
    apiserver: ApiServer, node_api: CoreV1Api, node_uid: str
) -> None:
    """So an edited static pod's mirror is replaced (delete + create), never updated: the Node
    authorizer gives a node no update or patch of pods at all, only of their status."""
    pod = mirror_pod("replaced", node_uid)
    name = pod["metadata"]["name"]
    create_pod(node_api, pod)

    labels = {"metadata": {"labels": {"a": "b"}}}
    refusal = forbidden(
        lambda: node_api.patch_namespaced_pod(
            name, "default", labels, _content_type=STRATEGIC_MERGE
        )
    )
    assert 'cannot patch resource "pods"' in refusal

    node_api.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    gone = apiserver.kubectl("get", "pod", name, "--ignore-not-found", "-o", "name").stdout
    assert gone == ""


def test_node_may_not_touch_pods_or_node_of_another_node(
    apiserver: ApiServer, node_api: CoreV1Api
) -> None:
    other = CoreV1Api(api_client(apiserver.node_kubeconfig(OTHER_NODE)))
    pod = mirror_pod("theirs", register_node(other, OTHER_NODE), OTHER_NODE)
    name = pod["metadata"]["name"]
    create_pod(other, pod)

    status = running_status(name)
    refusal = forbidden(
        lambda: node_api.patch_namespaced_pod_status(
            name, "default", status, _content_type=STRATEGIC_MERGE
        )
    )
    assert "can only update pod status for pods with spec.nodeName set to itself" in refusal
    refusal = forbidden(lambda: node_api.delete_namespaced_pod(name, "default"))
    assert "can only delete pods with spec.nodeName set to itself" in refusal
    labels = {"metadata": {"labels": {"a": "b"}}}
    refusal = forbidden(
        lambda: node_api.patch_node(OTHER_NODE, labels, _content_type=STRATEGIC_MERGE)
    )
    assert f'node "{NODE}" is not allowed to modify node "{OTHER_NODE}"' in refusal
