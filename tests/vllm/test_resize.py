"""Resize to the pixel budget (`--resize-images max-pixels`) against a real vLLM: the same greedy
requests with large images, sent to vLLM directly and through a gateway that resizes them to
the smart_resize target itself, give identical completions and prompt token counts, while the
image bytes that reach vLLM shrink.

The budget is the fixture model's (min_pixels 3136, max_pixels 28224, from its
preprocessor_config.json), which the gateway must be told. The images: the fixture set of
tests/fixtures/resize (PNG and JPEG, down to 176:1) and photo-like images made here: a WebP, a
1080p PNG and a 12-megapixel JPEG.
"""

from __future__ import annotations

import io
import json

import pytest

from conftest import REPO, Remote, start_gateway
from e2e_util import caption_messages, data_url

RESIZE = REPO / "tests" / "fixtures" / "resize"
INDEX = json.loads((RESIZE / "reference.json").read_text())
BUDGET = ("--min-pixels", str(INDEX["min_pixels"]), "--max-pixels", str(INDEX["max_pixels"]))
N = 24
TABLE: list[str] = []


def photo(w: int, h: int, fmt: str) -> bytes:
    """A photo-like image: smooth shading, hard edges, sensor noise."""
    from PIL import Image, ImageDraw, ImageFilter

    r = Image.linear_gradient("L").resize((w, h))
    g = Image.radial_gradient("L").resize((w, h))
    b = Image.linear_gradient("L").rotate(90).resize((w, h))
    img = Image.merge("RGB", (r, g, b))
    draw = ImageDraw.Draw(img)
    for i in range(12):
        x, y = (i * 997) % w, (i * 613) % h
        draw.ellipse((x, y, x + w // 12 + 40 * i, y + h // 15 + 30 * i), fill=(255 - 20 * i, 15 * i, 128))
    img = img.filter(ImageFilter.GaussianBlur(2))
    noise = Image.effect_noise((w, h), 12).convert("RGB")
    img = Image.blend(img, noise, 0.15)
    out = io.BytesIO()
    img.save(out, format=fmt, quality=90)
    return out.getvalue()


CASES = {name: (RESIZE / entry["file"]).read_bytes() for name, entry in INDEX["images"].items()
         if entry["width"] * entry["height"] > INDEX["max_pixels"]}
# Images whose smart_resize target has more pixels than they do (3000x17 -> 2212x28: the short
# side grows to 28) are the worker's to resize, as are those under max_pixels.
SHRINKS = {name for name in CASES
           if (lambda e: e["torchvision"]["resized"][0] * e["torchvision"]["resized"][1]
               < e["width"] * e["height"])(INDEX["images"][name])}
CASES["webp_1280x720"] = photo(1280, 720, "WEBP")
CASES["png_1920x1080"] = photo(1920, 1080, "PNG")
CASES["photo_12mp_4000x3000"] = photo(4000, 3000, "JPEG")
SHRINKS |= {"webp_1280x720", "png_1920x1080", "photo_12mp_4000x3000"}


@pytest.fixture(scope="module")
def resizing_gw(session_cluster, vllm):
    return start_gateway(session_cluster, [("caprl", Remote(vllm.url))], "--resize-images", "max-pixels",
                         *BUDGET)


def ask(client, image: bytes):
    mime = {b"\xff\xd8": "image/jpeg", b"RI": "image/webp"}.get(image[:2], "image/png")
    return client.chat.completions.create(
        model="caprl", messages=caption_messages(data_url(image, mime)), temperature=0, max_tokens=N,
        extra_body={"min_tokens": N, "repetition_penalty": 1.0})


def test_the_cases_are_above_the_budget():
    assert len(CASES) >= 8, sorted(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_resized_at_the_edge_the_answer_is_vllms_own(vllm, resizing_gw, name):
    image = CASES[name]
    before = resizing_gw.metrics()
    direct = ask(vllm.openai(), image)
    through = ask(resizing_gw.openai(), image)
    after = resizing_gw.metrics()

    def delta(metric, **labels):
        return after.value(metric, **labels) - before.value(metric, **labels)

    bytes_in = delta("caprl_gateway_image_resize_bytes_total", stage="in")
    bytes_out = delta("caprl_gateway_image_resize_bytes_total", stage="out")
    resized = delta("caprl_gateway_image_resizes_total", outcome="resized")
    TABLE.append(f"{name:26s} {len(image):>9,d} B -> {int(bytes_out):>9,d} B "
                 f"(x{bytes_in / max(bytes_out, 1):6.1f}) resized={int(resized)} "
                 f"prompt={through.usage.prompt_tokens} identical={direct.choices[0].message.content == through.choices[0].message.content}")
    print("\n" + TABLE[-1])
    assert bytes_in == len(image)
    assert direct.usage.prompt_tokens == through.usage.prompt_tokens
    assert direct.usage.completion_tokens == through.usage.completion_tokens == N
    assert direct.choices[0].message.content == through.choices[0].message.content, (
        f"{name}: vLLM {direct.choices[0].message.content!r} vs through the gateway "
        f"{through.choices[0].message.content!r}")
    larger = delta("caprl_gateway_image_resizes_total", outcome="larger")
    if resized:
        assert bytes_out < bytes_in
    else:
        assert bytes_out == bytes_in
    # Each image that shrinks is resized, or sent as received because the PNG of its target
    # would not have been smaller; the others are left alone.
    assert (resized, larger) in ([(1, 0), (0, 1)] if name in SHRINKS else [(0, 0)]), TABLE[-1]
    if name == "photo_12mp_4000x3000":
        assert resized == 1 and bytes_out * 20 < bytes_in, TABLE[-1]
