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


def vllm_config(max_num_seqs: int = MAX_SLOTS, speculative_config=None):
    """The parts of a VllmConfig the processor reads."""
    return SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
        model_config=None,
        speculative_config=speculative_config,
    )


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
        ({"em_inf": 1, "em_inf_steps": -1}, "em_inf_steps must be an integer from 0 to 100"),
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


# -- limits, admission and defence in depth (issue 17) -----------------------------------------------

HUGE = 1e39  # beyond float32: would become inf in the worker's float32 slot table


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"em_inf": 1, "em_inf_steps": 2**63}, "em_inf_steps"),  # overflowed the int64 slot table
        ({"em_inf": 1, "em_inf_steps": 1e19}, "em_inf_steps"),
        ({"em_inf": 1, "em_inf_steps": "1e30"}, "em_inf_steps"),
        ({"em_inf": 1, "em_inf_steps": 10**12}, "em_inf_steps"),  # would stall the engine
        ({"em_inf": 1, "em_inf_steps": 101}, "em_inf_steps"),
        ({"em_inf": 1, "em_inf_steps": "nan"}, "em_inf_steps"),
        ({"em_inf": 1, "em_inf_steps": True}, "em_inf_steps"),
        ({"em_inf": 1, "em_inf_lr": HUGE}, "em_inf_lr"),
        ({"em_inf": 1, "em_inf_lr": "1e39"}, "em_inf_lr"),
        ({"em_inf": 1, "em_inf_threshold": HUGE}, "em_inf_threshold"),
        ({"em_inf": 1, "em_inf_kl_weight": HUGE}, "em_inf_kl_weight"),
        ({"em_inf": 1, "em_inf_lr": "-inf"}, "em_inf_lr"),
        ({"adaptive_temperature": 1, "adaptive_temperature_delta": HUGE}, "adaptive_temperature_delta"),
        ({"adaptive_temperature": 1, "adaptive_temperature_alpha": "nan"}, "adaptive_temperature_alpha"),
    ],
)
def test_admission_rejects_what_the_worker_cannot_hold(extra, key):
    with pytest.raises(ValueError, match=key):
        EMInfLogitsProcessor.validate_params(SamplingParams(extra_args=extra))


def test_integers_beyond_float64_are_rejected_by_name():
    # SamplingParams refuses them itself (msgpack), but parse_request must not crash on them either.
    for key in ("em_inf_steps", "em_inf_kl_weight"):
        with pytest.raises(ValueError, match=key):
            parse_request({"em_inf": 1, key: 10**400})


def test_steps_cap_from_the_environment(monkeypatch):
    from emreason.integrations.vllm import MAX_STEPS_ENV, max_steps_cap

    assert max_steps_cap() == 100
    EMInfLogitsProcessor.validate_params(SamplingParams(extra_args={"em_inf": 1, "em_inf_steps": 100}))
    monkeypatch.setenv(MAX_STEPS_ENV, "7")
    EMInfLogitsProcessor.validate_params(SamplingParams(extra_args={"em_inf": 1, "em_inf_steps": 7.0}))
    with pytest.raises(ValueError, match="from 0 to 7"):
        EMInfLogitsProcessor.validate_params(SamplingParams(extra_args={"em_inf": 1, "em_inf_steps": 8}))
    with pytest.raises(ValueError, match="at most 7"):
        EMInfLogitsProcessor(steps=8)  # a configured server default above the cap
    monkeypatch.setenv(MAX_STEPS_ENV, "1000")
    assert max_steps_cap() == 1000
    for bad in ("1001", "-1", "ten", "1e3", "3.0"):
        monkeypatch.setenv(MAX_STEPS_ENV, bad)
        with pytest.raises(ValueError, match=MAX_STEPS_ENV):
            EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)  # engine start-up fails
        with pytest.raises(ValueError, match=MAX_STEPS_ENV):
            EMInfLogitsProcessor.validate_params(SamplingParams(extra_args={"em_inf": 1}))


def admit_through_vllm(use_v2: bool, speculative: bool, params: SamplingParams) -> None:
    """vLLM's own admission validator for the runner, called from an InputProcessor as vLLM does."""
    from vllm.v1.engine.input_processor import InputProcessor

    processor = InputProcessor.__new__(InputProcessor)  # only the attributes admission reads
    processor.vllm_config = SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=2) if speculative else None,
        use_v2_model_runner=use_v2,
    )
    processor.model_config = SimpleNamespace(logits_processors=None, runner_type="generate")
    validator = InputProcessor._build_logits_processors_params_validator(processor)

    def _validate_params(self, params):  # stands in for InputProcessor._validate_params's frame
        validator(params)

    _validate_params(processor, params)


