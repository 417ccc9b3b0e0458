"""The vLLM processor against a per-request reference: classic BatchUpdates and V2 slots, hand-made.

Runs inside ``.venv-vllm`` (driven by ``tests/integrations/test_vllm.py``).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as ClassicLogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

from emreason.em_inf import AdaptiveTemperatureConfig, EMInfConfig, adaptive_temperature, minimize_entropy
from emreason.integrations.vllm import EMInfLogitsProcessor, parse_request

VOCAB = 97
MAX_SLOTS = 12


def vllm_config(max_num_seqs: int = MAX_SLOTS):
    """The parts of a VllmConfig the processor reads."""
    return SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs), model_config=None)


def random_request(rng: random.Random) -> SamplingParams:
    """Off, EM-INF (defaults or custom), or adaptive temperature, with other extensions' keys mixed in."""
    kind = rng.choice(["off", "off_other", "em_defaults", "em_custom", "adaptive"])
    extra = {
        "off": None,
        "off_other": {"session_id": "x", "em_inf": 0},
        "em_defaults": {"em_inf": 1},
        "em_custom": {
            "em_inf": 1,
            "em_inf_steps": rng.choice([1, 5, 15]),
            "em_inf_lr": rng.choice([0.05, 0.3]),
            "em_inf_threshold": rng.choice([0.0, 0.1]),
            "em_inf_kl_weight": "0.2",  # numeric strings are accepted, as vllm_xargs may carry them
        },
        "adaptive": {"adaptive_temperature": 1, "adaptive_temperature_alpha": rng.choice([0.3, 0.6])},
    }[kind]
    return SamplingParams(temperature=1.0, extra_args=extra)


def reference_row(row: torch.Tensor, params: SamplingParams | None) -> torch.Tensor:
    """What one request alone, at batch size 1, should get."""
    if params is None:
        return row
    settings = parse_request(params.extra_args)
    if settings.mode == 1:
        return minimize_entropy(row.unsqueeze(0), settings.em_inf).squeeze(0)
    if settings.mode == 2:
        return adaptive_temperature(row.unsqueeze(0), settings.adaptive).squeeze(0)
    return row


def check_rows(out: torch.Tensor, logits: torch.Tensor, requests: list) -> None:
    for i, params in enumerate(requests):
        expected = reference_row(logits[i], params)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=2e-5, msg=f"row {i}")


def random_logits(rows: int, gen: torch.Generator) -> torch.Tensor:
    scale = torch.rand(rows, 1, generator=gen) * 4 + 0.2
    return torch.randn(rows, VOCAB, generator=gen) * scale


def test_one_class_implements_both_interfaces():
    assert issubclass(EMInfLogitsProcessor, ClassicLogitsProcessor)
    assert issubclass(EMInfLogitsProcessor, V2LogitsProcessor)
    proc = EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    assert proc.is_argmax_invariant() is False


def test_configured_subclass_carries_server_defaults():
    custom = EMInfLogitsProcessor(steps=10, threshold=0.1)
    assert isinstance(custom, type) and issubclass(custom, EMInfLogitsProcessor)
    assert custom.default_config == EMInfConfig(steps=10, threshold=0.1)
    assert EMInfLogitsProcessor.default_config == EMInfConfig()
    proc = custom(vllm_config(), torch.device("cpu"), False)
    proc.update_state(BatchUpdate(1, [], [(0, SamplingParams(extra_args={"em_inf": 1}), [], [])], []))
    logits = random_logits(1, torch.Generator().manual_seed(0))
    out = proc.apply(logits.clone())
    torch.testing.assert_close(out, minimize_entropy(logits, steps=10, threshold=0.1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        EMInfLogitsProcessor(steps=-1)
    with pytest.raises(TypeError, match="EMInfConfig"):
        EMInfLogitsProcessor({"steps": 3})


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"em_inf": 2}, "em_inf must be 0 or 1"),
        ({"em_inf": "yes"}, "em_inf must be a number"),
        ({"em_inf": 1, "em_inf_steps": 2.5}, "em_inf_steps must be an integer"),
        ({"em_inf": 1, "em_inf_steps": -1}, "steps must be >= 0"),
        ({"em_inf": 1, "em_inf_lr": 0}, "lr must be > 0"),
        ({"em_inf": 1, "em_inf_threshold": -0.5}, "threshold"),
        ({"em_inf": 1, "em_inf_kl_weight": float("inf")}, "em_inf_kl_weight must be a finite number"),
        ({"em_inf": 1, "em_inf_step": 3}, "unknown EM-INF request key"),
        ({"em_inf_steps": 3}, "given but em_inf is not 1"),
        ({"em_inf": 1, "adaptive_temperature": 1}, "cannot both be 1"),
        ({"adaptive_temperature": 1, "adaptive_temperature_alpha": 1.5}, "alpha must be in"),
        ({"em_inf": [1]}, "em_inf must be a finite number"),
    ],
)
def test_validate_params_rejects_bad_requests(extra, message):
    with pytest.raises(ValueError, match=message):
        EMInfLogitsProcessor.validate_params(SamplingParams(extra_args=extra))


