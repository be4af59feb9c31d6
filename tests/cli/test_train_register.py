"""``veil train`` registers what it writes in the model registry (``registry_trained`` in the
unlearning service's database): a new content is the entry's next version, the same content
again changes nothing, ``--no-register`` writes the store entry only, and a registry that
cannot be reached leaves the entry written and exits 3. Tiny models: a 16×16 MLP-Mixer of
width 4, two steps on 24 faces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.cli.main import build_parser, main
from services.cli.train import UNREGISTERED
from services.kernels.manifests import StoreReader
from services.unlearning.trained import TRAINED_BY, TrainedStore

DATA = "synthfaces://?n=24&seed=0"
ENTRY = "task-mlpmixer"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``veil train`` in this process: what ``main`` sets in the environment is undone."""
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def train(tmp: Path, *extra: str, seed: int = 0) -> int:
    """``veil train classifier`` of a tiny model into ``tmp/store``."""
    return main(["train", "classifier", "--arch", "mlpmixer", "--width", "4",
                 "--out", str(tmp / "store"), "--data", DATA, "--cache-dir", str(tmp / "cache"),
                 "--checkpoint-dir", str(tmp / f"ckpt-{seed}"), "--resolution", "16",
                 "--steps", "2", "--batch-size", "2", "--threads", "1", "--no-progress",
                 "--seed", str(seed), *extra])  # fmt: skip


def registry(url: str) -> TrainedStore:
    store = TrainedStore(url)
    store.create_schema()
    return store


def test_every_train_leaf_takes_the_registry_options() -> None:
    parser = build_parser()
    for kind in ("diffae", "classifier", "protector", "probes"):
        args = parser.parse_args(["train", kind, "--registry-url", "sqlite:////r.sqlite"])
        assert args.registry_url == "sqlite:////r.sqlite" and args.no_register is False
        assert parser.parse_args(["train", kind, "--no-register"]).no_register is True


def test_a_relative_sqlite_registry_is_refused_before_training(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "classifier", "--registry-url", "sqlite:///r.sqlite"])
    assert exit_.value.code == 2 and "absolute" in capsys.readouterr().err


def test_train_registers_version_1_with_its_lineage_then_the_same_content_again_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'unlearning.sqlite'}"
    assert train(tmp_path, "--registry-url", url, seed=3) == 0
    assert f"registered {ENTRY} version 1 in the model registry ({url})" in capsys.readouterr().out
    manifest = StoreReader(tmp_path / "store").manifest(ENTRY)
    (record,) = registry(url).trained_versions(ENTRY)
    assert (record.number, record.kind, record.sha256, record.current) == (
        1, "classifier", manifest.sha256, True,
    )  # fmt: skip
    lineage = record.lineage
    assert lineage["registered_by"] == TRAINED_BY == "veil train"
    assert lineage["command"] == manifest.command
    assert lineage["command"].startswith("veil train classifier ")
    assert "--seed 3" in lineage["command"] and "--registry-url" not in lineage["command"]
    assert (lineage["seed"], lineage["data"], lineage["sha256"]) == ("3", DATA, manifest.sha256)
    assert lineage["role"] == "task" and lineage["arch"] == "mlpmixer"
    assert (record.target, record.resolution) == ("pose", 16)
    assert "held-out_accuracy" in record.metrics
    # the same command again trains the same weights: nothing new to register
    assert train(tmp_path, "--registry-url", url, seed=3) == 0
    assert f"already registered: {ENTRY} version 1" in capsys.readouterr().out
    assert StoreReader(tmp_path / "store").manifest(ENTRY).version == 2  # the store rewrote it
    assert [r.number for r in registry(url).trained_versions(ENTRY)] == [1]


def test_new_weights_are_the_next_version_and_the_old_one_is_no_longer_current(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'unlearning.sqlite'}"
    assert train(tmp_path, "--registry-url", url, seed=1) == 0
    assert train(tmp_path, "--registry-url", url, seed=2) == 0
    assert f"registered {ENTRY} version 2 in the model registry" in capsys.readouterr().out
    newest, first = registry(url).trained_versions(ENTRY)
    assert (newest.number, newest.current, newest.lineage["seed"]) == (2, True, "2")
    assert (first.number, first.current, first.lineage["seed"]) == (1, False, "1")
    assert newest.sha256 == StoreReader(tmp_path / "store").manifest(ENTRY).sha256
    assert newest.sha256 != first.sha256


def test_no_register_writes_the_store_entry_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "unlearning.sqlite"
    assert train(tmp_path, "--registry-url", f"sqlite:///{db}", "--no-register") == 0
    assert "registered" not in capsys.readouterr().out
    assert StoreReader(tmp_path / "store").manifest(ENTRY).kind == "classifier"
    assert not db.exists()
    assert registry(f"sqlite:///{db}").trained_models() == []


