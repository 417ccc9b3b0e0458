"""Configuration of `EMRLTrainer`: TRL's `GRPOConfig` plus the negative-entropy reward settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from emreason.trainers.rewards import ADVANTAGE_ESTIMATORS, REWARD_AGGREGATIONS, REWARD_SCALINGS, REWARD_TYPES


@dataclass
class EMRLConfig(GRPOConfig):
    r"""Configuration for [`EMRLTrainer`]: RL whose only reward is the rollout's negative entropy.

    Inherits every field of TRL's `GRPOConfig` (batching, generation, vLLM, PEFT, KL via ``beta``,
    checkpointing, ``report_to``). Defaults follow the paper's EM-RL runs (RLOO, 4 rollouts per prompt,
    temperature 1.0, lr 1e-6, KL loss coefficient 0.001).

    Parameters:
        reward_type (`str`, defaults to `"sequence"`):
            `"sequence"`: r(y) = sum_t log pi(y_t | x, y_<t). `"token"`: r(y) = -sum_t H(pi(. | x, y_<t)).
        reward_aggregation (`str`, defaults to `"sum"`):
            `"sum"` over completion tokens (the paper) or `"mean"` (the authors' veRL code).
        advantage_estimator (`str`, defaults to `"rloo"`):
            `"rloo"` (leave-one-out baseline, the paper) or `"grpo"` (group-mean baseline).
        scale_rewards (`str`, defaults to `"none"`):
            Std scaling of the advantages: `"none"`, `"group"` (TRL's GRPO default, which inflates tiny
            entropy differences to unit size) or `"batch"`.
        reward_scale (`float`, defaults to `1.0`):
            Multiplies the reward before advantages are formed (a learning-rate knob for the policy term
            that leaves the KL term alone).
        per_sample_seeded_sampling (`bool`, defaults to `False`):
            Sample each rollout from its own seeded noise stream (Gumbel-max) so the rollouts do not
            depend on the number of processes. Transformers generation only; ignores top-k/top-p.
        vllm_dtype (`str` or `None`, defaults to `None`):
            dtype of the colocated vLLM engine. `None`: the policy's own parameter dtype. TRL 1.16 passes
            none, and vLLM's "auto" runs float32 checkpoints in bfloat16, so rollout log-probs (the
            sequence reward, the importance ratios) would differ from the trainer's by ~1e-3 per token.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    num_generations: int | None = field(
        default=4, metadata={"help": "Rollouts per prompt (RLOO group size)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    beta: float = field(default=0.001, metadata={"help": "Coefficient of the KL-to-reference loss term."})
    scale_rewards: str = field(
        default="none", metadata={"help": "Advantage std scaling: 'none' (default), 'group' or 'batch'."}
    )
    reward_type: str = field(
        default="sequence",
        metadata={"help": "'sequence' (sum of log-probs) or 'token' (minus sum of entropies)."},
    )
    reward_aggregation: str = field(
        default="sum", metadata={"help": "'sum' over completion tokens (paper) or 'mean' (authors' code)."}
    )
    advantage_estimator: str = field(default="rloo", metadata={"help": "'rloo' (paper) or 'grpo'."})
    reward_scale: float = field(default=1.0, metadata={"help": "Multiplier applied to the reward."})
    per_sample_seeded_sampling: bool = field(
        default=False,
        metadata={
            "help": "Per-rollout seeded sampling, independent of the process count (transformers only)."
        },
    )
    vllm_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype of the colocated vLLM engine; None: the policy's parameter dtype."},
    )

    def __post_init__(self):
        if self.reward_type not in REWARD_TYPES:
            raise ValueError(f"reward_type must be one of {REWARD_TYPES}, got {self.reward_type!r}")
        if self.reward_aggregation not in REWARD_AGGREGATIONS:
            raise ValueError(
                f"reward_aggregation must be one of {REWARD_AGGREGATIONS}, got {self.reward_aggregation!r}"
            )
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}"
            )
        scale = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if scale not in REWARD_SCALINGS:
            raise ValueError(f"scale_rewards must be one of {REWARD_SCALINGS}, got {self.scale_rewards!r}")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be > 0, got {self.reward_scale}")
        if self.per_sample_seeded_sampling and self.use_vllm:
            raise ValueError(
                "per_sample_seeded_sampling works with transformers generation only, not use_vllm"
            )
        super().__post_init__()
