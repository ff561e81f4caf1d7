"""The /containerLogs reader: kubelet's query decoding and validation, its run choice, and
byte-exact output of real CRI log files over a real HTTP connection."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from nodelet.logs.reader import timestamp_ns
from nodelet.server import containerlogs
from nodelet.server.containerlogs import LogOptions, LogRequestError, parse_options

pytestmark = pytest.mark.unit

LINES = [
    b"2026-01-01T00:00:01.000000000Z stdout F one",
    b"2026-01-01T00:00:02.500000000Z stderr F two",
    b"2026-01-01T00:00:03.000000000Z stdout P thr",
    b"2026-01-01T00:00:03.100000000Z stdout F ee",
    b"2026-01-01T00:00:04.000000000Z stdout F four",
]


def write_run(directory: Path, attempt: int = 0, lines: list[bytes] = LINES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{attempt}.log"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def read(path: Path, **options: object) -> bytes:
    found = containerlogs.messages(path, LogOptions(**options), threading.Event(), 0)  # type: ignore[arg-type]
    return b"".join(containerlogs.render(m, bool(options.get("timestamps"))) for m in found)


# -- query -----------------------------------------------------------------------------------


def test_query_decodes_as_kubelet() -> None:
    options = parse_options(
        {"follow": [""], "previous": ["FALSE"], "timestamps": ["1"], "tailLines": ["+3"]}
    )
    assert (options.follow, options.previous, options.timestamps) == (True, False, True)
    assert options.tail_lines == 3
    assert parse_options({"tail": ["5"]}).tail_lines == 5
    assert parse_options({"tail": ["all"], "tailLines": ["2"]}).tail_lines is None
    assert parse_options({"sinceTime": ["2026-01-01T00:00:02+00:00"]}).since_time_ns == (
        timestamp_ns("2026-01-01T00:00:02Z")
    )


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"tailLines": ["x"]}, 400),
        ({"tailLines": [" 3"]}, 400),
        ({"limitBytes": ["9223372036854775808"]}, 400),
        ({"sinceTime": ["yesterday"]}, 400),
        ({"tailLines": ["-1"]}, 422),
        ({"limitBytes": ["0"]}, 422),
        ({"sinceSeconds": ["0"]}, 422),
        ({"sinceSeconds": ["5"], "sinceTime": ["2026-01-01T00:00:00Z"]}, 422),
        ({"stream": ["Stdin"]}, 422),
        ({"stream": ["Stdout"], "tailLines": ["1"]}, 422),
    ],
)
def test_query_refusals(query: dict[str, list[str]], status: int) -> None:
    with pytest.raises(LogRequestError) as caught:
        parse_options(query)
    assert caught.value.status == status
    body = '{"message": "Unable to decode query."}' if status == 400 else None
    assert caught.value.text == (body or '{"message": "Invalid request."}')


def test_since_is_the_later_of_seconds_and_time() -> None:
    now = 1_000 * 10**9
    assert LogOptions(since_seconds=10).since_ns(now) == 990 * 10**9
    assert LogOptions(since_time_ns=5).since_ns(now) == 5
    assert LogOptions().since_ns(now) is None


# -- which run -------------------------------------------------------------------------------


def status(state: dict[str, object], last: dict[str, object] | None = None) -> dict[str, object]:
    entry = {"name": "c", "state": state, "lastState": {"terminated": last} if last else {}}
    return {"containerStatuses": [entry], "initContainerStatuses": []}


def test_run_choice_follows_kubelet() -> None:
    running = status({"running": {}}, {"containerID": "nodelet://u/c/1"})
    running["containerStatuses"][0]["containerID"] = "nodelet://u/c/2"  # type: ignore[index]
    assert containerlogs.chosen_run(running, "p", "c", False) == (2, True)
    assert containerlogs.chosen_run(running, "p", "c", True) == (1, False)
    backoff = status({"waiting": {"reason": "CrashLoopBackOff"}}, {"containerID": "x://u/c/4"})
    assert containerlogs.chosen_run(backoff, "p", "c", False) == (4, False)
    done = status({"terminated": {"containerID": "x://u/c/0"}})
    assert containerlogs.chosen_run(done, "p", "c", False) == (0, False)


@pytest.mark.parametrize(
    ("pod_status", "previous", "message"),
    [
        (status({"running": {}}), True, 'previous terminated container "c" in pod "p" not found'),
        (
            status({"waiting": {"reason": "ContainerCreating"}}),
            False,
            'container "c" in pod "p" is waiting to start: ContainerCreating',
        ),
        ({"containerStatuses": []}, False, 'container "c" in pod "p" is not available'),
    ],
)
def test_run_choice_refusals(pod_status: dict[str, object], previous: bool, message: str) -> None:
    with pytest.raises(LogRequestError) as caught:
        containerlogs.chosen_run(pod_status, "p", "c", previous)
    assert (caught.value.status, caught.value.text) == (400, message)


# -- reading ---------------------------------------------------------------------------------


def test_every_option_on_real_files(tmp_path: Path) -> None:
    path = write_run(tmp_path / "c")
    assert read(path) == b"one\ntwo\nthree\nfour\n"
    assert read(path, tail_lines=2) == b"three\nfour\n"
    assert read(path, tail_lines=0) == b""
    assert read(path, stream="Stderr") == b"two\n"
    assert read(path, stream="Stdout") == b"one\nthree\nfour\n"
    assert read(path, since_time_ns=timestamp_ns("2026-01-01T00:00:02.5Z")) == (
        b"two\nthree\nfour\n"
    )
    assert read(path, timestamps=True, tail_lines=1) == (b"2026-01-01T00:00:04Z four\n")
    assert read(path, timestamps=True, stream="Stderr") == b"2026-01-01T00:00:02.5Z two\n"


def test_follow_ends_at_stop_and_never_enters_the_next_run(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    path = write_run(directory, 0, LINES[:2])
    stop = threading.Event()
    got: list[bytes] = []
    found = containerlogs.messages(path, LogOptions(follow=True), stop, 0)
    reader = threading.Thread(target=lambda: got.extend(m.render() for m in found))
    reader.start()
    time.sleep(0.4)
    with path.open("ab") as file:
        file.write(b"2026-01-01T00:00:05.000000000Z stdout F last of run 0\n")
    write_run(directory, 1, [b"2026-01-01T00:00:06.000000000Z stdout F run 1\n"])
    time.sleep(0.6)
    stop.set()
    reader.join(5)
    assert not reader.is_alive()
    assert got == [b"one\n", b"two\n", b"last of run 0\n"]


# -- over HTTP -------------------------------------------------------------------------------


async def serve(path: Path, options: LogOptions, running: threading.Event) -> web.AppRunner:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await containerlogs.stream(request, path, options, running.is_set)

    app = web.Application()
    app.router.add_get("/logs", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def port_of(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


async def test_limit_bytes_cuts_mid_line_with_timestamps(tmp_path: Path) -> None:
    path = write_run(tmp_path / "c")
    runner = await serve(path, LogOptions(limit_bytes=30, timestamps=True), threading.Event())
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port_of(runner)}/logs"
            async with session.get(url) as response:
                assert response.status == 200
                assert await response.read() == b"2026-01-01T00:00:01Z one\n2026-"
    finally:
        await runner.cleanup()


async def test_follow_streams_new_lines_and_ends_with_the_run(tmp_path: Path) -> None:
    path = write_run(tmp_path / "c", 0, LINES[:1])
    running = threading.Event()
    running.set()
    runner = await serve(path, LogOptions(follow=True), running)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port_of(runner)}/logs"
            async with session.get(url) as response:
                assert await response.content.readline() == b"one\n"
                with path.open("ab") as file:
                    file.write(b"2026-01-01T00:00:09.000000000Z stdout F new\n")
                line = await asyncio.wait_for(response.content.readline(), 3)
                assert line == b"new\n"
                running.clear()
                assert await asyncio.wait_for(response.read(), 5) == b""
    finally:
        await runner.cleanup()


async def test_a_client_that_leaves_ends_the_reader(tmp_path: Path) -> None:
    path = write_run(tmp_path / "c", 0, LINES[:1])
    running = threading.Event()
    running.set()
    before = {t.name for t in threading.enumerate()}
    runner = await serve(path, LogOptions(follow=True), running)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port_of(runner)}/logs"
            async with session.get(url) as response:
                assert await response.content.readline() == b"one\n"
        for _ in range(40):
            if not any(t.name == "containerLogs" for t in threading.enumerate()):
                break
            await asyncio.sleep(0.1)
        assert "containerLogs" not in {t.name for t in threading.enumerate()} - before
    finally:
        await runner.cleanup()
