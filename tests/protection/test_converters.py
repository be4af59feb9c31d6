"""The protection service's wire mapping, without a server: the Robustness and ImageEncoding
enums, and the checks of a response."""

from __future__ import annotations

import pytest

from services._proto.veil.v1 import protection_pb2 as pb
from services.common.errors import InvalidArgument
from services.inference.backend import ROBUSTNESS
from services.protection import converters as cv
from services.protection.core import Check, Params, Protected


def protected(robustness: str, **fields: object) -> Protected:
    return Protected(  # type: ignore[arg-type]
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
        **fields,
    )


@pytest.mark.parametrize(
    "value,name",
    [
        (pb.ROBUSTNESS_UNSPECIFIED, "full"),  # the server default
        (pb.ROBUSTNESS_NONE, "none"),
        (pb.ROBUSTNESS_JPEG, "jpeg"),
        (pb.ROBUSTNESS_FULL, "full"),
    ],
)
def test_robustness_from_the_wire(value: int, name: str) -> None:
    params = cv.params_from_pb(pb.FmdParams(robustness=value))  # type: ignore[arg-type]
    assert params.robustness == name
    assert Params().robustness == "full"


def test_every_kernel_robustness_goes_back_to_the_wire_and_round_trips() -> None:
    assert set(cv.ROBUSTNESS_OF) == set(ROBUSTNESS)
    for name in ROBUSTNESS:
        value = cv.protected_to_pb(protected(name)).robustness
        assert value != pb.ROBUSTNESS_UNSPECIFIED
        assert cv.params_from_pb(pb.FmdParams(robustness=value)).robustness == name


def test_an_unknown_robustness_is_invalid_argument_with_its_field() -> None:
    with pytest.raises(InvalidArgument) as exc:
        cv.params_from_pb(pb.FmdParams(robustness=7))  # type: ignore[arg-type]
    assert exc.value.details == {"field": "params.robustness"}


def request(**fields: object) -> pb.ProtectRequest:
    from services._proto.veil.v1 import common_pb2

    return pb.ProtectRequest(image=common_pb2.Image(data=b"x"), **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value,name",
    [
        (pb.IMAGE_ENCODING_UNSPECIFIED, ""),
        (pb.IMAGE_ENCODING_PNG, "png"),
        (pb.IMAGE_ENCODING_JPEG, "jpeg"),
    ],
)
def test_output_encoding_from_the_wire(value: int, name: str) -> None:
    job = cv.job_from_pb(request(output_encoding=value, jpeg_quality=80), None)
    assert (job.encoding, job.jpeg_quality) == (name, 80)


@pytest.mark.parametrize(
    "fields,field",
    [
        ({"output_encoding": 9}, "output_encoding"),
        ({"jpeg_quality": -1}, "jpeg_quality"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
    ],
)
def test_a_bad_output_request_names_its_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        cv.job_from_pb(request(**fields), None)
    assert exc.value.details == {"field": field}


def test_the_checks_and_the_format_reach_the_wire() -> None:
    checks = (Check("as returned", 1, 2.5), Check("jpeg q70", 0, -0.25))
    out = cv.protected_to_pb(
        protected(
            "jpeg",
            format="JPEG",
            optimised_for=("jpeg q70-95", "8-bit rounding"),
            checks=checks,
            margin=-0.25,
        )
    )
    assert out.image.format_hint == "jpeg"
    assert list(out.optimised_for) == ["jpeg q70-95", "8-bit rounding"]
    assert [(c.transform, c.prediction, c.margin) for c in out.checks] == [
        ("as returned", 1, 2.5),
        ("jpeg q70", 0, -0.25),
    ]
    assert out.margin == -0.25
