"""TLS and mTLS on a real server, with certificates made by the openssl CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.runtime.diagnostics import diagnostics_mount
from services.runtime.server import ServiceApp
from tests.support.server import bearer, test_settings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(ca: str, tmp: Path, name: str, *extensions: str) -> tuple[Path, Path]:
    key, csr, crt = tmp / f"{name}.key", tmp / f"{name}.csr", tmp / f"{name}.crt"
    ext = tmp / f"{name}.ext"
    ext.write_text("\n".join(extensions) + "\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return crt, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = str(tmp / "ca")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{ca}.key",
        "-out",
        f"{ca}.crt",
        "-days",
        "2",
        "-subj",
        "/CN=veil-test-ca",
    )
    server_crt, server_key = _issue(ca, tmp, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client_crt, client_key = _issue(ca, tmp, "client", "extendedKeyUsage=clientAuth")
    return {
        "ca": Path(f"{ca}.crt"),
        "server_crt": server_crt,
        "server_key": server_key,
        "client_crt": client_crt,
        "client_key": client_key,
    }


def _app(pki: dict[str, Path], mtls: bool) -> ServiceApp:
    s = test_settings(
        tls_cert_file=pki["server_crt"],
        tls_key_file=pki["server_key"],
        tls_client_ca_file=pki["ca"] if mtls else None,
    )
    return ServiceApp("test", s, [diagnostics_mount("test", s.image_limits)])


def _whoami(target: str, pki: dict[str, Path], with_client_cert: bool) -> str:
    creds = grpc.ssl_channel_credentials(
        pki["ca"].read_bytes(),
        private_key=pki["client_key"].read_bytes() if with_client_cert else None,
        certificate_chain=pki["client_crt"].read_bytes() if with_client_cert else None,
    )
    with grpc.secure_channel(target, creds) as channel:
        stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
        return stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=10).tenant_id


def test_tls(serve_app, pki):
    running = serve_app(_app(pki, mtls=False))
    assert _whoami(running.target, pki, with_client_cert=False) == "acme"
    with grpc.insecure_channel(running.target) as plain, pytest.raises(grpc.RpcError) as err:
        diagnostics_pb2_grpc.DiagnosticsStub(plain).WhoAmI(
            diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate(serve_app, pki):
    running = serve_app(_app(pki, mtls=True))
    assert _whoami(running.target, pki, with_client_cert=True) == "acme"
    with pytest.raises(grpc.RpcError) as err:
        _whoami(running.target, pki, with_client_cert=False)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
