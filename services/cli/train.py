"""``veil train diffae|classifier|probes|protector|domain``.

Wire into the top-level parser with :func:`add_train_parser`;
each leaf parser sets ``handler`` (``args.handler(args) -> int``). Every trained model is
written to the store (``--out``) with the full command that made it and its seed.

Then it is registered in the model registry (:mod:`services.unlearning.trained`: a new
content of the entry is its next version, the content already registered changes nothing),
in the database ``--registry-url`` names (default: the unlearning service's,
``VEIL_UNLEARNING_DATABASE_URL``); ``--no-register`` writes the store entry only. Exit
status 3 (:data:`UNREGISTERED`): the entry is written but the registry could not be reached;
nothing needs re-training, since the unlearning service registers the entries of its store
that are not registered yet when it starts.

``diffae``, ``classifier`` and ``protector`` also run under ``torchrun --nproc-per-node N -m
services.cli train …`` as N data-parallel ranks (:mod:`services.kernels.training.distributed`;
docs/TRAINING.md): ``--batch-size`` is the global batch, rank 0 alone writes the checkpoints,
the store entry and the registration, and after a restart (``--max-restarts``) every rank
resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli.domain import add_domain_parser
from services.kernels.defaults import (
    ARCHITECTURES,
    DEFAULT_CACHE,
    DEFAULT_DIFFAE,
    DEFAULT_PROBES,
    DEFAULT_QUANTILE,
    DEFAULT_THRESHOLD,
    ROLES,
)

if TYPE_CHECKING:
    import torch

    from services.kernels.manifests import Manifest
    from services.kernels.probes import ProbeSet
    from services.kernels.training.data import ImageTable
    from services.kernels.training.distributed import Distributed
    from services.kernels.training.loop import TrainConfig, TrainResult

DEFAULT_DATA = "synthfaces://?n=20000&seed=0"
PROBE_DATA = "synthfaces://?n=5000&seed=1"
"""Probes are fitted on faces the autoencoder never saw (another seed)."""
CHECKPOINTS = DEFAULT_CACHE.parent / "checkpoints"
HOLDOUT = 0.05
UNREGISTERED = 3
"""Exit status: the store entry is written, but the model registry could not be reached."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _common(parser: argparse.ArgumentParser, steps: int, batch: int, lr: float, data: str) -> None:
    parser.add_argument("--name", help="store entry to write (default depends on the model)")
    parser.add_argument("--out", type=Path, help="model store directory (default: packaged)")
    parser.add_argument("--data", default=data, help=f"dataset URI (default {data})")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=steps, help=f"(default {steps})")
    parser.add_argument("--batch-size", type=int, default=batch, help=f"(default {batch})")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the idle cores)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--checkpoint-dir", type=Path, help=f"(default {CHECKPOINTS}/<name>)")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="dataset cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="bfloat16 autocast of the loss on CUDA (refused without CUDA; default off)",
    )
    _registry_arguments(parser)


