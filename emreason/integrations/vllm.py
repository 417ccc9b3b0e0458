"""EM-INF as a vLLM logits processor, for both of vLLM's runner interfaces (supported: vLLM 0.31 - 0.32).

One class implements the classic interface (``vllm.v1.sample.logits_processor.LogitsProcessor``: a
persistent batch kept in step by ``update_state(BatchUpdate)``) and Model Runner V2's
(``vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor``: request slots, ``add_request``,
``apply_staged_writes``, ``apply(logits, ctx)``). V2 rejects classic-only entry points at start-up, so
implementing both keeps the ``vllm.logits_processors`` entry point safe for every user.

It is off unless a request asks, with flat ``vllm_xargs`` keys (vLLM rejects nested dicts and turns JSON
``true`` into 1)::

    em_inf                     0 / 1         EM-INF on this request
    em_inf_steps               int 0..cap    defaults: the server's EMInfConfig (steps=3, lr=0.1,
    em_inf_lr                  > 0                      threshold=0.3, kl_weight=0.05)
    em_inf_threshold           >= 0 nats
    em_inf_kl_weight           >= 0
    adaptive_temperature       0 / 1         the paper's adaptive-temperature baseline instead
    adaptive_temperature_alpha (0, 1]        target fraction of the initial entropy (default 0.2)
    adaptive_temperature_delta >= 0 nats     entropy floor (default 1e-6)

Every number must be finite and at most float32's maximum (3.4e38), which is what the worker stores;
``cap`` is 100 unless the server sets ``EMREASON_EM_INF_MAX_STEPS`` (0-1000) at start-up. Invalid values
raise ``ValueError`` in ``validate_params`` at admission (HTTP 400 naming the key), as does any EM-INF
request to a classic-runner server with speculative decoding, where vLLM drops custom processors. In the
worker, nothing raises: a row that somehow holds invalid settings is left unadjusted and logged once.

Per decode step the processor reads nothing back from the device under Model Runner V2, and at most two
flags on the classic runner (to stop adaptive-temperature bisection early): rows are chosen on the host
(the classic batch index, V2's ``idx_mapping_np``), every row runs its step count with masks instead of
per-step early-exit checks, and under V2 speculative decoding per-row settings are gathered on the
device. V2 rows that are prefill chunks (their token is discarded) are skipped. Its workspace is
allocated at start-up (``EMREASON_EM_INF_RESERVE=0``: on first use). The processor is not
argmax-invariant, so vLLM runs it before temperature, top-p and top-k; penalties (repetition, frequency,
presence) come after it on the classic runner and before it on Model Runner V2 (vLLM fixes both orders).

Usage: ``LLM(model, logits_processors=[EMInfLogitsProcessor])``, or with other server-wide defaults
``LLM(model, logits_processors=[EMInfLogitsProcessor(steps=10, threshold=0.1)])``;
``--logits-processors emreason.integrations.vllm:EMInfLogitsProcessor`` on the command line; or nothing
at all, through the ``em_inf`` entry point once emreason is installed.
"""

from __future__ import annotations

import logging
import math
import os
import sys
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

__all__ = [
    "EMInfLogitsProcessor",
    "RequestSettings",
    "parse_request",
    "max_steps_cap",
    "SUPPORTED_VLLM",
    "DEFAULT_MAX_STEPS",
    "MAX_STEPS_ENV",
    "RESERVE_ENV",
]

SUPPORTED_VLLM = ">=0.31,<0.33"

