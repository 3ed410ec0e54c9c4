"""The documentation's links resolve inside the repository, and nothing points outside it.

Every relative link in README.md, CONTRIBUTING.md, SECURITY.md, CHANGELOG.md and docs/*.md
names a file of the repository (and its #anchor a heading of that page, as GitHub spells
headings' anchors); no link or path in them, nor a docs/*.md named in the code, leads out of the
repository or to a page that is not in it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / n for n in ("README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md")]
    + list((ROOT / "docs").glob("*.md"))
)
CODE_DIRS = ("shared", "edge", "cloud", "firmware-sim", "tests", "bench", "ansible", ".ci")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
# A path that climbs out of its folder, in a link or in the text: ../x, ../../x.
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+[\w.-][\w./-]*)")
# A Markdown page named in the text (README.md, docs/disk.md, ARCHITECTURE.md).
PAGE_NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.md)\b")


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a heading or link there is not one)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it (lower case, punctuation dropped, spaces ->
    hyphens; a repeated heading gets -1, -2, ... in :func:`anchors`)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _prose(page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def _inside(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page: Path) -> None:
    bad = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not _inside(path):
            bad.append(f"{target}: outside the repository")
        elif not path.exists():
            bad.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            bad.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not bad, f"{page.relative_to(ROOT)}: " + "; ".join(bad)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_nothing_points_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    bad = [p for p in CLIMB.findall(text) if not _inside(page.parent / p)]
    assert not bad, f"{page.relative_to(ROOT)} points outside the repository: {bad}"


def _page_exists(name: str, base: Path) -> bool:
    return any((where / name).exists() for where in (base, ROOT, ROOT / "docs")) or any(
        p.name == name for p in ROOT.rglob(name) if ".venv" not in p.parts
    )


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_pages_named_in_the_text_exist(page: Path) -> None:
    missing = sorted(
        {n for n in PAGE_NAME.findall(page.read_text()) if not _page_exists(n, page.parent)}
    )
    assert not missing, f"{page.relative_to(ROOT)} names pages the repository lacks: {missing}"


def test_the_code_names_only_pages_that_exist() -> None:
    missing = []
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*"):
            if not path.is_file() or path.suffix not in {".py", ".yml", ".yaml", ".j2", ""}:
                continue
            for name in re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text(errors="replace")):
                if not (ROOT / name).exists():
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
            for climb in CLIMB.findall(path.read_text(errors="replace")):
                if "ARCHITECTURE" in climb or climb.endswith(".md"):
                    if not _inside(path.parent / climb):
                        missing.append(f"{path.relative_to(ROOT)}: {climb}")
    assert not missing, "pages named in the code that the repository lacks: " + "; ".join(missing)


def test_slug_spells_anchors_as_github_does() -> None:
    assert slug("Releases: no replayed, stale or foreign models") == (
        "releases-no-replayed-stale-or-foreign-models"
    )
    assert slug("`[kafka]`") == "kafka" and slug("sim_scale") == "sim_scale"


def test_the_readme_leads_to_every_docs_page() -> None:
    linked = {t.partition("#")[0] for t in LINK.findall(_prose((ROOT / "README.md").read_text()))}
    unlinked = [
        p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in linked
    ]
    assert not unlinked, f"README.md's 'Where to go next' lacks: {unlinked}"
