"""Key material for a plan (`shoal certs`): a small CA, one certificate per device, a client
token and a detached signature of plan.json. Uses the `cryptography` package; ECDSA P-256.

Layout of the output folder (every private file mode 0600, the folder 0700):

    ca.crt  ca.key            the plan's CA (keep ca.key off the devices)
    <device>.crt <device>.key one per device of the plan; CN and DNS name = the device name
    client.token              the central node's bearer token: <plan fingerprint>.<secret>
    plan.sig                  the CA's signature of plan.json (workers verify it at start-up)

Copy to each device its own .crt/.key, ca.crt and plan.sig; to the central node also
client.token; to clients ca.crt and client.token.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.errors import ConfigError
from shoal.plan.directory import plan_document_file
from shoal.runtime.security import CA_FILE, TOKEN_FILE, Token

SIGNATURE_FILE = "plan.sig"


@dataclass(frozen=True)
class IssuedKeys:
    """What `issue` wrote."""

    out: Path
    devices: tuple[str, ...]
    expires: dt.datetime


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(plan_dir: str | Path, devices: Sequence[str], out: str | Path, fingerprint: str, *,
          addresses: Mapping[str, Sequence[str]] | None = None, days: int = 365,
          now: dt.datetime | None = None) -> IssuedKeys:
    """Create the CA, one certificate per device, the token and the plan signature under `out`.

    Args:
        plan_dir: The plan (its plan.json is signed).
        devices: Device names (each becomes a certificate's CN and DNS name).
        out: Output folder (created 0700; existing files are replaced).
        fingerprint: The plan's fingerprint (the token's prefix).
        addresses: Extra host names or IP addresses per device for the certificate (the
            runtime checks the device name, so these are for other tools).
        days: Validity of every certificate.
        now: Start of validity (tests: expired and not-yet-valid certificates).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    start = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(minutes=5)
    end = start + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"shoal CA {fingerprint}")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    _write(out / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(out / "ca.key", _key_bytes(ca_key), private=True)
    for device in devices:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(device), x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        for extra in (addresses or {}).get(device, ()):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(extra)))
            except ValueError:
                names.append(x509.DNSName(extra))
        cert = (x509.CertificateBuilder().subject_name(_name(device)).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(out / f"{device}.crt", cert.public_bytes(serialization.Encoding.PEM), private=False)
        _write(out / f"{device}.key", _key_bytes(key), private=True)
    _write(out / TOKEN_FILE, (Token.new(fingerprint).value + "\n").encode(), private=True)
    sign_plan(plan_dir, out / "ca.key", out / SIGNATURE_FILE)
    return IssuedKeys(out, tuple(devices), end)


def sign_plan(plan_dir: str | Path, ca_key: Path, signature: Path) -> None:
    """The CA's detached ECDSA signature of plan.json (which lists the sha256 of every other file), or of
    a Janus plan's janus.json."""
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_key} is not an EC private key")
    data = plan_document_file(plan_dir).read_bytes()
    _write(signature, key.sign(data, ec.ECDSA(hashes.SHA256())), private=False)


def verify_plan(plan_dir: str | Path, ca: Path, signature: Path) -> None:
    """Refuse a plan.json that the CA did not sign (a tampered plan with recomputed hashes).

    Raises:
        ConfigError: the signature does not match, or the files are unreadable.
    """
    try:
        cert = x509.load_pem_x509_certificate(ca.read_bytes())
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise ConfigError(f"{ca} does not hold an EC public key")
        public.verify(signature.read_bytes(), plan_document_file(plan_dir).read_bytes(),
                      ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ConfigError(f"{plan_document_file(plan_dir)} is not the plan the CA signed ({signature}); "
                          "it was changed after `shoal certs`") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot verify the plan's signature {signature}: {exc}") from None


def check_signature(tls_dir: Path | None, plan_dir: str | Path) -> None:
    """With key material that carries a plan signature, refuse a plan the CA did not sign."""
    if tls_dir is None:
        return
    signature = Path(tls_dir) / SIGNATURE_FILE
    if signature.is_file():
        verify_plan(plan_dir, Path(tls_dir) / CA_FILE, signature)
