"""``ocs-sim fuzz``: hostile input against a running server, on loopback only.

Mutated datagrams for each UDP decoder (RADIUS accounting, RADIUS access, SNMP traps)
and mutated messages for each TCP protocol (Diameter after a valid CER, SMPP after a
valid bind). Mutations start from valid messages (bit flips, byte overwrites,
truncation, junk appended, length fields rewritten, attributes repeated); a share of the
RADIUS accounting packets is signed again with the client's secret so they pass the
authenticator and reach the agent. Every identity in the corpus is one no subscriber
has, so bad input can move no money; the caller checks that (balances, CDR count) and
that no process of the server died. Sending is paced (``--rate``) so the datagrams reach
the decoders instead of overflowing the socket buffer; everything is bounded in count.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator

from protocols.diameter import codec as dc
from protocols.radius.codec import AcctStatus, Attr, Code, attr, encode_request
from protocols.snmp.codec import encode_trap_v2c
from sim.registry import command
from sim.report import Report, dump_json, print_table

Mutator = Callable[[bytes], bytes]


def mutate(rng: random.Random, data: bytes, header: int = 0) -> bytes:
    """One to three random mutations of ``data`` (the first ``header`` bytes kept as they
    are half of the time, so length checks pass and deeper code is reached)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        keep = min(header, max(0, len(b) - 1)) if rng.random() < 0.5 else 0
        op = rng.randrange(7)
        if not b or op == 0:
            b += rng.randbytes(rng.randint(1, 64))
        elif op == 1:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(keep, len(b)) if len(b) > keep else rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op == 2:  # overwrite a run with junk
            i = rng.randrange(len(b))
            n = rng.randint(1, 16)
            b[i:i + n] = rng.randbytes(n)
        elif op == 3:  # truncate
            del b[rng.randrange(max(1, keep), len(b) + 1):]
        elif op == 4:  # repeat a slice (attributes, AVPs, varbinds twice)
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randint(2, 64))
            b[j:j] = b[i:j]
        elif op == 5:  # an interesting byte somewhere
            i = rng.randrange(len(b))
            b[i] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF))
        else:  # a length-looking byte pair set to something odd
            i = rng.randrange(len(b))
            b[i:i + 2] = rng.choice((b"\x00\x00", b"\xff\xff", b"\x00\x02", b"\x7f\xff"))
    return bytes(b)


def mutate_avp_value(rng: random.Random, msg: bytes) -> bytes:
    """A well-framed Diameter message with one top-level AVP's value replaced by random
    bytes of the same length: past the framing and AVP checks, into the application."""
    offsets, pos = [], 20
    while pos + 8 <= len(msg):
        length = int.from_bytes(msg[pos + 5:pos + 8], "big")
        if length < 8:
            break
        head = 12 if msg[pos + 4] & 0x80 else 8
        if length > head:
            offsets.append((pos + head, pos + length))
        pos += (length + 3) & ~3
    if not offsets:
        return msg
    start, end = rng.choice(offsets)
    return msg[:start] + rng.randbytes(end - start) + msg[end:]


# -- corpora (unknown identities only) ---------------------------------------------------

def radius_acct_corpus(n: int) -> list[list[tuple[int, bytes]]]:
    """Accounting requests of session ``fz-<n>`` (a new session id per datagram, so the
    reply cache does not answer them before the decoder sees them)."""
    out = []
    for status in (AcctStatus.START, AcctStatus.INTERIM_UPDATE, AcctStatus.STOP,
                   AcctStatus.ACCOUNTING_ON):
        out.append([attr(Attr.ACCT_STATUS_TYPE, status), attr(Attr.ACCT_SESSION_ID, f"fz-{n}"),
                    attr(Attr.USER_NAME, "fuzz-nobody"),
                    attr(Attr.CALLING_STATION_ID, "41999000001"),
                    attr(Attr.NAS_IP_ADDRESS, b"\x7f\x00\x00\x01"),
                    attr(Attr.ACCT_INPUT_OCTETS, 1000), attr(Attr.ACCT_INPUT_GIGAWORDS, 1),
                    attr(Attr.ACCT_OUTPUT_OCTETS, 2000), attr(Attr.ACCT_SESSION_TIME, 60),
                    (26, b"\x00\x00\x28\xaf\x01\x11228010000000001")])
    return out


