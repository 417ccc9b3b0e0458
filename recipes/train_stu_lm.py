"""Train a small byte-level STU (or STU/attention hybrid) language model on the Python stdlib sources.

CPU scale: a few minutes with the defaults. Saves a transformers checkpoint (``save_pretrained``) and
``train_metrics.json`` to ``--output-dir``; distill it with ``recipes/distill_spectralds.py``.

    OMP_NUM_THREADS=1 python recipes/train_stu_lm.py --output-dir runs/stu_lm --steps 400
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from emreason.spectral import SpectraLDSConfig, SpectraLDSForCausalLM, recommended_num_filters
from emreason.spectral.text_data import random_windows, stdlib_corpus


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--seq-len", type=int, default=256, help="training length = filter length L")
    p.add_argument("--num-filters", type=int, default=None, help="K; default: resolvable filters at L")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hybrid", action="store_true", help="alternate STU and sliding-window attention")
    p.add_argument("--window", type=int, default=64, help="attention window of the hybrid")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def evaluate(model, data: torch.Tensor, batches: int, batch_size: int, seq_len: int, seed: int) -> float:
    """Mean next-byte loss (nats) over fixed random validation windows."""
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        losses = [
            float(model(x, labels=x, use_cache=False).loss)
            for x in (random_windows(data, batch_size, seq_len, gen) for _ in range(batches))
        ]
    return sum(losses) / len(losses)


def write_json_atomic(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, val = stdlib_corpus()
    num_filters = args.num_filters or recommended_num_filters(args.seq_len)
    layer_types = (
        ["linear_attention", "sliding_attention"] * args.layers
        if args.hybrid
        else ["linear_attention"] * args.layers
    )[: args.layers]
    config = SpectraLDSConfig(
        vocab_size=256,
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.layers,
        layer_types=layer_types,
        filter_len=args.seq_len,
        num_filters=num_filters,
        # An STU-only model with a shared filter projection is blind to odd lags (see emreason.spectral.stu).
        share_filter_projection=args.hybrid,
        sliding_window=args.window,
        num_attention_heads=max(1, args.hidden_size // 32),
    )
    model = SpectraLDSForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
        ),
    )
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    bar = tqdm(range(args.steps), desc="train STU LM")
    for _ in bar:
        model.train()
        x = random_windows(train, args.batch_size, args.seq_len, gen)
        loss = model(x, labels=x, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    val_loss = evaluate(model, val, args.eval_batches, args.batch_size, args.seq_len, seed=1234)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.output_dir)
    metrics = {
        "val_loss_nats_per_byte": val_loss,
        "train_seconds": time.time() - start,
        "steps": args.steps,
        "params": sum(p.numel() for p in model.parameters()),
        "layer_types": layer_types,
        "seq_len": args.seq_len,
        "num_filters": num_filters,
    }
    write_json_atomic(args.output_dir / "train_metrics.json", metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
