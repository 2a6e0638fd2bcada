"""Re-indexing with another model: `clipserve reindex` builds a new collection from the stored
sources, then switches the alias atomically, while a query loop runs against the live server:
zero errors, and every answer wholly from the old or wholly from the new collection."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from index_support import BackgroundServer, write_folder

from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.ingest.cli import main as index_main
from clipserve.index.ingest.reindex import main as reindex_main
from clipserve.index.ingest.reindex import reindex
from clipserve.index.ingest.targets import LocalTarget
from clipserve.serving.config import ServerConfig


@pytest.fixture(scope="module")
def new_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second bundle with its own version id and its own image vector space: the same towers
    with other normalisation constants (cheaper than a second export, and just as different
    for images: the point is that the model changed)."""
    out = tmp_path_factory.mktemp("bundle2") / "new-bundle"
    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["version"] = "v2-" + manifest["version"][3:]
    manifest["mean"] = [0.2, 0.6, 0.3]
    manifest["std"] = [0.5, 0.2, 0.4]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def ingest(bundle: Path, index: Path, src: Path, collection: str, journal: Path) -> None:
    assert index_main([str(src), "--bundle", str(bundle), "--index-path", str(index),
                       "--collection", collection, "--journal", str(journal),
                       "--no-progress"]) == 0  # fmt: skip


def test_reindex_under_query_load_has_no_errors_and_no_mixed_answers(
    tiny_bundle: Path, new_bundle: Path, tmp_path: Path
) -> None:
    write_folder(tmp_path / "src", 120)
    ingest(tiny_bundle, tmp_path / "index", tmp_path / "src", "photos_v1", tmp_path / "j")
    with EdgeIndex(tmp_path / "index") as index:
        index.set_alias("photos", "photos_v1")
        ids = [p.id for p in index.scroll("photos_v1", None, 500, None, False)[0]]
    bg = BackgroundServer(ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "index"))
    answers: list[tuple[str, str, str, list[tuple[str, float]]]] = []
    spans: list[tuple[float, float, str]] = []  # (sent, answered, collection) per answer
    errors: list[Exception] = []
    stop = threading.Event()

    def query_loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            pid = ids[int(rng.integers(len(ids)))]
            sent = time.monotonic()
            try:
                r = bg.client.search(point_id=pid, collection="photos", top_k=5, exact=True)
            except grpc.RpcError as exc:
                errors.append(exc)
                continue
            spans.append((sent, time.monotonic(), r.collection))
            answers.append((pid, r.collection, r.model_version, [(h.id, h.score) for h in r.hits]))

    loops = [threading.Thread(target=query_loop, args=(s,)) for s in range(2)]
    for t in loops:
        t.start()
    try:
        time.sleep(1.0)
        config = ServerConfig(bundle=new_bundle, index_path=tmp_path / "unused", max_batch=32)
        target = LocalTarget(config, "photos", index=bg.index)  # the server's open index
        try:
            result = reindex(target, "photos", journal_dir=tmp_path / "rj", batch_size=16,
                             progress_bar=False)  # fmt: skip
        finally:
            target.close()
        time.sleep(1.0)
        stop.set()
        for t in loops:
            t.join(30)
        assert result.switched and result.new == f"photos-{target.model_version[:12]}"
        assert result.summary.progress.points == 120 and result.summary.final_count == 120
        assert not errors, errors[:3]
        # Every answer names one collection, and equals that collection's own exact answer.
        versions = {"photos_v1": bg.client.info().model_version, result.new: target.model_version}
        seen = [a[1] for a in answers]
        assert set(seen) == {"photos_v1", result.new}
        # No going back after the switch: a query sent after any query was answered from the
        # new collection is answered from it too. (Completion order alone is not the test: a
        # query in flight across the switch may finish after a later one from the other thread.)
        first_new_answer = min(done for _, done, c in spans if c == result.new)
        assert all(c == result.new for sent, _, c in spans if sent > first_new_answer)
        for pid, coll, version, hits in answers[:: max(1, len(answers) // 60)]:
            assert version == versions[coll]
            ref = bg.client.search(point_id=pid, collection=coll, top_k=5, exact=True)
            assert [h for h, _ in hits] == [h.id for h in ref.hits]
            np.testing.assert_allclose([s for _, s in hits], [h.score for h in ref.hits], atol=1e-5)
        # The two collections really are different vector spaces.
        pid = ids[0]
        a = bg.client.get([pid], collection="photos_v1", with_vectors=True)[0][0].vector
        b = bg.client.get([pid], collection=result.new, with_vectors=True)[0][0].vector
        assert float(a @ b) < 0.999
        # A server still on the old bundle refuses to embed for the new collection.
        with pytest.raises(grpc.RpcError) as err:
            bg.client.search(text="a photo", collection="photos")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert versions["photos_v1"] in err.value.details()
        assert target.model_version in err.value.details()
    finally:
        stop.set()
        bg.stop()


def test_reindex_command_refuses_to_switch_with_rejects_and_resumes(
    tiny_bundle: Path, new_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_folder(tmp_path / "src", 30)
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"caption": f"text {i}"}) + "\n"
                                                  for i in range(5)))  # fmt: skip
    ingest(tiny_bundle, tmp_path / "index", tmp_path / "src", "docs_v1", tmp_path / "j1")
    ingest(tiny_bundle, tmp_path / "index", tmp_path / "texts.jsonl", "docs_v1", tmp_path / "j2")
    with EdgeIndex(tmp_path / "index") as index:
        index.set_alias("docs", "docs_v1")
    from clipserve.cli.main import main

    base = ["--bundle", str(new_bundle), "--index-path", str(tmp_path / "index")]
    assert main(["reindex", *base, "--alias", "nope"]) == 1
    assert "'nope' does not exist" in capsys.readouterr().err
    assert main(["reindex", *base, "--alias", "docs_v1"]) == 2  # a collection, not an alias
    assert "is a collection, not an alias" in capsys.readouterr().err
    paths[7].unlink()  # its source is gone: it cannot be re-embedded
    args = ["--bundle", str(new_bundle), "--alias", "docs", "--index-path", str(tmp_path / "index"),
            "--journal-dir", str(tmp_path / "rj"), "--no-progress", "--batch-size", "8"]  # fmt: skip
    assert reindex_main(args) == 1
    err = capsys.readouterr().err
    assert "1 points could not be re-embedded" in err and "still names 'docs_v1'" in err
    [rejects] = list((tmp_path / "rj").glob("*.rejects.jsonl"))
    [reject] = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert "cannot read" in reject["reason"] and str(paths[7]) in reject["reason"]
    with EdgeIndex(tmp_path / "index") as index:
        assert index.resolve("docs") == "docs_v1"
    # The rerun resumes (nothing left to embed) and, told to, switches.
    assert reindex_main([*args, "--accept-rejects"]) == 0
    out = capsys.readouterr().out
    assert "-> 'docs-v2-" in out
    with EdgeIndex(tmp_path / "index") as index:
        new = index.resolve("docs")
        assert index.count(new) == 34 and index.provenance(new).model_version.startswith("v2-")  # type: ignore[union-attr]
        text = [p for p in index.scroll(new, None, 100, None, False)[0] if "_text" in p.payload]
        assert sorted(p.payload["_text"] for p in text) == [f"text {i}" for i in range(5)]
