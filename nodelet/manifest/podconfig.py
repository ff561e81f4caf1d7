"""Turn successive full sets of static pods into operations, as kubelet's podconfig merge does.

Pure: no I/O, no clock. A manifest edit changes the pod's UID (the UID hashes the content), so an
edit arrives as REMOVE(old UID) + ADD(new UID), and the pod workers serialise them by full name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from nodelet.model import StaticPod


class OpKind(enum.Enum):
    ADD = "ADD"
    UPDATE = "UPDATE"
    REMOVE = "REMOVE"


@dataclass(frozen=True)
class PodOp:
    kind: OpKind
    uid: str
    pod: StaticPod | None
    """The new pod for ADD/UPDATE; the last known one for REMOVE."""


def diff(previous: Mapping[str, StaticPod], current: Mapping[str, StaticPod]) -> list[PodOp]:
    """Operations turning ``previous`` into ``current`` (both keyed by UID): removals first."""
    ops = [PodOp(OpKind.REMOVE, uid, pod) for uid, pod in previous.items() if uid not in current]
    for uid, pod in current.items():
        old = previous.get(uid)
        if old is None:
            ops.append(PodOp(OpKind.ADD, uid, pod))
        elif old.manifest != pod.manifest or old.source_path != pod.source_path:
            ops.append(PodOp(OpKind.UPDATE, uid, pod))
    return ops