def diameter_corpus() -> list[bytes]:
    def ccr(kind: int, number: int, body: bytes) -> bytes:
        return dc.encode_message(272, dc.FLAG_R | dc.FLAG_P, 4, 1, 1, b"".join([
            dc.utf8(dc.A.SESSION_ID, f"fuzz.test;{kind};{number}"),
            dc.octets(dc.A.ORIGIN_HOST, b"fuzz.test.realm"),
            dc.octets(dc.A.ORIGIN_REALM, b"test.realm"),
            dc.octets(dc.A.DESTINATION_REALM, b"test.realm"),
            dc.u32(dc.A.AUTH_APPLICATION_ID, 4),
            dc.utf8(dc.A.SERVICE_CONTEXT_ID, "32251@3gpp.org"),
            dc.u32(dc.A.CC_REQUEST_TYPE, kind), dc.u32(dc.A.CC_REQUEST_NUMBER, number),
            dc.grouped(dc.A.SUBSCRIPTION_ID, dc.u32(dc.A.SUBSCRIPTION_ID_TYPE, 0),
                       dc.utf8(dc.A.SUBSCRIPTION_ID_DATA, "41999000002")),
            body]))

    mscc = dc.grouped(dc.A.MULTIPLE_SERVICES_CREDIT_CONTROL,
                      dc.u32(dc.A.RATING_GROUP, 10),
                      dc.grouped(dc.A.REQUESTED_SERVICE_UNIT,
                                 dc.u64(dc.A.CC_TOTAL_OCTETS, 1000)),
                      dc.grouped(dc.A.USED_SERVICE_UNIT, dc.u64(dc.A.CC_TOTAL_OCTETS, 500)))
    dwr = dc.encode_message(280, dc.FLAG_R, 0, 2, 2, dc.octets(
        dc.A.ORIGIN_HOST, b"fuzz.test.realm") + dc.octets(dc.A.ORIGIN_REALM, b"test.realm"))
    return [ccr(1, 0, mscc), ccr(2, 1, mscc), ccr(3, 2, mscc), ccr(4, 0, mscc), dwr]


def diameter_cer() -> bytes:
    return dc.encode_message(257, dc.FLAG_R, 0, 9, 9, b"".join([
        dc.octets(dc.A.ORIGIN_HOST, b"fuzz.test.realm"),
        dc.octets(dc.A.ORIGIN_REALM, b"test.realm"),
        dc.address(dc.A.HOST_IP_ADDRESS, "127.0.0.1"), dc.u32(dc.A.VENDOR_ID, 99999),
        dc.utf8(dc.A.PRODUCT_NAME, "fuzz", flags=0), dc.u32(dc.A.AUTH_APPLICATION_ID, 4)]))


def smpp_pdu(cmd: int, seq: int, body: bytes) -> bytes:
    return struct.pack("!IIII", 16 + len(body), cmd, 0, seq) + body


def smpp_corpus() -> list[bytes]:
    submit = (b"\x00" + b"\x01\x01" + b"41999000003\x00" + b"\x01\x01" + b"41791234567\x00"
              + b"\x00\x00\x00\x00\x00\x01\x00\x00\x00" + b"\x05hello"
              + b"\x04\x24\x00\x03abc")  # + message_payload TLV
    return [smpp_pdu(0x04, 2, submit), smpp_pdu(0x103, 3, submit),
            smpp_pdu(0x15, 4, b""), smpp_pdu(0x80000005, 5, b"\x00")]


def snmp_corpus() -> list[bytes]:
    out = [encode_trap_v2c(b"public", i, 100, "1.3.6.1.6.3.1.1.5.3",
                           [("1.3.6.1.2.1.2.2.1.1.7", 7), ("1.3.6.1.2.1.2.2.1.2.7", "eth7")],
                           inform=i % 2 == 1) for i in range(2)]
    # SNMPv3-looking (version 3, global data, a USM parameters block): the USM path
    out.append(bytes.fromhex(
        "3081890201033011020420dd06a7020300ffe3040105020103043b3039041180000000010203040000"
        "000000000000000201000201000404746573740410000000000000000000000000000000000408"
        "00000000000000000434041180000000010203040000000000000000000400a71d02016402010002"
        "0100301230100608 2b060106030101040106042b060102".replace(" ", "")))
    return out