@pytest.mark.parametrize("use_v2", [False, True], ids=["classic", "v2"])
def test_speculative_decoding_on_the_classic_runner_rejects_em_inf_requests(use_v2):
    """Classic + speculative decoding drops entry-point processors: EM-INF requests must get a 400."""
    on = SamplingParams(extra_args={"em_inf": 1})
    adaptive = SamplingParams(extra_args={"adaptive_temperature": 1})
    for request in (on, adaptive, SamplingParams(), SamplingParams(extra_args={"em_inf": 0})):
        admit_through_vllm(use_v2, speculative=False, params=request)
    for request in (SamplingParams(), SamplingParams(extra_args={"em_inf": 0})):
        admit_through_vllm(use_v2, speculative=True, params=request)
    if use_v2:  # Model Runner V2 runs custom processors on draft rows: accepted
        admit_through_vllm(use_v2, speculative=True, params=on)
        admit_through_vllm(use_v2, speculative=True, params=adaptive)
    else:
        from vllm.exceptions import VLLMValidationError

        for request, key in ((on, "em_inf=1"), (adaptive, "adaptive_temperature=1")):
            with pytest.raises(
                (ValueError, VLLMValidationError), match=f"{key} is not available.*speculative"
            ):
                admit_through_vllm(use_v2, speculative=True, params=request)


def test_worker_leaves_invalid_rows_unadjusted_and_never_raises(caplog, monkeypatch):
    """Settings that bypassed admission (or a failing step) leave rows as they were, logged once."""
    import emreason.integrations.vllm as module

    monkeypatch.setattr(module, "_warned", set())
    bad = SamplingParams(extra_args={"em_inf": 1, "em_inf_steps": 2**63, "em_inf_lr": HUGE})
    on = SamplingParams(extra_args={"em_inf": 1})
    logits = random_logits(3, torch.Generator().manual_seed(4))
    classic = EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    with caplog.at_level("WARNING", logger=module.__name__):
        classic.update_state(BatchUpdate(3, [], [(0, bad, [], []), (1, on, [], []), (2, bad, [], [])], []))
        v2 = EMInfLogitsProcessor(vllm_config(), v2_state())
        assert v2.add_request(0, bad) is False
    assert sum("invalid settings" in r.message for r in caplog.records) == 1
    out = classic.apply(logits.clone())
    check_rows(out, logits, [None, on, None])
    # Values that somehow sit in the slot table (NaN, inf) leave only their own row unadjusted.
    classic.slots.set(0, parse_request(on.extra_args))
    classic.slots.lr[0] = np.float32("inf")
    classic.slots.threshold[2] = np.float32("nan")
    classic.slots.mode[2] = 1
    out = classic.apply(logits.clone())
    check_rows(out, logits, [None, on, None])
    # An exception inside the step: logged, rows unadjusted, nothing raised into vLLM.
    monkeypatch.setattr(module, "minimize_entropy", lambda *a, **k: 1 / 0)
    with caplog.at_level("WARNING", logger=module.__name__):
        out = classic.apply(logits.clone())
    torch.testing.assert_close(out, logits, rtol=0, atol=0)
    assert any("failed in apply" in r.message for r in caplog.records)


def mixed_requests(count: int) -> list[SamplingParams]:
    """The issue's batch, repeated: EM-INF on, off, adaptive temperature, EM-INF with 10 steps."""
    kinds = [{"em_inf": 1}, None, {"adaptive_temperature": 1}, {"em_inf": 1, "em_inf_steps": 10}]
    return [SamplingParams(temperature=1.0, extra_args=kinds[i % 4]) for i in range(count)]