def _database_url(text: str) -> str:
    """``--registry-url``: a SQLAlchemy URL (a SQLite file's path absolute), checked before
    training starts."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from services.common.db import check_url

    try:
        make_url(text)
        return check_url(text)
    except (ArgumentError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _registry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry-url",
        type=_database_url,
        metavar="URL",
        help="SQLAlchemy URL of the model registry's database (default: the unlearning"
        " service's, VEIL_UNLEARNING_DATABASE_URL); exit 3 if it cannot be reached (the"
        " store entry is written all the same)",
    )
    parser.add_argument(
        "--no-register",
        action="store_true",
        help="write the store entry only, without registering it in the model registry",
    )


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``veil train …``: train a model and write it to the store."""
    train = subparsers.add_parser("train", help="train a model into the model store")
    kinds = train.add_subparsers(dest="model_kind", required=True)

    diffae = kinds.add_parser("diffae", help="the diffusion autoencoder")
    _common(diffae, steps=12_000, batch=32, lr=2e-4, data=DEFAULT_DATA)
    diffae.add_argument("--z-dim", type=int, default=64)
    diffae.add_argument("--encoder-channels", type=_ints, default=(32, 64, 128, 128))
    diffae.add_argument("--unet-channels", type=_ints, default=(32, 64, 64))
    diffae.add_argument("--layers-per-block", type=int, default=1)
    diffae.add_argument("--prediction", choices=("v_prediction", "epsilon"), default="v_prediction")
    diffae.add_argument(
        "--attribute-weight",
        type=float,
        default=0.0,
        help="weight of a linear attribute head's logistic loss on z, over every attribute of"
        " the data (default 0: unsupervised)",
    )
    diffae.add_argument(
        "--task-weight",
        type=float,
        default=0.0,
        help="weight of a linear task (pose) head's cross-entropy on z, so that z carries"
        " what a release must keep (default 0: not supervised)",
    )
    diffae.add_argument(
        "--init-from",
        help="warm start: a store entry or a checkpoint file of the same architecture",
    )
    diffae.set_defaults(handler=run_train_diffae)

    clf = kinds.add_parser(
        "classifier", help="the task classifier, an attacker or an unauthorized task model"
    )
    _common(clf, steps=1_000, batch=64, lr=1e-3, data=DEFAULT_DATA)
    clf.add_argument(
        "--role",
        choices=ROLES,
        default="task",
        help="task: the authorized model; attacker: predicts a sensitive --attribute;"
        " unauthorized: an independent model of the task (an outside black box the protection"
        " never sees); surrogate: the protection's stand-in for such models",
    )
    clf.add_argument(
        "--attribute",
        help="the attribute it predicts (required for an attacker; for the other roles a"
        " task other than pose, e.g. a tenant's smiling classifier; default pose)",
    )
    clf.add_argument("--arch", choices=ARCHITECTURES, default="resnet")
    clf.add_argument("--width", type=int, default=32)
    clf.add_argument(
        "--augment",
        choices=("none", "pipeline"),
        default="pipeline",
        help="pipeline: train on images through real JPEG (q 50-95), resizes (x0.5-2) and"
        " shifts (up to 3 px), so the model keeps its accuracy on uploaded images; none: on"
        " the images as they are (default pipeline)",
    )
    clf.add_argument(
        "--tenant",
        help="train a retrain for this tenant's unlearning job (docs/TRAINING.md, 'Retrain at"
        " scale'): recorded in the entry, which is then never registered as a model every"
        " tenant sees, and only that tenant's job may publish it",
    )
    clf.set_defaults(handler=run_train_classifier)

    prot = kinds.add_parser("protector", help="the fast-protection generator (one pass per image)")
    _common(prot, steps=3_000, batch=32, lr=1e-3, data=DEFAULT_DATA)
    _protector_arguments(prot)
    prot.set_defaults(handler=run_train_protector)

    probes = kinds.add_parser("probes", help="attribute probes on a trained encoder's codes")
    probes.add_argument("--name", default=DEFAULT_PROBES)
    probes.add_argument("--out", type=Path, help="model store directory (default: packaged)")
    probes.add_argument("--diffae", default=DEFAULT_DIFFAE, help="store entry of the encoder")
    probes.add_argument("--data", default=PROBE_DATA, help=f"dataset URI (default {PROBE_DATA})")
    probes.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE)
    probes.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    probes.add_argument("--strict", action="store_true", help="exit 1 if any is unreadable")
    probes.add_argument(
        "--no-eraser",
        action="store_true",
        help="fit no LEACE eraser on the complement (the mechanism's complement=erase)",
    )
    probes.add_argument("--seed", type=int, default=0)
    probes.add_argument("--threads", type=int, default=None, help="(default: the idle cores)")
    probes.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    _registry_arguments(probes)
    probes.set_defaults(handler=run_train_probes)
    add_domain_parser(kinds)
    return train


def command_line(args: argparse.Namespace) -> str:
    """The ``veil train`` command that reproduces ``args`` (recorded in the manifest)."""
    skip = {
        "handler",
        "command",
        "model_kind",
        "resume",
        "no_progress",
        "checkpoint_dir",
        "out",
        "cache_dir",
        "init_recipe",
        "registry_url",
        "no_register",
    }
    parts = ["veil", "train", args.model_kind]
    for key, value in sorted(vars(args).items()):
        if key in skip or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        else:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            parts += [flag, f"'{text}'" if "?" in text or "&" in text else text]
    return " ".join(parts)


