"""Server reflection under both names clients speak, ``grpc.reflection.v1`` (what recent
grpcurl, grpc_cli and Postman try first) and the older ``grpc.reflection.v1alpha``, so that
every service, message and method of the server can be described without its ``.proto``
files.

grpcio-reflection ships only v1alpha. v1 is the same protocol under a new package — the
messages match field for field — so one servicer answers both names with the v1alpha
messages on the wire. So that reflection can describe itself under both names too, the v1
file is derived from the v1alpha one (package and options renamed) into a private pool,
never the default one, where a real v1 module could later be loaded without a clash.

The servicer is ours rather than grpcio-reflection's also because the upb descriptor pool
does not resolve method symbols such as ``veil.v1.Accountant.Spend`` (what ``grpcurl
describe`` sends), so such a lookup falls back to the method's service. A symbol resolves
once the module that defines it (a ``*_pb2``) is imported, as every mounted service's is.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as pb

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)
"""The full names reflection is served under."""
T = TypeVar("T")


@functools.cache
def _v1_pool() -> descriptor_pool.DescriptorPool:
    """A pool holding ``grpc/reflection/v1/reflection.proto``, derived from v1alpha."""
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for f in message.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(old, new, 1)
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(old, new, 1)
        method.output_type = method.output_type.replace(old, new, 1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


class ReflectionServicer:
    """Answers ``ServerReflectionInfo`` from the default descriptor pool (then the v1 one)."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._services = sorted({*service_names, *SERVICE_NAMES})
        self._pools = (descriptor_pool.Default(), _v1_pool())

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[pb.ServerReflectionRequest], context: object
    ) -> AsyncIterator[pb.ServerReflectionResponse]:
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        """The response to one request; NOT_FOUND or INVALID_ARGUMENT inside it on failure."""
        response = pb.ServerReflectionResponse(valid_host=request.host, original_request=request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                response.list_services_response.service.extend(
                    pb.ServiceResponse(name=name) for name in self._services
                )
            elif kind == "file_by_filename":
                name = request.file_by_filename
                self._add_files(response, self._find(lambda p: p.FindFileByName(name)))
            elif kind == "file_containing_symbol":
                symbol = request.file_containing_symbol
                self._add_files(response, self._find(lambda p: _file_of_symbol(p, symbol)))
            elif kind == "file_containing_extension":
                ext = request.file_containing_extension
                self._add_files(response, self._find(lambda p: _file_of_extension(p, ext)))
            elif kind == "all_extension_numbers_of_type":
                self._add_extension_numbers(response, request.all_extension_numbers_of_type)
            else:
                return _error(response, grpc.StatusCode.INVALID_ARGUMENT, "no request kind set")
        except KeyError:
            return _error(response, grpc.StatusCode.NOT_FOUND, "not found")
        return response

    def _find(self, lookup: Callable[[descriptor_pool.DescriptorPool], T]) -> T:
        for pool in self._pools:
            try:
                return lookup(pool)
            except KeyError:
                continue
        raise KeyError("not found")

    @staticmethod
    def _add_files(response: pb.ServerReflectionResponse, file: FileDescriptor) -> None:
        """The file and, as grpcurl expects, every file it depends on, transitively."""
        seen: dict[str, FileDescriptor] = {}
        todo = [file]
        while todo:
            f = todo.pop()
            if f.name not in seen:
                seen[f.name] = f
                todo.extend(f.dependencies)
        for f in seen.values():
            proto = descriptor_pb2.FileDescriptorProto()
            f.CopyToProto(proto)
            response.file_descriptor_response.file_descriptor_proto.append(
                proto.SerializeToString()
            )

    def _add_extension_numbers(self, response: pb.ServerReflectionResponse, type_name: str) -> None:
        pool, message = self._find(lambda p: (p, p.FindMessageTypeByName(type_name)))
        numbers = sorted(ext.number for ext in pool.FindAllExtensions(message))
        response.all_extension_numbers_response.base_type_name = message.full_name
        response.all_extension_numbers_response.extension_number.extend(numbers)


def _file_of_symbol(pool: descriptor_pool.DescriptorPool, symbol: str) -> FileDescriptor:
    try:
        return pool.FindFileContainingSymbol(symbol)
    except KeyError:
        service, _, method = symbol.rpartition(".")
        found = pool.FindServiceByName(service)  # KeyError if no such service either
        if method not in found.methods_by_name:
            raise
        return found.file


def _file_of_extension(
    pool: descriptor_pool.DescriptorPool, ext: pb.ExtensionRequest
) -> FileDescriptor:
    message = pool.FindMessageTypeByName(ext.containing_type)
    extension = pool.FindExtensionByNumber(message, ext.extension_number)
    return pool.FindFileContainingSymbol(extension.full_name)


def _error(
    response: pb.ServerReflectionResponse, code: grpc.StatusCode, message: str
) -> pb.ServerReflectionResponse:
    response.ClearField("message_response")
    response.error_response.error_code = code.value[0]
    response.error_response.error_message = message
    return response


def add_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (v1 and v1alpha) on ``server`` for ``service_names`` and itself."""
    servicer = ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=pb.ServerReflectionRequest.FromString,
        response_serializer=pb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in SERVICE_NAMES
        ]
    )
