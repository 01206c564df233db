"""The documented-figures check: pages written here whose answer is known by construction, a stand-in for the
commands (a table of what each prints), and the fast check of the real pages."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from faithclip.cli.docs import DOCS, CommandFailed, main
from faithclip.docfigures import (
    Claim,
    claim_figures,
    compare_intervals,
    compare_output,
    fresh_seed,
    pick,
    results_blocks,
    scale_numbers,
    tokens,
)

ROOT = Path(__file__).resolve().parents[2]

OUTPUT = "pointing 0.512 [0.400, 0.600] (n=50)\nmargin 12.34 in 7 s\n"
PAGE = """# A page

Some prose: the margin is 12.34 (`fake --seed 3`).

<!-- results:main:start reduced -->
```
$ fake --seed 3
{output}```
<!-- results:main:end -->

<!-- results:table:start -->
<!-- $ fake-table -->
| a | b |
|---|---|
| x | 0.25 |

<!-- results:table:end -->
"""
TABLE = "| a | b |\n|---|---|\n| x | 0.25 |\n"


def fake(outputs: dict[str, str]):
    """A command runner that prints what the table says (a command absent from it fails, as a bad one would)."""

    def execute(command: str) -> str:
        if command not in outputs:
            raise CommandFailed(f"exit 2: {command}: no such command")
        return outputs[command]

    return execute


def write(tmp_path: Path, output: str = OUTPUT, name: str = "page.md") -> Path:
    page = tmp_path / name
    page.write_text(PAGE.format(output=output))
    return page


def run_main(argv, outputs, capsys, claims: Path | None = None) -> tuple[int, str]:
    extra = ["--claims", str(claims)] if claims else ["--claims", "/nonexistent/claims.toml"]
    code = main([*argv, *extra], execute=fake(outputs))
    return code, capsys.readouterr().out


def test_tokens_read_intervals_signs_exponents_and_durations():
    assert tokens("r +0.12 [-0.01, +0.20] 3.6e-7 in 405 s") == [
        ("number", 0.12, 0.01),
        ("interval", -0.01, 0.20, 0.01),
        ("number", 3.6e-7, pytest.approx(1e-8)),
        ("duration", 405.0, 1.0),
    ]
    assert tokens("0.028 [−0.027, 0.084]")[1][1] == -0.027  # the typographic minus of the tables


def test_a_fresh_page_agrees_and_one_unit_is_rounding_but_two_are_not(tmp_path, capsys):
    outputs = {"fake --seed 3": OUTPUT, "fake-table": TABLE}
    page = write(tmp_path)
    code, out = run_main(["--check", str(page)], outputs, capsys)
    assert code == 0 and "2 of 2 documented figures agree" in out
    assert run_main(["--check", str(write(tmp_path, OUTPUT.replace("12.34", "12.35")))], outputs, capsys)[0] == 0
    code, out = run_main(["--check", str(write(tmp_path, OUTPUT.replace("12.34", "12.36")))], outputs, capsys)
    assert code == 1
    line = PAGE.format(output=OUTPUT).splitlines().index("$ fake --seed 3") + 1
    assert f"page.md:{line}: `fake --seed 3`: output line 2 (margin), figure 1: documented 12.36, fresh 12.34" in out
    # a duration is the machine's, not a figure: 7 s documented, 9 s printed, still agrees
    page = write(tmp_path)
    assert run_main(["--check", str(page)], {**outputs, "fake --seed 3": OUTPUT.replace("7 s", "9 s")}, capsys)[0] == 0


def test_an_interval_figure_must_lie_in_the_fresh_interval(tmp_path, capsys):
    outputs = {"fake --seed 3": OUTPUT, "fake-table": TABLE}
    inside = write(tmp_path, OUTPUT.replace("0.512 [0.400, 0.600]", "0.580 [0.450, 0.700]"))
    assert run_main(["--check", str(inside)], outputs, capsys)[0] == 0  # 0.580 lies in the fresh [0.400, 0.600]
    outside = write(tmp_path, OUTPUT.replace("0.512 [0.400, 0.600]", "0.650 [0.450, 0.700]"))
    code, out = run_main(["--check", str(outside)], outputs, capsys)
    assert code == 1 and "documented 0.65 lies outside the fresh interval [0.4, 0.6]" in out


def test_a_raw_block_is_the_output_itself_and_its_form_is_checked(tmp_path, capsys):
    page = write(tmp_path)
    [fenced, raw] = results_blocks(page, page.read_text())
    assert (fenced.command, fenced.flags, raw.command, raw.block) == (
        "fake --seed 3",
        {"reduced"},
        "fake-table",
        "table",
    )
    assert raw.documented.strip() == TABLE.strip()
    code, out = run_main(
        ["--check", str(page)], {"fake --seed 3": OUTPUT, "fake-table": TABLE.replace("| x", "| y")}, capsys
    )
    assert code == 1 and "differs in form" in out and "`fake-table`" in out


def test_reduced_runs_only_the_cheap_blocks(tmp_path, capsys):
    page = write(tmp_path)
    code, out = run_main(["--check", "--reduced", str(page)], {"fake --seed 3": OUTPUT}, capsys)
    assert code == 0 and "1 of 1 documented figures agree" in out  # fake-table was not run (it would fail)


def test_claims_pick_prose_figures_and_a_lost_claim_fails(tmp_path, capsys):
    page = write(tmp_path)
    claims = tmp_path / "claims.toml"
    claims.write_text(f"""[[claim]]
