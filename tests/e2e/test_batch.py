"""The OpenAI Files and Batch APIs served by the gateway (issue 10), with the real openai client
against the gateway and the fake worker: files upload/list/retrieve/content/delete; a batch of
text and image lines completing with exact `request_counts` and `usage`; every validation error
code with its line and param; bad images in the error file with the synchronous status and
envelope; cancel mid-run; expiry with a short window; list pagination; 404 envelopes; a SIGKILL
of the gateway in the middle of a 2,000-line batch and a restart on the same `--data-dir`
(exactly once per `custom_id`); and interactive latency while a batch saturates the workers.

Every wait is bounded (`poll`); every batch is read back raw (plain JSON over httpx) as well as
through the client, so a key that is missing cannot hide behind the client's defaults. Each poll
of a batch also checks the invariants that hold at every moment: every key present, only the
allowed status transitions, each `*_at` set once and never changed, counts never going down."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections import Counter

import openai
import pytest

from e2e_util import caption_messages, data_url, image_bytes, make_client, poll

MODEL = "caprl"
ENDPOINT = "/v1/chat/completions"

# Every key the Batch object always has (null when unset).
BATCH_KEYS = {
    "id", "object", "endpoint", "model", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    "request_counts", "usage", "metadata",
}
FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at",
             "status_details"}
# The `*_at` set when each status is entered.
STATUS_AT = {
    "in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
    "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}
AT_KEYS = ["created_at", "expires_at", *STATUS_AT.values()]
# The allowed transitions. finalizing -> cancelling: the spec's Cancel paragraph allows a cancel
# on a finalizing batch (200 cancelling), though its transition list omits it.
NEXT = {
    "validating": {"in_progress", "failed", "cancelling"},
    "in_progress": {"finalizing", "cancelling", "expired"},
    "finalizing": {"completed", "cancelling"},
    "cancelling": {"cancelled"},
}
TERMINAL = {"completed", "failed", "expired", "cancelled"}


# ---------------------------------------------------------------------------- helpers

def reachable(a: str, b: str) -> bool:
    """b is a (possibly skipped-over) successor of a: polling may miss short-lived statuses."""
    seen, todo = set(), [a]
    while todo:
        s = todo.pop()
        for n in NEXT.get(s, ()):
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return False


def start_gateway(cluster, workers, data_dir, *flags):
    """The gateway in front of `workers`, storing files and batches under `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return cluster.gateway(workers, "--data-dir", str(data_dir), *flags)


def line(custom_id: str, messages=None, **body) -> dict:
    """One batch input line for the chat endpoint."""
    b = {"model": MODEL, "messages": messages or [{"role": "user", "content": f"hi {custom_id}"}]}
    b.update(body)
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": b}


def jsonl(lines) -> bytes:
    """Lines (dicts, or raw strings written as they are) as a .jsonl file's bytes."""
    return "".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines).encode()


def upload(client, lines, name: str = "in.jsonl") -> str:
    f = client.files.create(file=(name, jsonl(lines)), purpose="batch")
    assert f.purpose == "batch" and f.status == "processed", f
    return f.id


def create_batch(client, file_id: str, **kw):
    return client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h", **kw)


def read_jsonl(client, file_id: str | None) -> list[dict]:
    """A batch output or error file's lines, each parsed (a torn line fails here)."""
    if file_id is None:
        return []
    f = client.files.retrieve(file_id)
    assert f.purpose == "batch_output", f
    data = client.files.content(file_id).content
    assert f.bytes == len(data), (f.bytes, len(data))
    assert data == b"" or data.endswith(b"\n"), data[-200:]
    return [json.loads(l) for l in data.decode().splitlines()]


def check_envelope(body: dict, *, code: str | None = None, param=...) -> dict:
    """The OpenAI error envelope; `code`/`param` checked when given."""
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if code is not None:
        assert err["code"] == code, err
    if param is not ...:
        assert err["param"] == param, err
    return err


def check_usage(b: dict, out: list[dict]) -> None:
    """The batch's `usage` is the sum of its output lines' `body.usage`, in the batch shape."""
    u = b["usage"]
    assert set(u) >= {"input_tokens", "output_tokens", "total_tokens", "input_tokens_details",
                      "output_tokens_details"}, u
    bodies = [o["response"]["body"]["usage"] for o in out]
    assert u["input_tokens"] == sum(x["prompt_tokens"] for x in bodies), (u, len(out))
    assert u["output_tokens"] == sum(x["completion_tokens"] for x in bodies), (u, len(out))
    assert u["total_tokens"] == sum(x["total_tokens"] for x in bodies), (u, len(out))
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"], u
    # The fake worker reports no cached or reasoning tokens.
    assert u["input_tokens_details"] == {"cached_tokens": 0}, u
    assert u["output_tokens_details"] == {"reasoning_tokens": 0}, u


def check_output_line(o: dict) -> dict:
    """A successful line: `{"id", "custom_id", "response": {200, request_id, body}, "error": null}`."""
    assert set(o) >= {"id", "custom_id", "response", "error"}, o
    assert isinstance(o["id"], str) and o["id"].startswith("batch_req_"), o
    assert o["error"] is None, o
    r = o["response"]
    assert r["status_code"] == 200, r
    assert isinstance(r["request_id"], str) and r["request_id"], r
    body = r["body"]
    assert body["object"] == "chat.completion", body
    assert body["model"] == MODEL, body
    return body


def check_not_executed(e: dict, code: str) -> None:
    """A cancelled or expired line: `{"response": null, "error": {"code", "message"}}`."""
    assert isinstance(e["custom_id"], str), e
    assert e["response"] is None, e
    assert e["error"]["code"] == code, e
    assert isinstance(e["error"]["message"], str) and e["error"]["message"], e


def exactly_once(out: list[dict], err: list[dict], custom_ids: list[str]) -> None:
    """Every input custom_id in exactly one line of exactly one of the two files."""
    seen = [o["custom_id"] for o in out] + [e["custom_id"] for e in err]
    dups = {c for c, k in Counter(seen).items() if k > 1}
    assert not dups, f"{len(dups)} custom_ids more than once, e.g. {sorted(dups)[:5]}"
    assert sorted(seen) == sorted(custom_ids), (
        f"missing {sorted(set(custom_ids) - set(seen))[:5]}, extra {sorted(set(seen) - set(custom_ids))[:5]}"
    )


class BatchWatch:
    """Reads one batch raw (GET /v1/batches/{id}) and checks, at every read, the invariants of
    the contract: every key present, only allowed transitions, each `*_at` set once, counts
    never decreasing. `gw` can be swapped for a restarted gateway; the history is kept."""

    def __init__(self, gw, batch_id: str):
        self.gw = gw
        self.id = batch_id
        self.statuses: list[str] = []
        self.at: dict[str, int] = {}
        self.done = 0
        self.last: dict | None = None

    def get(self) -> dict:
        r = self.gw.get(f"/v1/batches/{self.id}")
        assert r.status_code == 200, r.text
        b = r.json()
        self.check(b)
        return b

    def check(self, b: dict) -> None:
        missing = BATCH_KEYS - set(b)
        assert not missing, f"batch lacks {sorted(missing)}: {b}"
        assert b["id"] == self.id and b["object"] == "batch", b
        s = b["status"]
        if not self.statuses or self.statuses[-1] != s:
            if self.statuses:
                prev = self.statuses[-1]
                assert reachable(prev, s), f"transition {prev} -> {s} (seen {self.statuses})"
            else:
                assert s in NEXT or s in TERMINAL, s
            self.statuses.append(s)
        for k in AT_KEYS:
            v = b[k]
            if k in self.at:
                assert v == self.at[k], f"{k} changed from {self.at[k]} to {v}"
            elif v is not None:
                assert isinstance(v, int) and not isinstance(v, bool), (k, v)
                self.at[k] = v
        # The `*_at` of the current status is set; those of statuses not reachable are null.
        if s in STATUS_AT:
            assert b[STATUS_AT[s]] is not None, (s, b)
        rc = b["request_counts"]
        assert set(rc) >= {"total", "completed", "failed"}, rc
        done = rc["completed"] + rc["failed"]
        assert done >= self.done, f"request_counts went down: {self.done} -> {done} ({rc})"
        assert done <= rc["total"] or s in ("validating", "failed"), rc
        self.done = done
        self.last = b

    def until(self, pred, timeout: float, what: str, interval: float = 0.1) -> dict:
        def cond():
            b = self.get()
            return b if pred(b) else None
        return poll(cond, timeout, interval=interval, what=f"batch {self.id}: {what}; seen {self.statuses}")

    def terminal(self, timeout: float) -> dict:
        return self.until(lambda b: b["status"] in TERMINAL, timeout, "a terminal status")


# ---------------------------------------------------------------------------- files

def test_files_upload_list_retrieve_content_delete(cluster, tmp_path):
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data")
    client = g.openai()
    now = time.time()

    small = jsonl([line("a-1"), line("a-2")])
    # Non-ASCII, no trailing newline, CRLF: the exact bytes come back.
    odd = ('{"custom_id": "caf\u00e9", "method": "POST", "url": "/v1/chat/completions", '
           '"body": {"model": "caprl", "messages": [{"role": "user", "content": "\u00e9t\u00e9 \u2603"}]}}\r\n'
           + json.dumps(line("b-2"))).encode()
    big = jsonl(line(f"c-{i:06d}", max_tokens=1) for i in range(12_000))  # ~1.5 MB
    assert len(big) > 1_000_000

    raw = client.files.with_raw_response.create(file=("a.jsonl", small), purpose="batch")
    assert raw.http_response.status_code == 200, raw.http_response.text
    a_json = raw.http_response.json()
    assert set(a_json) >= FILE_KEYS, a_json
    a = raw.parse()
    assert a.id.startswith("file-"), a.id
    assert a.object == "file"
    assert a.bytes == len(small)
    assert a.filename == "a.jsonl"
    assert a.purpose == "batch"
    assert a.status == "processed"
    assert isinstance(a.created_at, int) and abs(a.created_at - now) < 60, a.created_at
    b = client.files.create(file=("b.jsonl", odd), purpose="batch")
    c = client.files.create(file=("c.jsonl", big), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 3600})
    assert c.bytes == len(big)
    assert c.expires_at == c.created_at + 3600, (c.created_at, c.expires_at)
    ids = [a.id, b.id, c.id]
    assert len(set(ids)) == 3

    # Retrieve: the same object; content: the exact bytes.
    for f, data in ((a, small), (b, odd), (c, big)):
        got = client.files.retrieve(f.id)
        assert got.model_dump() == f.model_dump(), (got, f)
        assert client.files.content(f.id).content == data, f.filename
    raw_get = g.get(f"/v1/files/{a.id}")
    assert raw_get.status_code == 200 and set(raw_get.json()) >= FILE_KEYS, raw_get.text

    # A 2-line batch makes a batch_output file, for the purpose filter.
    batch = create_batch(client, a.id)
    done = BatchWatch(g, batch.id).terminal(20)
    assert done["status"] == "completed", done
    outputs = [x for x in (done["output_file_id"], done["error_file_id"]) if x is not None]
    assert done["output_file_id"] is not None

    def listed(**params) -> dict:
        r = g.get("/v1/files", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list", body
        for f in body["data"]:
            assert set(f) >= FILE_KEYS, f
        return body

    assert [f["id"] for f in listed(purpose="batch", order="asc")["data"]] == ids
    assert [f["id"] for f in listed(purpose="batch", order="desc")["data"]] == ids[::-1]
    assert sorted(f["id"] for f in listed(purpose="batch_output")["data"]) == sorted(outputs)
    assert all(f["purpose"] == "batch_output" for f in listed(purpose="batch_output")["data"])
    assert sorted(f["id"] for f in listed()["data"]) == sorted(ids + outputs)

    # limit + after, both orders.
    p1 = listed(purpose="batch", order="asc", limit=2)
    assert [f["id"] for f in p1["data"]] == ids[:2] and p1["has_more"] is True, p1
    p2 = listed(purpose="batch", order="asc", limit=2, after=ids[1])
    assert [f["id"] for f in p2["data"]] == ids[2:] and p2["has_more"] is False, p2
    p3 = listed(purpose="batch", order="desc", limit=1, after=ids[2])
    assert [f["id"] for f in p3["data"]] == [ids[1]] and p3["has_more"] is True, p3
    # The client's own pagination walks the same pages.
    page = client.files.list(purpose="batch", order="asc", limit=2)
    assert [f.id for f in page.data] == ids[:2]
    assert [f.id for f in page] == ids  # iterating a page walks every page

    # A batch input file must be .jsonl.
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("in.txt", small), purpose="batch")
    assert info.value.status_code == 400
    check_envelope(info.value.response.json())

    # Delete; then it is gone everywhere, and a second delete is 404.
    d = client.files.delete(b.id)
    assert (d.id, d.object, d.deleted) == (b.id, "file", True), d
    assert b.id not in [f["id"] for f in listed()["data"]]
    assert [f["id"] for f in listed(purpose="batch", order="asc")["data"]] == [a.id, c.id]

    for fid in (b.id, "file-doesnotexist0000000000"):
        for call in (client.files.retrieve, client.files.content, client.files.delete):
            with pytest.raises(openai.NotFoundError) as info:
                call(fid)
            assert info.value.status_code == 404, (call, fid)
            check_envelope(info.value.response.json())
    # The others are untouched.
    assert client.files.content(a.id).content == small
    assert client.files.content(c.id).content == big


def test_file_size_limit_and_quota(cluster, tmp_path):
    """`--max-file-bytes` refuses a larger upload; `--files-quota-bytes` refuses an upload that
    would exceed the quota with a clear 4xx, and deleting a file makes room again."""
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data", "--max-file-bytes", "1000",
                      "--files-quota-bytes", "3000")
    client = g.openai()

    def sized(n: int) -> bytes:
        head = b'{"custom_id": "x", "pad": "'
        tail = b'"}\n'
        return head + b"p" * (n - len(head) - len(tail)) + tail

    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("big.jsonl", sized(1001)), purpose="batch")
    assert 400 <= info.value.status_code < 500, info.value.status_code
    check_envelope(info.value.response.json())

    kept = [client.files.create(file=(f"f{i}.jsonl", sized(900)), purpose="batch") for i in range(3)]
    assert [f.bytes for f in kept] == [900] * 3
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("over.jsonl", sized(900)), purpose="batch")
    assert 400 <= info.value.status_code < 500, info.value.status_code
    check_envelope(info.value.response.json())
    # Nothing of the refused uploads was kept.
    assert sorted(f.id for f in client.files.list(purpose="batch")) == sorted(f.id for f in kept)

    client.files.delete(kept[0].id)
    again = client.files.create(file=("again.jsonl", sized(900)), purpose="batch")
    assert client.files.content(again.id).content == sized(900)


# ---------------------------------------------------------------------------- batches

def test_batch_of_text_and_image_lines_completes(cluster, tmp_path):
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data")
    client = g.openai()

    png = data_url(image_bytes("PNG", (64, 48)), "image/png")
    jpeg = data_url(image_bytes("JPEG", (80, 60)), "image/jpeg")
    lines = [line(f"text-{i}", max_tokens=3 + i) for i in range(6)]
    lines += [line(f"png-{i}", caption_messages(png), max_tokens=10 + i) for i in range(3)]
    lines += [line(f"jpeg-{i}", caption_messages(jpeg, png), max_tokens=20 + i) for i in range(3)]
    by_id = {l["custom_id"]: l for l in lines}
    fid = upload(client, lines)
    metadata = {"job": "e2e-captions", "owner": "tests"}

    raw = client.batches.with_raw_response.create(
        input_file_id=fid, endpoint=ENDPOINT, completion_window="24h", metadata=metadata)
    assert raw.http_response.status_code == 200, raw.http_response.text
    created = raw.http_response.json()
    watch = BatchWatch(g, created["id"])
    watch.check(created)
    assert created["id"].startswith("batch_"), created["id"]
    assert created["status"] == "validating", created
    assert created["endpoint"] == ENDPOINT
    assert created["input_file_id"] == fid
    assert created["completion_window"] == "24h"
    assert created["metadata"] == metadata
    assert created["expires_at"] == created["created_at"] + 86400, created
    assert abs(created["created_at"] - time.time()) < 60

    b = watch.terminal(30)
    assert b["status"] == "completed", b
    assert watch.statuses[-1] == "completed"
    assert b["request_counts"] == {"total": 12, "completed": 12, "failed": 0}, b["request_counts"]
    assert b["errors"] is None, b["errors"]
    assert b["model"] == MODEL, b["model"]
    assert b["metadata"] == metadata
    assert b["created_at"] <= b["in_progress_at"] <= b["finalizing_at"] <= b["completed_at"], b
    for k in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert b[k] is None, (k, b)
    assert b["expires_at"] == created["expires_at"]

    # The client reads the same object.
    parsed = client.batches.retrieve(b["id"])
    assert parsed.status == "completed" and parsed.request_counts.completed == 12
    assert parsed.usage is not None and parsed.usage.total_tokens == b["usage"]["total_tokens"]

    out = read_jsonl(client, b["output_file_id"])
    err = read_jsonl(client, b["error_file_id"])  # no failures: absent, or an empty file
    assert err == [], err[:3]
    exactly_once(out, err, list(by_id))
    assert len({o["id"] for o in out}) == 12, "batch_req ids repeat"
    for o in out:
        body = check_output_line(o)
        want = by_id[o["custom_id"]]["body"]["max_tokens"]
        assert body["usage"]["completion_tokens"] == want, (o["custom_id"], body["usage"])
        assert body["choices"][0]["message"]["content"].startswith(" The image"), body
    check_usage(b, out)
    assert b["usage"]["input_tokens"] > 0 and b["usage"]["output_tokens"] == sum(
        l["body"]["max_tokens"] for l in lines)
    assert w.requests() == 12, "each line reaches the worker exactly once"

    out_file = client.files.retrieve(b["output_file_id"])
    assert out_file.purpose == "batch_output" and out_file.status == "processed", out_file

    # Each body is exactly what /v1/chat/completions answers for the same request (but ids).
    for cid in ("text-2", "jpeg-1"):
        sync = g.post(ENDPOINT, json=by_id[cid]["body"])
        assert sync.status_code == 200, sync.text
        s = sync.json()
        o = next(x for x in out if x["custom_id"] == cid)["response"]["body"]
        assert set(o) == set(s), (sorted(o), sorted(s))
        for k in ("object", "model", "choices", "usage"):
            assert o[k] == s[k], (cid, k, o[k], s[k])


def _bad_lines() -> list[tuple[str, str | None, str | None]]:
    """(raw line, code, param) for one file with every kind of bad line; code None: a good line."""
    def d(x):
        return json.dumps(x)

    def without(key):
        l = line(f"no-{key}")
        del l[key]
        return d(l)

    def body_without(key, cid):
        l = line(cid)
        del l["body"][key]
        return d(l)

    return [
        (d(line("ok-1")), None, None),
        ('{"custom_id": "broken", "method": "POST", "url": ', "invalid_json_line", None),
        (without("custom_id"), "missing_required_parameter", "custom_id"),
        (without("method"), "missing_required_parameter", "method"),
        (without("url"), "missing_required_parameter", "url"),
        (without("body"), "missing_required_parameter", "body"),
        (d({**line("wrong-url"), "url": "/v1/completions"}), "invalid_url", None),
        (d(line("streamed", stream=True)), "streaming_unsupported", "body.stream"),
        (d(line("unknown-model", model="gpt-4o")), "model_not_found", "body.model"),
        (body_without("messages", "no-messages"), "invalid_request", None),
        (body_without("model", "no-model"), "invalid_request", None),
        (d(line("ok-2")), None, None),
        (d(line("ok-1", max_tokens=2)), "duplicate_custom_id", None),
    ]


def test_validation_errors_fail_the_batch_listing_every_bad_line(cluster, tmp_path):
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data")
    client = g.openai()
    spec = _bad_lines()
    f = client.files.create(file=("bad.jsonl", jsonl(raw for raw, _, _ in spec)), purpose="batch")

    # Validation happens after create: create itself succeeds.
    batch = create_batch(client, f.id)
    assert batch.status == "validating", batch
    watch = BatchWatch(g, batch.id)
    b = watch.terminal(20)
    assert b["status"] == "failed", b
    assert b["failed_at"] is not None and b["failed_at"] >= b["created_at"], b
    assert "in_progress" not in watch.statuses, watch.statuses
    for k in ("in_progress_at", "finalizing_at", "completed_at", "expired_at", "cancelling_at",
              "cancelled_at", "output_file_id", "error_file_id"):
        assert b[k] is None, (k, b)
    assert b["request_counts"] == {"total": 0, "completed": 0, "failed": 0}, b["request_counts"]

    errors = b["errors"]
    assert errors["object"] == "list", errors
    for e in errors["data"]:
        assert set(e) >= {"code", "line", "message", "param"}, e
        assert isinstance(e["message"], str) and e["message"], e
    got = {}
    for e in errors["data"]:
        assert e["line"] not in got, f"line {e['line']} reported twice: {got[e['line']]}, {e}"
        got[e["line"]] = e
    want = {i + 1: (code, param) for i, (_, code, param) in enumerate(spec) if code is not None}
    assert sorted(got) == sorted(want), (
        f"lines with errors {sorted(got)}, want {sorted(want)}: {errors['data']}")
    for n, (code, param) in want.items():
        assert got[n]["code"] == code, (n, got[n], code)
        if param is not None:
            assert got[n]["param"] == param, (n, got[n], param)
    # The client parses the same.
    parsed = client.batches.retrieve(b["id"])
    assert parsed.errors is not None and len(parsed.errors.data) == len(want)
    assert w.requests() == 0, "a batch that failed validation ran lines"

    # A failed batch is terminal: cancel is a 409 that the client must not retry.
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(b["id"])
    assert info.value.status_code == 409
    assert info.value.response.headers.get("x-should-retry") == "false"
    check_envelope(info.value.response.json())
    assert watch.get()["status"] == "failed"


def test_mismatched_model(cluster, tmp_path):
    """Two served models on one worker: a file naming both fails with `mismatched_model` on the
    first line that differs; a file of the second model alone runs on it."""
    w = cluster.worker(models=("caprl", "other"))
    g = start_gateway(cluster, [w, ("other", w)], tmp_path / "data")
    client = g.openai()
    assert sorted(m.id for m in client.models.list()) == ["caprl", "other"]

    mixed = [line("m-1"), line("m-2", model="other"), line("m-3"), line("m-4", model="nope")]
    b = BatchWatch(g, create_batch(client, upload(client, mixed)).id).terminal(20)
    assert b["status"] == "failed", b
    got = {e["line"]: e for e in b["errors"]["data"]}
    assert got[2]["code"] == "mismatched_model", b["errors"]
    assert got[4]["code"] == "model_not_found" and got[4]["param"] == "body.model", b["errors"]
    assert sorted(got) == [2, 4], b["errors"]

    others = [line(f"o-{i}", model="other", max_tokens=2) for i in range(3)]
    b = BatchWatch(g, create_batch(client, upload(client, others)).id).terminal(20)
    assert b["status"] == "completed", b
    assert b["model"] == "other", b["model"]
    out = read_jsonl(client, b["output_file_id"])
    assert sorted(o["custom_id"] for o in out) == ["o-0", "o-1", "o-2"]
    assert all(o["response"]["body"]["model"] == "other" for o in out), out
    assert w.requests() == 3


def test_bad_images_go_to_the_error_file_with_the_synchronous_answer(cluster, tmp_path):
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data", "--max-images-per-request", "2")
    client = g.openai()
    png_bytes = image_bytes("PNG", (40, 30))
    png = data_url(png_bytes)
    good = [line(f"good-{i}", max_tokens=4) for i in range(3)]
    good.append(line("good-img", caption_messages(png), max_tokens=5))
    bad = {
        "not-an-image": line("not-an-image", caption_messages(data_url(b"just some text, not pixels"))),
        "bad-base64": line("bad-base64", caption_messages("data:image/png;base64,!!!not*base64!!!")),
        "truncated": line("truncated", caption_messages(data_url(png_bytes[:12]))),
        "too-many": line("too-many", caption_messages(png, png, png)),
    }
    lines = [good[0], bad["not-an-image"], good[1], bad["bad-base64"], good[2], bad["truncated"],
             good[3], bad["too-many"]]
    fid = upload(client, lines)
    watch = BatchWatch(g, create_batch(client, fid).id)
    b = watch.terminal(30)
    assert b["status"] == "completed", b
    assert b["errors"] is None, b["errors"]
    assert b["request_counts"] == {"total": 8, "completed": 4, "failed": 4}, b["request_counts"]

    out = read_jsonl(client, b["output_file_id"])
    err = read_jsonl(client, b["error_file_id"])
    exactly_once(out, err, [l["custom_id"] for l in lines])
    assert sorted(o["custom_id"] for o in out) == sorted(l["custom_id"] for l in good)
    for o in out:
        check_output_line(o)
    check_usage(b, out)
    assert w.requests() == 4, "a line the gateway refuses must not reach the worker"

    # Each error line carries exactly the status and envelope the synchronous endpoint answers.
    for e in err:
        assert set(e) >= {"id", "custom_id", "response", "error"}, e
        assert e["id"].startswith("batch_req_"), e
        assert e["error"] is None, e
        r = e["response"]
        assert isinstance(r["request_id"], str) and r["request_id"], r
        sync = g.post(ENDPOINT, json=bad[e["custom_id"]]["body"])
        assert r["status_code"] == sync.status_code, (e["custom_id"], r, sync.text)
        check_envelope(r["body"])
        assert r["body"] == sync.json(), (e["custom_id"], r["body"], sync.json())
        if e["custom_id"] in ("not-an-image", "bad-base64", "truncated"):
            assert r["status_code"] == 400, r
            assert r["body"]["error"]["param"].startswith("messages[1].content[0]"), r["body"]
    assert w.requests() == 4, "the synchronous copies were refused too"

    # Metrics: lines by outcome and batches by status.
    def settled():
        m = g.metrics()
        return (m.sum("caprl_gateway_batch_lines_total", outcome="completed") == 4
                and m.sum("caprl_gateway_batch_lines_total", outcome="failed") == 4
                and m.sum("caprl_gateway_batches", status="completed") == 1
                and m)

    m = poll(settled, 5.0, what="caprl_gateway_batch_lines_total{completed=4,failed=4}, caprl_gateway_batches{completed}=1")
    for s in ("validating", "in_progress", "finalizing", "cancelling"):
        assert m.sum("caprl_gateway_batches", status=s) == 0, s


def test_cancel_mid_run(cluster, tmp_path):
    w = cluster.worker(latency_ms=300)
    g = start_gateway(cluster, [w], tmp_path / "data", "--max-in-flight", "4")
    client = g.openai()
    lines = [line(f"c-{i:03d}", max_tokens=2) for i in range(50)]
    watch = BatchWatch(g, create_batch(client, upload(client, lines)).id)
    watch.until(lambda b: b["request_counts"]["completed"] >= 2, 20, "2 lines completed")

    cancelled = client.batches.cancel(watch.id)
    assert cancelled.status in ("cancelling", "cancelled"), cancelled.status
    assert cancelled.cancelling_at is not None, cancelled
    watch.check(cancelled.model_dump())
    # Again while cancelling (or cancelled): 200 with the status unchanged or moved on.
    again = client.batches.cancel(watch.id)
    assert again.status in ("cancelling", "cancelled"), again.status
    assert again.cancelling_at == cancelled.cancelling_at
    watch.check(again.model_dump())

    b = watch.until(lambda b: b["status"] == "cancelled", 10, "cancelled")
    assert b["cancelling_at"] <= b["cancelled_at"], b
    assert b["in_progress_at"] is not None
    for k in ("completed_at", "failed_at", "expired_at"):
        assert b[k] is None, (k, b)
    out = read_jsonl(client, b["output_file_id"])
    err = read_jsonl(client, b["error_file_id"])
    exactly_once(out, err, [l["custom_id"] for l in lines])
    assert b["request_counts"] == {"total": 50, "completed": len(out), "failed": len(err)}, (
        b["request_counts"], len(out), len(err))
    assert len(out) >= 2 and len(err) >= 1, (len(out), len(err))
    for o in out:
        check_output_line(o)
    for e in err:
        check_not_executed(e, "batch_cancelled")
    check_usage(b, out)
    # In-flight lines finished (into the output); the rest were never started.
    s = w.stats()
    assert s["in_flight"] == 0 and s["cancelled"] == 0, s
    assert s["requests"] == len(out), (s["requests"], len(out))
    print(f"cancel: {len(out)} completed, {len(err)} cancelled")

    # Cancel on cancelled: 200, nothing changes.
    again = client.batches.cancel(watch.id)
    assert again.status == "cancelled" and again.cancelled_at == b["cancelled_at"], again
    assert watch.get()["request_counts"] == b["request_counts"]

    # Cancel on a completed batch: 409, not to be retried.
    w.control(latency_ms=0)
    done = BatchWatch(g, create_batch(client, upload(client, lines[:2])).id).terminal(20)
    assert done["status"] == "completed", done
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(done["id"])
    assert info.value.status_code == 409
    assert info.value.response.headers.get("x-should-retry") == "false"
    check_envelope(info.value.response.json())
    assert client.batches.retrieve(done["id"]).status == "completed"


def test_expiry_with_a_short_window(cluster, tmp_path):
    w = cluster.worker(latency_ms=500)
    g = start_gateway(cluster, [w], tmp_path / "data", "--batch-window-secs", "2",
                      "--max-in-flight", "4")
    client = g.openai()
    lines = [line(f"e-{i:03d}", max_tokens=2) for i in range(60)]  # ~10 s of work, 2 s window
    batch = create_batch(client, upload(client, lines))
    assert batch.completion_window == "24h"
    assert batch.expires_at == batch.created_at + 2, (batch.created_at, batch.expires_at)
    watch = BatchWatch(g, batch.id)

    b = watch.terminal(20)
    assert b["status"] == "expired", b
    assert b["expired_at"] >= b["expires_at"], b
    assert b["in_progress_at"] is not None
    for k in ("finalizing_at", "completed_at", "failed_at", "cancelling_at", "cancelled_at"):
        assert b[k] is None, (k, b)
    out = read_jsonl(client, b["output_file_id"])
    err = read_jsonl(client, b["error_file_id"])
    exactly_once(out, err, [l["custom_id"] for l in lines])
    assert b["request_counts"] == {"total": 60, "completed": len(out), "failed": len(err)}, (
        b["request_counts"], len(out), len(err))
    assert len(out) >= 1 and len(err) >= 1, (len(out), len(err))
    for o in out:
        check_output_line(o)
    for e in err:
        check_not_executed(e, "batch_expired")
    check_usage(b, out)
    # Lines in flight at expiry may finish or be dropped; none is sent twice.
    assert len(out) <= w.requests() <= len(out) + 4, (w.requests(), len(out))
    print(f"expiry: {len(out)} completed, {len(err)} expired")

    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(b["id"])
    assert info.value.status_code == 409
    check_envelope(info.value.response.json())


def test_batches_list_pagination(cluster, tmp_path):
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data")
    client = g.openai()
    fid = upload(client, [line("p-1", max_tokens=1)])
    ids = [create_batch(client, fid, metadata={"n": str(i)}).id for i in range(4)]
    newest = ids[::-1]
    assert len(set(ids)) == 4

    def listed(**params) -> dict:
        r = g.get("/v1/batches", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list", body
        assert {"data", "first_id", "last_id", "has_more"} <= set(body), body
        for b in body["data"]:
            assert BATCH_KEYS <= set(b), b
        return body

    def page(body):
        d = [b["id"] for b in body["data"]]
        return d, body["first_id"], body["last_id"], body["has_more"]

    assert page(listed()) == (newest, newest[0], newest[-1], False)
    assert page(listed(limit=2)) == (newest[:2], newest[0], newest[1], True)
    assert page(listed(limit=2, after=newest[1])) == (newest[2:], newest[2], newest[3], False)
    assert page(listed(limit=3, after=newest[0])) == (newest[1:], newest[1], newest[3], False)
    assert page(listed(limit=1, after=newest[2])) == (newest[3:], newest[3], newest[3], False)
    assert page(listed(after=newest[3])) == ([], None, None, False)
    assert page(listed(limit=4)) == (newest, newest[0], newest[3], False)
    meta = [b["metadata"] for b in listed()["data"]]
    assert meta == [{"n": str(i)} for i in (3, 2, 1, 0)], meta

    # The client's pagination walks the same.
    p = client.batches.list(limit=2)
    assert [b.id for b in p.data] == newest[:2] and p.has_more is True
    assert [b.id for b in p] == newest

    # A batch created without metadata: the key is there, null.
    plain = create_batch(client, fid)
    r = g.get(f"/v1/batches/{plain.id}").json()
    assert "metadata" in r and r["metadata"] is None, r
    assert listed(limit=1)["data"][0]["id"] == plain.id


def test_unknown_ids_are_404_envelopes(cluster, tmp_path):
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data")
    client = g.openai()
    for call in (client.batches.retrieve, client.batches.cancel):
        with pytest.raises(openai.NotFoundError) as info:
            call("batch_doesnotexist000000000000")
        assert info.value.status_code == 404
        check_envelope(info.value.response.json())
    with pytest.raises(openai.NotFoundError) as info:
        create_batch(client, "file-doesnotexist000000000000")
    assert info.value.status_code == 404
    check_envelope(info.value.response.json())
    # A deleted input file is unknown too.
    fid = upload(client, [line("x")])
    client.files.delete(fid)
    with pytest.raises(openai.NotFoundError):
        create_batch(client, fid)
    assert client.batches.list().data == []
    assert w.requests() == 0


def test_another_keys_files_and_batches_are_unknown_ids(cluster, tmp_path):
    """With two keys, each sees only its own files and batches: the other's ids are 404s with
    the envelope of an id that does not exist."""
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "team-a"\nsecret = "sk-team-a"\nfiles_and_batches = true\n'
        '[[keys]]\nname = "team-b"\nsecret = "sk-team-b"\nfiles_and_batches = true\n'
    )
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data", "--keys-file", str(keys))
    a = make_client(g, api_key="sk-team-a")
    b = make_client(g, api_key="sk-team-b")
    fid = upload(a, [line("a1")])
    batch = create_batch(a, fid)
    assert b.files.list().data == [] and b.batches.list().data == []
    for call, arg in ((b.files.retrieve, fid), (b.files.content, fid), (b.files.delete, fid),
                      (b.batches.retrieve, batch.id), (b.batches.cancel, batch.id)):
        with pytest.raises(openai.NotFoundError) as info:
            call(arg)
        err = check_envelope(info.value.response.json(), code="not_found")
        assert arg in err["message"], err
    with pytest.raises(openai.NotFoundError) as info:
        create_batch(b, fid)
    check_envelope(info.value.response.json(), code="not_found", param="input_file_id")
    done = poll(lambda: (x := a.batches.retrieve(batch.id)).status in TERMINAL and x, 20,
                what="team-a's batch ends")
    assert done.status == "completed" and done.request_counts.completed == 1, done
    assert {f.id for f in a.files.list().data} == {fid, done.output_file_id}
    assert len(read_jsonl(a, done.output_file_id)) == 1
    assert w.requests() == 1
    a.close()
    b.close()


def test_create_parameter_errors_are_400_with_param(cluster, tmp_path):
    """Only the create parameters themselves are refused at create, with `param`."""
    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data")
    client = g.openai()
    fid = upload(client, [line("x")])
    ok = {"input_file_id": fid, "endpoint": ENDPOINT, "completion_window": "24h"}
    cases = [
        ({k: v for k, v in ok.items() if k != "input_file_id"}, "input_file_id"),
        ({**ok, "endpoint": "/v1/embeddings"}, "endpoint"),
        ({**ok, "completion_window": "48h"}, "completion_window"),
        ({**ok, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({**ok, "metadata": {"k" * 65: "v"}}, "metadata"),
        ({**ok, "metadata": {"k": "v" * 513}}, "metadata"),
        ({**ok, "metadata": {"k": 3}}, "metadata"),
    ]
    for body, param in cases:
        r = g.post("/v1/batches", json=body)
        assert r.status_code == 400, (body if len(str(body)) < 300 else param, r.status_code, r.text)
        err = check_envelope(r.json())
        assert err["param"] is not None and err["param"].startswith(param), (param, err)
    assert client.batches.list().data == [], "a refused create stored a batch"
    # The limits themselves are accepted.
    edge = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    b = create_batch(client, fid, metadata=edge)
    assert b.metadata == edge


def test_sigkill_mid_batch_resumes_exactly_once(cluster, tmp_path):
    """SIGKILL the gateway in the middle of a 2,000-line batch against a slow worker, restart it
    on the same --data-dir: the batch resumes, the final files hold exactly one line per
    custom_id, and the worker saw at most 2,000 plus the lines in flight at the kill: a line is
    in flight from its start until its result is recorded, and `--batch-max-in-flight` bounds
    those."""
    n, max_in_flight = 2000, 8
    data = tmp_path / "data"
    w = cluster.worker(latency_ms=50)
    flags = ("--max-in-flight", str(max_in_flight), "--batch-max-in-flight", str(max_in_flight))
    g = start_gateway(cluster, [w], data, *flags)
    client = g.openai()
    lines = [line(f"k-{i:05d}", [{"role": "user", "content": f"{i}"}], max_tokens=1) for i in range(n)]
    batch = create_batch(client, upload(client, lines))
    watch = BatchWatch(g, batch.id)
    before = watch.until(lambda b: b["request_counts"]["completed"] >= 200, 40, "200 lines completed")
    assert before["status"] == "in_progress", before

    os.kill(g.popen.pid, signal.SIGKILL)
    assert g.popen.wait(timeout=5) == -signal.SIGKILL
    g.stop()
    at_kill = w.requests()
    print(f"sigkill: killed with {before['request_counts']} shown, worker had seen {at_kill}")

    g2 = start_gateway(cluster, [w], data, *flags)
    watch.gw = g2  # keeps the history: counts must not go back, *_at must not change
    client2 = g2.openai()
    resumed = watch.get()
    assert resumed["status"] in ("in_progress", "finalizing", "completed"), resumed
    b = watch.terminal(75)
    assert b["status"] == "completed", b
    out = read_jsonl(client2, b["output_file_id"])
    err = read_jsonl(client2, b["error_file_id"])
    seen = [o["custom_id"] for o in out] + [e["custom_id"] for e in err]
    requests = w.requests()
    print(f"sigkill: {len(out)} output lines, {len(err)} error lines, {len(set(seen))} unique "
          f"custom_ids, worker saw {requests} requests ({requests - n} re-sent; bound {max_in_flight})")
    exactly_once(out, err, [l["custom_id"] for l in lines])
    assert len(out) + len(err) == n
    assert err == [], err[:3]
    assert b["request_counts"] == {"total": n, "completed": n, "failed": 0}, b["request_counts"]
    assert len({o["id"] for o in out}) == n, "batch_req ids repeat"
    for o in out:
        check_output_line(o)
    check_usage(b, out)
    assert n <= requests <= n + max_in_flight, (requests, n, max_in_flight)
    # The same batch, the same input file, after the restart.
    assert [x.id for x in client2.batches.list()] == [batch.id]
    assert client2.files.content(batch.input_file_id).content == jsonl(lines)


def test_interactive_latency_during_a_saturating_batch(cluster, tmp_path):
    """Bulk lines take only spare capacity (--batch-share of --max-in-flight): an interactive
    request does not wait behind a batch that fills its share."""
    w = cluster.worker(latency_ms=100)
    g = start_gateway(cluster, [w], tmp_path / "data", "--max-in-flight", "8", "--batch-share", "0.75")
    client = g.openai()
    msgs = [{"role": "user", "content": "hi"}]

    def timed() -> float:
        t0 = time.perf_counter()
        r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
        dt = time.perf_counter() - t0
        assert r.usage.completion_tokens == 4
        return dt

    timed()  # warm the connection
    idle = [timed() for _ in range(7)]
    assert w.stats()["max_in_flight"] == 1

    lines = [line(f"s-{i:03d}", max_tokens=2) for i in range(400)]
    watch = BatchWatch(g, create_batch(client, upload(client, lines)).id)
    # The batch fills its share, 0.75 x 8 = 6, and never more.
    poll(lambda: w.stats()["max_in_flight"] >= 6, 15, interval=0.02, what="6 bulk lines in flight")
    assert w.stats()["max_in_flight"] == 6, w.stats()

    busy, in_flight = [], []
    for _ in range(9):
        in_flight.append(w.stats()["in_flight"])
        busy.append(timed())
    b = watch.get()
    assert b["status"] == "in_progress", b
    assert 0 < b["request_counts"]["completed"] < 400, b["request_counts"]
    assert max(in_flight) >= 1, in_flight
    assert w.stats()["max_in_flight"] <= 8, w.stats()

    idle_med, busy_med = statistics.median(idle), statistics.median(busy)
    print(f"interactive latency: idle median {idle_med * 1000:.0f} ms, during the batch "
          f"{busy_med * 1000:.0f} ms (x{busy_med / idle_med:.2f}); worker in flight {in_flight}")
    assert busy_med < 3 * idle_med, (idle, busy)


# ---------------------------------------------------------------------------- images by file id

def test_images_by_file_id_are_checked_and_sent_inline(cluster, tmp_path):
    """An image uploaded once with purpose `vision` is named in a request by id, as OpenAI's
    `{"type": "file", "file": {"file_id"}}` part or as `image_url.url`; the gateway checks it as
    it checks a data URL and sends it to the worker as one. Unknown ids, ids of files that are no
    image upload and deleted ids are 400s naming the field; a batch line can name one too."""
    import base64

    w = cluster.worker()
    g = start_gateway(cluster, [w], tmp_path / "data")
    client = g.openai()
    png = image_bytes("PNG", (64, 48), noise=True)
    image = client.files.create(file=("cat.png", png), purpose="vision")
    assert image.purpose == "vision" and image.bytes == len(png)
    expected_url = "data:image/png;base64," + base64.b64encode(png).decode()

    def sent_part() -> dict:
        body = w.last_request()["body"]
        return body["messages"][0]["content"][0]

    forms = [
        {"type": "file", "file": {"file_id": image.id}},
        {"type": "image_url", "image_url": {"url": image.id}},
    ]
    for part in forms:
        r = client.chat.completions.create(
            model=MODEL, max_tokens=4,
            messages=[{"role": "user", "content": [part, {"type": "text", "text": "Describe."}]}])
        assert r.choices[0].message.content
        got = sent_part()
        assert got["type"] == "image_url", got
        # The fake worker elides data URLs to their head and length.
        assert got["image_url"]["url"] == f"{expected_url[:32]}…({len(expected_url)} chars)", got

    text = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="batch")
    bad = [
        ({"type": "file", "file": {"file_id": "file-doesnotexist"}}, "messages[0].content[0].file.file_id"),
        ({"type": "image_url", "image_url": {"url": text.id}}, "messages[0].content[0].image_url.url"),
        ({"type": "file", "file": {}}, "messages[0].content[0].file.file_id"),
    ]
    seen_before = w.requests()
    for part, param in bad:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, max_tokens=4,
                                           messages=[{"role": "user", "content": [part]}])
        check_envelope(info.value.response.json(), param=param)
    assert w.requests() == seen_before, "a refused request reached the worker"

    # A batch line names the image by id; after the file is deleted, a new request is refused.
    lines = [line("by-id", [{"role": "user", "content": [forms[0], {"type": "text", "text": "Describe."}]}],
                  max_tokens=4)]
    batch = create_batch(client, upload(client, lines))
    b = poll(lambda: (x := client.batches.retrieve(batch.id)).status in TERMINAL and x, 20,
             what="the batch to end")
    assert b.status == "completed" and b.request_counts.completed == 1, b
    out = read_jsonl(client, b.output_file_id)
    assert out[0]["response"]["status_code"] == 200, out
    client.files.delete(image.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, max_tokens=4,
                                       messages=[{"role": "user", "content": [forms[0]]}])
    check_envelope(info.value.response.json(), param="messages[0].content[0].file.file_id")
