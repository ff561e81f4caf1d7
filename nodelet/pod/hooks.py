"""Lifecycle handlers as the holder and the worker run them: kubelet's defaults, resolved once.

A handler's httpGet host defaults to the pod IP, as kubelet's; a pod of its own network
namespace without an IP yet is reached on its own loopback (the holder that runs a preStop
lives in that namespace). A named port is looked up in the container's ports.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

from nodelet.probe.http import resolve_port

LOOPBACK = "127.0.0.1"


class HookError(ValueError):
    """A handler that cannot run as written (a named port the container does not declare)."""


def handler_spec(
    handler: Mapping[str, Any],
    container: Mapping[str, Any],
    pod_ip: str,
    user: int | None,
    group: int | None,
) -> dict[str, Any]:
    """One lifecycle handler (exec, httpGet or sleep) as the wire's ``HookSpec``."""
    if "exec" in handler:
        return {
            "kind": "exec",
            "argv": [str(a) for a in handler["exec"].get("command") or []],
            "run_as_user": user,
            "run_as_group": group,
        }
    if "httpGet" in handler:
        get = handler["httpGet"]
        return {
            "kind": "http",
            "scheme": str(get.get("scheme") or "HTTP"),
            "host": str(get.get("host") or pod_ip or LOOPBACK),
            "port": _port(get["port"], container),
            "path": str(get.get("path") or "/"),
            "headers": [[h["name"], h["value"]] for h in get.get("httpHeaders") or []],
        }
    if "sleep" in handler:
        return {"kind": "sleep", "seconds": float(handler["sleep"]["seconds"])}
    raise HookError("a handler needs exec, httpGet or sleep")


def _port(port: int | str, container: Mapping[str, Any]) -> int:
    try:
        return resolve_port(port, container)
    except ValueError as err:
        raise HookError(str(err)) from None


def stop_signal(container: Mapping[str, Any]) -> int:
    """``lifecycle.stopSignal`` (``SIGUSR1``...), SIGTERM when unset, as containerd's default."""
    name = (container.get("lifecycle") or {}).get("stopSignal")
    if not name:
        return int(signal.SIGTERM)
    try:
        return int(signal.Signals[str(name)])
    except KeyError:
        raise HookError(f"unknown stopSignal {name!r}") from None
