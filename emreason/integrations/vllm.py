"""EM-INF as a vLLM logits processor, for both of vLLM's runner interfaces (supported: vLLM 0.31 - 0.32).

One class implements the classic interface (``vllm.v1.sample.logits_processor.LogitsProcessor``: a
persistent batch kept in step by ``update_state(BatchUpdate)``) and Model Runner V2's
(``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``: request slots, ``add_request``,
``apply_staged_writes``, ``apply(logits, ctx)``). V2 rejects classic-only entry points at start-up, so
implementing both keeps the ``vllm.logits_processors`` entry point safe for every user.

It is off unless a request asks, with flat ``vllm_xargs`` keys (vLLM rejects nested dicts and turns JSON
``true`` into 1)::

    em_inf                     0 / 1      EM-INF on this request
    em_inf_steps               int >= 0   defaults: the server's EMInfConfig (steps=3, lr=0.1,
    em_inf_lr                  > 0                   threshold=0.3, kl_weight=0.05)
    em_inf_threshold           >= 0 nats
    em_inf_kl_weight           >= 0
    adaptive_temperature       0 / 1      the paper's adaptive-temperature baseline instead
    adaptive_temperature_alpha (0, 1]     target fraction of the initial entropy (default 0.2)
    adaptive_temperature_delta >= 0 nats  entropy floor (default 1e-6)

Invalid values raise ``ValueError`` in ``validate_params`` (HTTP 400 from the server). The processor is
not argmax-invariant, so vLLM runs it before temperature, top-p and top-k.

Usage: ``LLM(model, logits_processors=[EMInfLogitsProcessor])``, or with other server-wide defaults
``LLM(model, logits_processors=[EMInfLogitsProcessor(steps=10, threshold=0.1)])``;
``--logits-processors emreason.integrations.vllm:EMInfLogitsProcessor`` on the command line; or nothing
at all, through the ``em_inf`` entry point once emreason is installed.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as ClassicLogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor

from emreason.em_inf import (
    AdaptiveTemperatureConfig,
    EMInfConfig,
    EMInfWorkspace,
    adaptive_temperature,
    minimize_entropy,
)

__all__ = ["EMInfLogitsProcessor", "RequestSettings", "parse_request", "SUPPORTED_VLLM"]

SUPPORTED_VLLM = ">=0.31,<0.33"

MODE_OFF, MODE_EM_INF, MODE_ADAPTIVE = 0, 1, 2
_EM_INF_KEYS = ("em_inf_steps", "em_inf_lr", "em_inf_threshold", "em_inf_kl_weight")
_ADAPTIVE_KEYS = ("adaptive_temperature_alpha", "adaptive_temperature_delta")
_KNOWN_KEYS = {"em_inf", "adaptive_temperature", *_EM_INF_KEYS, *_ADAPTIVE_KEYS}
# Rows per core call: bounds the core's six [rows, V] float32 buffers (64 x 152k vocab: ~230 MB).
_MAX_ROWS_PER_CALL = 64
# id(vllm_config) -> the processor instances built for that engine (see EMInfLogitsProcessor.__init__).
_INSTANCES: dict[int, weakref.WeakSet] = {}


@dataclass(frozen=True)
class RequestSettings:
    """What one request asked for: ``mode`` is 0 (off), 1 (EM-INF) or 2 (adaptive temperature)."""

    mode: int
    em_inf: EMInfConfig
    adaptive: AdaptiveTemperatureConfig


def _number(extra: Mapping[str, Any], key: str) -> float:
    value = extra[key]
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {extra[key]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {extra[key]!r}")
    return float(value)


def _switch(extra: Mapping[str, Any], key: str) -> bool:
    if key not in extra:
        return False
    if isinstance(extra[key], bool):  # offline LLM users may pass Python booleans
        return extra[key]
    value = _number(extra, key)
    if value not in (0.0, 1.0):
        raise ValueError(f"{key} must be 0 or 1, got {extra[key]!r}")
    return value == 1.0


def parse_request(
    extra_args: Mapping[str, Any] | None, defaults: EMInfConfig | None = None
) -> RequestSettings:
    """Validate a request's ``vllm_xargs`` (``SamplingParams.extra_args``) and resolve its settings.

    Raises ValueError naming the offending key for: an unknown ``em_inf*`` / ``adaptive_temperature*`` key,
    a non-numeric or out-of-range value, a parameter without its switch, or both switches on at once.
    Keys of other extensions are ignored.
    """
    defaults = defaults or EMInfConfig()
    extra = dict(extra_args or {})
    ours = {k for k in extra if k.startswith(("em_inf", "adaptive_temperature"))}
    unknown = sorted(ours - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown EM-INF request key(s) {unknown}; known: {sorted(_KNOWN_KEYS)}")
    use_em_inf = _switch(extra, "em_inf")
    use_adaptive = _switch(extra, "adaptive_temperature")
    if use_em_inf and use_adaptive:
        raise ValueError("em_inf and adaptive_temperature cannot both be 1 in one request")
    for keys, on, switch in (
        (_EM_INF_KEYS, use_em_inf, "em_inf"),
        (_ADAPTIVE_KEYS, use_adaptive, "adaptive_temperature"),
    ):
        stray = [k for k in keys if k in extra]
        if stray and not on:
            raise ValueError(f"{stray} given but {switch} is not 1")

    overrides: dict[str, Any] = {}
    if "em_inf_steps" in extra:
        steps = _number(extra, "em_inf_steps")
        if not steps.is_integer():
            raise ValueError(f"em_inf_steps must be an integer, got {extra['em_inf_steps']!r}")
        overrides["steps"] = int(steps)
    for key in ("lr", "threshold", "kl_weight"):
        if f"em_inf_{key}" in extra:
            overrides[key] = _number(extra, f"em_inf_{key}")
    for field, value in overrides.items():  # one at a time, so the error names the request's key
        try:
            defaults.replace(**{field: value})
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid em_inf_{field}={extra[f'em_inf_{field}']!r}: {error}") from None
    em_inf = defaults.replace(**overrides)

    adaptive_overrides = {
        k.removeprefix("adaptive_temperature_"): _number(extra, k) for k in _ADAPTIVE_KEYS if k in extra
    }
    try:
        adaptive = AdaptiveTemperatureConfig(**adaptive_overrides)
    except ValueError as error:
        given = {f"adaptive_temperature_{k}": v for k, v in adaptive_overrides.items()}
        raise ValueError(f"invalid adaptive temperature request parameters {given}: {error}") from None
    mode = MODE_EM_INF if use_em_inf else MODE_ADAPTIVE if use_adaptive else MODE_OFF
    return RequestSettings(mode, em_inf, adaptive)


class _SlotTable:
    """Dense per-slot settings on the host (like vLLM's MinP processor): one numpy array per field."""

    def __init__(self, num_slots: int) -> None:
        self.mode = np.zeros(num_slots, dtype=np.int8)
        self.steps = np.zeros(num_slots, dtype=np.int64)
        self.lr = np.zeros(num_slots, dtype=np.float32)
        self.threshold = np.zeros(num_slots, dtype=np.float32)
        self.kl_weight = np.zeros(num_slots, dtype=np.float32)
        self.alpha = np.zeros(num_slots, dtype=np.float32)
        self.delta = np.zeros(num_slots, dtype=np.float32)
        self._fields = (
            self.mode,
            self.steps,
            self.lr,
            self.threshold,
            self.kl_weight,
            self.alpha,
            self.delta,
        )

    def set(self, slot: int, settings: RequestSettings) -> None:
        em, at = settings.em_inf, settings.adaptive
        values = (settings.mode, em.steps, em.lr, em.threshold, em.kl_weight, at.alpha, at.delta)
        for array, value in zip(self._fields, values):
            array[slot] = value

    def clear(self, slot: int) -> None:
        for array in self._fields:
            array[slot] = 0

    def move(self, src: int, dst: int, swap: bool) -> None:
        for array in self._fields:
            if swap:
                array[src], array[dst] = array[dst], array[src]
            else:
                array[dst] = array[src]
                array[src] = 0

    def as_tensors(self, slots, device: torch.device) -> dict[str, torch.Tensor]:
        """The named per-row parameters for ``slots`` (host index array), as tensors on ``device``."""
        names = ("steps", "lr", "threshold", "kl_weight", "alpha", "delta")
        return {n: torch.from_numpy(getattr(self, n)[slots]).to(device, non_blocking=True) for n in names}


class EMInfLogitsProcessor(ClassicLogitsProcessor, V2LogitsProcessor):
    """EM-INF / adaptive temperature per request, for vLLM's classic and V2 model runners.

    ``EMInfLogitsProcessor(config=None, **overrides)`` (called without a ``VllmConfig``) returns a subclass
    whose server-wide defaults are ``config`` with ``overrides`` applied, to pass to
    ``LLM(logits_processors=[...])``; requests still opt in with ``em_inf=1`` and may override each value.
    vLLM itself constructs instances as ``(vllm_config, device, is_pin_memory)`` (classic) or
    ``(vllm_config, req_states)`` (V2).
    """

    default_config: EMInfConfig = EMInfConfig()

    def __new__(cls, *args, **kwargs):
        if args and _is_vllm_config(args[0]):
            return super().__new__(cls)
        return cls.configured(*args, **kwargs)

    @classmethod
    def configured(cls, config: EMInfConfig | None = None, **overrides) -> type[EMInfLogitsProcessor]:
        """A subclass with other server-wide EM-INF defaults (validated now, not at the first request)."""
        if config is not None and not isinstance(config, EMInfConfig):
            raise TypeError(f"config must be an EMInfConfig, got {type(config).__name__}")
        defaults = (config or cls.default_config).replace(**overrides)
        return type(cls.__name__, (cls,), {"default_config": defaults, "__module__": cls.__module__})

    def __init__(self, vllm_config, device_or_req_states, is_pin_memory: bool = False) -> None:
        if isinstance(device_or_req_states, LogitsProcRequestState):  # Model Runner V2
            num_slots = device_or_req_states.max_num_reqs
            self.device = torch.device(device_or_req_states.device)
        else:  # classic: the persistent batch's index is the slot
            num_slots = vllm_config.scheduler_config.max_num_seqs
            self.device = torch.device(device_or_req_states)
        self.slots = _SlotTable(num_slots)
        self.batch_size = 0
        self.workspace = EMInfWorkspace()
        # The entry point loads this class for every engine; `--logits-processors` / `LLM(logits_processors=)`
        # may load it (or a configured subclass) again. vLLM builds user classes after entry points, so the
        # newest instance for an engine config serves and the earlier ones stand down: EM-INF runs once.
        self.active = True
        self._engine_config = vllm_config  # keeps id(vllm_config) unique while this instance lives
        for other in _INSTANCES.get(id(vllm_config), ()):
            other.active = False
        _INSTANCES.setdefault(id(vllm_config), weakref.WeakSet()).add(self)

    # -- shared -------------------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        parse_request(sampling_params.extra_args, cls.default_config)

    def _settings(self, sampling_params) -> RequestSettings:
        return parse_request(sampling_params.extra_args, self.default_config)

    def _process(self, logits: torch.Tensor, rows: torch.Tensor | None, slots) -> torch.Tensor:
        """Apply each row's mode in place; ``rows`` (device) index ``logits``, ``slots`` (host) the table.

        ``rows`` None means all rows of ``logits``, in order.
        """
        params = self.slots.as_tensors(slots, logits.device)
        host_modes = self.slots.mode[slots]
        modes = torch.from_numpy(host_modes).to(logits.device, non_blocking=True)
        count = len(slots)
        for start in range(0, count, _MAX_ROWS_PER_CALL):
            part = slice(start, min(start + _MAX_ROWS_PER_CALL, count))
            row_idx = (
                torch.arange(part.start, part.stop, device=logits.device) if rows is None else rows[part]
            )
            chunk = logits.index_select(0, row_idx)
            mode = modes[part]
            out = minimize_entropy(
                chunk,
                steps=torch.where(mode == MODE_EM_INF, params["steps"][part], 0),
                lr=params["lr"][part],
                threshold=params["threshold"][part],
                kl_weight=params["kl_weight"][part],
                workspace=self.workspace,
            )
            if (host_modes[part] == MODE_ADAPTIVE).any():  # host array: no device sync
                out = self._adaptive_rows(out, mode, params, part)
            logits.index_copy_(0, row_idx, out.to(logits.dtype))
        return logits

    @staticmethod
    def _adaptive_rows(out, mode, params, part) -> torch.Tensor:
        pick = torch.nonzero(mode == MODE_ADAPTIVE).squeeze(1)
        alpha, delta = params["alpha"][part][pick], params["delta"][part][pick]
        scaled = adaptive_temperature(out.index_select(0, pick), alpha=alpha, delta=delta)
        return out.index_copy(0, pick, scaled)

    # -- classic interface ----------------------------------------------------------------------------
    def is_argmax_invariant(self) -> bool:
        """False: the processor must run before temperature, like any logit-changing processor."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.slots.clear(index)
        for index, params, _, _ in batch_update.added:  # may overwrite an occupied index
            settings = self._settings(params)
            if settings.mode == MODE_OFF:
                self.slots.clear(index)
            else:
                self.slots.set(index, settings)
        for src, dst, direction in batch_update.moved:
            self.slots.move(src, dst, swap=direction == MoveDirectionality.SWAP)
        self.batch_size = batch_update.batch_size

    # -- both: apply(logits) for classic, apply(logits, ctx) for V2 --------------------------------------
    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        if not self.active:
            return logits
        if ctx is None:
            on = np.flatnonzero(self.slots.mode[: logits.shape[0]])
            if on.size == 0:
                return logits
            if on.size == logits.shape[0]:
                return self._process(logits, None, on)
            return self._process(logits, torch.from_numpy(on).to(logits.device), on)
        # V2: rows are reordered every step and (under speculative decoding) a request may own several.
        if not self.slots.mode[ctx.idx_mapping_np].any():
            return logits
        if len(ctx.idx_mapping_np) == logits.shape[0]:  # one row per request: the host mapping suffices
            row_slots = ctx.idx_mapping_np
        else:  # speculative decoding: the row -> slot map is only on the device
            row_slots = ctx.expanded_idx_mapping.cpu().numpy()
        on = np.flatnonzero(self.slots.mode[row_slots])
        rows = None if on.size == logits.shape[0] else torch.from_numpy(on).to(logits.device)
        return self._process(logits, rows, row_slots[on])

    # -- Model Runner V2 interface --------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params) -> bool:
        settings = self._settings(sampling_params)
        if settings.mode == MODE_OFF:
            self.slots.clear(req_idx)  # neutralize the slot's previous occupant
            return False
        self.slots.set(req_idx, settings)
        return self.active

    def apply_staged_writes(self) -> None:
        """Nothing staged: the slot table lives on the host and rows' parameters are copied per step."""


def _is_vllm_config(obj) -> bool:
    return hasattr(obj, "scheduler_config") and hasattr(obj, "model_config")


def settings_dict(settings: RequestSettings) -> dict:
    """A plain-dict view of resolved settings (logging, tests)."""
    return {"mode": settings.mode, "em_inf": asdict(settings.em_inf), "adaptive": asdict(settings.adaptive)}
