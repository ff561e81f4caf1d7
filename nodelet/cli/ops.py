"""What the operator commands (``ps``, ``inspect``, ``exec``, ``debug``) share: the agent's
root-only socket (they need the full view: pids, env, seccomp programs) and kubectl's ``-o``."""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from nodelet.cli.client import fetch_unix
from nodelet.config import SOCKET_NAME, AgentConfig

DEFAULT_NAMESPACE = "default"


class OpsError(Exception):
    """A command that cannot be done; the message is for the operator."""


def add_socket_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=AgentConfig.run_dir,
        help=f"the agent's run dir, where its root-only socket {SOCKET_NAME} is "
        "(default: %(default)s)",
    )


def pod_key(text: str) -> str:
    """``NAME`` or ``NAMESPACE/NAME`` -> ``NAMESPACE/NAME``."""
    namespace, slash, name = text.rpartition("/")
    if not name or (slash and not namespace):
        raise OpsError(f"invalid pod name {text!r}: expected NAME or NAMESPACE/NAME")
    return f"{namespace or DEFAULT_NAMESPACE}/{name}"


def agent_get(run_dir: Path, path: str, **query: str) -> Any:
    """GET from the agent's unix socket (root only), with a query string."""
    socket_path = run_dir / SOCKET_NAME
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        return fetch_unix(socket_path, target)
    except PermissionError as err:
        raise OpsError(f"{socket_path}: {err.strerror or err}; run as root") from None
    except (OSError, http.client.HTTPException, ValueError) as err:
        if "HTTP 404" in str(err):
            raise OpsError(_not_found(query)) from None
        raise OpsError(f"cannot reach the agent on {socket_path}: {err}") from None


def _not_found(query: dict[str, str]) -> str:
    pod = query.get("pod", "")
    if "container" in query:
        return f"container {query['container']} not found in pod {pod} (or the pod is unknown)"
    name = pod.rpartition("/")[2]
    return f"pod {pod} not found; static pod names end with the node name ({name}-<node>?)"


def container(run_dir: Path, pod: str, name: str | None) -> dict[str, Any]:
    """One container's latest run (with ``exec`` when ``name`` is given), kubectl's default
    container (the only one, else the first) when it is not."""
    if name is None:
        runs = agent_get(run_dir, "/containers", pod=pod)["items"]
        apps = [r for r in runs if not r["init"]]
        if not apps:
            raise OpsError(f"pod {pod} has no containers")
        name = apps[0]["container"]
    found: dict[str, Any] = agent_get(run_dir, "/containers", pod=pod, container=name)["items"][0]
    return found


def render(value: Any, output: str) -> str:
    """``-o json`` (kubectl's indent) or ``-o yaml``."""
    if output == "yaml":
        text: str = yaml.safe_dump(value, sort_keys=False, default_flow_style=False)
        return text
    return json.dumps(value, indent=4) + "\n"


def table(rows: list[list[str]]) -> str:
    """kubectl's columns: left-aligned, three spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"
