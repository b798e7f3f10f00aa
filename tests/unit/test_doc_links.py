"""The docs hold together: every relative link in README.md and docs/*.md leads to a file
that exists, and to a heading of it when it names one; code cites docs/, not README
sections or files outside the project (docs/development.md, "Docs that are checked")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

# Documents sibling branches add in this session; README and the guides link them already.
# The lead removes each line once its branch is merged (the link is then checked like any).
EXPECTED_AT_MERGE = {
}

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for m in _HEADING.finditer(_FENCE.sub("", path.read_text())):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", path.read_text()))
    return [m.group(1) for m in _LINK.finditer(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", m.group(1))]  # http:, https:, mailto:


def test_the_slug_follows_github() -> None:
    assert slug("Health: `pitr status` and `GET /health/backup`") == \
        "health-pitr-status-and-get-healthbackup"
    assert slug("Deployment (systemd, Docker)") == "deployment-systemd-docker"
    assert slug("`[repository]`") == "repository"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in EXPECTED_AT_MERGE:
                broken.append(f"{target}: no file {rel}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {rel}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_guides_link_every_document_in_docs() -> None:
    """A page nobody links is a page nobody reads: README or the operator guide or the
    design document links every file in docs/."""
    linked = set()
    for doc in (ROOT / "README.md", ROOT / "docs" / "operator-guide.md",
                ROOT / "docs" / "design.md"):
        linked |= {(doc.parent / t.partition("#")[0]).resolve() for t in links(doc)}
    orphans = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not orphans, orphans


_README_SECTION = re.compile(r"README(?:'s)?[\s,:]*[\"“(]?[A-Z]")


def test_code_cites_docs_not_readme_sections_or_outside_files() -> None:
    """README is short now; the sections code used to cite live in docs/, and every
    Markdown file code names is one of the project's own."""
    tops = ("pitr", "tests", "scripts", "bench", "conf", "docker", "systemd", ".ci")
    files = [ROOT / "pyproject.toml", ROOT / "Makefile",
             *(p for top in tops for p in (ROOT / top).rglob("*") if p.is_file())]
    bad = []
    for path in files:
        if path.suffix == ".pyc" or path == Path(__file__):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if _README_SECTION.search(line) or any(
                    not _project_doc(m.group(0)) for m in _MD_FILE.finditer(line)):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "cite docs/<file>.md instead:\n" + "\n".join(bad)


# a Markdown file named in code: it must be one of the project's own documents
_MD_FILE = re.compile(r"[\w./-]*\b[\w-]+\.md\b")


def _project_doc(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return (ROOT / name).is_file() or (ROOT / "docs" / base).is_file() or base == "README.md"
