"""The v1 schema nodelet checks manifests against, cached in the run dir.

Importing the ``kubernetes`` client's generated models takes ~0.3 s; an agent that restarts
(an upgrade, a crash) must re-adopt its pods faster than that, and it checks every stored pod
record against the schema first. The cache is keyed by the client's version, written
atomically (0600), and rebuilt when it is missing, damaged or from another version.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
from pathlib import Path
from typing import Any, TypeGuard

from nodelet.manifest import schema

log = logging.getLogger(__name__)


def _valid(models: Any) -> TypeGuard[dict[str, dict[str, str]]]:
    return (
        isinstance(models, dict)
        and all(
            isinstance(name, str)
            and isinstance(fields, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
            for name, fields in models.items()
        )
        and "V1Pod" in models
    )


def warm(path: Path) -> None:
    """Make the schema ready: from the cache at ``path`` when it fits, else from the client."""
    version = importlib.metadata.version("kubernetes")
    with contextlib.suppress(OSError, ValueError, RecursionError):
        cached = json.loads(path.read_bytes())
        if isinstance(cached, dict) and cached.get("kubernetes") == version:
            models = cached.get("models")
            if _valid(models):
                schema.install(models)
                return
    models = schema.pod_models()
    temporary = path.with_name(path.name + ".new")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"kubernetes": version, "models": models}, out)
        os.replace(temporary, path)
    except OSError as err:
        log.warning("cannot cache the v1 schema in %s: %s", path, err)
