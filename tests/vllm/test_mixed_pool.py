"""One model name served by a real vLLM and the Candle engine together, round-robin."""

from __future__ import annotations

import time

from openai import OpenAI

from conftest import IMAGES, MODEL_A, Remote, start_gateway
from e2e_util import caption_messages, data_url


def test_mixed_pool_round_robin(session_cluster, vllm):
    cand = f"candle:{MODEL_A}"
    g = start_gateway(session_cluster, [("caprl", Remote(vllm.url)), ("caprl", Remote(cand))],
                      "--policy", "round-robin")
    before = vllm.chat_requests()
    c = OpenAI(api_key="EMPTY", base_url=g.base_url, max_retries=0, timeout=180)
    msgs = caption_messages(data_url((IMAGES / "grid_56x84.png").read_bytes()))
    for _ in range(20):
        r = c.chat.completions.create(model="caprl", messages=msgs, max_tokens=4, temperature=0)
        assert r.choices and r.choices[0].message.content is not None
    time.sleep(1)
    served_vllm = vllm.chat_requests() - before
    m = g.metrics()
    series = m.matching("caprl_gateway_worker_responses_total")
    candle = sum(v for lbl, v in series.items() if dict(lbl).get("worker", "").startswith("candle:"))
    print(f"\nvLLM served {served_vllm:.0f}, candle served {candle:.0f}; series: "
          f"{ {tuple(sorted(dict(k).items())): v for k, v in series.items()} }")
    assert served_vllm > 0 and candle > 0
    assert served_vllm + candle >= 20
