"""Which processes hold a file open for writing, from /proc: a manifest a writer still holds
is not settled, whatever its age (a half-written file never becomes a pod)."""

from __future__ import annotations

import asyncio
import os

Writer = tuple[int, str]
"""(pid, command name) of a process holding a file open for writing."""
FdIndex = dict[tuple[int, int], list[tuple[str, str]]]
"""(device, inode) -> every (pid, fd) open on it."""


def fd_index(proc: str = "/proc") -> FdIndex:
    """Every open file descriptor on the node by the inode it refers to (stat follows each
    ``<proc>/<pid>/fd/<fd>`` link). Processes that vanish or cannot be read are skipped: it
    sees what the agent may see (every process, as root). One scan serves a whole relist."""
    index: FdIndex = {}
    try:
        pids = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return index
    for pid in pids:
        try:
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            index.setdefault((st.st_dev, st.st_ino), []).append((pid, fd))
    return index


def writers_in(index: FdIndex, dev: int, ino: int, proc: str = "/proc") -> list[Writer]:
    """The processes of ``index`` holding ``(dev, ino)`` open with write access, by the
    ``flags`` line (octal open flags) of ``<proc>/<pid>/fdinfo/<fd>``."""
    found: dict[int, str] = {}
    for pid, fd in index.get((dev, ino), []):
        if int(pid) not in found and _open_for_writing(proc, pid, fd):
            found[int(pid)] = _comm(proc, pid)
    return sorted(found.items())


def writers_of(path: str, proc: str = "/proc") -> list[Writer]:
    """Every process holding the file at ``path`` open for writing."""
    st = os.stat(path)
    return writers_in(fd_index(proc), st.st_dev, st.st_ino, proc)


def _open_for_writing(proc: str, pid: str, fd: str) -> bool:
    try:
        with open(f"{proc}/{pid}/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("flags:"):
                    return (int(line.split()[1], 8) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _comm(proc: str, pid: str) -> str:
    try:
        with open(f"{proc}/{pid}/comm", errors="replace") as comm:
            name = comm.read().strip()
    except OSError:
        return "?"
    return "".join(c if c.isprintable() else "?" for c in name)


class WriterScan:
    """The fd index of one relist, built on first need (off the loop), so files that need no
    check cost nothing and those that do share one scan of /proc."""

    def __init__(self) -> None:
        self._index: FdIndex | None = None

    async def writers(self, dev: int, ino: int) -> list[Writer]:
        if self._index is None:
            self._index = await asyncio.to_thread(fd_index)
        return await asyncio.to_thread(writers_in, self._index, dev, ino)
