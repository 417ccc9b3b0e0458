"""The bundled toy checkpoints ("regimes") and their names.

* ``"default"`` (regime 1): step-by-step solutions only (25% with one corrupted step), levels 1-2.
  Greedy decoding is nearly always right; EM can only sharpen sampling toward it.
* ``"shortcut"`` (regime 2): 60% of pretraining solutions are direct guesses of the answer (right
  about 1 time in 7), 40% derive it step by step, levels 2-3. Greedy takes the shortcut and is
  usually wrong, while the step-by-step route, within the model's reach, carries lower per-token
  entropy: the setting where label-free entropy minimization raises greedy accuracy.

Each regime names its checkpoint directory (package data next to this file), the problem levels it
is evaluated on, and the recipe config that recreates it (``recipes/configs/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Regime:
    """One bundled toy checkpoint: ``name``, regime ``number``, checkpoint folder, eval levels."""

    name: str
    number: int
    checkpoint_dir: str  # folder name under emreason/toy/
    levels: tuple[int, ...]
    pretrain_config: str | None  # file name under recipes/configs/
    description: str

    @property
    def path(self) -> Path:
        return _HERE / self.checkpoint_dir


REGIMES: dict[str, Regime] = {
    "default": Regime(
        name="default",
        number=1,
        checkpoint_dir="checkpoint",
        levels=(1, 2),
        pretrain_config="pretrain_toy_default.yaml",
        description="step-by-step pretraining; greedy is already right",
    ),
    "shortcut": Regime(
        name="shortcut",
        number=2,
        checkpoint_dir="checkpoint_shortcut",
        levels=(2, 3),
        pretrain_config="pretrain_toy_shortcut.yaml",
        description="60% direct-guess pretraining; greedy takes the (usually wrong) shortcut",
    ),
}
REGIME_NAMES: tuple[str, ...] = tuple(REGIMES)


def get_regime(name: str | int) -> Regime:
    """The regime called ``name`` ("default", "shortcut") or numbered ``name`` (1, 2).

    Raises ValueError listing the valid names for anything else.
    """
    if isinstance(name, int) and not isinstance(name, bool):
        for regime in REGIMES.values():
            if regime.number == name:
                return regime
    elif isinstance(name, str) and name in REGIMES:
        return REGIMES[name]
    valid = ", ".join(f"{r.name!r} ({r.number})" for r in REGIMES.values())
    raise ValueError(f"unknown toy regime {name!r}; valid regimes: {valid}")
