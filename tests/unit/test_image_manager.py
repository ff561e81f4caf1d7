"""The image manager's decisions, as kubelet's image manager makes them: pull policy with its
defaults, host images, one pull per image, the ErrImagePull / ImagePullBackOff schedule and
kubelet's event texts. The registry is replaced by a puller function writing the store's index
(the registry client is tested against a real registry in tests/system)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest

from nodelet.image.manager import (
    ERR_IMAGE_NEVER_PULL,
    ERR_IMAGE_PULL,
    IMAGE_PULL_BACK_OFF,
    INVALID_IMAGE_NAME,
    ImageError,
    ImageManager,
    PresentImage,
    go_duration,
    is_image_failure,
)
from nodelet.image.registry import RegistryError
from nodelet.image.store import ImageRecord, ImageStore
from nodelet.pod.backoff import Backoff

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32
MANIFEST = "sha256:" + "cd" * 32
CONFIG = "sha256:" + "ef" * 32


class FakeRegistry:
    """Pulls name images in the store's index; may hold a pull until released, or fail."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.calls: list[str] = []
        self.hold: dict[str, threading.Event] = {}
        self.error: Exception | None = None

    def name(self, name: str) -> ImageRecord:
        records = self.store.records()
        record = ImageRecord(name, DIGEST, MANIFEST, CONFIG, 1.0)
        records[name] = record
        self.store.base.mkdir(parents=True, exist_ok=True)
        doc = {"images": {n: r.to_json() for n, r in records.items()}}
        self.store.index_path.write_text(json.dumps(doc))
        return record

    def __call__(self, name: str) -> ImageRecord:
        self.calls.append(name)
        gate = self.hold.get(name)
        if gate is not None:
            assert gate.wait(10), "the test never released the pull"
        if self.error is not None:
            raise self.error
        return self.name(name)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, type_: str, reason: str, message: str) -> None:
        self.seen.append((type_, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.seen]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manager(tmp_path: Path, host_images: tuple[str, ...] = ()) -> tuple[ImageManager, FakeRegistry]:
    store = ImageStore(tmp_path)
    fake = FakeRegistry(store)
    return ImageManager(store, fake, Backoff(10.0, 300.0), host_images), fake


# image, imagePullPolicy, present before, pulled?, error reason
POLICY_TABLE = [
    ("busybox", None, True, True, None),  # no tag: Always
    ("busybox:latest", None, True, True, None),  # :latest: Always
    ("busybox:1.36", None, True, False, None),  # a tag: IfNotPresent
    ("busybox:1.36", None, False, True, None),
    (f"busybox@{DIGEST}", None, True, False, None),  # a digest: IfNotPresent
    (f"busybox@{DIGEST}", None, False, True, None),
    ("busybox:1.36", "Always", True, True, None),
    ("busybox", "IfNotPresent", True, False, None),
    ("busybox", "IfNotPresent", False, True, None),
    ("busybox", "Never", True, False, None),
    ("busybox:1.36", "Never", False, False, ERR_IMAGE_NEVER_PULL),
    ("Busybox", None, False, False, INVALID_IMAGE_NAME),
    ("busybox:bad tag", "Always", False, False, INVALID_IMAGE_NAME),
    ("host", "Always", False, False, None),
]


@pytest.mark.parametrize(("image", "policy", "present", "pulled", "error"), POLICY_TABLE)
async def test_pull_policy_table(
    tmp_path: Path, image: str, policy: str | None, present: bool, pulled: bool, error: str | None
) -> None:
    images, fake = manager(tmp_path)
    normalised = {
        "busybox": "docker.io/library/busybox:latest",
        "busybox:latest": "docker.io/library/busybox:latest",
        "busybox:1.36": "docker.io/library/busybox:1.36",
        f"busybox@{DIGEST}": f"docker.io/library/busybox@{DIGEST}",
    }
    if present:
        fake.name(normalised[image])
    events = Events()
    if error is not None:
        with pytest.raises(ImageError) as raised:
            await images.ensure("uid1", image, policy, events)
        assert raised.value.reason == error
    else:
        found = await images.ensure("uid1", image, policy, events)
        if image == "host":
            assert found == PresentImage("host", "", None)
        else:
            assert found.name == normalised[image]
            assert found.image_id == f"docker.io/library/busybox@{DIGEST}"
    assert fake.calls == ([normalised[image]] if pulled else [])
    if pulled:
        assert events.reasons() == ["Pulling", "Pulled"]
        assert events.seen[0] == ("Normal", "Pulling", f'Pulling image "{image}"')
        assert re.fullmatch(
            rf'Successfully pulled image "{re.escape(image)}" in [0-9.]+(ns|µs|ms|s)',
            events.seen[1][2],
        )
    elif present and error is None:
        assert events.seen == [
            ("Normal", "Pulled", f'Container image "{image}" already present on machine')
        ]
    elif image == "host":
        assert events.seen == []


async def test_never_pull_and_invalid_name_messages_are_kubelets(tmp_path: Path) -> None:
    images, _fake = manager(tmp_path)
    events = Events()
    with pytest.raises(ImageError) as never:
        await images.ensure("uid1", "nlt/absent:1", "Never", events)
    message = 'Container image "nlt/absent:1" is not present with pull policy of Never'
    assert never.value.message == message
    assert events.seen == [("Warning", "ErrImageNeverPull", message)]
    with pytest.raises(ImageError) as invalid:
        await images.ensure("uid1", "UPPER/case", None, events)
    assert invalid.value.message.startswith('Failed to apply default image tag "UPPER/case": ')
    assert "lowercase" in invalid.value.message
    assert events.seen[-1][:2] == ("Warning", "InspectFailed")


async def test_host_image_globs_are_never_pulled(tmp_path: Path) -> None:
    images, fake = manager(tmp_path, ("registry.k8s.io/etcd:*", "nlt-local*"))
    for image in ("registry.k8s.io/etcd:3.5.9-0", "nlt-local/tool", "host"):
        found = await images.ensure("uid1", image, "Always", Events())
        assert found.host and found.image_id == ""
    await images.ensure("uid1", "registry.k8s.io/pause:3.9", None, Events())
    assert fake.calls == ["registry.k8s.io/pause:3.9"]


async def test_one_pull_per_image_however_many_want_it(tmp_path: Path) -> None:
    images, fake = manager(tmp_path)
    gate = fake.hold["docker.io/library/busybox:latest"] = threading.Event()
    events = [Events() for _ in range(5)]
    # Five pods, two spellings of one image: one pull.
    waiters = [
        asyncio.create_task(
            images.ensure(f"uid{i}", "busybox" if i % 2 else "busybox:latest", None, events[i])
        )
        for i in range(5)
    ]
    await asyncio.sleep(0.05)
    assert fake.calls == ["docker.io/library/busybox:latest"]
    # Another image is not held back by the pull under way.
    other = await asyncio.wait_for(images.ensure("uid9", "nlt/other:1", None, Events()), 5)
    assert other.name == "docker.io/nlt/other:1"
    assert not any(w.done() for w in waiters)
    gate.set()
    found = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert {f.image_id for f in found} == {f"docker.io/library/busybox@{DIGEST}"}
    assert fake.calls == ["docker.io/library/busybox:latest", "docker.io/nlt/other:1"]
    assert images.pulls == 2
    assert all(e.reasons() == ["Pulling", "Pulled"] for e in events)
    # The pull is over: Always pulls again.
    await images.ensure("uid1", "busybox", None, Events())
    assert images.pulls == 3


async def test_a_waiter_that_goes_away_does_not_cancel_the_pull(tmp_path: Path) -> None:
    images, fake = manager(tmp_path)
    gate = fake.hold["docker.io/library/busybox:1"] = threading.Event()
    first = asyncio.create_task(images.ensure("uid1", "busybox:1", None, Events()))
    second = asyncio.create_task(images.ensure("uid2", "busybox:1", None, Events()))
    await asyncio.sleep(0.05)
    first.cancel()
    gate.set()
    assert (await asyncio.wait_for(second, 5)).name == "docker.io/library/busybox:1"
    assert fake.calls == ["docker.io/library/busybox:1"]


async def test_failed_pull_backs_off_10s_doubling_to_300s_per_pod(tmp_path: Path) -> None:
    clock = Clock()
    store = ImageStore(tmp_path)
    fake = FakeRegistry(store)
    images = ImageManager(store, fake, Backoff(10.0, 300.0), clock=clock)
    reason = (
        "registry 127.0.0.1:5000: GET /v2/nlt/nope/manifests/1: 404 Not Found (MANIFEST_UNKNOWN)"
    )
    fake.error = RegistryError(reason)
    windows = []
    for _ in range(8):
        events = Events()
        with pytest.raises(ImageError) as failed:
            await images.ensure("uid1", "nlt/nope:1", None, events)
        pulled_at = clock.now
        assert failed.value.reason == ERR_IMAGE_PULL
        assert failed.value.message == reason
        assert events.seen == [
            ("Normal", "Pulling", 'Pulling image "nlt/nope:1"'),
            ("Warning", "Failed", f'Failed to pull image "nlt/nope:1": {reason}'),
        ]
        # ErrImagePull is shown a moment, then the next look reports the back-off.
        assert failed.value.retry_at == pulled_at + 1.0
        clock.now = failed.value.retry_at
        events = Events()
        with pytest.raises(ImageError) as backoff:
            await images.ensure("uid1", "nlt/nope:1", None, events)
        assert backoff.value.reason == IMAGE_PULL_BACK_OFF
        assert backoff.value.message == 'Back-off pulling image "nlt/nope:1"'
        assert events.seen == [("Normal", "BackOff", 'Back-off pulling image "nlt/nope:1"')]
        windows.append(backoff.value.retry_at - pulled_at)
        # Just before the window closes: still backing off, no pull.
        calls = len(fake.calls)
        clock.now = backoff.value.retry_at - 0.01
        with pytest.raises(ImageError, match=IMAGE_PULL_BACK_OFF):
            await images.ensure("uid1", "nlt/nope:1", None, Events())
        assert len(fake.calls) == calls
        clock.now = backoff.value.retry_at
    assert windows == [10, 20, 40, 80, 160, 300, 300, 300]
    # Another pod of the same image has a window of its own (kubelet's key: pod UID + image).
    with pytest.raises(ImageError, match=ERR_IMAGE_PULL):
        await images.ensure("uid2", "nlt/nope:1", None, Events())
    # A removed pod's windows go; the registry fixed, the next try pulls and succeeds.
    images.forget_pod("uid1")
    fake.error = None
    found = await images.ensure("uid1", "nlt/nope:1", None, Events())
    assert found.image_id == f"docker.io/nlt/nope@{DIGEST}"


async def test_any_pull_exception_is_err_image_pull(tmp_path: Path) -> None:
    images, fake = manager(tmp_path)
    fake.error = OSError(28, "No space left on device")
    with pytest.raises(ImageError) as failed:
        await images.ensure("uid1", "busybox:1", None, Events())
    assert failed.value.reason == ERR_IMAGE_PULL
    assert "No space left on device" in failed.value.message


def test_image_of_for_adopted_containers(tmp_path: Path) -> None:
    images, fake = manager(tmp_path, ("etcd*",))
    assert images.image_of("busybox:1") is None
    fake.name("docker.io/library/busybox:1")
    found = images.image_of("busybox:1")
    assert found is not None and found.image_id == f"docker.io/library/busybox@{DIGEST}"
    by_digest = images.image_of(f"busybox@{DIGEST}")
    assert by_digest is not None and by_digest.record is not None
    assert images.image_of("etcd:3") == PresentImage("etcd:3", "", None)
    assert images.image_of("Bad") is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0000005, "500ns"),
        (0.0015, "1.5ms"),
        (0.523456789, "523.456789ms"),
        (1.5, "1.5s"),
        (2.0, "2s"),
        (123.5, "2m3.5s"),
        (3723.0, "1h2m3s"),
    ],
)
def test_pull_time_is_printed_as_go_does(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_config_keys_and_flags(tmp_path: Path) -> None:
    from nodelet.cli.main import build_parser
    from nodelet.cli.run import build_config
    from nodelet.configfile import ConfigFileError, load_files

    path = tmp_path / "nodelet.yaml"
    path.write_text(
        "apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n"
        "hostImages: ['registry.k8s.io/etcd:*']\ninsecureRegistries: ['reg.local:5000']\n"
    )
    values = load_files([path]).values
    assert values["host_images"] == ("registry.k8s.io/etcd:*",)
    assert values["insecure_registries"] == ("reg.local:5000",)
    args = build_parser().parse_args(
        ["run", "--config", str(path), "--host-images", "nlt-a*,nlt-b*"]
    )
    config, _warnings = build_config(args, "node", "127.0.0.1")
    assert config.host_images == ("nlt-a*", "nlt-b*")  # the flag wins
    assert config.insecure_registries == ("reg.local:5000",)
    path.write_text(
        "apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\nhostImages: etcd\n"
    )
    with pytest.raises(ConfigFileError, match="hostImages"):
        load_files([path])


def test_status_shows_the_image_a_container_ran_on() -> None:
    from nodelet.model import StaticPod
    from nodelet.pod.actions import PodActions
    from nodelet.pod.status import build_pod_status
    from nodelet.runtime.api import ContainerRecord, SandboxStatus

    spec = {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}
    pod = StaticPod("u", "default", "p", "/m/p.yaml", {"metadata": {"uid": "u"}, "spec": spec})
    sandbox = SandboxStatus("u", True, 7, 100.0, None, (ContainerRecord("a", 0, 1000, 110.0),))
    shown = {n: ("docker.io/library/busybox:latest", f"docker.io/library/busybox@{DIGEST}")
             for n in "ab"}  # fmt: skip
    status = build_pod_status(pod, sandbox, PodActions(), "127.0.0.1", None, 120.0, images=shown)
    ran, waiting = status["containerStatuses"]
    assert (ran["image"], ran["imageID"]) == shown["a"]
    # No run yet: the spec's text and no ID, as kubelet before the runtime knows the container.
    assert (waiting["image"], waiting["imageID"]) == ("busybox", "")


@pytest.mark.parametrize(
    ("message", "about_the_image"),
    [
        ('Failed to pull image "nlt/x:1": 404 Not Found', True),
        ("Error: ErrImagePull", True),
        ("Error: ImagePullBackOff", True),
        ("Error: InvalidImageName", True),
        ("Error: ErrImageNeverPull", True),
        ("Error: failed to start: exec: no such file", False),
        ('Error: container "c": no command specified', False),
    ],
)
def test_image_failures_are_told_from_start_failures(message: str, about_the_image: bool) -> None:
    """The agent's start counters skip image failures, as kubelet's: the runtime was not asked."""
    assert is_image_failure(message) is about_the_image