def test_the_default_registry_is_the_unlearning_services_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'service.sqlite'}"
    monkeypatch.setenv("VEIL_UNLEARNING_DATABASE_URL", url)
    assert train(tmp_path) == 0
    assert f"({url})" in capsys.readouterr().out
    assert [r.name for r in registry(url).trained_models()] == [ENTRY]


def _unreachable(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        (tmp / "a-file").write_text("")
        return f"sqlite:///{tmp / 'a-file' / 'sub' / 'unlearning.sqlite'}"  # no such directory
    pytest.importorskip("psycopg", reason="needs the postgres extra")
    return "postgresql+psycopg://veil:s3cret@127.0.0.1:1/none"  # nothing listens on port 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_an_unreachable_registry_exits_3_with_the_store_entry_written(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _unreachable(kind, tmp_path)
    assert train(tmp_path, "--registry-url", url) == UNREGISTERED == 3
    out = capsys.readouterr()
    assert StoreReader(tmp_path / "store").manifest(ENTRY).kind == "classifier"
    assert f"{ENTRY} is written to {tmp_path / 'store' / ENTRY} but NOT registered" in out.err
    assert "unlearning service registers every entry of its model store" in out.err
    assert "s3cret" not in out.err + out.out and "registered task" not in out.out


def test_diffae_and_probes_register_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The other paths that write a store entry: ``_finish`` of the autoencoder, and probes."""
    url = f"sqlite:///{tmp_path / 'unlearning.sqlite'}"
    common = ["--out", str(tmp_path / "store"), "--cache-dir", str(tmp_path / "cache"),
              "--threads", "1", "--registry-url", url]  # fmt: skip
    assert main(["train", "diffae", *common, "--data", DATA, "--resolution", "16",
                 "--steps", "1", "--batch-size", "2", "--no-progress",
                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--z-dim", "8",
                 "--encoder-channels", "8", "--unet-channels", "8,8"]) == 0  # fmt: skip
    assert main(["train", "probes", *common, "--data", "synthfaces://?n=32&seed=1"]) == 0
    out = capsys.readouterr().out
    assert "registered diffae version 1" in out and "registered probes version 1" in out
    models = {r.name: r for r in registry(url).trained_models()}
    assert models["probes"].kind == "probes" and models["diffae"].kind == "diffae"
    store = StoreReader(tmp_path / "store")
    assert models["probes"].lineage["diffae_sha256"] == store.manifest("diffae").sha256
    assert models["probes"].lineage["command"].startswith("veil train probes --diffae diffae")


def test_protector_registers_with_its_authorized_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'unlearning.sqlite'}"
    assert train(tmp_path, "--no-register") == 0
    assert main(["train", "protector", "--authorized", ENTRY, "--data", DATA,
                 "--resolution", "16", "--steps", "1", "--batch-size", "2", "--threads", "1",
                 "--out", str(tmp_path / "store"), "--checkpoint-dir", str(tmp_path / "ckpt-p"),
                 "--cache-dir", str(tmp_path / "cache"), "--widths", "4,8", "--blocks", "1",
                 "--no-progress", "--registry-url", url]) == 0  # fmt: skip
    assert "registered protector version 1" in capsys.readouterr().out
    (record,) = registry(url).trained_models()  # the classifier was not registered
    authorized = StoreReader(tmp_path / "store").manifest(ENTRY).sha256
    assert record.kind == "protector" and record.lineage["authorized_sha256"] == authorized


def test_train_domain_fits_the_model_it_names_and_a_service_reads_it(tmp_path: Path) -> None:
    """``veil train domain`` on a tiny classifier's penultimate features: the entry records
    the model's SHA-256 and its own data, a service reads it back; another model's entry
    is refused (ModelNotReady), and so is a kind that has no representation."""
    from services.common.errors import InvalidArgument, ModelNotReady
    from services.serving.entries import load_domain

    assert train(tmp_path, "--no-register") == 0
    store = StoreReader(tmp_path / "store")
    code = main(["train", "domain", "--model", ENTRY, "--out", str(tmp_path / "store"),
                 "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--quantile", "0.9",
                 "--no-register"])  # fmt: skip
    assert code == 0
    manifest = store.manifest(f"domain-{ENTRY}")
    assert manifest.kind == "domain" and manifest.data["uri"] == store.manifest(ENTRY).data["uri"]
    assert manifest.config["model_sha256"] == store.manifest(ENTRY).sha256
    assert manifest.command.startswith("veil train domain --model task-mlpmixer")
    domain = load_domain(store, f"domain-{ENTRY}", ENTRY)
    assert domain.threshold == manifest.config["threshold"] > 0
    assert train(tmp_path, "--no-register", seed=1) == 0  # the model changes under it
    with pytest.raises(ModelNotReady, match="fitted on another model"):
        load_domain(StoreReader(tmp_path / "store"), f"domain-{ENTRY}", ENTRY)
    with pytest.raises(InvalidArgument, match="domain"):
        main(["train", "domain", "--model", f"domain-{ENTRY}", "--out", str(tmp_path / "store"),
              "--no-register"])  # fmt: skip
