"""The `hsmsign` command line. Subcommand modules are imported only when they run, so that
`hsmsign --help` stays fast (see bench/bench_startup.py)."""

from __future__ import annotations

import sys

import click

from hsmsign.cli.context import AppContext, common_options

# name -> (module, attribute, one-line help shown by `hsmsign --help`)
COMMANDS = {
    "key": ("hsmsign.cli.key", "key", "Generate, list, import, export and remove signing keys."),
    "token": ("hsmsign.cli.token", "token", "YubiKeys and PKCS#11 tokens: list, set up, reset."),
    "repo": ("hsmsign.cli.repo", "repo", "Create, inspect, verify and refresh a TUF repository."),
    "target": ("hsmsign.cli.target", "target", "Add, remove and list targets."),
    "delegation": ("hsmsign.cli.delegation", "delegation", "Delegate targets to other keys."),
    "signer": ("hsmsign.cli.delegation", "signer", "DCT signers: the releases delegation and one per signer."),
    "sign": ("hsmsign.cli.sign", "sign", "Add this machine's signatures to a role (threshold signing)."),
    "rotate": ("hsmsign.cli.sign", "rotate", "Replace the keys of a role."),
    "ceremony": ("hsmsign.cli.ceremony", "ceremony", "The guided offline root ceremony."),
    "stage": ("hsmsign.cli.stage", "stage", "Changes waiting for signatures: list, export, merge, discard."),
    "publish": ("hsmsign.cli.stage", "publish", "Publish the staged change once it is signed to threshold."),
    "backup": ("hsmsign.cli.backup", "backup", "Encrypted backups of the file keys; verify; safe restore."),
    "serve": ("hsmsign.cli.serve", "serve", "The signing service for CI pipelines; verify its audit log."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[name]
        import importlib

        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), envvar=None,
              help="hsmsign home (default: $HSMSIGN_HOME, else ~/.hsmsign).")
@click.option("--pkcs11-module", help="PKCS#11 module (default: $HSMSIGN_PKCS11_MODULE, config, well-known paths).")
@click.option("--verbose", is_flag=True,
              help="Show what hsmsign does, step by step, and tracebacks on errors (stderr).")
@common_options
@click.version_option(package_name="hsmsign")
@click.pass_context
def cli(ctx, home, pkcs11_module, verbose):
    """Keep TUF signing keys on hardware tokens and encrypted files, and sign with them there."""
    app = ctx.ensure_object(AppContext)
    app.home_option = home
    app.pkcs11_module = pkcs11_module
    app.verbose = app.verbose or verbose
    if app.verbose:
        _log_to_stderr()
    ctx.call_on_close(app.close)


def _log_to_stderr() -> None:
    """The trail of hsmsign's loggers (one per module, as python-tuf has) on stderr, for
    --verbose only: which store a key comes from, logins, files written. Nothing logged holds
    a secret."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("hsmsign")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> None:
    app = AppContext()
    try:
        cli.main(args=argv, prog_name="hsmsign", obj=app, standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted; nothing was changed", app)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:  # a missing argument, an unknown option, a bad value
        where = e.ctx.command_path if e.ctx is not None else "hsmsign"
        _fail(f"{_one_line(e.format_message()).rstrip('.')}; see `{where} --help`", app)
    except click.ClickException as e:
        _fail(_one_line(e.format_message()), app)
    except KeyboardInterrupt:
        _fail("interrupted", app)
    except Exception as e:  # noqa: BLE001 - every failure becomes one error line
        from hsmsign.errors import HsmsignError

        if app.verbose:
            import traceback

            traceback.print_exc()
        if isinstance(e, HsmsignError):
            _fail(str(e), app)
        _fail(f"unexpected {type(e).__name__}: {e}; re-run with --verbose for details", app)
    sys.exit(0)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _fail(message: str, app: AppContext) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)
