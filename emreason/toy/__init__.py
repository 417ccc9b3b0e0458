"""The bundled toy reasoning model and its synthetic arithmetic task (the package's embedded default).

    >>> from emreason import toy
    >>> model, tokenizer = toy.load_model()
    >>> problems = toy.make_problems("heldout", 100)
    >>> model, tokenizer = toy.load_model(regime="shortcut")   # regime 2: greedy takes a shortcut

Two checkpoints ship (see `emreason.toy.regimes`): ``"default"`` (regime 1) and ``"shortcut"``
(regime 2).

Each checkpoint is ordinary package data (safetensors + config + tokenizer) loaded with the ordinary
``AutoModelForCausalLM.from_pretrained(local_dir)``; `recipes/pretrain_toy.py --regime NAME` recreates it.
`qwen_format_path()` gives the same skills behind a Qwen2.5-Instruct-shaped interface (byte-level BPE,
ChatML, vocabulary 151,936), built and cached on first use.
"""

from __future__ import annotations

from pathlib import Path

from emreason.toy.regimes import REGIME_NAMES, Regime, get_regime
from emreason.toy.routes import ROUTES, ForceStepByStep, route_fractions, route_of
from emreason.toy.task import ToyProblem, extract_answer, grade, iter_problems, make_problems, random_problem

__all__ = [
    "ToyProblem",
    "extract_answer",
    "grade",
    "iter_problems",
    "make_problems",
    "random_problem",
    "model_path",
    "load_model",
    "REGIME_NAMES",
    "Regime",
    "get_regime",
    "ROUTES",
    "ForceStepByStep",
    "route_fractions",
    "route_of",
    "qwen_format_path",
]


def model_path(regime: str | int = "default") -> Path:
    """Directory of the bundled toy checkpoint of ``regime`` ("default" / 1, "shortcut" / 2).

    Raises ValueError listing the valid regimes for an unknown one, and FileNotFoundError naming the
    directory (and the command that recreates it) when the checkpoint is missing.
    """
    spec = get_regime(regime)
    if not (spec.path / "config.json").is_file():
        raise FileNotFoundError(
            f"toy checkpoint {spec.name!r} missing at {spec.path}; recreate it with "
            f"`python recipes/pretrain_toy.py --regime {spec.name}`"
        )
    return spec.path


def qwen_format_path(*, rebuild: bool = False, verbose: bool = False) -> Path:
    """Directory of the Qwen2.5-format fixture (byte-level BPE, ChatML, Qwen2.5 chat template, vocabulary
    151,936), built into the cache on first use; see `emreason.toy.qwen_format`."""
    from emreason.toy.qwen_format import qwen_format_path as _path

    return _path(rebuild=rebuild, verbose=verbose)


def load_model(
    path: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    *,
    regime: str | int = "default",
):
    """Load ``(model, tokenizer)`` from ``path`` (default: the bundled checkpoint of ``regime``) in eval
    mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(path) if path is not None else model_path(regime)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unsupported dtype {dtype!r}; use float32, bfloat16 or float16")
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype).to(device)
    model.eval()
    return model, tokenizer
