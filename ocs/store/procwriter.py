"""The group-commit writer as a process of its own.

py-lmdb releases the GIL around every LMDB call; a writer *thread* must then win the GIL
back from the event loop after each call, and under protocol load it waits a switch
interval (5 ms) each time. So the server runs its writer as a single-threaded child
process with its own interpreter: the event loop sends named operations over a Unix
socket pair, the child runs them in group-commit batches (:class:`~ocs.store.writer.Batch`)
and answers each batch after its durable commit.

Frames both ways: 4-byte big-endian length, then MessagePack.
- request  ``[id, name, request]`` (``name`` names one of the program's operations)
- answer   ``[id, true, result]`` or ``[id, false, [error kind, message]]``
- stats    ``[0, true, [ops, commit seconds, batch seconds, failed ops of attached
  clients]]`` after each batch, to the parent only
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import structlog

from ocs import logs
from ocs.errors import BY_NAME
from ocs.store.env import Store, StoreError
from ocs.store.writer import Batch, Overloaded, WriterStopped

OpTable = dict[str, tuple[type[Any], Any, Callable[[Any, Any], Any]]]
"""Operations by name: (request type, result type, function of a transaction and a
request)."""
OpsFactory = Callable[[Store, dict[str, Any]], OpTable]

log = structlog.get_logger(__name__)

_LEN = struct.Struct(">I")
_MAX_FRAME = 16 * 1024 * 1024
_SOCK_BUF = 4 * 1024 * 1024
_enc = msgspec.msgpack.Encoder()
_dec_frame = msgspec.msgpack.Decoder(tuple[int, Any, msgspec.Raw])


class OperationFailed(RuntimeError):
    """An operation raised in the writer process (its kind and message are kept)."""


def _frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


def _split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return every complete frame at the start of ``buf``."""
    out: list[bytes] = []
    pos = 0
    n = len(buf)
    while n - pos >= 4:
        (size,) = _LEN.unpack_from(buf, pos)
        if size > _MAX_FRAME:
            raise StoreError(f"writer frame of {size} bytes is too large")
        if n - pos - 4 < size:
            break
        out.append(bytes(buf[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    if pos:
        del buf[:pos]
    return out


# -- the child process ------------------------------------------------------------------


def child_main(fd: int, settings_json: str, make_ops: OpsFactory) -> None:
    """Body of the writer process: ``make_ops(store, settings)`` gives the operations (by
    name: request type, result type, function of a transaction and a request) that the
    parent's :class:`ProcessWriter` submits; ``settings`` is what it was given as
    ``program_settings``."""
    conf = json.loads(settings_json)
    logs.configure(conf.get("log_format", "json"))
    # The parent decides when we stop (it closes its end; if it dies, the end closes):
    # Ctrl-C or a service manager's SIGTERM to the whole group must not cut short the
    # answers the parent is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = Store(conf["data_dir"], map_size_mb=conf["map_size_mb"], create=False)
    table = make_ops(store, conf["program"])
    decoders = {name: msgspec.msgpack.Decoder(req_t) for name, (req_t, _r, _f) in table.items()}
    ops = {name: fn for name, (_q, _r, fn) in table.items()}
    sock = socket.socket(fileno=fd)
    _tune(sock)
    listener = None
    if conf.get("listen"):  # other workers' event loops attach here (ocs serve --workers)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(conf["listen"])
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(conf["listen"])
        listener.listen(64)
    serve(sock, store, decoders, ops, conf["max_ops"], conf["max_delay_ms"] / 1000.0,
          listener=listener)
    store.close()


def _tune(sock: socket.socket) -> None:
    sock.setblocking(True)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCK_BUF)


class _Client:
    """One connection sending operations: the parent's socket pair, or an attached
    worker's Unix socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()
        self.open = True


def serve(sock: socket.socket, store: Any, decoders: dict[str, Any],
          ops: dict[str, Callable[[Any, Any], Any]], max_ops: int, max_delay: float, *,
          listener: socket.socket | None = None) -> None:
    """Read operations, run them in group-commit batches, answer after each commit.

    ``sock`` is the parent's end; with ``listener``, other processes (the other workers'
    event loops) connect and send operations too: they share the batches, each gets its
    own answers, and only the parent gets the batch statistics. Returns when the parent
    closes its end (after committing what was received).
    """
    parent = _Client(sock)
    clients = {sock.fileno(): parent}
    pending: deque[tuple[_Client, int, str, msgspec.Raw]] = deque()
    eof = False
    batches = 0

    def receive(c: _Client) -> None:
        nonlocal eof
        try:
            data = c.sock.recv(_SOCK_BUF)
        except OSError:
            data = b""
        if not data:
            if c is parent:
                eof = True
            else:  # an attached worker went away: its answers have nowhere to go
                c.open = False
                clients.pop(c.sock.fileno(), None)
                c.sock.close()
            return
        c.buf.extend(data)
        try:
            frames = _split_frames(c.buf)
        except StoreError:
            frames = []
            if c is not parent:  # garbage from an attached socket: drop that client
                c.open = False
                clients.pop(c.sock.fileno(), None)
                c.sock.close()
                return
            raise
        for frame in frames:
            rid, name, raw = _dec_frame.decode(frame)
            pending.append((c, rid, name, raw))

    def read(timeout: float | None) -> None:
        if len(clients) == 1 and listener is None:
            if timeout is not None:
                ready, _, _ = select.select([sock], [], [], timeout)
                if not ready:
                    return
            receive(parent)
            return
        watch: list[Any] = [c.sock for c in clients.values()]
        if listener is not None:
            watch.append(listener)
        ready, _, _ = select.select(watch, [], [], timeout)
        for s in ready:
            if s is listener:
                conn, _addr = listener.accept()
                _tune(conn)
                clients[conn.fileno()] = _Client(conn)
            else:
                c = clients.get(s.fileno())
                if c is not None:
                    receive(c)

    def op_for(name: str, raw: msgspec.Raw) -> Callable[[Any], Any]:
        fn = ops.get(name)
        if fn is None:
            raise OperationFailed(f"unknown operation {name!r}")
        req = decoders[name].decode(raw)
        return lambda tx: fn(tx, req)

    while True:
        if not pending:
            if eof:
                return
            read(None)
            continue
        batches += 1
        batch = Batch(store, batches)
        deadline = batch.started + max_delay
        ids: list[tuple[_Client, int]] = []
        while True:
            while pending and len(batch) < max_ops:
                client, rid, name, raw = pending.popleft()
                ids.append((client, rid))
                try:
                    fn = op_for(name, raw)
                except (OperationFailed, msgspec.DecodeError) as exc:
                    err = exc

                    def fn(_tx: Any, err: Exception = err) -> Any:
                        raise err

                batch.add(fn)
            if len(batch) >= max_ops or eof:
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            read(remaining)
        commit_s = batch.commit()
        outs: dict[_Client, list[bytes]] = {parent: []}
        failed_others = 0
        for (client, rid), (ok, value) in zip(ids, batch.results, strict=True):
            out = outs.setdefault(client, [])
            if ok:
                out.append(_frame(_enc.encode((rid, True, value))))
            else:
                failed_others += client is not parent
                out.append(_frame(_enc.encode((rid, False, (type(value).__name__, str(value))))))
        outs[parent].append(_frame(_enc.encode(
            (0, True, (len(batch), commit_s, time.perf_counter() - batch.started,
                       failed_others)))))
        for client, out in outs.items():
            if not client.open:
                continue
            try:
                client.sock.sendall(b"".join(out))
            except OSError:
                if client is parent:
                    return  # the parent is gone; what was committed stays committed
                client.open = False
                clients.pop(client.sock.fileno(), None)
                client.sock.close()


# -- the parent side ----------------------------------------------------------------------


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: ProcessWriter):
        self._owner = owner
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buf.extend(data)
        self._owner._answers(_split_frames(self._buf))

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(exc)


BatchHook = Callable[[int, float, float], None]
ResultHook = Callable[[str, Any], None]


class ProcessWriter:
    """Submits named operations to the writer process; futures resolve after commit.

    By default it starts (and restarts) the writer process. With ``listen`` that process
    also takes connections on that Unix socket path; with ``attach`` this object starts
    no process but connects to such a path (another worker's writer) and reconnects
    when it goes away."""

    def __init__(self, *, program: str, results: Mapping[str, type[Any]],
                 program_settings: dict[str, Any], data_dir: str, map_size_mb: int,
                 max_ops: int, max_delay_ms: float, queue_size: int, log_format: str = "json",
                 on_batch: BatchHook | None = None, listen: str = "", attach: str = "",
                 on_result: ResultHook | None = None):
        """``program``: the module the writer process runs (``python -m program FD JSON``,
        calling :func:`child_main`); ``results``: each operation's result type;
        ``on_result(name, result or exception)``: told of each answer as it resolves
        (the server counts operations by outcome)."""
        self._program = program
        self._results = dict(results)
        self._conf = {
            "data_dir": data_dir,
            "map_size_mb": map_size_mb,
            "max_ops": max_ops,
            "max_delay_ms": max_delay_ms,
            "program": program_settings,
            "log_format": log_format,
            "listen": listen,
        }
        self._attach = attach
        self._queue_size = queue_size
        self._on_batch = on_batch
        self._on_result = on_result
        self._proc: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], Any, str]] = {}
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._next_id = 1
        self._stopping = False
        self._closed: asyncio.Event | None = None
        self._result_decoders: dict[str, Any] = {}
        self.batches = 0
        self.ops = 0
        self.failed = 0
        """Operations that got an error instead of an answer (busy, store, writer lost)."""
        self.restarts = 0

    @property
    def alive(self) -> bool:
        if self._attach:
            return self._transport is not None
        return self._proc is not None and self._proc.poll() is None and (
            self._transport is not None)

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        self._result_decoders = {
            name: msgspec.msgpack.Decoder(res_t) for name, res_t in self._results.items()
        }
        if self._attach:
            await self._connect(deadline_s=60.0)
            return
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (parent_sock, child_sock):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCK_BUF)
        fd = child_sock.fileno()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self._program, str(fd), json.dumps(self._conf)],
            pass_fds=(fd,),
        )
        child_sock.close()
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._transport, _ = await loop.create_connection(
            lambda: _Protocol(self), sock=parent_sock)
        listen = str(self._conf["listen"])
        if listen:  # attached workers may connect once this is up
            deadline = time.monotonic() + 30
            while not os.path.exists(listen) and time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                await asyncio.sleep(0.01)
        log.info("writer_process_started", pid=self._proc.pid)

    async def _connect(self, deadline_s: float) -> None:
        """Attach to the shared writer's socket, retrying while it (re)starts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        delay = 0.05
        while True:
            try:
                self._transport, _ = await loop.create_unix_connection(
                    lambda: _Protocol(self), self._attach)
            except OSError as exc:
                if self._stopping or loop.time() > deadline:
                    raise StoreError(f"cannot attach to the writer: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            if self._stopping:
                self._transport.close()
                self._transport = None
                raise StoreError("writer is stopping")
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCK_BUF)
            self._closed = asyncio.Event()
            log.info("writer_attached", path=self._attach)
            return

    def submit(self, name: str, req: Any) -> asyncio.Future[Any]:
        if self._stopping:
            raise WriterStopped("writer is stopping")
        if self._transport is None:
            raise StoreError("writer process is not running")
        if len(self._pending) >= self._queue_size:
            self.failed += 1
            raise Overloaded(f"write queue full ({self._queue_size} operations)")
        dec = self._result_decoders.get(name)
        if dec is None:
            raise OperationFailed(f"unknown operation {name!r}")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        rid = self._next_id
        self._next_id += 1
        self._pending[rid] = (fut, dec, name)
        self._out.append(_frame(_enc.encode((rid, name, req))))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _answers(self, frames: list[bytes]) -> None:
        for frame in frames:
            rid, ok, raw = _dec_frame.decode(frame)
            if rid == 0:  # the batch's figures (all clients'; their failures too)
                n, commit_s, batch_s, failed_others = msgspec.msgpack.decode(raw)
                self.batches += 1
                self.ops += n
                self.failed += failed_others
                if self._on_batch is not None:
                    self._on_batch(n, commit_s, batch_s)
                continue
            entry = self._pending.pop(rid, None)
            if entry is None:
                continue
            fut, dec, name = entry
            if fut.done():
                continue
            if ok:
                result = dec.decode(raw)
                fut.set_result(result)
            else:
                kind, message = msgspec.msgpack.decode(raw)
                known = BY_NAME.get(kind)
                result = known(message) if known is not None else (
                    OperationFailed(f"{kind}: {message}"))
                self.failed += 1
                fut.set_exception(result)
            if self._on_result is not None:
                self._on_result(name, result)

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._pending:
            err = StoreError("writer process ended before answering")
            self.failed += len(self._pending)
            for fut, _dec, _name in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()
        if not self._stopping:
            code = self._proc.poll() if self._proc is not None else None
            log.error("writer_process_lost", exit_code=code, attached=bool(self._attach))
            asyncio.get_running_loop().create_task(
                self._reattach() if self._attach else self._restart())
        if self._closed is not None:
            self._closed.set()

    async def _reattach(self) -> None:
        self.restarts += 1
        with contextlib.suppress(StoreError):  # raised only when stopping
            await self._connect(deadline_s=float("inf"))

    async def _restart(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await asyncio.get_running_loop().run_in_executor(None, self._proc.wait)
        self.restarts += 1
        await asyncio.sleep(min(5.0, 0.1 * self.restarts))
        if not self._stopping:
            await self.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking operations, wait for the answers of those sent, end the process."""
        self._stopping = True
        self._flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending and loop.time() < deadline and self._transport is not None:
            await asyncio.sleep(0.005)
        if self._transport is not None:
            self._transport.close()
        if self._proc is not None:
            try:
                await asyncio.wait_for(loop.run_in_executor(None, self._proc.wait),
                                       max(1.0, deadline - loop.time()))
            except TimeoutError:
                log.error("writer_process_stop_timeout", pid=self._proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait()

