"""Lifecycle handlers resolved for the holder: kubelet's defaults for host and port."""

from __future__ import annotations

import signal

import pytest

from nodelet.pod.hooks import HookError, handler_spec, stop_signal

pytestmark = pytest.mark.unit

CONTAINER = {"name": "app", "ports": [{"name": "admin", "containerPort": 9000}]}


def test_handler_ports_resolve_by_number_numeric_string_and_name() -> None:
    def port(value: int | str) -> int:
        return int(handler_spec({"httpGet": {"port": value}}, CONTAINER, "", None, None)["port"])

    assert (port(80), port("8080"), port("admin")) == (80, 8080, 9000)
    with pytest.raises(HookError, match="port web not found"):
        port("web")


def test_http_handler_defaults_to_the_pod_ip_then_its_loopback() -> None:
    get = {"httpGet": {"port": "admin", "httpHeaders": [{"name": "X-A", "value": "1"}]}}
    spec = handler_spec(get, CONTAINER, "10.0.0.7", None, None)
    assert spec == {"kind": "http", "scheme": "HTTP", "host": "10.0.0.7", "port": 9000,
                    "path": "/", "headers": [["X-A", "1"]]}  # fmt: skip
    assert handler_spec(get, CONTAINER, "", None, None)["host"] == "127.0.0.1"
    explicit = {"httpGet": {"host": "192.0.2.1", "port": 1, "path": "/x", "scheme": "HTTPS"}}
    spec = handler_spec(explicit, CONTAINER, "10.0.0.7", None, None)
    assert (spec["host"], spec["path"], spec["scheme"]) == ("192.0.2.1", "/x", "HTTPS")


def test_exec_handler_runs_as_the_container_user_and_sleep_keeps_its_seconds() -> None:
    exec_ = handler_spec({"exec": {"command": ["a", 1]}}, CONTAINER, "", 1000, 2000)
    assert exec_ == {"kind": "exec", "argv": ["a", "1"], "run_as_user": 1000, "run_as_group": 2000}
    assert handler_spec({"sleep": {"seconds": 3}}, CONTAINER, "", None, None) == {
        "kind": "sleep", "seconds": 3.0,
    }  # fmt: skip
    with pytest.raises(HookError):
        handler_spec({}, CONTAINER, "", None, None)


def test_stop_signal_defaults_to_sigterm() -> None:
    assert stop_signal({}) == signal.SIGTERM
    assert stop_signal({"lifecycle": {"stopSignal": "SIGUSR1"}}) == signal.SIGUSR1
    with pytest.raises(HookError):
        stop_signal({"lifecycle": {"stopSignal": "SIGNOPE"}})