# -- senders -----------------------------------------------------------------------------

def _paced(count: int, rate: float) -> Iterator[int]:
    start = time.perf_counter()
    for i in range(count):
        if i % 256 == 0:
            ahead = i / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
        yield i


def fuzz_udp(host: str, port: int, packets: Callable[[int], bytes], count: int,
             rate: float) -> tuple[int, float]:
    """Send ``count`` datagrams; returns (replies seen, seconds)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    replies = 0
    t0 = time.perf_counter()
    for i in _paced(count, rate):
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            s.sendto(packets(i), (host, port))
        if i % 64 == 0:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                while s.recv(65536):
                    replies += 1
    secs = time.perf_counter() - t0
    time.sleep(0.5)
    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
        while s.recv(65536):
            replies += 1
    s.close()
    return replies, secs


def fuzz_stream(host: str, port: int, hello: bytes, messages: Callable[[int], bytes],
                count: int, rate: float, per_connection: int = 2000) -> tuple[int, float]:
    """Send ``count`` messages over connections that each start with ``hello``; a
    connection the server closes is replaced (the message it closed on counts as sent).
    Returns (connections used, seconds)."""
    conns = 0
    sent = 0
    t0 = time.perf_counter()
    deadline = t0 + 3 * count / rate + 60  # bounded in time even if the server stops
    it = _paced(count, rate)
    exhausted = False
    while not exhausted and time.perf_counter() < deadline:
        try:
            s = socket.create_connection((host, port), timeout=5)
        except OSError:
            time.sleep(0.2)
            continue
        conns += 1
        stop = threading.Event()

        def drain(sock: socket.socket, done: threading.Event = stop) -> None:
            sock.settimeout(0.05)  # its own timeout: the sender's socket keeps blocking
            while not done.is_set():
                try:
                    if not sock.recv(65536):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            sock.close()

        reader = threading.Thread(target=drain, args=(s.dup(),), daemon=True)
        reader.start()
        try:
            s.sendall(hello)
            for _ in range(per_connection):
                i = next(it, None)
                if i is None:
                    exhausted = True
                    break
                sent += 1  # offered; the server may close the connection on it
                s.sendall(messages(i))
        except OSError:
            pass  # closed by the server (framing error, bad bind): next connection
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
            reader.join(1)
            s.close()
    return conns, time.perf_counter() - t0


@command("fuzz", "hostile input: mutated datagrams and messages for every decoder (loopback)")
class FuzzCommand:
    @staticmethod
    def configure(p: argparse.ArgumentParser) -> None:
        p.add_argument("--radius-acct", help="HOST:PORT of RADIUS accounting")
        p.add_argument("--radius-auth", help="HOST:PORT of RADIUS access")
        p.add_argument("--secret", default="testing123")
        p.add_argument("--snmp", help="HOST:PORT of the trap listener")
        p.add_argument("--diameter", help="HOST:PORT of Diameter")
        p.add_argument("--smpp", help="HOST:PORT of SMPP")
        p.add_argument("--system-id", default="esme")
        p.add_argument("--password", default="secret")
        p.add_argument("--datagrams", type=int, default=1_000_000, help="per UDP decoder")
        p.add_argument("--messages", type=int, default=100_000, help="per TCP protocol")
        p.add_argument("--rate", type=float, default=25_000.0, help="datagrams per second")
        p.add_argument("--stream-rate", type=float, default=10_000.0,
                       help="TCP messages per second")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--json", action="store_true")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        rng = random.Random(args.seed)
        secret = args.secret.encode()
        reports: list[Report] = []

        def addr(text: str) -> tuple[str, int]:
            host, _, port = text.rpartition(":")
            if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
                raise SystemExit(f"ocs-sim fuzz: {host} is not a loopback address")
            return host, int(port)

        if args.radius_acct:
            def acct(i: int) -> bytes:
                attrs = list(rng.choice(radius_acct_corpus(i)))
                if rng.random() < 0.2:  # valid signature over mutated attributes
                    raw = b"".join(bytes((t, min(255, len(v) + 2))) + v[:253] for t, v in attrs)
                    raw = mutate(rng, raw)
                    pairs, pos = [], 0
                    while pos + 2 <= len(raw):
                        n = max(2, raw[pos + 1])
                        pairs.append((raw[pos], raw[pos + 2:pos + n]))
                        pos += n
                    return encode_request(Code.ACCOUNTING_REQUEST, i % 256, secret, pairs)
                return mutate(rng, encode_request(Code.ACCOUNTING_REQUEST, i % 256, secret,
                                                  attrs), header=20)

            replies, secs = fuzz_udp(*addr(args.radius_acct), acct, args.datagrams, args.rate)
            reports.append(Report("fuzz", "RADIUS accounting datagrams", args.datagrams, 0,
                                  secs, extra={"result": f"{replies:,} answered"}))
        if args.radius_auth:
            def access(i: int) -> bytes:  # a fresh authenticator each time
                return mutate(rng, encode_request(
                    Code.ACCESS_REQUEST, i % 256, secret, [attr(Attr.USER_NAME, f"fz{i}")],
                    message_authenticator=i % 2 == 0, password=b"pw"), header=20)

            replies, secs = fuzz_udp(*addr(args.radius_auth), access, args.datagrams,
                                     args.rate)
            reports.append(Report("fuzz", "RADIUS access datagrams", args.datagrams, 0, secs,
                                  extra={"result": f"{replies:,} answered"}))
        if args.snmp:
            traps = snmp_corpus()
            replies, secs = fuzz_udp(*addr(args.snmp),
                                     lambda i: mutate(rng, rng.choice(traps)),
                                     args.datagrams, args.rate)
            reports.append(Report("fuzz", "SNMP datagrams", args.datagrams, 0, secs,
                                  extra={"result": f"{replies:,} answered"}))
        if args.diameter:
            msgs = diameter_corpus()

            def diameter(i: int) -> bytes:  # own Hop-by-Hop and End-to-End ids
                m = rng.choice(msgs)
                ids = struct.pack("!II", i & 0xFFFFFFFF, i & 0xFFFFFFFF)
                m = m[:12] + ids + m[20:]
                if rng.random() < 0.3:
                    return mutate_avp_value(rng, m)
                out = bytearray(mutate(rng, m, header=20))
                if rng.random() < 0.98 and len(out) >= 20:  # framed right: the decoder
                    out += b"\x00" * (-len(out) % 4)      # gets it, not the framing check
                    out[1:4] = len(out).to_bytes(3, "big")
                return bytes(out)

            conns, secs = fuzz_stream(*addr(args.diameter), diameter_cer(), diameter,
                                      args.messages, args.stream_rate)
            reports.append(Report("fuzz", "Diameter messages after CER", args.messages, 0,
                                   secs, extra={"result": f"{conns:,} connections"}))
        if args.smpp:
            bind = smpp_pdu(0x02, 1, args.system_id.encode() + b"\x00"
                            + args.password.encode() + b"\x00\x00\x34\x00\x00\x00")
            pdus = smpp_corpus()

            def smpp(i: int) -> bytes:  # own sequence numbers, but now and then one again
                p = rng.choice(pdus)
                seq = struct.pack("!I", 2 + (i % 50_000 if rng.random() < 0.95 else 2))
                out = bytearray(mutate(rng, p[:12] + seq + p[16:], header=16))
                if rng.random() < 0.98 and len(out) >= 16:  # framed right, mostly
                    out[0:4] = len(out).to_bytes(4, "big")
                return bytes(out)

            conns, secs = fuzz_stream(*addr(args.smpp), bind, smpp, args.messages,
                                      args.stream_rate)
            reports.append(Report("fuzz", "SMPP PDUs after bind", args.messages, 0, secs,
                                  extra={"result": f"{conns:,} connections"}))
        if args.json:
            sys.stdout.write(dump_json(reports) + "\n")
        else:
            print_table(reports, "ocs-sim fuzz")
        return 0
