"""Pod user namespaces (``hostUsers: false``): which host ids a pod gets, kept on disk.

kubelet's ``userns_manager.go``: every pod without host users gets 65536 ids, a block aligned
to 65536 inside the node's range (``--user-namespaces-range``, kubelet's default starts at
65536: ids 0..65535 stay the host's), and container ids 0..65535 map to host
``[first, first + 65536)`` for uids and gids alike. The choice is written (atomically, fsync'd,
with the directory) to ``<pods-state-dir>/<uid>/userns`` before the pod's holder is created,
so a restarted or crashed agent finds every block in use and a re-adopted pod keeps its own.
The files are the only record: allocation reads them all under a lock, so no block is given
twice, and removing the pod's directory (or ``release``) frees its block.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nodelet.runtime.api import UserNamespace
from nodelet.util import safepath

IDS_PER_POD = 65536
"""kubelet's ``userNsUnitLength``, and its default ``idsPerPod``."""
DEFAULT_FIRST_ID = 65536
DEFAULT_MAX_PODS = 110
DEFAULT_RANGE = (DEFAULT_FIRST_ID, IDS_PER_POD * DEFAULT_MAX_PODS)
"""kubelet's default without a ``kubelet`` entry in /etc/subuid: 65536 ids per pod for
``maxPods`` (110) pods, from 65536 on."""
MAPPINGS_FILE = "userns"
"""kubelet's file name in the pod directory."""
MAX_ID = 2**32 - 1

_lock = threading.Lock()
"""Allocations run in worker threads; one at a time, so two pods never read the same gap."""


class UsernsError(Exception):
    """A user namespace cannot be given to the pod; the message says why."""


def parse_range(text: str) -> tuple[int, int]:
    """``FIRST:COUNT`` (the order of /etc/subuid), checked as kubelet checks its mappings."""
    first_text, sep, count_text = text.partition(":")
    if not sep or not first_text.isdigit() or not count_text.isdigit():
        raise ValueError(f"{text!r} is not FIRST:COUNT (two non-negative integers)")
    first, count = int(first_text), int(count_text)
    check_range(first, count)
    return first, count


def check_range(first: int, count: int) -> None:
    """kubelet's ``MakeUserNsManager`` checks (0 must never be mappable)."""
    if first % IDS_PER_POD:
        raise ValueError(f"user namespaces range start {first} is not a multiple of {IDS_PER_POD}")
    if first < IDS_PER_POD:
        raise ValueError(f"user namespaces range start {first} must be >= {IDS_PER_POD}")
    if count < IDS_PER_POD or count % IDS_PER_POD:
        raise ValueError(
            f"user namespaces range length {count} is not a positive multiple of {IDS_PER_POD}"
        )
    if first + count - 1 > MAX_ID:
        raise ValueError(f"user namespaces range {first}:{count} goes past id {MAX_ID}")


def wants_user_namespace(spec: Mapping[str, Any]) -> bool:
    """``hostUsers: false``; unset and true keep the host's user namespace."""
    return spec.get("hostUsers") is False


def kernel_refusal() -> str | None:
    """Why this kernel cannot give a pod a user namespace, or None when it can."""
    if not os.path.exists("/proc/self/ns/user"):
        return "can't set `spec.hostUsers: false`: the kernel has no user namespaces"
    try:
        with open("/proc/sys/user/max_user_namespaces", encoding="ascii") as limit:
            if int(limit.read()) == 0:
                return (
                    "can't set `spec.hostUsers: false`: user namespaces are disabled on this "
                    "node (user.max_user_namespaces is 0)"
                )
    except (OSError, ValueError):
        pass  # no such sysctl on this kernel: nothing limits them
    return None


def _file(pods_state_dir: Path, pod_uid: str) -> Path:
    return safepath.child(pods_state_dir, pod_uid) / MAPPINGS_FILE


def _parse(content: str) -> UserNamespace:
    """kubelet's ``parseUserNsFileAndRecord`` rules: one mapping, the same for uids and gids,
    container id 0 mapped."""
    data = json.loads(content)
    uids, gids = data.get("uidMappings"), data.get("gidMappings")
    if not isinstance(uids, list) or len(uids) != 1:
        raise ValueError("no more than one mapping allowed")
    if uids != gids:
        raise ValueError("GID and UID mappings should be identical")
    mapping = uids[0]
    if mapping.get("containerId") != 0:
        raise ValueError("UID 0 must be mapped")
    host_id, length = mapping.get("hostId"), mapping.get("length")
    if not isinstance(host_id, int) or not isinstance(length, int):
        raise ValueError("hostId and length must be integers")
    return UserNamespace(host_id, length)


def read(pods_state_dir: Path, pod_uid: str) -> UserNamespace | None:
    """The pod's recorded mapping, None when it has none. Raises UsernsError when damaged."""
    path = _file(pods_state_dir, pod_uid)
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UsernsError(f"cannot read {path}: {err.strerror}") from None
    try:
        return _parse(content)
    except (ValueError, AttributeError) as err:
        raise UsernsError(f"invalid user namespace mappings file {path}: {err}") from None


def allocations(pods_state_dir: Path) -> dict[str, UserNamespace]:
    """Every pod's recorded mapping (pod uid -> mapping). A damaged file is an error: its block
    cannot be known to be free."""
    found: dict[str, UserNamespace] = {}
    try:
        entries = sorted(os.listdir(pods_state_dir))
    except FileNotFoundError:
        return found
    for uid in entries:
        if (pods_state_dir / uid).is_dir() and not (pods_state_dir / uid).is_symlink():
            mapping = read(pods_state_dir, uid)
            if mapping is not None:
                found[uid] = mapping
    return found


def get_or_create(pods_state_dir: Path, ids_range: tuple[int, int], pod_uid: str) -> UserNamespace:
    """kubelet's ``GetOrCreateUserNamespaceMappings``: the pod's recorded block, else the
    lowest free one of ``ids_range``, recorded durably before it is returned."""
    first, count = ids_range
    with _lock:
        used = allocations(pods_state_dir)
        if pod_uid in used:
            return used[pod_uid]
        taken = {m.host_id for m in used.values()}
        for host_id in range(first, first + count, IDS_PER_POD):
            if host_id not in taken:
                mapping = UserNamespace(host_id, IDS_PER_POD)
                _write(_file(pods_state_dir, pod_uid), mapping)
                return mapping
    raise UsernsError(
        f"could not find an empty slot to allocate a user namespace: all {count // IDS_PER_POD} "
        f"blocks of --user-namespaces-range={first}:{count} are in use"
    )


def release(pods_state_dir: Path, pod_uid: str) -> None:
    """kubelet's ``Release``: the pod's block is free again (removing its directory does the
    same)."""
    with _lock:
        path = _file(pods_state_dir, pod_uid)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)


def _write(path: Path, mapping: UserNamespace) -> None:
    entry = {"containerId": 0, "hostId": mapping.host_id, "length": mapping.length}
    body = json.dumps({"uidMappings": [entry], "gidMappings": [entry]}).encode()
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    temporary = path.with_name(f".{MAPPINGS_FILE}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
