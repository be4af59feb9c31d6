"""Trained models in the registry (``registry_trained``) on SQLite and (marked ``postgres``)
PostgreSQL: a new content of an entry is its next number, the content its newest number has
changes nothing, and writers at once never share a number."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from services.kernels.manifests import (
    MANIFEST,
    WEIGHTS,
    Manifest,
    ModelIntegrityError,
    StoreReader,
)
from services.unlearning.registry import READY, RETIRED
from services.unlearning.trained import (
    TRAINED_BY,
    Trained,
    TrainedStore,
    adopt,
    from_manifest,
    keep,
    register_kept,
)


@pytest.fixture
def store(database_url: str) -> TrainedStore:
    trained = TrainedStore(database_url)
    trained.create_schema()
    trained.create_schema()  # idempotent
    return trained


def manifest(name: str = "task-resnet", sha: str = "a", seed: int | None = 0) -> Manifest:
    return Manifest(
        name=name,
        kind="classifier",
        version=1,
        config=dict(resolution=32, num_classes=3, target="pose", role="task", arch="resnet"),
        sha256=sha * 64,
        command=f"veil train classifier --name {name} --seed {seed}",
        seed=seed,
        data={"uri": "synthfaces://?n=20000&seed=0", "n": 19000, "resolution": 32},
        metrics={"held-out accuracy": 0.99, "steps": 1000, "unreadable": ["x"], "ok": True},
        created_at="2026-12-06T10:00:00+00:00",
    )


def record(name: str = "task-resnet", sha: str = "a") -> Trained:
    return from_manifest(manifest(name, sha), TRAINED_BY)


def test_from_manifest_keeps_the_lineage_and_the_numeric_metrics() -> None:
    made = from_manifest(manifest(seed=7), TRAINED_BY)
    assert (made.name, made.kind, made.sha256) == ("task-resnet", "classifier", "a" * 64)
    assert (made.resolution, made.num_classes, made.target) == (32, 3, "pose")
    assert made.lineage == {
        "command": "veil train classifier --name task-resnet --seed 7",
        "seed": "7",
        "data": "synthfaces://?n=20000&seed=0",
        "data_n": "19000",
        "created_at": "2026-12-06T10:00:00+00:00",
        "sha256": "a" * 64,
        "registered_by": "veil train",
        "role": "task",
        "arch": "resnet",
    }
    assert made.metrics == {"held-out_accuracy": 0.99, "steps": 1000.0}
    assert "seed" not in from_manifest(manifest(seed=None), TRAINED_BY).lineage


def test_the_same_content_twice_is_one_registration(store: TrainedStore) -> None:
    first, new = store.register(record())
    assert (first.number, first.current, new) == (1, True, True)
    again, new = store.register(record())
    assert (again.number, again.registered_at, new) == (1, first.registered_at, False)
    (only,) = store.trained_versions("task-resnet")
    assert only.lineage == first.lineage and only.metrics == first.metrics


def test_a_content_back_again_is_a_new_number(store: TrainedStore) -> None:
    numbers = [store.register(record(sha=sha))[0].number for sha in ("a", "b", "a")]
    assert numbers == [1, 2, 3]
    history = store.trained_versions("task-resnet")
    assert [(t.number, t.sha256[0], t.current) for t in history] == [
        (3, "a", True), (2, "b", False), (1, "a", False),
    ]  # fmt: skip
    assert [v.state for v in (t.as_version() for t in history)] == [READY, RETIRED, RETIRED]
    assert store.trained_versions("nothing") == []


def test_trained_models_are_the_newest_of_each_entry_by_name(store: TrainedStore) -> None:
    assert store.trained_models() == []
    store.register(record("task-resnet", "a"))
    store.register(record("probes", "c"))
    store.register(record("task-resnet", "b"))
    models = store.trained_models()
    assert [(t.name, t.number, t.sha256[0], t.current) for t in models] == [
        ("probes", 1, "c", True), ("task-resnet", 2, "b", True),
    ]  # fmt: skip


def test_writers_at_once_never_share_a_number(store: TrainedStore) -> None:
    """Different contents of one entry at once get every number once; the same content at
    once is one registration."""
    barrier = threading.Barrier(2)

    def register(sha: str) -> tuple[Trained, bool]:
        barrier.wait()
        return store.register(record(sha=sha))

    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(register, ("a", "b")))
    assert sorted(t.number for t, _ in made) == [1, 2] and all(new for _, new in made)
    assert [t.number for t in store.trained_versions("task-resnet")] == [2, 1]

    with ThreadPoolExecutor(2) as pool:
        same = list(pool.map(register, ("c", "c")))
    assert [t.number for t, _ in same] == [3, 3]
    assert sorted(new for _, new in same) == [False, True]
    assert [t.number for t in store.trained_versions("task-resnet")] == [3, 2, 1]


# -- kept registrations -------------------------------------------------------------------


def _write_entry(root: Path, name: str, kind: str, blob: bytes) -> Manifest:
    """A store entry of ``kind`` holding ``blob`` as its weights."""
    entry = root / name
    entry.mkdir(parents=True, exist_ok=True)
    (entry / WEIGHTS).write_bytes(blob)
    made = replace(manifest(name), kind=kind, sha256=hashlib.sha256(blob).hexdigest())
    (entry / MANIFEST).write_text(json.dumps(asdict(made)))
    return made


def test_a_registration_of_the_sanitizers_models_is_kept_whole(
    store: TrainedStore, tmp_path: Path
) -> None:
    """The encoder, probes and domain: each registration copied to ``<entry>-r<N>``, never
    rewritten, so retraining the entry leaves the older versions servable; a classifier's
    is not kept; an entry overwritten before it could be kept is refused, and the service's
    adoption skips kept copies (they are versions, not models)."""
    root = tmp_path / "store"
    first = _write_entry(root, "diffae", "diffae", b"first")
    record, new = register_kept(store, root, first, TRAINED_BY)
    assert new and record.number == 1
    assert StoreReader(root).blob("diffae-r1")[1] == b"first"
    second = _write_entry(root, "diffae", "diffae", b"second")
    record, _ = register_kept(store, root, second, TRAINED_BY)
    assert record.number == 2 and StoreReader(root).blob("diffae-r2")[1] == b"second"
    assert StoreReader(root).blob("diffae-r1")[1] == b"first"  # untouched
    assert StoreReader(root).kept("diffae") == ["diffae-r2", "diffae-r1"]
    assert keep(root, record) == "diffae-r2"  # again: the copy stays as it is

    third = _write_entry(root, "diffae", "diffae", b"third")
    stale = replace(from_manifest(second, TRAINED_BY), number=5)
    with pytest.raises(ModelIntegrityError, match="overwritten"):
        keep(root, stale)
    assert not (root / "diffae-r5").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # nothing half-written

    classifier = _write_entry(root, "task-resnet", "classifier", b"weights")
    register_kept(store, root, classifier, TRAINED_BY)
    assert not (root / "task-resnet-r1").exists()
    adopted = adopt(store, root)
    assert [(r.name, r.number) for r in adopted] == [("diffae", 3)]
    assert third.sha256 == adopted[0].sha256 and (root / "diffae-r3").is_dir()
