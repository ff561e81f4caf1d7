"""Layer unpacking against hostile tars, and overlay's on-disk form for whiteouts, devices,
modes, owners, mtimes and xattrs. Each test unpacks into its own tmp dir (as root: devices,
owners and trusted.* xattrs need it) and checks that nothing appeared beside it."""

import gzip
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from nodelet.image.unpack import UnsafeLayerError, unpack_layer
from tests.imagebuild import entry, file_entry, require_binary, sha, tar_bytes

pytestmark = pytest.mark.unit

Entries = list[tuple[tarfile.TarInfo, bytes | None]]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(layer dir, a dir beside it that hostile entries aim at)."""
    layer, outside = tmp_path / "layer", tmp_path / "outside"
    layer.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("original")
    return layer, outside


def unpack(data: bytes, dest: Path, diff_id: str | None = None) -> None:
    unpack_layer(io.BytesIO(data), str(dest), diff_id)


def assert_outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([file_entry("../outside/x", b"evil")], "'..' in the path"),
        ([file_entry("a/../../outside/x", b"evil")], "'..' in the path"),
        ([file_entry("/etc/nlt-evil", b"evil")], "absolute path"),
        (
            [
                (entry("link", tarfile.SYMTYPE, linkname="../outside"), None),
                file_entry("link/x", b"evil"),
            ],
            "'link' is a symlink",
        ),
        (
            [
                (entry("d", tarfile.DIRTYPE), None),
                (entry("d/link", tarfile.SYMTYPE, linkname="/"), None),
                file_entry("d/link/etc/nlt-evil", b"evil"),
            ],
            "'link' is a symlink",
        ),
        (
            [(entry("hl", tarfile.LNKTYPE, linkname="../outside/victim"), None)],
            "'..' in the path",
        ),
        (
            [(entry("hl", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
            "absolute path",
        ),
        (
            [
                (entry("s", tarfile.SYMTYPE, linkname="../outside"), None),
                (entry("hl", tarfile.LNKTYPE, linkname="s/victim"), None),
            ],
            "'s' is a symlink",
        ),
        (
            [(entry("hl", tarfile.LNKTYPE, linkname="not-here"), None)],
            "not in this layer",
        ),
        ([file_entry("etc/.wh..", b"")], "bad whiteout"),
    ],
    ids=[
        "dotdot",
        "dotdot-inner",
        "absolute",
        "symlink-parent-relative",
        "symlink-parent-root",
        "hardlink-dotdot",
        "hardlink-absolute",
        "hardlink-through-symlink",
        "hardlink-missing",
        "whiteout-dotdot",
    ],
)
def test_hostile_entries_refused_and_nothing_written_outside(
    dirs: tuple[Path, Path], entries: Entries, message: str
) -> None:
    layer, outside = dirs
    with pytest.raises(UnsafeLayerError, match=message):
        unpack(tar_bytes(entries), layer)
    escaped = Path("/etc/nlt-evil")
    wrote_host_etc = escaped.exists()
    escaped.unlink(missing_ok=True)  # cleaned up even when the unpacker is broken
    assert not wrote_host_etc
    assert_outside_untouched(outside)


def test_a_file_over_a_planted_symlink_replaces_the_link(dirs: tuple[Path, Path]) -> None:
    """tar's last entry wins: the file takes the symlink's place, the link's target is not
    written through."""
    layer, outside = dirs
    entries: Entries = [
        (entry("f", tarfile.SYMTYPE, linkname="../outside/victim"), None),
        file_entry("f", b"inside"),
    ]
    unpack(tar_bytes(entries), layer)
    assert not (layer / "f").is_symlink()
    assert (layer / "f").read_bytes() == b"inside"
    assert_outside_untouched(outside)


def test_symlinks_are_kept_as_written_not_followed(dirs: tuple[Path, Path]) -> None:
    layer, outside = dirs
    entries: Entries = [
        (entry("abs", tarfile.SYMTYPE, linkname="/etc/passwd", uid=7, gid=8), None),
        (entry("rel", tarfile.SYMTYPE, linkname="../../outside/victim"), None),
    ]
    unpack(tar_bytes(entries), layer)
    assert os.readlink(layer / "abs") == "/etc/passwd"
    assert os.readlink(layer / "rel") == "../../outside/victim"
    info = os.lstat(layer / "abs")
    assert (info.st_uid, info.st_gid, int(info.st_mtime)) == (7, 8, 1_700_000_000)
    assert_outside_untouched(outside)


def test_hard_links_inside_the_layer(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    entries: Entries = [
        (entry("bin", tarfile.DIRTYPE), None),
        file_entry("bin/tool", b"#!x", mode=0o755),
        (entry("bin/alias", tarfile.LNKTYPE, linkname="./bin/tool"), None),
    ]
    unpack(tar_bytes(entries), layer)
    assert os.stat(layer / "bin/alias").st_ino == os.stat(layer / "bin/tool").st_ino
    assert os.stat(layer / "bin/tool").st_nlink == 2


def test_whiteouts_become_overlay_whiteouts(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    entries: Entries = [
        (entry("etc", tarfile.DIRTYPE), None),
        file_entry("etc/.wh.motd", b""),
        (entry("var/cache", tarfile.DIRTYPE), None),
        file_entry("var/cache/.wh..wh..opq", b""),
        file_entry("var/cache/new", b"n"),
        file_entry("var/.wh..wh.plnk", b""),
    ]
    unpack(tar_bytes(entries), layer)
    info = os.lstat(layer / "etc/motd")
    assert stat.S_ISCHR(info.st_mode)
    assert os.major(info.st_rdev) == 0
    assert os.minor(info.st_rdev) == 0
    assert not (layer / "etc/.wh.motd").exists()
    assert os.getxattr(layer / "var/cache", "trusted.overlay.opaque") == b"y"
    assert not (layer / "var/cache/.wh..wh..opq").exists()
    assert (layer / "var/cache/new").read_bytes() == b"n"
    assert sorted(os.listdir(layer / "var")) == ["cache"]  # aufs bookkeeping dropped


def test_whiteout_of_an_earlier_entry_replaces_it(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    entries: Entries = [
        (entry("d", tarfile.DIRTYPE), None),
        file_entry("d/inner", b"x"),
        file_entry(".wh.d", b""),
    ]
    unpack(tar_bytes(entries), layer)
    assert stat.S_ISCHR(os.lstat(layer / "d").st_mode)


def test_devices_modes_owners_mtimes_and_xattrs_kept(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    suid = entry("bin/su", mode=0o4755, uid=0, gid=0)
    suid.size = 2
    owned = entry("home/app/data", mode=0o640, uid=1000, gid=1001, mtime=1_600_000_000)
    owned.size = 1
    capped = entry("bin/ping", mode=0o755)
    capped.size = 1
    capped.pax_headers = {
        "SCHILY.xattr.user.nlt": "kept",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
    }
    entries: Entries = [
        (entry("dev", tarfile.DIRTYPE, mode=0o755, mtime=1_500_000_000), None),
        (entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
        (entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0, gid=6), None),
        (entry("dev/fifo", tarfile.FIFOTYPE, mode=0o620), None),
        (entry("bin", tarfile.DIRTYPE), None),
        (suid, b"su"),
        (capped, b"p"),
        (entry("home/app", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1001), None),
        (owned, b"d"),
        (entry("tmp", tarfile.DIRTYPE, mode=0o1777), None),
    ]
    unpack(tar_bytes(entries), layer)
    null = os.lstat(layer / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(layer / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode)
    assert (os.major(loop.st_rdev), loop.st_gid, stat.S_IMODE(loop.st_mode)) == (7, 6, 0o660)
    assert stat.S_ISFIFO(os.lstat(layer / "dev/fifo").st_mode)
    assert stat.S_IMODE(os.stat(layer / "bin/su").st_mode) == 0o4755
    data = os.stat(layer / "home/app/data")
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (1000, 1001, 0o640)
    assert int(data.st_mtime) == 1_600_000_000
    home = os.stat(layer / "home/app")
    assert (home.st_uid, stat.S_IMODE(home.st_mode)) == (1000, 0o700)
    assert stat.S_IMODE(os.stat(layer / "tmp").st_mode) == 0o1777
    # a dir's mtime is set after its children were made
    assert int(os.stat(layer / "dev").st_mtime) == 1_500_000_000
    assert os.getxattr(layer / "bin/ping", "user.nlt") == b"kept"
    assert "trusted.overlay.redirect" not in os.listxattr(layer / "bin/ping")
    # an implied parent (home/ has no entry) is made 0755 root, as tar does
    assert stat.S_IMODE(os.stat(layer / "home").st_mode) == 0o755


def test_diff_id_checked_on_the_uncompressed_stream(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    data = tar_bytes([file_entry("a", b"a")])
    unpack(gzip.compress(data), layer, sha(data))
    assert (layer / "a").read_bytes() == b"a"
    other = dirs[0].parent / "other"
    other.mkdir()
    with pytest.raises(UnsafeLayerError, match="its config says"):
        unpack(data, other, sha(b"something else"))


def test_zstd_layers(dirs: tuple[Path, Path]) -> None:
    zstd = require_binary("zstd", "zstd")
    layer, _ = dirs
    data = tar_bytes([file_entry("z/file", b"zstd works")])
    packed = subprocess.run([zstd, "-q", "-c"], input=data, capture_output=True, check=True)
    unpack(packed.stdout, layer, sha(data))
    assert (layer / "z/file").read_bytes() == b"zstd works"


def test_damaged_layers_refused(dirs: tuple[Path, Path]) -> None:
    layer, _ = dirs
    data = gzip.compress(tar_bytes([file_entry("big", b"x" * 100_000)]))
    with pytest.raises((UnsafeLayerError, EOFError, OSError)):
        unpack(data[: len(data) // 2], layer)
