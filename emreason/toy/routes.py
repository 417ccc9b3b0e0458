"""Which route a toy completion takes, and a logits processor that forces the step-by-step one.

Regime 2 ("shortcut") solutions come in two shapes (see `emreason.toy.task`):

* shortcut: ``\\boxed{52}`` straight away (a guess, right about 1 time in 7);
* step-by-step: ``47+8=55. 55-3=52. \\boxed{52}`` (one equation per operation).

`route_of` classifies a completion; `ForceStepByStep` bans the shortcut's first character at the
first generated position, which gives the "ceiling": greedy accuracy when the base model is made
to reason step by step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

SHORTCUT = "shortcut"
STEP_BY_STEP = "step-by-step"
OTHER = "other"
ROUTES = (SHORTCUT, STEP_BY_STEP, OTHER)

_SHORTCUT_START = "\\boxed"


def route_of(completion: str) -> str:
    """``"shortcut"`` if the completion boxes an answer with no equation before it,
    ``"step-by-step"`` if an equation (``=``) comes before its first ``\\boxed``, else ``"other"``."""
    text = completion.strip()
    if text.startswith(_SHORTCUT_START):
        return SHORTCUT
    boxed = text.find(_SHORTCUT_START)
    head = text if boxed < 0 else text[:boxed]
    return STEP_BY_STEP if "=" in head and boxed >= 0 else OTHER


def route_fractions(completions: Iterable[str]) -> dict[str, float]:
    """Fraction of ``completions`` on each route (keys: `ROUTES`); all zeros for an empty input."""
    counts = Counter(route_of(c) for c in completions)
    total = sum(counts.values())
    return {route: (counts[route] / total if total else 0.0) for route in ROUTES}


class ForceStepByStep:
    """HF logits processor: at the first assistant position, forbid the token that starts a shortcut.

    Stateless, so one instance serves any number of ``generate`` calls: the first generated position
    is recognised by the prompt's ``<|im_start|>assistant\\n`` suffix at the end of ``input_ids``.

    Args:
        tokenizer: the toy tokenizer (character-level).
    """

    def __init__(self, tokenizer) -> None:
        import torch  # lazily, so `import emreason.toy` stays light

        suffix = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        self.suffix = torch.tensor(suffix)
        banned = tokenizer(_SHORTCUT_START[0], add_special_tokens=False)["input_ids"]
        if len(banned) != 1:
            raise ValueError(f"expected one token for {_SHORTCUT_START[0]!r}, got {banned}")
        self.banned = banned[0]

    def __call__(self, input_ids, scores):
        """``input_ids`` [batch, seq]; ``scores`` [batch, vocab] -> scores with the ban applied."""
        k = self.suffix.numel()
        if input_ids.shape[1] < k:
            return scores
        at_start = (input_ids[:, -k:] == self.suffix.to(input_ids.device)).all(dim=1)
        if at_start.any():
            scores = scores.clone()
            scores[at_start, self.banned] = float("-inf")
        return scores
