"""Candle engine (in-process, PIL-exact image processor) vs vLLM 0.32 (torchvision processor),
same fixture, CapRL prompt, greedy, 16 tokens."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from conftest import IMAGES, MODEL_A
from e2e_util import caption_messages, data_url

REF = json.loads((MODEL_A / "reference" / "reference.json").read_text())["cases"]
N = 16
# image -> (needs resize, reference case with the CapRL prompt for this image or None)
IMAGES_INFO = {
    "grid_56x84": (False, None),
    "odd_101x47": (True, None),
    "large_300x200": (True, "caprl"),
    "tiny_20x30": (True, None),
}
TABLE: list[str] = []


def _req(base_url, image, max_tokens=N, **extra):
    b = (IMAGES / f"{image}.png").read_bytes()
    c = OpenAI(api_key="EMPTY", base_url=base_url, max_retries=0, timeout=180)
    body = {"repetition_penalty": 1.0, "min_tokens": max_tokens, **extra}
    return c.chat.completions.create(
        model="caprl", messages=caption_messages(f"data:image;base64,{data_url(b).split(',', 1)[1]}"),
        temperature=0, max_tokens=max_tokens, extra_body=body)


def _first_token_divergence(vllm, candle_gw, image, v_text, c_text):
    """0-based index of the first generated token where the two engines differ (None when the
    16-token texts are equal). Found by asking both for greedy k-token completions (k = 1..16)
    and comparing the texts, so both sides go through their own detokenizer the same way."""
    if v_text == c_text:
        return None
    for k in range(1, N + 1):
        a = _req(vllm.base_url, image, max_tokens=k, min_tokens=k).choices[0].message.content
        b = _req(candle_gw.base_url, image, max_tokens=k, min_tokens=k).choices[0].message.content
        # an unfinished multi-byte character may be held back by one detokenizer and shown
        # as U+FFFD by the other: the same tokens so far leave one text a prefix of the other
        a, b = a.rstrip("\ufffd"), b.rstrip("\ufffd")
        if not (a.startswith(b) or b.startswith(a)):
            return k - 1
    return None


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("image", list(IMAGES_INFO))
def test_candle_vllm_parity(candle_gw, vllm, image):
    resize, ref_case = IMAGES_INFO[image]
    v = _req(vllm.base_url, image, return_token_ids=True)
    c = _req(candle_gw.base_url, image)
    v_ids = (v.choices[0].model_extra or {}).get("token_ids") or getattr(v.choices[0], "token_ids", None)
    v_text, c_text = v.choices[0].message.content, c.choices[0].message.content
    assert v.usage.prompt_tokens == c.usage.prompt_tokens
    assert v.usage.completion_tokens == c.usage.completion_tokens == N
    div = _first_token_divergence(vllm, candle_gw, image, v_text, c_text)
    note = ""
    if ref_case:
        ref = REF[ref_case]
        assert ref["prompt_len"] == v.usage.prompt_tokens
        pil_text = vllm.detokenize(ref["gen_ids"][:N])
        tv_ids = ref["gen_ids_torchvision_image_processor"][:N]
        assert c_text == pil_text, "Candle differs from the transformers PIL reference"
        assert v_ids == tv_ids, "vLLM differs from the transformers torchvision reference"
        exact = next((i for i in range(N) if ref["gen_ids"][i] != tv_ids[i]), None)
        note = (f"Candle==ref PIL ids[:16], vLLM==ref torchvision ids[:16], exact token divergence {exact} "
                f"(reference: {ref['gen_ids_torchvision_first_diff']})")
    TABLE.append(f"{image:14s} resize={str(resize):5s} prompt_tokens={v.usage.prompt_tokens:3d} "
                 f"tokens={N} identical={v_text == c_text} divergence_seen_at_token={div} "
                 f"common_chars={_common_prefix(v_text, c_text)}/{max(len(v_text), len(c_text))} {note}")
    print("\n" + TABLE[-1])
    print(f"  vllm  : {v_text!r}\n  candle: {c_text!r}")
    if not resize:
        assert v_text == c_text
        assert div is None
