"""Who a container runs as, decided as kubelet and containerd decide it (pure).

kubelet merges the pod's and the container's securityContext (the container's field wins),
refuses a runAsNonRoot container that would run as root (``verifyRunAsNonRoot``), and hands the
runtime the user, group and supplemental groups (the pod's ``fsGroup`` first, then its
``supplementalGroups``). containerd then resolves what the spec leaves open from the image's
``/etc/passwd`` and ``/etc/group``: for the ``host`` image those are the node's own files, passed
in here as text so this module stays pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class IdentityError(ValueError):
    """kubelet's CreateContainerConfigError for the container's identity."""


@dataclass(frozen=True)
class Identity:
    """The ids the holder switches to; all numeric, nothing left for the holder to look up."""

    run_as_user: int
    run_as_group: int
    supplemental_groups: tuple[int, ...]


def _field(pod_spec: Mapping[str, Any], container: Mapping[str, Any], name: str) -> Any:
    """``DetermineEffectiveSecurityContext``: the container's field, else the pod's."""
    container_sc = container.get("securityContext") or {}
    if container_sc.get(name) is not None:
        return container_sc[name]
    return (pod_spec.get("securityContext") or {}).get(name)


def pod_description(name: str, namespace: str, uid: str) -> str:
    """kubelet's ``format.Pod``: ``name_namespace(uid)``."""
    return f"{name}_{namespace}({uid})"


def verify_run_as_non_root(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    pod: str,
    image_uid: int = 0,
) -> None:
    """kubelet's ``verifyRunAsNonRoot``, with its messages; ``pod`` is ``pod_description``.

    ``image_uid`` is the image's user when runAsUser is unset: the ``host`` image has none, and
    kubelet treats an image without a user as root.
    """
    if not _field(pod_spec, container, "runAsNonRoot"):
        return
    user = _field(pod_spec, container, "runAsUser")
    where = f'(pod: "{pod}", container: {container["name"]})'
    if user is not None:
        if user == 0:
            raise IdentityError(f"container's runAsUser breaks non-root policy {where}")
        return
    if image_uid == 0:
        raise IdentityError(f"container has runAsNonRoot and image will run as root {where}")


def _passwd_entry(passwd: str, uid: int) -> tuple[str, int] | None:
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and int(fields[2]) == uid:
            return fields[0], int(fields[3]) if fields[3].isdigit() else 0
    return None


def _member_groups(group: str, username: str) -> list[int]:
    """Groups listing ``username`` as a member, except one named like the user (containerd's
    ``WithAdditionalGIDs``: "we only want supplemental groups")."""
    gids = []
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[2].isdigit() or fields[0] == username:
            continue
        if username in fields[3].split(","):
            gids.append(int(fields[2]))
    return gids


def resolve(
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    passwd: str = "",
    group: str = "",
) -> Identity:
    """The container's uid, gid and supplemental groups, as the runtime applies them.

    User: runAsUser, else the image's (root for ``host``). Group: runAsGroup, else the user's
    primary group in the image's ``/etc/passwd``, else 0 (containerd's ``WithUserID``).
    Supplemental groups (``SupplementalGroupsPolicy: Merge``, the default): the user's groups
    in the image's ``/etc/group``, then the pod's ``fsGroup`` and ``supplementalGroups``, with
    the primary gid always included; sorted and unique, as containerd merges them.
    """
    pod_sc = pod_spec.get("securityContext") or {}
    user = _field(pod_spec, container, "runAsUser")
    uid = 0 if user is None else int(user)
    entry = _passwd_entry(passwd, uid)
    run_as_group = _field(pod_spec, container, "runAsGroup")
    primary = entry[1] if entry else 0
    gid = primary if run_as_group is None else int(run_as_group)
    groups = {gid}
    if entry is not None:
        groups.update(_member_groups(group, entry[0]))
    if pod_sc.get("fsGroup") is not None:
        groups.add(int(pod_sc["fsGroup"]))
    groups.update(int(g) for g in pod_sc.get("supplementalGroups") or [])
    return Identity(uid, gid, tuple(sorted(groups)))
