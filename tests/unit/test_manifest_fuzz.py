"""Property: whatever a manifest file holds, and whatever its name, the loader and
``nodelet validate`` answer with a pod or a rejection that says why; never an exception.

And a pod that passes is safe for the code that runs it: no null anywhere, JSON-ready, every
container turns into a process spec, every directory it names stays inside its parent.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodelet.cli import main as cli_main
from nodelet.manifest.load import load_manifest
from nodelet.model import Rejection, StaticPod
from nodelet.pod import containerprep, volumes

pytestmark = pytest.mark.unit

NODE = "nlt-node"
FUZZ = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

RICH_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "rich",
        "namespace": "kube-system",
        "uid": "0b7e7a8c-6f1e-4b8e-9d1c-2f4a7c1e5d3b",
        "labels": {"a": "rich", "example.com/tier": "a"},
        "annotations": {"note": "x"},
        "creationTimestamp": None,
    },
    "spec": {
        "restartPolicy": "OnFailure",
        "terminationGracePeriodSeconds": 5,
        "hostNetwork": True,
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "supplementalGroups": [5]},
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": "/var/lib/rich", "type": "DirectoryOrCreate"}},
        ],
        "initContainers": [{"name": "init", "image": "host", "command": ["true"]}],
        "containers": [
            {
                "name": "app",
                "image": "host",
                "command": ["sh", "-c"],
                "args": ["echo $(A) $(NODE)"],
                "workingDir": "/tmp",
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}},
                ],
                "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "host", "mountPath": "/host", "readOnly": True},
                ],
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
                "resources": {"requests": {"cpu": "100m", "memory": "1000"}},
            }
        ],
        "tolerations": [{"operator": "Exists"}],
    },
}

# -- strategies ---------------------------------------------------------------------------

_awkward = ["", ".", "..", "/", "../../victim", "/etc", "a\0b", "x\n", " ", "A_B", "é", "\u202e"]
_awkward_text = st.sampled_from([*_awkward, "a" * 300])
_text = st.one_of(st.text(max_size=20), _awkward_text)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 65536, 2**31, 2**63 - 1, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
)
_keys = st.one_of(_text, st.integers(-5, 5), st.none(), st.booleans(), st.floats(-2, 2))
values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=4)
    ),
    max_leaves=20,
)
"""Any YAML shape: nested lists and objects, nulls, wrong types, big numbers, odd keys."""


def _slots(node: Any, parent: Any = None, key: Any = None) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in a document, the root's subtrees included."""
    if parent is not None:
        yield parent, key
    if isinstance(node, dict):
        for k, v in list(node.items()):
            yield from _slots(v, node, k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _slots(v, node, i)


@st.composite
def mutated_pods(draw: st.DrawFn) -> Any:
    """The rich valid pod with one to three random subtrees replaced, removed or added."""
    doc = copy.deepcopy(RICH_POD)
    for _ in range(draw(st.integers(1, 3))):
        parent, key = draw(st.sampled_from(list(_slots(doc))))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "nest"]))
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent[key], dict):
            parent[key][draw(_keys)] = draw(values)
        elif action == "add" and isinstance(parent[key], list):
            parent[key].append(draw(values))
        else:
            deep: Any = draw(values)
            for _ in range(draw(st.integers(10, 200))):
                deep = [deep] if draw(st.booleans()) else {"a": deep}
            parent[key] = deep
        if not list(_slots(doc)):
            break
    return doc


def _deep_text(depth: int, kind: str) -> str:
    if kind == "flow-list":
        return "[" * depth + "]" * depth
    if kind == "flow-map":
        return "{a: " * depth + "1" + "}" * depth
    if kind == "block":
        return "".join("  " * i + "a:\n" for i in range(depth)) + "  " * depth + "b: 1\n"
    return "".join("  " * i + "-\n" for i in range(depth)) + "  " * depth + "1\n"


_deep = st.builds(
    _deep_text, st.integers(30, 3000), st.sampled_from(["flow-list", "flow-map", "block", "seq"])
)
_yaml_soup = st.text(alphabet="[]{}:,-!&*?|>'\"%@#\n \t.0123456789abcxyz\\^", max_size=300)
_GRACE = '"terminationGracePeriodSeconds": 5'
_huge_number = st.builds(
    lambda digits, inside: (
        json.dumps(RICH_POD).replace(_GRACE, _GRACE[:-1] + digits) if inside else digits
    ),
    st.sampled_from(["9" * 5000, "-" + "9" * 400, "0x" + "f" * 5000, "1" + "_0" * 3000, "1e400"]),
    st.booleans(),
)


