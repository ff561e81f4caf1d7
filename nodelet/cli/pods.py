"""``nodelet pods``: the running agent's pods, kubectl-style, and every rejected manifest."""

from __future__ import annotations

import argparse
import calendar
import http.client
import json
import sys
import time
import urllib.error
from typing import Any

from nodelet.cli.client import LocalAPIClient


def pod_display_status(pod: dict[str, Any]) -> tuple[str, int, int]:
    """kubectl's STATUS, READY count and RESTARTS for one pod (kubectl printPod)."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase", "Unknown")
    restarts = ready = 0
    init_statuses = status.get("initContainerStatuses") or []
    initializing = False
    for i, cs in enumerate(init_statuses):
        restarts += cs.get("restartCount", 0)
        state = cs.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated is not None and terminated.get("exitCode") == 0:
            continue
        initializing = True
        if terminated is not None:
            reason = "Init:" + (terminated.get("reason") or f"ExitCode:{terminated['exitCode']}")
        elif waiting and waiting.get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{len(init_statuses)}"
        break
    has_running = False
    if not initializing:
        restarts = 0
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += cs.get("restartCount", 0)
            state = cs.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif (state.get("terminated") or {}).get("reason"):
                reason = state["terminated"]["reason"]
            elif cs.get("ready") and "running" in state:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running"
    return reason, ready, restarts


def _age(pod: dict[str, Any]) -> str:
    start = (pod.get("status") or {}).get("startTime")
    if not start:
        return "<none>"
    seconds = max(0, int(time.time() - calendar.timegm(time.strptime(start, "%Y-%m-%dT%H:%M:%SZ"))))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _usage(client: LocalAPIClient) -> dict[str, tuple[str, str]]:
    """Pod UID -> (CPU, memory) as ``kubectl top pod`` prints them, from ``/stats/summary``.
    A CPU rate needs two samples: when the agent has none to compare with, ask again in 1 s."""
    try:
        summary = client.get("/stats/summary")
        if any("usageNanoCores" not in (p.get("cpu") or {"usageNanoCores": 0})
               for p in summary.get("pods") or []):  # fmt: skip
            time.sleep(1.0)
            summary = client.get("/stats/summary")
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError):
        return {}
    found: dict[str, tuple[str, str]] = {}
    for item in summary.get("pods") or []:
        cpu, memory = item.get("cpu") or {}, item.get("memory") or {}
        cores = cpu.get("usageNanoCores")
        working = memory.get("workingSetBytes")
        found[item["podRef"]["uid"]] = (
            f"{cores // 1_000_000}m" if isinstance(cores, int) else "<unknown>",
            f"{working >> 20}Mi" if isinstance(working, int) else "<unknown>",
        )
    return found


def pods(args: argparse.Namespace) -> int:
    client = LocalAPIClient(args.run_dir, args.healthz_port)
    try:
        pods = client.get("/pods")
        rejected = client.get("/rejected")
        warned = _warnings(client)
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError) as err:
        print(f"nodelet pods: cannot reach the agent on {client.where()}: {err}", file=sys.stderr)
        return 1
    if client.redacted:
        print(
            f"nodelet pods: {client.socket_path}: {client.socket_error}; showing the redacted "
            f"view of 127.0.0.1:{args.healthz_port} (env values, annotations and rejection "
            "reasons hidden; run as root for the full view)",
            file=sys.stderr,
        )
    if args.output == "json":
        print(
            json.dumps({"pods": pods, "rejected": rejected["items"], "warnings": warned}, indent=2)
        )
        return 0
    wide = args.output == "wide"
    header = ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "MIRROR"]
    usage: dict[str, tuple[str, str]] = {}
    if wide:
        header += ["IP", "NODE", "UID", "CPU(cores)", "MEMORY(bytes)"]
        usage = _usage(client)
    rows = [header]
    for pod in pods["items"]:
        meta, spec = pod["metadata"], pod["spec"]
        reason, ready, restarts = pod_display_status(pod)
        row = [
            meta["namespace"],
            meta["name"],
            f"{ready}/{len(spec['containers'])}",
            reason,
            str(restarts),
            _age(pod),
            str(pod.get("mirror", "")),  # Synced, Pending, or Disabled (no --kubeconfig)
        ]
        if wide:
            row += [pod["status"].get("podIP", "<none>"), spec.get("nodeName", ""), meta["uid"]]
            row += list(usage.get(meta["uid"], ("<unknown>", "<unknown>")))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for item in rejected["items"]:
        # A file a writer still holds is not rejected, only not read yet.
        pending = item["errors"] and all(": pending: " in error for error in item["errors"])
        label = "PENDING" if pending else "REJECTED"
        pod = f" (pod {item['podName']})" if item["podName"] else ""
        print(f"\n{label} {item['path']}{pod}")
        for error in item["errors"]:
            print(f"  {error}")
    for item in warned:
        # manifestValidation: Warn ran the pod without these fields.
        pod = f" (pod {item['podName']})" if item["podName"] else ""
        print(f"\nWARNING {item['path']}{pod}: runs without the fields below")
        for error in item["errors"]:
            print(f"  {error}")
    return 0


def _warnings(client: LocalAPIClient) -> list[Any]:
    """``/warnings``' items. They add to the listing and must not stop it: none from an older
    agent (no such route), a note on stderr when they cannot be read."""
    try:
        items: list[Any] = client.get("/warnings")["items"]
    except (OSError, http.client.HTTPException, ValueError, LookupError) as err:
        if "HTTP 404" not in str(err) and getattr(err, "code", None) != 404:
            print(f"nodelet pods: cannot read manifest warnings: {err!r}", file=sys.stderr)
        return []
    return items
