"""seccompProfile: kubelet's choice of profile, Localhost path rules, profile parsing errors, and
containerd's capability-, arch- and kernel-dependent RuntimeDefault rules."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nodelet.security import seccomp
from nodelet.security.seccomp import SeccompError
from nodelet.security.seccomp_default import ALLOWED

pytestmark = pytest.mark.unit

DEFAULT_CAPS = {
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
}
"""containerd's default capabilities for a container."""
DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
}


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [call for call in profile["syscalls"] if name in call["names"]]


def unconditional(profile: dict[str, Any], name: str) -> bool:
    return any(
        call["action"] == "SCMP_ACT_ALLOW" and not call["args"] for call in rules_for(profile, name)
    )


@pytest.fixture
def seccomp_dir(tmp_path: Path) -> Path:
    root = tmp_path / "seccomp"
    (root / "profiles").mkdir(parents=True)
    (root / "profiles" / "deny-mkdir.json").write_text(json.dumps(DENY_MKDIR))
    return root


# --- kubelet's choice -------------------------------------------------------------------------


def test_neither_field_set_is_unconfined_unless_seccomp_default(seccomp_dir: Path) -> None:
    assert seccomp.filter_for(None, DEFAULT_CAPS, False, seccomp_dir) is None
    program = seccomp.filter_for(None, DEFAULT_CAPS, False, seccomp_dir, seccomp_default=True)
    assert program == seccomp.compile_profile(seccomp.RUNTIME_DEFAULT, DEFAULT_CAPS)


def test_explicit_unconfined_wins_over_seccomp_default(seccomp_dir: Path) -> None:
    profile = {"type": "Unconfined"}
    assert seccomp.filter_for(profile, set(), False, seccomp_dir, seccomp_default=True) is None


def test_container_field_wins_over_pod_field(seccomp_dir: Path) -> None:
    local = {"type": "Localhost", "localhostProfile": "profiles/deny-mkdir.json"}
    runtime = {"type": "RuntimeDefault"}
    from_container = seccomp.filter_for(local, set(), False, seccomp_dir, pod_profile=runtime)
    assert from_container == seccomp.compile_profile(DENY_MKDIR)
    unconfined = seccomp.filter_for(
        {"type": "Unconfined"}, set(), False, seccomp_dir, pod_profile=runtime
    )
    assert unconfined is None


def test_pod_field_applies_when_the_container_sets_none(seccomp_dir: Path) -> None:
    program = seccomp.filter_for(
        None, DEFAULT_CAPS, False, seccomp_dir, pod_profile={"type": "RuntimeDefault"}
    )
    assert program == seccomp.compile_profile(seccomp.RUNTIME_DEFAULT, DEFAULT_CAPS)


def test_privileged_runs_unconfined_whatever_the_profile(seccomp_dir: Path) -> None:
    missing = {"type": "Localhost", "localhostProfile": "missing.json"}
    assert seccomp.filter_for(missing, set(), True, seccomp_dir) is None
    runtime = {"type": "RuntimeDefault"}
    assert seccomp.filter_for(runtime, set(), True, seccomp_dir, seccomp_default=True) is None


def test_the_capabilities_change_the_runtime_default_program(seccomp_dir: Path) -> None:
    runtime = {"type": "RuntimeDefault"}
    plain = seccomp.filter_for(runtime, DEFAULT_CAPS, False, seccomp_dir)
    admin = seccomp.filter_for(runtime, {*DEFAULT_CAPS, "SYS_ADMIN"}, False, seccomp_dir)
    assert plain is not None
    assert admin is not None
    assert plain != admin


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"type": "Bogus"}, "seccompProfile.type: unsupported value 'Bogus'"),
        ({"type": "Localhost"}, "localhostProfile must be set"),
        ({"type": "Localhost", "localhostProfile": ""}, "localhostProfile must be set"),
        (
            {"type": "RuntimeDefault", "localhostProfile": "x.json"},
            "can only be set when seccomp type is Localhost",
        ),
    ],
)
def test_bad_profile_fields_are_refused(
    seccomp_dir: Path, profile: dict[str, Any], message: str
) -> None:
    with pytest.raises(SeccompError, match=message):
        seccomp.filter_for(profile, set(), False, seccomp_dir)


# --- Localhost paths ----------------------------------------------------------------------------


def test_a_relative_path_under_the_dir_loads(seccomp_dir: Path) -> None:
    assert seccomp.load_localhost(seccomp_dir, "profiles/deny-mkdir.json") == DENY_MKDIR