def _serialize(doc: Any, how: str) -> bytes:
    if how == "json":
        return json.dumps(doc).encode()
    if how == "yaml":
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    text = yaml.safe_dump(doc, default_flow_style=True, allow_unicode=True)
    return text.encode("utf-8", "surrogatepass")


documents = st.one_of(
    st.builds(_serialize, mutated_pods(), st.sampled_from(["json", "yaml", "flow"])),
    st.builds(_serialize, values, st.sampled_from(["json", "yaml", "flow"])),
    st.builds(str.encode, st.one_of(_deep, _yaml_soup, _huge_number)),
    st.binary(max_size=300),
)

_name_bytes = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)

# -- checks -------------------------------------------------------------------------------

_counter = itertools.count()


def _write(directory: Path, data: bytes, name: bytes | None = None) -> str:
    path = os.fsencode(directory) + b"/" + (name or b"m%d.yaml" % next(_counter))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return os.fsdecode(path)


def _nulls(value: Any) -> bool:
    if isinstance(value, dict):
        return any(v is None or _nulls(v) for v in value.values())
    if isinstance(value, list):
        return any(_nulls(v) for v in value)
    return False


def assert_sound(result: StaticPod | Rejection, tmp: Path) -> None:
    """A rejection says why in printable lines; a pod is safe for every consumer."""
    if isinstance(result, Rejection):
        assert result.errors
        for error in result.errors:
            text = str(error)
            assert "internal error" not in text, text  # a check that raised: a bug to fix
            assert text.isprintable(), text
            text.encode("utf-8")
        json.dumps([result.path, result.pod_name, [str(e) for e in result.errors]]).encode()
        return
    json.dumps(result.manifest).encode("utf-8")
    assert not _nulls(result.manifest)
    state = tmp / "state"
    pod_dir = volumes.pod_dir(state, result.uid).resolve()
    assert pod_dir.parent == state.resolve()
    spec = result.spec
    paths = {}
    for volume in spec.get("volumes") or []:
        where = volumes.empty_dir_path(state, result.uid, volume["name"]).resolve()
        assert where.is_relative_to(pod_dir)
        paths[volume["name"]] = str(where)
    ctx = containerprep.PodContext(result, "host", "10.0.0.1", "10.0.0.2", tmp / "logs", paths)
    containerprep.pod_hostname(result, "node")
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        try:
            config = containerprep.build_container_config(ctx, container, 0)
        except containerprep.ContainerConfigError:
            continue
        assert Path(config.log_path).resolve().is_relative_to((tmp / "logs").resolve())
        json.dumps(config.argv + list(config.env.items())).encode("utf-8")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def test_the_rich_pod_is_valid(workdir: Path) -> None:
    result = load_manifest(_write(workdir, json.dumps(RICH_POD).encode()), NODE)
    assert isinstance(result, StaticPod), result


@FUZZ
@given(data=documents)
def test_loader_answers_every_document(data: bytes, workdir: Path) -> None:
    path = _write(workdir, data)
    try:
        assert_sound(load_manifest(path, NODE), workdir)
    finally:
        os.unlink(path)


@settings(FUZZ, max_examples=1200)
@given(doc=mutated_pods(), how=st.sampled_from(["json", "yaml", "flow"]))
def test_loader_answers_every_mutation_of_a_valid_pod(doc: Any, how: str, workdir: Path) -> None:
    path = _write(workdir, _serialize(doc, how))
    try:
        assert_sound(load_manifest(path, NODE), workdir)
    finally:
        os.unlink(path)


@settings(FUZZ, max_examples=300)
@given(name=_name_bytes, data=st.one_of(st.just(json.dumps(RICH_POD).encode()), documents))
def test_loader_answers_any_file_name(name: bytes, data: bytes, workdir: Path) -> None:
    directory = workdir / "names"
    directory.mkdir(exist_ok=True)
    path = _write(directory, data, name)
    try:
        result = load_manifest(path, NODE)
        assert_sound(result, workdir)
        if isinstance(result, StaticPod):
            name.decode("utf-8")  # a name that is not UTF-8 never becomes a pod
    finally:
        os.unlink(path)


@settings(FUZZ, max_examples=300)
@given(data=documents)
def test_validate_command_answers_every_document(data: bytes, workdir: Path) -> None:
    path = _write(workdir, data)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main.main(["validate", "--hostname-override", NODE, path])
    finally:
        os.unlink(path)
    assert code in (0, 1)
    printed = (out if code == 0 else err).getvalue()
    assert printed.strip(), "validate printed nothing"
    assert "internal error" not in printed
    printed.encode("utf-8")
