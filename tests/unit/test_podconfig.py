import pytest

from nodelet.manifest.podconfig import OpKind, diff
from nodelet.model import StaticPod

pytestmark = pytest.mark.unit


def pod(uid: str, name: str = "web", image: str = "host") -> StaticPod:
    manifest = {"metadata": {"name": name}, "spec": {"containers": [{"image": image}]}}
    return StaticPod(uid, "default", name, f"/m/{name}.yaml", manifest)


def test_add_remove_update() -> None:
    a, b = pod("a"), pod("b", "db")
    changed = StaticPod("b", "default", "db", "/m/db.yaml", {"metadata": {}, "spec": {}})
    ops = diff({"a": a, "b": b}, {"b": changed, "c": pod("c", "new")})
    assert [(o.kind, o.uid) for o in ops] == [
        (OpKind.REMOVE, "a"),
        (OpKind.UPDATE, "b"),
        (OpKind.ADD, "c"),
    ]
    assert ops[0].pod is a


def test_same_set_is_quiet() -> None:
    a = pod("a")
    assert diff({"a": a}, {"a": pod("a")}) == []
