"""What the report pages say: the random-map level beside the demo's localisation, one wording for a
declared departure (verify, demo, check), check's settings and hook names in words, plain curve titles."""

from __future__ import annotations

import torch

from faithclip.demo import random_map_levels
from faithclip.report.check_report import check_page, format_cards
from faithclip.report.evaluation_report import curve_title
from faithclip.report.verify_report import p1_table, render_verify


def test_random_map_levels_by_hand():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[0, 0] = True
    levels = random_map_levels(mask, tolerance=1.0)
    # pixels within 1 px of (0, 0): itself, (0, 1) and (1, 0); a constant map puts 1/100 of its mass inside
    assert levels == {"pointing": 3 / 100, "energy_share": 1 / 100}
    mask[:] = True
    assert random_map_levels(mask, tolerance=0.0) == {"pointing": 1.0, "energy_share": 1.0}


P1_ROWS = [
    {
        "method": "attention_eclip",
        "side": "image",
        "max_gap": 0.0,
        "passed": True,
        "reason": "",
        "modifies_model": False,
        "modifies_input": False,
    },
    {
        "method": "maskclip",
        "side": "image",
        "max_gap": 0.4,
        "passed": False,
        "reason": "another forward",
        "modifies_model": True,
        "modifies_input": False,
    },
]


def test_a_declared_departure_is_not_called_a_failure_where_the_command_passes():
    html = p1_table(P1_ROWS)
    assert "declared departure" in html and "FAIL" not in html and "class=bad" not in html
    page = render_verify({"model": "m", "equivalence": [], "p1": P1_ROWS, "failures": []})
    assert "All checks passed (exit 0). Declared departures (not failures): maskclip." in page
    undeclared = [dict(P1_ROWS[1], modifies_model=False)]
    assert ">fail<" in p1_table(undeclared) and "class=bad" in p1_table(undeclared)


def test_the_terminal_and_html_p1_tables_print_the_same_verdict_words():
    from faithclip.audit.principles import P1Row, format_p1

    cases = {(True, False): "pass", (False, True): "declared departure", (False, False): "fail"}
    for (passed, declared), word in cases.items():
        row = dict(P1_ROWS[1], passed=passed, modifies_model=declared)
        terminal = format_p1([P1Row(pairs=1, **row)]).splitlines()[-1]
        assert f" {word} " in terminal and f">{word}<" in p1_table([row]), (passed, declared)


def test_check_page_writes_settings_as_a_table_and_hooks_in_words():
    card = {
        "method": "mine",
        "origin": "plugin",
        "declared": {"modifies_model": True, "modifies_input": False},
        "paper": "p",
        "seconds": 1.0,
        "model": "shapes-clip",
        "failed": True,
        "checks": [
            {
                "check": "P1 image",
                "verdict": "declared departure",
                "interval": None,
                "evidence": "hook plugins.mine.explain.<locals>.hook on vision layer 3",
                "details": {"findings": []},
            }
        ],
    }
    record = {
        "model": "shapes-clip",
        "settings": {"scenes": 8, "checks": ["p1", "ladder"], "options": {}},
        "cards": [card],
    }
    page = check_page(record)
    assert "{'scenes'" not in page and "<td class='text'>scenes</td><td class='text'>8</td>" in page
    assert "p1, ladder" in page and "&lt;locals&gt;" not in page
    assert "hook (defined inside plugins.mine.explain)" in page
    assert "declared departure" in page and "is not a fail" in page and "class=bad" not in page
    assert "declared departure" in format_cards([card])


def test_curve_titles_say_what_is_done_and_which_way_is_better():
    assert curve_title("deletion_gradeclip", "gradeclip").startswith("Deletion: the map's top pixels removed first")
    assert "lower curve is better" in curve_title("deletion_rise", "rise").replace("\n", " ")
    assert "higher curve is better" in curve_title("insertion_rise", "rise").replace("\n", " ")
