"""Configuration of `EMFTTrainer`: TRL's `GRPOConfig` rollout settings plus the entropy-loss settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

_TOO_FEW_GENERATIONS = "requires at least 2 generations per prompt"


@dataclass
class EMFTConfig(GRPOConfig):
    r"""Configuration for [`EMFTTrainer`]: minimize the token entropy of the model's own samples.

    Reuses `GRPOConfig`'s rollout machinery (batching, ``num_generations``, generation and vLLM
    settings, ``beta`` for the optional KL to the reference model, PEFT, checkpointing, ``report_to``);
    the RL-specific fields (``epsilon``, ``loss_type``, rewards) are ignored. Defaults follow the paper's
    EM-FT run (one sample per prompt, temperature 1.0, lr 1e-6, no KL).

    Parameters:
        entropy_chunk_size (`int`, defaults to `1024`):
            Tokens per chunk in `emreason.entropy.entropy_from_hidden`; only one chunk's logits
            ``[chunk, vocab]`` are computed at a time.
        entropy_recompute_logits (`str` or `bool`, defaults to `"auto"`):
            Whether the entropy backward recomputes each chunk's logits (`"true"`: least memory, one
            extra vocabulary-sized matmul per chunk) or uses the shifted logits kept from the forward
            (`"false"`: fastest). `"auto"`: keep whole chunks while the kept float32 logits take at most
            ``entropy_keep_logits_max_mb``, recompute the rest.
        entropy_keep_logits_max_mb (`float`, defaults to `2048`):
            Budget (MiB, per process and micro-batch) of the kept logits under `"auto"`.
        per_sample_seeded_sampling (`bool`, defaults to `False`):
            Sample each completion from its own seeded noise stream (Gumbel-max) so samples do not depend
            on the number of processes. Transformers generation only; ignores top-k/top-p.
        vllm_dtype (`str` or `None`, defaults to `None`):
            dtype of the colocated vLLM engine. `None`: the policy's own parameter dtype. TRL 1.16 passes
            none, and vLLM's "auto" runs float32 checkpoints in bfloat16, so rollout log-probs (the
            sequence reward, the importance ratios) would differ from the trainer's by ~1e-3 per token.
    """

    learning_rate: float = field(default=1e-6, metadata={"help": "The initial learning rate for AdamW."})
    num_generations: int | None = field(default=1, metadata={"help": "Completions sampled per prompt (N)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the completions."})
    beta: float = field(
        default=0.0, metadata={"help": "KL-to-reference coefficient (0: no reference model)."}
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={"help": "Unused by EM-FT (the loss has no policy ratio); off to skip a forward pass."},
    )
    entropy_chunk_size: int = field(default=1024, metadata={"help": "Tokens per entropy chunk."})
    entropy_recompute_logits: str = field(
        default="auto",
        metadata={
            "help": 'Entropy backward recomputes logits: "true", "false" or "auto" (keep within budget).'
        },
    )
    entropy_keep_logits_max_mb: float = field(
        default=2048.0, metadata={"help": 'MiB of kept logits under entropy_recompute_logits="auto".'}
    )
    per_sample_seeded_sampling: bool = field(
        default=False,
        metadata={
            "help": "Per-sample seeded sampling, independent of the process count (transformers only)."
        },
    )
    vllm_dtype: str | None = field(
        default=None,
        metadata={"help": "dtype of the colocated vLLM engine; None: the policy's parameter dtype."},
    )

    def __post_init__(self):
        if self.num_generations is None or self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if self.entropy_chunk_size < 1:
            raise ValueError(f"entropy_chunk_size must be >= 1, got {self.entropy_chunk_size}")
        if self.entropy_recompute_logits not in (True, False, "auto", "true", "false"):
            value = self.entropy_recompute_logits
            raise ValueError(f'entropy_recompute_logits must be "auto", "true" or "false", got {value!r}')
        if self.entropy_keep_logits_max_mb < 0:
            raise ValueError(
                f"entropy_keep_logits_max_mb must be >= 0, got {self.entropy_keep_logits_max_mb}"
            )
        if self.per_sample_seeded_sampling and self.use_vllm:
            raise ValueError(
                "per_sample_seeded_sampling works with transformers generation only, not use_vllm"
            )
        try:
            super().__post_init__()
        except ValueError as error:
            # GRPOConfig insists on >= 2 generations because GRPO needs a group baseline; EM-FT has no
            # baseline and the paper's main run uses N=1. That check comes after every batch-size
            # derivation, so only the clip checks after it remain to be done here.
            if self.num_generations != 1 or _TOO_FEW_GENERATIONS not in str(error):
                raise
            self._check_importance_sampling_clip()

    def _check_importance_sampling_clip(self) -> None:
        low, high = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if low is not None and high is not None and low >= high:
            raise ValueError(f"vllm_importance_sampling_clip_min ({low}) must be less than the max ({high})")
