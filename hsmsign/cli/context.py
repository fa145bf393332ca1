"""What every command shares: options, the home, the stores, secrets, and output."""

from __future__ import annotations

import gc
import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a short command that makes many objects
    without reference cycles (100,000 targets, a backup of 10,000 keys): every few thousand
    new ones the collector walks all that are alive, ~15% of `target add`'s CPU time for
    100,000 targets. Memory is still freed as usual (reference counting)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class TerminalPrompter:
    """Asks on the terminal without echo; used only when stdin is a terminal."""

    def ask_secret(self, prompt: str) -> str:
        return getpass.getpass(prompt)

    def tell(self, message: str) -> None:
        click.echo(message, err=True)


@dataclass
class AppContext:
    home_option: str | None = None
    pkcs11_module: str | None = None
    verbose: bool = False
    json: bool = False
    force: bool = False
    _stores: Any = field(default=None, repr=False)
    _secrets: Any = field(default=None, repr=False)
    _remote: Any = field(default=None, repr=False)  # False: no HSMSIGN_SIGNER_URL

    @property
    def home(self):
        from hsmsign.config import resolve_home

        return resolve_home(self.home_option)

    @property
    def secrets(self):
        if self._secrets is None:
            from hsmsign.secrets import Secrets

            self._secrets = Secrets(prompter=TerminalPrompter() if sys.stdin.isatty() else None)
        return self._secrets

    @property
    def stores(self):
        if self._stores is None:
            from hsmsign.config import load_token_config
            from hsmsign.keystore.stores import KeyStores

            config = load_token_config(self.home, module=self.pkcs11_module)
            # notify: the YubiKey touch prompt and factory-default warnings reach the person even
            # when stdin is not a terminal (PIN from HSMSIGN_PIN in a script).
            self._stores = KeyStores(self.home, self.secrets, config, force=self.force,
                                     notify=self.note)
        return self._stores

    def close(self) -> None:
        if self._stores is not None:
            self._stores.close()
        if self._remote:
            self._remote.close()

    # -- repositories ------------------------------------------------------------------

    def repository(self, path, *, signing: bool = True, only: set[str] | None = None,
                   staged_view: bool = True):
        """An `HsmsignRepository` with this machine's keys (no lock: see `locked`); with
        `staged_view=False` it reads metadata/ only, as a client does."""
        from hsmsign.repository import HsmsignRepository

        service = None
        if signing:
            from hsmsign.signing import SigningService

            # HSMSIGN_SIGNER_URL: keys this machine does not hold sign through the service.
            service = SigningService(self.stores, only=only, remote=self.remote_keys)
        return HsmsignRepository(Path(path), service, staged_view=staged_view)

    def existing_repository(self, path):
        """The repository at `path` for reading (no signing); an error if there is none."""
        repository = self.repository(path, signing=False)
        repository.require()
        return repository

    @property
    def remote_keys(self):
        """The keys of the signing service HSMSIGN_SIGNER_URL names, or None."""
        if self._remote is None:
            from hsmsign.service.client import remote_keys_from_environment

            self._remote = remote_keys_from_environment() or False
        return self._remote or None

    def resolve_key(self, keyid_or_prefix: str) -> str:
        """A full key ID held here or, with HSMSIGN_SIGNER_URL, granted by the service."""
        from hsmsign.errors import NotFound

        try:
            return self.stores.resolve(keyid_or_prefix)
        except NotFound:
            if self.remote_keys is None:
                raise
            wanted = keyid_or_prefix.strip().lower()
            matches = [k for k in self.remote_keys.keyids() if k.startswith(wanted)]
            if len(matches) != 1:
                raise
            return matches[0]

    def locked(self, path, *, new: bool = False):
        """Hold the repository's lock for the rest of the command. Unless the command makes a
        `new` repository, the directory must be one (no lock file is left in any other)."""
        from hsmsign.repository import HsmsignRepository, RepositoryLock

        if not new:
            HsmsignRepository(Path(path)).require()
        return RepositoryLock(Path(path))

    def public_key(self, key_or_pem: str):
        """A TUF key from a key ID (prefix) in some store, or from a PEM file."""
        import os

        if os.path.isfile(key_or_pem):  # a PEM file needs no store
            from hsmsign.keys import load_public_key_file, tuf_key

            return tuf_key(load_public_key_file(key_or_pem))
        return self.stores.tuf_key_of(key_or_pem)

    def report_signing(self, repo, written: list[str], extra: dict | None = None) -> None:
        """What was signed, and what still needs signatures (stderr, or JSON on stdout, with
        the command's `extra` fields)."""
        reports = list(repo.reports.values())
        warnings = list(getattr(repo.signing, "warnings", None) or [])
        for warning in warnings:
            self.note(f"warning: the configured token is not present, so its keys did not "
                      f"sign: {warning}")
        outcome = getattr(repo, "outcome", None)
        staged = list(outcome.staged) if outcome else []
        waiting = dict(outcome.waiting) if outcome else {}
        if self.json:
            self.emit_json({**(extra or {}), "written": written,
                            "signing": [r.to_json() for r in reports], "warnings": warnings,
                            "staged": staged,
                            "waiting": {role: [t.to_json() for t in checks]
                                        for role, checks in waiting.items()}})
            return
        for name in written:
            self.note(f"wrote metadata/{name}")
        for name in staged:
            self.note(f"staged staged/{name} (not published until it is signed to threshold)")
        for role, checks in waiting.items():
            for t in checks:
                if not t.met:
                    self.note(f"{role} ({t.label}) needs {t.missing} more signature(s) from: "
                              f"{', '.join(k[:7] for k in t.unsigned) or 'no key'}"
                              f"{self.stores.elsewhere(t.unsigned)}; they sign with `hsmsign "
                              f"sign REPO {role}`, or `sign --file` on a copy from `hsmsign stage "
                              f"export`")
        for r in reports:
            here = ", ".join(k[:7] for k in r.signed_here) or "none"
            line = f"{r.role} v{r.version}: {len(r.valid)}/{r.threshold} signatures (signed now: {here})"
            if r.missing:
                line += (f"; needs {r.missing} more from: "
                         f"{', '.join(k[:7] for k in r.unsigned_keys)}")
            self.note(line)

    # -- output ------------------------------------------------------------------------

    def emit_json(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2, sort_keys=False))

    def note(self, message: str) -> None:
        """A line for the person (stderr, so that stdout stays parseable)."""
        click.echo(message, err=True)

    def table(self, columns: list[str], rows: list[list[str]], empty: str) -> None:
        """Aligned columns on stdout, whole lines (for grep and scripts), the header in bold on
        a terminal. Drawn here: rich takes about a second for the thousand rows of a backup."""
        if not rows:
            self.note(empty)
            return
        rows = [[str(cell) for cell in row] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

        def line(cells: list[str]) -> str:
            return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

        header = line(columns)
        out = [click.style(header, bold=True) if sys.stdout.isatty() else header]
        out.extend(line(r) for r in rows)
        click.echo("\n".join(out))


# A repository directory. Not checked by click: commands say "not an hsmsign repository"
# (one `error:` line, status 1) for a missing directory as for any other.
REPO = click.argument("repo", type=click.Path(path_type=Path))


def _set_flag(name: str):
    def callback(ctx: click.Context, _param, value: bool):
        if value:
            setattr(ctx.ensure_object(AppContext), name, True)
    return callback


def common_options(f):
    """`--json` and `--force`, accepted before or after the subcommand."""
    f = click.option("--json", "json_", is_flag=True, expose_value=False, is_eager=True,
                     callback=_set_flag("json"), help="Print machine-readable JSON.")(f)
    f = click.option("--force", is_flag=True, expose_value=False, is_eager=True,
                     callback=_set_flag("force"),
                     help="Go ahead where hsmsign would stop to protect you.")(f)
    return f


pass_app = click.make_pass_decorator(AppContext, ensure=True)
