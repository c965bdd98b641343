"""One model name served by a real vLLM and the Candle engine together: every case is served
once by EACH worker, and the two answers are equal.

How the test knows which worker served a request: the gateway sets no per-request header
naming the worker, so the test sends the requests one at a time and reads two counters
around each:

- the gateway's own `caprl_gateway_worker_responses_total{model_name, worker, status_code}`,
  which it increments for the worker that answered before it relays the answer
  (src/dispatch.rs): exactly one series must rise, by one, with status 200, and its `worker`
  label (`http://127.0.0.1:PORT` or `candle:DIR`) names the worker;
- vLLM's own `http_requests_total{handler="/v1/chat/completions"}` (Vllm.chat_requests()),
  which must rise by one for a request the gateway says vLLM served and, summed over the
  test, by exactly the number of those (so none of Candle's requests reached vLLM).

The cases are the parity test's images (test_parity.CASES), same request (greedy, N tokens).
The pool uses `--policy round-robin`, so two requests in a row go to the two workers (both
are waited for until /ready says both are reachable): each case is sent exactly twice, and the test asserts
that one went to vLLM and the other to Candle; it does not rely on the order.
"""

from __future__ import annotations

import time

from openai import OpenAI

from conftest import MODEL_A, TIMINGS, Remote, start_gateway
from e2e_util import caption_messages, poll
from test_parity import CASES, N, caprl_url

WORKER_SERIES = "caprl_gateway_worker_responses_total"


def _worker_counts(g) -> dict[tuple[str, str], float]:
    return {(dict(lbl)["worker"], dict(lbl)["status_code"]): v
            for lbl, v in g.metrics().matching(WORKER_SERIES, model_name="caprl").items()}


def _pool_state(g) -> dict:
    """/ready's view of the pool: {"workers": N, "reachable": M}."""
    r = g.get("/ready")
    return r.json()["pools"]["caprl"] if r.status_code == 200 else {}


def test_mixed_pool_each_case_once_per_worker(session_cluster, vllm):
    cand = f"candle:{MODEL_A}"
    g = start_gateway(session_cluster, [("caprl", Remote(vllm.url)), ("caprl", Remote(cand))],
                      "--policy", "round-robin")
    # both workers up (the Candle engine loads in-process), else round-robin would skip one
    pool = poll(lambda: (p := _pool_state(g)).get("workers") == p.get("reachable") == 2 and p,
                  120, interval=0.5, what="/ready: both workers of the pool reachable")

    def who(label: str) -> str:
        if label.startswith("candle:"):
            return "candle"
        assert f"127.0.0.1:{vllm.port}" in label, f"unknown worker label {label!r} (pool: {pool})"
        return "vllm"

    c = OpenAI(api_key="EMPTY", base_url=g.base_url, max_retries=0, timeout=180)
    vllm_start = vllm.chat_requests()
    served_by_vllm = 0
    rows = []
    t_all = time.monotonic()
    for case in CASES:  # every image of the parity test: 2 x 15 requests of N tokens, ~1 s each
        name = case.id
        answers = {}
        for i in range(2):
            before, v_before = _worker_counts(g), vllm.chat_requests()
            t0 = time.monotonic()
            r = c.chat.completions.create(
                model="caprl", messages=caption_messages(caprl_url(case.path)), temperature=0, max_tokens=N,
                extra_body={"repetition_penalty": 1.0, "min_tokens": N},
                extra_headers={"x-request-id": f"mixed-{name.replace('/', '-')}-{i}"})
            dt = time.monotonic() - t0
            after = _worker_counts(g)
            delta = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
            assert len(delta) == 1 and list(delta.values()) == [1.0], f"{name} #{i}: worker counters moved: {delta}"
            (label, status), = delta
            assert status == "200", f"{name} #{i}: {label} answered {status}"
            w = who(label)
            if w == "vllm":
                served_by_vllm += 1
                poll(lambda: vllm.chat_requests() - v_before >= 1, 10, interval=0.1,
                     what=f"vLLM's request counter to count {name} #{i}")
                assert vllm.chat_requests() - v_before == 1
            assert w not in answers, f"{name}: served twice by {w} (round-robin should alternate)"
            answers[w] = (r, dt)
        assert set(answers) == {"vllm", "candle"}
        (rv, tv), (rc, tc) = answers["vllm"], answers["candle"]
        vt, ct = rv.choices[0].message.content, rc.choices[0].message.content
        rows.append(f"{name:34s} prompt {rv.usage.prompt_tokens}/{rc.usage.prompt_tokens} tokens "
                    f"{rv.usage.completion_tokens}/{rc.usage.completion_tokens} equal={vt == ct} "
                    f"vLLM {tv:.1f}s Candle {tc:.1f}s")
        print(f"\n{rows[-1]}\n  vllm  : {vt!r}\n  candle: {ct!r}")
        assert rv.usage.prompt_tokens == rc.usage.prompt_tokens, name
        assert rv.usage.completion_tokens == rc.usage.completion_tokens == N, name
        assert vt == ct, f"{name}: the two workers' answers differ\n  vllm  : {vt!r}\n  candle: {ct!r}"
    TIMINGS["mixed pool: requests"] = time.monotonic() - t_all

    # Nothing the gateway gave Candle reached vLLM (its counter may lag the answer slightly).
    assert served_by_vllm == len(CASES)
    poll(lambda: vllm.chat_requests() - vllm_start >= served_by_vllm, 10, interval=0.1,
         what="vLLM's request counter to settle")
    time.sleep(1)
    assert vllm.chat_requests() - vllm_start == served_by_vllm
    print("\nmixed pool (vLLM + Candle, round-robin), each case once per worker:\n" + "\n".join(rows))
