"""Passphrases and PINs: from the environment, else a prompt the CLI provides, else an error.

Nothing below the CLI prompts by itself: the CLI hands a `Prompter` in. Values from the
environment are taken as they are (as notary does); new secrets typed at a prompt are asked
twice and must be at least `MIN_PASSPHRASE_LENGTH` characters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from hsmsign.errors import HsmsignError, SecretUnavailable, WrongPassphrase
from hsmsign.keys import is_top_level

__all__ = ["Prompter", "SecretPrompt", "SecretUnavailable", "Secrets", "passphrase_variables"]

MIN_PASSPHRASE_LENGTH = 8
PROMPT_ATTEMPTS = 3
TOO_SHORT = (
    "Passphrase is too short. Please use a password manager to generate and store a good "
    "random passphrase."
)


# The backup passphrase (age scrypt); no notary or docker name exists for it.
BACKUP_PASSPHRASE_VARIABLES = ["HSMSIGN_BACKUP_PASSPHRASE"]


class Prompter(Protocol):
    """How the CLI asks a person for a secret (no echo) and tells them why it asks again."""

    def ask_secret(self, prompt: str) -> str: ...

    def tell(self, message: str) -> None: ...


T = TypeVar("T")


class SecretPrompt(str):
    """A prompt that says which secret it asks for, for prompters that answer without reading
    it (a securesystemslib secrets handler is asked for a "pin" or a "passphrase"). A prompt
    that is a plain `str` asks for a passphrase."""

    kind: str

    def __new__(cls, text: str, kind: str) -> SecretPrompt:
        prompt = super().__new__(cls, text)
        prompt.kind = kind
        return prompt


def secret_kind(prompt: str) -> str:
    """"pin" or "passphrase": what `prompt` asks for."""
    return prompt.kind if isinstance(prompt, SecretPrompt) else "passphrase"


def passphrase_variables(role: str) -> list[str]:
    """Environment variables that may hold the passphrase of `role`'s keys, first wins."""
    if is_top_level(role):
        kind = role.upper()
    else:
        kind = "DELEGATION"
    names = [f"HSMSIGN_{kind}_PASSPHRASE", f"NOTARY_{kind}_PASSPHRASE"]
    # docker's REPOSITORY passphrase covers every key but root.
    names.append(
        "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE"
        if role == "root"
        else "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE"
    )
    return names


def role_kind(role: str) -> str:
    return role if is_top_level(role) else "delegation"


