"""nodelet's nftables table: egress masquerade and hostPort DNAT, driven by Debian's ``nft``.

The chains are fixed and rewritten whole by :meth:`NftTable.ensure`; pods only add and remove
map/set elements (the kube-proxy nftables style), so no rule handles are tracked and a pod's
mappings change atomically in one ``nft -f -`` transaction. The kernel refuses a second element
with the same key, so two pods can never hold one hostPort even if the claim files were lost.

Rules, after the CNI portmap plugin:
- ``prerouting``/``output``: traffic to a local address jumps to ``hostports``, which DNATs
  ``hostIP:hostPort`` (map ``hostip_ports``) or ``*:hostPort`` (map ``hostports``) to the pod.
- ``postrouting``: masquerade pod CIDR -> outside every pod CIDR (set ``pod_cidrs``);
  127.0.0.0/8 -> pod (a client of 127.0.0.1:hostPort; also needs ``route_localnet`` on the
  bridge); a pod reaching its own hostPort (set ``hairpin`` of podIP . podIP), so the reply
  comes back through the host.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Iterable

from nodelet.network.api import NetworkError, PortMapping

_NFT = "nft"


class NftTable:
    """One ``inet`` table owned by nodelet (name configurable so tests bring their own)."""

    def __init__(self, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name):
            raise NetworkError(f"nftables table name {name!r}: a letter, then [A-Za-z0-9_-]")
        self.name = name

    def ensure(self, cidr: str, bridge: str, peer_cidrs: Iterable[str] = ()) -> None:
        """Create the table if needed and rewrite its chains; pod elements are kept.

        Traffic to ``peer_cidrs`` (other nodes' pods, reached by host-gw routes) keeps its
        source like traffic inside ``cidr``: the flat network has no NAT between pods.
        """
        t = f"inet {self.name}"
        flat = ", ".join([cidr, *peer_cidrs])
        self._run(
            f"""add table {t}
add set {t} pod_cidrs {{ type ipv4_addr; flags interval; auto-merge; }}
flush set {t} pod_cidrs
add element {t} pod_cidrs {{ {flat} }}
add map {t} hostports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
add map {t} hostip_ports {{ type ipv4_addr . inet_proto . inet_service : \
ipv4_addr . inet_service; }}
add set {t} hairpin {{ type ipv4_addr . ipv4_addr; }}
add chain {t} hostports
add chain {t} prerouting {{ type nat hook prerouting priority -100; }}
add chain {t} output {{ type nat hook output priority -100; }}
add chain {t} postrouting {{ type nat hook postrouting priority 100; }}
flush chain {t} hostports
flush chain {t} prerouting
flush chain {t} output
flush chain {t} postrouting
add rule {t} prerouting fib daddr type local jump hostports
add rule {t} output fib daddr type local jump hostports
add rule {t} hostports meta l4proto {{ tcp, udp }} \
dnat ip to ip daddr . meta l4proto . th dport map @hostip_ports
add rule {t} hostports meta l4proto {{ tcp, udp }} dnat ip to meta l4proto . th dport map @hostports
add rule {t} postrouting ip saddr . ip daddr @hairpin masquerade
add rule {t} postrouting ip saddr 127.0.0.0/8 oifname "{bridge}" masquerade
add rule {t} postrouting ip saddr {cidr} ip daddr != @pod_cidrs masquerade
"""
        )

    def replace_pod(
        self, ip: str, old: Iterable[PortMapping], new: Iterable[PortMapping], label: str
    ) -> None:
        """Swap a pod's elements from ``old`` to ``new`` in one transaction.

        ``old`` may or may not be present (a crash may have come between the claim file and
        this call): each is added before it is deleted, which is a no-op for an identical
        element and makes the delete safe.
        """
        old_lines = self._elements(ip, old)
        new_lines = self._elements(ip, new)
        script = [f"add element {line}" for line in old_lines]
        script += [f"delete element {line}" for line in old_lines]
        script += [f"add element {line}" for line in new_lines]
        if script:
            self._run("\n".join(script) + "\n", label)

    def delete(self) -> None:
        """Remove the whole table (tests; an operator switching the network plugin)."""
        self._run(f"add table inet {self.name}\ndelete table inet {self.name}\n")

    def _elements(self, ip: str, mappings: Iterable[PortMapping]) -> list[str]:
        t = f"inet {self.name}"
        out: list[str] = []
        for m in mappings:
            proto = m.protocol.lower()
            value = f"{ip} . {m.container_port}"
            if m.host_ip:
                out.append(
                    f"{t} hostip_ports {{ {m.host_ip} . {proto} . {m.host_port} : {value} }}"
                )
            else:
                out.append(f"{t} hostports {{ {proto} . {m.host_port} : {value} }}")
        if out:
            out.append(f"{t} hairpin {{ {ip} . {ip} }}")
        return out

    def _run(self, script: str, label: str = "") -> None:
        try:
            done = subprocess.run(
                [_NFT, "-f", "-"], input=script, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as exc:
            raise NetworkError(
                "nft not found: the built-in pod network needs Debian's nftables package"
            ) from exc
        if done.returncode != 0:
            where = f" for {label}" if label else ""
            raise NetworkError(
                f"nftables table inet {self.name}{where}: {done.stderr.strip() or done.returncode}"
            )


def check_mapping(m: PortMapping) -> None:
    """Refuse what the table cannot express, in the operator's terms."""
    if m.protocol.upper() not in ("TCP", "UDP"):
        raise NetworkError(f"hostPort {m.host_port}/{m.protocol}: only TCP and UDP are supported")
    if m.host_ip:
        try:
            addr = ipaddress.ip_address(m.host_ip)
        except ValueError as exc:
            raise NetworkError(f"hostPort {m.host_port}: hostIP {m.host_ip!r} is invalid") from exc
        if addr.version != 4:
            raise NetworkError(
                f"hostPort {m.host_port}: hostIP {m.host_ip} is IPv6; the built-in network is IPv4"
            )
