"""Who may sign with which key: the policy file (TOML), one `[[client]]` table per client.

    [[client]]
    name = "release-pipeline"
    cn = "release-pipeline"     # mutual TLS: the client certificate's CN or a DNS SAN
    # uid = 1001                # Unix socket: the peer's uid (or gid = N)
    keys = ["<keyid>"]          # key IDs granted; or roles = ["timestamp"] (with gun = "...")
    max_expires_days = 7        # optional: refuse metadata expiring later than this
    # repository = "/srv/tuf"   # optional: versions must be newer than the ones published there

The file is checked strictly: an unknown field, a wrong type, a duplicate name or identity, a
key ID no store serves is an error naming the client and the field, at start and at reload
(where the old policy stays in force).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hsmsign.keys import KeyRecord
from hsmsign.service.errors import PolicyError

FIELDS = {"name", "cn", "uid", "gid", "keys", "roles", "gun", "max_expires_days", "repository"}
IDENTITIES = ("cn", "uid", "gid")


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection: a certificate's names, or a Unix uid/gid."""

    names: tuple[str, ...] = ()  # subject CN first, then DNS SANs
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None

    def describe(self) -> str:
        if self.uid is not None:
            return f"uid {self.uid} gid {self.gid} (pid {self.pid})"
        return f"certificate {', '.join(self.names) or '(no names)'}"


@dataclass(frozen=True)
class Client:
    name: str
    cn: str | None = None
    uid: int | None = None
    gid: int | None = None
    keys: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    gun: str | None = None
    max_expires_days: float | None = None
    repository: Path | None = None

    def grants(self, record: KeyRecord) -> bool:
        """This client may sign with the key of `record`."""
        if record.keyid in self.keys:
            return True
        return record.role in self.roles and (self.gun is None or record.gun == self.gun)


@dataclass(frozen=True)
class Policy:
    path: Path
    clients: tuple[Client, ...] = field(default_factory=tuple)

    def client_for(self, peer: Peer) -> Client | None:
        """The client `peer` is: by certificate name, else by uid, else by gid."""
        if peer.names:
            for client in self.clients:
                if client.cn is not None and client.cn in peer.names:
                    return client
            return None
        for attribute in ("uid", "gid"):
            value = getattr(peer, attribute)
            for client in self.clients:
                if value is not None and getattr(client, attribute) == value:
                    return client
        return None

    def keyids(self) -> set[str]:
        return {k for client in self.clients for k in client.keys}

    def served(self, records: Iterable[KeyRecord]) -> list[KeyRecord]:
        """The keys among `records` that some client is granted."""
        return [r for r in records if any(c.grants(r) for c in self.clients)]

    def check_keys(self, records: Iterable[KeyRecord]) -> None:
        """Every key ID the policy names is held by some store; every role grant has a key."""
        records = list(records)
        held = {r.keyid for r in records}
        for client in self.clients:
            for keyid in sorted(client.keys - held):
                raise PolicyError(f"{self.path}: client {client.name!r} is granted key {keyid}, "
                                  "which no store here holds; see `hsmsign key list`")
            for role in sorted(client.roles):
                if not any(r.role == role and (client.gun is None or r.gun == client.gun)
                           for r in records):
                    gun = f" with gun {client.gun!r}" if client.gun else ""
                    raise PolicyError(f"{self.path}: client {client.name!r} is granted role "
                                      f"{role!r}{gun}, and no store here holds a key of it")


def load_policy(path: Path) -> Policy:
    """The policy in `path`, checked; `PolicyError` names what is wrong and where."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise PolicyError(f"cannot read the policy file {path} ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path} is not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"client"})
    if unknown:
        raise PolicyError(f"{path}: unknown field {unknown[0]!r} (a policy has [[client]] tables)")
    tables = data.get("client", [])
    if not isinstance(tables, list) or not tables:
        raise PolicyError(f"{path}: no [[client]] table; the service would grant nothing")
    clients = [_client(path, i, table) for i, table in enumerate(tables, 1)]
    for attribute in ("name", *IDENTITIES):
        seen: dict = {}
        for client in clients:
            value = getattr(client, attribute)
            if value is not None and value in seen:
                raise PolicyError(f"{path}: clients {seen[value]!r} and {client.name!r} have the "
                                  f"same {attribute} {value!r}; each must be named once")
            seen[value] = client.name
    return Policy(path, tuple(clients))


def _client(path: Path, index: int, table) -> Client:
    where = f"{path}: [[client]] {index}"
    if not isinstance(table, dict):
        raise PolicyError(f"{where} is not a table")
    if isinstance(table.get("name"), str) and table["name"]:
        where = f"{path}: client {table['name']!r}"
    unknown = sorted(set(table) - FIELDS)
    if unknown:
        raise PolicyError(f"{where}: unknown field {unknown[0]!r}; "
                          f"the fields are {', '.join(sorted(FIELDS))}")

    def get(name: str, kind, what: str):
        value = table.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise PolicyError(f"{where}: {name} must be {what}")
        return value

    name = get("name", str, "a string")
    if not name:
        raise PolicyError(f"{where}: name is missing")
    cn, uid, gid = get("cn", str, "a string"), get("uid", int, "an integer"), get("gid", int, "an integer")
    if cn is None and uid is None and gid is None:
        raise PolicyError(f"{where}: say who the client is with cn (mutual TLS), uid or gid "
                          "(Unix socket)")
    keys = _strings(get("keys", list, "a list of key IDs") or [], where, "keys")
    roles = _strings(get("roles", list, "a list of role names") or [], where, "roles")
    if not keys and not roles:
        raise PolicyError(f"{where}: grants nothing; give keys = [...] or roles = [...]")
    if any(len(k) != 64 or k.strip("0123456789abcdef") for k in keys):
        raise PolicyError(f"{where}: keys must be whole key IDs (64 lowercase hex digits, as "
                          "`hsmsign key list --json` shows)")
    days = get("max_expires_days", (int, float), "a number of days")
    if days is not None and days <= 0:
        raise PolicyError(f"{where}: max_expires_days must be more than 0")
    repository = get("repository", str, "the path of a TUF repository directory")
    return Client(name=name, cn=cn, uid=uid, gid=gid, keys=frozenset(keys), roles=frozenset(roles),
                  gun=get("gun", str, "a string"), max_expires_days=days,
                  repository=Path(repository) if repository else None)


def _strings(values: list, where: str, name: str) -> list[str]:
    if not all(isinstance(v, str) and v for v in values):
        raise PolicyError(f"{where}: {name} must be a list of strings")
    return values
