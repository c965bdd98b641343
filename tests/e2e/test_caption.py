"""`caprl-gateway caption`: caption a directory, a `.json` list or a `.jsonl` manifest of images
into a JSONL file, through the gateway or straight at a worker (both speak the same API), with
the real fake worker behind it.

What is checked: one output line per image with `--n` captions, its key, hash, usage and the
parameters sent; files that are not images, unreadable files and 4xx answers in the errors file
as not retryable, and not sent again; resuming (a second run sends nothing, a torn last line is
cut and that image redone, new images only are sent); `--shard I/N` and `--shard N` with
`JOB_COMPLETION_INDEX`; a SIGKILL in the middle and a re-run (exactly one line per image, at most
the in-flight requests sent twice); retries of 503s until they pass, and 503s that outlast
`--max-retries` left retryable and redone on the next run; the gateway's 413 for an image over
its `--max-image-bytes`; the stderr summary (`captioned= skipped= failed= truncated=`).

The fake worker answers every request with max_tokens M with the first M words of one fixed
caption and finish_reason "length" (src/fake_worker.rs), so every caption here is "truncated".
Every wait is bounded (`poll`, or a subprocess timeout)."""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from e2e_util import GATEWAY_BIN, LIVE, Proc, elide, image_bytes, poll

MODEL = "caprl"
DEFAULT_PROMPT = "Please describe the image in detail."
DEFAULT_SYSTEM = "You are a helpful assistant."
DEFAULT_MAX_TOKENS = 2048
DEFAULT_CONCURRENCY = 16
RUN_TIMEOUT_S = 60.0

OUT_KEYS = {"image", "hash", "captions", "finish_reasons", "usage", "model", "prompt", "system",
            "params", "time", "latency_ms"}
ERR_KEYS = {"image", "error", "status", "retryable", "time"}
SUMMARY_KEYS = ("captioned", "skipped", "failed", "truncated")
HASH_RE = re.compile(r"^[0-9a-f]{32}$")

# The fake worker's caption, one token per piece (src/fake_worker.rs `generate`).
WORDS = [" The", " image", " shows", " a", " red", " kite", " above", " a", " green", " field",
         ",", " with", " two", " people", " watching", " under", " a", " pale", " blue", " sky",
         "."]


def fake_caption(max_tokens: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(max_tokens))


def fake_prompt_tokens(system: str, prompt: str, images: int = 1) -> int:
    """The fake worker's prompt size: text bytes / 4 (rounded up), 64 per image, plus one."""
    return math.ceil((len(system.encode()) + len(prompt.encode())) / 4) + 64 * images + 1


# ---------------------------------------------------------------------------- running it

_RUNS = itertools.count(1)


@dataclass
class CaptionProc(Proc):
    """The `caption` command: stderr to `log_path` (so a failing test shows its tail), stdout
    to its own file, with its own environment."""

    env: dict = field(default_factory=dict)
    out: Path = Path()
    errors: Path = Path()
    stdout_path: Path = Path()
    _stdout: object = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self._stdout = open(self.stdout_path, "wb")
        self.popen = subprocess.Popen(self.argv, stdout=self._stdout, stderr=self._log,
                                      stdin=subprocess.DEVNULL, env=self.env)
        LIVE.append(self)

    def stop(self, graceful: bool = False) -> int | None:
        rc = super().stop(graceful)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        return rc

    @property
    def stderr(self) -> str:
        return self.log_text()

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> "Result":
        """Wait (bounded) for the command to end; kill it and fail if it does not."""
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"caption did not end within {timeout:.0f} s:\n{self.tail(30)}")
        stderr = self.stderr
        self.stop()
        return Result(rc=rc, stderr=stderr, out=self.out, errors=self.errors)


@dataclass
class Result:
    rc: int
    stderr: str
    out: Path
    errors: Path

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.stderr.splitlines()[-n:])

    def ok(self) -> "Result":
        assert self.rc == 0, f"caption exited {self.rc}:\n{self.tail()}"
        return self

    def lines(self) -> list[dict]:
        return read_jsonl(self.out)

    def error_lines(self) -> list[dict]:
        return read_jsonl(self.errors)

    def summary(self) -> dict[str, int]:
        """The last stderr line naming all four counts, as `key=<int>`."""
        for line in reversed(self.stderr.splitlines()):
            found = {k: re.search(rf"(?<![\w-]){k}=(\d+)\b", line) for k in SUMMARY_KEYS}
            if all(found.values()):
                return {k: int(m.group(1)) for k, m in found.items()}
        raise AssertionError(f"no summary line with {'=, '.join(SUMMARY_KEYS)}= on stderr:\n{self.tail()}")


