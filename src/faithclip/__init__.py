"""faithclip: faithful, checkable explanations of CLIP models.

import faithclip
model = faithclip.load()                                   # the shipped shapes model, or a hub id / dir
ex = faithclip.explain(model, image, "a red circle")       # Attention-ECLIP on the original model
tx = faithclip.explain_text(model, image, "a red circle")
faithclip.verify_equivalence(model, images, texts)         # Grad-ECLIP == Attention-ECLIP
faithclip.plot([ex, ...])                                   # a grid figure (methods x prompts)
"""

from faithclip._version import __version__  # noqa: E402
from faithclip.api import explain, explain_text  # noqa: E402
from faithclip.equivalence import verify_equivalence  # noqa: E402
from faithclip.evaluation import evaluate_maps  # noqa: E402
from faithclip.explanation import Explanation  # noqa: E402
from faithclip.models.loading import from_hf, load  # noqa: E402
from faithclip.probe import Probe  # noqa: E402
from faithclip.registry import METHODS  # noqa: E402
from faithclip.report.figures import plot  # noqa: E402
from faithclip.targets import Target  # noqa: E402

__all__ = [
    "load",
    "from_hf",
    "explain",
    "explain_text",
    "evaluate_maps",
    "verify_equivalence",
    "Explanation",
    "Probe",
    "METHODS",
    "Target",
    "plot",
    "__version__",
]
