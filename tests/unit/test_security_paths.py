"""Masked/read-only path lists and mount propagation, as containerd and kubelet decide them."""

import pytest

from nodelet.security import paths

pytestmark = pytest.mark.unit

CONTAINERD_MASKED = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)
CONTAINERD_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def test_default_container_gets_containerds_lists_in_order() -> None:
    assert paths.masked_and_readonly(False, "Default") == (CONTAINERD_MASKED, CONTAINERD_READONLY)


def test_privileged_gets_none() -> None:
    assert paths.masked_and_readonly(True, "Default") == ((), ())


def test_unmasked_proc_mount_gets_none() -> None:
    assert paths.masked_and_readonly(False, "Unmasked") == ((), ())
    assert paths.masked_and_readonly(True, "Unmasked") == ((), ())


@pytest.mark.parametrize(
    ("mount_propagation", "expected"),
    [
        (None, "private"),
        ("None", "private"),
        ("HostToContainer", "rslave"),
        ("Bidirectional", "rshared"),
    ],
)
def test_propagation_of(mount_propagation: str | None, expected: str) -> None:
    assert paths.propagation_of(mount_propagation) == expected


@pytest.mark.parametrize("bad", ["bidirectional", "rshared", "Private", ""])
def test_unknown_propagation_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="unsupported mountPropagation"):
        paths.propagation_of(bad)