def idle_cores() -> int:
    """Cores not busy right now (at least 1): the default torch thread count. On a small
    shared machine, more threads than idle cores is far slower, not faster (2 threads
    beside one busy process measured 11.5 s/step against 0.7 s/step with 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, (cores or 1) - busy)


def _threads(args: argparse.Namespace) -> int:
    """``--threads``, by default the idle cores shared among torchrun's local workers."""
    if args.threads is None:
        from services.kernels.training.distributed import local_world

        args.threads = max(1, idle_cores() // local_world())
    return int(args.threads)


def _join(args: argparse.Namespace, cuda: bool = True) -> Distributed:
    """This process's rank (one process without torchrun); after torchrun restarted the
    workers, the run resumes from its latest checkpoint whatever ``--resume`` says."""
    from services.kernels.training.distributed import init_from_env, restarted

    args.resume = args.resume or restarted()
    return init_from_env(cuda)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from services.kernels.training.loop import TrainConfig

    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay,
        seed=args.seed,
        threads=_threads(args),
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
        amp=args.amp,
    )


def _data(args: argparse.Namespace, where: Distributed) -> tuple[ImageTable, ImageTable]:
    """The training and held-out tables; rank 0 reads (and caches) the data first."""
    import torch

    from services.kernels.training.data import load_table
    from services.kernels.training.distributed import main_first

    torch.set_num_threads(_threads(args))
    if where.is_main:
        print(f"loading {args.data} at {args.resolution}x{args.resolution} …", file=sys.stderr)
    with main_first(where):
        return load_table(args.data, args.resolution, args.cache_dir).split(HOLDOUT)


def _finish(
    args: argparse.Namespace,
    kind: str,
    result: TrainResult,
    config: dict,
    n: int,
    where: Distributed,
) -> int:
    """Rank 0 writes the store entry and registers it while the other ranks wait; then
    every rank leaves the process group (the others exit 0)."""
    from services.kernels.training.distributed import barrier, teardown

    try:
        status = _write(args, kind, result, config, n, where.world) if where.is_main else 0
        barrier(where)
    finally:
        teardown(where)
    return status


def _write(
    args: argparse.Namespace, kind: str, result: TrainResult, config: dict, n: int, world: int
) -> int:
    from services.kernels.store import ModelStore
    from services.kernels.training.loop import format_table

    store = ModelStore(args.out)
    command = command_line(args)
    if getattr(args, "init_recipe", None):
        command = f"{args.init_recipe} && {command}"
    manifest = store.save(
        args.name,
        kind,
        result.ema.state_dict(),
        config,
        command=command,
        seed=args.seed,
        data={"uri": args.data, "n": n, "resolution": args.resolution}
        | ({"tenant": args.tenant} if getattr(args, "tenant", None) else {}),
        metrics=_metrics(result, world),
    )
    rows = {**result.summary(), "model": f"{manifest.name} v{manifest.version}"}
    print(format_table(rows, f"trained {kind} → {store.path(args.name)}"))
    return _register(args, manifest)


def _metrics(result: TrainResult, world: int) -> dict[str, Any]:
    """The run's figures for the manifest, and its ranks when several trained it."""
    metrics: dict[str, Any] = {
        k: v for k, v in result.summary().items() if isinstance(v, int | float)
    }
    return metrics | ({"ranks": world} if world > 1 else {})


def _register(args: argparse.Namespace, manifest: Manifest) -> int:
    """Register the store entry ``manifest`` describes (just written to ``args.out``) in the
    model registry, unless ``--no-register``, and say so: 0, or :data:`UNREGISTERED` when the
    registry cannot be reached (the entry stays written; the unlearning service adopts it)."""
    if args.no_register:
        return 0
    if getattr(args, "tenant", None):
        print(
            f"not registered: {manifest.name} was trained for tenant {args.tenant!r}; it becomes"
            " that tenant's version through an unlearning job (SubmitJob, trained_entry)"
        )
        return 0
    from sqlalchemy.exc import SQLAlchemyError

    from services.common.errors import VeilError
    from services.kernels.manifests import StoreReader
    from services.unlearning.trained import TRAINED_BY, TrainedStore, register_kept

    url = args.registry_url or ""
    try:
        if not url:
            from services.unlearning.settings import UnlearningSettings

            url = UnlearningSettings().database_url
        registry = TrainedStore(url)
        try:
            registry.create_schema()
            record, new = register_kept(registry, StoreReader(args.out).root, manifest, TRAINED_BY)
        finally:
            registry.close()
    except (SQLAlchemyError, VeilError, OSError, ImportError, ValueError) as exc:
        print(
            f"veil train: {manifest.name} is written to {StoreReader(args.out).path(manifest.name)}"
            f" but NOT registered in the model registry"
            f" ({_masked(url) if url else 'VEIL_UNLEARNING_DATABASE_URL'}): {_reason(exc)}\n"
            "Nothing needs re-training: the unlearning service registers every entry of its"
            " model store not registered yet when it starts; start (or restart) it on this"
            " store with its database reachable.",
            file=sys.stderr,
        )
        return UNREGISTERED
    where = f"in the model registry ({_masked(url)})"
    if new:
        print(f"registered {record.name} version {record.number} {where}")
    else:
        print(f"already registered: {record.name} version {record.number} {where}")
    return 0


