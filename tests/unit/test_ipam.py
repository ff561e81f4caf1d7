"""Host-local IPAM: gateway first, no network/broadcast, persisted, never one IP twice."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from nodelet.network.api import NetworkError
from nodelet.network.ipam import HostLocalIPAM

pytestmark = pytest.mark.unit

CIDR29 = "10.199.7.0/29"  # .0 network, .1 gateway, .2-.6 pods, .7 broadcast


def test_first_address_is_the_gateway_and_pods_get_the_rest(tmp_path: Path) -> None:
    ipam = HostLocalIPAM(CIDR29, tmp_path)
    assert str(ipam.gateway) == "10.199.7.1"
    got = {str(ipam.allocate(f"uid-{i}")) for i in range(5)}
    assert got == {f"10.199.7.{n}" for n in range(2, 7)}


def test_exhaustion_names_the_cidr_and_a_release_frees_one(tmp_path: Path) -> None:
    ipam = HostLocalIPAM(CIDR29, tmp_path)
    for i in range(5):
        ipam.allocate(f"uid-{i}")
    with pytest.raises(NetworkError, match=r"^no free pod IP in 10\.199\.7\.0/29$"):
        ipam.allocate("uid-5")
    freed = ipam.lookup("uid-2")
    ipam.release("uid-2")
    assert ipam.lookup("uid-2") is None
    assert ipam.allocate("uid-5") == freed


def test_same_uid_keeps_its_address_across_instances(tmp_path: Path) -> None:
    first = HostLocalIPAM(CIDR29, tmp_path).allocate("pod-a")
    HostLocalIPAM(CIDR29, tmp_path).allocate("pod-b")
    again = HostLocalIPAM(CIDR29, tmp_path)  # a restarted agent
    assert again.lookup("pod-a") == first
    assert again.allocate("pod-a") == first
    assert (tmp_path / str(first)).read_text() == "pod-a"
    assert len(again.allocations()) == 2


def test_freed_address_is_not_reused_at_once(tmp_path: Path) -> None:
    ipam = HostLocalIPAM("10.199.8.0/24", tmp_path)
    a = ipam.allocate("a")
    ipam.release("a")
    assert ipam.allocate("b") != a


def test_sweep_releases_addresses_of_pods_not_kept(tmp_path: Path) -> None:
    ipam = HostLocalIPAM(CIDR29, tmp_path)
    for uid in ("keep-1", "gone-1", "keep-2", "gone-2"):
        ipam.allocate(uid)
    (tmp_path / ".tmp-crashed").write_text("half")  # a crash between write and link
    (tmp_path / "10.199.9.5").write_text("keep-1")  # the CIDR changed since
    assert sorted(ipam.sweep({"keep-1", "keep-2"})) == ["gone-1", "gone-2", "keep-1"]
    assert sorted(ipam.allocations().values()) == ["keep-1", "keep-2"]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [str(ip) for ip in ipam.allocations()] + ["lock", "last_reserved_ip"]
    )


def test_too_small_cidr_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="too small"):
        HostLocalIPAM("10.199.7.0/31", tmp_path)


def test_concurrent_threads_never_share_an_address(tmp_path: Path) -> None:
    results: dict[str, str] = {}
    errors: list[Exception] = []
    barrier = threading.Barrier(12)

    def take(uid: str) -> None:
        ipam = HostLocalIPAM("10.199.10.0/28", tmp_path)  # 13 usable: 12 fit
        barrier.wait()
        try:
            results[uid] = str(ipam.allocate(uid))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(f"t{i}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results.values())) == 12


def _allocate_in_process(state: str, uid: str, out: multiprocessing.Queue[str]) -> None:
    ipam = HostLocalIPAM("10.199.11.0/29", state)
    try:
        out.put(f"{uid}={ipam.allocate(uid)}")
    except NetworkError as exc:
        out.put(f"{uid}!{exc}")


def test_concurrent_processes_share_nothing_and_the_rest_hear_exhaustion(
    tmp_path: Path,
) -> None:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [
        ctx.Process(target=_allocate_in_process, args=(str(tmp_path), f"p{i}", out))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    answers = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    got = [a.split("=")[1] for a in answers if "=" in a]
    refused = [a for a in answers if "!" in a]
    assert len(got) == 5
    assert len(set(got)) == 5
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.199.11.0/29") for ip in got)
    assert len(refused) == 3
    assert all(a.endswith("no free pod IP in 10.199.11.0/29") for a in refused)
    on_disk = HostLocalIPAM("10.199.11.0/29", tmp_path).allocations()
    assert sorted(str(ip) for ip in on_disk) == sorted(got)
