"""`hsmsign serve`: a signing service for CI pipelines, the keys on the token and the pipelines
holding none.

    policy.py      who may sign with which key (TOML, checked strictly)
    acceptance.py  what may be signed: TUF metadata of the key's role, within the policy's limits
    audit.py       the hash-chained, fsynced JSON-lines record of every request
    keyring.py     the keys served: one worker per store, health, recovery after a token returns
    metrics.py     Prometheus counters and the latency histogram
    app.py         the HTTP API (aiohttp): identity, /v1/sign, /v1/keys, /healthz, /readyz, /metrics
    server.py      listening (Unix socket or mutual TLS), signals (SIGTERM drains, SIGHUP reloads)
    client.py      the client: `hsmsign+https:` / `hsmsign+unix:` signer URIs, HSMSIGN_SIGNER_URL
"""
