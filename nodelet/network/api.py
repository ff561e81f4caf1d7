"""The seam between the pod worker and a pod network (built-in bridge or CNI).

Plain records and one protocol, so the worker never learns which network it drives and tests
can swap in either implementation.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PortMapping:
    """One ``hostPort`` of a container: ``host_ip:host_port/protocol`` -> pod ``container_port``.

    ``host_ip`` empty means every address of the node (kubelet's default).
    """

    container_port: int
    host_port: int
    protocol: str
    """``TCP`` or ``UDP`` (SCTP is refused by the manifest rules)."""
    host_ip: str = ""


@dataclass(frozen=True)
class PodNetworkRequest:
    """What a network needs to attach one pod: who it is and where its netns lives."""

    pod_uid: str
    namespace: str
    name: str
    netns_path: str
    """``/proc/<holder_pid>/ns/net`` (or any bind mount of the pod's netns)."""
    port_mappings: tuple[PortMapping, ...] = ()


@dataclass(frozen=True)
class PodNetworkResult:
    """The addresses the pod got; the first one is ``status.podIP``."""

    ips: tuple[str, ...]


class NetworkError(Exception):
    """A pod-level network failure worded for the node operator.

    Examples: ``no free pod IP in 10.85.0.0/29``,
    ``hostPort 8080/TCP is already used by pod ns/name``.
    """


class PodNetwork(Protocol):
    """A pod network. Every method is idempotent so it can be re-run after a crash."""

    async def start(self) -> None:
        """Prepare the node once (bridge, forwarding, nft table, routes); safe to repeat."""
        ...

    async def setup(self, req: PodNetworkRequest) -> PodNetworkResult:
        """Attach the pod; calling it again for the same ``pod_uid`` converges, keeps the IP."""
        ...

    async def teardown(self, pod_uid: str, netns_path: str | None) -> None:
        """Detach the pod and release its IP and port mappings; ``netns_path`` may be gone."""
        ...

    async def sweep(self, keep: Collection[str]) -> None:
        """Remove everything left behind by pods whose uid is not in ``keep``."""
        ...

    def ips_of(self, pod_uid: str) -> tuple[str, ...]:
        """The pod's persisted addresses, read without netlink (for status and re-adoption)."""
        ...
