"""The node's identity: its name and the address it reports for pods."""

from __future__ import annotations

import ipaddress
import logging
import socket

import psutil

log = logging.getLogger(__name__)


def node_name(override: str | None) -> str:
    """kubelet lowercases the host name (or its override) to form the Node name."""
    return (override or socket.gethostname()).strip().lower()


def _default_route_source() -> str | None:
    """The preferred source address of the IPv4 default route, read from the kernel."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            src = route.get_attr("RTA_PREFSRC")
            if src:
                return str(src)
            oif = route.get_attr("RTA_OIF")
            for addr in ipr.get_addr(family=socket.AF_INET, index=oif):
                return str(addr.get_attr("IFA_ADDRESS"))
    return None


def node_ip(override: str | None) -> str:
    """``--node-ip``, else the default route's source, else the first global IPv4 address."""
    if override:
        ipaddress.ip_address(override)
        return override
    try:
        found = _default_route_source()
    except OSError as err:
        log.warning("reading the default route failed: %s", err)
        found = None
    if found:
        return found
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not ipaddress.ip_address(addr.address).is_loopback:
                return str(addr.address)
    return "127.0.0.1"