def _masked(url: str) -> str:
    """``url`` with its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "an unparsable URL"


def _reason(exc: BaseException) -> str:
    """One line on why: the driver's own message where there is one (the services' errors
    keep only its class name, for their logs; an operator at a terminal wants it)."""
    driver = getattr(exc, "orig", None) or getattr(exc.__context__, "orig", None)
    text = str(driver) if driver is not None else getattr(exc, "message", str(exc))
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    return args.checkpoint_dir or CHECKPOINTS / args.name


def run_train_diffae(args: argparse.Namespace) -> int:
    from services.kernels.diffae import DiffAEConfig
    from services.kernels.training.diffae import train_diffae

    args.name = args.name or DEFAULT_DIFFAE
    where = _join(args)
    init = None
    if args.init_from:
        init, args.init_recipe = _init_state(args.init_from, args.out)
    train, held = _data(args, where)
    config = DiffAEConfig(
        resolution=args.resolution,
        z_dim=args.z_dim,
        encoder_channels=tuple(args.encoder_channels),
        unet_channels=tuple(args.unet_channels),
        layers_per_block=args.layers_per_block,
        prediction_type=args.prediction,
        attributes=train.attribute_names if args.attribute_weight > 0 else (),
        attribute_weight=args.attribute_weight,
        task_classes=train.num_task_classes if args.task_weight > 0 else 0,
        task_weight=args.task_weight,
    )
    result = train_diffae(
        train, config, _train_config(args), _checkpoint_dir(args), args.resume, held, init, where
    )
    return _finish(args, "diffae", result, config.to_dict(), len(train), where)


def _init_state(source: str, out: Path | None) -> tuple[dict[str, torch.Tensor], str | None]:
    """Weights to warm-start from, and the command that made them: a store entry (its
    recorded command, so the new manifest holds the whole recipe ``A && B``) or a
    checkpoint file (its EMA; no recipe: the manifest names the file)."""
    import torch

    from services.kernels.store import ModelStore

    path = Path(source)
    if path.suffix == ".pt" and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        return dict(state["ema"]), None
    manifest, tensors = ModelStore(out).load(source, kind="diffae")
    return tensors, manifest.command


def run_train_classifier(args: argparse.Namespace) -> int:
    from services.kernels.classifiers import ClassifierConfig
    from services.kernels.training.classifier import train_classifier

    if args.role == "attacker" and not args.attribute:
        print("veil train classifier: --role attacker needs --attribute", file=sys.stderr)
        return 2
    if args.attribute == "pose":
        args.attribute = None  # the task itself
    target = args.attribute or "pose"
    prefix = {"task": "task", "unauthorized": "unauth", "surrogate": "surrogate"}
    names = {
        role: "-".join(filter(None, (short, args.attribute, args.arch)))
        for role, short in prefix.items()
    }
    args.name = args.name or names.get(args.role, f"attacker-{target}-{args.arch}")
    where = _join(args)
    train, held = _data(args, where)
    num_classes = (
        train.num_task_classes
        if target == "pose"
        else int(train.attributes[:, train.attribute_names.index(target)].max()) + 1
        if target in train.attribute_names
        else 2
    )
    config = ClassifierConfig(
        arch=args.arch,
        num_classes=max(num_classes, 2),
        resolution=args.resolution,
        width=args.width,
        role=args.role,
        target=target,
    )
    result = train_classifier(
        train,
        config,
        _train_config(args),
        _checkpoint_dir(args),
        args.resume,
        held,
        augment=args.augment,
        where=where,
    )
    return _finish(args, "classifier", result, config.to_dict(), len(train), where)


def run_train_probes(args: argparse.Namespace) -> int:
    import torch

    from services.kernels.models import load_diffae
    from services.kernels.probes import fit_probes, unreadable
    from services.kernels.store import ModelStore
    from services.kernels.training.data import load_table
    from services.kernels.training.diffae import encode_table
    from services.kernels.training.loop import format_table

    torch.set_num_threads(_threads(args))
    torch.manual_seed(args.seed)
    store = ModelStore(args.out)
    encoder_manifest = store.manifest(args.diffae)
    model = load_diffae(args.diffae, store)
    table = load_table(args.data, model.config.resolution, args.cache_dir)
    codes = encode_table(model, table)
    probes = fit_probes(codes, table.attributes, table.attribute_names, quantile=args.quantile)
    missing = unreadable(probes, args.threshold)
    config = {
        "attributes": list(probes.names),
        "diffae": args.diffae,
        "diffae_sha256": encoder_manifest.sha256,
        "z_dim": model.config.z_dim,
        "quantile": args.quantile,
        "threshold": args.threshold,
    }
    metrics = {
        "train_accuracy": probes.train_accuracy,
        "heldout_accuracy": probes.heldout_accuracy,
        "clip_bounds": dict(zip(probes.names, map(float, probes.clip_bounds), strict=True)),
        "unreadable": sorted(missing),
    }
    if not args.no_eraser:
        metrics.update(_fit_eraser(probes, codes, table.attributes))
    manifest = store.save(
        args.name,
        "probes",
        probes.tensors(),
        config,
        command=_probes_command(args),
        seed=args.seed,
        data={"uri": args.data, "n": len(table)},
        metrics=metrics,
    )
    rows = {
        name: f"held-out {probes.heldout_accuracy[name]:.3f}  C={float(c):.3f}"
        for name, c in zip(probes.names, probes.clip_bounds, strict=True)
    }
    print(format_table(rows, f"probes on {args.diffae} → {store.path(args.name)}"))
    if missing:
        print(f"not linearly readable (< {args.threshold:.0%}): {sorted(missing)}", file=sys.stderr)
    unregistered = _register(args, manifest)
    return unregistered or (1 if missing and args.strict else 0)


def _fit_eraser(probes: ProbeSet, codes: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Fit the complement's LEACE eraser on the probes' training rows into ``probes``; return
    fresh linear probes' held-out accuracy on the complement before and after it."""
    from services.kernels.erasure import FOLDS, complement_leakage, fit_complement_eraser
    from services.kernels.probes import training_rows

    cut = training_rows(len(codes))
    probes.eraser_matrix, probes.eraser_bias = fit_complement_eraser(
        codes[:cut], labels[:cut], probes.directions, probes.levels
    )
    if len(codes) - cut < 2 * FOLDS:
        return {}  # too few held-out rows to measure it
    leakage = complement_leakage(
        codes[cut:],
        labels[cut:],
        probes.names,
        probes.directions,
        probes.levels,
        probes.eraser_matrix,
        probes.eraser_bias,
    )
    return {
        "complement_chance": leakage.chance,
        "complement_probe_accuracy_before": leakage.before,
        "complement_probe_accuracy_after": leakage.after,
    }


