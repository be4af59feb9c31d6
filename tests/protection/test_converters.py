"""The protection service's wire mapping, without a server: the Robustness enum both ways."""

from __future__ import annotations

import pytest

from services._proto.veil.v1 import protection_pb2 as pb
from services.common.errors import InvalidArgument
from services.inference.backend import ROBUSTNESS
from services.protection import converters as cv
from services.protection.core import Params, Protected


def protected(robustness: str) -> Protected:
    return Protected(
        image=b"png",
        linf=0.05,
        feature_distortion=0.1,
        authorized_label=1,
        authorized_prediction_after=1,
        steps_run=3,
        early_stopped=False,
        mode="fmd",
        psnr_db=30.0,
        model="veil_classifier",
        version=1,
        robustness=robustness,
    )


@pytest.mark.parametrize(
    "value,name",
    [
        (pb.ROBUSTNESS_UNSPECIFIED, "jpeg"),  # the server default
        (pb.ROBUSTNESS_NONE, "none"),
        (pb.ROBUSTNESS_JPEG, "jpeg"),
        (pb.ROBUSTNESS_FULL, "full"),
    ],
)
def test_robustness_from_the_wire(value: int, name: str) -> None:
    params = cv.params_from_pb(pb.FmdParams(robustness=value))  # type: ignore[arg-type]
    assert params.robustness == name
    assert Params().robustness == "jpeg"


def test_every_kernel_robustness_goes_back_to_the_wire_and_round_trips() -> None:
    assert set(cv.ROBUSTNESS_OF) == set(ROBUSTNESS)
    for name in ROBUSTNESS:
        value = cv.protected_to_pb(protected(name), "PNG").robustness
        assert value != pb.ROBUSTNESS_UNSPECIFIED
        assert cv.params_from_pb(pb.FmdParams(robustness=value)).robustness == name


def test_an_unknown_robustness_is_invalid_argument_with_its_field() -> None:
    with pytest.raises(InvalidArgument) as exc:
        cv.params_from_pb(pb.FmdParams(robustness=7))  # type: ignore[arg-type]
    assert exc.value.details == {"field": "params.robustness"}
