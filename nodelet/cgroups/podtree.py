"""A pod's cgroups made in one go, off the event loop: the pod's and, ahead of their first run,
every container's.

Each container run gets a fresh cgroup (its OOM counter must count that run only). Making the
containers' cgroups together with the pod's, in the one thread hop that makes the pod's, takes
two thread hops and the mkdirs off each container's start (a 3-container pod started ~2 ms
sooner with cgroups); a restart still removes and re-creates its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from nodelet.cgroups.driver import CgroupDriver
from nodelet.cgroups.resources import CgroupLimits, container_limits, container_resources

log = logging.getLogger(__name__)


def fresh_container_cgroup(
    driver: CgroupDriver, pod_uid: str, qos: str, name: str, limits: CgroupLimits
) -> list[str]:
    """The container's cgroup, removed first if a previous run left it: the files its
    process writes itself into."""
    driver.remove_container(pod_uid, qos, name)
    return driver.create_container(pod_uid, qos, name, limits)


def create_pod_cgroups(
    driver: CgroupDriver,
    pod_uid: str,
    qos: str,
    limits: CgroupLimits,
    containers: Iterable[Mapping[str, Any]],
) -> dict[str, list[str]]:
    """Create the pod's cgroup, then a fresh one per container; returns each container's
    join files. A container whose cgroup cannot be made here is left out: its start makes it
    and reports the error against that container, as before."""
    driver.create_pod(pod_uid, qos, limits)
    ready: dict[str, list[str]] = {}
    for container in containers:
        name = container["name"]
        try:
            own = container_limits(container_resources(container), None)
            ready[name] = fresh_container_cgroup(driver, pod_uid, qos, name, own)
        except (OSError, ValueError) as err:  # QuantityError is a ValueError
            log.debug("cgroup of container %s made at its start instead: %s", name, err)
    return ready
