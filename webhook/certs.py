"""Certificates for the webhook's self-managed TLS (`--tls-mode auto`), with `cryptography`.

Pure functions over PEM bytes: make a CA, sign a serving certificate for the webhook Service,
read expiry and issuer, decide when to renew. No I/O: autotls.py stores the results in a Secret.
Keys are EC P-256: fast to generate (RSA 2048 takes ~100 ms here) and accepted by kube-apiserver.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=365)
# Renew when less than this fraction of the lifetime remains (a 1-year leaf: ~4 months early).
RENEW_FRACTION = 1 / 3
# Backdate notBefore so a replica or apiserver with a slightly slow clock accepts a fresh cert.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def generate_ca(common_name: str = "kms-injector-ca", lifetime: dt.timedelta = CA_LIFETIME, now: dt.datetime | None = None) -> KeyPair:
    """A self-signed CA that may only sign end-entity certificates (pathLen 0)."""
    now = now or utcnow()
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names kube-apiserver may use to reach the Service (it dials SERVICE.NAMESPACE.svc)."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def generate_serving_cert(ca: KeyPair, dns_names: list[str], lifetime: dt.timedelta = LEAF_LIFETIME,
                          now: dt.datetime | None = None, ip_addresses: list[str] | None = None) -> KeyPair:
    """A server certificate for `dns_names` signed by `ca`; never outlives the CA."""
    import ipaddress

    now = now or utcnow()
    ca_cert = load_cert(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = _new_key()
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses or []]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0] if dns_names else "kms-injector")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - BACKDATE, ca_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                          content_commitment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# --- reading -------------------------------------------------------------------------------------

def load_cert(pem: bytes) -> x509.Certificate:
    """The first certificate in `pem`; ValueError if there is none."""
    return x509.load_pem_x509_certificate(pem)


def split_pem_bundle(pem: bytes) -> list[bytes]:
    """Each certificate of a concatenated PEM bundle, as its own PEM block."""
    return [c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(pem)] if pem.strip() else []


def ca_bundle(*ca_pems: bytes | None) -> bytes:
    """Concatenate CA certificates (current first), dropping empties and duplicates."""
    out: list[bytes] = []
    for pem in ca_pems:
        for block in split_pem_bundle(pem or b""):
            if block not in out:
                out.append(block)
    return b"".join(out)


def key_matches_cert(cert_pem: bytes, key_pem: bytes) -> bool:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
            load_cert(cert_pem).public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return False


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """True when `cert_pem`'s signature verifies with the CA's key (and the issuer name matches)."""
    try:
        cert, ca = load_cert(cert_pem), load_cert(ca_pem)
        if cert.issuer != ca.subject:
            return False
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def dns_names_of(cert_pem: bytes) -> list[str]:
    try:
        ext = load_cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.DNSName)


def not_after(cert_pem: bytes) -> dt.datetime:
    return load_cert(cert_pem).not_valid_after_utc


def remaining_fraction(cert_pem: bytes, now: dt.datetime | None = None) -> float:
    """Share of the validity period still ahead: 1.0 when fresh, 0 or less when expired."""
    cert = load_cert(cert_pem)
    now = now or utcnow()
    total = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    left = (cert.not_valid_after_utc - now).total_seconds()
    return left / total if total > 0 else 0.0


def needs_renewal(cert_pem: bytes, now: dt.datetime | None = None, fraction: float = RENEW_FRACTION) -> bool:
    """True when less than `fraction` of the lifetime remains, or the PEM does not parse."""
    try:
        return remaining_fraction(cert_pem, now) < fraction
    except ValueError:
        return True


def serial_of(cert_pem: bytes) -> int:
    return load_cert(cert_pem).serial_number
