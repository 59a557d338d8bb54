"""The systemd notify protocol (sd_notify(3)), for ``Type=notify`` units: READY=1 once
every listener is bound, WATCHDOG=1 from the event loop while it turns, STOPPING=1 on
the way out. A datagram to the Unix socket ``$NOTIFY_SOCKET`` names (``@`` = the
abstract namespace); nothing at all when it is unset (not run by systemd)."""

from __future__ import annotations

import os
import socket

_socket_path = ""


def take_environment() -> None:
    """Read (and unset) NOTIFY_SOCKET and the watchdog variables in the main process, so
    worker processes do not inherit them (systemd takes notifications from the main PID
    only, with NotifyAccess=main)."""
    global _socket_path
    _socket_path = os.environ.pop("NOTIFY_SOCKET", "")


def watchdog_interval() -> float:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or 0 when not asked for."""
    usec = os.environ.pop("WATCHDOG_USEC", "")
    pid = os.environ.pop("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0 or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2e6


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STATUS=…``, several joined by newlines); False when
    there is no notify socket or it cannot be reached."""
    path = _socket_path
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError:
        return False
    return True
