"""README.md's command reference is what the CLI's own help says (regenerate it with
`kit cli-reference --write README.md`)."""

from __future__ import annotations

import typer

from kit import clidoc
from kit.cli import app
from tests.conftest import REPO, kit_cli


def test_readme_command_reference_matches_the_cli():
    generated = clidoc.render(typer.main.get_command(app))
    in_readme = clidoc.section((REPO / "README.md").read_text())
    assert in_readme == generated, "README.md's command reference is stale: run `kit cli-reference --write README.md`"


def test_reference_covers_every_visible_command_and_option():
    ref = clidoc.render(typer.main.get_command(app))
    for heading in ("### `kit run`", "### `kit recipes list`", "### `kit bundle verify`", "### `kit image build`"):
        assert heading in ref
    assert "`--json`" in ref and "`--version`" in ref and "job-run" not in ref  # hidden commands left out


def test_write_replaces_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{clidoc.BEGIN}\nSTALE-TEXT\n{clidoc.END}\nafter\n")
    proc = kit_cli("cli-reference", "--write", str(readme), check=True)
    text = readme.read_text()
    assert text.startswith("# x\nbefore\n") and text.endswith(f"{clidoc.END}\nafter\n") and "STALE-TEXT" not in text
    assert clidoc.section(text) == kit_cli("cli-reference", check=True).stdout and "updated" in proc.stderr
    readme.write_text("# no markers\n")
    bad = kit_cli("cli-reference", "--write", str(readme))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "README.md" in bad.stderr
