"""The node's admission of a pod (kubelet's admit handlers): each check says why this node
must refuse the pod, with kubelet's reason, or nothing."""

from __future__ import annotations

from collections.abc import Callable

from nodelet.config import AgentConfig
from nodelet.model import StaticPod
from nodelet.pod.network import port_mappings
from nodelet.security import userns
from nodelet.security.lsm import lsm_refusal
from nodelet.security.sysctls import check_sysctls

SYSCTL_FORBIDDEN = "SysctlForbidden"
APPARMOR_REFUSED = "AppArmor"
HOST_PORT_UNAVAILABLE = "HostPortUnavailable"
USERNS_UNSUPPORTED = "UserNamespacesUnsupported"


def _sysctl_refusal(pod: StaticPod, config: AgentConfig) -> tuple[str, str] | None:
    """kubelet's sysctl admission (``pkg/kubelet/sysctl``): reason SysctlForbidden."""
    context = pod.spec.get("securityContext") or {}
    errors = check_sysctls(
        context.get("sysctls"), pod.host_network, pod.host_ipc, config.allowed_unsafe_sysctls
    )
    return (SYSCTL_FORBIDDEN, "; ".join(errors)) if errors else None


def _lsm_refusal(pod: StaticPod, _config: AgentConfig) -> tuple[str, str] | None:
    """kubelet's AppArmor admission, and SELinux options this node cannot apply."""
    message = lsm_refusal(pod.manifest)
    return (APPARMOR_REFUSED if "AppArmor" in message else "SELinux", message) if message else None


def _host_port_refusal(pod: StaticPod, config: AgentConfig) -> tuple[str, str] | None:
    """A hostPort needs a pod network to map it: never dropped silently."""
    if config.network_plugin != "none" or pod.host_network or not port_mappings(pod):
        return None
    return (HOST_PORT_UNAVAILABLE, "hostPort needs a pod network, and this node runs "
            "--network-plugin=none")  # fmt: skip


def _userns_refusal(pod: StaticPod, _config: AgentConfig) -> tuple[str, str] | None:
    """``hostUsers: false`` on a kernel without user namespaces: refused, never run in the
    host's (kubelet fails the sandbox: the runtime does not support user namespaces)."""
    if not userns.wants_user_namespace(pod.spec):
        return None
    message = userns.kernel_refusal()
    return (USERNS_UNSUPPORTED, message) if message else None


AdmissionCheck = Callable[[StaticPod, AgentConfig], "tuple[str, str] | None"]
ADMISSION_CHECKS: tuple[AdmissionCheck, ...] = (
    _sysctl_refusal, _lsm_refusal, _host_port_refusal, _userns_refusal,
)  # fmt: skip
"""Each returns (reason, message) when the node must refuse the pod, else None."""
