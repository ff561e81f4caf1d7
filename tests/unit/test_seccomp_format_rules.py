"""The Docker/OCI seccomp profile format at its edges: the exact refusal for each bad field, the
bounds still accepted, and what ``resolve_profile`` hands runc for a given arch and kernel."""

from __future__ import annotations

import os
from typing import Any

import pytest

from nodelet.security.seccomp_format import (
    SeccompError,
    kernel_version,
    native_arch,
    resolve_profile,
    validate,
)

pytestmark = pytest.mark.unit

ALLOW = "SCMP_ACT_ALLOW"
TOP_KNOWN = (
    "archMap, architectures, defaultAction, defaultErrnoRet, flags, listenerMetadata, "
    "listenerPath, syscalls"
)


def profile(**fields: Any) -> dict[str, Any]:
    return {"defaultAction": ALLOW, **fields}


def one_call(**fields: Any) -> dict[str, Any]:
    return profile(syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", **fields}])


def arg(**fields: Any) -> dict[str, Any]:
    return {"index": 0, "value": 1, "op": "SCMP_CMP_EQ", **fields}


def refusal(value: Any) -> str:
    with pytest.raises(SeccompError) as caught:
        validate(value, "p.json")
    return str(caught.value)


def why(value: Any) -> str:
    """The message after the profile's name."""
    message = refusal(value)
    prefix = "seccomp profile p.json: "
    assert message.startswith(prefix)
    return message[len(prefix) :]


# --- validation: exact messages --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], "must be an object, not list"),
        (None, "must be an object, not null"),
        ({"defaultAction": ALLOW, "extra": 1}, f"extra: unknown field (known: {TOP_KNOWN})"),
        ({}, "defaultAction: is required"),
        (
            profile(listenerMetadata="x"),
            "listenerPath: seccomp notify agents are not supported by nodelet",
        ),
        (profile(flags="SECCOMP_FILTER_FLAG_TSYNC"), "flags: must be a list of non-empty strings"),
        (profile(flags=[""]), "flags: must be a list of non-empty strings"),
        (
            profile(architectures="SCMP_ARCH_X86_64"),
            "architectures: must be a list of non-empty strings",
        ),
        (profile(architectures=[5]), "architectures: must be a list of non-empty strings"),
        (
            profile(architectures=["SCMP_ARCH_X86_64"], archMap=[]),
            "archMap: both 'architectures' and 'archMap' are set: use either, not both",
        ),
        (profile(archMap={}), "archMap: must be a list, not dict"),
        (profile(archMap=[5]), "archMap[0]: must be an object, not int"),
        (
            profile(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArch": []}]),
            "archMap[0].subArch: unknown field (known: architecture, subArchitectures)",
        ),
        (
            profile(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": "x"}]),
            "archMap[0].subArchitectures: must be a list of non-empty strings",
        ),
        (profile(syscalls=None), "syscalls: must be a list, not null"),
        (profile(syscalls={}), "syscalls: must be a list, not dict"),
        (
            profile(syscalls=[{"name": "mkdir", "names": ["rmdir"], "action": ALLOW}]),
            "syscalls[0].name: use either 'name' or 'names', not both",
        ),
        (
            profile(syscalls=[{"name": "", "action": ALLOW}]),
            "syscalls[0].name: must be a list of non-empty strings",
        ),
        (profile(syscalls=[{"names": [], "action": ALLOW}]), "syscalls[0].names: lists no syscall"),
        (profile(syscalls=[{"names": ["mkdir"]}]), "syscalls[0].action: is required"),
        (
            one_call(args=[arg()] * 7),
            "syscalls[0].args: must be a list of at most 6 conditions",
        ),
        (
            one_call(args=[arg(value=2**64)]),
            f"syscalls[0].args[0].value: must be an integer from 0 to {2**64 - 1}, not {2**64}",
        ),
        (
            one_call(args=[arg(valueTwo=2**64)]),
            f"syscalls[0].args[0].valueTwo: must be an integer from 0 to {2**64 - 1}, not {2**64}",
        ),
        (
            one_call(args=[arg(valueTwo=-1)]),
            f"syscalls[0].args[0].valueTwo: must be an integer from 0 to {2**64 - 1}, not -1",
        ),
        (
            one_call(includes={"arches": "amd64"}),
            "syscalls[0].includes.arches: must be a list of non-empty strings",
        ),
        (
            one_call(excludes={"arches": [""]}),
            "syscalls[0].excludes.arches: must be a list of non-empty strings",
        ),
        (
            one_call(errnoRet=4096),
            "syscalls[0].errnoRet: must be an integer from 0 to 4095, not 4096",
        ),
        (
            profile(defaultErrnoRet=1),
            "defaultErrnoRet: applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE only, "
            "not SCMP_ACT_ALLOW",
        ),
    ],
)
def test_refusals_name_the_field_and_why(value: Any, expected: str) -> None:
    assert why(value) == expected


def test_an_unknown_value_lists_the_known_ones() -> None:
    assert why(profile(defaultAction="SCMP_ACT_NOTIFY")) == (
        "defaultAction: unknown value 'SCMP_ACT_NOTIFY' (known: SCMP_ACT_KILL, "
        "SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, SCMP_ACT_ERRNO, "
        "SCMP_ACT_TRACE, SCMP_ACT_ALLOW, SCMP_ACT_LOG)"
    )
    bad_arch = why(profile(archMap=[{"architecture": "SCMP_ARCH_VAX"}]))
    assert bad_arch.startswith(
        "archMap[0].architecture: unknown value 'SCMP_ARCH_VAX' (known: SCMP_ARCH_X86, "
    )


def test_the_default_source_name_is_profile() -> None:
    with pytest.raises(SeccompError) as caught:
        resolve_profile({})
    assert str(caught.value) == "seccomp profile profile: defaultAction: is required"


# --- validation: accepted bounds -------------------------------------------------------------


def test_bounds_that_are_accepted() -> None:
    top = 2**64 - 1
    accepted = profile(
        syscalls=[
            {
                "names": ["mkdir"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 4095,
                "args": [arg(index=i, value=top, valueTwo=top) for i in range(6)],
            },
            {"names": ["ptrace"], "action": "SCMP_ACT_TRACE", "errnoRet": 0},
        ]
    )
    out = resolve_profile(accepted, arch="amd64", kernel=(6, 1))
    assert out["syscalls"][0]["errnoRet"] == 4095
    assert [a["value"] for a in out["syscalls"][0]["args"]] == [top] * 6
    assert [a["valueTwo"] for a in out["syscalls"][0]["args"]] == [top] * 6
    assert out["syscalls"][1] == {
        "names": ["ptrace"],
        "action": "SCMP_ACT_TRACE",
        "errnoRet": 0,
        "args": [],
    }


def test_a_profile_with_no_syscalls_is_its_default_action() -> None:
    assert resolve_profile(profile(), arch="amd64") == {
        "defaultAction": ALLOW,
        "architectures": [],
        "syscalls": [],
    }


# --- resolution ------------------------------------------------------------------------------


def test_default_errno_flags_and_architectures_are_handed_on() -> None:
    out = resolve_profile(
        {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        },
        arch="amd64",
    )
    assert out == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [],
    }


def test_a_condition_without_value_two_gets_zero() -> None:
    out = resolve_profile(one_call(args=[arg(index=1, value=7)]), arch="amd64")
    assert out["syscalls"][0]["args"] == [
        {"index": 1, "value": 7, "valueTwo": 0, "op": "SCMP_CMP_EQ"}
    ]


def test_arch_map_picks_the_named_machines_entry() -> None:
    arch_map = [
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
    ]
    amd64 = resolve_profile(profile(archMap=arch_map), arch="amd64")
    assert amd64["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    arm64 = resolve_profile(profile(archMap=arch_map), arch="arm64")
    assert arm64["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    unknown = resolve_profile(profile(archMap=arch_map), arch="sparc64")
    assert unknown["architectures"] == []


@pytest.mark.parametrize(
    ("min_kernel", "kernel", "applies"),
    [
        ("5", (5, 0), True),
        ("5", (4, 19), False),
        ("5.10-rc1", (5, 10), True),
        ("5.10-rc1", (5, 9), False),
        ("6.1-18-amd64", (6, 1), True),
        ("6.1-18-amd64", (6, 0), False),
    ],
)
def test_min_kernel_versions(min_kernel: str, kernel: tuple[int, int], applies: bool) -> None:
    call = one_call(includes={"minKernel": min_kernel})
    out = resolve_profile(call, arch="amd64", kernel=kernel)
    assert bool(out["syscalls"]) is applies


def test_the_running_machine_is_the_default_arch() -> None:
    here, _ = native_arch()
    only_here = one_call(includes={"arches": [here]})
    assert len(resolve_profile(only_here)["syscalls"]) == 1
    not_here = one_call(excludes={"arches": [here]})
    assert resolve_profile(not_here)["syscalls"] == []


def test_native_arch_and_kernel_version_describe_this_machine() -> None:
    uname = os.uname()
    known = {"x86_64": ("amd64", "SCMP_ARCH_X86_64"), "aarch64": ("arm64", "SCMP_ARCH_AARCH64")}
    if uname.machine in known:
        assert native_arch() == known[uname.machine]
    major, minor = (int(part) for part in uname.release.split(".")[:2])
    assert kernel_version() == (major, minor)
    assert kernel_version() >= (3, 0)
