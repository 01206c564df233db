"""The words a principle check's verdict is printed in, in one leaf module that every view imports: the
terminal table of ``faithclip verify`` (``audit.principles.format_p1``), its HTML page and the demo's
(``report.verify_report.p1_table``), and ``faithclip check`` (``audit.check``)."""

from __future__ import annotations

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
# P1 only: the method changes the model or its input and says so (``modifies_model`` / ``modifies_input``).
# It does not explain the original model, but it is not a failure of the check: verify and check exit 0 on it.
DECLARED_DEPARTURE = "declared departure"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, DECLARED_DEPARTURE)


def p1_verdict(passed: bool, declared: bool) -> str:
    """P1's word for one method and side: ``pass``; else ``declared departure`` when the method declares that
    it modifies the model or its input, ``fail`` when it does not (verify's exit: 0, 0, 1)."""
    return PASS if passed else (DECLARED_DEPARTURE if declared else FAIL)


__all__ = ["DECLARED_DEPARTURE", "FAIL", "INCONCLUSIVE", "PASS", "VERDICTS", "p1_verdict"]
