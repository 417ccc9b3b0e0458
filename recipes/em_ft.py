"""EM-FT: minimize the token entropy of the model's own samples on unlabeled prompts.

    accelerate launch recipes/em_ft.py                                   # toy model, toy prompts
    accelerate launch recipes/em_ft.py --beta 0.1                        # with KL to the reference
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/em_ft.py \\
        --config recipes/configs/em_ft_qwen2.5_math_7b.yaml             # the paper's setting

Flags are `EMFTConfig` / `ModelConfig` fields plus the dataset options of
`emreason.trainers.recipe.ScriptArguments`. With no model given it trains the bundled toy model on
unlabeled toy prompts and prints held-out accuracy (greedy and T=1.0) before and after.
"""

from emreason.trainers import EMFTConfig, EMFTTrainer
from emreason.trainers.recipe import main

if __name__ == "__main__":
    main("em_ft", EMFTConfig, EMFTTrainer)
