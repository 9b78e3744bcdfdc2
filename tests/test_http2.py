"""HTTP/1.1 and HTTP/2 on one port: h2c with prior knowledge, and h2 over TLS via ALPN."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import Gateway, start_gateway, stop_gateway

BODY = {"model": "local-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _stream_over(client: httpx.Client, gateway: Gateway) -> str:
    with client.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json=BODY,
        headers={"authorization": f"Bearer {gateway.key}"},
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
        assert body.endswith("data: [DONE]\n\n")
        return response.http_version


def test_h2c_prior_knowledge_and_http11_share_the_port(gateway):
    with httpx.Client(http1=False, http2=True) as h2:
        assert _stream_over(h2, gateway) == "HTTP/2"
    with httpx.Client() as h1:
        assert _stream_over(h1, gateway) == "HTTP/1.1"


def test_many_requests_multiplex_over_one_h2_connection(gateway):
    transport = httpx.HTTPTransport(http1=False, http2=True)
    with httpx.Client(transport=transport) as client:
        versions = {_stream_over(client, gateway) for _ in range(5)}
        pool = transport._pool
        assert len(pool.connections) == 1  # five requests, one connection
    assert versions == {"HTTP/2"}


@pytest.fixture(scope="module")
def tls_gateway(upstream, tmp_path_factory) -> Iterator[tuple[Gateway, Path]]:
    workdir = tmp_path_factory.mktemp("tls")
    ca, cert, key = self_signed(workdir)
    running = start_gateway(upstream, workdir, "--tls-cert", str(cert), "--tls-key", str(key))
    yield running, ca
    stop_gateway(running)


def test_h2_over_tls_via_alpn(tls_gateway):
    gateway, cert = tls_gateway
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(http2=True, verify=context) as client:
        assert _stream_over(client, gateway) == "HTTP/2"
    with httpx.Client(http2=False, verify=context) as client:
        assert _stream_over(client, gateway) == "HTTP/1.1"


def test_openai_sdk_over_tls_and_http2(tls_gateway):
    gateway, cert = tls_gateway
    context = ssl.create_default_context(cafile=str(cert))
    transport = httpx2.HTTPTransport(http2=True, verify=context)  # the SDK's own HTTP library
    http_client = httpx2.Client(transport=transport)
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.key, http_client=http_client
    ) as client:
        for _ in range(3):  # the page's three back-to-back streaming calls on one client
            with client.chat.completions.with_streaming_response.create(
                model="local-model", messages=[{"role": "user", "content": "hi"}], stream=True
            ) as raw:
                assert raw.http_version == "HTTP/2"
                stream = raw.parse()
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == "Hello world"
            assert len(transport._pool.connections) == 1  # reused: one TLS handshake in all


def self_signed(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a 127.0.0.1 certificate it signed: (CA cert to trust, server PEM key).

    The server certificate file holds the leaf then the CA, as servers send them.
    """
    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CallMissed test CA")])
    ca = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, is_ca=True)
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    leaf = _certificate(leaf_name, ca_name, leaf_key.public_key(), ca_key, is_ca=False)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    is_ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())
