"""Bulk ingest (`clipserve index`): sources, the journal, retries, the pipeline through the
real model (tiny bundle, ONNX Runtime) into the real embedded Qdrant engine, through a real
gRPC server, and the crash test: random SIGKILLs of the real command, each followed by a
rerun, end with exactly the expected points."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from index_support import BackgroundServer, png, write_folder

from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.ids import image_id, text_id
from clipserve.index.ingest.cli import main as index_main
from clipserve.index.ingest.journal import Journal
from clipserve.index.ingest.retry import BadInput, RetryPolicy, Transient, call_with_retry
from clipserve.index.ingest.sources import Source
from clipserve.serving.config import ServerConfig


def all_points(index_path: Path, collection: str) -> list[Any]:
    index = EdgeIndex(index_path)
    try:
        points, token = [], None
        while True:
            page, token = index.scroll(collection, None, 500, token, False)
            points += page
            if not token:
                return points
    finally:
        index.close()


# -- sources ------------------------------------------------------------------------------


def test_folder_source_is_sorted_with_sidecar_captions(tmp_path: Path) -> None:
    write_folder(tmp_path / "f", 5)
    (tmp_path / "f" / "notes.md").write_text("not an image")
    src = Source(tmp_path / "f")
    items = list(src.items())
    assert len(src) == len(items) == 5
    keys = [it.key for it in items]
    assert keys == sorted(keys) and keys[0] == "sub0/img00000.png"
    by_key = {it.key: it for it in items}
    assert by_key["sub0/img00000.png"].caption == "picture number 0"
    assert by_key["sub1/img00001.png"].caption is None  # no sidecar
    assert [it.position for it in items] == list(range(5))
    fp = src.fingerprint()
    (tmp_path / "f" / "sub0" / "extra.png").write_bytes(png(99))
    assert Source(tmp_path / "f").fingerprint() != fp


def test_manifest_sources_turn_bad_rows_into_rejects(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(1))
    rows = [
        {"id": "a", "image": "a.png", "caption": "first", "labels": ["y", "x"]},
        {"id": "b", "caption": "only text"},
        {"id": "c", "image_b64": base64.b64encode(png(2)).decode(), "caption": "inline"},
        {"id": "d"},
        {"id": "e", "image_b64": "***"},
    ]
    lines = [json.dumps(r) for r in rows[:3]] + ["{not json"] + [json.dumps(r) for r in rows[3:]]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    items = list(Source(tmp_path / "m.jsonl").items())
    assert len(items) == 6 == len(Source(tmp_path / "m.jsonl"))
    assert items[0].image_path == tmp_path / "a.png" and items[0].payload == {
        "id": "a",
        "labels": "x|y",
    }
    assert items[1].image_path is None and items[1].caption == "only text"
    assert items[2].image_bytes == png(2)
    assert "invalid JSON" in (items[3].error or "") and items[3].key == "line 4"
    assert "neither an image nor a caption" in (items[4].error or "")
    assert "not valid base64" in (items[5].error or "")
    (tmp_path / "m.csv").write_text("image,caption,id\na.png,first,a\n,text only,b\n")
    csv_items = list(Source(tmp_path / "m.csv").items())
    assert [it.caption for it in csv_items] == ["first", "text only"]
    assert len(Source(tmp_path / "m.csv")) == 2


# -- journal and retries ------------------------------------------------------------------


def test_journal_resumes_from_its_last_whole_line(tmp_path: Path) -> None:
    run = {"source": "s", "collection": "c"}
    j = Journal(tmp_path / "j", tmp_path / "r", run)
    j.commit(10, 9, [{"position": 3, "key": "x", "reason": "bad"}])
    j.commit(10, 10, [])
    j.close()
    # A crash mid-batch: its rejects were appended, its journal line torn.
    with open(tmp_path / "r", "a") as f:
        f.write('{"position": 25, "key": "y", "reason": "uncommitted"}\n')
    with open(tmp_path / "j", "a") as f:
        f.write('{"done": 30, "poi')
    j = Journal(tmp_path / "j", tmp_path / "r", run)
    assert (j.progress.done, j.progress.points, j.progress.rejects) == (20, 19, 1)
    assert [json.loads(line)["key"] for line in (tmp_path / "r").read_text().splitlines()] == ["x"]
    j.close()
    with pytest.raises(ValueError, match="belongs to another ingest run"):
        Journal(tmp_path / "j", tmp_path / "r", {"source": "other", "collection": "c"})


def test_retry_backs_off_exponentially_with_jitter() -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise Transient("busy")
        return "ok"

    policy = RetryPolicy(attempts=5, base_s=0.1, max_s=0.3)
    assert call_with_retry(flaky, policy, rng=random.Random(0), sleep=sleeps.append) == "ok"
    assert len(calls) == 4 and len(sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(sleeps, [0.1, 0.2, 0.3], strict=True))
    assert len(set(sleeps)) == 3  # jittered, not a fixed schedule
    with pytest.raises(Transient):
        call_with_retry(lambda: (_ for _ in ()).throw(Transient("down")), RetryPolicy(attempts=3),
                        sleep=sleeps.append)  # fmt: skip
    with pytest.raises(BadInput):  # not retried
        call_with_retry(lambda: (_ for _ in ()).throw(BadInput("no")), policy, sleep=sleeps.append)


# -- the pipeline, in-process -------------------------------------------------------------


def test_local_ingest_of_a_folder_rejects_bad_items_and_resumes(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_folder(tmp_path / "photos", 40)
    (tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "photos" / "dupe.png").write_bytes(paths[3].read_bytes())  # same content
    args = ["index", str(tmp_path / "photos"), "--bundle", str(tiny_bundle), "--index-path",
            str(tmp_path / "index"), "--collection", "photos", "--batch-size", "8",
            "--journal", str(tmp_path / "j.journal"), "--no-progress"]  # fmt: skip
    from clipserve.cli.main import main

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "items: 42/42 done" in out and "rejected: 1" in out and "holds 40 points" in out
    rejects = [json.loads(line) for line in (tmp_path / "j.rejects.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rejects] == ["broken.png"]
    assert "not a recognised image format" in rejects[0]["reason"]
    points = all_points(tmp_path / "index", "photos")
    assert {p.id for p in points} == {image_id(p.read_bytes()) for p in paths}
    by_id = {p.id: p.payload for p in points}
    first = by_id[image_id(paths[0].read_bytes())]
    assert first["caption"] == "picture number 0" and first["_source"] == str(paths[0])
    assert main(args) == 0  # a second run has nothing to do
    assert "already complete" in capsys.readouterr().out


def test_pooled_collection_stores_the_normalised_mean_of_image_and_caption(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    rows = [{"id": str(i), "image": f"{i}.png", "caption": f"caption {i}"} for i in range(4)]
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    rows.append({"id": "t", "caption": "a text item"})  # no image: rejected by a pooled collection
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert index_main([str(tmp_path / "m.jsonl"), "--bundle", str(tiny_bundle), "--index-path",
                       str(tmp_path / "index"), "--collection", "pooled", "--vector-source",
                       "pooled", "--journal", str(tmp_path / "j"), "--no-progress"]) == 0  # fmt: skip
    reasons = [
        json.loads(x)["reason"] for x in (tmp_path / "j.rejects.jsonl").read_text().splitlines()
    ]
    assert len(reasons) == 1 and "stores pooled vectors; send an image" in reasons[0]
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "index")
    bg = BackgroundServer(config)
    try:
        [info] = [c for c in bg.client.list_collections() if c.name == "pooled"]
        assert info.count == 4 and info.provenance.vector_source == 4  # VECTOR_SOURCE_POOLED
        ids = [image_id(png(i)) for i in range(4)]
        points, missing = bg.client.get(ids, collection="pooled", with_vectors=True)
        assert not missing
        for i, p in enumerate(points):
            img, cap = bg.client.embed([png(i), f"caption {i}"])
            expected = (img + cap) / np.linalg.norm(img + cap)
            np.testing.assert_allclose(p.vector, expected, atol=1e-5)
    finally:
        bg.stop()


# -- through a server ---------------------------------------------------------------------


def test_ingest_through_a_busy_server_retries_and_loses_nothing(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"image": f"{i}.png", "caption": f"c{i}"} for i in range(30)]
    rows += [{"caption": f"text item {i}"} for i in range(10)]
    rows.append({"image": "missing.png", "caption": "gone"})
    for i in range(30):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # One index request at a time: concurrent writers get RESOURCE_EXHAUSTED and retry.
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "index",
                          max_in_flight=1, max_batch=4)  # fmt: skip
    bg = BackgroundServer(config)
    try:
        assert index_main([str(tmp_path / "m.jsonl"), "--server", bg.address, "--writers", "3",
                           "--journal", str(tmp_path / "j"), "--no-progress",
                           "--retries", "30"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert "items: 41/41 done" in out and "rejected: 1" in out
        expected = {image_id(png(i)) for i in range(30)} | {
            text_id(f"text item {i}") for i in range(10)
        }
        got = {p.id for p in bg.client.scroll_all(collection="clipserve")}
        assert got == expected and bg.client.count() == 40
    finally:
        bg.stop()


# -- crash test ---------------------------------------------------------------------------


def crash_test(bundle: Path, work: Path, n_items: int, kills: int, seed: int) -> dict[str, Any]:
    """Ingest `n_items` images with the real command in a subprocess, SIGKILL it `kills`
    times at random moments (each kill followed by a rerun), then let it finish. Returns what
    the bench reports; asserts nothing lost, nothing duplicated."""
    paths = write_folder(work / "src", n_items, captions=True)
    cmd = [sys.executable, "-m", "clipserve.cli.main", "index", str(work / "src"), "--bundle",
           str(bundle), "--index-path", str(work / "index"), "--collection", "crash",
           "--batch-size", "32", "--journal", str(work / "j.journal"), "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(seed)
    journal = work / "j.journal"
    killed_mid_run, t0 = 0, time.monotonic()
    for _ in range(kills):
        # Kill at a random moment once this run has committed a batch of its own: timed by
        # progress, not by the clock, so kills land mid-ingest on a fast or a slow machine.
        before = journal.stat().st_size if journal.exists() else 0
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if journal.exists() and journal.stat().st_size > before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    points = all_points(work / "index", "crash")
    ids = [p.id for p in points]
    expected = {image_id(p.read_bytes()) for p in paths}
    assert len(ids) == len(set(ids)) == len(expected), "duplicated or lost points"
    assert set(ids) == expected, "a point is missing or unexpected"
    assert {p.payload["_source"] for p in points} == {str(p) for p in paths}
    return {"items": n_items, "kills": killed_mid_run, "points": len(ids),
            "seconds": time.monotonic() - t0}  # fmt: skip


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_ends_with_exactly_the_expected_points(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    result = crash_test(tiny_bundle, tmp_path, n_items=2000, kills=10, seed=7)
    assert result["kills"] >= 8  # the kills landed while the ingest was running
