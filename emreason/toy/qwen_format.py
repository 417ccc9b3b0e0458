"""A Qwen2.5-format fixture: the toy model's skills behind a Qwen2.5-Instruct-shaped interface.

What real users load is a byte-level BPE tokenizer with ChatML special tokens, Qwen2.5's chat template
(default system prompt), a generation config with ``<|im_end|>`` as EOS and ``repetition_penalty=1.05``,
and an LM head with **151,936** rows, most of which no token maps to. The toy checkpoint has none of that;
this fixture has all of it, built locally in well under a minute with no hub access:

1. a byte-level BPE (``tokenizers``) trained on chat-formatted toy problems, with Qwen2's pre-tokenizer
   regex and NFC normalizer (``transformers``' ``Qwen2Tokenizer`` rebuilds exactly this pipeline), then
   ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` appended after the learned tokens (as in Qwen);
2. a Qwen2 with the toy's transformer weights (same sizes), its embeddings (tied to the head) mapped
   from the toy's characters, and the vocabulary padded to 151,936;
3. a brief fine-tune on chat-formatted toy data (default system prompt or Qwen2.5-Math's
   step-by-step/``\\boxed{}`` one), computing logits only over the real tokens' rows of the head;
4. padded rows set to ``-c * mean direction`` of the final hidden states (Qwen2 heads have no bias),
   with ``c`` chosen so every padded logit sits >= 30 nats below the top logit on held-out positions:
   padded ids are never sampled, yet every step still has 151,936 logits.

    >>> from emreason import toy
    >>> path = toy.qwen_format_path()        # builds into the cache on first use
    >>> tokenizer = AutoTokenizer.from_pretrained(path); model = AutoModelForCausalLM.from_pretrained(path)

The cache is ``$EMREASON_QWEN_FIXTURE_DIR`` if set, else ``$EMREASON_CACHE/qwen_format-v1`` (default
``~/.cache/emreason``). Building is locked (concurrent callers wait) and atomic (a half-built directory
is never visible).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from emreason.toy.pretrain import collate_right_padded

__all__ = [
    "VOCAB_SIZE",
    "FIXTURE_VERSION",
    "QWEN_DEFAULT_SYSTEM",
    "QWEN_MATH_SYSTEM",
    "CHAT_TEMPLATE",
    "qwen_format_path",
    "build_qwen_format",
]

VOCAB_SIZE = 151_936  # Qwen2.5's padded vocabulary (the LM head's rows)
FIXTURE_VERSION = "v1"
BPE_VOCAB_SIZE = 512  # learned tokens (256 byte symbols + merges) before the three special tokens
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# Qwen2's pre-tokenizer pattern (as in transformers' Qwen2Tokenizer): digits are single tokens.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2.5-Instruct's chat template without the tool-calling branches: a system turn first (the default
# one when the conversation has none), ChatML turns, and the assistant header as generation prompt.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_PAD_MARGIN = 30.0  # nats between the top logit and every padded logit on held-out positions
_FINE_TUNE_STEPS = 120
_BATCH_SIZE = 16
_LR = 1e-3


def _cache_dir() -> Path:
    explicit = os.environ.get("EMREASON_QWEN_FIXTURE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    root = Path(os.environ.get("EMREASON_CACHE", Path.home() / ".cache" / "emreason")).expanduser()
    return root / f"qwen_format-{FIXTURE_VERSION}"


def qwen_format_path(*, rebuild: bool = False, verbose: bool = False) -> Path:
    """Directory of the Qwen2.5-format fixture, built (about 30-60 s on 2 CPU cores) on first use.

    Args:
        rebuild: build again even if a cached copy exists.
        verbose: show the fine-tune progress bar.

    Returns:
        A directory ``AutoTokenizer``/``AutoModelForCausalLM``/vLLM load with ``from_pretrained(path)``.
    """
    target = _cache_dir()
    if (target / "fixture_meta.json").is_file() and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if (target / "fixture_meta.json").is_file() and not rebuild:
            return target  # another process built it while we waited
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.building."))
        try:
            build_qwen_format(staging, verbose=verbose)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _conversation(problem, system: str | None, completion: str | None = None) -> list[dict[str, str]]:
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": problem.prompt})
    if completion is not None:
        messages.append({"role": "assistant", "content": completion})
    return messages


def _render(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """`CHAT_TEMPLATE` in plain Python (used before a tokenizer exists, to train the BPE)."""
    text = ""
    if messages[0]["role"] != "system":
        text += f"{IM_START}system\n{QWEN_DEFAULT_SYSTEM}{IM_END}\n"
    for message in messages:
        text += f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n"
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def train_tokenizer(corpus: list[str]):
    """A ``Qwen2Tokenizer`` whose BPE is trained on ``corpus`` (special tokens appended after it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is unknown
        special_tokens=[],
        show_progress=False,
    )
    # Special tokens are not BPE text: train on the pieces between them.
    pieces = []
    for text in corpus:
        for chunk in text.replace(IM_START, "\x00").replace(IM_END, "\x00").split("\x00"):
            if chunk:
                pieces.append(chunk)
    core.train_from_iterator(pieces, trainer=trainer)
    state = json.loads(core.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    vocab = dict(state["vocab"])
    for token in (ENDOFTEXT, IM_START, IM_END):  # Qwen's order, right after the learned tokens
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        padding_side="left",
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (ENDOFTEXT, IM_START, IM_END)]
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_START]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    return tokenizer


