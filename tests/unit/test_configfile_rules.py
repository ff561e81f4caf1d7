"""``--config`` rules at their edges: the exact error for each refused value, the bounds that
are still accepted, and ``--print-config``'s text for the values nodelet holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from nodelet.config import AgentConfig
from nodelet.configfile import (
    MAX_CONFIG_BYTES,
    ConfigFileError,
    effective_documents,
    format_duration,
    go_duration,
    load_files,
    manifest_url_problem,
    print_config,
)

pytestmark = pytest.mark.unit

HEADER = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
NODELET_HEADER = "apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n"


def kubelet_file(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigFileError) as caught:
        load_files([path])
    return str(caught.value)


def values_of(tmp_path: Path, text: str) -> dict[str, object]:
    settings = load_files([kubelet_file(tmp_path, text)])
    return settings.values


# -- Go durations ----------------------------------------------------------------------------


def test_go_duration_signs() -> None:
    assert go_duration("-2s") == -2.0
    assert go_duration("-1m30s") == -90.0
    assert go_duration("+5s") == 5.0
    assert go_duration("+0") == 0.0


def test_empty_duration_names_the_text() -> None:
    with pytest.raises(ValueError, match="invalid duration ''"):
        go_duration("")
    with pytest.raises(ValueError, match="invalid duration '-'"):
        go_duration("-")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (0.25, "250ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (20, "20s"),
        (90, "1m30s"),
        (300, "5m0s"),
        (3600, "1h0m0s"),
        (3661, "1h1m1s"),
        (7200, "2h0m0s"),
    ],
)
def test_format_duration_prints_as_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert go_duration(text) == seconds


# -- structural check: exact messages --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("staticPodPath: 5\n", "staticPodPath: expected a string, got an integer"),
        ("staticPodPath: 1.5\n", "staticPodPath: expected a string, got a number"),
        ("staticPodPath: true\n", "staticPodPath: expected a string, got a boolean"),
        ("staticPodPath: [a]\n", "staticPodPath: expected a string, got a list"),
        ("staticPodPath: {a: b}\n", "staticPodPath: expected a string, got an object"),
        ("staticPodPath: 2024-01-02\n", "staticPodPath: expected a string, got date"),
        ("clusterDNS: [null, 5]\n", "clusterDNS[1]: expected a string, got an integer"),
        (
            "fileCheckFrequency: 20\n",
            'fileCheckFrequency: expected a duration string such as "20s", got an integer',
        ),
        ("fileCheckFrequency: ''\n", "fileCheckFrequency: invalid duration ''"),
        (
            "memoryThrottlingFactor: fast\n",
            "memoryThrottlingFactor: expected a number, got a string",
        ),
        (
            "memoryThrottlingFactor: true\n",
            "memoryThrottlingFactor: expected a number, got a boolean",
        ),
        ("eventBurst: 2147483648\n", "eventBurst: 2147483648 is out of range for int32"),
        ("eventBurst: -2147483649\n", "eventBurst: -2147483649 is out of range for int32"),
        ("authentication: 5\n", "authentication: expected an object, got an integer"),
        (
            "authentication:\n  webhook: [x]\n",
            "authentication.webhook: expected an object, got a list",
        ),
        ("featureGates: [a]\n", "featureGates: expected an object, got a list"),
        ("featureGates:\n  Foo: 1\n", "featureGates[Foo]: expected true or false, got an integer"),
        (
            "staticPodURLHeader:\n  X-A: 5\n",
            "staticPodURLHeader[X-A]: expected a list, got an integer",
        ),
        ("registerWithTaints: [5]\n", "registerWithTaints[0]: expected an object, got an integer"),
        (
            "registerWithTaints:\n- key: a\n- kee: b\n",
            'registerWithTaints[1].kee: unknown field (did you mean "key"?)',
        ),
        ("zzqqxxww: 1\n", "zzqqxxww: unknown field"),
    ],
)
def test_wrong_shapes_give_one_exact_line(tmp_path: Path, text: str, line: str) -> None:
    path = kubelet_file(tmp_path, text)
    assert refusal(path) == f"{path}: {line}"


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_number_that_is_not_finite_is_refused(tmp_path: Path, value: str) -> None:
    path = kubelet_file(tmp_path, f"memoryThrottlingFactor: {value}\n")
    assert refusal(path).startswith(f"{path}: memoryThrottlingFactor: expected a number")


def test_every_problem_is_its_own_line(tmp_path: Path) -> None:
    path = kubelet_file(tmp_path, "staticPodPath: 5\nport: x\nzzqqxxww: 1\n")
    assert refusal(path).split("\n") == [
        f"{path}: staticPodPath: expected a string, got an integer",
        f"{path}: port: expected an integer, got a string",
        f"{path}: zzqqxxww: unknown field",
    ]


def test_bounds_of_the_json_types_are_accepted(tmp_path: Path) -> None:
    settings = load_files(
        [
            kubelet_file(
                tmp_path,
                "eventBurst: 2147483647\neventRecordQPS: -2147483648\n"
                "maxOpenFiles: 9223372036854775807\nmemoryThrottlingFactor: 0.9\n"
                "featureGates:\n  Foo: true\nenforceNodeAllocatable: [null]\n",
            )
        ]
    )
    named = sorted(w.split(": ")[1] for w in settings.warnings)
    assert named == sorted(
        [
            "eventBurst",
            "eventRecordQPS",
            "maxOpenFiles",
            "memoryThrottlingFactor",
            "featureGates",
            "enforceNodeAllocatable",
        ]
    )


# -- honoured keys: bounds and exact refusals ------------------------------------------------


def test_port_bounds(tmp_path: Path) -> None:
    assert "kubelet_port" not in values_of(tmp_path, "port: 0\n")  # kubelet's unset
    assert values_of(tmp_path, "port: 1\n")["kubelet_port"] == 1
    assert values_of(tmp_path, "port: 65535\n")["kubelet_port"] == 65535
    path = kubelet_file(tmp_path, "port: 65536\n")
    assert refusal(path) == f"{path}: port: 65536 is not a port (0-65535)"


def test_healthz_port_bounds(tmp_path: Path) -> None:
    assert values_of(tmp_path, "healthzPort: 65535\n")["healthz_port"] == 65535
    path = kubelet_file(tmp_path, "healthzPort: 65536\n")
    assert refusal(path) == f"{path}: healthzPort: 65536 is not a port (0-65535; 0 disables it)"


def test_healthz_bind_address(tmp_path: Path) -> None:
    for good in ("''", "127.0.0.1", "localhost"):
        settings = load_files([kubelet_file(tmp_path, f"healthzBindAddress: {good}\n")])
        assert settings.values == {}
        assert settings.warnings == []
    path = kubelet_file(tmp_path, "healthzBindAddress: 10.0.0.1\n")
    assert refusal(path) == (
        f"{path}: healthzBindAddress: '10.0.0.1' is not supported: nodelet serves /healthz on "
        "127.0.0.1 only (use 127.0.0.1, localhost, or leave it out)"
    )


def test_manifest_urls() -> None:
    assert manifest_url_problem("https://example.com/pods") is None
    assert manifest_url_problem("HTTPS://example.com/pods") is None
    assert manifest_url_problem("http://h/redirect?to=ftp://other") is None
    assert manifest_url_problem("http://") == "'http://' is not an http:// or https:// URL"
    assert manifest_url_problem("ftp://h/x") == "'ftp://h/x' is not an http:// or https:// URL"


def test_static_pod_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "pod.yaml"
    manifest.write_text("kind: Pod\n")
    path = kubelet_file(tmp_path, f"staticPodPath: {manifest}\n")
    assert refusal(path) == (
        f"{path}: staticPodPath: {manifest} is a file; nodelet reads a directory of manifests"
    )
    assert values_of(tmp_path, f"staticPodPath: {tmp_path}\n") == {"pod_manifest_path": tmp_path}


@pytest.mark.parametrize(("limit", "expected"), [(-1, None), (0, None), (1, 1), (4096, 4096)])
def test_pod_pids_limit(tmp_path: Path, limit: int, expected: int | None) -> None:
    assert values_of(tmp_path, f"podPidsLimit: {limit}\n").get("pod_pids_limit") == expected


def test_qps_and_burst(tmp_path: Path) -> None:
    assert values_of(tmp_path, "kubeAPIQPS: 1\n")["kube_api_qps"] == 1.0
    assert "kube_api_burst" not in values_of(tmp_path, "kubeAPIBurst: 0\n")  # kubelet: 100
    assert values_of(tmp_path, "kubeAPIBurst: 1\n")["kube_api_burst"] == 1
    for key in ("kubeAPIQPS", "kubeAPIBurst"):
        path = kubelet_file(tmp_path, f"{key}: -1\n")
        assert refusal(path) == f"{path}: {key}: must not be negative"


def test_pod_cidr(tmp_path: Path) -> None:
    assert values_of(tmp_path, "podCIDR: 10.244.1.0/24\n")["pod_cidr"] == "10.244.1.0/24"
    assert values_of(tmp_path, "podCIDR: fd00:0::/64\n")["pod_cidr"] == "fd00::/64"
    assert "pod_cidr" not in values_of(tmp_path, "podCIDR: ''\n")
    path = kubelet_file(tmp_path, "podCIDR: 10.244.1.7/24\n")  # host bits set
    assert refusal(path).startswith(f"{path}: podCIDR: not a CIDR: ")
    assert "10.244.1.7/24" in refusal(path)


def test_log_rotation_bounds(tmp_path: Path) -> None:
    assert values_of(tmp_path, "containerLogMaxSize: '1'\n")["container_log_max_size"] == 1
    assert values_of(tmp_path, "containerLogMaxSize: 2Ki\n")["container_log_max_size"] == 2048
    assert "container_log_max_size" not in values_of(tmp_path, "containerLogMaxSize: ''\n")
    path = kubelet_file(tmp_path, "containerLogMaxSize: '0'\n")
    assert refusal(path) == (
        f"{path}: containerLogMaxSize: '0' is not a size (a quantity such as 10Mi)"
    )
    assert values_of(tmp_path, "containerLogMaxFiles: 2\n")["container_log_max_files"] == 2


@pytest.mark.parametrize(("period", "seconds"), [("1s", 1.0), ("1.5s", 1.5), ("5m", 300.0)])
def test_backoff_max_bounds_accepted(tmp_path: Path, period: str, seconds: float) -> None:
    text = f"crashLoopBackOff:\n  maxContainerRestartPeriod: {period}\n"
    assert values_of(tmp_path, text) == {"backoff_max": seconds}


@pytest.mark.parametrize("period", ["999ms", "301s", "-1s"])
def test_backoff_max_out_of_bounds(tmp_path: Path, period: str) -> None:
    path = kubelet_file(tmp_path, f"crashLoopBackOff:\n  maxContainerRestartPeriod: {period}\n")
    assert refusal(path) == (
        f"{path}: crashLoopBackOff.maxContainerRestartPeriod: "
        "must be between 1s and 300s (kubelet's bounds)"
    )


def test_a_null_value_skips_only_that_key(tmp_path: Path) -> None:
    settings = load_files(
        [kubelet_file(tmp_path, "staticPodPath: null\nport: 10260\nsyncFrequency: 1m\n")]
    )
    assert settings.values == {"kubelet_port": 10260}
    assert len(settings.warnings) == 1


# -- files and documents ---------------------------------------------------------------------


def test_sources_name_each_document(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(HEADER + "port: 10260\n---\n" + NODELET_HEADER + "manifestValidation: Warn\n")
    settings = load_files([path])
    assert settings.sources == [f"{path} (KubeletConfiguration)", f"{path} (NodeletConfiguration)"]
    assert settings.values == {"kubelet_port": 10260, "manifest_validation": "Warn"}


def test_a_second_kind_names_both_files(tmp_path: Path) -> None:
    first = tmp_path / "first.yaml"
    first.write_text(NODELET_HEADER)
    second = tmp_path / "second.yaml"
    second.write_text(NODELET_HEADER)
    with pytest.raises(ConfigFileError) as caught:
        load_files([first, second])
    assert str(caught.value) == (
        f"{second}: a second NodeletConfiguration; the first is in {first} (one of each kind)"
    )


def test_wrong_kind_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("apiVersion: v1\nkind: Pod\n")
    assert refusal(path) == (
        f"{path}: apiVersion 'v1', kind 'Pod': expected kubelet.config.k8s.io/v1beta1 "
        "KubeletConfiguration or nodelet.io/v1alpha1 NodeletConfiguration"
    )


def test_unreadable_empty_and_non_object_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert refusal(missing) == f"{missing}: cannot read: No such file or directory"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n---\n")
    assert refusal(empty) == f"{empty}: empty; expected a KubeletConfiguration"
    listed = tmp_path / "listed.yaml"
    listed.write_text(HEADER + "---\n- a\n")
    assert refusal(listed) == f"{listed}: document 2 is not an object"


def test_invalid_yaml_is_one_line_naming_where(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEADER + "port: [1,\n")
    message = refusal(path)
    assert message.startswith(f"{path}: invalid YAML: ")
    assert "\n" not in message
    assert "  " not in message
    assert "line 4" in message


def test_a_file_of_exactly_the_limit_is_read_whole(tmp_path: Path) -> None:
    tail = "staticPodPath: /srv/abc\n"
    pad = MAX_CONFIG_BYTES - len(HEADER) - len(tail) - 2
    path = tmp_path / "big.yaml"
    path.write_text(HEADER + "#" + "x" * pad + "\n" + tail)
    assert path.stat().st_size == MAX_CONFIG_BYTES
    assert load_files([path]).values == {"pod_manifest_path": Path("/srv/abc")}
    with path.open("a") as grow:
        grow.write("\n")
    assert refusal(path) == f"{path}: larger than 10 MiB"


def test_nodelet_document_problems_are_each_a_line(tmp_path: Path) -> None:
    path = tmp_path / "nodelet.yaml"
    path.write_text(NODELET_HEADER + "manifestValidation: 5\nmode: x\n")
    assert refusal(path).split("\n") == [
        f"{path}: manifestValidation: expected a string, got an integer",
        f"{path}: mode: unknown field",
    ]


# -- printing --------------------------------------------------------------------------------


def agent(**changes: object) -> AgentConfig:
    return dataclasses.replace(AgentConfig(node_name="node-a", node_ip="10.0.0.1"), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (2**30, "1Gi"),
        (3 * 2**30, "3Gi"),
        (10 * 2**20, "10Mi"),
        (2**20 + 2**10, "1025Ki"),
        (5 * 2**10, "5Ki"),
        (2**30 + 1, "1073741825"),
        (1000, "1000"),
    ],
)
def test_printed_log_size_is_an_exact_quantity(size: int, text: str) -> None:
    kubelet = effective_documents(agent(container_log_max_size=size))[0]
    assert kubelet["containerLogMaxSize"] == text


def test_printed_values_nodelet_holds() -> None:
    kubelet, nodelet = effective_documents(
        agent(
            manifest_url="http://h/pods",
            manifest_url_headers=(("A", "1"), ("B", "2"), ("A", "3")),
            kube_api_qps=2.5,
            kube_api_burst=7,
        )
    )
    assert kubelet["staticPodURLHeader"] == {"A": ["1", "3"], "B": ["2"]}
    assert kubelet["kubeAPIQPS"] == 2.5
    assert kubelet["podPidsLimit"] == -1
    assert effective_documents(agent(pod_pids_limit=42))[0]["podPidsLimit"] == 42
    assert effective_documents(agent(kube_api_qps=5.0))[0]["kubeAPIQPS"] == 5
    assert nodelet == {
        "apiVersion": "nodelet.io/v1alpha1",
        "kind": "NodeletConfiguration",
        "manifestValidation": "Strict",
        "hostImageRoot": "Overlay",
    }
    assert kubelet["imageGCHighThresholdPercent"] == 85
    assert kubelet["imageGCLowThresholdPercent"] == 80
    assert kubelet["imageMinimumGCAge"] == "2m0s"


def test_print_config_text() -> None:
    text = print_config(
        agent(node_labels=(("a", "1"), ("b", "2")), kubeconfig=Path("/etc/kubelet.conf"))
    )
    lines = text.split("\n")
    assert lines[:9] == [
        "# nodelet's effective configuration: flags, then --config files, then defaults.",
        "# Flag-only settings (kubelet has no config key for them either):",
        "#   --hostname-override=node-a",
        "#   --node-ip=10.0.0.1",
        "#   --root-dir=/var/lib/nodelet",
        "#   --run-dir=/run/nodelet",
        "#   --kubeconfig=/etc/kubelet.conf",
        "#   --node-labels=a=1,b=2",
        "#   --crashloop-backoff-initial=10s",
    ]
    # Key order is kubelet's document order, not sorted; no leading "---".
    assert lines[9:11] == [
        "apiVersion: kubelet.config.k8s.io/v1beta1",
        "kind: KubeletConfiguration",
    ]
    assert lines[11].startswith("staticPodPath: ")
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == ["KubeletConfiguration", "NodeletConfiguration"]


def test_print_config_standalone_has_empty_kubeconfig_and_labels() -> None:
    lines = print_config(agent()).split("\n")
    assert "#   --kubeconfig=" in lines
    assert "#   --node-labels=" in lines
