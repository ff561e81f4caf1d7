"""The pod user namespace allocator (kubelet's ``userns_manager.go`` rules): aligned blocks of
65536, the lowest free first, recorded in the pod's directory and read back from there only."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodelet.runtime.api import UserNamespace
from nodelet.security import userns

pytestmark = pytest.mark.unit

IDS = userns.IDS_PER_POD
RANGE = (IDS, 2 * IDS)


def test_kubelets_default_range_keeps_the_hosts_first_block() -> None:
    assert userns.DEFAULT_RANGE == (65536, 65536 * 110)
    userns.check_range(*userns.DEFAULT_RANGE)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0:65536", "must be >= 65536"),
        ("65537:65536", "is not a multiple of 65536"),
        ("65536:1000", "is not a positive multiple of 65536"),
        ("65536:0", "is not a positive multiple of 65536"),
        ("4294901760:131072", "goes past id 4294967295"),
        ("65536", "is not FIRST:COUNT"),
        ("-65536:65536", "is not FIRST:COUNT"),
    ],
)
def test_a_bad_range_is_refused_with_kubelets_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        userns.parse_range(text)


def test_parse_range() -> None:
    assert userns.parse_range("131072:262144") == (131072, 262144)


def test_pods_get_the_lowest_free_block_and_keep_it(tmp_path: Path) -> None:
    first = userns.get_or_create(tmp_path, RANGE, "pod-a")
    second = userns.get_or_create(tmp_path, RANGE, "pod-b")
    assert (first, second) == (UserNamespace(IDS, IDS), UserNamespace(2 * IDS, IDS))
    assert userns.get_or_create(tmp_path, RANGE, "pod-a") == first  # asked again: the same
    assert userns.read(tmp_path, "pod-b") == second
    assert userns.read(tmp_path, "pod-c") is None


def test_the_record_is_kubelets_userns_file_in_the_pod_dir(tmp_path: Path) -> None:
    userns.get_or_create(tmp_path, RANGE, "pod-a")
    entry = {"containerId": 0, "hostId": IDS, "length": IDS}
    data = json.loads((tmp_path / "pod-a" / "userns").read_text())
    assert data == {"uidMappings": [entry], "gidMappings": [entry]}
    assert not list((tmp_path / "pod-a").glob(".*"))  # the temporary file was renamed


def test_a_released_or_removed_pod_frees_its_block(tmp_path: Path) -> None:
    userns.get_or_create(tmp_path, RANGE, "pod-a")
    userns.get_or_create(tmp_path, RANGE, "pod-b")
    userns.release(tmp_path, "pod-a")
    userns.release(tmp_path, "pod-a")  # idempotent
    assert userns.get_or_create(tmp_path, RANGE, "pod-c").host_id == IDS
    (tmp_path / "pod-b" / "userns").unlink()
    (tmp_path / "pod-b").rmdir()  # the pod's directory removed with the pod
    assert userns.get_or_create(tmp_path, RANGE, "pod-d").host_id == 2 * IDS


def test_blocks_recorded_by_an_earlier_agent_are_never_given_again(tmp_path: Path) -> None:
    entry = {"containerId": 0, "hostId": IDS, "length": IDS}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "userns").write_text(
        json.dumps({"uidMappings": [entry], "gidMappings": [entry]})
    )
    assert userns.get_or_create(tmp_path, RANGE, "new").host_id == 2 * IDS
    assert userns.allocations(tmp_path) == {
        "old": UserNamespace(IDS, IDS),
        "new": UserNamespace(2 * IDS, IDS),
    }


def test_an_exhausted_range_is_an_error_that_names_it(tmp_path: Path) -> None:
    userns.get_or_create(tmp_path, RANGE, "pod-a")
    userns.get_or_create(tmp_path, RANGE, "pod-b")
    with pytest.raises(userns.UsernsError, match="all 2 blocks of --user-namespaces-range"):
        userns.get_or_create(tmp_path, RANGE, "pod-c")
    assert userns.read(tmp_path, "pod-c") is None


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{", "invalid user namespace mappings file"),
        ('{"uidMappings": [], "gidMappings": []}', "no more than one mapping allowed"),
        (
            '{"uidMappings": [{"containerId": 0, "hostId": 65536, "length": 65536}],'
            ' "gidMappings": [{"containerId": 0, "hostId": 131072, "length": 65536}]}',
            "GID and UID mappings should be identical",
        ),
        (
            '{"uidMappings": [{"containerId": 1, "hostId": 65536, "length": 65536}],'
            ' "gidMappings": [{"containerId": 1, "hostId": 65536, "length": 65536}]}',
            "UID 0 must be mapped",
        ),
    ],
)
def test_a_damaged_record_blocks_allocation(tmp_path: Path, content: str, why: str) -> None:
    """Its block cannot be known to be free, so nothing is allocated (fail closed)."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "userns").write_text(content)
    with pytest.raises(userns.UsernsError, match=why):
        userns.get_or_create(tmp_path, RANGE, "pod-a")


def test_concurrent_allocations_never_share_a_block(tmp_path: Path) -> None:
    wide = (IDS, 64 * IDS)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda n: userns.get_or_create(tmp_path, wide, f"pod-{n}"), range(32)))
    assert len({m.host_id for m in got}) == 32


def test_only_host_users_false_asks_for_a_user_namespace() -> None:
    assert userns.wants_user_namespace({"hostUsers": False})
    assert not userns.wants_user_namespace({"hostUsers": True})
    assert not userns.wants_user_namespace({})


def test_this_kernel_supports_user_namespaces() -> None:
    assert userns.kernel_refusal() is None
