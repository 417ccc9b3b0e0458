"""Pretrain a bundled toy reasoning model from scratch on CPU.

    python recipes/pretrain_toy.py --output_dir emreason/toy/checkpoint            # regime 1 ("default")
    python recipes/pretrain_toy.py --regime shortcut                                # regime 2 ("shortcut")
    python recipes/pretrain_toy.py --steps 5 --output_dir /tmp/toy                  # a smoke run

Every flag is a field of `emreason.toy.pretrain.ToyPretrainConfig`; a YAML file works too
(`--config file.yaml`). ``--regime NAME`` selects that regime's config file (see
`emreason.toy.regimes`); further flags override it. The run is reproducible from its config and seed.
"""

import sys
from pathlib import Path

from trl import TrlParser

from emreason.toy.pretrain import ToyPretrainConfig, pretrain
from emreason.toy.regimes import get_regime

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _expand_regime(argv: list[str]) -> list[str]:
    """Replace ``--regime NAME`` (or ``--regime=NAME``) by ``--config <that regime's yaml>``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--regime" or arg.startswith("--regime="):
            if "=" in arg:
                name = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                name, i = argv[i + 1], i + 1
            else:
                raise SystemExit("--regime needs a name")
            regime = get_regime(name)  # ValueError listing the valid names
            if regime.pretrain_config is not None:
                out += ["--config", str(CONFIG_DIR / regime.pretrain_config)]
        else:
            out.append(arg)
        i += 1
    return out


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_expand_regime(sys.argv[1:])]
    (config,) = TrlParser(ToyPretrainConfig).parse_args_and_config()
    print(f"saved to {pretrain(config)}")
