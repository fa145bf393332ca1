"""Signatures per second through `hsmsign serve` (8 concurrent clients, SoftHSM P-256), over
the Unix socket and over mutual TLS on loopback, against the in-process `TokenSigner` rate on
the same token and key, measured in the same run.

    python bench/bench_service.py [--requests 4000] [--rounds 5] [--clients 8] [--n 4000]

Set-up (temporary, removed at the end): a SoftHSM token, a home whose timestamp key (P-256) is
generated on it, a test CA with server and client certificates, and two services in
subprocesses: `serve --listen unix:...` and `serve --listen https://127.0.0.1:0` (mutual TLS),
each with its own audit log (fsynced, group commit).

Each round, in turn (so that load from other processes hits every path alike):
  in-process   `TokenSigner(store, keyid).sign(payload)` `--n` times in this process (its own
               login; the services have theirs): the rate the service is compared with
  unix         `--requests` POST /v1/sign over `--clients` keep-alive connections at once, from
               a client process (asyncio, requests written as bytes: the client is cheap)
  mutual TLS   the same over HTTPS with a client certificate
  work alone   what the service does for each request, done in this process one request after
               another, with no HTTP: parse the body, accept the metadata (python-tuf's model,
               the role, the expiry, the canonical bytes), sign with the `TokenSigner`, chain
               the audit line, and fsync the audit log once per `--clients` requests (as its
               group commit does under that many clients)
  HTTP alone   the same requests to a bare aiohttp app on a Unix socket that reads the body and
               answers a fixed signature: what HTTP and the client cost, the floor for any
               service built on aiohttp (the issue names it) on this machine
The payload is the signed part of a small timestamp (what a pipeline refreshes hourly). Every
path's signature is verified first. The table shows medians over rounds; latency p50/p99 are
over all requests of all rounds. Target (issue 17): unix >= 0.7x in-process.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _softhsm  # noqa: E402

TARGET = 0.7

CLIENT_SCRIPT = r'''
import asyncio, json, ssl, sys, time
url, body, clients, requests = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
tls = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
request = (b"POST /v1/sign HTTP/1.1\r\nHost: signer\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
latencies = []

async def connect():
    if url.startswith("unix:"):
        return await asyncio.open_unix_connection(url[5:])
    context = ssl.create_default_context(cafile=tls["ca"])
    context.load_cert_chain(tls["cert"], tls["key"])
    host, port = url[len("https://"):].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port), ssl=context)

async def one(count):
    reader, writer = await connect()
    for _ in range(count):
        start = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        latencies.append(time.perf_counter() - start)
    writer.close()

async def main():
    await one(1)  # a warm connection path (and a check that the service answers)
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one(requests // clients) for _ in range(clients)))
    return time.perf_counter() - start

elapsed = asyncio.run(main())
print(json.dumps({"seconds": elapsed, "latencies": latencies}))
'''


BARE_SCRIPT = r'''
import sys
from aiohttp import web
answer = {"keyid": sys.argv[2], "sig": "00" * 70}

async def sign(request):
    await request.read()
    return web.json_response(answer)

app = web.Application()
app.router.add_post("/v1/sign", sign)
print("listening on unix:" + sys.argv[1], file=sys.stderr, flush=True)
web.run_app(app, path=sys.argv[1], print=None, access_log=None)
'''


def make_pki(base: Path) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(cn, issuer, issuer_key, key, *, ca=False, ip=None):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name, c, key):
        (base / f"{name}.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (base / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return str(base / f"{name}.crt"), str(base / f"{name}.key")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = cert("bench CA", ca_name, ca_key, ca_key, ca=True)
    write("ca", ca, ca_key)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = write("server", cert("signer", ca_name, ca_key, server_key, ip="127.0.0.1"), server_key)
    client = write("client", cert("bench-client", ca_name, ca_key, client_key), client_key)
    return {"ca": str(base / "ca.crt"), "server_cert": server[0], "server_key": server[1],
            "cert": client[0], "key": client[1]}


def start(home: Path, env: dict, policy: Path, listen: str, audit: Path, extra=()):
    proc = subprocess.Popen([sys.executable, "-m", "hsmsign", "--home", str(home), "serve",
                             "--listen", listen, "--policy", str(policy), "--audit-log",
                             str(audit), *extra], env=env, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    for line in proc.stderr:
        if "listening on " in line:
            return proc, line.split("listening on ", 1)[1].split()[0]
    raise SystemExit(f"the service did not start (exit {proc.wait()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per service path per round")
    parser.add_argument("--n", type=int, default=4000, help="in-process signatures per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    root = _softhsm.make_token()
    work = Path(tempfile.mkdtemp(prefix="hsmsign-bench-service-"))
    procs = []
    try:
        run(args, work, procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def run(args, work: Path, procs: list) -> None:
    from securesystemslib.signer import Signature
    from tuf.api.metadata import Metadata, Timestamp

    from hsmsign.config import TokenConfig
    from hsmsign.keystore.pkcs11 import Pkcs11KeyStore
    from hsmsign.secrets import Secrets
    from hsmsign.signing import TokenSigner

    env = {**os.environ, **_softhsm.env()}
    home = work / "home"
    keyid = subprocess.run([sys.executable, "-m", "hsmsign", "--home", str(home), "key",
                            "generate", "timestamp", "--store", "token"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    pki = make_pki(work)
    policy = work / "policy.toml"
    policy.write_text(f'[[client]]\nname = "bench"\nuid = {os.getuid()}\nroles = ["timestamp"]\n\n'
                      f'[[client]]\nname = "bench-tls"\ncn = "bench-client"\nroles = ["timestamp"]\n')
    unix, unix_url = start(home, env, policy, f"unix:{work / 'sock'}", work / "audit-unix.jsonl")
    procs.append(unix)
    tls, tls_url = start(home, env, policy, "https://127.0.0.1:0", work / "audit-tls.jsonl",
                         ("--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"],
                          "--client-ca", pki["ca"]))
    procs.append(tls)

    bare = subprocess.Popen([sys.executable, "-c", BARE_SCRIPT, str(work / "bare.sock"), keyid],
                            env=env, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    procs.append(bare)
    bare.stderr.readline()  # listening
    bare_url = f"unix:{work / 'bare.sock'}"

    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(hours=12)
    md = Metadata(Timestamp(version=7, expires=expires))
    payload = md.signed_bytes
    body = json.dumps({"keyid": keyid, "signed": md.signed.to_dict()})
    store = Pkcs11KeyStore(TokenConfig(module=_softhsm.MODULE, label=_softhsm.LABEL, explicit=True),
                           Secrets(environ={"HSMSIGN_PIN": _softhsm.PIN}))
    signer = TokenSigner(store, keyid)
    signer.public_key.verify_signature(signer.sign(payload), payload)
    from hsmsign.service.client import ServiceClient

    for url, extra in ((unix_url, {}), (tls_url, {"HSMSIGN_SIGNER_CERT": pki["cert"],
                                                  "HSMSIGN_SIGNER_KEY": pki["key"],
                                                  "HSMSIGN_SIGNER_CA": pki["ca"]})):
        sig = ServiceClient(url, {**os.environ, **extra}).sign(keyid, md.signed.to_dict())
        signer.public_key.verify_signature(Signature(keyid, sig), payload)

    def in_process() -> tuple[float, list]:
        sign = signer.sign
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(args.n):
            sign(payload)
        cpu.setdefault("in-process TokenSigner", []).append((time.process_time() - start_cpu) / args.n)
        return args.n / (time.perf_counter() - start), []

    cpu: dict[str, list[float]] = {}  # path -> CPU seconds per signature, per round

    def work_alone() -> tuple[float, list]:
        import asyncio

        from hsmsign.keys import KeyRecord
        from hsmsign.service.acceptance import accept
        from hsmsign.service.app import _no_float
        from hsmsign.service.audit import AuditLog
        from hsmsign.service.policy import Client

        record = KeyRecord(keyid, "timestamp", None, "ecdsa-p256", "token", "bench")
        client = Client(name="bench", uid=os.getuid(), roles=frozenset({"timestamp"}))
        raw = body.encode()

        async def requests() -> float:
            audit = AuditLog(work / "audit-work.jsonl")
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(0, args.n, args.clients):
                lines = []
                for _ in range(args.clients):
                    request = json.loads(raw, parse_float=_no_float, parse_constant=_no_float)
                    accepted = accept(request["signed"], record, client)
                    sig = signer.sign(accepted.payload).signature
                    lines.append(audit.record({
                        "request": "sign", "client": client.name, "peer": "uid", "keyid": keyid,
                        "role": "timestamp", "version": accepted.version,
                        "sha256": accepted.sha256, "result": "signed"}))
                    json.dumps({"keyid": keyid, "sig": sig})
                for line in lines:
                    await audit.durable(line)
            elapsed = time.perf_counter() - start
            cpu.setdefault("work alone (no HTTP)", []).append(
                (time.process_time() - start_cpu) / args.n)
            audit.close()
            return elapsed

        return args.n / asyncio.run(requests()), []

    def through(name: str, url: str, tls_files: dict | None, service_pid: int):
        def measure() -> tuple[float, list]:
            argv = [sys.executable, "-c", CLIENT_SCRIPT, url, body, str(args.clients),
                    str(args.requests)]
            if tls_files:
                argv.append(json.dumps(tls_files))
            before = process_cpu(service_pid)
            out = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
            cpu.setdefault(name, []).append((process_cpu(service_pid) - before) / args.requests)
            return len(out["latencies"]) / out["seconds"], out["latencies"]
        return measure

    paths = {"in-process TokenSigner": in_process,
             "work alone (no HTTP)": work_alone,
             "service, Unix socket": through("service, Unix socket", unix_url, None, unix.pid),
             "service, mutual TLS": through("service, mutual TLS", tls_url,
                                            {k: pki[k] for k in ("ca", "cert", "key")}, tls.pid),
             "HTTP alone (aiohttp)": through("HTTP alone (aiohttp)", bare_url, None, bare.pid)}
    rates = {name: [] for name in paths}
    latencies = {name: [] for name in paths}
    ratios = {name: [] for name in paths}
    for r in range(args.rounds):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            rate, lat = paths[name]()
            rates[name].append(rate)
            latencies[name].extend(lat)
        for name in paths:
            ratios[name].append(rates[name][-1] / rates["in-process TokenSigner"][-1])

    print(f"P-256 on SoftHSM; payload: canonical JSON of a timestamp, {len(payload)} bytes "
          f"(request body {len(body)} bytes)")
    print(f"machine: {_softhsm.machine()}")
    print(f"{args.rounds} rounds; per round {args.n} in-process signatures, {args.requests} "
          f"requests per service path over {args.clients} concurrent connections")
    print()
    print(f"{'path':24} {'sig/s':>8} {'min-max':>11} {'vs in-process':>14} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'CPU us/sig':>10}")
    for name in paths:
        rate = statistics.median(rates[name])
        lat = sorted(latencies[name])
        p50 = f"{lat[len(lat) // 2] * 1e3:7.2f}" if lat else f"{'-':>7}"
        p99 = f"{lat[int(len(lat) * 0.99)] * 1e3:7.2f}" if lat else f"{'-':>7}"
        print(f"{name:24} {rate:8.0f} {min(rates[name]):5.0f}-{max(rates[name]):<5.0f} "
              f"{statistics.median(ratios[name]):13.2f}x {p50} {p99} "
              f"{statistics.median(cpu[name]) * 1e6:10.0f}")
    ratio = statistics.median(ratios["service, Unix socket"])
    print()
    service_rate = statistics.median(rates["service, Unix socket"])
    work_rate = statistics.median(rates["work alone (no HTTP)"])
    print(f"work alone / in-process: {statistics.median(ratios['work alone (no HTTP)']):.2f}x "
          "(what the service must do per request caps any service built on it)")
    print(f"Unix socket / work alone: {service_rate / work_rate:.2f}x (what being a service costs "
          "over doing the same work in-process)")
    print(f"Unix socket / in-process: {ratio:.2f}x (per-round "
          f"{min(ratios['service, Unix socket']):.2f}-{max(ratios['service, Unix socket']):.2f}); "
          f"target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT MET'}")
    print("CPU us/sig: CPU time of the process that signs (this one, or the service's, all its "
          "threads, SoftHSM included) per signature: insensitive to other processes' load")
    store.close()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