def _probes_command(args: argparse.Namespace) -> str:
    return (
        f"veil train probes --diffae {args.diffae} --name {args.name} --data '{args.data}'"
        f" --quantile {args.quantile} --threshold {args.threshold} --seed {args.seed}"
        + (" --no-eraser" if args.no_eraser else "")
    )


def _fraction(text: str) -> float:
    """A number or a fraction such as ``16/255``."""
    top, _, bottom = text.partition("/")
    return float(top) / float(bottom) if bottom else float(top)


def _protector_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--authorized", default="task-resnet", help="store entry of the authorized classifier"
    )
    parser.add_argument("--epsilon", type=_fraction, default=16 / 255, help="L-inf, [0, 1] units")
    parser.add_argument("--ce-weight", type=float, default=1.0, help="lambda of the objective")
    parser.add_argument("--feature-layer", default="penultimate", help="feature map to distort")
    parser.add_argument("--widths", type=_ints, default=(32, 64), help="channels per level")
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks at the bottom")
    parser.add_argument(
        "--surrogates",
        type=_names,
        default=None,
        help="store entries of the defender's own models to fool too, comma-separated"
        " (none: the authorized model alone)",
    )
    parser.add_argument("--surrogate-weight", type=float, default=1.0, help="mu of their term")
    parser.add_argument(
        "--surrogate-cap", type=float, help="each surrogate CE counts up to this (default: no cap)"
    )
    parser.add_argument("--diversity", type=int, default=0, help="input diversity, pixels")
    parser.add_argument(
        "--robustness",
        choices=("none", "jpeg", "full"),
        default="none",
        help="pipelines every step's objective is drawn from (pipeline.sample_transform)",
    )
    parser.add_argument(
        "--init-from",
        help="warm start: a protector store entry of the same widths and blocks",
    )


