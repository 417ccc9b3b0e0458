"""Pretrain the bundled toy reasoning model from scratch on CPU.

    python recipes/pretrain_toy.py --output_dir emreason/toy/checkpoint            # the shipped model
    python recipes/pretrain_toy.py --steps 5 --output_dir /tmp/toy                  # a smoke run

Every flag is a field of `emreason.toy.pretrain.ToyPretrainConfig`; a YAML file works too
(`--config file.yaml`). The run is reproducible from its config and seed.
"""

from trl import TrlParser

from emreason.toy.pretrain import ToyPretrainConfig, pretrain

if __name__ == "__main__":
    (config,) = TrlParser(ToyPretrainConfig).parse_args_and_config()
    print(f"saved to {pretrain(config)}")
