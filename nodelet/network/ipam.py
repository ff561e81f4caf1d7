"""Host-local IPAM: one file per allocated address, like CNI's host-local plugin.

``<dir>/<ip>`` holds the owning pod uid. A file appears under its final name only complete
(written and fsync'd under a temporary name, then hard-linked, which fails with EEXIST if the
address is taken), so neither a crash nor a second allocator can ever yield an empty or shared
allocation. An flock on ``<dir>/lock`` makes "look up the uid, else take a free address" one
step across processes, so one uid never gets two addresses either.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
from collections.abc import Collection, Iterator
from pathlib import Path

from nodelet.network.api import NetworkError

_LAST = "last_reserved_ip"
_LOCK = "lock"
_TMP_PREFIX = ".tmp-"


class HostLocalIPAM:
    """Addresses of one CIDR; the first host address is the gateway (the bridge)."""

    def __init__(self, cidr: str, state_dir: str | os.PathLike[str]) -> None:
        self.network = ipaddress.ip_network(cidr, strict=True)
        if self.network.num_addresses < 4:
            raise NetworkError(f"pod CIDR {cidr} is too small: it needs a gateway and a pod")
        self.dir = Path(state_dir)
        self.gateway = self.network.network_address + 1

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def allocate(self, uid: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The pod's address: the one it already holds (re-adoption), else a free one."""
        with self._locked():
            held = self._lookup(uid)
            if held is not None:
                return held
            for ip in self._candidates():
                if self._claim(ip, uid):
                    self._write_last(ip)
                    return ip
        raise NetworkError(f"no free pod IP in {self.network}")

    def lookup(self, uid: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address held by ``uid`` in this CIDR, or None."""
        return self._lookup(uid)

    def release(self, uid: str) -> None:
        """Free every address held by ``uid``; releasing nothing is fine."""
        with self._locked():
            for ip, owner in self.allocations().items():
                if owner == uid:
                    self._unlink(str(ip))

    def sweep(self, keep: Collection[str]) -> list[str]:
        """Release addresses of uids not in ``keep`` (and any out of the CIDR); returns uids."""
        released: list[str] = []
        with self._locked():
            for name, owner in self._entries():
                ip = _parse_ip(name)
                if ip is not None and (owner not in keep or ip not in self.network):
                    self._unlink(name)
                    released.append(owner)
            for entry in self._listdir():
                if entry.startswith(_TMP_PREFIX):
                    self._unlink(entry)
        return released

    def allocations(self) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str]:
        """Every address of this CIDR on disk and its owner."""
        out: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
        for name, owner in self._entries():
            ip = _parse_ip(name)
            if ip is not None and ip in self.network:
                out[ip] = owner
        return out

    def _lookup(self, uid: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        found = [ip for ip, owner in self.allocations().items() if owner == uid]
        return min(found) if found else None

    def _candidates(self) -> Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Usable addresses, starting after the last one handed out (round robin, so a freed
        address is not reused at once while stale ARP/conntrack entries may still point at it)."""
        first = int(self.gateway) + 1
        last = int(self.network.broadcast_address) - 1
        start = first
        previous = self._read_last()
        if previous is not None and first <= int(previous) < last:
            start = int(previous) + 1
        size = last - first + 1
        for i in range(size):
            yield ipaddress.ip_address(first + (start - first + i) % size)

    def _claim(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, uid: str) -> bool:
        target = self.dir / str(ip)
        if target.exists():
            return False
        tmp = self.dir / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, uid.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        self._fsync_dir()
        return True

    def _entries(self) -> Iterator[tuple[str, str]]:
        for name in self._listdir():
            if name in (_LAST, _LOCK) or name.startswith(_TMP_PREFIX):
                continue
            try:
                owner = (self.dir / name).read_text().strip()
            except FileNotFoundError:
                continue
            yield name, owner

    def _listdir(self) -> list[str]:
        try:
            return os.listdir(self.dir)
        except FileNotFoundError:
            return []

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / name).unlink()
        self._fsync_dir()

    def _read_last(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return _parse_ip((self.dir / _LAST).read_text().strip())
        except FileNotFoundError:
            return None

    def _write_last(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        """A hint only: losing it in a crash just restarts the round robin."""
        tmp = self.dir / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        tmp.write_text(str(ip))
        tmp.replace(self.dir / _LAST)

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
