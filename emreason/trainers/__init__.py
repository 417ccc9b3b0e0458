"""EM-FT and EM-RL trainers built on TRL (tested with trl>=1.16,<1.17)."""

from emreason.trainers.em_ft_config import EMFTConfig
from emreason.trainers.em_ft_trainer import EMFTTrainer
from emreason.trainers.em_rl_config import EMRLConfig
from emreason.trainers.em_rl_trainer import EMRLTrainer
from emreason.trainers.rewards import entropy_reward, group_advantages

__all__ = ["EMFTConfig", "EMFTTrainer", "EMRLConfig", "EMRLTrainer", "entropy_reward", "group_advantages"]