def test_a_symlink_inside_the_dir_is_followed(seccomp_dir: Path) -> None:
    (seccomp_dir / "link.json").symlink_to("profiles/deny-mkdir.json")
    assert seccomp.load_localhost(seccomp_dir, "link.json") == DENY_MKDIR


def test_an_absolute_path_is_refused(seccomp_dir: Path) -> None:
    target = seccomp_dir / "profiles" / "deny-mkdir.json"
    with pytest.raises(SeccompError, match="must be a path relative to"):
        seccomp.load_localhost(seccomp_dir, str(target))


@pytest.mark.parametrize("relative", ["../x.json", "profiles/../../x.json", "a/../b.json"])
def test_dot_dot_is_refused(seccomp_dir: Path, relative: str) -> None:
    (seccomp_dir.parent / "x.json").write_text(json.dumps(DENY_MKDIR))
    with pytest.raises(SeccompError, match=r"must not contain '\.\.'"):
        seccomp.load_localhost(seccomp_dir, relative)


def test_a_symlink_out_of_the_dir_is_refused(seccomp_dir: Path) -> None:
    outside = seccomp_dir.parent / "outside.json"
    outside.write_text(json.dumps(DENY_MKDIR))
    (seccomp_dir / "escape.json").symlink_to(outside)
    (seccomp_dir / "escape-dir").symlink_to(seccomp_dir.parent)
    with pytest.raises(SeccompError, match="outside"):
        seccomp.load_localhost(seccomp_dir, "escape.json")
    with pytest.raises(SeccompError, match="outside"):
        seccomp.load_localhost(seccomp_dir, "escape-dir/outside.json")


def test_a_missing_file_fails_instead_of_running_unconfined(seccomp_dir: Path) -> None:
    with pytest.raises(SeccompError, match=r"cannot load seccomp profile .*nope\.json"):
        seccomp.filter_for(
            {"type": "Localhost", "localhostProfile": "nope.json"}, set(), False, seccomp_dir
        )


def test_a_directory_is_not_a_profile(seccomp_dir: Path) -> None:
    with pytest.raises(SeccompError, match="not a regular file"):
        seccomp.load_localhost(seccomp_dir, "profiles")


def test_invalid_json_names_the_file_and_the_position(seccomp_dir: Path) -> None:
    (seccomp_dir / "broken.json").write_text('{"defaultAction": ')
    with pytest.raises(
        SeccompError, match=r"decoding seccomp profile failed .*broken\.json.*line 1"
    ):
        seccomp.load_localhost(seccomp_dir, "broken.json")


def test_a_json_array_is_not_a_profile(seccomp_dir: Path) -> None:
    (seccomp_dir / "list.json").write_text("[]")
    with pytest.raises(SeccompError, match="must be a JSON object, not list"):
        seccomp.load_localhost(seccomp_dir, "list.json")


def test_a_field_error_in_a_file_names_the_file(seccomp_dir: Path) -> None:
    (seccomp_dir / "bad.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_NOPE"}))
    with pytest.raises(SeccompError) as caught:
        seccomp.filter_for(
            {"type": "Localhost", "localhostProfile": "bad.json"}, set(), False, seccomp_dir
        )
    assert str(seccomp_dir / "bad.json") in str(caught.value)
    assert "defaultAction: unknown value 'SCMP_ACT_NOPE'" in str(caught.value)


# --- parsing errors -----------------------------------------------------------------------------


def call(**fields: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], **fields}]}


