"""``nodelet validate``: check manifest files exactly as the agent would, print every error."""

from __future__ import annotations

import argparse
import sys


def validate(args: argparse.Namespace) -> int:
    from nodelet.manifest.load import load_manifest
    from nodelet.model import Rejection
    from nodelet.util import nodeinfo

    node = nodeinfo.node_name(args.hostname_override)
    failed = 0
    for path in args.files:
        result = load_manifest(str(path), node)
        if isinstance(result, Rejection):
            failed += 1
            for error in result.errors:
                print(error, file=sys.stderr)
        else:
            print(f"{path}: ok: pod {result.namespace}/{result.name} uid {result.uid}")
    return 1 if failed else 0
