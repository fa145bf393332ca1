"""The README and docs/ stand alone: a user has only the repository. Links resolve inside it,
and the contributors' map of the code names modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_resolves_inside_the_repository():
    for page in PAGES:
        text = page.read_text()
        assert "../shared" not in text, f"{page.relative_to(ROOT)} points outside the repository"
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{page.relative_to(ROOT)}: {target} is outside"
            assert resolved.exists(), f"{page.relative_to(ROOT)}: {target} does not exist"


def test_architecture_is_linked_and_names_modules_that_exist():
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text()
    assert "(architecture.md)" in (ROOT / "docs" / "README.md").read_text()
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = text.split("## The parts", 1)[1].split("```")[1]
    named, parent = [], None
    for line in tree.splitlines():
        m = re.match(r"( +)([\w]+(?:\.py|/))(?:\s|$)", line)
        if not m or len(m.group(1)) > 4:
            continue  # the hsmsign/ line itself, or a description's continuation
        if len(m.group(1)) == 2:
            parent = m.group(2) if m.group(2).endswith("/") else None
            named.append(m.group(2))
        else:
            assert parent is not None, line
            named.append(parent + m.group(2))
    assert len(named) > 20, named
    for name in named:
        assert (ROOT / "hsmsign" / name).exists(), (
            f"docs/architecture.md names hsmsign/{name}, which does not exist: update the page")
