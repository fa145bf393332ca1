"""`hsmsign ceremony ...`: the guided offline root ceremony and its transcript."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hsmsign.cli.context import common_options, pass_app


class TerminalCeremonyUI:
    """One screen per step on the terminal (stderr, so that --json stays clean)."""

    def __init__(self, interactive: bool):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.interactive = interactive

    def screen(self, title: str, rows: list[tuple[str, str]]) -> None:
        from rich.panel import Panel
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in rows:
            table.add_row(key, value)
        self.console.print(Panel(table, title=title, title_align="left"))

    def tell(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def _require_terminal(self) -> None:
        from hsmsign.errors import HsmsignError

        if not self.interactive:
            raise HsmsignError("the ceremony asks questions: run it on a terminal, or with a plan "
                               "whose [confirm] all = true (rehearsal / CI)")

    def confirm(self, question: str) -> bool:
        self._require_terminal()
        return click.confirm(question, err=True, default=False)

    def pause(self, message: str) -> None:
        self._require_terminal()
        click.prompt(message, default="", show_default=False, err=True, prompt_suffix=" ")

    def ask(self, question: str) -> str:
        self._require_terminal()
        return click.prompt(question, err=True, prompt_suffix=" ")


def _plan_and_ui(plan_file, threshold, tokens, backup_to, allow_network):
    """The plan (the command line winning over the file) and the terminal's UI."""
    from hsmsign.ceremony.plan import load_plan
    from hsmsign.errors import HsmsignError

    if plan_file is None and (threshold is None or tokens is None):
        raise HsmsignError("give --plan FILE, or --threshold K and --tokens N")
    plan = load_plan(plan_file, threshold=threshold, tokens=tokens, backup_to=backup_to,
                     allow_network=allow_network)
    return plan, TerminalCeremonyUI(interactive=sys.stdin.isatty())


def _run(app, ceremony_class, repo, plan, ui, transcript_file, stopped: str) -> dict | None:
    """Run a ceremony; however it stops (an error, Ctrl-C, a token pulled out), list what it
    made on tokens, which only a command per key removes. With --json, print its result and
    return None: the command has nothing left to show."""
    import signal

    from hsmsign.errors import HsmsignError

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    run = ceremony_class(repo, app.home, plan, ui, app.secrets, force=app.force,
                         transcript_file=transcript_file)
    # A closed terminal or a kill: stop as for Ctrl-C (work directory removed, keys listed).
    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        result = run.run()
    except (Exception, KeyboardInterrupt, click.exceptions.Abort) as e:
        if run.created_on_tokens:
            app.note("keys created on tokens during this ceremony; remove them before the next "
                     "attempt, each with its token plugged in:")
            for line, command in zip(run.created_on_tokens, run.removals, strict=True):
                app.note(f"  {line}\n    {command}")
        if isinstance(e, HsmsignError):
            raise HsmsignError(f"{stopped}: {e}") from None
        if isinstance(e, (KeyboardInterrupt, click.exceptions.Abort)):
            raise HsmsignError(f"{stopped}: interrupted") from None
        raise HsmsignError(f"{stopped}: unexpected {type(e).__name__}: {e}; re-run with "
                           "--verbose for details") from e
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if app.json:
        app.emit_json(result)
        return None
    return result


@click.group()
def ceremony():
    """The guided offline root ceremony, and checking its transcript."""


def _run_options(default_transcript: str):
    """The options both ceremonies end with: --allow-network, --transcript, the common ones."""
    def decorate(f):
        f = common_options(pass_app(f))
        f = click.option("--transcript", "transcript_file",
                         type=click.Path(dir_okay=False, path_type=Path),
                         help="Write the signed transcript (JSON) here, its Markdown beside it "
                              f"(.md); default: {default_transcript}.")(f)
        return click.option("--allow-network", is_flag=True,
                            help="Rehearsal only: run with the network up.")(f)
    return decorate


@ceremony.command()
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="TOML plan: custodians, tokens, expiry, backups, confirmations.")
@click.option("--threshold", type=int, help="Root keys needed to sign (wins over the plan).")
@click.option("--tokens", type=int, help="Number of custodian tokens (wins over the plan).")
@click.option("--backup-to", multiple=True, type=click.Path(path_type=Path),
              help="Backup destination (repeat; wins over the plan).")
@_run_options("REPO/ceremony-transcript.json")
def root(app, repo, plan_file, threshold, tokens, backup_to, allow_network, transcript_file):
    """Create a new TUF root with one key per custodian token, step by step."""
    from hsmsign.ceremony import RootCeremony

    plan, ui = _plan_and_ui(plan_file, threshold, tokens, list(backup_to), allow_network)
    result = _run(app, RootCeremony, repo, plan, ui, transcript_file,
                  f"ceremony stopped; nothing was written to {repo} or the home")
    if result is None:
        return
    ui.screen("7. Done", [("repository", result["repository"]),
                          ("transcript", result["transcript"]),
                          ("digest", result["digest"]),
                          ("root keys", ", ".join(k[:16] for k in result["root_keys"]))])


@ceremony.command("rotate-root")
@click.argument("repo", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="TOML plan: [[custodian]] of the new root, [[old_custodian]] who sign with old keys.")
@click.option("--threshold", type=int, help="Root keys needed to sign the new root.")
@click.option("--tokens", type=int, help="Number of custodian tokens of the new root.")
@_run_options("REPO/ceremony-rotate-root-N-transcript.json")
def rotate_root(app, repo, plan_file, threshold, tokens, allow_network, transcript_file):
    """Replace root keys (a custodian leaves, a token is lost), signed by old and new keys."""
    from hsmsign.ceremony import RootRotation

    plan, ui = _plan_and_ui(plan_file, threshold, tokens, [], allow_network)
    result = _run(app, RootRotation, repo, plan, ui, transcript_file,
                  f"rotation stopped; {repo} is unchanged")
    if result is None:
        return
    if result.get("staged"):
        ui.screen("Staged", [("new root", f"v{result['root_version']}, in {result['staged']}: not "
                                          "published until the remaining custodians sign"),
                             ("they run", f"hsmsign sign {repo} root (or sign --file --previous "
                                          "on a copy from `hsmsign stage export`)"),
                             ("transcript", result["transcript"])])
        return
    ui.screen("Done", [("new root", f"v{result['root_version']}"), ("transcript", result["transcript"])])


@ceremony.command("verify-transcript")
@click.argument("transcript", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("repo", type=click.Path(file_okay=False, exists=True, path_type=Path))
@common_options
@pass_app
def verify_transcript(app, transcript, repo):
    """Prove a transcript is the one the ceremony wrote: hash chain, root signatures, files."""
    from hsmsign.ceremony import verify_transcript as check

    result = check(transcript, repo)
    if app.json:
        app.emit_json(result)
        return
    for name in result["replaced_since"]:
        app.note(f"metadata/{name} was replaced since the ceremony (as `repo refresh` does); "
                 "the versioned files are the ceremony's")
    click.echo(f"{transcript}: intact, {result['entries']} entries, signed by "
               f"{len(result['signed_by'])} root key(s) (threshold {result['threshold']})")
