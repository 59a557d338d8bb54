"""Third-party peers the benchmarks run side by side with our server.

FreeRADIUS 3.2 (Debian ``freeradius``): a private copy of the packaged configuration,
one virtual server listening on loopback test ports, accounting written by its ``detail``
module, logs and detail files in a temp dir. Installed with apt-get when missing (the
bench runs as root here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

FREERADIUS_ETC = Path("/etc/freeradius/3.0")

_SITE = """server default {{
listen {{
	type = acct
	ipaddr = 127.0.0.1
	port = {acct}
	recv_buff = 4194304
}}
listen {{
	type = auth
	ipaddr = 127.0.0.1
	port = {auth}
}}
authorize {{
	preprocess
	files
	pap
}}
authenticate {{
	Auth-Type PAP {{
		pap
	}}
}}
preacct {{
	preprocess
	acct_unique
}}
accounting {{
	detail
	attr_filter.accounting_response
}}
post-auth {{
}}
}}
"""


class PeerUnavailable(RuntimeError):
    """The peer is not installed here or did not start."""


def ensure_freeradius() -> str:
    path = shutil.which("freeradius")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "freeradius"], env=env, capture_output=True, timeout=600)
        path = shutil.which("freeradius")
    if path is None or not FREERADIUS_ETC.exists():
        raise PeerUnavailable("FreeRADIUS is not installed (apt-get install freeradius)")
    return path


@contextlib.contextmanager
def freeradius(workdir: Path, auth_port: int, acct_port: int,
               pids: list[int] | None = None) -> Iterator[Path]:
    """Run FreeRADIUS on loopback; yields the directory its detail files go to (its PID
    appended to ``pids``, to measure its CPU)."""
    binary = ensure_freeradius()
    raddb = workdir / "raddb"
    logdir = workdir / "log"
    rundir = workdir / "run"
    shutil.copytree(FREERADIUS_ETC, raddb, symlinks=False)
    logdir.mkdir()
    rundir.mkdir()
    conf = raddb / "radiusd.conf"
    lines = []
    for line in conf.read_text().splitlines():
        s = line.strip()
        if s.startswith("logdir ="):
            line = f"logdir = {logdir}"
        elif s.startswith("run_dir ="):
            line = f"run_dir = {rundir}"
        elif s.startswith(("user = ", "group = ")):
            line = "#" + line
        lines.append(line)
    conf.write_text("\n".join(lines) + "\n")
    for p in (raddb / "sites-enabled").iterdir():
        p.unlink()
    (raddb / "sites-enabled" / "bench").write_text(_SITE.format(auth=auth_port, acct=acct_port))
    with contextlib.suppress(FileNotFoundError):
        (raddb / "mods-enabled" / "eap").unlink()  # needs certificates and an EAP site
    out = (workdir / "freeradius.log").open("w")
    proc = subprocess.Popen([binary, "-f", "-d", str(raddb), "-l", "stdout"], stdout=out,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "Ready to process requests" not in (workdir / "freeradius.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PeerUnavailable("FreeRADIUS did not start: "
                                      + (workdir / "freeradius.log").read_text()[-500:])
            time.sleep(0.05)
        if pids is not None:
            pids.append(proc.pid)
        yield logdir / "radacct"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
