"""A throwaway test CA and a server certificate for ``127.0.0.1`` / ``localhost``.

MSAL refuses ``http://`` authorities, so the identity sandbox must serve TLS. The keys live
in memory and the PEM files are written to a directory the caller owns (a pytest
``tmp_path``). Clients trust the CA either through an ``ssl.SSLContext``
(``client_ssl_context()``) or through the environment: ``SSL_CERT_FILE`` (aiohttp, msrest,
httpx) and ``REQUESTS_CA_BUNDLE`` (requests, MSAL) *replace* the default CA list, so point
them at ``bundle_path`` (the test CA followed by certifi's CAs), never at ``ca_path`` alone.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TestTLS:
    """PEM files of a test CA and of a server certificate it signed."""

    __test__ = False  # not a pytest test class, despite the name

    ca_path: Path  # the test CA certificate alone
    bundle_path: Path  # the test CA followed by certifi's CAs (for SSL_CERT_FILE / REQUESTS_CA_BUNDLE)
    cert_path: Path  # the server certificate (127.0.0.1, localhost)
    key_path: Path  # the server's private key (unencrypted PKCS#8)

    def server_ssl_context(self) -> ssl.SSLContext:
        """For ``web.TCPSite(..., ssl_context=...)`` or ``aiohttp_server(app, ssl=...)``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_ssl_context(self) -> ssl.SSLContext:
        """Trusts the test CA and the system CAs (certifi), with hostname checks on."""
        return ssl.create_default_context(cafile=str(self.bundle_path))

    def env(self) -> dict[str, str]:
        """Environment that makes requests, MSAL, aiohttp, httpx and msrest trust the CA."""
        return {"SSL_CERT_FILE": str(self.bundle_path), "REQUESTS_CA_BUNDLE": str(self.bundle_path)}


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "neetoChat Teams bridge tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_test_tls(directory: Path, *, days: int = 7) -> TestTLS:
    """Create a CA and a server certificate for ``127.0.0.1``/``localhost`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("neetoChat Teams bridge test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1")).issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    tls = TestTLS(
        ca_path=directory / "test-ca.pem",
        bundle_path=directory / "ca-bundle.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server-key.pem",
    )
    tls.ca_path.write_bytes(_pem(ca_cert))
    tls.bundle_path.write_bytes(_pem(ca_cert) + b"\n" + Path(certifi.where()).read_bytes())
    tls.cert_path.write_bytes(_pem(cert))
    tls.key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    tls.key_path.chmod(0o600)
    return tls
