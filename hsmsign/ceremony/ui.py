"""What a ceremony asks of the person running it, through the CLI, and how it stops."""

from __future__ import annotations

from typing import Protocol

from hsmsign.errors import HsmsignError


class CeremonyAborted(HsmsignError):
    """The operator said no, or a step failed; nothing was moved into place."""


class CeremonyUI(Protocol):
    def screen(self, title: str, rows: list[tuple[str, str]]) -> None: ...

    def tell(self, message: str) -> None: ...  # e.g. "Touch your YubiKey now", at once

    def confirm(self, question: str) -> bool: ...

    def pause(self, message: str) -> None: ...

    def ask(self, question: str) -> str: ...
