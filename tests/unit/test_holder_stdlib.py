"""The holder and zygote run in their own small processes (``python -I -S``): they may load the
standard library and ``nodelet.holder`` only, or every pod would pay for the agent's imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import sys; sys.path.insert(0, {root!r}); "
    "from nodelet.holder import holder, zygote; import json; "
    "print(json.dumps(sorted(sys.modules)))"
)


def test_holder_and_zygote_import_only_the_stdlib_and_themselves() -> None:
    probe = PROBE.format(root=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    outside = [
        name
        for name in loaded
        if name.partition(".")[0] not in sys.stdlib_module_names
        and name not in ("nodelet", "__main__")
        and not name.startswith("nodelet.holder")
        and not name.startswith("_")
    ]
    assert "nodelet.holder.holder" in loaded
    assert outside == []