@pytest.mark.parametrize(
    ("profile", "field", "why"),
    [
        ({}, "defaultAction", "is required"),
        ({"defaultAction": "SCMP_ACT_BOGUS"}, "defaultAction", "unknown value"),
        (
            {"defaultAction": "SCMP_ACT_NOTIFY"},
            "defaultAction",
            "unknown value 'SCMP_ACT_NOTIFY'",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1},
            "defaultErrnoRet",
            "applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE only",
        ),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1},
            "defaultErrnoRet",
            "must be an integer from 0 to 4095",
        ),
        ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoret": 1}, "defaultErrnoret", "unknown"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"},
            "listenerPath",
            "notify agents are not supported",
        ),
        ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["NOPE"]}, "flags[0]", "unknown value"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]},
            "flags[0]",
            "not supported by nodelet yet",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]},
            "architectures[0]",
            "unknown value",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [], "archMap": []},
            "archMap",
            "use either",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["x"]}],
            },
            "archMap[0].subArchitectures[0]",
            "unknown value",
        ),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}, "syscalls", "must be a list"),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["mkdir"]}, "syscalls[0]", "object"),
        (call(), "syscalls[0].action", "is required"),
        (call(action="SCMP_ACT_DENY"), "syscalls[0].action", "unknown value 'SCMP_ACT_DENY'"),
        (
            call(action="SCMP_ACT_ALLOW", errnoRet=1),
            "syscalls[0].errnoRet",
            "applies to SCMP_ACT_ERRNO and SCMP_ACT_TRACE only",
        ),
        (call(action="SCMP_ACT_ERRNO", errnoRet="1"), "syscalls[0].errnoRet", "integer"),
        (call(action="SCMP_ACT_ERRNO", name="rmdir"), "syscalls[0].name", "either 'name'"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]},
            "syscalls[0].names",
            "list of non-empty strings",
        ),
        (call(action="SCMP_ACT_ERRNO", names=[]), "syscalls[0].names", "lists no syscall"),
        (call(action="SCMP_ACT_ERRNO", args={}), "syscalls[0].args", "at most 6"),
        (
            call(action="SCMP_ACT_ERRNO", args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]),
            "syscalls[0].args[0].index",
            "from 0 to 5",
        ),
        (
            call(action="SCMP_ACT_ERRNO", args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]),
            "syscalls[0].args[0].value",
            "integer",
        ),
        (
            call(action="SCMP_ACT_ERRNO", args=[{"index": 0, "value": 1, "op": "EQ"}]),
            "syscalls[0].args[0].op",
            "unknown value 'EQ'",
        ),
        (
            call(
                action="SCMP_ACT_ERRNO",
                args=[{"index": 0, "value": 1, "op": "SCMP_CMP_EQ", "x": 1}],
            ),
            "syscalls[0].args[0].x",
            "unknown field",
        ),
        (
            call(action="SCMP_ACT_ERRNO", includes={"caps": "CAP_SYS_ADMIN"}),
            "syscalls[0].includes.caps",
            "list of non-empty strings",
        ),
        (
            call(action="SCMP_ACT_ERRNO", includes={"minKernel": "four"}),
            "syscalls[0].includes.minKernel",
            'must be like "4.8"',
        ),
        (
            call(action="SCMP_ACT_ERRNO", excludes={"minKernel": "4.8"}),
            "syscalls[0].excludes.minKernel",
            "unknown field",
        ),
    ],
)
def test_profile_errors_name_the_field_and_the_reason(
    profile: dict[str, Any], field: str, why: str
) -> None:
    with pytest.raises(SeccompError) as caught:
        seccomp.compile_profile(profile, source="/var/lib/nodelet/seccomp/p.json")
    message = str(caught.value)
    assert message.startswith("seccomp profile /var/lib/nodelet/seccomp/p.json: ")
    assert f": {field}: " in message
    assert why in message


def test_docker_name_and_conditions_resolve_to_the_oci_form() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 30, "comment": "ro"},
            {"names": ["reboot"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["SYS_BOOT"]}},
            {"names": ["iopl"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["arm64"]}},
        ],
    }
    resolved = seccomp.resolve_profile(profile, {"CAP_SYS_BOOT"}, arch="amd64")
    assert resolved["syscalls"] == [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 30, "args": []}
    ]
    assert resolved["architectures"] == []


# --- RuntimeDefault: containerd's rules ---------------------------------------------------------


def test_the_allow_list_is_containerds_without_duplicates() -> None:
    assert len(ALLOWED) == len(set(ALLOWED)) == 363
    for name in ("read", "execve", "rseq", "cachestat", "writev"):
        assert name in ALLOWED
    for name in ("unshare", "mount", "setns", "keyctl", "add_key", "bpf", "ptrace", "reboot"):
        assert name not in ALLOWED


def test_default_action_is_eperm() -> None:
    profile = seccomp.runtime_default(DEFAULT_CAPS)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "defaultErrnoRet" not in profile


def test_without_sys_admin_namespaces_are_refused() -> None:
    profile = seccomp.runtime_default(DEFAULT_CAPS)
    for name in ("unshare", "setns", "mount", "umount2", "bpf", "sethostname"):
        assert rules_for(profile, name) == [], name
    [clone] = rules_for(profile, "clone")
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    [clone3] = rules_for(profile, "clone3")
    assert clone3["action"] == "SCMP_ACT_ERRNO"
    assert clone3["errnoRet"] == 38


def test_with_sys_admin_namespaces_and_clone3_are_allowed() -> None:
    profile = seccomp.runtime_default({*DEFAULT_CAPS, "CAP_SYS_ADMIN"})
    for name in ("unshare", "setns", "mount", "clone", "clone3", "fsopen", "syslog"):
        assert unconditional(profile, name), name
    assert all(not call["args"] for call in rules_for(profile, "clone"))
    assert all(call["action"] == "SCMP_ACT_ALLOW" for call in rules_for(profile, "clone3"))


