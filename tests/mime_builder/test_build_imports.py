"""A build names its parts without Python's email parser: a name of letters, digits and . _ + -
(every name vfarm gives a part) reads back from its header as written, so only other names (an
attached file's) ask the parser. Importing it (email.parser, email.message, ...) cost every
`vfarm build` about 4 ms of its cold start (BENCHMARKS.md, section 3)."""

from __future__ import annotations

import email
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vfarm.mime_builder import mime

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torino.yaml"
PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


def parser_reads(name: str) -> str:
    """What cloud-init's parser reads back from the header a part named NAME gets."""
    return email.message_from_string(mime._disposition(name) + "\n\n").get_filename() or ""


def test_every_short_name_reads_back_as_the_parser_reads_it() -> None:
    names = [*PRINTABLE, *(a + b for a in PRINTABLE for b in PRINTABLE), "", "..", ".", "-", "a.b.c", "vfarm-library.py"]
    wrong = [name for name in names if mime.read_back_filename(name) != parser_reads(name)]
    assert wrong == []


@given(st.text(alphabet=string.ascii_letters + string.digits + "._+-", min_size=1, max_size=300))
def test_a_plain_name_reads_back_as_written(name: str) -> None:
    assert mime.read_back_filename(name) == parser_reads(name) == name


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_any_printable_name_reads_back_as_the_parser_reads_it(name: str) -> None:
    assert mime.read_back_filename(name) == parser_reads(name)


@pytest.mark.integration  # starts vfarm as a process (tests/conftest.py)
@pytest.mark.parametrize("handlers", [["embed", "--max-size", "1000000"], ["include=https://h.example.org/vfarm/"],
                                      ["include=https://h.example.org/vfarm/", "--pin"], ["baked"]])
def test_a_build_imports_no_email_parser(tmp_path: Path, handlers: list[str]) -> None:
    out = tmp_path / "user-data"
    code = (
        "import sys\n"
        "from vfarm.cli.main import main\n"
        f"assert main(['build', {str(EXAMPLE)!r}, '--handlers', *{handlers!r}, '-o', {str(out)!r}]) == 0\n"
        "print(sorted(m for m in sys.modules if m == 'email' or m.startswith('email.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert out.stat().st_size > 0
