"""The Grad-ECLIP audit ("Debunking Grad-ECLIP", arXiv 2605.12952) and the two principle checks.

- ``rewrite``: the forward the official code explains (one-head last block(s), any input size);
- ``keepsize``: the official explanation input; ``departure``: how far both take the pipeline from the
  model (2x2 ablation); ``principles.check_p1``: P1 for any method; ``ladder``: P2;
- ``report``: terminal table and ``audit_html`` fragment; ``data``: scene renders / image files;
- ``bootstrap``: P2's intervals and verdicts; ``run``: ``run_audit(handle, AuditSettings)``, the one code
  path behind ``faithclip audit``, the demo and ``docs`` (which regenerates and checks docs/audit.md).
"""

from faithclip.audit.principles import P1Row, check_p1, format_p1

__all__ = ["check_p1", "P1Row", "format_p1"]