CAPABILITY_RULES = {
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}


@pytest.mark.parametrize(("cap", "names"), sorted(CAPABILITY_RULES.items()))
def test_a_capability_adds_its_syscalls(cap: str, names: list[str]) -> None:
    without = seccomp.runtime_default(DEFAULT_CAPS)
    granted = seccomp.runtime_default({*DEFAULT_CAPS, cap})
    short = seccomp.runtime_default({*DEFAULT_CAPS, cap.removeprefix("CAP_").lower()})
    for name in names:
        assert not unconditional(without, name), (cap, name)
        assert unconditional(granted, name), (cap, name)
        assert unconditional(short, name), (cap, name)


def test_sys_chroot_adds_chroot() -> None:
    assert unconditional(seccomp.runtime_default({"CAP_SYS_CHROOT"}), "chroot")
    assert not unconditional(seccomp.runtime_default(set()), "chroot")


def test_socket_refuses_af_alg_and_af_vsock_only() -> None:
    rules = rules_for(seccomp.runtime_default(DEFAULT_CAPS), "socket")
    conditions = sorted((r["args"][0]["op"], r["args"][0]["value"]) for r in rules)
    assert conditions == [("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40), ("SCMP_CMP_LT", 38)]


def test_personality_allows_containerds_five_personas() -> None:
    rules = rules_for(seccomp.runtime_default(DEFAULT_CAPS), "personality")
    values = sorted(r["args"][0]["value"] for r in rules)
    assert values == [0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF]


def test_amd64_adds_x86_and_x32_and_its_own_calls() -> None:
    profile = seccomp.resolve_profile(seccomp.RUNTIME_DEFAULT, set(), arch="amd64")
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert unconditional(profile, "arch_prctl")
    assert not unconditional(profile, "arm_fadvise64_64")


def test_arm64_and_s390x_get_their_own_rules() -> None:
    arm = seccomp.resolve_profile(seccomp.RUNTIME_DEFAULT, set(), arch="arm64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert unconditional(arm, "cacheflush")
    assert not unconditional(arm, "arch_prctl")
    s390 = seccomp.resolve_profile(seccomp.RUNTIME_DEFAULT, set(), arch="s390x")
    [clone] = rules_for(s390, "clone")
    assert clone["args"][0]["index"] == 1


def test_ptrace_needs_kernel_4_8_or_the_capability() -> None:
    old = seccomp.resolve_profile(seccomp.RUNTIME_DEFAULT, set(), kernel=(4, 4))
    new = seccomp.resolve_profile(seccomp.RUNTIME_DEFAULT, set(), kernel=(4, 8))
    traced = seccomp.resolve_profile(seccomp.RUNTIME_DEFAULT, {"SYS_PTRACE"}, kernel=(4, 4))
    assert not unconditional(old, "ptrace")
    assert unconditional(new, "ptrace")
    assert unconditional(traced, "ptrace")


# --- compilation ----------------------------------------------------------------------------------


def test_compiled_programs_are_whole_instructions_and_cached() -> None:
    first = seccomp.compile_profile(seccomp.RUNTIME_DEFAULT, DEFAULT_CAPS)
    again = seccomp.compile_profile(seccomp.RUNTIME_DEFAULT, set(DEFAULT_CAPS))
    assert len(first) % 8 == 0
    assert 0 < len(first) // 8 <= 4096
    assert again is first


def test_errno_ret_changes_the_program() -> None:
    eperm = seccomp.compile_profile(DENY_MKDIR)
    erofs = seccomp.compile_profile(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 30}],
        }
    )
    assert eperm != erofs


def test_unknown_syscall_names_are_skipped_as_runc_does() -> None:
    known = seccomp.compile_profile(DENY_MKDIR)
    with_unknown = seccomp.compile_profile(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir", "mkdirat", "nlt_no_such_call"], "action": "SCMP_ACT_ERRNO"}
            ],
        }
    )
    assert with_unknown == known


def test_an_edited_localhost_file_compiles_anew(seccomp_dir: Path) -> None:
    local = {"type": "Localhost", "localhostProfile": "edited.json"}
    path = seccomp_dir / "edited.json"
    path.write_text(json.dumps(DENY_MKDIR))
    before = seccomp.filter_for(local, set(), False, seccomp_dir)
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}))
    os.utime(path)
    after = seccomp.filter_for(local, set(), False, seccomp_dir)
    assert before != after