class Secrets:
    """Find secrets for one process; each is asked for at most once and then remembered."""

    def __init__(self, environ: Mapping[str, str] | None = None,
                 prompter: Prompter | None = None, *,
                 nobody_to_ask: str = "no terminal to ask for a secret on") -> None:
        self.environ = os.environ if environ is None else environ
        self.prompter = prompter
        self.nobody_to_ask = nobody_to_ask  # why a secret cannot be asked for, when it cannot
        self._passphrases: dict[str, str] = {}
        self._sources: dict[str, str] = {}  # role kind -> environment variable name, or "prompt"
        self._pins: dict[str, str] = {}
        self._backup_passphrase: str | None = None
        self._backup_source = "prompt"

    # -- passphrases -------------------------------------------------------------------

    def passphrase(self, role: str, *, purpose: str = "") -> str:
        """The passphrase of an existing key of `role`."""
        return self._role_passphrase(
            role, lambda kind, variables: self._ask(
                f"Enter passphrase for {purpose or kind + ' key'}: ", variables=variables),
            note_source=True)

    def _role_passphrase(self, role: str, ask: Callable[[str, list[str]], str], *,
                         note_source: bool = False) -> str:
        """The passphrase remembered for `role`'s kind, else its variables', else
        `ask(kind, variables)`; remembered. `note_source`: where it came from is kept, for
        what `unlock` says when it turns out wrong."""
        kind = role_kind(role)
        if kind in self._passphrases:
            return self._passphrases[kind]
        variables = passphrase_variables(role)
        value = self._from_env(variables)
        if note_source:
            self._sources[kind] = self._env_name(variables) or "prompt"
        if value is None:
            value = ask(kind, variables)
        self._passphrases[kind] = value
        return value

    def unlock(self, role: str, purpose: str, attempt: Callable[[str], T | None]) -> T:
        """Run `attempt(passphrase)` until it returns a value; None means a wrong passphrase.

        A typed passphrase may be typed again (up to three times); one from the environment
        is wrong for good, and the error names the variable it came from.
        """
        kind = role_kind(role)
        return self._retry(purpose, lambda: self.passphrase(role, purpose=purpose),
                           lambda: self._sources.get(kind, "prompt"),
                           lambda: self.forget_passphrase(role), attempt,
                           remembered=lambda: kind in self._passphrases)

    def _retry(self, what: str, get: Callable[[], str], source: Callable[[], str],
               forget: Callable[[], None], attempt: Callable[[str], T | None], *,
               remembered: Callable[[], bool] = lambda: False) -> T:
        tries = 0
        while True:
            typed_before = remembered()  # typed for an earlier key of this command
            result = attempt(get())
            if result is not None:
                return result
            where = source()
            forget()
            if where == "prompt" and self.prompter is not None:
                if typed_before:
                    self.prompter.tell(f"The passphrase typed before does not open {what}.")
                    continue
                tries += 1
                if tries < PROMPT_ATTEMPTS:
                    self.prompter.tell("Wrong passphrase. Try again.")
                    continue
            hint = (f"{PROMPT_ATTEMPTS} tries; run the command again" if where == "prompt"
                    else f"check {where}")
            raise WrongPassphrase(f"wrong passphrase for {what}; {hint}")

    def new_passphrase(self, role: str, *, purpose: str = "") -> str:
        """A passphrase to protect a new key of `role` (asked twice at a prompt)."""
        return self._role_passphrase(
            role, lambda kind, variables: self._ask_new(
                f"Enter passphrase for new {purpose or kind + ' key'}: ", variables))

    def forget_passphrase(self, role: str) -> None:
        """Drop a remembered passphrase (it turned out to be wrong)."""
        self._passphrases.pop(role_kind(role), None)

    def ask_new_passphrase(self, purpose: str, variables: list[str]) -> str:
        """A new passphrase for a purpose with no role (e.g. `key passwd`), never cached."""
        value = self._from_env(variables)
        if value is None:
            value = self._ask_new(f"Enter new passphrase for {purpose}: ", variables)
        return value

    # -- the backup passphrase ---------------------------------------------------------

    def backup_passphrase(self, *, new: bool = False) -> str:
        """The passphrase of a backup archive: $HSMSIGN_BACKUP_PASSPHRASE, else a prompt
        (asked twice, and at least 8 characters, when `new`)."""
        if self._backup_passphrase is not None:
            return self._backup_passphrase
        value = self._from_env(BACKUP_PASSPHRASE_VARIABLES)
        self._backup_source = "prompt" if value is None else BACKUP_PASSPHRASE_VARIABLES[0]
        if value is None:
            if new:
                value = self._ask_new("Enter passphrase for the new backup: ",
                                      BACKUP_PASSPHRASE_VARIABLES)
            else:
                value = self._ask("Enter passphrase for the backup: ",
                                  variables=BACKUP_PASSPHRASE_VARIABLES)
        self._backup_passphrase = value
        return value

    def unlock_backup(self, what: str, attempt: Callable[[str], T | None]) -> T:
        """Run `attempt(passphrase)` until it returns a value, as `unlock` does for keys."""
        def forget() -> None:
            self._backup_passphrase = None

        return self._retry(what, self.backup_passphrase, lambda: self._backup_source, forget,
                           attempt)

    # -- a device's other secrets ------------------------------------------------------

    def device_secret(self, variable: str, prompt: str, *, what: str, new: bool = False) -> str:
        """A secret of a device that is no key passphrase or user PIN (a YubiKey's PUK or
        management key, its new PIN): `variable`, else a prompt (asked twice when `new`);
        never remembered."""
        value = self._from_env([variable])
        if value is not None:
            return value
        if self.prompter is None:
            raise SecretUnavailable(f"no terminal to ask for the {what} on; set {variable} in "
                                    "the environment")
        return self._prompt(
            self.prompter, prompt,
            check=lambda v: None if v else "An empty value is not accepted.",
            repeat=(f"Repeat the {what}: ", f"The two {what}s do not match.") if new else None,
            give_up=lambda _: f"no {what} given; nothing was changed")

    # -- PINs --------------------------------------------------------------------------

    def pin(self, token: str, variables: list[str] | None = None) -> str:
        """The user PIN of `token` (a label or serial, used for the prompt and the cache)."""
        if token in self._pins:
            return self._pins[token]
        variables = variables or ["HSMSIGN_PIN"]
        value = self._from_env(variables)
        if value is None:
            value = self._ask(SecretPrompt(f"Enter PIN for token {token}: ", "pin"),
                              variables=variables)
        self._pins[token] = value
        return value

    def cached_pin(self, token: str) -> str | None:
        """The PIN of `token` if it was given in this process; never asks."""
        return self._pins.get(token)

    def forget_pin(self, token: str) -> None:
        self._pins.pop(token, None)

    def remember_pin(self, token: str, value: str) -> None:
        """A PIN just set (e.g. by `token setup`), so that it is not asked again."""
        self._pins[token] = value

    # -- internals ---------------------------------------------------------------------

    def _env_name(self, variables: list[str]) -> str | None:
        return next((name for name in variables if self.environ.get(name)), None)

    def can_get(self, variables: list[str]) -> bool:
        """Whether a secret from `variables` could be had without failing: one is set, or
        there is someone to ask (for a check before anything is made)."""
        return self.prompter is not None or any(self.environ.get(v) for v in variables)

    def _from_env(self, variables: list[str]) -> str | None:
        for name in variables:
            value = self.environ.get(name)
            if value:
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:  # bytes that are not UTF-8; never show them
                    raise HsmsignError(f"{name} is not valid UTF-8; set it again") from None
                return value
        return None

    def _require_prompter(self, variables: list[str]) -> Prompter:
        if self.prompter is None:
            raise SecretUnavailable(f"{self.nobody_to_ask}; set {variables[0]} in the environment")
        return self.prompter

    def _ask(self, prompt: str, *, variables: list[str]) -> str:
        return self._prompt(self._require_prompter(variables), prompt,
                            check=lambda v: None if v else "An empty secret is not accepted.",
                            give_up=lambda _: f"no secret given; type it at the prompt or set "
                                              f"{variables[0]}")

    def _ask_new(self, prompt: str, variables: list[str]) -> str:
        return self._prompt(
            self._require_prompter(variables), prompt,
            check=lambda v: TOO_SHORT if len(v) < MIN_PASSPHRASE_LENGTH else None,
            repeat=("Repeat passphrase: ", "Passphrases do not match."),
            give_up=lambda problem: f"{problem} Nothing was changed.")

    @staticmethod
    def _prompt(prompter: Prompter, prompt: str, *, check: Callable[[str], str | None],
                give_up: Callable[[str], str], repeat: tuple[str, str] | None = None) -> str:
        """Ask up to PROMPT_ATTEMPTS times; `check` names what is wrong with a value (None: it
        is fine), `repeat` is (the prompt to type it again, what to say when they differ)."""
        problem = ""
        for _ in range(PROMPT_ATTEMPTS):
            value = prompter.ask_secret(prompt)
            problem = check(value)
            if problem is None and repeat is not None and prompter.ask_secret(repeat[0]) != value:
                problem = repeat[1]
            if problem is None:
                return value
            prompter.tell(problem)
        raise HsmsignError(give_up(problem))
