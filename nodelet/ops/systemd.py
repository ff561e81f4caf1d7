"""What the agent tells systemd (``Type=notify``): READY=1, STATUS=, STOPPING=1 and WATCHDOG=1.

- READY=1 once the pods of the previous agent are re-adopted and the manifest dir was read
  completely, so ``systemctl start`` returns when the node's static pods are known. A file kept
  open by a writer keeps the read incomplete; READY=1 then goes out ``READY_AT_THE_LATEST``
  after the first read anyway (the start timeout must not kill an agent that runs every other
  pod), its STATUS saying the read is incomplete.
- STATUS= follows the pod and rejection counts, at most once per ``STATUS_MIN_INTERVAL``.
- WATCHDOG=1 every half ``WatchdogSec=``, sent by a task on the event loop and only while every
  health check passes (as kubelet's ``--systemd-watchdog`` pings only while its healthz checks
  pass): a wedged loop, a stale manifest source or a stuck pod worker stops the pings, and
  systemd restarts the agent (pods keep running: ``KillMode=process``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable

from nodelet.ops.health import Check
from nodelet.ops.notify import Notifier, NotifyEnv

log = logging.getLogger(__name__)

STATUS_MIN_INTERVAL = 1.0
READY_AT_THE_LATEST = 30.0
WEDGE_LIMIT_SECONDS = 600.0


class SystemdReporter:
    def __init__(
        self,
        env: NotifyEnv,
        status_text: Callable[[bool], str],
        checks: Callable[[], Iterable[Check]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``status_text(complete)`` is the STATUS= line; ``checks`` gate the watchdog."""
        self._notifier = Notifier(env.socket)
        self.watchdog_seconds = env.watchdog_seconds
        self._wedge_file = env.wedge_file
        self._status_text = status_text
        self._checks = checks
        self._clock = clock
        self._ready = False
        self._complete = False
        self._ready_timer: asyncio.TimerHandle | None = None
        self._status_timer: asyncio.TimerHandle | None = None
        self._status_sent: str | None = None
        self._status_at = float("-inf")

    def sources_read(self, complete: bool) -> None:
        """A full read of the manifest dir was applied; ``complete``: no file left unread."""
        self._complete = complete
        if self._ready:
            self.changed()
        elif complete:
            self._send_ready()
        elif self._ready_timer is None:
            loop = asyncio.get_running_loop()
            self._ready_timer = loop.call_later(READY_AT_THE_LATEST, self._send_ready)

    def _send_ready(self) -> None:
        if self._ready:
            return
        if self._ready_timer is not None:
            self._ready_timer.cancel()
            self._ready_timer = None
        self._ready = True
        text = self._status_text(self._complete)
        self._notifier.send("READY=1", f"STATUS={text}")
        self._status_sent, self._status_at = text, self._clock()
        log.info("ready: %s", text)

    def changed(self) -> None:
        """The counts may have changed: send STATUS= now, or once the rate limit allows."""
        if not self._notifier.enabled or self._status_timer is not None:
            return
        wait = self._status_at + STATUS_MIN_INTERVAL - self._clock()
        if wait <= 0:
            self._flush_status()
        else:
            self._status_timer = asyncio.get_running_loop().call_later(wait, self._flush_status)

    def _flush_status(self) -> None:
        self._status_timer = None
        text = self._status_text(self._complete)
        if text != self._status_sent and self._notifier.send(f"STATUS={text}"):
            self._status_sent, self._status_at = text, self._clock()

    def stopping(self) -> None:
        for timer in (self._ready_timer, self._status_timer):
            if timer is not None:
                timer.cancel()
        self._ready_timer = self._status_timer = None
        self._notifier.send("STOPPING=1", "STATUS=stopping; pods keep running")

    def close(self) -> None:
        self._notifier.close()

    async def heartbeat(self) -> None:
        """WATCHDOG=1 every half timeout while the checks pass; returns at once without a
        watchdog. Runs on the event loop, so a blocked loop sends nothing."""
        if self.watchdog_seconds is None or not self._notifier.enabled:
            return
        interval = self.watchdog_seconds / 2
        log.info("systemd watchdog: %.1fs, pinging every %.1fs", self.watchdog_seconds, interval)
        while True:
            self._test_wedge()
            failing = [check for check in self._checks() if not check.ok]
            if failing:
                why = "; ".join(f"{c.name}: {c.error}" for c in failing)
                log.error("not notifying the systemd watchdog, the agent is not healthy: %s", why)
            else:
                self._notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _test_wedge(self) -> None:
        """The test hook of ``NODELET_TEST_WEDGE_FILE``: block the loop while the file exists
        (bounded, so a forgotten file cannot hang an agent for good)."""
        if self._wedge_file is None or not os.path.exists(self._wedge_file):
            return
        log.warning("test hook: blocking the event loop while %s exists", self._wedge_file)
        deadline = self._clock() + WEDGE_LIMIT_SECONDS
        while os.path.exists(self._wedge_file) and self._clock() < deadline:
            time.sleep(0.05)
        log.warning("test hook: event loop released")
