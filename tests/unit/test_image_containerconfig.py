"""An image's config applied to a container: argv, env, working dir and user (pure rules), the
image's passwd/group read through its layer dirs (real dirs, real whiteouts), and the prepared
``ContainerConfig`` of a container on a stored image."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from nodelet.image.containerconfig import (
    DEFAULT_PATH,
    ImageConfigError,
    ImageUser,
    merge_env,
    process_args,
    resolve_user,
    user_is_numeric,
)
from nodelet.image.lookup import ImageInfo, read_image_file
from nodelet.image.manifest import ImageConfig, host_platform
from nodelet.image.reference import is_host_image
from nodelet.image.unpack import OPAQUE_XATTR
from nodelet.pod.containerprep import ContainerConfigError, build_container_config
from nodelet.runtime.api import UserNamespace
from tests.unit.test_containerprep import ctx, make_pod

pytestmark = pytest.mark.unit

ENTRYPOINT = ["/entry", "--flag"]
CMD = ["serve", "--port=80"]


@pytest.mark.parametrize(
    ("command", "args", "entrypoint", "cmd", "argv"),
    [
        ([], [], ENTRYPOINT, CMD, [*ENTRYPOINT, *CMD]),
        (["/bin/x"], [], ENTRYPOINT, CMD, ["/bin/x"]),  # command drops Cmd too
        (["/bin/x"], ["a"], ENTRYPOINT, CMD, ["/bin/x", "a"]),
        ([], ["a", "b"], ENTRYPOINT, CMD, [*ENTRYPOINT, "a", "b"]),
        ([], [], [], CMD, CMD),
        ([], ["a"], [], CMD, ["a"]),
        ([], [], ENTRYPOINT, [], ENTRYPOINT),
    ],
)
def test_command_and_args_against_entrypoint_and_cmd(
    command: list[str], args: list[str], entrypoint: list[str], cmd: list[str], argv: list[str]
) -> None:
    assert process_args(command, args, entrypoint, cmd) == argv


def test_nothing_to_run_is_an_error() -> None:
    with pytest.raises(ImageConfigError, match="no command specified"):
        process_args([], [], [], [])


def test_env_order_default_path_hostname_image_pod() -> None:
    env = merge_env("web", ["A=image", "B=image", "EMPTY=", "HOSTNAME=img", "=x"], {"B": "pod"})
    assert env == {"PATH": DEFAULT_PATH, "HOSTNAME": "img", "A": "image", "B": "pod", "EMPTY": ""}
    assert merge_env("web", ["PATH=/bin"], {})["PATH"] == "/bin"
    assert "PATH" not in merge_env("web", ["PATH"], {})  # a bare name unsets it


PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\nbad:x:abc:1::/:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:app\n"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ImageUser(0, None)),
        ("1000", ImageUser(1000, None)),
        ("4242", ImageUser(4242, None)),  # a number needs no passwd entry
        ("1000:7", ImageUser(1000, 7)),
        ("app", ImageUser(1000, None)),  # the gid comes from passwd, later
        ("app:staff", ImageUser(1000, 50)),
        ("0:staff", ImageUser(0, 50)),
    ],
)
def test_user_forms(user: str, expected: ImageUser) -> None:
    assert resolve_user(user, PASSWD, GROUP) == expected


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("nobody", "unable to find user nobody"),
        ("bad", "unable to find user bad"),
        ("app:wheel", "unable to find group wheel"),
        (":staff", "a group without a user"),
    ],
)
def test_user_that_cannot_be_resolved(user: str, message: str) -> None:
    with pytest.raises(ImageConfigError, match=message):
        resolve_user(user, PASSWD, GROUP)


def test_only_numeric_users_can_be_checked_for_root() -> None:
    assert user_is_numeric("") and user_is_numeric("1000") and user_is_numeric("1000:app")
    assert not user_is_numeric("app") and not user_is_numeric("app:1")


# --- files read through the layers -----------------------------------------------------------


def layer(root: Path, name: str, files: dict[str, str | None]) -> str:
    """A layer dir in overlay form: None is a whiteout (a 0/0 char device), "<opaque>" an
    opaque dir."""
    path = root / name
    path.mkdir()
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            os.mknod(target, 0o020000, os.makedev(0, 0))
        elif content == "<opaque>":
            target.mkdir(exist_ok=True)
            os.setxattr(target, OPAQUE_XATTR, b"y")
        else:
            target.write_text(content)
    return str(path)


def test_top_layer_wins_and_whiteouts_hide(tmp_path: Path) -> None:
    base = layer(tmp_path, "base", {"etc/passwd": "base", "etc/group": "base", "etc/motd": "m"})
    top = layer(tmp_path, "top", {"etc/passwd": "top", "etc/group": None})
    assert read_image_file([top, base], "/etc/passwd") == "top"
    assert read_image_file([top, base], "/etc/group") is None
    assert read_image_file([top, base], "/etc/motd") == "m"
    assert read_image_file([base], "/etc/group") == "base"
    assert read_image_file([top, base], "/etc/../etc/passwd") is None


def test_opaque_dir_and_whited_out_parent_hide_lower_layers(tmp_path: Path) -> None:
    base = layer(tmp_path, "base", {"etc/passwd": "base", "etc/group": "base"})
    opaque = layer(tmp_path, "opaque", {"etc": "<opaque>", "etc/group": "mine"})
    assert read_image_file([opaque, base], "/etc/passwd") is None
    assert read_image_file([opaque, base], "/etc/group") == "mine"
    gone = layer(tmp_path, "gone", {"etc": None})
    assert read_image_file([gone, base], "/etc/passwd") is None


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("host secret")
    top = layer(tmp_path, "top", {})
    (Path(top) / "etc").mkdir()
    (Path(top) / "etc" / "passwd").symlink_to(outside)
    os.symlink(str(tmp_path), Path(top) / "lib")
    assert read_image_file([top], "/etc/passwd") is None
    assert read_image_file([top], "/lib/secret") is None


# --- a container on a stored image ----------------------------------------------------------


def image_info(tmp_path: Path, **config: Any) -> ImageInfo:
    base = str(tmp_path / "l0")
    if not os.path.isdir(base):
        layer(tmp_path, "l0", {"etc/passwd": PASSWD, "etc/group": GROUP})
    fields: dict[str, Any] = {
        "entrypoint": ("/bin/sh", "-c"), "cmd": ("echo $GREETING",), "env": ("GREETING=hi",),
        "working_dir": "/srv", "user": "app", "diff_ids": (), "platform": host_platform(),
        "created": "",
    }  # fmt: skip
    fields.update(config)
    return ImageInfo("nlt/img:1", "sha256:" + "a" * 64, None, ImageConfig(**fields), (base,))


def build(tmp_path: Path, container: dict[str, Any], info: ImageInfo, **pod: Any) -> Any:
    context = dataclasses.replace(
        ctx(make_pod(**pod)),
        images=lambda ref: info if ref == "nlt/img:1" else None,
        pod_dir=tmp_path / "pod",
    )
    return build_container_config(context, {"image": "nlt/img:1", **container}, 3)


def test_stored_image_container_config(tmp_path: Path) -> None:
    info = image_info(tmp_path)
    container = {"name": "app", "env": [{"name": "X", "value": "$(GREETING)-x"}]}
    config = build(tmp_path, container, info, hostIPC=False)
    assert config.argv == ["/bin/sh", "-c", "echo $GREETING"]
    # $(VAR) expands only what the pod defines (kubelet's rule), not the image's Env.
    expected = {"PATH": DEFAULT_PATH, "HOSTNAME": "web-n1", "GREETING": "hi", "X": "$(GREETING)-x"}
    assert config.env == expected
    assert config.working_dir == "/srv"
    # "app" from the image's passwd; its primary group 1001 and its staff membership.
    assert (config.run_as_user, config.run_as_group) == (1000, 1001)
    assert 50 in config.supplemental_groups
    assert config.rootfs is not None
    assert config.rootfs.lower == info.layers
    assert config.rootfs.upper == str(tmp_path / "pod" / "containers" / "app" / "3" / "upper")
    assert config.rootfs.work == str(tmp_path / "pod" / "containers" / "app" / "3" / "work")
    assert (config.rootfs.shm, config.rootfs.shm_tmpfs) == (str(tmp_path / "pod" / "shm"), True)
    host_ipc = build(tmp_path, {"name": "app"}, info, hostIPC=True)
    assert host_ipc.rootfs is not None
    assert (host_ipc.rootfs.shm, host_ipc.rootfs.shm_tmpfs) == ("/dev/shm", False)


def test_run_as_user_and_group_win_over_the_image_user(tmp_path: Path) -> None:
    info = image_info(tmp_path, user="app:staff")
    image_user = build(tmp_path, {"name": "app"}, info)
    assert (image_user.run_as_user, image_user.run_as_group) == (1000, 50)
    pod_user = build(tmp_path, {"name": "app"}, info, securityContext={"runAsUser": 0})
    assert (pod_user.run_as_user, pod_user.run_as_group) == (0, 0)
    group = build(tmp_path, {"name": "app", "securityContext": {"runAsGroup": 9}}, info)
    assert (group.run_as_user, group.run_as_group) == (1000, 9)


def test_run_as_non_root_against_the_image_user(tmp_path: Path) -> None:
    non_root = {"name": "app", "securityContext": {"runAsNonRoot": True}}
    with pytest.raises(ContainerConfigError, match=r"image has non-numeric user \(app\)"):
        build(tmp_path, non_root, image_info(tmp_path))
    with pytest.raises(ContainerConfigError, match="image will run as root"):
        build(tmp_path, non_root, image_info(tmp_path, user="0"))
    assert build(tmp_path, non_root, image_info(tmp_path, user="1000")).run_as_user == 1000


def test_image_errors_are_container_errors(tmp_path: Path) -> None:
    with pytest.raises(ContainerConfigError, match="no command specified"):
        build(tmp_path, {"name": "app"}, image_info(tmp_path, entrypoint=(), cmd=()))
    with pytest.raises(ContainerConfigError, match="unable to find user nobody"):
        build(tmp_path, {"name": "app"}, image_info(tmp_path, user="nobody"))
    context = dataclasses.replace(ctx(make_pod()), pod_dir=tmp_path)
    with pytest.raises(ContainerConfigError, match='Container image "other:1" is not present'):
        build_container_config(context, {"name": "app", "image": "other:1"}, 0)


def test_host_users_false_runs_an_image_root_in_the_pods_user_namespace(tmp_path: Path) -> None:
    info = image_info(tmp_path)
    context = dataclasses.replace(
        ctx(make_pod(hostUsers=False)),
        images=lambda _ref: info,
        pod_dir=tmp_path / "pod",
        user_namespace=UserNamespace(65536, 65536),
    )
    config = build_container_config(context, {"name": "app", "image": "nlt/img:1"}, 0)
    assert config.user_namespace == UserNamespace(65536, 65536)
    assert config.rootfs is not None and config.rootfs.lower == info.layers
    assert not config.rootfs.host


def test_host_images_run_on_the_host(tmp_path: Path) -> None:
    globs = ("registry.k8s.io/etcd:*",)
    context = dataclasses.replace(
        ctx(make_pod()), is_host_image=lambda image: is_host_image(image, globs)
    )
    container = {"name": "etcd", "image": "registry.k8s.io/etcd:3.5", "command": ["etcd"]}
    config = build_container_config(context, container, 0)
    assert config.rootfs is None and config.argv == ["etcd"]
