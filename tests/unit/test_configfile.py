"""``--config``: kubeadm's KubeletConfiguration, nodelet's own document, and flags over both."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nodelet.cli.main import build_parser
from nodelet.cli.run import build_config
from nodelet.config import AgentConfig
from nodelet.configfile import (
    KUBELET_FIELDS,
    ConfigFileError,
    go_duration,
    load_files,
    print_config,
)

pytestmark = pytest.mark.unit

KUBEADM = Path(__file__).parent.parent / "data" / "kubeadm-kubelet-config.yaml"
UNIMPLEMENTED_IN_KUBEADM = {
    "cgroupDriver",
    "containerRuntimeEndpoint",
    "cpuManagerReconcilePeriod",
    "evictionPressureTransitionPeriod",
    "logging",
    "memorySwap",
    "rotateCertificates",
    "runtimeRequestTimeout",
    "shutdownGracePeriod",
    "shutdownGracePeriodCriticalPods",
    "streamingConnectionIdleTimeout",
    "syncFrequency",
    "volumeStatsAggPeriod",
}


def kubelet_file(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n" + text
    )
    return path


def config_from(argv: list[str]) -> AgentConfig:
    args = build_parser().parse_args(["run", *argv])
    config, _ = build_config(args, "node-a", "10.0.0.1")
    return config


def test_kubeadm_file_loads_with_kubelet_defaulting_of_zero_values() -> None:
    settings = load_files([KUBEADM])
    assert settings.values == {
        "pod_manifest_path": Path("/etc/kubernetes/manifests"),
        "healthz_port": 10248,
        # kubeadm's authentication/authorization: the kubelet API's client CA and webhooks.
        "anonymous_auth": False,
        "authentication_token_webhook": True,
        "authorization_mode": "Webhook",
        "client_ca_file": Path("/etc/kubernetes/pki/ca.crt"),
        # kubeadm's pod DNS: the cluster's DNS service, domain, and systemd-resolved's file.
        "cluster_dns": ("10.96.0.10",),
        "cluster_domain": "cluster.local",
        "resolv_conf": "/run/systemd/resolve/resolv.conf",
    }
    config = config_from(["--config", str(KUBEADM)])
    # kubeadm writes 0s: kubelet's defaulting turns that into its defaults.
    assert config.file_check_frequency == 20.0
    assert config.http_check_frequency == 20.0
    assert config.node_status_update_frequency == 10.0
    assert config.node_status_report_frequency == 300.0
    assert config.pod_manifest_path == Path("/etc/kubernetes/manifests")


def test_each_unimplemented_kubelet_key_is_warned_once_by_name() -> None:
    warnings = load_files([KUBEADM]).warnings
    named = [w.split(": ")[1] for w in warnings]
    assert sorted(named) == sorted(UNIMPLEMENTED_IN_KUBEADM)
    assert all(w.startswith(f"{KUBEADM}: ") and "not implemented" in w for w in warnings)


def test_the_schema_knows_every_key_kubeadm_writes() -> None:
    document = yaml.safe_load(KUBEADM.read_text())
    assert set(document) - {"apiVersion", "kind"} <= set(KUBELET_FIELDS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "staticPodPth: /etc/kubernetes/manifests\n",
            'staticPodPth: unknown field (did you mean "staticPodPath"?)',
        ),
        (
            "authentication:\n  x509:\n    clientCAFle: /ca.crt\n",
            "authentication.x509.clientCAFle: unknown field",
        ),
        ("fileCheckFrequency: 20x\n", "fileCheckFrequency: invalid duration '20x'"),
        ("fileCheckFrequency: 20\n", "fileCheckFrequency: expected a duration string"),
        ("fileCheckFrequency: -5s\n", "fileCheckFrequency: must not be negative"),
        ("port: -1\n", "port: -1 is not a port"),
        ("healthzPort: 70000\n", "healthzPort: 70000 is not a port"),
        ("healthzPort: '10248'\n", "healthzPort: expected an integer, got a string"),
        ("registerNode: yes please\n", "registerNode: expected true or false, got a string"),
        ("kubeAPIQPS: 0\n", "kubeAPIQPS: 0 is not supported"),
        ("clusterDNS: 10.96.0.10\n", "clusterDNS: expected a list, got a string"),
        ("clusterDNS: [kube-dns]\n", "clusterDNS: 'kube-dns' is not an IP address"),
        ("healthzBindAddress: 0.0.0.0\n", "healthzBindAddress: '0.0.0.0' is not supported"),
        ("staticPodPath: manifests\n", "staticPodPath: 'manifests' must be an absolute path"),
        ("containerLogMaxSize: lots\n", "containerLogMaxSize: 'lots' is not a size"),
        ("containerLogMaxFiles: 1\n", "containerLogMaxFiles: 1 must be greater than 1"),
        (
            "staticPodURL: file:///etc/shadow\n",
            "staticPodURL: 'file:///etc/shadow' is not an http:// or https:// URL",
        ),
        (
            "crashLoopBackOff:\n  maxContainerRestartPeriod: 10m\n",
            "maxContainerRestartPeriod: must be between 1s and 300s",
        ),
    ],
)
def test_misspelt_keys_and_bad_values_fail_naming_the_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = kubelet_file(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        load_files([path])
    assert f"{path}: " in str(caught.value)
    assert expected in str(caught.value)


def test_wrong_api_version_or_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n")
    with pytest.raises(ConfigFileError, match=r"expected kubelet\.config\.k8s\.io/v1beta1"):
        load_files([path])


def test_honoured_keys_reach_the_agent_config(tmp_path: Path) -> None:
    path = kubelet_file(
        tmp_path,
        "staticPodPath: /srv/manifests\n"
        "podLogsDir: /srv/logs\n"
        "fileCheckFrequency: 1m30s\n"
        "httpCheckFrequency: 5s\n"
        "staticPodURL: http://127.0.0.1:8080/pods\n"
        "staticPodURLHeader:\n  X-Token: [a, b]\n"
        "healthzPort: 0\n"
        "port: 10260\n"
        "cgroupRoot: /custom\n"
        "podPidsLimit: 200\n"
        "kubeAPIQPS: 7\n"
        "kubeAPIBurst: 9\n"
        "nodeStatusUpdateFrequency: 4s\n"
        "registerNode: false\n"
        "allowedUnsafeSysctls: [net.core.somaxconn, 'kernel.msg*']\n"
        "seccompDefault: true\n"
        "crashLoopBackOff:\n  maxContainerRestartPeriod: 30s\n"
        "containerLogMaxSize: 5Mi\n"
        "containerLogMaxFiles: 3\n",
    )
    config = config_from(["--config", str(path)])
    assert config.pod_manifest_path == Path("/srv/manifests")
    assert config.pod_logs_dir == Path("/srv/logs")
    assert config.file_check_frequency == 90.0
    assert config.http_check_frequency == 5.0
    assert config.manifest_url == "http://127.0.0.1:8080/pods"
    assert config.manifest_url_headers == (("X-Token", "a"), ("X-Token", "b"))
    assert config.healthz_port == 0  # kubelet: an explicit 0 disables it
    assert config.kubelet_port == 10260
    assert config.cgroup_root == "/custom"
    assert config.pod_pids_limit == 200
    assert (config.kube_api_qps, config.kube_api_burst) == (7.0, 9)
    # kubelet: an unset report frequency follows an explicit update frequency
    assert (config.node_status_update_frequency, config.node_status_report_frequency) == (4, 4)
    assert config.register_node is False
    assert config.allowed_unsafe_sysctls == ("net.core.somaxconn", "kernel.msg*")
    assert config.seccomp_default is True
    assert config.backoff_max == 30.0
    assert (config.container_log_max_size, config.container_log_max_files) == (5 * 2**20, 3)


def test_flags_given_win_and_flags_left_out_do_not(tmp_path: Path) -> None:
    path = kubelet_file(
        tmp_path,
        "fileCheckFrequency: 7s\npodPidsLimit: 100\nregisterNode: false\nport: 10260\n"
        "allowedUnsafeSysctls: [net.core.somaxconn]\n",
    )
    from_file = config_from(["--config", str(path)])
    assert (from_file.file_check_frequency, from_file.pod_pids_limit) == (7.0, 100)
    flagged = config_from(
        [
            "--config", str(path),
            "--file-check-frequency", "3s",
            "--pod-max-pids", "-1",
            "--register-node", "true",
            "--allowed-unsafe-sysctls", "kernel.shm*,net.ipv4.ip_forward",
            "--seccomp-default",
        ]
    )  # fmt: skip
    assert flagged.file_check_frequency == 3.0
    assert flagged.pod_pids_limit is None
    assert flagged.register_node is True
    assert flagged.allowed_unsafe_sysctls == ("kernel.shm*", "net.ipv4.ip_forward")
    assert flagged.seccomp_default is True
    assert flagged.kubelet_port == 10260  # no --port given: the file's


def test_nodelet_document_beside_kubelet_or_in_its_own_file(tmp_path: Path) -> None:
    both = tmp_path / "both.yaml"
    both.write_text(
        KUBEADM.read_text() + "---\napiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n"
        "manifestValidation: Warn\n"
    )
    assert config_from(["--config", str(both)]).manifest_validation == "Warn"
    own = tmp_path / "nodelet.yaml"
    own.write_text(
        "apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\nmanifestValidation: Warn\n"
    )
    config = config_from(["--config", str(KUBEADM), "--config", str(own)])
    assert config.manifest_validation == "Warn"
    flagged = config_from(["--config", str(own), "--manifest-validation", "Strict"])
    assert flagged.manifest_validation == "Strict"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "manifestValidation: Lenient\n",
            "manifestValidation: 'Lenient' is not one of Strict, Warn",
        ),
        (
            "manifestValidaton: Warn\n",
            'manifestValidaton: unknown field (did you mean "manifestValidation"?)',
        ),
    ],
)
def test_bad_nodelet_document_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "nodelet.yaml"
    path.write_text("apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n" + text)
    with pytest.raises(ConfigFileError) as caught:
        load_files([path])
    assert f"{path}: {expected}" in str(caught.value)


def test_a_kind_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="a second KubeletConfiguration"):
        load_files([KUBEADM, KUBEADM])


def test_print_config_reads_back_as_the_same_config(tmp_path: Path) -> None:
    path = kubelet_file(
        tmp_path, "fileCheckFrequency: 1m30s\npodPidsLimit: 50\ncontainerLogMaxSize: 3Mi\n"
    )
    config = config_from(["--config", str(path), "--manifest-validation", "Warn"])
    printed = tmp_path / "printed.yaml"
    printed.write_text(print_config(config))
    again = config_from(["--config", str(printed), "--node-labels", ""])
    assert again == config
    assert load_files([printed]).warnings == []


def test_go_durations() -> None:
    assert go_duration("1m30s") == 90.0
    assert go_duration("1.5h") == 5400.0
    assert go_duration("500ms") == 0.5
    assert go_duration("0") == 0.0
    for bad in ("20x", "20", "", "s", "1m30", "--1s"):
        with pytest.raises(ValueError):
            go_duration(bad)


def test_pod_dns_settings_come_from_the_file_and_flags_win(tmp_path: Path) -> None:
    path = kubelet_file(
        tmp_path, "clusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\nresolvConf: ''\n"
    )
    config = config_from(["--config", str(path)])
    assert config.cluster_dns == ("10.96.0.10",)
    assert config.cluster_domain == "cluster.local"
    assert config.resolv_conf == ""  # kubelet's pointer: "" is no file, not unset
    flags = [
        "--cluster-dns",
        "10.0.0.10,fd00::a",
        "--resolv-conf",
        "/tmp/r",
        "--cluster-domain",
        "k",
    ]
    config = config_from(["--config", str(path), *flags])
    assert (config.cluster_dns, config.resolv_conf, config.cluster_domain) == (
        ("10.0.0.10", "fd00::a"), "/tmp/r", "k",
    )  # fmt: skip
    assert config_from([]).resolv_conf == "/etc/resolv.conf"  # kubelet's default
    with pytest.raises(SystemExit):
        config_from(["--cluster-dns", "kube-dns"])
