"""An image's config applied to a container the Kubernetes way (pure).

kubelet and containerd's CRI together: ``command`` replaces the Entrypoint and drops the Cmd,
``args`` replaces the Cmd; the environment is PATH (containerd's default), HOSTNAME, the image's
Env, then the pod's, each overriding the one before; the image's WorkingDir unless the pod sets
``workingDir``; the image's User (``name``, ``uid``, ``name:group``, ``uid:gid``), resolved in the
image's own ``/etc/passwd`` and ``/etc/group``, unless runAsUser / runAsGroup are set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""containerd's ``defaultUnixEnv``: what an image without PATH gets."""


class ImageConfigError(ValueError):
    """The image and the container spec together do not make a process."""


def process_args(
    command: Sequence[str], args: Sequence[str], entrypoint: Sequence[str], cmd: Sequence[str]
) -> list[str]:
    """argv from the (already expanded) pod ``command``/``args`` and the image's
    Entrypoint/Cmd; ImageConfigError with containerd's text when nothing is left to run."""
    if command:
        argv = [*command, *args]
    elif args:
        argv = [*entrypoint, *args]
    else:
        argv = [*entrypoint, *cmd]
    if not argv:
        raise ImageConfigError(
            "no command specified: the container has no command and its image has neither "
            "Entrypoint nor Cmd"
        )
    return argv


def merge_env(
    hostname: str, image_env: Sequence[str], pod_env: Mapping[str, str]
) -> dict[str, str]:
    """containerd's order: default PATH, HOSTNAME, the image's ``KEY=VALUE`` entries, then the
    pod's; a later one replaces an earlier one of the same name. An image entry without ``=``
    is dropped (containerd's ``replaceOrAppendEnvValues`` reads it as "unset")."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for entry in image_env:
        name, sep, value = entry.partition("=")
        if not sep:
            env.pop(name, None)
        elif name:
            env[name] = value
    env.update(pod_env)
    return env


@dataclass(frozen=True)
class ImageUser:
    """The image's user, numeric: ``gid`` only when the User string named a group."""

    uid: int
    gid: int | None


def _lookup(table: str, name: str, field: int) -> int | None:
    """The numeric ``field`` of the entry called ``name`` in a passwd/group file."""
    for line in table.splitlines():
        fields = line.split(":")
        if len(fields) > field and fields[0] == name and fields[field].isdigit():
            return int(fields[field])
    return None


def resolve_user(user: str, passwd: str, group: str) -> ImageUser:
    """The image's ``User`` as ids (containerd's ``WithUser``): numbers are taken as they are,
    names looked up in the image's own passwd / group text; an empty User is root."""
    name, _, group_name = user.partition(":")
    if not name:
        if group_name:
            raise ImageConfigError(f"image user {user!r}: a group without a user")
        return ImageUser(0, None)
    if name.isdigit():
        uid = int(name)
    else:
        found = _lookup(passwd, name, 2)
        if found is None:
            raise ImageConfigError(
                f"unable to find user {name}: no matching entries in the image's /etc/passwd"
            )
        uid = found
    if not group_name:
        return ImageUser(uid, None)
    if group_name.isdigit():
        return ImageUser(uid, int(group_name))
    gid = _lookup(group, group_name, 2)
    if gid is None:
        raise ImageConfigError(
            f"unable to find group {group_name}: no matching entries in the image's /etc/group"
        )
    return ImageUser(uid, gid)


def user_is_numeric(user: str) -> bool:
    """kubelet's runAsNonRoot check can only trust a numeric image user."""
    name = user.partition(":")[0]
    return not name or name.isdigit()
