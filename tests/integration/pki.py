"""
A throw-away certificate authority for the policy hosts nginx serves and the
SMTP hosts of the DANE scenarios: the daemon trusts only this CA in the
tests, so good, wrong-name and expired certificates can all be issued
locally, and TLSA records are computed from the very keys the servers use.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import NamedTuple, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class Pair(NamedTuple):
    """
    A certificate file (leaf, then the CA: the chain a DANE-TA record needs
    the server to send), its key, and the SHA-256 of the leaf's
    SubjectPublicKeyInfo; unpacks as ``cert, key, spki_sha256``.
    """

    cert: Path
    key: Path
    spki_sha256: str

    def tlsa(self) -> str:
        """TLSA rdata ``3 1 1 <spki sha256>`` (DANE-EE) matching this certificate."""
        return f"3 1 1 {self.spki_sha256}"


def spki_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def tlsa_rdata(usage: int, selector: int, mtype: int, cert: x509.Certificate) -> str:
    """
    TLSA rdata text for ``cert``: selector 0 the whole certificate, 1 its
    SubjectPublicKeyInfo; matching type 0 the bytes, 1 SHA-256, 2 SHA-512.
    """
    data = (
        cert.public_bytes(serialization.Encoding.DER) if selector == 0 else spki_der(cert)
    )
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return f"{usage} {selector} {mtype} {data.hex()}"


def tlsa_mismatch(usage: int = 3) -> str:
    """Well-formed, usable TLSA rdata (``<usage> 1 1``) that matches no key anywhere."""
    return f"{usage} 1 1 {hashlib.sha256(b'no certificate has this key').hexdigest()}"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class CertificateAuthority:
    """A root CA written to ``directory/ca.pem`` that issues server certificates."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mxpolicyd test CA")])
        self._name = name
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "ca.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def spki_sha256(self) -> str:
        return hashlib.sha256(spki_der(self._cert)).hexdigest()

    def tlsa(self) -> str:
        """TLSA rdata ``2 1 1 <CA spki sha256>`` (DANE-TA) matching every certificate issued."""
        return f"2 1 1 {self.spki_sha256}"

    def issue(
        self,
        names: Sequence[str],
        *,
        label: str | None = None,
        valid_days: tuple[int, int] = (-1, 30),
    ) -> Pair:
        """
        Issue a server certificate for ``names`` (SANs, the first also the CN),
        valid from ``valid_days[0]`` to ``valid_days[1]`` days from now (a
        negative end makes an expired certificate), written to
        ``<label>.pem``/``.key`` (label: the first name by default).
        """
        label = label or names[0]
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=valid_days[0]))
            .not_valid_after(now + datetime.timedelta(days=valid_days[1]))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        pair = Pair(
            self.directory / f"{label}.pem",
            self.directory / f"{label}.key",
            hashlib.sha256(spki_der(cert)).hexdigest(),
        )
        # nginx and SMTP servers want the chain in the certificate file.
        pair.cert.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + self._cert.public_bytes(serialization.Encoding.PEM)
        )
        _write_key(key, pair.key)
        return pair
