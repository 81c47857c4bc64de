"""The school's certificate authority: the one key that lets the proxy show a block page over HTTPS.

A device whose owner installed the school CA (device register: `trusts_school_ca`) accepts a
certificate the proxy mints on the fly, so a blocked HTTPS site can be answered with the
school's block page instead of a bare connection failure. Every other device never sees the
CA: its blocked TLS connections are simply closed.

Layout of the CA directory, as mitmproxy's `confdir` expects it (so the proxy intercepts with
exactly this CA and never generates one of its own):

    mitmproxy-ca.pem         private key + certificate, mode 0600, owned by the proxy's user
    mitmproxy-ca-cert.pem    certificate only (public)
    mitmproxy-dhparam.pem    DH parameters (written here so the proxy never needs write access)
    issued/                  server certificates issued for the appliance's own services

Choices, and why:
- RSA 2048: accepted by every device a primary school owns, including old tablets; mitmproxy
  reuses the CA key for the certificates it mints, so the key type is also the leaf key type.
- Ten years: re-installing a CA on every device is a day's work for a technician.
- No name constraints: the proxy must answer for whichever site the school blocks, including
  sites a technician adds later, so permitted subtrees cannot be known in advance. The CA is
  instead limited to what it is for: path length 0 (it signs no other CA), key usage
  certificate/CRL signing only, and extended key usage `serverAuth` (platforms that honour
  EKU on a CA refuse it for code signing or e-mail).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_KEY_AND_CERT = "mitmproxy-ca.pem"
CA_CERT = "mitmproxy-ca-cert.pem"
DHPARAM = "mitmproxy-dhparam.pem"
ISSUED_DIR = "issued"

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 397  # what browsers accept from any CA; renewals are one command
_BACKDATE = dt.timedelta(days=1)  # devices with a slightly slow clock still accept a new cert


class CAError(Exception):
    """The CA cannot be created, read or used; the message says what to do."""


@dataclass(frozen=True)
class CAInfo:
    subject: str
    sha256_fingerprint: str  # colon-separated upper-case hex, as devices show it
    not_before: dt.datetime
    not_after: dt.datetime
    path: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start: the key is never readable by others."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the umask may have narrowed it; set exactly
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _owner_ids(owner: str | None) -> tuple[int, int] | None:
    if owner is None:
        return None
    try:
        entry = pwd.getpwnam(owner)
    except KeyError as err:
        raise CAError(f"--owner {owner}: no such user on this system") from err
    return entry.pw_uid, entry.pw_gid


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def init_ca(
    ca_dir: str | Path,
    *,
    school_name: str,
    owner: str | None = None,
    force: bool = False,
    now: dt.datetime | None = None,
) -> CAInfo:
    """Create the school CA in `ca_dir`. Refuses to replace an existing CA unless `force`.

    Replacing the CA means re-installing it on every device, so it is never done by accident.
    """
    directory = Path(ca_dir)
    key_file = directory / CA_KEY_AND_CERT
    if key_file.exists() and not force:
        raise CAError(f"{key_file} already exists; the school CA is installed on devices, "
                      "so it is only replaced with --force")
    ids = _owner_ids(owner)
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    now = now or _now()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"{school_name} filtering CA"[:64]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, school_name[:64]),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "schoolgate"),
    ])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    from mitmproxy.certs import DEFAULT_DHPARAM  # heavy import, only when creating

    _write(key_file, key_pem + cert_pem, 0o600)
    _write(directory / CA_CERT, cert_pem, 0o644)
    _write(directory / DHPARAM, DEFAULT_DHPARAM, 0o644)
    if ids is not None:
        uid, gid = ids
        os.chown(directory, uid, gid)
        os.chown(key_file, uid, gid)
    return describe(cert, key_file)


def describe(cert: x509.Certificate, path: Path) -> CAInfo:
    return CAInfo(
        subject=cert.subject.rfc4514_string(),
        sha256_fingerprint=_fingerprint(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        path=path,
    )


def load_ca_cert(ca_dir: str | Path) -> x509.Certificate:
    path = Path(ca_dir) / CA_CERT
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as err:
        raise CAError(f"{path} not found: create the school CA with `schoolgate ca init`") from err
    except ValueError as err:
        raise CAError(f"{path} is not a PEM certificate: {err}") from err


def load_ca(
    ca_dir: str | Path, *, check_key: bool = True
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """The CA certificate and key (needs read access to the key file).

    `check_key=False` skips the RSA key's internal consistency check (tens of milliseconds of
    CPU): for a key this appliance made itself, whose match with the certificate is still checked.
    """
    path = Path(ca_dir) / CA_KEY_AND_CERT
    try:
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise CAError(f"{path} not found: create the school CA with `schoolgate ca init`") from err
    except PermissionError as err:
        raise CAError(f"{path}: permission denied (the key belongs to the proxy's user)") from err
    try:
        key = serialization.load_pem_private_key(raw, password=None, unsafe_skip_rsa_key_validation=not check_key)
        cert = x509.load_pem_x509_certificate(raw)
    except ValueError as err:
        raise CAError(f"{path} does not hold a PEM key and certificate: {err}") from err
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CAError(f"{path}: unsupported key type {type(key).__name__}")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CAError(f"{path}: the key does not belong to the certificate")
    return cert, key


def check_ca(ca_dir: str | Path) -> CAInfo:
    """Fail with a clear message unless `ca_dir` holds a usable, unexpired school CA.

    The proxy calls this before mitmproxy sees the directory: mitmproxy would otherwise
    quietly create a CA of its own, which no school device trusts.
    """
    # On every start of the proxy (a restart must be quick); mitmproxy loads the key again anyway.
    cert, _key = load_ca(ca_dir, check_key=False)
    info = describe(cert, Path(ca_dir) / CA_KEY_AND_CERT)
    if info.not_after <= _now():
        raise CAError(f"the school CA expired on {info.not_after:%Y-%m-%d}; "
                      "create a new one and install it on the school's devices")
    if not (Path(ca_dir) / DHPARAM).exists():
        raise CAError(f"{Path(ca_dir) / DHPARAM} is missing; run `schoolgate ca init --force`")
    return info


def show_ca(ca_dir: str | Path) -> CAInfo:
    return describe(load_ca_cert(ca_dir), Path(ca_dir) / CA_CERT)


def export_ca(ca_dir: str | Path, out_dir: str | Path, basename: str = "schoolgate-ca") -> tuple[Path, Path]:
    """Write the certificate for installing on devices: `<basename>.pem` and `<basename>.crt` (DER).

    Windows and ChromeOS import the .crt; iOS, Android and macOS take either.
    """
    cert = load_ca_cert(ca_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pem = out / f"{basename}.pem"
    der = out / f"{basename}.crt"
    _write(pem, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(der, cert.public_bytes(serialization.Encoding.DER), 0o644)
    return pem, der


_SAFE_NAME = re.compile(r"[^A-Za-z0-9.-]+")


def issue_server_cert(
    ca_dir: str | Path,
    hostnames: Sequence[str],
    ips: Sequence[str] = (),
    *,
    out_dir: str | Path | None = None,
    name: str | None = None,
    valid_days: int = SERVER_VALID_DAYS,
    now: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue a TLS server certificate (e.g. for the console) signed by the school CA.

    Returns (certificate chain PEM: server then CA, private key PEM mode 0600). Files go to
    `<ca_dir>/issued/` unless `out_dir` is given, named after `name` or the first hostname.
    """
    if not hostnames and not ips:
        raise CAError("a server certificate needs at least one hostname or IP address")
    ca_cert, ca_key = load_ca(ca_dir)
    sans: list[x509.GeneralName] = []
    for given in hostnames:
        host = given.strip().rstrip(".").lower()
        if not host or len(host) > 253:
            raise CAError(f"not a valid hostname: {given!r}")
        sans.append(x509.DNSName(host))
    for value in ips:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(value.strip())))
        except ValueError as err:
            raise CAError(f"not a valid IP address: {value!r}") from err
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    common = hostnames[0] if hostnames else ips[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(out_dir) if out_dir is not None else Path(ca_dir) / ISSUED_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = _SAFE_NAME.sub("_", name or common)
    cert_path = out / f"{stem}-cert.pem"
    key_path = out / f"{stem}-key.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_path, key_pem, 0o600)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    _write(cert_path, chain, 0o644)
    return cert_path, key_path
