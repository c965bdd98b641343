"""The gateway with the in-process Candle engine on the tiny Qwen2.5-VL fixture, called with the
openai client: streaming and not, images of several sizes and aspect ratios, and agreement with
the transformers reference (prompt token count and greedy tokens)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests/fixtures/models/tiny-qwen25vl-a"
IMAGES = REPO / "tests/fixtures/images"
REFERENCE = json.loads((MODEL / "reference/reference.json").read_text())


@dataclass
class Engine:
    """Stands in for a worker in `Cluster.gateway`: only its URL is used."""

    url: str


@pytest.fixture(scope="module")
def gw(module_cluster):
    return module_cluster.gateway([("caprl", Engine(f"candle:{MODEL}"))])


def image_url(name: str) -> str:
    return "data:image;base64," + base64.b64encode((IMAGES / f"{name}.png").read_bytes()).decode()


def caprl_messages(name: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url(name)}},
            {"type": "text", "text": "Please describe the image in detail."},
        ]},
    ]


def test_caprl_call_matches_the_transformers_reference(gw):
    case = next(c for c in REFERENCE["cases"].values() if c["images"] == ["large_300x200"])
    resp = gw.openai().chat.completions.create(
        model="caprl", messages=caprl_messages("large_300x200"), temperature=0, max_tokens=3,
        extra_body={"repetition_penalty": 1.0},
    )
    assert resp.model == "caprl"
    assert resp.usage.prompt_tokens == case["prompt_len"], "image-token expansion agrees"
    assert resp.usage.completion_tokens == 3
    text = resp.choices[0].message.content
    assert text and case["gen_text"].startswith(text), (text, case["gen_text"])


@pytest.mark.parametrize("name", ["grid_56x84", "odd_101x47", "tiny_20x30", "large_300x200"])
def test_images_of_several_sizes_stream_and_not(gw, name):
    client = gw.openai()
    kw = dict(model="caprl", messages=caprl_messages(name), temperature=0, max_tokens=6,
              extra_body={"repetition_penalty": 1.0})
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content, "greedy: the same text either way"
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens == whole.usage.prompt_tokens


def test_seeded_sampling_is_reproducible(gw):
    kw = dict(model="caprl", messages=caprl_messages("grid_56x84"), temperature=1.0, top_p=1.0,
              max_tokens=8, seed=1234, extra_body={"top_k": 0, "repetition_penalty": 1.0})
    a = gw.openai().chat.completions.create(**kw).choices[0].message.content
    b = gw.openai().chat.completions.create(**kw).choices[0].message.content
    assert a == b
