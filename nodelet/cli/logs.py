"""``nodelet logs``: a container's output, like ``kubectl logs``, read from the node's log files.

It reads the files directly, so it works while the agent is down. The CLI may pass the UID the
agent reports for the pod; otherwise the newest log dir of that pod name is read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nodelet.config import AgentConfig
from nodelet.logs.reader import (
    LogsError,
    PodRef,
    container_dir,
    find_pod_dir,
    follow_messages,
    iter_messages,
    pick_log,
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
        "--pod-logs-dir",
        type=Path,
        default=AgentConfig.pod_logs_dir,
        help="where the agent writes container logs (default: %(default)s)",
    )
    parser.add_argument(
        "--uid",
        help="read this pod UID's logs (default: the agent's current pod, else the newest)",
    )


def run_logs(args: argparse.Namespace) -> int:
    """Print the message text of one container log to stdout; 0, or 1 with the reason on stderr."""
    out = sys.stdout.buffer
    try:
        pod = PodRef.parse(args.pod)
        pod_dir = find_pod_dir(args.pod_logs_dir, pod, getattr(args, "uid", None))
        path = pick_log(container_dir(pod_dir, pod, args.container), previous=args.previous)
        if args.follow and not args.previous:
            for message in follow_messages(path):
                out.write(message.render())
                out.flush()
        else:
            for message in iter_messages(path):
                out.write(message.render())
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
