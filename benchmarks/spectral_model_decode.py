"""Whole-model decode speed and cache memory: distilled SpectraLDS vs undistilled STU vs a Qwen2 transformer.

Three byte-level language models of (nearly) equal parameter count, all float32 on CPU, batch 1:

* ``distilled``: STU-only SpectraLDS with every STU layer distilled (``to_lds``, ``--state-dim`` poles, so
  ``2n`` states per channel), cache = a fixed ``(1, 2n, d)`` state per layer;
* ``stu``: the same model undistilled, cache = the last ``filter_len`` projected inputs per layer (decode is
  a dot product over ``filter_len`` lags);
* ``qwen2``: ``Qwen2ForCausalLM`` with ``DynamicCache`` (KV cache grows with the context; each step
  concatenates), and the same model with a preallocated ``StaticCache``; with ``--compile`` also
  ``torch.compile(distilled)`` (compiled during the warm-up steps, not timed).

For each context length the cache is brought to that many tokens and ``--new-tokens`` greedy tokens are
decoded one at a time (``model(token, cache=...)``); tokens/s is measured after two warm-up steps. Decode cost
does not depend on what the cache holds, so Qwen2's KV caches are filled with random keys/values (prefilling
64k tokens of attention on CPU would take longer than the whole benchmark), and the STU models are prefilled
with ``min(context, filter_len)`` real tokens: the STU's window and the LDS state have the same size (and
decode cost) at any longer context. Cache bytes are summed over the cache's tensors.

    OMP_NUM_THREADS=1 python benchmarks/spectral_model_decode.py > decode.json    # ~3-5 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from tqdm import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicCache, StaticCache

from emreason.spectral import SpectraLDSConfig, SpectraLDSForCausalLM, to_lds


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 65536])
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate-size", type=int, default=768)
    p.add_argument("--filter-len", type=int, default=8192)
    p.add_argument("--num-filters", type=int, default=24)
    p.add_argument("--state-dim", type=int, default=80, help="poles n; the distilled LDS has 2n states")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--compile", action="store_true", help="also time torch.compile(distilled) (~1 min compile)"
    )
    p.add_argument("--verbose", action="store_true")
    return p.parse_args()


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cache_bytes(cache) -> int:
    """Bytes held by the cache's tensors (keys/values, conv and recurrent states)."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
        for name in ("conv_states", "recurrent_states"):
            for t in (getattr(layer, name, None) or {}).values():
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def build_models(args) -> dict[str, torch.nn.Module]:
    vocab = 256
    cfg = SpectraLDSConfig(
        vocab_size=vocab,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        filter_len=args.filter_len,
        num_filters=args.num_filters,
        share_filter_projection=False,
        num_attention_heads=args.heads,
    )
    stu = SpectraLDSForCausalLM(cfg).eval()
    distilled = to_lds(stu, args.state_dim, refine_steps=0).eval()
    target = num_params(stu)
    d = args.hidden_size

    def qwen(intermediate: int) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=vocab,
            hidden_size=d,
            intermediate_size=intermediate,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.heads,
            max_position_embeddings=max(args.contexts) + args.new_tokens + 8,
            tie_word_embeddings=True,
        )

    # Attention layers hold 4d^2 (+ biases) vs the STU's d^2 + 2Kd, so equalise through the MLP width.
    base = num_params(Qwen2ForCausalLM(qwen(8)))
    per_unit = 3 * d * args.layers
    intermediate = max(8, 8 + round((target - base) / per_unit))
    qwen2 = Qwen2ForCausalLM(qwen(intermediate)).eval()
    return {"distilled": distilled, "stu": stu, "qwen2": qwen2}


@torch.no_grad()
def decode(model, cache, token: torch.Tensor, steps: int, position: int | None = None) -> float:
    """Tokens/s of ``steps`` greedy one-token steps after two warm-up steps (``position``: static cache)."""

    def step(tok, pos):
        kwargs = {"cache_position": torch.tensor([pos])} if position is not None else {}
        out = model(tok, cache=cache, use_cache=True, **kwargs)
        return out.logits[:, -1:].argmax(-1)

    pos = position or 0
    for _ in range(2):
        token, pos = step(token, pos), pos + 1
    start = time.perf_counter()
    for _ in range(steps):
        token, pos = step(token, pos), pos + 1
    return steps / (time.perf_counter() - start)