def default_errors_path(out: Path) -> Path:
    """`out.jsonl` -> `out.errors.jsonl`; a name without `.jsonl` gets `.errors.jsonl` added."""
    if out.name.endswith(".jsonl"):
        return out.with_name(out.name[: -len(".jsonl")] + ".errors.jsonl")
    return out.with_name(out.name + ".errors.jsonl")


def start_caption(cluster, input_path: Path, base_url: str, out: Path, *flags: str,
                  env: dict | None = None, model: str = MODEL) -> CaptionProc:
    argv = [str(GATEWAY_BIN), "caption", str(input_path), "--base-url", base_url,
            "--model", model, "--out", str(out), *flags]
    errors = default_errors_path(out)
    if "--errors" in flags:
        errors = Path(flags[flags.index("--errors") + 1])
    e = {**os.environ, "NO_COLOR": "1", "RUST_BACKTRACE": "1"}
    for var in ("JOB_COMPLETION_INDEX", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        e.pop(var, None)
    e.update(env or {})
    k = next(_RUNS)
    p = CaptionProc(name="caption", argv=argv, log_path=cluster.tmp_dir / f"caption-{k:02d}.stderr.log",
                    env=e, out=out, errors=errors,
                    stdout_path=cluster.tmp_dir / f"caption-{k:02d}.stdout.log")
    p.start()
    cluster.procs.append(p)  # killed at teardown whatever happens
    return p


def caption(cluster, input_path: Path, base_url: str, out: Path, *flags: str,
            env: dict | None = None, timeout: float = RUN_TIMEOUT_S) -> Result:
    """Run the command to its end (bounded)."""
    return start_caption(cluster, input_path, base_url, out, *flags, env=env).wait(timeout)


def worker_base_url(w) -> str:
    return f"{w.url}/v1"


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a JSONL file, parsed (a torn line fails here); a missing file is empty."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path.name} ends mid-line: {data[-200:]!r}"
    return [json.loads(l) for l in data.decode().splitlines()]


def by_image(lines: list[dict]) -> dict[str, dict]:
    """Lines by `image` key; a key twice fails."""
    out: dict[str, dict] = {}
    for l in lines:
        assert l["image"] not in out, f"{l['image']!r} twice: {out[l['image']]} and {l}"
        out[l["image"]] = l
    return out


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_out_line(o: dict, *, n: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS,
                   prompt: str = DEFAULT_PROMPT, system: str = DEFAULT_SYSTEM,
                   temperature: float = 1.0, top_p: float = 1.0, since: float | None = None,
                   min_latency_ms: float = 0.0) -> None:
    missing = OUT_KEYS - set(o)
    assert not missing, f"output line lacks {sorted(missing)}: {o}"
    assert isinstance(o["image"], str) and o["image"], o
    assert isinstance(o["hash"], str) and HASH_RE.match(o["hash"]), o["hash"]
    caps = o["captions"]
    assert isinstance(caps, list) and len(caps) == n, (o["image"], caps)
    for c in caps:
        # The worker's text starts with a space; stripping it is allowed, changing it is not.
        assert isinstance(c, str) and c.strip() == fake_caption(max_tokens).strip(), (o["image"], c[:200])
    assert o["finish_reasons"] == ["length"] * n, o["finish_reasons"]
    u = o["usage"]
    assert u["prompt_tokens"] == fake_prompt_tokens(system, prompt), (u, system, prompt)
    assert u["completion_tokens"] == n * max_tokens, u
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u
    assert o["model"] == MODEL, o["model"]
    assert o["prompt"] == prompt, o["prompt"]
    assert o["system"] == system, o["system"]
    assert o["params"] == {"n": n, "max_tokens": max_tokens, "temperature": temperature,
                           "top_p": top_p}, o["params"]
    assert is_number(o["time"]), o["time"]
    if since is not None:
        assert since - 1 <= o["time"] <= time.time() + 1, (o["time"], since)
    assert is_number(o["latency_ms"]) and o["latency_ms"] >= min_latency_ms * 0.95, (
        o["latency_ms"], min_latency_ms)


def check_err_line(e: dict, *, retryable: bool, status=..., since: float | None = None) -> None:
    """An errors-file line; `status` an int, None, or a tuple of allowed values."""
    missing = ERR_KEYS - set(e)
    assert not missing, f"errors line lacks {sorted(missing)}: {e}"
    assert isinstance(e["image"], str) and e["image"], e
    assert isinstance(e["error"], str) and e["error"].strip(), e
    assert e["retryable"] is retryable, e
    s = e["status"]
    assert s is None or (isinstance(s, int) and not isinstance(s, bool)), e
    if status is not ...:
        allowed = status if isinstance(status, tuple) else (status,)
        assert s in allowed, (e, allowed)
    assert is_number(e["time"]), e
    if since is not None:
        assert since - 1 <= e["time"] <= time.time() + 1, (e["time"], since)


def check_summary(r: Result, *, captioned: int, skipped: int, failed: int, truncated) -> None:
    """`truncated` an int, or a set of allowed values (with --n > 1 it may count images or
    captions)."""
    s = r.summary()
    want = {"captioned": captioned, "skipped": skipped, "failed": failed}
    assert {k: s[k] for k in want} == want, (s, want, r.tail(5))
    allowed = truncated if isinstance(truncated, set) else {truncated}
    assert s["truncated"] in allowed, (s, allowed)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def distinct_pngs(n: int, size=(32, 32)) -> list[bytes]:
    imgs = [image_bytes("PNG", size, color=(i * 7 % 256, 255 - i * 11 % 256, 60)) for i in range(n)]
    assert len(set(imgs)) == n
    return imgs


# ---------------------------------------------------------------------------- a tree

PNG = image_bytes("PNG", (64, 48))
# Sniffs as a PNG (the signature) but has no header: the gateway cannot read its size (400).
CUT_PNG = PNG[:12]
# Starts with no image's magic number, whatever the random bytes are.
NOT_AN_IMAGE = b"\x00\x00not an image, just bytes\n" + os.urandom(512)


def make_tree(root: Path) -> tuple[dict[str, bytes], set[str], set[str]]:
    """A nested tree: real images (a PNG twice under two names, upper-case extensions), two
    bad ones with image extensions, and files to ignore. Returns (images by key, bad keys,
    ignored keys)."""
    images = {
        "a.png": PNG,
        "b.jpg": image_bytes("JPEG", (80, 60)),
        "g.bmp": image_bytes("BMP", (40, 30), color=(200, 10, 10)),
        "sub/c.webp": image_bytes("WEBP", (64, 48), color=(10, 200, 30)),
        "sub/e.JPEG": image_bytes("JPEG", (48, 64), noise=True),
        "sub/f.gif": image_bytes("GIF", (50, 40)),
        "sub/deeper/d.PNG": PNG,  # the same bytes as a.png
    }
    bad = {"bad.png": NOT_AN_IMAGE, "sub/cut.png": CUT_PNG}
    ignored = {"notes.txt": b"not an image either\n", "README": b"readme\n",
               "sub/deeper/data.json": b"[]\n", "sub/photo.png.bak": PNG}
    for k, data in {**images, **bad, **ignored}.items():
        write(root / k, data)
    return images, set(bad), set(ignored)


def check_tree_output(r: Result, images: dict[str, bytes], bad: set[str], *, n: int,
                      max_tokens: int, since: float) -> None:
    out = by_image(r.lines())
    assert sorted(out) == sorted(images), f"keys {sorted(out)}, want {sorted(images)}"
    for o in out.values():
        check_out_line(o, n=n, max_tokens=max_tokens, since=since)
    # The hash is of the bytes: the same bytes, the same hash; other bytes, another.
    hashes = {k: o["hash"] for k, o in out.items()}
    assert hashes["a.png"] == hashes["sub/deeper/d.PNG"], hashes
    distinct = {k: h for k, h in hashes.items() if k != "sub/deeper/d.PNG"}
    assert len(set(distinct.values())) == len(distinct), hashes

    errs = by_image(r.error_lines())
    assert sorted(errs) == sorted(bad), f"errors for {sorted(errs)}, want {sorted(bad)}"
    # Not an image: refused before sending (no status), or by the gateway (400).
    for e in errs.values():
        check_err_line(e, retryable=False, status=(None, 400), since=since)


# ---------------------------------------------------------------------------- tests

def test_directory_tree_through_the_gateway(cluster, tmp_path):
    w = cluster.worker()
    g = cluster.gateway([w])
    root = tmp_path / "images"
    images, bad, _ignored = make_tree(root)
    out = tmp_path / "out" / "captions.jsonl"
    out.parent.mkdir()

    t0 = time.time()
    r = caption(cluster, root, g.base_url, out, "--n", "2", "--max-tokens", "6").ok()
    assert r.errors == tmp_path / "out" / "captions.errors.jsonl"
    assert r.errors.exists(), f"no errors file {r.errors.name}: {sorted(p.name for p in out.parent.iterdir())}"
    check_tree_output(r, images, bad, n=2, max_tokens=6, since=t0)
    check_summary(r, captioned=len(images), skipped=0, failed=len(bad),
                  truncated={len(images), 2 * len(images)})
    # One request per real image (n=2 is one request); the bad ones never reach the worker.
    assert w.requests() == len(images), w.stats()
    body = w.last_request()["body"]
    assert body["model"] == MODEL and body["n"] == 2 and body["max_tokens"] == 6, body


def test_rerun_skips_done_images_and_redoes_a_torn_line(cluster, tmp_path):
    w = cluster.worker()
    g = cluster.gateway([w])
    root = tmp_path / "images"
    images, bad, _ = make_tree(root)
    out = tmp_path / "captions.jsonl"
    flags = ("--n", "2", "--max-tokens", "4")

    t0 = time.time()
    first = caption(cluster, root, g.base_url, out, *flags).ok()
    check_tree_output(first, images, bad, n=2, max_tokens=4, since=t0)
    sent = w.requests()
    assert sent == len(images), w.stats()
    out_bytes, err_bytes = out.read_bytes(), first.errors.read_bytes()

    # The same command again: nothing is sent, nothing is written.
    again = caption(cluster, root, g.base_url, out, *flags).ok()
    assert w.requests() == sent, "a re-run sent requests for images already done"
    assert out.read_bytes() == out_bytes, "a re-run changed the output"
    assert again.errors.read_bytes() == err_bytes, "a re-run changed the errors file"
    check_summary(again, captioned=0, skipped=len(images) + len(bad), failed=0, truncated=0)

    # A torn last line (a kill mid-write): it is cut and that image alone is redone.
    cut = out_bytes.rstrip(b"\n").rfind(b"\n") + 1  # start of the last line
    torn_key = json.loads(out_bytes[cut:])["image"]
    old_hash = json.loads(out_bytes[cut:])["hash"]
    out.write_bytes(out_bytes[: cut + 25])
    t1 = time.time()
    redo = caption(cluster, root, g.base_url, out, *flags).ok()
    assert w.requests() == sent + 1, (w.requests(), sent)
    data = out.read_bytes()
    assert data.startswith(out_bytes[:cut]), "the complete lines before the torn one changed"
    lines = by_image(redo.lines())
    assert sorted(lines) == sorted(images), sorted(lines)
    check_out_line(lines[torn_key], n=2, max_tokens=4, since=t1)
    assert lines[torn_key]["hash"] == old_hash
    check_summary(redo, captioned=1, skipped=len(images) - 1 + len(bad), failed=0,
                  truncated={1, 2})

    # A new image in the tree: only it is sent.
    new = image_bytes("WEBP", (30, 30), color=(1, 2, 3))
    write(root / "sub" / "new.webp", new)
    more = caption(cluster, root, g.base_url, out, *flags).ok()
    assert w.requests() == sent + 2, (w.requests(), sent)
    lines = by_image(more.lines())
    assert sorted(lines) == sorted([*images, "sub/new.webp"]), sorted(lines)
    check_summary(more, captioned=1, skipped=len(images) + len(bad), failed=0, truncated={1, 2})
    assert more.errors.read_bytes() == err_bytes


def test_defaults_and_request_shape(cluster, tmp_path):
    """Straight at the worker, so the request it sees is the command's own: the default prompt,
    system message, n, max_tokens, temperature, top_p and concurrency; then every one set."""
    w = cluster.worker(latency_ms=150)
    root = tmp_path / "flat"
    imgs = distinct_pngs(20)
    for i, data in enumerate(imgs):
        write(root / f"img-{i:02d}.png", data)
    out = tmp_path / "out.jsonl"
    t0 = time.time()
    r = caption(cluster, root, worker_base_url(w), out).ok()
    lines = by_image(r.lines())
    assert sorted(lines) == [f"img-{i:02d}.png" for i in range(20)]
    for o in lines.values():
        check_out_line(o, since=t0, min_latency_ms=150)
    check_summary(r, captioned=20, skipped=0, failed=0, truncated=20)
    assert r.error_lines() == []
    stats = w.stats()
    assert stats["requests"] == 20, stats
    assert stats["max_in_flight"] == DEFAULT_CONCURRENCY, stats
    # Not a terminal: plain lines, no bar redrawn with \r, no colours.
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr, r.stderr[-500:]

    body = w.last_request()["body"]
    assert body["model"] == MODEL, body
    assert body["n"] == 1 and body["max_tokens"] == DEFAULT_MAX_TOKENS, body
    assert body["temperature"] == 1.0 and body["top_p"] == 1.0, body
    urls = {elide("data:image;base64," + base64.b64encode(d).decode()) for d in imgs}
    msgs = body["messages"]
    assert len(msgs) == 2, msgs
    assert msgs[0] == {"role": "system", "content": DEFAULT_SYSTEM}, msgs[0]
    user = msgs[1]
    assert user["role"] == "user" and len(user["content"]) == 2, user
    img_part, text_part = user["content"]
    assert img_part["type"] == "image_url" and img_part["image_url"]["url"] in urls, img_part
    assert text_part == {"type": "text", "text": DEFAULT_PROMPT}, text_part

    # Every parameter set, on a fresh worker (max_in_flight is a high-water mark).
    w2 = cluster.worker(latency_ms=100)
    prompt, system = "Décris l'image en une phrase.", "You caption images. \u2603"
    out2 = tmp_path / "custom.jsonl"
    t1 = time.time()
    r2 = caption(cluster, root, worker_base_url(w2), out2, "--prompt", prompt, "--system", system,
                 "--n", "3", "--max-tokens", "5", "--temperature", "0.7", "--top-p", "0.9",
                 "--concurrency", "3").ok()
    lines2 = by_image(r2.lines())
    assert sorted(lines2) == sorted(lines)
    for k, o in lines2.items():
        check_out_line(o, n=3, max_tokens=5, prompt=prompt, system=system, temperature=0.7,
                       top_p=0.9, since=t1, min_latency_ms=100)
        assert o["hash"] == lines[k]["hash"], k
    check_summary(r2, captioned=20, skipped=0, failed=0, truncated={20, 60})
    stats2 = w2.stats()
    assert stats2["requests"] == 20 and stats2["max_in_flight"] == 3, stats2
    body2 = w2.last_request()["body"]
    assert (body2["n"], body2["max_tokens"], body2["temperature"], body2["top_p"]) == (3, 5, 0.7, 0.9), body2
    assert body2["messages"][0] == {"role": "system", "content": system}, body2["messages"]
    assert body2["messages"][1]["content"][1] == {"type": "text", "text": prompt}, body2["messages"]
    assert body2["messages"][1]["content"][0]["image_url"]["url"] in urls


def test_jsonl_manifest_and_json_list(cluster, tmp_path):
    w = cluster.worker()
    g = cluster.gateway([w])
    pool = tmp_path / "pool"
    write(pool / "x" / "one.png", image_bytes("PNG", (40, 40), color=(9, 9, 9)))
    write(pool / "two.jpg", image_bytes("JPEG", (40, 40), color=(200, 100, 0)))
    far = write(tmp_path / "elsewhere" / "far.webp", image_bytes("WEBP", (40, 40), color=(0, 0, 255)))

    # A manifest away from the images: paths relative to --image-root, or absolute.
    manifest = tmp_path / "manifests" / "list.jsonl"
    rows = [{"id": 1, "path": "x/one.png", "image": "decoy/ignored.png"},
            {"id": 2, "path": "two.jpg", "note": "a jpeg"},
            {"id": 3, "path": str(far)}]
    write(manifest, "".join(json.dumps(r) + "\n" for r in rows).encode())
    out = tmp_path / "manifest-out.jsonl"
    t0 = time.time()
    r = caption(cluster, manifest, g.base_url, out, "--image-field", "path",
                "--image-root", str(pool), "--max-tokens", "3").ok()
    lines = by_image(r.lines())
    # The key of a listed image is its path as the manifest gives it.
    assert sorted(lines) == sorted(["x/one.png", "two.jpg", str(far)]), sorted(lines)
    for o in lines.values():
        check_out_line(o, max_tokens=3, since=t0)
    assert len({o["hash"] for o in lines.values()}) == 3
    assert r.error_lines() == []
    check_summary(r, captioned=3, skipped=0, failed=0, truncated=3)
    assert w.requests() == 3

    # A .json array; paths relative to its own directory (no --image-root); a missing file
    # goes to the errors file, not retryable, and is not sent.
    listing = write(pool / "list.json", json.dumps(["x/one.png", "missing.png", "two.jpg"]).encode())
    out2 = tmp_path / "list-out.jsonl"
    t1 = time.time()
    r2 = caption(cluster, listing, g.base_url, out2, "--max-tokens", "3").ok()
    lines2 = by_image(r2.lines())
    assert sorted(lines2) == ["two.jpg", "x/one.png"], sorted(lines2)
    for k, o in lines2.items():
        check_out_line(o, max_tokens=3, since=t1)
        assert o["hash"] == lines[k]["hash"], k  # the hash is of the bytes
    errs = r2.error_lines()
    assert [e["image"] for e in errs] == ["missing.png"], errs
    check_err_line(errs[0], retryable=False, status=None, since=t1)
    check_summary(r2, captioned=2, skipped=0, failed=1, truncated=2)
    assert w.requests() == 5

    # Re-run of the list: the missing file is not retried.
    r3 = caption(cluster, listing, g.base_url, out2, "--max-tokens", "3").ok()
    check_summary(r3, captioned=0, skipped=3, failed=0, truncated=0)
    assert w.requests() == 5
    assert len(r3.error_lines()) == 1


def test_shards_partition_the_input(cluster, tmp_path):
    w = cluster.worker()
    root = tmp_path / "flat"
    names = [f"img-{i:02d}.png" for i in range(12)]
    for name, data in zip(names, distinct_pngs(12)):
        write(root / name, data)
    base = worker_base_url(w)

    r0 = caption(cluster, root, base, tmp_path / "s0.jsonl", "--shard", "0/2", "--max-tokens", "2").ok()
    r1 = caption(cluster, root, base, tmp_path / "s1.jsonl", "--shard", "1/2", "--max-tokens", "2").ok()
    k0, k1 = set(by_image(r0.lines())), set(by_image(r1.lines()))
    assert not k0 & k1, f"in both shards: {sorted(k0 & k1)}"
    assert k0 | k1 == set(names), sorted(set(names) - (k0 | k1))
    # Position in sorted order mod N (a flat tree of same-length names: one order only).
    assert sorted(k0) == names[0::2], sorted(k0)
    assert sorted(k1) == names[1::2], sorted(k1)
    check_summary(r0, captioned=6, skipped=0, failed=0, truncated=6)
    check_summary(r1, captioned=6, skipped=0, failed=0, truncated=6)
    assert w.requests() == 12, "a shard sent images of the other"

    # `--shard N`: the index from the Kubernetes indexed Job's JOB_COMPLETION_INDEX.
    rj = caption(cluster, root, base, tmp_path / "sj.jsonl", "--shard", "2", "--max-tokens", "2",
                 env={"JOB_COMPLETION_INDEX": "1"}).ok()
    kj = by_image(rj.lines())
    assert sorted(kj) == sorted(k1), sorted(kj)
    for o in kj.values():
        check_out_line(o, max_tokens=2)
    check_summary(rj, captioned=6, skipped=0, failed=0, truncated=6)
    assert w.requests() == 18


def test_sigkill_mid_run_then_rerun_exactly_once(cluster, tmp_path):
    n_images, concurrency, latency_ms = 40, 4, 200
    w = cluster.worker(latency_ms=latency_ms)
    root = tmp_path / "flat"
    names = [f"img-{i:02d}.png" for i in range(n_images)]
    for name, data in zip(names, distinct_pngs(n_images)):
        write(root / name, data)
    out = tmp_path / "out.jsonl"
    flags = ("--concurrency", str(concurrency), "--max-tokens", "3")

    p = start_caption(cluster, root, worker_base_url(w), out, *flags)
    poll(lambda: out.exists() and out.read_bytes().count(b"\n") >= 8, 30, interval=0.02,
         what="8 lines in the output")
    os.kill(p.popen.pid, signal.SIGKILL)
    assert p.popen.wait(timeout=5) == -signal.SIGKILL
    p.stop()
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    kept = [json.loads(l) for l in complete.decode().splitlines()]
    assert 8 <= len(kept) < n_images, f"{len(kept)} lines at the kill: it did not land mid-run"
    assert len({k["image"] for k in kept}) == len(kept)
    # Simulate a kill in the middle of writing a line.
    with open(out, "ab") as f:
        f.write(b'{"image": "x')
    print(f"sigkill: {len(kept)} lines at the kill, worker saw {w.requests()}")

    t1 = time.time()
    r = caption(cluster, root, worker_base_url(w), out, *flags).ok()
    lines = by_image(r.lines())  # every line parses, none twice
    assert sorted(lines) == names, (sorted(set(names) - set(lines)), sorted(set(lines) - set(names)))
    for o in lines.values():
        check_out_line(o, max_tokens=3, min_latency_ms=latency_ms)
    assert out.read_bytes().startswith(complete), "complete lines from before the kill changed"
    check_summary(r, captioned=n_images - len(kept), skipped=len(kept), failed=0,
                  truncated=n_images - len(kept))
    kept_keys = {x["image"] for x in kept}
    redone = [o for k, o in lines.items() if k not in kept_keys]
    assert len(redone) == n_images - len(kept) and all(o["time"] >= t1 - 1 for o in redone)
    assert r.error_lines() == []
    stats = w.stats()
    print(f"sigkill: worker saw {stats['requests']} requests for {n_images} images")
    assert n_images <= stats["requests"] <= n_images + concurrency, stats
    assert stats["max_in_flight"] <= concurrency, stats


def test_503s_are_retried_until_they_pass(cluster, tmp_path):
    """Deterministic: every request fails (503) until the test has seen each image fail about
    twice, then the worker heals; each image ends in the output exactly once."""
    n_images = 6
    w = cluster.worker(fail_rate=1.0, fail_status=503)
    root = tmp_path / "flat"
    for i, data in enumerate(distinct_pngs(n_images)):
        write(root / f"img-{i}.png", data)
    out = tmp_path / "out.jsonl"
    p = start_caption(cluster, root, worker_base_url(w), out, "--max-retries", "20",
                      "--max-tokens", "2")
    poll(lambda: w.stats()["failed"] >= 2 * n_images, 25, interval=0.05,
         what=f"{2 * n_images} failed requests (retries)")
    assert p.alive(), f"caption ended while its requests were failing:\n{p.tail()}"
    w.control(fail_rate=0.0)
    r = p.wait(45).ok()
    lines = by_image(r.lines())
    assert sorted(lines) == [f"img-{i}.png" for i in range(n_images)]
    for o in lines.values():
        check_out_line(o, max_tokens=2)
    assert r.error_lines() == [], r.error_lines()
    check_summary(r, captioned=n_images, skipped=0, failed=0, truncated=n_images)
    stats = w.stats()
    assert stats["requests"] - stats["failed"] == n_images, stats


def test_503s_past_max_retries_are_retryable_and_redone(cluster, tmp_path):
    n_images, retries = 4, 2
    w = cluster.worker(fail_rate=1.0, fail_status=503)
    root = tmp_path / "flat"
    for i, data in enumerate(distinct_pngs(n_images)):
        write(root / f"img-{i}.png", data)
    out = tmp_path / "out.jsonl"
    flags = ("--max-retries", str(retries), "--max-tokens", "2")

    t0 = time.time()
    r = caption(cluster, root, worker_base_url(w), out, *flags).ok()
    assert r.lines() == []
    errs = by_image(r.error_lines())
    assert sorted(errs) == [f"img-{i}.png" for i in range(n_images)], sorted(errs)
    for e in errs.values():
        check_err_line(e, retryable=True, status=503, since=t0)
        assert "injected failure" in e["error"], e
    check_summary(r, captioned=0, skipped=0, failed=n_images, truncated=0)
    # The first try and --max-retries more, no more.
    assert w.requests() == n_images * (retries + 1), w.stats()

    # Healed: a re-run tries them again.
    w.control(fail_rate=0.0)
    before = w.requests()
    r2 = caption(cluster, root, worker_base_url(w), out, *flags).ok()
    assert w.requests() == before + n_images, (w.requests(), before)
    lines = by_image(r2.lines())
    assert sorted(lines) == sorted(errs)
    for o in lines.values():
        check_out_line(o, max_tokens=2)
    check_summary(r2, captioned=n_images, skipped=0, failed=0, truncated=n_images)

    # And then they are done.
    r3 = caption(cluster, root, worker_base_url(w), out, *flags).ok()
    assert w.requests() == before + n_images
    check_summary(r3, captioned=0, skipped=n_images, failed=0, truncated=0)


def test_400s_are_not_retried_nor_resent(cluster, tmp_path):
    n_images = 4
    w = cluster.worker(fail_rate=1.0, fail_status=400)
    root = tmp_path / "flat"
    for i, data in enumerate(distinct_pngs(n_images)):
        write(root / f"img-{i}.png", data)
    out = tmp_path / "captions.out"  # no .jsonl suffix: errors in captions.out.errors.jsonl
    flags = ("--max-retries", "5", "--max-tokens", "2")

    t0 = time.time()
    r = caption(cluster, root, worker_base_url(w), out, *flags).ok()
    assert r.errors == tmp_path / "captions.out.errors.jsonl"
    assert r.errors.exists(), sorted(p.name for p in tmp_path.iterdir())
    assert r.lines() == []
    errs = by_image(r.error_lines())
    assert sorted(errs) == [f"img-{i}.png" for i in range(n_images)], sorted(errs)
    for e in errs.values():
        check_err_line(e, retryable=False, status=400, since=t0)
        assert "injected failure" in e["error"], e
    check_summary(r, captioned=0, skipped=0, failed=n_images, truncated=0)
    assert w.requests() == n_images, "a 400 was retried"

    w.control(fail_rate=0.0)
    r2 = caption(cluster, root, worker_base_url(w), out, *flags).ok()
    assert w.requests() == n_images, "a re-run re-sent images the server refused with 400"
    check_summary(r2, captioned=0, skipped=n_images, failed=0, truncated=0)
    assert len(r2.error_lines()) == n_images


def test_images_over_the_gateways_limit_get_its_413(cluster, tmp_path):
    limit, key = 4096, "sk-caption-e2e"
    w = cluster.worker()
    g = cluster.gateway([w], "--max-image-bytes", str(limit), api_key=key)
    root = tmp_path / "images"
    small = {f"small-{i}.png": image_bytes("PNG", (40 + i, 40), mode="1") for i in range(3)}
    big = {"big.png": image_bytes("PNG", (64, 48), noise=True),
           "big.bmp": image_bytes("BMP", (64, 48), color=(1, 2, 3))}
    assert all(len(d) < limit // 2 for d in small.values()), [len(d) for d in small.values()]
    assert all(len(d) > 2 * limit for d in big.values()), [len(d) for d in big.values()]
    for k, d in {**small, **big}.items():
        write(root / k, d)
    out = tmp_path / "out.jsonl"
    rejected = tmp_path / "rejected.jsonl"
    flags = ("--api-key", key, "--errors", str(rejected), "--max-tokens", "2")

    t0 = time.time()
    r = caption(cluster, root, g.base_url, out, *flags).ok()
    assert r.errors == rejected
    lines = by_image(r.lines())
    assert sorted(lines) == sorted(small), sorted(lines)
    for o in lines.values():
        check_out_line(o, max_tokens=2, since=t0)
    errs = by_image(r.error_lines())
    assert sorted(errs) == sorted(big), sorted(errs)
    for e in errs.values():
        check_err_line(e, retryable=False, status=413, since=t0)
        # The gateway's own message (src/validate/images.rs).
        assert f"the limit is {limit} bytes" in e["error"], e
    assert not default_errors_path(out).exists(), "errors written to the default path despite --errors"
    check_summary(r, captioned=len(small), skipped=0, failed=len(big), truncated=len(small))
    assert w.requests() == len(small), "an image over the limit reached the worker"

    r2 = caption(cluster, root, g.base_url, out, *flags).ok()
    check_summary(r2, captioned=0, skipped=len(small) + len(big), failed=0, truncated=0)
    assert w.requests() == len(small)
