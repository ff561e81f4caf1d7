"""``nodelet image import|ls|inspect|rm|prune|pull``: the node's image store, with or without a
running agent (both take the store's writer lock), so an operator can preload images before the
first start on an air-gapped node."""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from nodelet.config import AgentConfig
from nodelet.image import progress
from nodelet.image.progress import PullProgress
from nodelet.image.reference import InvalidImageNameError
from nodelet.image.store import ImageRecord, ImageStore, ImageStoreError
from nodelet.image.unpack import UnsafeLayerError


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="image_command", required=True)

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=help_text)
        sub.add_argument(
            "--root-dir",
            type=Path,
            default=AgentConfig.root_dir,
            help="the agent's root dir; images live in its images/ (default: %(default)s)",
        )
        return sub

    imp = verb("import", "import a docker-archive or an OCI layout (dir or tar)")
    imp.add_argument("file", help="the archive, its dir, or - for standard input")
    imp.add_argument(
        "--repo", help="repository for OCI images named only by a tag (ref.name '1' → REPO:1)"
    )
    ls = verb("ls", "list stored images")
    ls.add_argument("-q", "--quiet", action="store_true", help="image IDs only")
    ls.add_argument("-o", "--output", choices=["json"], help="output format")
    inspect = verb("inspect", "an image's IDs, config and layers, as JSON")
    inspect.add_argument("image", help="name, digest or ID prefix")
    rm = verb("rm", "remove image names; content no name needs goes with them")
    rm.add_argument("images", nargs="+", help="names, digests or ID prefixes")
    verb("prune", "remove blobs and layers no image name needs, and interrupted writes")
    pull = verb("pull", "pull an image from a registry")
    pull.add_argument("image")
    pull.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a registry that may be reached over plain HTTP (loopback always may)",
    )
    pull.add_argument(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="REGISTRY=URL",
        help="a mirror tried before the registry, in the order given (docker.io=https://m:5000)",
    )
    pull.add_argument("--ca-file", type=Path, help="extra CA bundle for the registry's TLS")
    pull.add_argument(
        "--auth-file",
        type=Path,
        help="docker-style config.json with credentials (default: ROOT_DIR/config.json)",
    )


def image_command(args: argparse.Namespace) -> int:
    store = ImageStore(args.root_dir)
    verb: str = args.image_command
    try:
        if verb == "import":
            return _import(store, args)
        if verb == "ls":
            return _ls(store, args)
        if verb == "inspect":
            return _inspect(store, args)
        if verb == "rm":
            return _rm(store, args)
        if verb == "prune":
            return _prune(store)
        return _pull(store, args)
    except (ImageStoreError, UnsafeLayerError, InvalidImageNameError, ValueError) as error:
        print(f"nodelet image {verb}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"nodelet image {verb}: {error}", file=sys.stderr)
        return 1


def _waiting() -> None:
    print("waiting for another writer of the image store (agent or CLI)...", file=sys.stderr)


def _import(store: ImageStore, args: argparse.Namespace) -> int:
    from nodelet.image.archive import import_archive

    with store.writer(_waiting):
        if args.file == "-":
            # Spooled under tmp/ (cleared by the next writer if this one dies): a tar needs
            # random access, and standard input has none.
            path = store.temp_path("stdin")
            with open(path, "xb") as out:
                stdin = cast(io.BufferedReader, sys.stdin.buffer)
                while chunk := stdin.read1(1 << 20):
                    out.write(chunk)
        else:
            path = Path(args.file)
            if not path.exists():
                raise ImageStoreError(f"{path}: no such file or dir")
        try:
            records = import_archive(store, path, args.repo)
        finally:
            if args.file == "-":
                path.unlink()
    for record in records:
        names = sorted(n for n, r in store.records().items() if r.manifest == record.manifest)
        print(f"imported {', '.join(names)} ({record.config})")
    return 0


def _ls(store: ImageStore, args: argparse.Namespace) -> int:
    records = store.records()
    if args.quiet:
        for config in sorted({r.config for r in records.values()}):
            print(config)
        return 0
    if args.output == "json":
        rows = [_row(store, r) for r in records.values()]
        print(json.dumps({"images": rows}, indent=2))
        return 0
    table = [("IMAGE", "TAG", "IMAGE ID", "SIZE")]
    for record in records.values():
        name, _, tag = record.name.rpartition(":")
        if "/" in tag:  # a port, not a tag: the name has none
            name, tag = record.name, "<none>"
        table.append((name, tag, record.config[7:20], _human(store.image_size(record))))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _row(store: ImageStore, record: ImageRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "id": record.config,
        "digest": record.digest,
        "manifest": record.manifest,
        "size": store.image_size(record),
    }


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{size}B"


def _one(store: ImageStore, text: str) -> ImageRecord:
    found = store.resolve(text)
    if not found:
        raise ImageStoreError(f"no image {text!r} in {store.base}")
    if len({r.config for r in found}) > 1:
        raise ImageStoreError(f"{text!r} names more than one image; give more of the ID")
    return found[0]


def _inspect(store: ImageStore, args: argparse.Namespace) -> int:
    print(json.dumps(store.inspect(_one(store, args.image)), indent=2))
    return 0


def _rm(store: ImageStore, args: argparse.Namespace) -> int:
    with store.writer(_waiting):
        names: list[str] = []
        for text in args.images:
            _one(store, text)  # exists, and one image
            names.extend(r.name for r in store.resolve(text))  # a name, or every name of an ID
        store.remove(names)
        _blobs, layers, freed = store.prune()
    for name in names:
        print(f"untagged {name}")
    print(f"removed {layers} layers, {_human(freed)} freed")
    return 0


def _prune(store: ImageStore) -> int:
    with store.writer(_waiting):
        blobs, layers, freed = store.prune()
    print(f"removed {blobs} blobs and {layers} layers, {_human(freed)} freed")
    return 0


def _terminal_progress(name: str) -> PullProgress:
    """A bar redrawn in place on a terminal; a plain line every 2 s when stderr is not one
    (no carriage returns in a log file)."""
    if sys.stderr.isatty():
        return PullProgress(
            name,
            lambda line: print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True),
            progress.REDRAW_SECONDS,
            progress.bar_line,
        )
    return PullProgress(
        name,
        lambda line: print(line, file=sys.stderr, flush=True),
        progress.LINE_SECONDS,
        lambda name, done, total, _rate: progress.plain_line(name, done, total),
    )


def _pull(store: ImageStore, args: argparse.Namespace) -> int:
    from nodelet.image.reference import parse
    from nodelet.image.registry import (
        RegistryOptions,
        certs_dir_of,
        load_docker_config,
        mirror_problem,
        parse_mirrors,
        pull,
    )

    name = str(parse(args.image))
    auth_file = args.auth_file or args.root_dir / "config.json"
    mirrors = parse_mirrors(args.registry_mirror)
    insecure = tuple(args.insecure_registry)
    for registry, urls in mirrors.items():
        for url in urls:
            if why := mirror_problem(registry, url, insecure):
                raise ValueError(f"--registry-mirror {why}")
    options = RegistryOptions(
        insecure=insecure,
        ca_file=args.ca_file,
        certs_dir=certs_dir_of(args.root_dir),
        credentials=load_docker_config(auth_file),
        mirrors=mirrors,
    )
    shown = _terminal_progress(name)
    started = time.monotonic()
    with store.writer(_waiting):
        record = pull(store, name, options, shown)
    shown.finish()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    took = time.monotonic() - started
    print(f"pulled {name} ({record.config}), {_human(shown.done)} in {took:.1f}s")
    return 0