@torch.no_grad()
def spectral_cache(model, context: int, filter_len: int, gen: torch.Generator):
    ids = torch.randint(0, 256, (1, min(context, filter_len)), generator=gen)
    return model(ids, use_cache=True).cache


def qwen_dynamic_cache(model, context: int, gen: torch.Generator) -> DynamicCache:
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    cache = DynamicCache(config=cfg)
    for i in range(cfg.num_hidden_layers):
        shape = (1, cfg.num_key_value_heads, context, head_dim)
        cache.update(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), i)
    return cache


@torch.no_grad()
def qwen_static_cache(model, context: int, steps: int, gen: torch.Generator) -> StaticCache:
    cfg = model.config
    cache = StaticCache(config=cfg, max_cache_len=context + steps + 4)
    model(torch.zeros(1, 1, dtype=torch.long), cache=cache, use_cache=True, cache_position=torch.tensor([0]))
    for layer in cache.layers:  # positions < context hold random keys/values, later ones are masked
        layer.keys[:, :, :context].normal_(generator=gen)
        layer.values[:, :, :context].normal_(generator=gen)
    return cache


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not args.verbose:
        warnings.filterwarnings("ignore")
        import transformers

        transformers.logging.set_verbosity_error()
    start = time.time()
    torch.manual_seed(0)
    models = build_models(args)
    gen = torch.Generator().manual_seed(0)
    token = torch.tensor([[65]])
    names = ["distilled", "stu", "qwen2_dynamic", "qwen2_static"]
    if args.compile:
        models["distilled_compiled"] = torch.compile(models["distilled"])
        names.append("distilled_compiled")
    rows: dict[str, dict] = {name: {} for name in names}
    for context in tqdm(args.contexts, desc="contexts"):
        steps = args.new_tokens if context <= 8192 else max(8, args.new_tokens // 3)
        for name in [n for n in names if n.startswith(("distilled", "stu"))]:
            cache = spectral_cache(
                models["distilled" if name == "distilled_compiled" else name], context, args.filter_len, gen
            )
            rate = decode(models[name], cache, token, steps)
            rows[name][str(context)] = {
                "tokens_per_s": rate,
                "cache_bytes": cache_bytes(cache),
                "steps": steps,
            }
        cache = qwen_dynamic_cache(models["qwen2"], context, gen)
        rate = decode(models["qwen2"], cache, token, steps)
        rows["qwen2_dynamic"][str(context)] = {"tokens_per_s": rate, "cache_bytes": cache_bytes(cache)}
        rows["steps"] = rows.get("steps", {}) | {str(context): steps}
        del cache
        cache = qwen_static_cache(models["qwen2"], context, steps, gen)
        rate = decode(models["qwen2"], cache, token, steps, position=context)
        rows["qwen2_static"][str(context)] = {
            "tokens_per_s": rate,
            "cache_bytes": cache_bytes(cache),
            "steps": steps,
        }
        del cache
    ratios = {}
    for context in map(str, args.contexts):
        base = rows["distilled"][context]
        for other in [n for n in names if n != "distilled"]:
            ratios[f"distilled_speedup_vs_{other}_at_{context}"] = (
                base["tokens_per_s"] / rows[other][context]["tokens_per_s"]
            )
            ratios[f"{other}_cache_over_distilled_at_{context}"] = (
                rows[other][context]["cache_bytes"] / base["cache_bytes"]
            )
    result = {
        "torch_threads": args.threads,
        "device": "cpu",
        "dtype": "float32",
        "params": {name: num_params(m) for name, m in models.items() if name != "distilled_compiled"},
        "qwen2_intermediate_size": models["qwen2"].config.intermediate_size,
        "config": {k: v for k, v in vars(args).items() if k != "verbose"},
        "decode": rows,
        "ratios": ratios,
        "wall_seconds": time.time() - start,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
