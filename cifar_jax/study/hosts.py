"""The processes of a multi-host study keep each other in sight: each touches a heartbeat file in
the shared --results_dir, and a process waiting for another's runs stops with `HostLost` once that
one's file has not changed for --host_timeout seconds (measured on this host's clock, so clocks
that differ between hosts do not matter). JAX's coordination service is only used to start
(cli.run_checked): it would abort a survivor with a native dump."""
from __future__ import annotations

import atexit
import contextlib
import re
import threading
import time
from pathlib import Path


class HostLost(Exception):
    """Another process of the study stopped giving signs of life."""

    def __init__(self, index: int, count: int, silent_s: float):
        super().__init__(index, count, silent_s)
        self.index, self.count, self.silent_s = index, count, silent_s


class Heartbeats:
    """This process's heartbeat file, touched every timeout / 10 seconds by a daemon thread, and
    what it has seen of the others' (`check`)."""

    def __init__(self, results_dir: Path, address: str, count: int, index: int, timeout_s: float):
        self.folder = Path(results_dir).expanduser() / ".hosts"
        self.prefix = re.sub(r"[^A-Za-z0-9._-]", "_", address)  # one study's processes: its coordinator
        self.count, self.index, self.timeout_s = count, index, timeout_s
        now = time.monotonic()
        self.seen = {i: (None, now) for i in range(count) if i != index}  # index → (mtime, when it changed)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self.thread.start()
        atexit.register(self.stop)

    def path(self, index: int) -> Path:
        return self.folder / f"{self.prefix}-{index}"

    def _beat(self) -> None:
        while not self.stopped.is_set():
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.path(self.index).touch()
            except OSError:
                pass  # a full or unreachable disk: the others will see this process as silent
            self.stopped.wait(self.timeout_s / 10)

    def stop(self) -> None:
        """At exit: no more heartbeats, and this process's file (and the folder, once empty) removed."""
        self.stopped.set()
        self.thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path(self.index).unlink()
            self.folder.rmdir()

    def check(self) -> None:
        """Raise HostLost for the first other process whose file has not changed (or never
        appeared) for more than the timeout."""
        now = time.monotonic()
        for i, (mtime, since) in self.seen.items():
            try:
                current = self.path(i).stat().st_mtime_ns
            except OSError:
                current = None
            if current != mtime:
                self.seen[i] = (current, now)
            elif now - since > self.timeout_s:
                raise HostLost(i, self.count, now - since)


_HEARTBEATS: Heartbeats | None = None


def start(results_dir: Path | str, address: str, count: int, index: int, timeout_s: float) -> None:
    """Begin this process's heartbeats (once per process; a multi-host study runs once per process)."""
    global _HEARTBEATS
    if _HEARTBEATS is None:
        _HEARTBEATS = Heartbeats(Path(results_dir), address, count, index, timeout_s)


def check() -> None:
    """HostLost when another process has gone silent; nothing in a single-process study."""
    if _HEARTBEATS is not None:
        _HEARTBEATS.check()