def test_validate_params_accepts_good_requests():
    for extra in (None, {}, {"em_inf": 0}, {"em_inf": 1, "em_inf_steps": 10.0}, {"other_plugin": [1, 2]}):
        EMInfLogitsProcessor.validate_params(SamplingParams(extra_args=extra))
    settings = parse_request({"em_inf": True, "em_inf_steps": "7", "em_inf_lr": 0.2})
    assert settings.mode == 1 and settings.em_inf == EMInfConfig(steps=7, lr=0.2)
    assert parse_request({"adaptive_temperature": 1}).adaptive == AdaptiveTemperatureConfig()


def test_vllm_loaders_accept_the_class_for_both_runners():
    from vllm.v1.sample.logits_processor import _load_custom_logitsprocs
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs

    fqcn = "emreason.integrations.vllm:EMInfLogitsProcessor"
    # Both loaders also load every installed entry point: V2 would raise on a classic-only plugin.
    assert EMInfLogitsProcessor in _load_custom_logitsprocs([fqcn])
    assert _load_v2_logitsprocs([fqcn]).count(EMInfLogitsProcessor) == 2  # entry point + FQCN


def classic_step(batch: list, rng: random.Random) -> tuple[list, list, list]:
    """Mutate ``batch`` (a condensed persistent batch of SamplingParams) like vLLM's InputBatch does.

    Returns (removed, added, moved) in the order the processor must apply them.
    """
    removed = [i for i in range(len(batch)) if rng.random() < 0.3]
    for i in removed:
        batch[i] = None
    added = []
    for _ in range(rng.randint(0, 4)):
        holes = [i for i, r in enumerate(batch) if r is None]
        if len(batch) < MAX_SLOTS and (not holes or rng.random() < 0.3):
            batch.append(None)
            holes = [len(batch) - 1]
        if not holes:
            break
        index = rng.choice(holes)
        batch[index] = random_request(rng)
        added.append((index, batch[index], [], []))
    # An add may also replace an occupied index without a removal.
    occupied = [i for i, r in enumerate(batch) if r is not None]
    if occupied and rng.random() < 0.4:
        index = rng.choice(occupied)
        batch[index] = random_request(rng)
        added.append((index, batch[index], [], []))
    moved = []
    # Condense: move the last requests into the holes (one-way moves).
    while None in batch:
        hole = batch.index(None)
        last = max((i for i, r in enumerate(batch) if r is not None), default=-1)
        if last < hole:
            del batch[hole:]
            break
        batch[hole], batch[last] = batch[last], None
        moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
    for _ in range(rng.randint(0, 2)):  # reorder with swaps
        if len(batch) >= 2:
            a, b = rng.sample(range(len(batch)), 2)
            batch[a], batch[b] = batch[b], batch[a]
            moved.append((a, b, MoveDirectionality.SWAP))
    return removed, added, moved