def _examples(problems, rng: random.Random, corruption_rate: float) -> list[tuple[list[dict], str]]:
    """(prompt messages, completion) pairs: half with the default system prompt, half with the
    Qwen2.5-Math one."""
    out = []
    for i, problem in enumerate(problems):
        system = None if i % 2 == 0 else QWEN_MATH_SYSTEM
        out.append((_conversation(problem, system), problem.solution(rng, corruption_rate)))
    return out


def _encode(tokenizer, messages, completion) -> tuple[list[int], int]:
    prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion + IM_END, add_special_tokens=False)["input_ids"]
    return prefix_ids + completion_ids, len(prefix_ids)


def _batch(tokenizer, examples):
    encoded = [_encode(tokenizer, m, c) for m, c in examples]
    return collate_right_padded(encoded, tokenizer.pad_token_id)


def _initial_embeddings(tokenizer, toy_tokenizer, toy_embeddings: torch.Tensor, rows: int) -> torch.Tensor:
    """``[rows, D]`` embeddings: each new token starts as the toy's embedding of its last character (the
    toy is character-level), special tokens as the toy's special tokens; other rows are zero for now."""
    weight = torch.zeros(rows, toy_embeddings.shape[1])
    toy_vocab = toy_tokenizer.get_vocab()
    unknown = toy_embeddings[toy_tokenizer.unk_token_id]
    for token, index in tokenizer.get_vocab().items():
        if token in (ENDOFTEXT, IM_START, IM_END):
            weight[index] = toy_embeddings[toy_vocab[token]]
            continue
        text = tokenizer.convert_tokens_to_string([token])
        last = toy_tokenizer(text[-1:], add_special_tokens=False)["input_ids"] if text else []
        weight[index] = toy_embeddings[last[-1]] if last else unknown
    return weight


