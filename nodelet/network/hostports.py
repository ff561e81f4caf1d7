"""Persisted hostPort claims: ``<dir>/<uid>.json`` per pod, the truth for conflicts.

A claim is written (fsync'd) before the nft elements, so after a crash the agent still knows
which pod owns a port and what to delete.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from nodelet.network.api import NetworkError, PortMapping


@dataclass(frozen=True)
class Claim:
    uid: str
    namespace: str
    name: str
    mappings: tuple[PortMapping, ...]


class HostPortClaims:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)

    def get(self, uid: str) -> Claim | None:
        try:
            raw = json.loads((self.dir / f"{uid}.json").read_text())
        except FileNotFoundError:
            return None
        return Claim(
            uid=uid,
            namespace=raw["namespace"],
            name=raw["name"],
            mappings=tuple(PortMapping(**m) for m in raw["mappings"]),
        )

    def all(self) -> Iterator[Claim]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".json"):
                claim = self.get(name.removesuffix(".json"))
                if claim is not None:
                    yield claim

    def check(self, uid: str, mappings: tuple[PortMapping, ...]) -> None:
        """Refuse a hostPort another pod holds (a wildcard hostIP overlaps every hostIP)."""
        for other in self.all():
            if other.uid == uid:
                continue
            for mine in mappings:
                for theirs in other.mappings:
                    if _overlap(mine, theirs):
                        where = f"{mine.host_ip}:" if mine.host_ip else ""
                        raise NetworkError(
                            f"hostPort {where}{mine.host_port}/{mine.protocol.upper()} is already "
                            f"used by pod {other.namespace}/{other.name}"
                        )

    def put(self, claim: Claim) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "namespace": claim.namespace,
            "name": claim.name,
            "mappings": [asdict(m) for m in claim.mappings],
        }
        tmp = self.dir / f".{claim.uid}.tmp"
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.dir / f"{claim.uid}.json")

    def remove(self, uid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{uid}.json").unlink()


def _overlap(a: PortMapping, b: PortMapping) -> bool:
    if a.host_port != b.host_port or a.protocol.upper() != b.protocol.upper():
        return False
    return not a.host_ip or not b.host_ip or a.host_ip == b.host_ip