MODE_OFF, MODE_EM_INF, MODE_ADAPTIVE = 0, 1, 2
_EM_INF_KEYS = ("em_inf_steps", "em_inf_lr", "em_inf_threshold", "em_inf_kl_weight")
_ADAPTIVE_KEYS = ("adaptive_temperature_alpha", "adaptive_temperature_delta")
_KNOWN_KEYS = {"em_inf", "adaptive_temperature", *_EM_INF_KEYS, *_ADAPTIVE_KEYS}
# Rows per core call: bounds the working set to seven [rows, V] float32 buffers (the core's five plus the
# gathered rows and the result; 64 rows x 151,936 vocabulary: 272 MB).
_MAX_ROWS_PER_CALL = 64
_WORKING_BUFFERS = EMInfWorkspace._COUNT + 2
DEFAULT_MAX_STEPS = 100
MAX_STEPS_LIMIT = 1000
MAX_STEPS_ENV = "EMREASON_EM_INF_MAX_STEPS"
RESERVE_ENV = "EMREASON_EM_INF_RESERVE"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Device-to-host reads allowed per decode step. Model Runner V2 is built to avoid them (host-side index
# arrays), so none there; the classic runner spends up to two on stopping adaptive-temperature bisection
# early (most rows converge within 8 of its 33 fixed iterations). EM-INF rows never read back.
SYNC_BUDGET = {"classic": 2, "v2": 0}
logger = logging.getLogger(__name__)
_warned: set[str] = set()
# id(vllm_config) -> the processor instances built for that engine (see EMInfLogitsProcessor.__init__).
_INSTANCES: dict[int, weakref.WeakSet] = {}


@dataclass(frozen=True)
class RequestSettings:
    """What one request asked for: ``mode`` is 0 (off), 1 (EM-INF) or 2 (adaptive temperature)."""

    mode: int
    em_inf: EMInfConfig
    adaptive: AdaptiveTemperatureConfig


def max_steps_cap() -> int:
    """The server-wide bound on ``em_inf_steps``: ``EMREASON_EM_INF_MAX_STEPS`` (an integer 0-1000) or 100.

    Raises ValueError naming the variable when it is set to anything else (checked when the processor is
    built, so a bad value stops the server at start-up).
    """
    raw = os.environ.get(MAX_STEPS_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_STEPS
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_STEPS_LIMIT:
        raise ValueError(f"{MAX_STEPS_ENV} must be an integer from 0 to {MAX_STEPS_LIMIT}, got {raw!r}")
    return int(text)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _number(extra: Mapping[str, Any], key: str) -> float:
    """A finite request number within the float32 range (what the worker stores), as a float."""
    value = extra[key]
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {extra[key]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a finite number, got {extra[key]!r}")
    try:
        value = float(value)  # an int beyond float64 raises OverflowError
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise ValueError(f"{key} must be a finite number within the float32 range, got {extra[key]!r}")
    return value


def _steps(extra: Mapping[str, Any], key: str, cap: int) -> int:
    """``em_inf_steps`` as an int in ``[0, cap]``; checked before any conversion that could overflow."""
    value = extra[key]
    if isinstance(value, int) and not isinstance(value, bool):
        steps = value
    else:
        number = _number(extra, key)
        if not number.is_integer():
            raise ValueError(f"{key} must be an integer, got {extra[key]!r}")
        steps = int(number)
    if not 0 <= steps <= cap:
        raise ValueError(f"{key} must be an integer from 0 to {cap} (this server's maximum), got {value!r}")
    return steps


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
    extra_args: Mapping[str, Any] | None, defaults: EMInfConfig | None = None, max_steps: int | None = None
) -> RequestSettings:
    """Validate a request's ``vllm_xargs`` (``SamplingParams.extra_args``) and resolve its settings.

    Raises ValueError naming the offending key for: an unknown ``em_inf*`` / ``adaptive_temperature*`` key,
    a non-numeric, non-finite or out-of-range value (numbers beyond float32, ``em_inf_steps`` above
    ``max_steps``, default `max_steps_cap`), a parameter without its switch, or both switches at once.
    Keys of other extensions are ignored.
    """
    defaults = defaults or EMInfConfig()
    cap = max_steps_cap() if max_steps is None else max_steps
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
        overrides["steps"] = _steps(extra, "em_inf_steps", cap)
    for key in ("lr", "threshold", "kl_weight"):
        if f"em_inf_{key}" in extra:
            overrides[key] = _number(extra, f"em_inf_{key}")
    for field, value in overrides.items():  # one at a time, so the error names the request's key
        try:
            defaults.replace(**{field: value})
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid em_inf_{field}={extra[f'em_inf_{field}']!r}: {error}") from None
    em_inf = defaults.replace(**overrides)
    if use_em_inf:
        _check_storable(em_inf, cap)

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


def _check_storable(config: EMInfConfig, cap: int) -> None:
    """The resolved settings (server defaults included) fit the worker's slot table and step bound."""
    if config.steps > cap:
        raise ValueError(f"em_inf_steps must be at most {cap} (this server's maximum), got {config.steps}")
    for name in ("lr", "threshold", "kl_weight"):
        if getattr(config, name) > _FLOAT32_MAX:
            raise ValueError(f"em_inf_{name} must be within the float32 range, got {getattr(config, name)!r}")


def _admission_engine_config():
    """The engine config of the vLLM ``InputProcessor`` whose admission check is calling us, or None.

    vLLM's ``validate_params`` hook receives only the request, but whether EM-INF can run at all depends
    on the engine (custom processors are dropped under speculative decoding on the classic runner). Both
    of vLLM's admission paths call the hook from ``InputProcessor._validate_params`` a few frames up.
    """
    try:
        from vllm.v1.engine.input_processor import InputProcessor
    except ImportError:  # pragma: no cover - other vLLM layouts
        return None
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, InputProcessor):
            return getattr(owner, "vllm_config", None)
        frame = frame.f_back
    return None


def _spec_decode_drops_processors(vllm_config) -> bool:
    """Speculative decoding on the classic runner: vLLM builds no custom logits processor at all."""
    if vllm_config is None or getattr(vllm_config, "speculative_config", None) is None:
        return False
    return not getattr(vllm_config, "use_v2_model_runner", False)


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
        _check_storable(defaults, max_steps_cap())
        return type(cls.__name__, (cls,), {"default_config": defaults, "__module__": cls.__module__})

    def __init__(self, vllm_config, device_or_req_states, is_pin_memory: bool = False) -> None:
        self.max_steps = max_steps_cap()  # a bad EMREASON_EM_INF_MAX_STEPS stops the engine at start-up
        speculative = getattr(vllm_config, "speculative_config", None)
        if isinstance(device_or_req_states, LogitsProcRequestState):  # Model Runner V2
            self.req_states = device_or_req_states
            num_slots = device_or_req_states.max_num_reqs
            self.device = torch.device(device_or_req_states.device)
            vocab = device_or_req_states.vocab_size
            rows = num_slots * (1 + (getattr(speculative, "num_speculative_tokens", 0) or 0))
        else:  # classic: the persistent batch's index is the slot
            self.req_states = None
            num_slots = vllm_config.scheduler_config.max_num_seqs
            self.device = torch.device(device_or_req_states)
            model_config = getattr(vllm_config, "model_config", None)
            vocab = model_config.get_vocab_size() if hasattr(model_config, "get_vocab_size") else None
            rows = num_slots
        self.slots = _SlotTable(num_slots)
        self.batch_size = 0
        self._sync_budget = 0
        self.workspace = EMInfWorkspace()
        self._staging: torch.Tensor | None = None
        self.reserved_bytes = 0
        # The entry point loads this class for every engine; `--logits-processors` / `LLM(logits_processors=)`
        # may load it (or a configured subclass) again. vLLM builds user classes after entry points, so the
        # newest instance for an engine config serves and the earlier ones stand down: EM-INF runs once.
        self.active = True
        self._engine_config = vllm_config  # keeps id(vllm_config) unique while this instance lives
        for other in _INSTANCES.get(id(vllm_config), ()):
            other.active = False
            other._release()
        _INSTANCES.setdefault(id(vllm_config), weakref.WeakSet()).add(self)
        if vocab and os.environ.get(RESERVE_ENV, "1").strip() != "0":  # after the others released theirs
            self._reserve(min(rows, _MAX_ROWS_PER_CALL), int(vocab))

    def _reserve(self, rows: int, vocab: int) -> None:
        """Allocate the whole working set now, so vLLM's start-up memory profile counts it."""
        shape = torch.Size((rows, vocab))
        self.workspace.buffers(shape, torch.float32, self.device)
        self._buffers(rows, vocab)
        self.reserved_bytes = _WORKING_BUFFERS * rows * vocab * 4

    def _release(self) -> None:
        self.workspace = EMInfWorkspace()
        self._staging = None
        self.reserved_bytes = 0

    def _buffers(self, rows: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[rows, V]`` float32 views for the gathered rows and the result (grown on demand)."""
        staging = self._staging
        if staging is None or staging.shape[1] < rows or staging.shape[2] != vocab:
            staging = self._staging = torch.empty((2, rows, vocab), dtype=torch.float32, device=self.device)
        return staging[0, :rows], staging[1, :rows]

    # -- shared -------------------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params) -> None:
        settings = parse_request(sampling_params.extra_args, cls.default_config)
        if settings.mode != MODE_OFF and _spec_decode_drops_processors(_admission_engine_config()):
            key = "em_inf" if settings.mode == MODE_EM_INF else "adaptive_temperature"
            raise ValueError(
                f"{key}=1 is not available on this server: it runs speculative decoding on vLLM's classic "
                "model runner, which drops custom logits processors (use Model Runner V2, or serve "
                "without speculative decoding)"
            )

    def _settings(self, sampling_params) -> RequestSettings | None:
        """The request's settings, or None (row left unadjusted, logged once) if they are invalid.

        Admission has already validated them; this is defence in depth, since raising here would stop the
        engine for every request.
        """
        try:
            return parse_request(sampling_params.extra_args, self.default_config, self.max_steps)
        except (TypeError, ValueError) as error:
            _warn_once(
                f"EM-INF: a request with invalid settings reached the worker; left unadjusted: {error}"
            )
            return None

    def _store(self, slot: int, sampling_params) -> bool:
        settings = self._settings(sampling_params)
        if settings is None or settings.mode == MODE_OFF:
            self.slots.clear(slot)  # also neutralizes the slot's previous occupant
            return False
        self.slots.set(slot, settings)
        return True

    def _process_rows(self, logits: torch.Tensor, rows: np.ndarray, slots: np.ndarray) -> None:
        """Apply each row's mode in place; ``rows`` index ``logits`` and ``slots`` the table (host arrays).

        EM-INF rows are grouped by step count so each core call runs exactly its rows' steps with no
        per-step device read; adaptive rows run a fixed number of bisection iterations, stopping early at
        the checks allowed by the runner's per-step sync budget (`SYNC_BUDGET`), shared among their calls.
        """
        modes = self.slots.mode[slots]
        em = modes == MODE_EM_INF
        steps = self.slots.steps[slots]
        for value in np.unique(steps[em]):
            pick = np.flatnonzero(em & (steps == value))
            self._run_chunks(logits, rows[pick], slots[pick], int(value))
        pick = np.flatnonzero(modes == MODE_ADAPTIVE)
        if pick.size:
            calls = -(-pick.size // _MAX_ROWS_PER_CALL)
            self._run_chunks(logits, rows[pick], slots[pick], None, exit_checks=self._sync_budget // calls)

    def _run_chunks(
        self, logits: torch.Tensor, rows: np.ndarray, slots: np.ndarray, steps: int | None, exit_checks=0
    ) -> None:
        table, device = self.slots, logits.device
        for start in range(0, rows.size, _MAX_ROWS_PER_CALL):
            part_rows = rows[start : start + _MAX_ROWS_PER_CALL]
            part = slots[start : start + _MAX_ROWS_PER_CALL]
            count = part_rows.size
            gathered, result = self._buffers(count, logits.shape[1])
            contiguous = part_rows[-1] - part_rows[0] == count - 1  # sorted host indices
            if contiguous:
                chunk = logits[int(part_rows[0]) : int(part_rows[0]) + count]
            else:
                index = torch.from_numpy(part_rows).to(device, non_blocking=True)
                # Into the reserved buffer when the dtypes match (vLLM hands processors float32 logits).
                same = logits.dtype == gathered.dtype
                chunk = torch.index_select(logits, 0, index, out=gathered) if same else logits[index]

            def column(array: np.ndarray, part=part) -> torch.Tensor:
                return torch.from_numpy(array[part]).to(device, non_blocking=True)

            if steps is not None:
                out = self._em_inf(chunk, steps, column(table.lr), column(table.threshold),
                                   column(table.kl_weight), result)  # fmt: skip
            else:
                out = adaptive_temperature(
                    chunk, alpha=column(table.alpha), delta=column(table.delta), early_exit=False,
                    invalid_params="skip", exit_checks=exit_checks,
                )  # fmt: skip
            if contiguous:
                chunk.copy_(out)
            else:
                logits.index_copy_(0, index, out)

    def _em_inf(self, chunk, steps, lr, threshold, kl_weight, out) -> torch.Tensor:
        return minimize_entropy(
            chunk, steps=steps, lr=lr, threshold=threshold, kl_weight=kl_weight, workspace=self.workspace,
            max_steps=self.max_steps, early_exit=False, invalid_params="skip", out=out,
        )  # fmt: skip

    def _process_expanded(self, logits: torch.Tensor, ctx: LogitsContext, wanted: np.ndarray) -> None:
        """V2 with several rows per request: per-row settings gathered on the device, all rows processed.

        ``wanted`` ([num_reqs] bool, host) marks the requests to adjust this step; the others get zero
        steps / no temperature search and come back unchanged.
        """
        table, device = self.slots, logits.device
        req_slots = ctx.idx_mapping_np[wanted]
        modes = table.mode[req_slots]
        steps = np.zeros(table.mode.size, dtype=np.float32)
        steps[req_slots] = np.where(modes == MODE_EM_INF, table.steps[req_slots], 0)
        adaptive = np.zeros(table.mode.size, dtype=bool)
        adaptive[req_slots] = modes == MODE_ADAPTIVE
        run_steps = int(steps.max())
        per_slot = np.stack([steps, table.lr, table.threshold, table.kl_weight, table.alpha,
                             np.where(adaptive, table.delta, _FLOAT32_MAX).astype(np.float32)])  # fmt: skip
        on_device = torch.from_numpy(per_slot).to(device, non_blocking=True)
        per_row = on_device.index_select(1, ctx.expanded_idx_mapping.to(device=device, dtype=torch.long))
        any_adaptive = bool(adaptive.any())  # host array
        for start in range(0, logits.shape[0], _MAX_ROWS_PER_CALL):
            stop = min(start + _MAX_ROWS_PER_CALL, logits.shape[0])
            chunk = logits[start:stop]
            p = per_row[:, start:stop]
            out = chunk
            if run_steps:
                _, result = self._buffers(stop - start, logits.shape[1])
                out = minimize_entropy(
                    chunk, steps=p[0], lr=p[1], threshold=p[2], kl_weight=p[3], workspace=self.workspace,
                    max_steps=run_steps, early_exit=False, invalid_params="skip", out=result,
                )  # fmt: skip
            if any_adaptive:
                # A delta of float32's maximum leaves a row's temperature at exactly 1.
                alpha = torch.where(p[5] < _FLOAT32_MAX, p[4], 1.0)
                out = adaptive_temperature(
                    out, alpha=alpha, delta=p[5], early_exit=False, invalid_params="skip"
                )
            if out is not chunk:
                chunk.copy_(out)

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
            self._store(index, params)
        for src, dst, direction in batch_update.moved:
            self.slots.move(src, dst, swap=direction == MoveDirectionality.SWAP)
        self.batch_size = batch_update.batch_size

    # -- both: apply(logits) for classic, apply(logits, ctx) for V2 --------------------------------------
    def apply(self, logits: torch.Tensor, ctx: LogitsContext | None = None) -> torch.Tensor:
        """Adjust the rows that asked, in place; never raises (an error leaves rows unadjusted, logged)."""
        if not self.active:
            return logits
        try:
            if ctx is None:  # classic: row i is batch index i
                self._sync_budget = SYNC_BUDGET["classic"]
                rows = np.flatnonzero(self.slots.mode[: logits.shape[0]])
                if rows.size:
                    self._process_rows(logits, rows, rows)
                return logits
            self._sync_budget = SYNC_BUDGET["v2"]
            # V2: rows are reordered every step; skip requests whose row is a prefill chunk (vLLM discards
            # its token), known on the host from the visible length bound and the prefill length.
            slots = ctx.idx_mapping_np
            wanted = self.slots.mode[slots] != MODE_OFF
            prefill_len = getattr(getattr(self.req_states, "prefill_len", None), "np", None)
            if prefill_len is not None:
                wanted &= ctx.seq_lens_upper_bound_np >= prefill_len[slots]
            if not wanted.any():
                return logits
            if len(slots) == logits.shape[0]:  # one row per request: the host mapping suffices
                rows = np.flatnonzero(wanted)
                self._process_rows(logits, rows, slots[rows])
            else:  # speculative decoding: the row -> slot map is only on the device
                self._process_expanded(logits, ctx, wanted)
        except Exception as error:  # noqa: BLE001 - an exception here would stop the engine for everyone
            _warn_once(f"EM-INF failed in apply() and left this step's rows unadjusted: {error!r}")
            logger.debug("EM-INF apply() failure", exc_info=True)
        return logits

    # -- Model Runner V2 interface --------------------------------------------------------------------
    def add_request(self, req_idx: int, sampling_params) -> bool:
        return self._store(req_idx, sampling_params) and self.active

    def apply_staged_writes(self) -> None:
        """Nothing staged: the slot table lives on the host and rows' parameters are copied per step."""


def _is_vllm_config(obj) -> bool:
    return hasattr(obj, "scheduler_config") and hasattr(obj, "model_config")


def settings_dict(settings: RequestSettings) -> dict:
    """A plain-dict view of resolved settings (logging, tests)."""
    return {"mode": settings.mode, "em_inf": asdict(settings.em_inf), "adaptive": asdict(settings.adaptive)}