def build_qwen_format(
    output_dir: str | Path, *, seed: int = 0, steps: int | None = None, verbose: bool = False
) -> Path:
    """Build the fixture into ``output_dir`` (see the module docstring); returns the directory.

    ``steps``: fine-tune steps (default `_FINE_TUNE_STEPS`).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from emreason.toy import iter_problems, make_problems, model_path
    from emreason.toy.tokenizer import build_tokenizer as build_toy_tokenizer

    steps = _FINE_TUNE_STEPS if steps is None else steps
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    started = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    train = iter_problems("train", seed=seed + 11)

    corpus_problems = [next(train) for _ in range(2000)]
    corpus = [
        _render(_conversation(p, s, p.solution(rng, 0.25)))
        for p in corpus_problems
        for s in (None, QWEN_MATH_SYSTEM)
    ]
    tokenizer = train_tokenizer(corpus)
    real_rows = len(tokenizer)

    toy = AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32)
    toy_tokenizer = build_toy_tokenizer()
    c = toy.config

    def qwen2(vocab_size: int) -> Qwen2ForCausalLM:
        return Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=vocab_size,
                hidden_size=c.hidden_size,
                intermediate_size=c.intermediate_size,
                num_hidden_layers=c.num_hidden_layers,
                num_attention_heads=c.num_attention_heads,
                num_key_value_heads=c.num_key_value_heads,
                head_dim=c.head_dim,
                max_position_embeddings=2048,
                tie_word_embeddings=True,
                rope_theta=c.rope_parameters["rope_theta"],
                rms_norm_eps=c.rms_norm_eps,
                bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
                eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                pad_token_id=tokenizer.pad_token_id,
                torch_dtype="float32",
            )
        )

    # Fine-tune a copy whose head has only the real tokens' rows (a 151,936-row head would make every
    # step's logits ~300x larger than needed); the padded rows are added afterwards.
    small = qwen2(real_rows)
    body = {k: v for k, v in toy.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    loaded = small.load_state_dict(body, strict=False)
    if loaded.unexpected_keys:
        raise RuntimeError(f"toy weights do not fit the fixture's Qwen2: {loaded.unexpected_keys}")
    with torch.no_grad():
        small.get_input_embeddings().weight.copy_(
            _initial_embeddings(tokenizer, toy_tokenizer, toy.get_input_embeddings().weight, real_rows)
        )
    del toy
    log = _fine_tune(small, tokenizer, train, rng, steps, verbose)

    model = qwen2(VOCAB_SIZE)
    state = small.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            source = state[name]
            tensor[: source.shape[0]].copy_(source)  # the embedding's first rows; every other tensor whole
    model.eval()
    config = model.config

    pad_info = _set_padded_rows(model, tokenizer, real_rows, rng)
    model.generation_config = GenerationConfig(  # Qwen2.5-Instruct's, with its ids
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.05,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    accuracy = _greedy_accuracy(model, tokenizer, make_problems("heldout", 64, seed=seed + 5))
    meta = {
        "builder": "emreason.toy.qwen_format.build_qwen_format",
        "version": FIXTURE_VERSION,
        "seed": seed,
        "vocab_size": VOCAB_SIZE,
        "tokenizer_tokens": real_rows,
        "fine_tune_steps": steps,
        "batch_size": _BATCH_SIZE,
        "loss_log": log,
        "padded_rows": pad_info,
        "heldout_greedy_accuracy_64": accuracy,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "fixture_meta.json").write_text(json.dumps(meta, indent=2))
    return out


def _fine_tune(model, tokenizer, train, rng: random.Random, steps: int, verbose: bool) -> list[dict]:
    """AdamW with warm-up and cosine decay on chat-formatted toy examples; returns the loss log."""
    from tqdm.auto import tqdm

    optimizer = torch.optim.AdamW(model.parameters(), lr=_LR, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    log = []
    bar = tqdm(range(steps), desc="qwen-format fine-tune", disable=not verbose, mininterval=2)
    for step in bar:
        for group in optimizer.param_groups:
            warm = min(1.0, (step + 1) / 10)
            group["lr"] = _LR * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        examples = _examples([next(train) for _ in range(_BATCH_SIZE)], rng, 0.25)
        input_ids, attention_mask, labels = _batch(tokenizer, examples)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 10 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return log


@torch.no_grad()
def _final_hidden(model, tokenizer, problems) -> torch.Tensor:
    """``[N, D]`` final hidden states at the real positions of chat-formatted held-out examples."""
    rng = random.Random(1)
    input_ids, attention_mask, _ = _batch(tokenizer, _examples(problems, rng, 0.0))
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden[attention_mask.bool()]


@torch.no_grad()
def _set_padded_rows(model, tokenizer, real_rows: int, rng: random.Random) -> dict:
    """Padded rows: ``-c * u`` (``u`` the unit mean hidden direction) plus a little noise, so padded
    logits are a varied tail far below the real ones."""
    from emreason.toy import make_problems

    hidden = _final_hidden(model, tokenizer, make_problems("heldout", 48, seed=7))
    weight = model.get_input_embeddings().weight
    direction = hidden.mean(0)
    direction /= direction.norm()
    projection = hidden @ direction  # [N]
    if not bool((projection > 0).all()):
        raise RuntimeError("final hidden states share no common direction; cannot mask padded rows")
    top = (hidden @ weight[:real_rows].T).amax(-1)  # [N]
    # Noise of std 1 in logit units (hidden norms ~ sqrt(D)): keeps the tail from being one flat value.
    noise_scale = 1.0 / hidden.norm(dim=-1).mean()
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    noise = torch.randn(weight.shape[0] - real_rows, weight.shape[1], generator=generator) * noise_scale
    # Choose c so that max padded logit <= top - margin at every held-out position, with noise (6 sigma).
    c = float(((top + _PAD_MARGIN + 6.0) / projection).max())
    weight[real_rows:] = -c * direction + noise
    padded = hidden @ weight[real_rows:].T
    gap = (top - padded.amax(-1)).min().item()
    return {"scale": round(c, 3), "min_gap_to_top_logit_nats": round(gap, 2)}


@torch.no_grad()
def _greedy_accuracy(model, tokenizer, problems) -> dict[str, float]:
    """Held-out greedy accuracy under the Qwen2.5-Math system prompt, without and with the penalty."""
    from emreason.toy import grade

    texts = [
        tokenizer.apply_chat_template(
            _conversation(p, QWEN_MATH_SYSTEM), tokenize=False, add_generation_prompt=True
        )
        for p in problems
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    result = {}
    for penalty in (1.0, 1.05):
        out = model.generate(
            **batch,
            max_new_tokens=48,
            do_sample=False,
            repetition_penalty=penalty,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        correct = sum(grade(c, p.answer) for c, p in zip(completions, problems))
        result[f"repetition_penalty_{penalty}"] = correct / len(problems)
    return result
