"""The repository's own documentation and tooling stay wired: README is a short landing page whose links
all resolve and whose `make` commands exist, the docs site's navigation names only pages that exist, and
the test tiers are defined once (scripts/tier.sh), with Make and tox both running it.

These read files only (no docs build: `make docs` does that in CI, in strict mode)."""

from __future__ import annotations

import configparser
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# [text](target) and ![alt](target), outside code; the target up to whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
TIERS = ("default", "fast", "qualitative", "slow", "gpu", "heavy")
# A tier spelled outside scripts/tier.sh: a marker expression, or `pytest-heavy tier NAME --` itself.
SPELLED_TIER = r"-m [\"']|-m (qualitative|slow|not)\b|tier (default|fast|qualitative|slow|gpu) --"


def prose(path: Path) -> str:
    """The Markdown file without its fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text()))


def slug(heading: str) -> str:
    """A heading's anchor as both the docs site (Python-Markdown's toc) and forges spell it."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M)}


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z]+:", t)]


def test_readme_is_a_landing_page_of_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_every_relative_link_in_readme_resolves() -> None:
    links = relative_links(README)
    assert links, "README.md links into the docs"
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (README.parent / target) if target else README
        if not path.exists():
            broken.append(f"{link}: no {path.relative_to(ROOT)}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading with anchor #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, "README.md links that resolve to nothing:\n" + "\n".join(broken)


def test_every_make_target_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    text = README.read_text()
    code = "\n".join([*FENCE.findall(text), *re.findall(r"`[^`\n]*`", FENCE.sub("", text))])
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", code))
    assert named and named <= targets, f"README names make targets the Makefile lacks: {named - targets}"


def test_every_page_in_the_docs_navigation_exists() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config[config.index("\nnav:"):]
    pages = re.findall(r"^\s+- (?:[^\n]*: )?([\w./-]+\.md)\s*$", nav, re.M)
    assert "index.md" in pages and "reference.md" in pages
    missing = [p for p in pages if not (ROOT / "docs" / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"


def test_the_tiers_are_defined_once_and_make_and_tox_both_run_them() -> None:
    makefile = (ROOT / "Makefile").read_text()
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    for name in TIERS:
        target = "test" if name == "default" else f"test-{name}"
        recipe = re.search(rf"^{target}: .*\n\t(.*)$", makefile, re.M)
        assert recipe and recipe.group(1).split()[:2] == ["$(TIER)", name], (target, recipe)
        assert f"tier.sh {name} " in tox[f"testenv:{name}" if name != "default" else "testenv"]["commands"]
    # No tier's marker expression or report option is spelled outside scripts/tier.sh.
    for path in ("Makefile", "tox.ini"):
        spelled = re.search(SPELLED_TIER, (ROOT / path).read_text())
        assert not spelled, f"{path} spells a tier itself: {spelled.group(0)!r}"


def test_an_unknown_tier_is_a_usage_error_naming_it() -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "tier.sh"), "nightly"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown tier 'nightly'" in done.stderr


@pytest.mark.parametrize("heading, anchor", [
    ("What `make demo` shows", "what-make-demo-shows"),
    ("ini keys (`[tool.pytest.ini_options]`, `pytest.ini`)", "ini-keys-toolpytestini_options-pytestini"),
])
def test_slug_spells_anchors_as_the_docs_site_does(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
