"""The `emreason` console command: `emreason demo`, `emreason eval ...`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")


def _demo_parser(sub) -> None:
    from emreason.demo import METHODS
    from emreason.toy.regimes import REGIME_NAMES

    demo = sub.add_parser("demo", help="run every EM method on the bundled toy models and compare")
    demo.add_argument(
        "--output",
        type=Path,
        default=None,
        help="output folder (default: a fresh folder under the system temp dir)",
    )
    demo.add_argument("--n-problems", type=int, default=500, help="held-out problems (default 500)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--dtype", default="float32", choices=DTYPES)
    demo.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    demo.add_argument(
        "--regime",
        default=None,
        help=f"run one toy regime: {', '.join(REGIME_NAMES)} (default: all of them)",
    )
    demo.add_argument(
        "--model", default=None, help="model directory (default: each regime's bundled toy model)"
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="show library warnings, trainer logs and weight-loading bars",
    )
    demo.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="override the label-free training steps of EM-FT / EM-RL",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from emreason.demo import check_device, run_demo
    from emreason.toy.regimes import REGIME_NAMES, get_regime

    check_device(args.device)
    regimes = REGIME_NAMES if args.regime is None else (get_regime(args.regime).name,)
    output = args.output or Path(tempfile.mkdtemp(prefix="emreason-demo-"))
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    run_demo(
        output,
        regimes=regimes,
        n_problems=args.n_problems,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        methods=methods,
        model_path=args.model,
        train_steps=args.train_steps,
        verbose=args.verbose,
    )
    print(f"results written to {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        # The evaluation harness owns its own argument parsing (it has sub-commands such as `report`).
        from emreason.evals.cli import main as eval_main

        return _guarded(lambda: eval_main(argv[1:]))
    parser = argparse.ArgumentParser(prog="emreason", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    sub.add_parser("eval", help="benchmark harness: `emreason eval --help`")
    args = parser.parse_args(argv)
    return _guarded(lambda: _run_demo(args))


def _guarded(run) -> int:
    """Turn expected user errors into one clear line and a non-zero exit, not a traceback wall."""
    try:
        return int(run() or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError) as err:
        print(f"emreason: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emreason: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