def _names(text: str) -> tuple[str, ...]:
    """``a,b`` → ("a", "b"); ``none`` or empty → ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run_train_protector(args: argparse.Namespace) -> int:
    """The generator of :mod:`services.kernels.protector`, trained against ``--authorized``
    (read from the same store it is written to: serving loads both from one store)."""
    from services.common.errors import VeilError
    from services.kernels.models import load_classifier
    from services.kernels.protector import ProtectorConfig
    from services.kernels.store import ModelStore
    from services.kernels.training.protector import train_protector

    args.name = args.name or "protector"
    store = ModelStore(args.out)
    try:
        authorized = load_classifier(args.authorized, store)
    except VeilError as exc:
        print(f"veil train protector: --authorized: {exc.message}", file=sys.stderr)
        return 2
    try:
        surrogates = [load_classifier(name, store) for name in args.surrogates or ()]
    except VeilError as exc:
        print(f"veil train protector: --surrogates: {exc.message}", file=sys.stderr)
        return 2
    shape = (authorized.config.resolution, authorized.config.num_classes)
    if any((s.config.resolution, s.config.num_classes) != shape for s in surrogates):
        print(
            "veil train protector: --surrogates must share the authorized model's resolution"
            " and classes",
            file=sys.stderr,
        )
        return 2
    if authorized.config.resolution != args.resolution:
        print(
            f"veil train protector: {args.authorized} works at "
            f"{authorized.config.resolution}x{authorized.config.resolution}; pass --resolution"
            f" {authorized.config.resolution}",
            file=sys.stderr,
        )
        return 2
    if args.feature_layer not in authorized.feature_layers:
        print(
            f"veil train protector: --feature-layer must be one of {authorized.feature_layers}",
            file=sys.stderr,
        )
        return 2
    config = ProtectorConfig(
        resolution=args.resolution,
        widths=tuple(args.widths),
        blocks=args.blocks,
        epsilon=args.epsilon,
        feature_layer=args.feature_layer,
        ce_weight=args.ce_weight,
        authorized=args.authorized,
        authorized_sha256=store.manifest(args.authorized).sha256,
        surrogates=tuple(args.surrogates or ()),
        surrogate_weight=args.surrogate_weight,
        surrogate_cap=args.surrogate_cap,
        diversity=args.diversity,
        robustness=args.robustness,
    )
    init = None
    if args.init_from:
        try:
            manifest, init = store.load(args.init_from, kind="protector")
        except VeilError as exc:
            print(f"veil train protector: --init-from: {exc.message}", file=sys.stderr)
            return 2
        start = ProtectorConfig.from_dict(manifest.config)
        if (start.arch, start.widths, start.blocks) != (config.arch, config.widths, config.blocks):
            print(
                f"veil train protector: --init-from {args.init_from} has widths {start.widths}"
                f" and blocks {start.blocks}; pass the same",
                file=sys.stderr,
            )
            return 2
        args.init_recipe = manifest.command
    where = _join(args, cuda=False)
    train, held = _data(args, where)
    result = train_protector(
        train,
        authorized,
        config,
        _train_config(args),
        _checkpoint_dir(args),
        args.resume,
        held,
        surrogates,
        init,
        where,
    )
    return _finish(args, "protector", result, config.to_dict(), len(train), where)
