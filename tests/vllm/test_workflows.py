"""The workflow commands end to end through the gateway, to the real vLLM and to the in-process
Candle engine, both serving the tiny fixture model: the answers are nonsense, so what is checked
is the plumbing: every input ends in exactly one output or error line, counts add up, a re-run
sends nothing, and each step's files are there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import IMAGES
from e2e_util import GATEWAY_BIN

RUN_TIMEOUT_S = 300.0
NAMES = ["grid_56x84.png", "odd_101x47.png", "tiny_20x30.png"]
VISION = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    p = subprocess.run([str(GATEWAY_BIN), *argv], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def read(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def images(tmp: Path) -> Path:
    d = tmp / "images"
    d.mkdir()
    for n in NAMES:
        shutil.copy(IMAGES / n, d / n)
    return d


@pytest.fixture(params=["vllm", "candle"])
def target(request):
    return request.getfixturevalue("gw" if request.param == "vllm" else "candle_gw"), request.param


def test_caption_and_qa_through_the_gateway(target, tmp_path):
    gw, name = target
    imgs = images(tmp_path)
    out = tmp_path / "captions.jsonl"
    args = ["caption", str(imgs), "--base-url", gw.base_url, "--model", "caprl", "--out", str(out),
            "--n", "2", "--max-tokens", "8", "--concurrency", "3"]
    first = run(*args)
    lines = read(out)
    assert sorted(l["image"] for l in lines) == NAMES, first.stderr
    assert all(len(l["captions"]) == 2 and l["usage"]["completion_tokens"] >= 2 for l in lines)
    again = run(*args)
    assert "captioned=0 skipped=3 failed=0" in again.stderr, again.stderr
    assert read(out) == lines

    qa = tmp_path / "qa"
    run("qa", "curate", str(imgs), "--base-url", gw.base_url, "--generator-model", "caprl",
        "--answer-model", "caprl", "--out", str(qa), "--generate-max-tokens", "24",
        "--answer-max-tokens", "2", "--rotate-num", "2")
    generated = read(qa / "generated.jsonl")
    assert sorted(g["image"] for g in generated) == NAMES
    extracted = read(qa / "extracted.jsonl")
    assert len(extracted) == 3
    # Whatever the tiny model wrote, each question and each dropped block is accounted for.
    questions = sum(len(e["questions"]) for e in extracted)
    assert all(d["reason"] for e in extracted for d in e["dropped"])
    assert len(read(qa / "answers.jsonl")) == questions
    assert (qa / "curated.jsonl").exists()


def test_prism_through_the_gateway(target, tmp_path):
    gw, name = target
    imgs = images(tmp_path)
    samples = [{"image": [{"role": "user", "content": [{"type": "image", "image": f"images/{n}"}]}],
                "prompt": f"{VISION}What is shown?<|im_end|>\n<|im_start|>assistant\n", "answer": "3"}
               for n in NAMES[:2]]
    data = tmp_path / "lmm_eval_mathvista.json"
    data.write_text(json.dumps(samples))
    out = tmp_path / "prism"
    args = ["eval", "prism", "--data", str(data), "--image-root", str(tmp_path), "--base-url", gw.base_url,
            "--caption-model", "caprl", "--eval-model", "caprl", "--out", str(out), "--n", "2",
            "--max-tokens", "16"]
    p = run(*args)
    captions = read(out / "captions.jsonl")
    assert len(captions) == 2 and all(len(c["captions"]) == 2 for c in captions), p.stderr
    answers, errors = read(out / "answers.jsonl"), read(out / "answers.errors.jsonl")
    if name == "vllm":
        # Stage 2 is raw text through /v1/completions: 2 samples x 2 captions, all scored.
        assert len(answers) == 4 and not errors, errors
        results = json.loads((out / "results.json").read_text())
        assert results["mathvista"]["samples"] == 2 and results["mathvista"]["answers"] == 4
    else:
        # The in-process engine serves chat only: every stage-2 request is refused with 400 and
        # recorded, not retried, and a re-run does not send them again.
        assert not answers and len(errors) == 4, errors
        assert all(e["status"] == 400 and e["retryable"] is False for e in errors)
    again = run(*args)
    assert read(out / "answers.jsonl") == answers
    assert len(read(out / "answers.errors.jsonl")) == len(errors), again.stderr
