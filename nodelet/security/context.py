"""One container's securityContext, resolved into the fields of its ``ContainerConfig`` (pure).

The single call the container preparation makes: kubelet's checks and merges
(``verifyRunAsNonRoot``, effective security context, no_new_privs) and containerd's decisions
(capability sets, uid/gid/groups from the image's passwd and group files).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from nodelet.model import StaticPod
from nodelet.runtime.api import CapabilitySets
from nodelet.security.capabilities import container_capabilities
from nodelet.security.identity import pod_description, resolve, verify_run_as_non_root


@dataclass(frozen=True)
class ContainerSecurity:
    """The ``ContainerConfig`` fields a securityContext decides."""

    capabilities: CapabilitySets | None
    """None for a privileged container: it keeps the holder's (the node root's) capabilities."""
    privileged: bool
    no_new_privileges: bool
    read_only_root: bool
    run_as_user: int
    run_as_group: int
    supplemental_groups: tuple[int, ...]


def container_security(
    pod: StaticPod,
    container: Mapping[str, Any],
    *,
    node_caps: Collection[int],
    passwd: str = "",
    group: str = "",
) -> ContainerSecurity:
    """Raises ``IdentityError`` (runAsNonRoot, with kubelet's message) or ``CapabilityError``
    (an unknown capability name). ``node_caps``: the agent's own effective capabilities (what
    containerd grants for ``add: [ALL]``); ``passwd``/``group``: the image's files, the node's
    ``/etc/passwd`` and ``/etc/group`` for the ``host`` image."""
    sc: Mapping[str, Any] = container.get("securityContext") or {}
    privileged = sc.get("privileged") is True
    verify_run_as_non_root(pod.spec, container, pod_description(pod.name, pod.namespace, pod.uid))
    identity = resolve(pod.spec, container, passwd=passwd, group=group)
    return ContainerSecurity(
        capabilities=container_capabilities(sc, privileged, node_caps=node_caps),
        privileged=privileged,
        # kubelet's AddNoNewPrivileges: only an explicit allowPrivilegeEscalation: false.
        no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
        read_only_root=sc.get("readOnlyRootFilesystem") is True,
        run_as_user=identity.run_as_user,
        run_as_group=identity.run_as_group,
        supplemental_groups=identity.supplemental_groups,
    )
