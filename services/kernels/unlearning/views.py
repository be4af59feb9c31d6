"""The three views of a revision: what the base model saw, what replaced it, and held-out.

* ``original``: the base training set as the base model was trained on it (the first
  ``1 − holdout`` of its URI, as ``veil train`` splits it), ``heldout_original`` the rest:
  faces of the same distribution the base model never saw, the non-members of the
  membership-inference attack.
* ``revised``: the revised set, minus removed samples and minus any sample whose id falls
  in the held-out part (so the held-out originals stay unseen by every model).
* ``test``: where task accuracy and attribute leakage are measured. For a synthfaces base
  it is a fresh set of *natural* faces (another seed, no correlation), where an attribute
  says nothing about the pose: a probe reads what the features encode beyond the task;
  otherwise the held-out originals.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from services.common.errors import InvalidArgument, NotFound
from services.kernels.data import SynthFaces, open_dataset
from services.kernels.defaults import DEFAULT_CACHE
from services.kernels.training.data import ImageTable
from services.kernels.unlearning.core import Progress, Revision

HOLDOUT = 0.05
"""The held-out fraction ``veil train`` keeps back (services/cli/train.py)."""
TEST_SIZE = 2000
TEST_SEED_OFFSET = 1000


@dataclass
class Views:
    original: ImageTable
    original_ids: tuple[str, ...]
    heldout_original: ImageTable
    revised: ImageTable
    revised_ids: tuple[str, ...]
    test: ImageTable
    forgotten: torch.Tensor
    """Row indices into ``original`` of the replaced and removed samples."""
    revision: Revision
    base_uri: str
    test_uri: str

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return self.test.attribute_names

    def key(self) -> str:
        """A digest of everything the data contributes to a result (for caches)."""
        text = json.dumps(
            {
                "base": self.base_uri,
                "test": self.test_uri,
                "revised": self.revision.dataset_uri,
                "removed": _digest(self.revision.removed_ids),
                "replaced": _digest(self.revision.replaced_ids),
                "n": [len(self.original), len(self.revised), len(self.test)],
                "resolution": self.original.resolution,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def _table(uri: str, resolution: int, cache_dir: Path | None) -> tuple[ImageTable, tuple[str, ...]]:
    dataset = open_dataset(uri, resolution=resolution)
    if isinstance(dataset, SynthFaces):
        pixels = dataset.materialize(cache_dir=cache_dir)
    else:
        pixels = np.stack([dataset.pixels(i) for i in range(len(dataset))])
    table = ImageTable(
        images=torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))),
        attributes=torch.from_numpy(dataset.attributes.copy()),
        tasks=torch.from_numpy(dataset.tasks.copy()),
        attribute_names=dataset.attribute_names,
        num_task_classes=dataset.num_task_classes,
        uri=uri,
    )
    return table, dataset.sample_ids


def take(table: ImageTable, rows: torch.Tensor) -> ImageTable:
    """The rows ``rows`` of ``table`` (a copy)."""
    return ImageTable(
        table.images[rows],
        table.attributes[rows],
        table.tasks[rows],
        table.attribute_names,
        table.num_task_classes,
        table.uri,
    )


def natural_test_uri(base_uri: str, size: int = TEST_SIZE) -> str | None:
    """For a synthfaces base: natural faces of another seed, same attributes; else None."""
    parts = urlsplit(base_uri)
    if parts.scheme != "synthfaces":
        return None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    seed = int(query.get("seed", 0)) + TEST_SEED_OFFSET
    uri = f"synthfaces://?n={size}&seed={seed}"
    if "attributes" in query:
        uri += f"&attributes={query['attributes']}"
    return uri


def _unknown(ids: Sequence[str], known: set[str], what: str) -> None:
    missing = [i for i in ids if i not in known]
    if missing:
        raise NotFound(
            f"{len(missing)} {what} ids are not in the base training set, e.g. {missing[:3]}",
            details={"unknown_ids": ",".join(missing[:5]), "count": len(missing)},
        )


def open_views(
    base_data_uri: str,
    revision: Revision,
    resolution: int,
    *,
    test_uri: str | None = None,
    holdout: float = HOLDOUT,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    progress: Progress | None = None,
) -> Views:
    """Load the views of ``revision`` of the data the base model was trained on
    (``base_data_uri``: its manifest's ``data.uri``). Ids of removed or replaced samples
    that the base data lacks are :class:`NotFound`, naming a few."""
    if not 0.0 < holdout < 1.0:
        raise InvalidArgument(f"holdout must be in (0, 1); got {holdout}")
    cache = None if cache_dir is None else Path(cache_dir)

    def tick(fraction: float) -> None:
        if progress is not None:
            progress("loading", fraction)

    tick(0.0)
    full, full_ids = _table(base_data_uri, resolution, cache)
    cut = len(full) - max(1, round(len(full) * holdout))
    original, heldout = full._take(slice(0, cut)), full._take(slice(cut, len(full)))
    original_ids, heldout_ids = full_ids[:cut], set(full_ids[cut:])
    _unknown(revision.removed_ids, set(full_ids), "removed")
    _unknown(revision.replaced_ids, set(full_ids), "replaced")
    tick(0.4)
    revised_all, revised_all_ids = _table(revision.dataset_uri, resolution, cache)
    tick(0.8)
    if revised_all.attribute_names != full.attribute_names:
        raise InvalidArgument(
            f"the revised set has attributes {revised_all.attribute_names}; the base set has "
            f"{full.attribute_names}"
        )
    present = set(revised_all_ids)
    missing = [i for i in revision.replaced_ids if i not in present]
    if missing:
        raise NotFound(f"replaced ids missing from the revised set, e.g. {missing[:3]}")
    dropped = set(revision.removed_ids) | heldout_ids
    keep = [i for i, sid in enumerate(revised_all_ids) if sid not in dropped]
    revised = take(revised_all, torch.tensor(keep, dtype=torch.long))
    if len(revised) == 0:
        raise InvalidArgument("the revision leaves no training samples")
    forgotten_ids = set(revision.removed_ids) | set(revision.replaced_ids)
    forgotten = [i for i, sid in enumerate(original_ids) if sid in forgotten_ids]
    chosen = test_uri or natural_test_uri(base_data_uri)
    test = heldout if chosen is None else _table(chosen, resolution, cache)[0]
    tick(1.0)
    return Views(
        original=original,
        original_ids=tuple(original_ids),
        heldout_original=heldout,
        revised=revised,
        revised_ids=tuple(revised_all_ids[i] for i in keep),
        test=test,
        forgotten=torch.tensor(forgotten, dtype=torch.long),
        revision=revision,
        base_uri=base_data_uri,
        test_uri=chosen or f"{base_data_uri}#holdout={holdout}",
    )


def ideal_revision(
    base_data_uri: str, attributes: Sequence[str], resample_seed: int = 1
) -> Revision:
    """The synthetic "ideal" revision of a synthfaces base: every sample re-rendered with
    ``attributes`` redrawn independently (data/revision.py); all ids are replaced."""
    parts = urlsplit(base_data_uri)
    if parts.scheme != "synthfaces":
        raise InvalidArgument(f"the ideal revision needs a synthfaces:// base; got {base_data_uri}")
    uri = f"{base_data_uri}&resample={','.join(attributes)}&resample_seed={resample_seed}"
    ids = open_dataset(base_data_uri, resolution=8).sample_ids
    return Revision(dataset_uri=uri, replaced_ids=tuple(ids))
