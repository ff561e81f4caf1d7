"""The remote command protocol's pieces: kubelet's query options, the Status JSON on the error
channel, resize decoding, protocol negotiation and port checks."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import MultiDict

from nodelet.server import portforward, remotecommand
from nodelet.server.containerexec import Outcome
from nodelet.server.remotecommand import Options, StreamRequestError

pytestmark = pytest.mark.unit


def options(query: str) -> Options:
    pairs = [part.partition("=") for part in query.split("&") if part]
    return Options.from_query(MultiDict((k, v) for k, _, v in pairs), need_command=True)


def test_options_as_the_api_server_sends_them() -> None:
    got = options("command=sh&command=-c&command=exit+3&input=1&output=1&error=1")
    assert got == Options(("sh", "-c", "exit+3"), True, True, True, False)
    assert got.streams() == {"error", "stdin", "stdout", "stderr"}
    tty = options("command=sh&input=1&output=1&error=1&tty=1")
    assert (tty.stderr, tty.streams()) == (False, {"error", "stdin", "stdout", "resize"})
    assert options("command=true&output=true").stdout  # PodExecOptions' spelling too
    assert not options("command=true&output=1&input=0").stdin


def test_option_refusals_in_kubelets_words() -> None:
    with pytest.raises(StreamRequestError, match="at least 1 of stdin, stdout, stderr"):
        options("command=true")
    with pytest.raises(StreamRequestError, match="you must specify a command"):
        options("output=1")
    attach = Options.from_query(MultiDict([("output", "1")]), need_command=False)
    assert attach.command == ()


def test_status_json_as_kubelet_writes_it() -> None:
    assert remotecommand.status_of(["true"], Outcome(0)) == {"metadata": {}, "status": "Success"}
    failed = remotecommand.status_of(["sh", "-c", "exit 3"], Outcome(3))
    assert failed == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: error executing command "
        "[sh -c exit 3], exit code 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    broken = remotecommand.status_of(["x"], Outcome(127, "exec: x: not found"))
    assert broken["reason"] == "InternalError" and broken["code"] == 500
    assert broken["message"] == (
        "Internal error occurred: error executing command in container: "
        "failed to exec in container: exec: x: not found"
    )
    assert json.loads(json.dumps(broken)) == broken


def test_resize_stream_decoding_across_chunks() -> None:
    decoder = remotecommand.ResizeDecoder()
    assert decoder.feed('{"Width":80,') == []
    assert decoder.feed('"Height":24}{"Width":1') == [(80, 24)]
    assert decoder.feed('00,"Height":30}\n{"bogus":1}') == [(100, 30), (0, 0)]


def test_protocol_negotiation() -> None:
    def ask(*versions: str) -> str:
        headers = [("X-Stream-Protocol-Version", v) for v in versions]
        request = make_mocked_request("POST", "/exec", headers=headers)
        return remotecommand.negotiate(request, ("v4.channel.k8s.io",))

    assert ask("v5.channel.k8s.io", "v4.channel.k8s.io") == "v4.channel.k8s.io"
    with pytest.raises(StreamRequestError) as refused:
        ask("v3.channel.k8s.io")
    assert refused.value.status == 403
    assert str(refused.value) == (
        "unable to upgrade: unable to negotiate protocol: client supports "
        "[v3.channel.k8s.io], server accepts [v4.channel.k8s.io]"
    )
    with pytest.raises(StreamRequestError, match="is required") as missing:
        ask()
    assert missing.value.status == 400


def test_port_checks() -> None:
    assert portforward.port_of("8080") == 8080
    for bad, text in (("x", 'unable to parse "x" as a port'), ("0", 'port "0" must be > 0')):
        with pytest.raises(StreamRequestError, match=text):
            portforward.port_of(bad)