@pytest.mark.parametrize("count", [4, 8, 64, 70])
def test_no_device_to_host_reads_per_decode_step(count):
    from emreason.integrations.host_syncs import count_host_syncs

    requests = mixed_requests(count)
    gen = torch.Generator().manual_seed(count)
    classic = EMInfLogitsProcessor(vllm_config(count), torch.device("cpu"), False)
    classic.update_state(BatchUpdate(count, [], [(i, r, [], []) for i, r in enumerate(requests)], []))
    v2 = EMInfLogitsProcessor(vllm_config(count), v2_state(count))
    slots = list(range(count))[::-1]  # reordered rows
    for slot in slots:
        v2.add_request(slot, requests[slot])
    logits = random_logits(count, gen)
    spec_rows = [1 + i % 3 for i in range(count)]
    spec_logits = random_logits(sum(spec_rows), gen)
    ctx, spec_ctx = v2_context(slots, [1] * count), v2_context(slots, spec_rows)
    with count_host_syncs() as classic_reads:
        out = classic.apply(logits.clone())
    with count_host_syncs() as v2_reads:
        out_v2 = v2.apply(logits.clone(), ctx)
        out_spec = v2.apply(spec_logits.clone(), spec_ctx)
    # Classic: at most 2, spent on stopping adaptive-temperature bisection early; V2: none.
    assert 1 <= classic_reads.count <= 2, classic_reads.calls
    assert v2_reads.count == 0, v2_reads.calls
    no_adaptive = [
        SamplingParams() if (r.extra_args or {}).get("adaptive_temperature") else r for r in requests
    ]
    classic.update_state(BatchUpdate(count, [], [(i, r, [], []) for i, r in enumerate(no_adaptive)], []))
    with count_host_syncs() as em_only_reads:
        classic.apply(logits.clone())
    assert em_only_reads.count == 0, em_only_reads.calls
    check_rows(out, logits, requests)
    check_rows(out_v2, logits, [requests[s] for s in slots])
    check_rows(out_spec, spec_logits, [requests[int(s)] for s in spec_ctx.expanded_idx_mapping])


def test_v2_skips_prefill_chunk_rows():
    """A row whose request is still prefilling (visible length < prefill length) is left alone."""
    state = v2_state()
    prefill_len = SimpleNamespace(np=np.zeros(MAX_SLOTS, dtype=np.int32))
    state = LogitsProcRequestState(**{**state.__dict__, "prefill_len": prefill_len})
    proc = EMInfLogitsProcessor(vllm_config(), state)
    on = SamplingParams(extra_args={"em_inf": 1, "em_inf_threshold": 0.0})
    for slot in (0, 1, 2):
        proc.add_request(slot, on)
    prefill_len.np[[0, 1, 2]] = [40, 40, 8]
    logits = random_logits(3, torch.Generator().manual_seed(6))
    for rows_per_request in ([1, 1, 1], [1, 1, 3]):
        ctx = v2_context([0, 1, 2], rows_per_request)
        # slot 0: chunk 1 of a 40-token prompt; slot 1: its last chunk; slot 2: decoding.
        ctx = LogitsContext(**{**ctx.__dict__, "seq_lens_upper_bound_np": np.array([16, 40, 9], np.int32)})
        rows = random_logits(sum(rows_per_request), torch.Generator().manual_seed(7))
        out = proc.apply(rows.clone(), ctx)
        expected = [None, on] + [on] * rows_per_request[2]
        check_rows(out, rows, expected)
    del logits


def test_workspace_reserved_at_start_up(monkeypatch):
    from emreason.integrations.vllm import RESERVE_ENV

    vocab = 151_936
    config = vllm_config(256)
    config.model_config = SimpleNamespace(get_vocab_size=lambda: vocab)
    proc = EMInfLogitsProcessor(config, torch.device("cpu"), False)
    assert proc.reserved_bytes == 7 * 64 * vocab * 4  # 272 MB: the whole per-call working set
    storage = proc.workspace._storage
    assert storage is not None and storage.numel() == 5 * 64 * vocab
    small = LogitsProcRequestState(**{**v2_state(4).__dict__, "vocab_size": vocab})
    spec = SimpleNamespace(num_speculative_tokens=3)
    assert EMInfLogitsProcessor(vllm_config(4, spec), small).reserved_bytes == 7 * 16 * vocab * 4
    monkeypatch.setenv(RESERVE_ENV, "0")
    assert EMInfLogitsProcessor(vllm_config(256), torch.device("cpu"), False).workspace._storage is None
    # Using the reserved buffers allocates no new [rows, V] storage.
    proc.update_state(
        BatchUpdate(2, [], [(i, SamplingParams(extra_args={"em_inf": 1}), [], []) for i in (0, 1)], [])
    )
    proc.apply(torch.randn(2, vocab))
    assert proc.workspace._storage is storage


# -- position in the processor chain (issue 17, item 5) ---------------------------------------------

