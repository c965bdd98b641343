#!/usr/bin/env python3
"""The Candle engine side by side with what a user would run instead, in one run, on one random
mid-size Qwen2.5-VL (the same weights for all), on this machine's CPU:

  (a) transformers, eager attention, float32: greedy decode at batch 1 and 8 (tokens/s), and
      the vision tower's time per image size (224², 448², 896²);
  (b) a real vLLM on CPU (scripts/vllm/serve.sh, float32), captioning requests with one image
      each (every request its own image: vLLM caches encoder outputs and prefixes by content,
      which would otherwise skip the vision tower) at concurrency 1, 8 and 16 through the
      OpenAI API: images/s and output tokens/s;
  (c) the Candle engine behind the gateway (`--worker caprl=candle:DIR`, release build), the
      same requests;

then one markdown table per part with the ratios. The Candle figures of (a)'s kind (decode at
batch 1/8/16, vision tower and prefill per image size) come from
`cargo bench -p caprl-engine --bench decode`, run by this script on the same model.

    .venv-vllm/bin/python scripts/bench/engines.py --model /tmp/bench-model-8l
    (make the model first: .venv-vllm/bin/python scripts/fixtures/make_tiny_qwen25vl.py \
        --bench /tmp/bench-model-8l --bench-layers 8 --bench-vision-depth 8)

Only 127.0.0.1 is a target; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPT = "Please describe the image in detail."


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def image_png(w: int, h: int, variant: int = 0) -> bytes:
    """A gradient image; each `variant` differs in its pixels (so no cache can reuse another's
    work: vLLM caches encoder outputs and prefixes by content)."""
    from PIL import Image, ImageDraw

    img = Image.linear_gradient("L").resize((w, h))
    img = Image.merge("RGB", (img, img.rotate(90), Image.radial_gradient("L").resize((w, h))))
    if variant:
        x, y = (variant * 37) % w, (variant * 53) % h
        ImageDraw.Draw(img).rectangle((x, y, x + w // 8, y + h // 8), fill=(variant % 256, 255, 0))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------- (a) transformers


def bench_transformers(model_dir: Path, new_tokens: int, image_side: int, threads: int) -> dict:
    import torch
    from PIL import Image
    from transformers import (AutoProcessor, LogitsProcessor, LogitsProcessorList,
                              Qwen2_5_VLForConditionalGeneration)

    torch.set_num_threads(threads)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    proc = AutoProcessor.from_pretrained(str(model_dir))
    img = Image.open(io.BytesIO(image_png(image_side, image_side))).convert("RGB")
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    out = {"decode": {}, "vision": {}}
    for batch in (1, 8):
        inputs = proc(text=[text] * batch, images=[img] * batch, return_tensors="pt")

        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            """Called once per generated token, just after its forward pass: the gaps between
            calls are the decode steps, with the prefill (before the first call) left out."""

            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        def run(n):
            stamps.clear()
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               logits_processor=LogitsProcessorList([Stamp()]))
            return stamps[-1] - stamps[0], len(stamps) - 1

        run(2)  # warm-up
        # Decode only: the steps after the first token (which comes with the prefill), timed
        # inside one generate call.
        spent, steps = run(new_tokens)
        out["decode"][batch] = batch * steps / max(spent, 1e-9)
        log(f"transformers batch {batch}: {out['decode'][batch]:.1f} tok/s ({steps} steps in {spent:.2f} s)")
    for side in (224, 448, 896):
        im = Image.open(io.BytesIO(image_png(side, side))).convert("RGB")
        px = proc.image_processor(images=[im], return_tensors="pt")
        pv, grid = px["pixel_values"], px["image_grid_thw"]
        with torch.inference_mode():
            model.model.visual(pv, grid_thw=grid)  # warm-up
            t0 = time.perf_counter()
            for _ in range(2):
                model.model.visual(pv, grid_thw=grid)
        out["vision"][side] = (time.perf_counter() - t0) / 2 * 1000
        log(f"transformers vision {side}²: {out['vision'][side]:.0f} ms")
    return out


# ---------------------------------------------------------------- (b), (c) servers


def wait_http(url: str, limit_s: float, proc: subprocess.Popen | None = None):
    import urllib.request

    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {limit_s} s")


def captioning(image: bytes) -> list:
    url = "data:image;base64," + base64.b64encode(image).decode()
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": PROMPT}]}]


def load(base_url: str, side: int, first_variant: int, new_tokens: int, concurrency: int,
         per_worker: int, limit_s: float) -> dict:
    """`concurrency` threads each send `per_worker` captioning requests, every one with an image
    of its own (variants from `first_variant` on); images/s and output tokens/s."""
    from openai import OpenAI

    bodies = [captioning(image_png(side, side, first_variant + i))
              for i in range(concurrency * per_worker)]
    client = OpenAI(api_key="EMPTY", base_url=base_url, max_retries=0, timeout=limit_s)
    tokens, errors, lock = [0], [], threading.Lock()
    deadline = time.monotonic() + limit_s

    def worker(k: int):
        for j in range(per_worker):
            if time.monotonic() > deadline:
                return
            try:
                r = client.chat.completions.create(
                    model="caprl", messages=bodies[k * per_worker + j], temperature=0,
                    max_tokens=new_tokens,
                    extra_body={"min_tokens": new_tokens, "repetition_penalty": 1.0})
                with lock:
                    tokens[0] += r.usage.completion_tokens
            except Exception as e:  # noqa: BLE001 - reported, and the run is marked
                with lock:
                    errors.append(repr(e))

    # One request first (an image of its own too), so no measured one pays for warm-up.
    client.chat.completions.create(model="caprl", messages=captioning(image_png(side, side, 999_999)),
                                   temperature=0, max_tokens=2)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=limit_s + 30)
    took = time.perf_counter() - t0
    done = tokens[0] // new_tokens
    if errors:
        log(f"  {len(errors)} errors, first: {errors[0]}")
    return {"images_per_s": done / took, "tokens_per_s": tokens[0] / took, "requests": done,
            "errors": len(errors), "seconds": took}


def levels(base_url: str, args) -> dict:
    """Each concurrency level in turn, with images no earlier level sent."""
    out, first = {}, 1
    for c in args.concurrency:
        out[c] = load(base_url, args.image_side, first, args.new_tokens, c, args.per_worker, args.limit_s)
        first += c * args.per_worker
    return out


def bench_vllm(model_dir: Path, venv: Path, port: int, args) -> dict:
    serve = REPO / "scripts" / "vllm" / "serve.sh"
    env = {**os.environ, "VLLM_START_TIMEOUT": "600"}
    subprocess.run([str(serve), "start", str(venv), str(model_dir), str(port)], check=True, env=env,
                   timeout=660)
    try:
        return levels(f"http://127.0.0.1:{port}/v1", args)
    finally:
        subprocess.run([str(serve), "stop", str(port)], timeout=90)


def bench_candle(model_dir: Path, gateway: Path, port: int, args) -> dict:
    proc = subprocess.Popen(
        [str(gateway), "serve", "--host", "127.0.0.1", "--port", str(port), "--worker",
         f"caprl=candle:{model_dir}", "--engine-max-sequences", str(max(args.concurrency))],
        stdout=subprocess.DEVNULL, stderr=open(REPO / "target" / "engines-gateway.log", "w"),
        start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ready", 300, proc)
        return levels(f"http://127.0.0.1:{port}/v1", args)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def bench_candle_engine(model_dir: Path, target_dir: Path) -> dict:
    """`cargo bench -p caprl-engine --bench decode` on the model: its two tables, parsed."""
    env = {**os.environ, "CARGO_TARGET_DIR": str(target_dir)}
    r = subprocess.run(["cargo", "bench", "-p", "caprl-engine", "--bench", "decode", "--",
                        str(model_dir), "cpu", "f32"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"the engine bench failed:\n{r.stderr[-2000:]}")
    decode, prefill, vision = {}, {}, {}
    for line in r.stdout.splitlines():
        # "   batch   step ms   tokens/s" rows, then "   224x224   tokens   prefill ms" rows.
        m = re.match(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s*$", line)
        if m:
            decode[int(m.group(1))] = float(m.group(3))
        m = re.match(r"^\s*(\d+)x(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s*$", line)
        if m and m.group(1) == m.group(2):
            prefill[int(m.group(1))] = float(m.group(4))
            vision[int(m.group(1))] = float(m.group(5))
    log(r.stdout)
    return {"decode": decode, "prefill": prefill, "vision": vision, "stdout": r.stdout}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--vllm-venv", type=Path, default=REPO / ".venv-vllm")
    ap.add_argument("--gateway", type=Path, default=Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
                    / "release" / "caprl-gateway")
    ap.add_argument("--engine-target-dir", type=Path, default=Path(os.environ.get("CARGO_TARGET_DIR",
                                                                                 REPO / "target")))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--per-worker", type=int, default=2, help="requests per concurrent client")
    ap.add_argument("--limit-s", type=float, default=240, help="bound on one load level")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["transformers", "vllm", "candle", "engine"])
    ap.add_argument("--json", type=Path, default=REPO / "target" / "engines.json")
    args = ap.parse_args()
    if not (args.model / "config.json").exists():
        log(f"no model at {args.model}; see the docstring to make one")
        return 2
    cfg = json.loads((args.model / "config.json").read_text())
    text_cfg = cfg.get("text_config", cfg)
    log(f"model: hidden {text_cfg.get('hidden_size')}, {text_cfg.get('num_hidden_layers')} layers, "
        f"vision depth {cfg['vision_config']['depth']}")
    res: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    t0 = time.monotonic()
    if "engine" not in args.skip:
        res["candle_engine"] = bench_candle_engine(args.model, args.engine_target_dir)
    if "transformers" not in args.skip:
        res["transformers"] = bench_transformers(args.model, args.new_tokens, args.image_side, args.threads)
    if "vllm" not in args.skip:
        res["vllm"] = bench_vllm(args.model, args.vllm_venv, 18720, args)
    if "candle" not in args.skip:
        res["candle"] = bench_candle(args.model, args.gateway, 18721, args)
    res["seconds"] = time.monotonic() - t0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, default=str))

    print(f"\n{args.model}: {args.new_tokens} greedy tokens, one {args.image_side}² PNG per request, "
          f"{args.threads} threads, {res['seconds']:.0f} s in all\n")
    if "transformers" in res and "candle_engine" in res:
        print("| decode batch | transformers eager tok/s | Candle tok/s | Candle / transformers |")
        print("|---|---|---|---|")
        for b in (1, 8):
            t, c = res["transformers"]["decode"][b], res["candle_engine"]["decode"].get(b)
            print(f"| {b} | {t:.1f} | {c if c is None else f'{c:.1f}'} | "
                  f"{'—' if c is None else f'{c / t:.2f}×'} |")
        print("\n| image | transformers vision ms | Candle vision ms | Candle / transformers "
              "| Candle prefill ms (vision + prompt) |")
        print("|---|---|---|---|---|")
        for side in (224, 448, 896):
            t = res["transformers"]["vision"][side]
            c = res["candle_engine"]["vision"].get(side, float("nan"))
            print(f"| {side}² | {t:.0f} | {c:.0f} | {c / t:.2f}× | "
                  f"{res['candle_engine']['prefill'].get(side, float('nan')):.0f} |")
    if "vllm" in res and "candle" in res:
        print("\n| concurrency | vLLM images/s | vLLM tok/s | Candle images/s | Candle tok/s | Candle / vLLM |")
        print("|---|---|---|---|---|---|")
        for c in args.concurrency:
            v, k = res["vllm"][c], res["candle"][c]
            print(f"| {c} | {v['images_per_s']:.2f} | {v['tokens_per_s']:.1f} | {k['images_per_s']:.2f} | "
                  f"{k['tokens_per_s']:.1f} | {k['tokens_per_s'] / max(v['tokens_per_s'], 1e-9):.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
