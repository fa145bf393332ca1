"""The service's Prometheus metrics (prometheus_client, a registry per service so that tests
and two services in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: a SoftHSM signature takes ~0.1 ms, a network HSM a few ms, a KMS tens of ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.signatures = Counter("hsmsign_signatures", "Signatures made, by key and client",
                                  ["keyid", "client"], registry=self.registry)
        self.refusals = Counter("hsmsign_refusals", "Requests refused, by reason and client",
                                ["reason", "client"], registry=self.registry)
        self.errors = Counter("hsmsign_errors", "Requests that failed in the service or a store",
                              ["kind"], registry=self.registry)
        self.latency = Histogram("hsmsign_sign_seconds", "Time to answer POST /v1/sign",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_up = Gauge("hsmsign_store_up", "1 when the store answers, else 0", ["store"],
                              registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
