"""Measure a toy checkpoint: greedy / T=1.0 / pass@8 / forced step-by-step greedy, with routes.

    python recipes/measure_toy.py --regime shortcut --n 500 \
        --output emreason/toy/checkpoint_shortcut/figures.json
    python recipes/measure_toy.py --model /tmp/em-rl-model --regime shortcut   # a trained model

Accuracies come with 95% Wilson intervals; each decoding reports the fraction of outputs on each
route (shortcut / step-by-step / other) and the accuracy within it. Problems are held-out ones of the
regime's levels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emreason import toy
from emreason.atomic_io import write_json_atomic
from emreason.toy.measure import format_figures, measure_model


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--regime", default="shortcut", help=f"one of {', '.join(toy.REGIME_NAMES)}")
    parser.add_argument("--model", default=None, help="model directory (default: the regime's checkpoint)")
    parser.add_argument("--n", type=int, default=500, help="held-out problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=8, help="samples per problem for pass@k (0: skip)")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    regime = toy.get_regime(args.regime)
    model, tokenizer = toy.load_model(args.model, regime=regime.name)
    problems = toy.make_problems("heldout", args.n, seed=args.seed, levels=regime.levels)
    figures = measure_model(model, tokenizer, problems, seed=args.seed, k=args.k)
    result = {
        "regime": regime.name,
        "model": str(args.model) if args.model else f"bundled:{regime.name}",  # no machine paths
        "n": args.n,
        "seed": args.seed,
        "levels": list(regime.levels),
        "figures": figures,
    }
    print(format_figures(figures))
    if args.output is not None:
        write_json_atomic(args.output, result)
    else:
        print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
