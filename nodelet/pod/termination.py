"""A container's termination message: the file it may write, and what the agent reports.

kubelet's rules (``kuberuntime_container.go``): every start gets a fresh empty file (mode 0666
whatever the umask, so any user may write it) under the pod's dir, bound at
``terminationMessagePath``; after the run ended, the last 4096 bytes of that file are the
message (``tail.ReadAtMost``). ``FallbackToLogsOnError`` takes the end of the log instead (80
lines, then the last 2048 bytes) only when the file gave nothing and the run failed, never for
a run that could not even start. A message the runtime already had comes first, joined by
``": "``. The status manager then cuts every message to an even share of 12 KiB per pod.

Files live at ``<pods_state_dir>/<uid>/containers/<name>/<attempt>/termination-log`` (beside an
image container's upper dir, kubelet's ``pods/<uid>/containers/<name>/<id>``), one per run, so
the message of an earlier run stays readable while it is reported; they go with the pod's dir.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from nodelet import reasons
from nodelet.logs.reader import fallback_message
from nodelet.runtime.api import ContainerConfig
from nodelet.util import safepath

FILE_NAME = "termination-log"
DEFAULT_PATH = "/dev/termination-log"
FALLBACK_TO_LOGS = "FallbackToLogsOnError"
MAX_CONTAINER_MESSAGE_BYTES = 4096
"""kubelet's ``MaxContainerTerminationMessageLength``: the file's last bytes, at most these."""
MAX_POD_MESSAGE_BYTES = 12 * 1024
"""kubelet's ``MaxPodTerminationMessageLogLength``: shared evenly by the pod's containers."""
CANNOT_RUN_REASONS = frozenset({reasons.START_ERROR, "ContainerCannotRun"})
"""A run that never started (exec failed) has no logs to fall back to (kubelet's
``ContainerCannotRun``)."""


def message_file(pod_dir: Path, name: str, attempt: int) -> Path:
    """The host file bound at ``terminationMessagePath`` for run ``attempt`` of ``name``."""
    return safepath.child(pod_dir / "containers", name) / str(attempt) / FILE_NAME


def under_dev(target: str) -> bool:
    """Whether a container path lies in ``/dev`` (a privileged container's is the host's)."""
    normal = os.path.normpath("/" + target.lstrip("/"))
    return normal == "/dev" or normal.startswith("/dev/")


def create_file(path: Path, *, fresh: bool = True) -> None:
    """The empty file, mode 0666 whatever the umask (kubelet chmods after the create).
    ``fresh``: emptied if it exists; else an existing file (an adopted run's) is kept."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if fresh else 0)
    fd = os.open(path, flags, 0o666)
    try:
        os.fchmod(fd, 0o666)
    finally:
        os.close(fd)


def ensure_file(config: ContainerConfig, pod_dir: Path) -> None:
    """Right before a start: the message file the prepared ``config`` binds (if it binds one)
    emptied, so a run never reports words an earlier holder's run of the same attempt number
    left (the config build only creates a missing one: it also rebuilds adopted runs)."""
    path = message_file(pod_dir, config.name, config.attempt)
    if any(mount.source == str(path) for mount in config.mounts):
        create_file(path)


def read_file(path: Path) -> str:
    """At most the file's last 4096 bytes, as ``tail.ReadAtMost``; a missing file says
    nothing, and any other error is itself the message, in kubelet's words."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_CONTAINER_MESSAGE_BYTES:
                file.seek(-MAX_CONTAINER_MESSAGE_BYTES, os.SEEK_END)
            data = file.read(MAX_CONTAINER_MESSAGE_BYTES)
    except FileNotFoundError:
        return ""
    except OSError as err:
        # Go's *PathError text: "<op> <path>: <errno text>", lower case.
        op = "read" if isinstance(err, IsADirectoryError) else "open"
        why = (err.strerror or os.strerror(err.errno or errno.EIO)).lower()
        return f"Error on reading termination log {path}: {op} {path}: {why}"
    return data.decode(errors="replace")


def pod_share(container_count: int) -> int:
    """Bytes each container's message may keep in the pod's status (the status manager's)."""
    return (
        MAX_POD_MESSAGE_BYTES // container_count if container_count > 0 else (MAX_POD_MESSAGE_BYTES)
    )


def _cut(message: str, limit: int) -> str:
    data = message.encode()
    return message if len(data) <= limit else data[:limit].decode(errors="replace")


def termination_message(
    *,
    file: Path | None,
    policy: str,
    exit_code: int | None,
    reason: str | None,
    runtime_message: str | None,
    log_path: Path,
    container_count: int,
) -> str:
    """What a finished run reports as ``terminated.message`` (kubelet's
    ``convertToKubeContainerStatus`` then ``normalizeStatus``). ``file``: the run's message
    file, None when the container has no ``terminationMessagePath``."""
    fallback = (
        policy == FALLBACK_TO_LOGS
        and exit_code not in (None, 0)
        and (reason not in CANNOT_RUN_REASONS)
    )
    text, check_logs = "", fallback
    if file is not None:
        text = read_file(file)
        check_logs = fallback and not text
    if check_logs:
        text = fallback_message(log_path)
    message = runtime_message or ""
    if text:
        message = f"{message}: {text}" if message else text
    return _cut(message, pod_share(container_count))
