"""``nodelet logs``: a container's output, like ``kubectl logs``, read from the node's log files.

It reads the files directly, so it works while the agent is down, across the container's
rotated files (gzipped ones included), oldest first. The CLI may pass the UID the
agent reports for the pod; otherwise the newest log dir of that pod name is read.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import BinaryIO

from nodelet.config import AgentConfig
from nodelet.configfile import go_duration
from nodelet.logs.reader import (
    LogMessage,
    LogsError,
    PodRef,
    container_dir,
    find_pod_dir,
    follow_messages,
    pick_log,
    read_run,
    rfc3339_nano,
    timestamp_ns,
)

EXIT_INTERRUPTED = 130


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pod",
        help="NAME or NAMESPACE/NAME as 'nodelet pods' shows it (static pod names end with the "
        "node name); namespace default when omitted",
    )
    parser.add_argument(
        "-c", "--container", help="container name; required when the pod has several"
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new output, on through container restarts",
    )
    parser.add_argument(
        "-p",
        "--previous",
        action="store_true",
        help="the log of the container's previous start (ignores --follow)",
    )
    parser.add_argument(
        "--tail",
        type=int,
        default=-1,
        metavar="N",
        help="only the last N lines, across the container's rotated files (default: -1, all)",
    )
    since = parser.add_mutually_exclusive_group()
    since.add_argument(
        "--since",
        type=duration,
        metavar="DURATION",
        help="only lines newer than a relative duration like 5s, 2m or 3h",
    )
    since.add_argument(
        "--since-time",
        type=rfc3339,
        metavar="RFC3339",
        help="only lines at or after this time (2024-05-01T10:00:00Z)",
    )
    parser.add_argument(
        "--timestamps",
        action="store_true",
        help="start each line with its RFC3339Nano timestamp, as kubectl does",
    )
    parser.add_argument(
        "--pod-logs-dir",
        type=Path,
        default=AgentConfig.pod_logs_dir,
        help="where the agent writes container logs (default: %(default)s)",
    )
    parser.add_argument(
        "--uid",
        help="read this pod UID's logs (default: the agent's current pod, else the newest)",
    )


def duration(text: str) -> float:
    """kubectl's ``--since``: a Go duration (``5s``, ``2m``, ``1h30m``), not negative."""
    try:
        seconds = go_duration(text.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    return seconds


def rfc3339(text: str) -> int:
    try:
        return timestamp_ns(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _since_ns(args: argparse.Namespace) -> int | None:
    if getattr(args, "since", None) is not None:
        return time.time_ns() - int(args.since * 1_000_000_000)
    since_time: int | None = getattr(args, "since_time", None)
    return since_time


def run_logs(args: argparse.Namespace) -> int:
    """Print the message text of one container log to stdout; 0, or 1 with the reason on stderr."""
    out = sys.stdout.buffer
    tail = getattr(args, "tail", -1)
    tail = tail if tail >= 0 else None
    since_ns = _since_ns(args)
    stamps = getattr(args, "timestamps", False)
    try:
        pod = PodRef.parse(args.pod)
        pod_dir = find_pod_dir(args.pod_logs_dir, pod, getattr(args, "uid", None))
        path = pick_log(container_dir(pod_dir, pod, args.container), previous=args.previous)
        if args.follow and not args.previous:
            for message in follow_messages(path, history=True, tail=tail, since_ns=since_ns):
                _write(out, message, stamps)
                out.flush()
        else:
            for message in read_run(path, tail=tail, since_ns=since_ns):
                _write(out, message, stamps)
            out.flush()
    except LogsError as err:
        print(f"nodelet logs: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``| head``): not an error. Point stdout at /dev/null so the
        # interpreter's final flush does not complain about the pipe once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as err:
        print(f"nodelet logs: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _write(out: BinaryIO, message: LogMessage, timestamps: bool) -> None:
    if timestamps:
        out.write(rfc3339_nano(message.timestamp).encode() + b" ")
    out.write(message.render())