PENALIZED = [3, 10, 42]  # tokens in the prompt, penalized by repetition_penalty
REPETITION = 1.7


def repetition_penalty(logits: torch.Tensor) -> torch.Tensor:
    """The repetition penalty (CTRL) on PENALIZED tokens, written out: positive logits / r, others * r."""
    out = logits.clone()
    cols = out[:, PENALIZED]
    out[:, PENALIZED] = torch.where(cols > 0, cols / REPETITION, cols * REPETITION)
    return out


def test_classic_runner_applies_penalties_after_em_inf():
    """vLLM's classic sampler runs non-argmax-invariant processors, then penalties (vLLM fixes this)."""
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.sampler import Sampler

    batch = 2
    proc = EMInfLogitsProcessor(vllm_config(), torch.device("cpu"), False)
    on = SamplingParams(extra_args={"em_inf": 1, "em_inf_threshold": 0.0}, repetition_penalty=REPETITION)
    proc.update_state(BatchUpdate(batch, [], [(i, on, [], []) for i in range(batch)], []))
    metadata = SamplingMetadata(
        temperature=None, all_greedy=False, all_random=True, top_p=None, top_k=None, generators={},
        max_num_logprobs=None, no_penalties=False,
        prompt_token_ids=torch.tensor([PENALIZED] * batch),
        frequency_penalties=torch.zeros(batch), presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.full((batch,), REPETITION), output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors([proc]),
    )  # fmt: skip
    logits = random_logits(batch, torch.Generator().manual_seed(11))
    out = Sampler().apply_logits_processors(logits.clone(), metadata, predict_bonus_token=False)
    em_inf = EMInfConfig(threshold=0.0)
    after = repetition_penalty(minimize_entropy(logits, em_inf))
    before = minimize_entropy(repetition_penalty(logits), em_inf)
    torch.testing.assert_close(out, after, rtol=0, atol=2e-5)
    assert (out - before).abs().max() > 1e-2  # the two orders really differ


def test_model_runner_v2_applies_penalties_before_em_inf(monkeypatch):
    """V2's sampler pipeline is [logit bias, penalties, bad words, *custom]: penalties come first.

    The V2 penalties kernel is Triton (absent on CPU), so it is replaced by the same penalty written in
    torch; the order under test is the one of vLLM's own ``Sampler.logits_processors``.
    """
    import vllm.v1.worker.gpu.buffer_utils as buffer_utils
    import vllm.v1.worker.gpu.sample.penalties as penalties
    from vllm.v1.worker.gpu.buffer_utils import UvaBackedTensor
    from vllm.v1.worker.gpu.sample.sampler import Sampler

    monkeypatch.setattr(buffer_utils, "is_uva_available", lambda: False)  # no pinned memory on CPU

    def torch_penalties(logits, expanded_idx_mapping, *args):
        logits.copy_(repetition_penalty(logits))

    monkeypatch.setattr(penalties, "apply_penalties", torch_penalties)
    slots = 4
    state = LogitsProcRequestState(
        **{**v2_state(slots).__dict__, "prompt_len": UvaBackedTensor(slots, torch.int32),
           "prefill_len": UvaBackedTensor(slots, torch.int32)}
    )  # fmt: skip
    proc = EMInfLogitsProcessor(vllm_config(slots), state)
    config = SimpleNamespace(reasoning_config=None, model_config=SimpleNamespace(max_model_len=64))
    sampler = Sampler(config, slots, VOCAB, torch.device("cpu"), state, custom_logits_processors=[proc])
    names = [type(p).__name__ for p in sampler.logits_processors]
    assert names.index("PenaltiesState") < names.index("EMInfLogitsProcessor"), names
    on = SamplingParams(extra_args={"em_inf": 1, "em_inf_threshold": 0.0}, repetition_penalty=REPETITION)
    for slot in (0, 1):
        assert sampler.penalties_state.add_request(slot, on) and proc.add_request(slot, on)
    ctx = v2_context([0, 1], [1, 1])
    logits = random_logits(2, torch.Generator().manual_seed(11))
    out = logits.clone()
    for stage in sampler.logits_processors:  # what Sampler.apply_sampling_params does
        out = stage.apply(out, ctx)
    em_inf = EMInfConfig(threshold=0.0)
    torch.testing.assert_close(out, minimize_entropy(repetition_penalty(logits), em_inf), rtol=0, atol=2e-5)
