"""Health ``List``, unimplemented methods, and server reflection (v1 and v1alpha) on a real
server: a method the servicer lacks is UNIMPLEMENTED without an ERROR in the log, and every
service, message and method can be described, by grpcio-reflection's client, by a v1 client
built from the server's own description of v1, and by ``grpcurl`` when one is installed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.runtime.server import Mount, ServiceApp
from tests.support.server import bearer, make_app, test_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
METHOD = "veil.v1.Diagnostics.WhoAmI"


@pytest.fixture
def server(serve_app):
    return serve_app(make_app())


def test_health_list_reports_every_name(server, channel_to):
    list_ = channel_to(server).unary_unary(
        "/grpc.health.v1.Health/List",
        request_serializer=health_pb2.HealthListRequest.SerializeToString,
        response_deserializer=health_pb2.HealthListResponse.FromString,
    )
    response = list_(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: r.status for name, r in response.statuses.items()}
    assert statuses == dict.fromkeys(("", "liveness", "readiness", "veil.v1.Diagnostics"), SERVING)


def test_unimplemented_methods_are_unimplemented_quietly(serve_app, channel_to, caplog):
    """The generated base servicer raises NotImplementedError; a path nobody registered is
    grpc's own unimplemented handler. Neither is a fault of the server."""
    bare = Mount(
        "veil.v1.Diagnostics",
        diagnostics_pb2_grpc.DiagnosticsServicer(),
        diagnostics_pb2_grpc.add_DiagnosticsServicer_to_server,
    )
    channel = channel_to(serve_app(ServiceApp("test", test_settings(), [bare])))
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
    unknown = channel.unary_unary("/veil.v1.Diagnostics/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as servicer_lacks:
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=5)
    with pytest.raises(grpc.RpcError) as nobody_registered:
        unknown(b"", metadata=bearer(), timeout=5)
    assert servicer_lacks.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "WhoAmI" in servicer_lacks.value.details()
    assert nobody_registered.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def reflect(channel: grpc.Channel, version: str, request, response_type=None):
    """One request/response exchange with the server's reflection service ``version``."""
    response_type = response_type or reflection_pb2.ServerReflectionResponse
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return next(iter(call(iter([request]), timeout=5)))


def files_of(response) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    return {f.name: f for f in files}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_both_versions_list_services_and_resolve_a_method(server, channel_to, version):
    channel = channel_to(server)
    listed = reflect(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert names == {
        "veil.v1.Diagnostics",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=METHOD)
    files = files_of(reflect(channel, version, request))
    assert "veil/v1/common.proto" in files  # with its dependencies, as clients expect
    (service,) = files["veil/v1/diagnostics.proto"].service
    assert "WhoAmI" in {m.name for m in service.method}
    missing = reflection_pb2.ServerReflectionRequest(file_containing_symbol="veil.v1.Nope.X")
    error = reflect(channel, version, missing).error_response
    assert error.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_files_by_name_and_extension_numbers(server, channel_to):
    channel = channel_to(server)
    for name in ("veil/v1/common.proto", "grpc/reflection/v1/reflection.proto"):
        request = reflection_pb2.ServerReflectionRequest(file_by_filename=name)
        assert name in files_of(reflect(channel, "v1", request))
    request = reflection_pb2.ServerReflectionRequest(
        all_extension_numbers_of_type="google.protobuf.FieldOptions"
    )
    numbers = reflect(channel, "v1", request).all_extension_numbers_response
    assert numbers.base_type_name == "google.protobuf.FieldOptions"
    extension = reflection_pb2.ServerReflectionRequest(
        file_containing_extension=reflection_pb2.ExtensionRequest(
            containing_type="google.protobuf.FieldOptions", extension_number=99_999
        )
    )
    error = reflect(channel, "v1", extension).error_response
    assert error.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_v1_client_built_from_the_servers_own_v1_description(server, channel_to):
    """Describe ``grpc.reflection.v1`` through reflection, build its message classes, and
    speak v1 with them: the v1 service is real v1, not v1alpha under another name."""
    channel = channel_to(server)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    (v1_file,) = files_of(reflect(channel, "v1alpha", request)).values()
    assert (v1_file.name, v1_file.package) == (
        "grpc/reflection/v1/reflection.proto",
        "grpc.reflection.v1",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(v1_file)
    v1 = {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}")
        )
        for name in ("ServerReflectionRequest", "ServerReflectionResponse")
    }
    ask = v1["ServerReflectionRequest"](file_containing_symbol=METHOD)
    response = reflect(channel, "v1", ask, v1["ServerReflectionResponse"])
    assert response.original_request.file_containing_symbol == METHOD
    assert "veil/v1/diagnostics.proto" in files_of(response)


def test_grpcio_reflection_client_finds_the_method(server, channel_to):
    database = ProtoReflectionDescriptorDatabase(channel_to(server))
    assert "veil.v1.Diagnostics" in database.get_services()
    method = descriptor_pool.DescriptorPool(database).FindMethodByName(METHOD)
    assert method.input_type.full_name == "veil.v1.WhoAmIRequest"


GRPCURL = os.environ.get("GRPCURL") or shutil.which("grpcurl")


@pytest.mark.skipif(GRPCURL is None, reason="no grpcurl binary (on PATH or in $GRPCURL)")
def test_grpcurl_describes_and_calls_through_reflection(server):
    def grpcurl(*args: str) -> str:
        done = subprocess.run(
            [str(GRPCURL), "-plaintext", *args], capture_output=True, text=True, timeout=20
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "veil.v1.Diagnostics" in grpcurl(server.target, "list").split()
    described = grpcurl(server.target, "describe", METHOD)
    assert "rpc WhoAmI ( .veil.v1.WhoAmIRequest ) returns ( .veil.v1.WhoAmIResponse )" in described
    token = bearer()[0][1]
    called = json.loads(
        grpcurl(
            "-H", f"authorization: {token}", "-d", "{}", server.target, "veil.v1.Diagnostics/WhoAmI"
        )
    )
    assert "acme" in (called.get("tenant_id"), called.get("tenantId"))
