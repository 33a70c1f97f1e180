"""TLS certificates and SuperNode keys of the deployment kit (:mod:`flower_app.deploy.cli`).

Made with the ``cryptography`` package that flwr itself depends on: ECDSA P-384 keys, a
self-signed CA, a SuperLink certificate naming every address SuperNodes connect to, and
SuperNode key pairs in the OpenSSH formats ``flower-supernode`` and ``flwr supernode register`` read.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The SuperLink starts its own ServerApp runner, which connects over TLS to the SuperLink's
# --host, or to 127.0.0.1 when that is 0.0.0.0: the certificate must name loopback too.
LOOPBACK = ("127.0.0.1", "localhost")
CURVE = ec.SECP384R1  # what `flwr supernode register` and Flower's docs use for SuperNode keys
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DNS = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


class DeployError(ValueError):
    """Bad input or a refused action; the message is the one line the user sees."""


# --- certificates -----------------------------------------------------------------------------


def alt_name(address: str) -> x509.GeneralName:
    """An IP address or a DNS name as a subjectAltName entry."""
    try:
        return x509.IPAddress(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        pass
    if not _DNS.fullmatch(address):
        raise DeployError(f"--address {address!r} is neither an IP address nor a DNS name (no port here)")
    return x509.DNSName(address.lower())


def alt_names(addresses: Sequence[str]) -> list[x509.GeneralName]:
    """The addresses, then loopback, each once, in that order."""
    names: list[x509.GeneralName] = []
    for address in [*addresses, *LOOPBACK]:
        name = alt_name(address)
        if name not in names:
            names.append(name)
    return names


def make_ca(days: int, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hetero-split-prefix CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, addresses: Sequence[str], days: int, now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A SuperLink certificate signed by the CA whose subjectAltName lists ``addresses`` and loopback."""
    if not addresses:
        raise DeployError("give at least one --address: the IP or DNS name SuperNodes connect to")
    key = ec.generate_private_key(CURVE())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _validity(x509.CertificateBuilder(), now, days)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, addresses[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .add_extension(x509.SubjectAlternativeName(alt_names(addresses)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _validity(builder: x509.CertificateBuilder, now: dt.datetime, days: int) -> x509.CertificateBuilder:
    if days < 1:
        raise DeployError(f"--days {days} must be at least 1")
    # Back-dated an hour: a device whose clock runs a little behind still accepts it.
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def pem_certificate(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- SuperNode keys ---------------------------------------------------------------------------


def supernode_key_pair(name: str) -> tuple[bytes, bytes]:
    """``(private, public)`` of a new SuperNode key in the OpenSSH formats flwr loads.

    ``flower-supernode --auth-supernode-private-key`` reads the private key with
    ``load_ssh_private_key``; ``flwr supernode register`` reads the public one with
    ``load_ssh_public_key`` (a NIST curve). The public line ends with ``name`` as its comment.
    """
    check_name(name)
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {name}\n".encode()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name.endswith(".pub"):
        raise DeployError(f"key name {name!r}: use letters, digits, '.', '_' and '-' (no path, no .pub)")
    return name
