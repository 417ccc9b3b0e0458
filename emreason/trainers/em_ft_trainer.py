"""EM-FT: fine-tune on the model's own samples by minimizing their token entropy (no policy gradient)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from trl import GRPOTrainer

from emreason.entropy import entropy_from_hidden, sequence_logprob, token_entropy
from emreason.trainers._common import RolloutHooksMixin, check_train_inputs, vllm_engine_dtype
from emreason.trainers.em_ft_config import EMFTConfig

__all__ = ["EMFTTrainer"]


def no_reward(prompts, completions, **kwargs) -> list[float]:
    """EM-FT has no reward; TRL's rollout code requires a reward source, so this one returns zeros."""
    return [0.0] * len(prompts)


def _chunk_token_logprobs(hidden, weight, bias, token_ids, temperature):
    logits = torch.nn.functional.linear(hidden, weight, bias) / temperature
    return sequence_logprob(logits.unsqueeze(0), token_ids.unsqueeze(0)).token_logprobs[0]


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_ids: torch.Tensor,
    temperature: float,
    chunk_size: int,
) -> torch.Tensor:
    """``log softmax(hidden @ W.T + b) / T)[token_ids]`` ``[B, C]``, one checkpointed chunk of tokens at a
    time, so (like `entropy_from_hidden`) the full ``[tokens, vocab]`` logits never exist at once."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_ids = token_ids.reshape(-1)
    pieces = [
        checkpoint(
            _chunk_token_logprobs,
            flat_hidden[start : start + chunk_size],
            weight,
            bias,
            flat_ids[start : start + chunk_size],
            temperature,
            use_reentrant=False,
        )
        for start in range(0, flat_ids.numel(), chunk_size)
    ]
    return torch.cat(pieces).reshape(token_ids.shape)


def _full_tensor(parameter: torch.Tensor | None) -> torch.Tensor | None:
    # FSDP2 shards parameters as DTensors; the head is used outside the module's forward, so gather it.
    if parameter is not None and hasattr(parameter, "full_tensor"):
        return parameter.full_tensor()
    return parameter


class EMFTTrainer(RolloutHooksMixin, GRPOTrainer):
    """EM-FT trainer: sample ``num_generations`` completions per unlabeled prompt from the current model
    and minimize the mean token entropy over the generated tokens, optionally plus ``beta`` times a KL
    to the reference model (k3 estimator on the sampled tokens, as in TRL's GRPO).

    Reuses TRL's `GRPOTrainer` for rollouts (transformers or vLLM generation, batching, PEFT, reference
    model, gradient accumulation, checkpointing, logging) and replaces its loss. The entropy goes through
    `emreason.entropy.entropy_from_hidden` on the final hidden states (chunked; the logits are kept for the
    backward within ``entropy_keep_logits_max_mb`` and recomputed beyond it), so a step's peak memory stays
    below a plain SFT step's, which holds all logits and their gradient.

    The loss is the token-level mean over every completion token of the global (all processes, all
    accumulation steps) batch, so the gradient does not depend on how the batch is split.
    """

    _tag_names = ["trl", "emreason", "em-ft"]
    _name = "EM-FT"

    def __init__(
        self,
        model,
        args: EMFTConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            args = EMFTConfig(output_dir="em-ft")
        if not isinstance(args, EMFTConfig):
            raise TypeError(f"args must be an EMFTConfig, got {type(args).__name__}")
        if args.use_transformers_continuous_batching and args.per_sample_seeded_sampling:
            raise ValueError("per_sample_seeded_sampling needs model.generate, not continuous batching")
        check_train_inputs(train_dataset, processing_class)
        with vllm_engine_dtype(self, args):
            super().__init__(
                model=model,
                reward_funcs=no_reward,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        # The chunked entropy uses the LM-head weight outside the module's forward: fine for DDP and FSDP2
        # (DTensor.full_tensor() gathers it with gradients). ZeRO-3 gathers a partitioned weight only inside
        # its module's forward, so there the head runs as a module on every completion position instead.
        state = self.accelerator.state
        self._head_in_forward = self.is_deepspeed_enabled and state.deepspeed_plugin.zero_stage == 3
        if self.is_fsdp_enabled and getattr(state.fsdp_plugin, "fsdp_version", 1) != 2:
            raise ValueError("EMFTTrainer needs FSDP version 2 (fsdp_version: 2 in the accelerate config)")

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        mask = mask.float()
        length = completion_ids.size(1)

        # Through the (DDP/FSDP/PEFT-wrapped) model so gradient sync hooks run; logits only for one position
        # unless the head must run inside the forward (ZeRO-3).
        with self.accelerator.autocast():
            outputs = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=not self._head_in_forward,
                logits_to_keep=length + 1 if self._head_in_forward else 1,
                use_cache=False,
            )
        if self._head_in_forward:
            # Full [B, C, V] logits: a plain SFT step's memory, not the chunked path's.
            logits = outputs.logits[:, :-1].float()  # positions that predict the completion tokens
            entropies = token_entropy(logits)  # [B, C] nats

            def token_logprobs() -> torch.Tensor:
                return sequence_logprob(logits / self.temperature, completion_ids).token_logprobs
        else:
            hidden = outputs.hidden_states[-1][:, -length - 1 : -1]  # states that predict the completion
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            weight, bias = _full_tensor(head.weight), _full_tensor(head.bias)
            chunk = self.args.entropy_chunk_size
            recompute = {"true": True, "false": False}.get(self.args.entropy_recompute_logits)
            entropies = entropy_from_hidden(  # [B, C] nats
                hidden,
                weight,
                chunk_size=chunk,
                bias=bias,
                recompute_logits=self.args.entropy_recompute_logits if recompute is None else recompute,
                keep_logits_max_bytes=int(self.args.entropy_keep_logits_max_mb * 2**20),
            )

            def token_logprobs() -> torch.Tensor:
                return chunked_token_logprobs(hidden, weight, bias, completion_ids, self.temperature, chunk)

        mode = "train" if self.model.training else "eval"
        # Token mean over the global batch: DDP averages gradients over processes, so divide by the
        # per-process share of the global token count (TRL's "dapo" normalization).
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = (
                normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            )
        loss = (entropies * mask).sum() / normalizer

        per_token_kl = None
        if self.beta != 0.0:
            logprobs = token_logprobs()
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - logprobs) - (ref - logprobs) - 1
            loss = loss + self.beta * (per_token_kl * mask).sum() / normalizer

        totals = [(entropies.detach() * mask).sum(), mask.sum()]
        if per_token_kl is not None:
            totals.append((per_token_kl.detach() * mask).sum())
        totals = self.accelerator.reduce(torch.stack(totals), reduction="sum")
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())
        if per_token_kl is not None:
            self._metrics[mode]["kl"].append((totals[2] / totals[1].clamp(min=1.0)).item())
        return loss
