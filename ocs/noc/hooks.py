"""Notification hooks (``[[noc.hooks]]``): run a command or POST a webhook for alarm
events, in the exporter process, off the intake path.

Each alarm-stream line the exporter writes is offered here. ``raise`` and ``flapping``
events go to hooks whose ``severities`` include the alarm's severity, ``clear`` events to
hooks that list ``cleared``; while an alarm is flapping its raises and clears are
suppressed (the ``flapping`` event itself is delivered once). A worker thread delivers
with retries and exponential back-off; delivery is at least once (a restarted exporter
may offer a line again), so receivers should key on ``seq``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

EVENTS = frozenset({"raise", "clear", "flapping"})


@dataclass(frozen=True, slots=True)
class Hook:
    severities: frozenset[str]
    command: str = ""
    url: str = ""
    retries: int = 3
    timeout_s: float = 5.0

    @classmethod
    def of(cls, d: dict[str, Any]) -> Hook:
        return cls(frozenset(d.get("severities", ())), d.get("command", ""), d.get("url", ""),
                   int(d.get("retries", 3)), float(d.get("timeout_s", 5.0)))

    def wants(self, event: dict[str, Any]) -> bool:
        kind = event.get("event")
        if kind not in EVENTS:
            return False
        if event.get("flapping") and kind != "flapping":
            return False
        if kind == "clear":
            return "cleared" in self.severities
        return event.get("perceived_severity") in self.severities


class HookDispatcher:
    def __init__(self, hooks: list[Hook], *, queue_size: int = 10_000,
                 backoff_s: float = 1.0):
        self.hooks = hooks
        self.backoff_s = backoff_s
        self._q: queue.Queue[tuple[Hook, bytes] | None] = queue.Queue(queue_size)
        self._seen: deque[int] = deque(maxlen=50_000)
        self._seen_set: set[int] = set()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="noc-hooks", daemon=True)
        if hooks:
            self._thread.start()

    def offer(self, line: bytes) -> None:
        """A stream line was exported: queue it for every hook that wants it."""
        if not self.hooks:
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        seq = int(event.get("seq", 0))
        if seq in self._seen_set:
            return  # offered again (a re-export in this process): delivered already
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(seq)
        self._seen_set.add(seq)
        for hook in self.hooks:
            if hook.wants(event):
                try:
                    self._q.put_nowait((hook, line.rstrip(b"\n")))
                except queue.Full:
                    self.dropped += 1
                    log.error("noc_hook_queue_full", seq=seq)

    def close(self, timeout: float = 10.0) -> None:
        if not self.hooks:
            return
        deadline = time.monotonic() + timeout
        while not self._q.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(queue.Full):  # still full: the thread is let go below
            self._q.put_nowait(None)
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            hook, body = item
            for attempt in range(hook.retries + 1):
                error = self._deliver(hook, body)
                if error is None:
                    self.delivered += 1
                    break
                log.warning("noc_hook_failed", target=hook.url or hook.command.split()[0],
                            attempt=attempt + 1, error=error)
                if attempt < hook.retries:
                    time.sleep(self.backoff_s * 2 ** attempt)
            else:
                self.failed += 1

    @staticmethod
    def _deliver(hook: Hook, body: bytes) -> str | None:
        try:
            if hook.command:
                p = subprocess.run(shlex.split(hook.command), input=body, capture_output=True,
                                   timeout=hook.timeout_s)
                return None if p.returncode == 0 else f"exit status {p.returncode}"
            req = urllib.request.Request(hook.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=hook.timeout_s) as r:
                return None if 200 <= r.status < 300 else f"HTTP {r.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return str(exc) or type(exc).__name__
