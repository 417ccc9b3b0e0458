"""EM-RL: RL with the rollout's negative entropy as the only reward (TRL GRPO machinery, RLOO advantages).

    accelerate launch recipes/em_rl.py                                   # toy model, toy prompts
    accelerate launch recipes/em_rl.py --reward_type token               # token-entropy reward
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/em_rl.py \\
        --config recipes/configs/em_rl_qwen2.5_math_7b.yaml             # the paper's setting

Flags are `EMRLConfig` / `ModelConfig` fields plus the dataset options of
`emreason.trainers.recipe.ScriptArguments`. With no model given it trains the bundled toy model on
unlabeled toy prompts and prints held-out accuracy (greedy and T=1.0) before and after.
"""

from emreason.trainers import EMRLConfig, EMRLTrainer
from emreason.trainers.recipe import main

if __name__ == "__main__":
    main("em_rl", EMRLConfig, EMRLTrainer)
