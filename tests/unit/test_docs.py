"""README.md and docs/*.md: every relative link points at a file that exists, and every #anchor at a heading."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _text(inline: Token) -> str:
    return "".join(child.content for child in inline.children or () if child.type in ("text", "code_inline"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(tokens: list[Token]) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for opening, inline in itertools.pairwise(tokens):
        if opening.type != "heading_open":
            continue
        base = slug(_text(inline))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(tokens: list[Token]) -> list[str]:
    found = []
    for token in tokens:
        for child in token.children or ():
            if child.type == "link_open":
                found.append(str(child.attrs["href"]))
    return found


def parse(page: Path) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(page.read_text(encoding="utf-8"))


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def broken_links(page: Path) -> list[str]:
    broken = []
    for href in links(parse(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", href):  # https:, mailto: ...: not ours to check
            continue
        path, _, anchor = href.partition("#")
        target = (page.parent / unquote(path)).resolve() if path else page
        if not target.exists():
            broken.append(f"{href}: no file {_shown(target)}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(parse(target)):
            broken.append(f"{href}: no heading #{anchor} in {_shown(target)}")
    return broken


def test_the_docs_are_there() -> None:
    assert len(PAGES) > 1, "docs/*.md holds the reference the README links to"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / href.partition("#")[0]).resolve() for href in links(parse(ROOT / "README.md"))}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A page\n\n## Two `words`\n\n[ok](#two-words) [file](b.md) [gone](c.md) [bad](#three)\n")
    (tmp_path / "b.md").write_text("b\n")
    assert [b.split(":")[0] for b in broken_links(tmp_path / "a.md")] == ["c.md", "#three"]
