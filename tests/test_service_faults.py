"""Faults the signing service survives, each against the real service in a subprocess: a token
pulled out and put back, SIGTERM with requests in flight, SIGHUP with a good and a bad policy,
clients that hang up or dawdle, 64 clients at once, and 10,000 requests without growing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from securesystemslib.signer import Signature
from tuf.api.metadata import Metadata

from service_harness import (
    read_response,
    request_bytes,
    service_home,  # noqa: F401 - a fixture
    signed_of,
    start_service,
    tuf_key,
    unix_socket,
    write_policy,
)

from hsmsign.service.client import ServiceClient


@pytest.fixture
def service(service_home, tmp_path):
    """This uid may sign timestamp (token) and targets (file)."""
    policy = write_policy(tmp_path / "policy.toml",
                          {"name": "ci", "uid": os.getuid(), "roles": ["timestamp", "targets"]})
    running = start_service(service_home, policy, f"unix:{tmp_path / 'sock'}",
                            audit=tmp_path / "audit.jsonl")
    running.policy = policy
    yield running
    running.stop()


def check(key_entry: dict, signed: dict, sig: str) -> None:
    """The signature verifies over the canonical bytes of exactly this metadata."""
    md = Metadata.from_dict({"signed": json.loads(json.dumps(signed)), "signatures": []})
    tuf_key(key_entry).verify_signature(Signature(key_entry["keyid"], sig), md.signed_bytes)


def test_a_token_pulled_out_is_503_then_recovers_by_itself(service, service_home):
    client = ServiceClient(service.url)
    keys = {k["role"]: k for k in client.keys()}
    client.sign(keys["timestamp"]["keyid"], signed_of("timestamp"))
    away = service_home.tokens.with_name("tokens.away")
    shutil.move(service_home.tokens, away)
    try:
        status, answer = client.request("POST", "/v1/sign", {"keyid": keys["timestamp"]["keyid"],
                                                             "signed": signed_of("timestamp")})
        assert status == 503 and "token" in answer["error"]
        status, answer = client.request("GET", "/readyz")
        assert status == 503 and answer["stores"]["token"] != "ok"
        assert answer["stores"]["file"] == "ok"
        signed = signed_of("targets")  # the file key goes on signing
        check(keys["targets"], signed, client.sign(keys["targets"]["keyid"], signed))
        time.sleep(1.5)  # the recovery task tries and fails meanwhile: still 503, no crash
        assert client.request("POST", "/v1/sign", {"keyid": keys["timestamp"]["keyid"],
                                                   "signed": signed_of("timestamp")})[0] == 503
    finally:
        shutil.move(away, service_home.tokens)
    deadline = time.monotonic() + 20
    while True:
        signed = signed_of("timestamp")
        status, answer = client.request("POST", "/v1/sign", {"keyid": keys["timestamp"]["keyid"],
                                                             "signed": signed})
        if status == 200:
            break
        assert status == 503 and time.monotonic() < deadline, answer
        time.sleep(0.2)
    check(keys["timestamp"], signed, answer["sig"])
    assert client.call("GET", "/readyz")["status"] == "ready"
    assert "token store back after" in service.text()
    assert service.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(service, service_home):
    keyid = service_home.keys["timestamp"]
    signed = signed_of("timestamp")
    whole = request_bytes({"keyid": keyid, "signed": signed})
    sock = unix_socket(service.url)
    sock.sendall(whole[:-10])  # in flight: the body is not all there yet
    time.sleep(0.3)
    service.signal(signal.SIGTERM)
    service.wait_for("finishing the requests in flight")
    sock.sendall(whole[-10:])
    status, answer = read_response(sock)
    sock.close()
    assert status == 200
    assert service.proc.wait(30) == 0
    lines = [json.loads(line) for line in service.audit.read_text().splitlines()]
    assert lines[-2]["result"] == "signed" and lines[-1]["request"] == "stop"
    assert not os.path.exists(service.url[5:])  # the socket is gone


def test_sighup_reloads_the_policy_and_keeps_it_when_the_new_one_is_bad(service, service_home):
    client = ServiceClient(service.url)
    snapshot = service_home.keys["snapshot"]
    request = {"keyid": snapshot, "signed": signed_of("snapshot")}
    assert client.request("POST", "/v1/sign", request)[0] == 404  # granted to no one: not served
    write_policy(service.policy, {"name": "ci", "uid": os.getuid(),
                                  "roles": ["timestamp", "targets", "snapshot"]})
    service.signal(signal.SIGHUP)
    service.wait_for("policy reloaded")
    assert client.request("POST", "/v1/sign", request)[0] == 200
    service.policy.write_text(service.policy.read_text() + 'colour = "blue"\n')
    service.signal(signal.SIGHUP)
    service.wait_for("policy not reloaded")
    assert "unknown field 'colour'" in service.text()
    assert client.request("POST", "/v1/sign", request)[0] == 200  # the old policy stays
    write_policy(service.policy, {"name": "ci", "uid": os.getuid(), "keys": ["ab" * 32]})
    service.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while service.text().count("policy not reloaded") < 2:
        assert time.monotonic() < deadline, service.text()
        time.sleep(0.05)
    assert f"granted key {'ab' * 32}" in service.text()
    assert client.request("POST", "/v1/sign", request)[0] == 200
    results = [json.loads(line)["result"] for line in service.audit.read_text().splitlines()
               if json.loads(line)["request"] == "reload"]
    assert results == ["reloaded", "refused", "refused"]


def test_clients_that_hang_up_or_dawdle_harm_no_one(service, service_home):
    keyid = service_home.keys["timestamp"]
    whole = request_bytes({"keyid": keyid, "signed": signed_of("timestamp")})
    for cut in (10, len(whole) // 2, len(whole) - 1, len(whole)):  # hang up at every stage
        sock = unix_socket(service.url)
        sock.sendall(whole[:cut])
        sock.close()
    slow = unix_socket(service.url)
    done = threading.Event()

    def dawdle() -> None:  # one byte every 10 ms: about two seconds for the request
        for i in range(0, len(whole), max(1, len(whole) // 200)):
            slow.sendall(whole[i:i + max(1, len(whole) // 200)])
            time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=dawdle)
    thread.start()
    client = ServiceClient(service.url)
    key = next(k for k in client.keys() if k["keyid"] == keyid)
    signed_while_slow = 0
    while not done.is_set():
        signed = signed_of("timestamp", version=signed_while_slow + 1)
        check(key, signed, client.sign(keyid, signed))
        signed_while_slow += 1
    thread.join()
    assert read_response(slow)[0] == 200
    slow.close()
    assert signed_while_slow >= 10  # others were served while the slow one dawdled
    assert client.call("GET", "/healthz") == {"status": "ok"}


def test_64_concurrent_clients_each_get_their_own_signature(service, service_home):
    keys = {k["role"]: k for k in ServiceClient(service.url).keys()}

    def one_client(n: int) -> int:
        client = ServiceClient(service.url)
        key = keys["timestamp" if n % 2 else "targets"]
        role = key["role"]
        for i in range(8):
            signed = signed_of(role, version=n * 100 + i + 1)  # every payload different
            check(key, signed, client.sign(key["keyid"], signed))
        client.close_connection()
        return n

    with ThreadPoolExecutor(64) as pool:
        assert sorted(pool.map(one_client, range(64))) == list(range(64))
    lines = [json.loads(line) for line in service.audit.read_text().splitlines()]
    assert sum(1 for e in lines if e.get("result") == "signed") == 64 * 8


def test_memory_stays_flat_over_10000_requests(service, service_home):
    keyid = service_home.keys["timestamp"]
    good = request_bytes({"keyid": keyid, "signed": signed_of("timestamp")})
    bad = [request_bytes({"keyid": keyid, "signed": signed_of("snapshot")}),
           request_bytes(b"{not json"), request_bytes({"keyid": "cd" * 32, "signed": {}})]

    def run(n: int) -> None:
        def connection(c: int) -> None:
            sock = unix_socket(service.url)
            for i in range(n // 8):
                body = bad[i % 3] if i % 4 == 3 else good
                sock.sendall(body)
                assert read_response(sock)[0] in (200, 400, 404)
            sock.close()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(connection, range(8)))

    run(2_000)  # warm up: caches, the allocator's arenas
    before = service.rss_kib()
    run(10_000)
    after = service.rss_kib()
    assert after - before < 8 * 1024, f"RSS grew from {before} KiB to {after} KiB"
    assert service.stop() == 0
