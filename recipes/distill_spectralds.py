"""Distill a trained STU language model into its SpectraLDS form and compare the two.

Reports validation loss (nats/byte) of the STU model and of the distilled model on the same windows,
the maximum absolute logit difference, and the filter distillation error; saves the distilled
checkpoint and ``distill_metrics.json`` to ``--output-dir``.

    OMP_NUM_THREADS=1 python recipes/distill_spectralds.py --model-dir runs/stu_lm --state-dim 32 \
        --output-dir runs/stu_lm_lds
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from emreason.spectral import SpectraLDSForCausalLM, to_lds
from emreason.spectral.text_data import random_windows, stdlib_corpus


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--state-dim", type=int, default=32, help="positive poles n (the LDS has 2n states)")
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def compare(stu_model, lds_model, data: torch.Tensor, batches: int, batch_size: int, seed: int) -> dict:
    """Validation losses of both models on identical windows, and their largest logit difference."""
    seq_len = stu_model.config.filter_len
    gen = torch.Generator().manual_seed(seed)
    stu_losses, lds_losses, max_diff = [], [], 0.0
    with torch.no_grad():
        for _ in tqdm(range(batches), desc="evaluate"):
            x = random_windows(data, batch_size, seq_len, gen)
            a = stu_model(x, labels=x, use_cache=False)
            b = lds_model(x, labels=x, use_cache=False)
            stu_losses.append(float(a.loss))
            lds_losses.append(float(b.loss))
            max_diff = max(max_diff, float((a.logits - b.logits).abs().max()))
    return {
        "val_loss_stu": sum(stu_losses) / batches,
        "val_loss_lds": sum(lds_losses) / batches,
        "max_abs_logit_diff": max_diff,
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    stu_model = SpectraLDSForCausalLM.from_pretrained(args.model_dir).eval()
    start = time.time()
    lds_model = to_lds(stu_model, args.state_dim).eval()
    distill_seconds = time.time() - start
    _, val = stdlib_corpus()
    metrics = compare(stu_model, lds_model, val, args.eval_batches, args.batch_size, args.seed)
    err = lds_model.filter_lds_error
    metrics.update(
        state_dim=args.state_dim,
        lds_states_per_channel=2 * args.state_dim,
        filter_len=stu_model.config.filter_len,
        num_filters=stu_model.config.num_filters,
        filter_max_abs_error=err.max_abs,
        filter_mse=err.mse,
        max_output_coef=err.max_coef,
        distill_seconds=distill_seconds,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    lds_model.save_pretrained(args.output_dir)
    fd, tmp = tempfile.mkstemp(dir=args.output_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, args.output_dir / "distill_metrics.json")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
