"""Same greedy float32 requests straight to vLLM and through the gateway: identical answers."""

from __future__ import annotations

import pytest

from conftest import IMAGES
from e2e_util import caption_messages, data_url

CASES = {
    "one_image": ["grid_56x84.png"],
    "caprl_large": ["large_300x200.png"],
    "two_images": ["odd_101x47.png", "tiny_20x30.png"],
    "four_images": ["grid_56x84.png", "odd_101x47.png", "large_300x200.png", "tiny_20x30.png"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_equals_gateway(gw, vllm, case):
    msgs = caption_messages(*[data_url((IMAGES / f).read_bytes()) for f in CASES[case]])
    kw = dict(model="caprl", messages=msgs, temperature=0, max_tokens=16,
              extra_body={"repetition_penalty": 1.0})
    from openai import OpenAI
    via = OpenAI(api_key="EMPTY", base_url=gw.base_url, max_retries=0, timeout=120).chat.completions.create(**kw)
    direct = vllm.openai().chat.completions.create(**kw)
    dump = lambda r: ([c.model_dump() for c in r.choices], r.usage.model_dump(), r.model, r.object)  # noqa: E731
    assert dump(via) == dump(direct)
