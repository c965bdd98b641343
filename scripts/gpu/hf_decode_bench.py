#!/usr/bin/env python3
"""Decode tokens/s of PyTorch transformers' Qwen2_5_VLForConditionalGeneration on a model directory.

The counterpart of engine/benches/decode.rs for scripts/gpu/bench-3b.sh: the same text-only chat
prompt ("Please describe the image in detail.", rendered by the Qwen2.5-VL chat template), the same
batch of identical prompts, greedy `model.generate` with min_new_tokens = max_new_tokens (no early
stop), timed with torch.cuda.synchronize() around each call, after a warm-up generate per batch.

Two numbers per batch size:
  decode tokens/s    batch * (N - 1) / (t(N new tokens) - t(1 new token)): the prefill and the first
                     token taken out, comparable to decode.rs's per-step decode
  generate tokens/s  batch * N / t(N new tokens): the whole generate call, prefill included

  python3 scripts/gpu/hf_decode_bench.py --model /tmp/caprl-3b --device cuda:0 --dtype bf16 \\
      --batches 1,8,32 --new-tokens 64 --json out.json
  python3 scripts/gpu/hf_decode_bench.py --model tests/fixtures/models/tiny-qwen25vl-a --device cpu \\
      --dtype f32 --batches 1,2 --new-tokens 8           # a CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# What PromptBuilder renders for one text-only user message (the chat template's default system turn).
PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
          "<|im_start|>user\nPlease describe the image in detail.<|im_end|>\n"
          "<|im_start|>assistant\n")


def die(msg: str) -> None:
    print(f"hf_decode_bench: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model directory (config.json, safetensors, tokenizer.json)")
    ap.add_argument("--device", default="cuda:0", help="cuda:N or cpu (default cuda:0)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    ap.add_argument("--new-tokens", type=int, default=64, help="new tokens per sequence (default 64)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation (default sdpa)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per measurement; the fastest counts (default 2)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        die(f"--batches {args.batches!r}: expected integers separated by commas")
    if not args.batches or min(args.batches) < 1:
        die("--batches needs positive integers")
    if args.new_tokens < 2:
        die("--new-tokens must be at least 2 (the decode rate is the difference of N and 1 new tokens)")
    if args.repeats < 1:
        die("--repeats must be at least 1")
    if not (args.model / "config.json").is_file():
        die(f"no config.json in {args.model}")
    if not (args.model / "tokenizer.json").is_file():
        die(f"no tokenizer.json in {args.model}")
    return args


def main():
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t_start = time.time()
    try:
        import torch
        import transformers
        from tokenizers import Tokenizer
        from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    except ImportError as e:
        die(f"cannot import torch/transformers/tokenizers ({e}); install them (see docs/GPU.md)")

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            die(f"--device {args.device}, but torch {torch.__version__} sees no CUDA device")
        torch.cuda.set_device(device)
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    ids = tok.encode(PROMPT, add_special_tokens=False).ids
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    if None in eos:
        die("the tokenizer has no <|im_end|> / <|endoftext|>")

    t0 = time.time()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(args.model), dtype=dtype, attn_implementation=args.attn)
    model.to(device).eval()
    sync()
    load_s = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; {n_params / 1e9:.3f}B parameters "
          f"on {device} {dtype}, attn={args.attn}; loaded in {load_s:.1f}s; prompt {len(ids)} tokens", flush=True)

    def gen_config(n):
        return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=n,
                                repetition_penalty=1.0, eos_token_id=eos, pad_token_id=eos[1],
                                bos_token_id=eos[1], use_cache=True)

    def timed_generate(input_ids, n):
        best = float("inf")
        for _ in range(args.repeats):
            model.model.rope_deltas = None  # cached per batch by the last generate; the batch size changes
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     generation_config=gen_config(n))
            sync()
            best = min(best, time.perf_counter() - t)
            if out.shape != (input_ids.shape[0], input_ids.shape[1] + n):
                die(f"generate returned shape {tuple(out.shape)}, expected {(input_ids.shape[0], input_ids.shape[1] + n)}")
        return best

    rows = []
    print(f"{'batch':>8} {'decode tok/s':>14} {'generate tok/s':>16} {'t(N) s':>9} {'t(1) s':>9}", flush=True)
    for b in args.batches:
        input_ids = torch.tensor([ids] * b, dtype=torch.long, device=device)
        model.model.rope_deltas = None
        with torch.inference_mode():  # warm-up: kernels, allocator, cuBLAS handles for this shape
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           generation_config=gen_config(args.new_tokens))
        t_n = timed_generate(input_ids, args.new_tokens)
        t_1 = timed_generate(input_ids, 1)
        decode = b * (args.new_tokens - 1) / max(t_n - t_1, 1e-9)
        whole = b * args.new_tokens / t_n
        rows.append({"batch": b, "decode_tokens_per_s": decode, "generate_tokens_per_s": whole,
                     "t_new_tokens_s": t_n, "t_one_token_s": t_1})
        print(f"{b:>8} {decode:>14.1f} {whole:>16.1f} {t_n:>9.3f} {t_1:>9.3f}", flush=True)

    report = {
        "model": str(args.model), "device": str(device), "dtype": args.dtype, "attn": args.attn,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "parameters": n_params, "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
        "repeats": args.repeats, "load_s": load_s, "total_s": time.time() - t_start, "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