doc = "{page}"
command = "fake --seed 3"
text = 'the margin is ([\\d.]+) \\(`fake'
output = 'margin ([\\d.]+)'
flags = ["reduced"]
""")
    outputs = {"fake --seed 3": OUTPUT}
    code, out = run_main(["--check", "--reduced", str(page)], outputs, capsys, claims)
    assert code == 0 and "2 of 2 documented figures agree with a fresh run (1 results runs, 1 claims)" in out
    page.write_text(page.read_text().replace("margin is 12.34", "margin is 12.36"))
    code, out = run_main(["--check", "--reduced", str(page)], outputs, capsys, claims)
    assert code == 1 and "page.md:3: `fake --seed 3`: figure 1: documented 12.36, fresh 12.34" in out
    page.write_text(page.read_text().replace("the margin is", "the gap is"))
    code, out = run_main(["--check", "--reduced", str(page)], outputs, capsys, claims)
    assert code == 1 and "is not in the page" in out


def test_replicate_moves_the_seed_and_compares_intervals(tmp_path, capsys):
    page = write(tmp_path)
    assert fresh_seed("fake --seed 3", None) == "fake --seed 4"
    assert fresh_seed("faithclip audit --ladder", 0) == "faithclip audit --ladder --seed 1"
    assert fresh_seed("fake-table", None) is None
    overlapping = OUTPUT.replace("0.512 [0.400, 0.600]", "0.700 [0.590, 0.800]")
    code, out = run_main(["--replicate", str(page)], {"fake --seed 4": overlapping}, capsys)
    assert code == 0 and "1 of 1 intervals overlap the replicate's (`fake --seed 4`)" in out
    apart = OUTPUT.replace("0.512 [0.400, 0.600]", "0.700 [0.620, 0.800]")
    code, out = run_main(["--replicate", str(page)], {"fake --seed 4": apart}, capsys)
    assert code == 1 and "documented [0.4, 0.6] does not overlap the replicate's [0.62, 0.8]" in out
    assert "0 of 1 documented intervals overlap" in out
    seedless = tmp_path / "seedless.md"
    seedless.write_text("<!-- results:x:start -->\n```\n$ fake-stats\nr 0.5 [0.4, 0.6]\n```\n<!-- results:x:end -->\n")
    code, out = run_main(["--replicate", str(seedless)], {}, capsys)
    assert code == 0 and "skipped (the command takes no --seed)" in out


def test_compare_intervals_counts_each_documented_interval():
    assert compare_intervals("a 1.0 [0.0, 2.0] b 3.0 [2.0, 4.0]", "a 1.0 [1.5, 2.5] b 3.0 [4.2, 5.0]") == (
        2,
        ["output line 1 (a), interval 2: documented [2, 4] does not overlap the replicate's [4.2, 5]"],
    )
    assert (
        compare_intervals("a 1.0 [0.0, 2.0]", "a 1.0 [2.04, 2.5]")[1] == []
    )  # the bounds are rounded: 2.0 may be 2.04
    assert compare_output("a 0.5 [0.4, 0.6]", "a 0.5 [0.4, 0.6] extra")[0].startswith("output line 1 differs in form")


def test_list_names_every_documented_command(tmp_path, capsys):
    page = write(tmp_path)
    code, out = run_main(["--list", str(page)], {}, capsys)
    assert code == 0
    lines = page.read_text().splitlines()
    expected = [
        (str(lines.index("$ fake --seed 3") + 1), "main (reduced)", "fake --seed 3"),
        (str(lines.index("<!-- $ fake-table -->") + 1), "table", "fake-table"),
    ]
    assert re.findall(r"page\.md:(\d+): (.+?): (.+)", out) == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--check", "--no-such-option"],
        ["--check", "--list"],
        ["--list", "--reduced"],
        ["--check", "/nonexistent/page.md"],
    ],
)
def test_bad_usage_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err and not captured.out


def test_a_page_with_nothing_to_run_is_bad_input(tmp_path, capsys):
    empty = tmp_path / "empty.md"
    empty.write_text("no figures\n")
    code = main(["--check", str(empty), "--claims", "/nonexistent/claims.toml"])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- results:x:start cheap -->\n<!-- results:x:end -->\n")
    assert main(["--check", str(bad)]) == 2
    assert "unknown results flags ['cheap']" in capsys.readouterr().err


def test_the_real_pages_fast_check_passes(monkeypatch, capsys):
    """The fast suite's check of every documented page: the figures marked reduced, rerun and compared."""
    monkeypatch.chdir(ROOT)
    started = time.perf_counter()
    code = main(["--check", "--reduced"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"(\d+) of \1 documented figures agree", out)
    print(f"{time.perf_counter() - started:.1f} s")  # not asserted: the test suite is not timed
    assert all((ROOT / doc).is_file() for doc in DOCS)


def test_a_claim_may_scale_fractions_to_percents_and_read_an_absent_cell_as_a_dash(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("| grad_cam | 27 % | - |\n")
    claim = Claim(
        str(page), "fake", r"\| grad_cam \| (\d+) % \| (\S+) \|", r"flips ([\d.]+)(?: text (\w+))?", scale=100
    )
    [figure], lost = claim_figures(page, page.read_text(), [claim])
    assert lost == [] and figure.documented == "27 -"
    assert pick(figure, "flips 0.2700\n") == "27.00 -"
    assert compare_output(figure.documented, pick(figure, "flips 0.2700\n")) == []
    assert compare_output(figure.documented, pick(figure, "flips 0.2900\n")) != []  # 29 % is not 27 %
    assert compare_output(figure.documented, pick(figure, "flips 0.2700 text pass\n")) != []  # a cell that exists
    assert scale_numbers("0.512 [0.400, 0.600]", 100) == "51.2 [40.0, 60.0]"


def test_regenerating_writes_each_block_from_its_command_and_leaves_the_prose(tmp_path, capsys):
    page = write(tmp_path, OUTPUT.replace("12.34", "99.99"))
    stale = page.read_text().replace("| x | 0.25 |", "| x | 0.99 |")
    page.write_text(stale)
    code, _ = run_main([str(page)], {"fake --seed 3": OUTPUT, "fake-table": TABLE}, capsys)
    assert code == 0 and page.read_text() == PAGE.format(output=OUTPUT)  # exactly the page a fresh run prints
    code, _ = run_main(["--check", str(page)], {"fake --seed 3": OUTPUT, "fake-table": TABLE}, capsys)
    assert code == 0
    assert main([str(page), "--claims", "/nonexistent/claims.toml"], execute=fake({})) == 2  # a command that fails
    assert "cannot run" in capsys.readouterr().err


def test_a_drift_on_a_real_page_fails_the_fast_check(tmp_path, monkeypatch, capsys):
    """families.md's methods table, with one support cell changed, against what `faithclip methods --table`
    prints now: the real command, run by the real runner."""
    monkeypatch.chdir(ROOT)
    page = tmp_path / "families.md"
    text = (ROOT / "docs" / "families.md").read_text()
    assert "| clip_surgery | image | image | - | - | - |" in text
    page.write_text(
        text.replace("| clip_surgery | image | image | - | - | - |", "| clip_surgery | image | image | image | - | - |")
    )
    assert main(["--check", "--reduced", str(page), "--claims", "/nonexistent/claims.toml"]) == 1
    out = capsys.readouterr().out
    assert (
        "`faithclip methods --table`" in out
        and "differs in form" in out
        and "| clip_surgery | image | image | image |" in out
    )


def test_a_command_naming_an_absent_path_outside_the_repository_is_skipped(tmp_path, monkeypatch, capsys):
    """The installed tool names no folder of its own (it once hard-coded ../shared/reference): a figure whose
    command reads a ../ path absent here is skipped, naming the path; one present is run."""
    page = tmp_path / "page.md"
    absent = "fake --model ../no-such-folder-for-faithclip/model --seed 3"
    present = "fake --images=../page.md"  # from the repository root tmp_path/repo: tmp_path/page.md, present
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    page.write_text(PAGE.format(output=OUTPUT).replace("$ fake --seed 3", f"$ {absent}").replace("fake-table", present))
    code, out = run_main(["--check", str(page)], {present: TABLE}, capsys)
    assert code == 0 and "1 of 1 documented figures agree" in out
    assert "skipped (../no-such-folder-for-faithclip/model is not available)" in out
    source = (ROOT / "src" / "faithclip" / "cli" / "docs.py").read_text()
    assert "../shared" not in source


def test_the_default_pages_and_tools_absent_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the repository root: neither README.md nor docs/claims.toml is here
    assert main(["--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "README.md: no such file (the default pages are read from the repository root" in err[0]
    page = tmp_path / "audit.md"
    page.write_text(PAGE.format(output=OUTPUT))
    code = main(
        [str(page), "--claims", "/nonexistent/claims.toml", "--audit-tool", "no/such/tool.py"], execute=fake({})
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no/such/tool.py: no such file" in err[0]
    assert page.read_text() == PAGE.format(output=OUTPUT)  # nothing rewritten
