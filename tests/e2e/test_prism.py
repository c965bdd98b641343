"""`caprl-gateway eval prism` end to end through the gateway against the fake worker's `prism`
script: stage 1 captions each image `caption 0` … `caption 3`; stage 2 (through
`/v1/completions`) answers `\\boxed{X}` for the even captions, where the sample's prompt holds
`[[X]]`, and no box for the odd ones (parse failures). So every figure is known exactly: a
sample whose gold is X scores mean 0.5 and BoN 1; one whose gold differs scores 0 and 0; a
chart sample within 5 % counts. The HTML report is opened in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from e2e_util import GATEWAY_BIN, image_bytes, poll

RUN_TIMEOUT_S = 60.0
VISION = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"


def sample(image: str, question: str, hint: str, answer) -> dict:
    prompt = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{VISION}{question} [[{hint}]]"
              "<|im_end|>\n<|im_start|>assistant\n")
    return {"image": [{"role": "user", "content": [{"type": "image", "image": image}]}],
            "prompt": prompt, "answer": answer}


def benchmarks(root: Path) -> list[Path]:
    (root / "imgs").mkdir(parents=True)
    for i in range(4):
        (root / "imgs" / f"{i}.png").write_bytes(image_bytes("PNG", (32 + i, 32), noise=True))
    math = [sample("imgs/0.png", "How many?", "42", "42"),
            sample("imgs/1.png", "What angle?", "\\frac{1}{2}", "0.5"),
            sample("imgs/2.png", "Which one?", "B", "C")]
    chart = [sample("imgs/3.png", "What value?", "103", "100")]
    paths = [root / "lmm_eval_mathvista.json", root / "lmm_eval_chartqa.json"]
    paths[0].write_text(json.dumps(math))
    paths[1].write_text(json.dumps(chart))
    return paths


def prism(base: str, data: list[Path], root: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    argv = [str(GATEWAY_BIN), "eval", "prism", "--image-root", str(root), "--base-url", base,
            "--caption-model", "caprl", "--eval-model", "caprl", "--out", str(out), *flags]
    for d in data:
        argv += ["--data", str(d)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def read(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_prism_through_the_gateway_scores_exactly_and_resumes(cluster, tmp_path):
    w = cluster.worker(script="prism")
    g = cluster.gateway([w])
    base = f"http://127.0.0.1:{g.port}/v1"
    data = benchmarks(tmp_path)
    out = tmp_path / "out"
    p = prism(base, data, tmp_path, out)

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"mathvista", "chartqa"}
    m, c = results["mathvista"], results["chartqa"]
    # 42 = 42 and 1/2 = 0.5 score 1 on the even captions; B vs C scores 0 everywhere.
    assert (m["samples"], m["answers"], m["parse_failures"]) == (3, 12, 6)
    assert m["mean"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert m["bon"] == pytest.approx(2 / 3)
    # 103 against 100 is within the chart benchmarks' 5 %.
    assert (c["samples"], c["mean"], c["bon"]) == (1, 0.5, 1.0)
    assert "| mathvista | 3 | 33.33 | 66.67 | 6 of 12 |" in p.stdout, p.stdout
    assert "| chartqa | 1 | 50.00 | 100.00 | 2 of 4 |" in p.stdout, p.stdout

    captions = read(out / "captions.jsonl")
    assert sorted(x["key"] for x in captions) == ["chartqa/0", "mathvista/0", "mathvista/1", "mathvista/2"]
    assert all(x["captions"] == ["caption 0", "caption 1", "caption 2", "caption 3"] for x in captions)
    answers = read(out / "answers.jsonl")
    assert len(answers) == 16 and len({a["key"] for a in answers}) == 16
    # Stage 2 went through /v1/completions with the image turn replaced by the caption.
    last = w.last_request()["body"]
    assert "Here is a detailed caption of an image: caption " in last["prompt"]
    assert "<|image_pad|>" not in last["prompt"] and "messages" not in last
    requests = w.requests()
    assert requests == 4 + 16

    # A re-run sends nothing and reports the same.
    again = prism(base, data, tmp_path, out)
    assert w.requests() == requests
    assert json.loads((out / "results.json").read_text()) == results
    assert again.stdout == p.stdout

    # The report, in a real headless browser.
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is needed (scripts/test.sh e2e installs it)"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "report.html").as_uri()], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('<tr class="bench">') == 2, html[:2000]
    assert "<td>mathvista</td><td>3</td><td>33.33</td><td>66.67</td><td>6</td>" in html
    assert html.count('class="mean"') == 2 and html.count('class="bon"') == 2
    assert html.count('class="len"') == 20 and "16 captions" in html
    assert html.count('class="verdict"') >= 1


def test_prism_killed_in_stage_two_resumes_exactly_once(cluster, tmp_path):
    w = cluster.worker(script="prism")
    base = f"http://127.0.0.1:{w.port}/v1"
    data = benchmarks(tmp_path)
    out = tmp_path / "out"
    prism(base, data, tmp_path, out, "--n", "8")
    assert len(read(out / "answers.jsonl")) == 32
    # Forget stage 2, slow the worker, and kill a fresh stage 2 in the middle.
    (out / "answers.jsonl").unlink()
    w.control(latency_ms=40)
    argv = [str(GATEWAY_BIN), "eval", "prism", "--image-root", str(tmp_path), "--base-url", base,
            "--caption-model", "caprl", "--eval-model", "caprl", "--out", str(out), "--n", "8",
            "--concurrency", "2"] + [x for d in data for x in ("--data", str(d))]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: (out / "answers.jsonl").exists() and len(read(out / "answers.jsonl")) >= 6, 30,
             what="six answers")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
    assert len(read(out / "answers.jsonl")) < 32
    w.control(latency_ms=0)
    prism(base, data, tmp_path, out, "--n", "8")
    answers = read(out / "answers.jsonl")
    assert len(answers) == 32 and len({a["key"] for a in answers}) == 32
