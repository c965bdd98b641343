"""Candle engine (in-process) vs vLLM 0.32, same fixture (tiny-qwen25vl-a), CapRL prompt, greedy.

Both now preprocess images the same way: Candle's default `--engine-image-resize torchvision`
is bit-exact with transformers 5.19's torchvision-backed Qwen2VLImageProcessor that vLLM 0.32
uses, JPEGs are decoded with libjpeg-turbo by both (Pillow), and both detokenizers drop a
trailing incomplete UTF-8 character. So for EVERY image, resized or not, PNG or JPEG, the two
must give the same prompt length and the identical N-token greedy text (N forced with
`min_tokens == max_tokens`, `repetition_penalty` 1.0 so the fixture's generation_config does not
apply its 1.05).

Images: the 11 of tests/fixtures/resize (reference.json: sizes and aspect ratios from 9x13 to
3000x17; most above the fixture's max_pixels 28224 and scaled down, two below min_pixels and
scaled up) and the 4 older ones of tests/fixtures/images. Each is sent as its real bytes (the
JPEGs as JPEG) in a CapRL-style `data:image;base64,` URL.

The `large_300x200` case is also the transformers reference's `caprl` case: vLLM's token ids
must equal the reference's torchvision-processor ids, and Candle's text must equal vLLM's.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from conftest import IMAGES, MODEL_A, REPO, TIMINGS
from e2e_util import caption_messages

N = 32  # generated tokens per request, forced (min_tokens == max_tokens)
REF = json.loads((MODEL_A / "reference" / "reference.json").read_text())["cases"]
RESIZE_DIR = REPO / "tests" / "fixtures" / "resize"
RESIZE_REF = json.loads((RESIZE_DIR / "reference.json").read_text())
IMAGES_REF = json.loads((IMAGES / "reference.json").read_text())
MIN_PIXELS, MAX_PIXELS = RESIZE_REF["min_pixels"], RESIZE_REF["max_pixels"]
# The CapRL prompt (system + user text) without the image: the `caprl` case's prompt minus its
# image tokens; each image adds t*h*w / merge_size**2 <|image_pad|> tokens.
CAPRL_TEXT_TOKENS = REF["caprl"]["prompt_len"] - REF["caprl"]["num_image_tokens"]


@dataclass(frozen=True)
class Case:
    id: str
    path: Path
    width: int
    height: int
    resized: tuple[int, int]  # (width, height) after smart_resize
    grid_thw: tuple[int, int, int]
    ref_case: str | None = None  # the transformers reference case with this image and the CapRL prompt

    @property
    def image_tokens(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // 4

    @property
    def resize(self) -> str:
        px = self.width * self.height
        if px > MAX_PIXELS:
            return "down>max"
        if px < MIN_PIXELS:
            return "up<min"
        return "rounded" if self.resized != (self.width, self.height) else "none"


def _cases() -> list[Case]:
    out = []
    for name, v in RESIZE_REF["images"].items():
        tv = v["torchvision"]
        out.append(Case(f"resize/{name}", RESIZE_DIR / v["file"], v["width"], v["height"],
                        tuple(tv["resized"]), tuple(tv["grid_thw"])))
    caprl_images = {REF["caprl"]["images"][0]: "caprl"}  # large_300x200
    for name, v in IMAGES_REF["images"].items():
        out.append(Case(f"images/{name}", IMAGES / v["file"], v["width"], v["height"],
                        (v["resized_width"], v["resized_height"]), tuple(v["image_grid_thw"]),
                        caprl_images.get(name)))
    return out


CASES = _cases()
assert len(CASES) >= 8 and sum(c.resize == "down>max" for c in CASES) >= 4, CASES
TABLE: list[str] = []


def caprl_url(path: Path) -> str:
    """CapRL's own image URL: `data:image;base64,` and the file's bytes as they are."""
    return f"data:image;base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _req(base_url, case: Case, max_tokens=N, **extra):
    c = OpenAI(api_key="EMPTY", base_url=base_url, max_retries=0, timeout=180)
    body = {"repetition_penalty": 1.0, "min_tokens": max_tokens, **extra}
    return c.chat.completions.create(
        model="caprl", messages=caption_messages(caprl_url(case.path)),
        temperature=0, max_tokens=max_tokens, extra_body=body)


def _text(r) -> str:
    return r.choices[0].message.content


def first_divergence(vllm, candle_gw, case: Case, v_ids) -> str:
    """For a failure message only: the first generated token where the two engines differ.
    Found by asking both for greedy k-token completions (k = 1..N, at most 2N requests, each
    bounded by the client timeout) and comparing the texts; vLLM's token id there is shown with
    its detokenized text. Neither engine returns Candle's ids, so Candle's side is its text."""
    for k in range(1, N + 1):
        a = _text(_req(vllm.base_url, case, max_tokens=k))
        b = _text(_req(candle_gw.base_url, case, max_tokens=k))
        if a != b:
            vt = v_ids[k - 1] if len(v_ids) >= k else None
            vs = vllm.detokenize([vt]) if vt is not None else None
            return (f"first differing k-token completion: k={k} (token index {k - 1}); vLLM token id {vt} "
                    f"= {vs!r}; vLLM[:{k}]={a!r} Candle[:{k}]={b!r}")
    return f"every k-token completion (k=1..{N}) was equal when asked again: not reproducible"


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if TABLE:
        print(f"\n\nCandle vs vLLM parity, greedy, {N} tokens, CapRL prompt "
              f"(min_pixels {MIN_PIXELS}, max_pixels {MAX_PIXELS}):")
        print(f"{'image':34s} {'size':>9s} {'resize':8s} {'resized':>9s} {'prompt':>6s} "
              f"{'tokens v/c':>10s} {'identical':9s} {'common chars':>12s}  note")
        for row in TABLE:
            print(row)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_candle_vllm_parity(candle_gw, vllm, case):
    t0 = time.monotonic()
    v = _req(vllm.base_url, case, return_token_ids=True)
    t1 = time.monotonic()
    c = _req(candle_gw.base_url, case)
    t2 = time.monotonic()
    TIMINGS["parity: vLLM requests (sum)"] = TIMINGS.get("parity: vLLM requests (sum)", 0.0) + t1 - t0
    TIMINGS["parity: Candle requests (sum)"] = TIMINGS.get("parity: Candle requests (sum)", 0.0) + t2 - t1
    v_ids = (v.choices[0].model_extra or {}).get("token_ids") or getattr(v.choices[0], "token_ids", None) or []
    v_text, c_text = _text(v), _text(c)
    identical = v_text == c_text
    note = ""
    ref_ok = None
    if case.ref_case:
        ref = REF[case.ref_case]
        tv_ids = ref["gen_ids_torchvision_image_processor"]
        n_ref = min(N, len(tv_ids))
        ref_text = vllm.detokenize(tv_ids[:n_ref])
        # with fewer reference ids than N, Candle's text must start with theirs (less a trailing
        # incomplete character, which the whole-sequence /detokenize shows as U+FFFD)
        c_ref = c_text == ref_text if n_ref == N else c_text.startswith(ref_text.removesuffix("\ufffd"))
        v_ref = v_ids[:n_ref] == tv_ids[:n_ref]
        ref_ok = (ref["prompt_len"] == v.usage.prompt_tokens, v_ref, c_ref)
        note = (f"ref `{case.ref_case}` torchvision ids[:{n_ref}]: vLLM ids equal {v_ref}, Candle text equal {c_ref}"
                f" (the PIL ref differs from token {ref['gen_ids_torchvision_first_diff']})")
    TABLE.append(
        f"{case.id:34s} {case.width:>4d}x{case.height:<4d} {case.resize:8s} "
        f"{case.resized[0]:>4d}x{case.resized[1]:<4d} {v.usage.prompt_tokens:>3d}/{c.usage.prompt_tokens:<3d}"
        f"{v.usage.completion_tokens:>5d}/{c.usage.completion_tokens:<4d} {str(identical):9s} "
        f"{_common_prefix(v_text, c_text):>5d}/{max(len(v_text), len(c_text)):<6d} "
        f"vLLM {t1 - t0:.1f}s Candle {t2 - t1:.1f}s {note}")
    print(f"\n{TABLE[-1]}\n  vllm  : {v_text!r}\n  candle: {c_text!r}")

    expected_prompt = CAPRL_TEXT_TOKENS + case.image_tokens
    assert v.usage.prompt_tokens == expected_prompt, "vLLM's image grid differs from the reference resize"
    assert c.usage.prompt_tokens == v.usage.prompt_tokens, "Candle's image grid differs from vLLM's"
    assert v.usage.completion_tokens == N and c.usage.completion_tokens == N
    assert len(v_ids) == N, f"vLLM returned no/short token_ids: {v_ids}"
    if not identical:
        pytest.fail(f"{case.id}: Candle and vLLM greedy texts differ\n  vllm  : {v_text!r}\n  candle: {c_text!r}\n  "
                    + first_divergence(vllm, candle_gw, case, v_ids))
    if case.ref_case:
        assert ref_ok == (True, True, True), (
            f"(prompt_len, vLLM ids, Candle text) vs the transformers torchvision reference: {ref_ok}\n"
            f"  vLLM ids {v_ids}\n  ref ids  {tv_ids}\n  ref text {ref_text!r}")
