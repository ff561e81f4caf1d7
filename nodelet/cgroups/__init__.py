"""Pod and container cgroups, as kubelet's container manager (``pkg/kubelet/cm``) makes them.

``quantity`` and ``resources`` are pure: a pod spec becomes a QoS class and cgroup limits.
``driver`` holds the interface both cgroup versions implement and ``detect``, which picks one.
"""

from nodelet.cgroups.driver import (
    CgroupDriver,
    CgroupError,
    CgroupNameError,
    CgroupStats,
    detect,
)
from nodelet.cgroups.quantity import QuantityError, bytes_of, milli_cpu, parse_quantity
from nodelet.cgroups.resources import (
    CgroupLimits,
    ContainerResources,
    container_limits,
    container_resources,
    cpu_quota,
    cpu_shares,
    cpu_weight,
    pod_limits,
    qos_class,
)

__all__ = [
    "CgroupDriver",
    "CgroupError",
    "CgroupLimits",
    "CgroupNameError",
    "CgroupStats",
    "ContainerResources",
    "QuantityError",
    "bytes_of",
    "container_limits",
    "container_resources",
    "cpu_quota",
    "cpu_shares",
    "cpu_weight",
    "detect",
    "milli_cpu",
    "parse_quantity",
    "pod_limits",
    "qos_class",
]
