"""`caprl-gateway qa`: CapRL's QA curation end to end through the gateway, against the fake
worker's `qa` script (src/fake_worker.rs, QA_SCRIPT): it writes four well-formed questions and
one malformed block per image, and answers two questions right only with the image, one right
either way (the text gives it away) and one wrong either way. So the curated set is known
exactly: the first two questions of every image, with their gold letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from e2e_util import GATEWAY_BIN, image_bytes, poll

RUN_TIMEOUT_S = 60.0
KEPT = {
    "What colour is the kite?": ["A) Blue", "B) Red", "C) Green", "D) Yellow"],
    "How many people are watching?": ["A) One", "B) Two", "C) Three", "D) Four"],
}


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def qa(base_url: str, out: Path, images: Path, *flags: str, step: str = "curate") -> subprocess.CompletedProcess:
    argv = [str(GATEWAY_BIN), "qa", step]
    if step in ("curate", "generate"):
        argv.append(str(images))
    argv += ["--out", str(out)]
    if step in ("curate", "generate", "answer"):
        argv += ["--base-url", base_url]
    if step in ("curate", "generate"):
        argv += ["--generator-model", "caprl"]
    if step in ("curate", "answer"):
        argv += ["--answer-model", "caprl"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    p = subprocess.run(argv + list(flags), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def tree(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True)
    names = []
    for i in range(n):
        name = f"img{i:02d}.png"
        (root / name).write_bytes(image_bytes("PNG", (40 + i, 30), noise=True))
        names.append(name)
    (root / "broken.png").write_bytes(b"not an image at all")
    return names


def test_curate_keeps_exactly_the_questions_that_need_the_image(cluster, tmp_path):
    w = cluster.worker(script="qa")
    g = cluster.gateway([w])
    base = f"http://127.0.0.1:{g.port}/v1"
    names = tree(tmp_path / "images", 3)
    out = tmp_path / "qa"
    p = qa(base, out, tmp_path / "images", "--rotate-num", "4", "--seed", "7")

    curated = read(out / "curated.jsonl")
    assert sorted(c["image"] for c in curated) == names
    for c in curated:
        assert c["images"] == [c["image"]]
        truth = c["reward_model"]["ground_truth"]
        assert {t["question"]: t["choices"] for t in truth} == KEPT
        assert all(t["answer"] == "B" for t in truth), truth

    # Every drop is written with its reason: the malformed block per image at extraction, two
    # questions per image at the filter, the broken file at generation.
    extracted = read(out / "extracted.jsonl")
    assert len(extracted) == 3
    for e in extracted:
        assert len(e["questions"]) == 4
        assert [d["reason"] for d in e["dropped"]] == ["option 2 is labelled C, not B"]
    dropped = read(out / "dropped.jsonl")
    assert len(dropped) == 6
    reasons = sorted({d["question"]: d["reason"].split(" ")[1] for d in dropped}.items())
    assert reasons == [("What colour is the sky on a clear day?", "without"),
                       ("What is the kite's string made of?", "with")], reasons
    gen_errors = read(out / "generated.errors.jsonl")
    assert [e["image"] for e in gen_errors] == ["broken.png"] and gen_errors[0]["retryable"] is False

    # Each question: 4 rounds, each with and without the image; options reshuffled per round,
    # the gold letter pointing at the gold text.
    answers = read(out / "answers.jsonl")
    assert len(answers) == 12
    for a in answers:
        assert len(a["rounds"]) == 4
        gold_text = a["question"]["options"][a["question"]["gold"]]
        for r in a["rounds"]:
            assert r["options"][ord(r["gold"]) - ord("A")] == gold_text
            assert [v["with_image"] for v in r["verdicts"]] == [True, False]
    assert len({json.dumps(r["options"]) for a in answers for r in a["rounds"]}) > 1
    # 3 generation requests + 12 questions x 4 rounds x 2.
    assert w.requests() == 3 + 12 * 8
    for step in ("generate", "extract", "answer", "filter"):
        assert f"qa {step}: " in p.stderr, p.stderr

    # A re-run sends nothing and writes the same curated set.
    before = (out / "curated.jsonl").read_bytes()
    qa(base, out, tmp_path / "images", "--rotate-num", "4", "--seed", "7")
    assert w.requests() == 3 + 12 * 8
    assert (out / "curated.jsonl").read_bytes() == before
    assert len(read(out / "answers.jsonl")) == 12

    # The same seed shuffles the same way in a fresh run; another seed does not.
    again = tmp_path / "qa-again"
    qa(base, again, tmp_path / "images", "--rotate-num", "4", "--seed", "7")
    opts = lambda d: sorted((a["image"], a["index"], json.dumps([r["options"] for r in a["rounds"]]))
                            for a in read(d / "answers.jsonl"))
    assert opts(again) == opts(out)
    other = tmp_path / "qa-other"
    qa(base, other, tmp_path / "images", "--rotate-num", "4", "--seed", "8")
    assert opts(other) != opts(out)


def test_answer_step_killed_midway_resumes_exactly_once(cluster, tmp_path):
    w = cluster.worker(script="qa")
    base = f"http://127.0.0.1:{w.port}/v1"
    tree(tmp_path / "images", 6)
    out = tmp_path / "qa"
    qa(base, out, tmp_path / "images", step="generate")
    qa(base, out, tmp_path / "images", step="extract")
    w.control(latency_ms=30)
    argv = [str(GATEWAY_BIN), "qa", "answer", "--out", str(out), "--base-url", base,
            "--answer-model", "caprl", "--concurrency", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll(lambda: len(read(out / "answers.jsonl")) >= 4, 30, what="4 answered questions")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
    done_at_kill = len(read(out / "answers.jsonl"))
    assert done_at_kill < 24, "the kill came too late to test anything"
    with open(out / "answers.jsonl", "a") as f:
        f.write('{"key": "img0')  # a write torn by the kill
    w.control(latency_ms=0)
    qa(base, out, tmp_path / "images", step="answer")
    answers = read(out / "answers.jsonl")
    keys = [f"{a['image']}#{a['index']}" for a in answers]
    assert len(keys) == 24 and len(set(keys)) == 24, sorted(keys)
    qa(base, out, tmp_path / "images", step="filter")
    assert len(read(out / "curated.jsonl")) == 6