@pytest.mark.parametrize("seed", range(4))
def test_classic_random_batch_updates_match_per_request_reference(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    proc = EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    batch: list = []
    for _ in range(30):
        removed, added, moved = classic_step(batch, rng)
        update = BatchUpdate(len(batch), removed, added, moved) if (removed or added or moved) else None
        proc.update_state(update)
        logits = random_logits(len(batch), gen)
        out = proc.apply(logits.clone())
        check_rows(out, logits, batch)


def v2_state(max_slots: int = MAX_SLOTS) -> LogitsProcRequestState:
    return LogitsProcRequestState(
        device=torch.device("cpu"),
        max_num_reqs=max_slots,
        vocab_size=VOCAB,
        all_token_ids=None,
        prompt_len=None,
        prefill_len=None,
        total_len=None,
    )


def v2_context(slots: list[int], rows_per_request: list[int]) -> LogitsContext:
    expanded = np.repeat(np.array(slots, dtype=np.int64), rows_per_request)
    local = np.concatenate([np.arange(n) for n in rows_per_request]) if slots else np.zeros(0, np.int64)
    return LogitsContext(
        expanded_idx_mapping=torch.from_numpy(expanded).to(torch.int32),
        idx_mapping=torch.tensor(slots, dtype=torch.int32),
        idx_mapping_np=np.array(slots, dtype=np.int32),
        expanded_local_pos=torch.from_numpy(local).to(torch.int32),
        input_ids=torch.zeros(len(expanded), dtype=torch.int32),
        pos=torch.zeros(len(expanded), dtype=torch.int64),
        seq_lens_upper_bound_np=np.ones(len(slots), dtype=np.int32),
    )


@pytest.mark.parametrize("speculative", [False, True], ids=["one_row", "spec_decode_rows"])
def test_v2_slots_and_contexts_match_per_request_reference(speculative):
    rng = random.Random(7 + speculative)
    gen = torch.Generator().manual_seed(7)
    proc = EMInfLogitsProcessor(vllm_config(), v2_state())
    live: dict[int, SamplingParams] = {}
    for _ in range(30):
        # Finished requests free their slots; new ones reuse any free slot (stale state must not leak).
        for slot in [s for s in live if rng.random() < 0.3]:
            del live[slot]
        for slot in rng.sample([s for s in range(MAX_SLOTS) if s not in live], rng.randint(0, 3)):
            params = random_request(rng)
            wants = proc.add_request(slot, params)
            assert wants == (parse_request(params.extra_args).mode != 0)
            live[slot] = params
        proc.apply_staged_writes()
        slots = rng.sample(sorted(live), len(live))  # rows are reordered every step
        rows_per_request = [rng.randint(1, 3) if speculative else 1 for _ in slots]
        ctx = v2_context(slots, rows_per_request)
        logits = random_logits(int(sum(rows_per_request)), gen)
        out = proc.apply(logits.clone(), ctx)
        check_rows(out, logits, [live[int(s)] for s in ctx.expanded_idx_mapping])


def test_apply_leaves_logits_alone_when_no_request_asks():
    proc = EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    proc.update_state(BatchUpdate(2, [], [(0, SamplingParams(), [], []), (1, SamplingParams(), [], [])], []))
    logits = random_logits(2, torch.Generator().manual_seed(1))
    assert proc.apply(logits) is logits
    assert torch.equal(proc.apply(logits.clone()), logits)


def test_masked_and_broken_rows_in_a_vllm_batch():
    proc = EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    on = SamplingParams(extra_args={"em_inf": 1, "em_inf_threshold": 0.0})
    proc.update_state(BatchUpdate(3, [], [(i, on, [], []) for i in range(3)], []))
    logits = random_logits(3, torch.Generator().manual_seed(2))
    logits[0, :10] = float("-inf")  # grammar / bad-words masks
    logits[1, 5] = float("nan")
    out = proc.apply(logits.clone())
    assert torch.isneginf(out[0, :10]).all()
    assert torch.equal(out[1].nan_to_num(), logits[1].nan_to_num())
    assert out[2].softmax(-1).max() > logits[2].softmax(-1).max()


def test_loaded_twice_for_one_engine_runs_once():
    """Entry point + --logits-processors builds two instances for one engine: only the newer one acts."""
    config = vllm_config()
    on = SamplingParams(extra_args={"em_inf": 1})
    first = EMInfLogitsProcessor(config, torch.device("cpu"), False)
    second = EMInfLogitsProcessor(steps=10)(config, torch.device("cpu"), False)
    other_engine = EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    update = BatchUpdate(1, [], [(0, on, [], [])], [])
    logits = random_logits(1, torch.Generator().manual_seed(3))
    out = logits.clone()
    for proc in (first, second, other_engine):
        proc.update_state(update)
    for proc in (first, second):  # vLLM's order: entry points first, then the user's classes
        out = proc.apply(out)
    torch.testing.assert_close(out, minimize_entropy(logits, steps=10), rtol=0, atol=1e-6)
    assert not first.active and second.active and other_engine.active
    assert first.add_request(0, on) is False and second.add_request(0, on) is True
