#!/usr/bin/env python3
"""Write the request bodies the load benchmark POSTs: text-only, ~64 KiB image, ~1 MiB image,
each non-streaming and streaming (small max_tokens).

Images are noisy, photo-like JPEGs (gradient + per-pixel noise, quality 85) whose side is
searched so the *decoded* JPEG is within 3% of the target. Pillow + numpy are used when
importable; otherwise a noisy PNG is written with the standard library only (zlib).

    make_bodies.py OUT_DIR [--max-tokens 16]
"""
import argparse
import base64
import io
import json
import os
import random
import struct
import zlib

TARGETS = {"img64k": 64 * 1024, "img1m": 1024 * 1024}


def jpeg_pillow(side: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(side)
    w, h = side * 4 // 3, side
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    base = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    noisy = (base + rng.integers(0, 48, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy, "RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def png_stdlib(side: int) -> bytes:
    rnd = random.Random(side)
    w, h = side * 4 // 3, side
    rows = bytearray()
    for yy in range(h):
        rows.append(0)
        for xx in range(w):
            rows += bytes(
                (
                    (xx * 255 // w + rnd.randrange(48)) & 255,
                    (yy * 255 // h + rnd.randrange(48)) & 255,
                    ((xx + yy) * 127 // (w + h) + rnd.randrange(48)) & 255,
                )
            )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def image_of_about(target: int):
    try:
        import numpy  # noqa: F401
        import PIL  # noqa: F401

        make, kind = jpeg_pillow, "jpeg"
    except ImportError:
        make, kind = png_stdlib, "png"
    lo, hi = 16, 4096
    best = make(lo)
    for _ in range(16):
        mid = (lo + hi) // 2
        data = make(mid)
        if abs(len(data) / target - 1) < abs(len(best) / target - 1):
            best = data
        if abs(len(best) / target - 1) < 0.03 or hi - lo <= 1:
            break
        lo, hi = (mid, hi) if len(data) < target else (lo, mid)
    return kind, best


def body(content, stream: bool, max_tokens: int) -> bytes:
    req = {
        "model": "caprl",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        req["stream"] = True
    return json.dumps(req, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    contents = {"text": "Describe this image in one detailed paragraph, please."}
    info = {}
    for name, target in TARGETS.items():
        kind, data = image_of_about(target)
        url = f"data:image/{kind};base64," + base64.b64encode(data).decode()
        contents[name] = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "Describe this image in one detailed paragraph."},
        ]
        info[name] = {"format": kind, "decoded_bytes": len(data), "url_bytes": len(url)}
    for name, content in contents.items():
        for stream in (False, True):
            path = os.path.join(a.out, f"{name}-{'stream' if stream else 'whole'}.json")
            with open(path, "wb") as f:
                b = body(content, stream, a.max_tokens)
                f.write(b)
            info.setdefault(name, {})[f"body_bytes_{'stream' if stream else 'whole'}"] = len(b)
    with open(os.path.join(a.out, "bodies.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
