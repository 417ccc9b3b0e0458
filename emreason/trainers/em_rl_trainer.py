"""EM-RL: reinforcement learning whose only reward is the rollout's own negative entropy, on TRL's GRPO."""

from __future__ import annotations

import torch
from trl import GRPOTrainer
from trl.trainer.utils import pad

from emreason.trainers._common import RolloutHooksMixin, check_train_inputs, vllm_engine_dtype
from emreason.trainers.em_rl_config import EMRLConfig
from emreason.trainers.rewards import entropy_reward, group_advantages

__all__ = ["EMRLTrainer"]


class _TrainerComputedReward:
    """Stands in TRL's reward list (which must not be empty); the trainer computes this reward itself
    from the rollout's log-probabilities and entropies, which TRL's reward hook never sees."""

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is computed inside EMRLTrainer and cannot be called on its own")


class EMRLTrainer(RolloutHooksMixin, GRPOTrainer):
    """EM-RL trainer (TRL `GRPOTrainer` subclass) with reward ``-entropy`` of each rollout.

    The reward is computed from per-token statistics of the rollout itself: with transformers
    generation a logits processor records each sampled token's log-probability and each step's
    entropy while sampling; with vLLM the sequence reward uses vLLM's sampled-token log-probabilities and
    the token reward the entropies of the forward pass TRL already runs for its importance-sampling
    correction. No forward pass is added for the reward. Advantages are RLOO or GRPO (see
    `emreason.trainers.rewards.group_advantages`), unscaled by default.

    Args:
        model: model id/path, `PreTrainedModel` or `PeftModel` (as for `GRPOTrainer`).
        args: an `EMRLConfig`.
        train_dataset: `datasets.Dataset` with a ``prompt`` column (plain text or chat messages); no
            labels are used.
        Other arguments are passed to `GRPOTrainer` unchanged.
    """

    _tag_names = ["trl", "emreason", "em-rl"]
    _name = "EM-RL"
    _record_rollout_stats = True

    def __init__(
        self,
        model,
        args: EMRLConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            args = EMRLConfig(output_dir="em-rl")
        if not isinstance(args, EMRLConfig):
            raise TypeError(f"args must be an EMRLConfig, got {type(args).__name__}")
        if args.use_transformers_continuous_batching:
            raise ValueError(
                "EMRLTrainer does not support use_transformers_continuous_batching (no per-token stats)"
            )
        if args.use_vllm and args.reward_type == "token" and not args.vllm_importance_sampling_correction:
            raise ValueError(
                "reward_type='token' with use_vllm needs vllm_importance_sampling_correction=True: the token "
                "entropies come from the forward pass that correction runs (vLLM returns no entropies)"
            )
        check_train_inputs(train_dataset, processing_class)
        self._em_global_rewards: torch.Tensor | None = None
        self._capture_forward_stats = False
        self._forward_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        with vllm_engine_dtype(self, args):
            super().__init__(
                model=model,
                reward_funcs=_TrainerComputedReward(
                    f"neg_entropy_{args.reward_type}_{args.reward_aggregation}"
                ),
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )

    # --- rollout statistics --------------------------------------------------------------------------
    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        completion_ids, logprobs = super()._generate_single_turn(
            prompt_ids, images, multimodal_fields, num_generations, has_tool_images
        )
        if self.use_vllm:
            # Sequence reward: vLLM's own sampled-token log-probs. Token reward: the IS-correction forward.
            self._rollout_stats = None
            self._vllm_logprobs = logprobs
            self._capture_forward_stats = self.args.reward_type == "token"
        return completion_ids, logprobs

    def _get_per_token_logps_and_entropies(self, model, *args, compute_entropy=False, **kwargs):
        if self._capture_forward_stats and not torch.is_grad_enabled():
            # The first no-grad forward after a vLLM rollout is TRL's old-log-prob pass for the policy.
            self._capture_forward_stats = False
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, *args, compute_entropy=True, **kwargs
            )
            self._forward_stats = (logps, entropies)
            return logps, entropies if compute_entropy else None, aux
        return super()._get_per_token_logps_and_entropies(
            model, *args, compute_entropy=compute_entropy, **kwargs
        )

    def _local_token_stats(self, completion_ids_list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logprobs, entropies, mask)``, each ``[B, C]`` on the device, for this process's rollouts."""
        device = self.accelerator.device
        lengths = [len(ids) for ids in completion_ids_list]
        mask = pad([torch.ones(n) for n in lengths], padding_value=0.0).to(device)
        if self._rollout_stats is not None:
            logprobs = pad([lp.float() for lp, _ in self._rollout_stats], padding_value=0.0).to(device)
            entropies = pad([h.float() for _, h in self._rollout_stats], padding_value=0.0).to(device)
        elif self.use_vllm and self.args.reward_type == "sequence":
            rows = [
                torch.tensor([float("nan") if x is None else x for x in row]) for row in self._vllm_logprobs
            ]
            logprobs = torch.nan_to_num(pad(rows, padding_value=0.0), nan=0.0).to(device)
            entropies = torch.zeros_like(logprobs)
        elif self._forward_stats is not None:
            logprobs, entropies = (t.float() for t in self._forward_stats)
            self._forward_stats = None
        else:
            raise RuntimeError("no rollout statistics were recorded for this batch")
        self._rollout_stats = None
        width = mask.shape[1]
        return logprobs[:, :width], entropies[:, :width], mask

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        logprobs, entropies, mask = self._local_token_stats(completion_ids_list)
        rewards = entropy_reward(
            logprobs,
            entropies,
            mask,
            reward_type=self.args.reward_type,
            aggregation=self.args.reward_aggregation,
        )
        mode = "train" if self.model.training else "eval"
        totals = torch.stack([(entropies * mask).sum(), (logprobs * mask).sum(), mask.sum()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        if not (self.use_vllm and self.args.reward_type == "sequence"):  # else no entropies were measured
            self._metrics[mode]["rollout/token_entropy"].append((totals[0] / totals[2].clamp_min(1)).item())
        self._metrics[mode]["rollout/token_logprob"].append((totals[1] / totals[2].clamp_min(1)).item())
        scaled = rewards * self.args.reward_scale
        gathered = self.accelerator.gather(scaled.unsqueeze(1))  # [N_global, 1]
        self._em_global_rewards = gathered[:, 0]
        return gathered

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        advantages = group_advantages(
            self._em_global_rewards, num_generations, self.args.advantage_estimator, self.scale_rewards
        )
        local = output["completion_ids"].size(0)
        start = self.accelerator.process_index * local
        output["advantages"] = advantages[start : start + local]
        self._metrics[mode]["advantages/abs_mean"].append(advantages.abs().mean().item())
        return output
