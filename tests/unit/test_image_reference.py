"""Image references normalised as docker/containerd do, hostImages globs, pull-policy defaults."""

import pytest

from nodelet.image.reference import (
    InvalidImageNameError,
    default_pull_policy,
    is_host_image,
    parse,
    registry_host,
)

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("user/app", "docker.io/user/app:latest"),
        ("user/app/sub:v1", "docker.io/user/app/sub:v1"),
        ("registry.k8s.io/etcd:3.5.9-0", "registry.k8s.io/etcd:3.5.9-0"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:v2", "localhost:5000/app:v2"),
        ("127.0.0.1:5000/nlt/test:1", "127.0.0.1:5000/nlt/test:1"),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}"),
        ("a_b.c-d__e:T_a.g-1", "docker.io/library/a_b.c-d__e:T_a.g-1"),
    ],
)
def test_normalised_as_container_tools_do(given: str, normal: str) -> None:
    assert str(parse(given)) == normal


def test_parts_and_image_id_form() -> None:
    ref = parse("127.0.0.1:5000/nlt/test:1")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("127.0.0.1:5000", "nlt/test", "1", None)
    assert ref.name == "127.0.0.1:5000/nlt/test"
    assert ref.with_digest(DIGEST) == f"127.0.0.1:5000/nlt/test@{DIGEST}"
    # a first component without . or : and not localhost is a path, not a host
    assert parse("myhost/app").domain == "docker.io"
    assert parse("myhost/app").path == "myhost/app"


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "empty"),
        (" busybox", "padded"),
        ("BusyBox", "lowercase"),
        ("busybox@sha256:abc", "digest"),
        ("busybox@md5:" + "a" * 32, "digest"),
        ("busybox:-bad", "bad tag"),
        ("busybox:" + "t" * 129, "bad tag"),
        ("a//b", "invalid path"),
        ("bad_host.example:/x", "bad registry"),
        ("-x.io/app", "bad registry"),
        ("app-", "invalid path"),
        ("x.io/" + "a" * 260, "longer than 255"),
    ],
)
def test_invalid_names_say_why(given: str, reason: str) -> None:
    with pytest.raises(InvalidImageNameError, match=reason):
        parse(given)


def test_host_images_globs() -> None:
    globs = ["registry.k8s.io/etcd:*", "docker.io/library/nginx:1.*"]
    assert is_host_image("host", [])
    assert is_host_image("registry.k8s.io/etcd:3.5.9-0", globs)
    assert is_host_image("nginx:1.25", globs)  # matched in its normalised form
    assert not is_host_image("nginx:2", globs)
    assert not is_host_image("registry.k8s.io/kube-apiserver:v1.30.0", globs)
    assert not is_host_image("hostile", [])
    assert is_host_image("etcd-local", ["etcd*"])  # as written
    assert not is_host_image("BAD NAME", ["docker.io/*"])


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("busybox", "Always"),
        ("busybox:latest", "Always"),
        ("busybox:1.36", "IfNotPresent"),
        (f"busybox@{DIGEST}", "IfNotPresent"),
        (f"busybox:latest@{DIGEST}", "Always"),
        ("localhost:5000/app", "Always"),
        ("localhost:5000/app:v1", "IfNotPresent"),
    ],
)
def test_pull_policy_defaults_as_kubelet(image: str, policy: str) -> None:
    assert default_pull_policy(image) == policy


def test_docker_hub_is_served_from_registry_1() -> None:
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("127.0.0.1:5000") == "127.0.0.1:5000"
