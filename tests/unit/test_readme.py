"""The README must stay true: its schema appendix is the schema module's own table,
and the commands it promises exist."""

import re
from pathlib import Path

from fedmpi.cli import COMMANDS
from fedmpi.results import schema_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_schema_appendix_matches_the_schema_module():
    text = README.read_text()
    m = re.search(r"<!-- schema:begin[^>]*-->\n(.*?)\n<!-- schema:end -->", text, re.S)
    assert m, "README lost its schema appendix markers"
    assert m.group(1).strip() == schema_markdown().strip()


def test_documented_commands_exist():
    text = README.read_text()
    for name in re.findall(r"`fedmpi (\w+)", text):
        assert name in COMMANDS, name
    for target in ("make run", "make test", "make bench", "make paper-cpu"):
        assert target in text
    makefile = (README.parent / "Makefile").read_text()
    for target in ("run:", "test:", "bench:", "paper-cpu:", "install:"):
        assert f"\n{target}" in makefile
