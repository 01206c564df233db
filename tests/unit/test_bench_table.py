"""``faithclip bench``'s table says what its ratios are made of: seconds / the forward's seconds timed with
it, and no memory column when memory was not measured (rows written by hand: the values are known)."""

from __future__ import annotations

from faithclip.bench import BenchRow, format_rows


def test_the_ratio_is_the_two_printed_times_and_an_unmeasured_column_is_left_out():
    rows = [
        BenchRow("B/32", "forward (no grad)", 0.070, 0.070 / 0.100, forward_seconds=0.100),
        BenchRow("B/32", "attention_eclip, 1 prompt", 0.150, 0.150 / 0.100, forward_seconds=0.100),
    ]
    text = format_rows(rows)
    assert "peak RSS" not in text  # --no-memory
    line = next(line for line in text.splitlines() if "attention_eclip" in line)
    assert line.split()[-3:] == ["0.150", "0.100", "1.50"]  # seconds, forward s, x forward
    assert "timing noise" in text  # the forward row's 0.70 is explained, not hidden
    rows[1].peak_ratio, rows[0].peak_ratio = 1.25, 1.0
    with_memory = format_rows(rows)
    assert "peak RSS (x forward)" in with_memory
    assert next(line for line in with_memory.splitlines() if "attention_eclip" in line).split()[-1] == "1.25"
