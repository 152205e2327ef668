"""Every test docs/robustness.md and docs/probe.md cite exists, so the tables cannot drift."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["docs/robustness.md", "docs/probe.md"]
CITATION = re.compile(r"`((?:tests/)?test_\w+\.py)?(?:::(\w+))?`")


def citations(text: str) -> list[tuple[str, str | None]]:
    """(test file, test name or None) for each cited `file::name`, `file` or `::name`; a bare
    `::name` belongs to the last file cited before it."""
    out, current = [], None
    for line in text.splitlines():
        for match in CITATION.finditer(line):
            file, name = match.groups()
            if file is None and name is None:
                continue
            current = file or current
            assert current, f"{name} is cited without a file: {line[:120]}"
            out.append((Path(current).name, name))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_test_exists(doc):
    found = citations((ROOT / doc).read_text())
    assert found, f"{doc} cites no tests"
    for file, name in found:
        path = ROOT / "tests" / file
        assert path.is_file(), f"{doc} cites {file}, which does not exist"
        if name:
            assert re.search(rf"^def {name}\(", path.read_text(), re.M), (
                f"{doc} cites {file}::{name}, which is not a test there"
            )


def test_the_citation_reader_reads_bare_names_against_the_last_file():
    text = "| x | `test_a.py::one`, `::two`, `test_b.py` |\n| y | `::three` |"
    assert citations(text) == [
        ("test_a.py", "one"),
        ("test_a.py", "two"),
        ("test_b.py", None),
        ("test_b.py", "three"),
    ]
