#!/usr/bin/env python3
"""Checks certificates the way a strict X.509 stack reads them, with Python's `cryptography`, for tollgate's tests.

Usage: strict_der.py CHECK...
  ca:FILE            FILE starts with a self-signed CA certificate
  server:FILE:NAME   FILE holds a chain, leaf first, ending in its CA (as `tollgate cert server` writes it); the leaf
                     is valid for the DNS name or IP address NAME as a TLS server
  client:FILE        FILE holds a chain, leaf first, ending in its CA; the leaf is valid as a TLS client

Every certificate in FILE, and every extension in it, is parsed by cryptography's DER parser, which refuses what DER
forbids (a DEFAULT value written out, non-minimal lengths and integers, ...). Then:
  * each extension must re-encode to the bytes it came in: DER has one encoding per value, so an extension
    cryptography parses but would encode differently (a named bit list with trailing zero bits) is not DER;
  * each certificate's signature must verify with the next certificate's key (the last one with its own);
  * a server or client leaf must pass cryptography's path validation (RFC 5280 and the CA/Browser Forum profile)
    with the chain's last certificate as the only trust anchor.

Prints one JSON line, {"ok": true, "certificates": N} and exits 0, or {"ok": false, "errors": [...]} and exits 1, each
error naming the check, the certificate's place in its file and subject, and what is wrong.
"""

import ipaddress
import json
import re
import sys

from cryptography import x509
from cryptography.x509 import verification

PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def der_length(length):
    """The DER length octets of `length`."""
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def strict_parse(certificate):
    """Touches every field, so every part of the certificate goes through the parser; returns the extensions."""
    certificate.version
    certificate.serial_number
    certificate.not_valid_before_utc
    certificate.not_valid_after_utc
    certificate.issuer.rfc4514_string()
    certificate.subject.rfc4514_string()
    certificate.public_key()
    certificate.signature_hash_algorithm
    extensions = list(certificate.extensions)
    for extension in extensions:
        extension.value
    return extensions


def check_reencoding(certificate, extensions):
    """Each extension's value, encoded again by cryptography, must stand in the certificate as its extnValue."""
    tbs = certificate.tbs_certificate_bytes
    for extension in extensions:
        encoded = extension.value.public_bytes()
        octet_string = b"\x04" + der_length(len(encoded)) + encoded
        if octet_string not in tbs:
            name = getattr(extension.oid, "_name", None) or extension.oid.dotted_string
            raise ValueError(f"{name} is not in DER: it re-encodes as {encoded.hex()}")


def load_chain(path):
    with open(path, "rb") as file:
        blocks = PEM_CERTIFICATE.findall(file.read())
    if not blocks:
        raise ValueError("no PEM certificate in it")
    return blocks


def check(spec, errors):
    """Runs one CHECK; appends what is wrong to `errors`; returns how many certificates it parsed."""
    kind, _, rest = spec.partition(":")
    path, _, name = rest.partition(":")
    if kind not in ("ca", "server", "client") or not path or (kind == "server") != bool(name):
        raise SystemExit(f"strict_der.py: bad check {spec!r}: see the usage")
    try:
        blocks = load_chain(path)
    except (OSError, ValueError) as error:
        errors.append(f"{spec}: {error}")
        return 0
    if kind == "ca":
        blocks = blocks[:1]
    elif len(blocks) < 2:
        errors.append(f"{spec}: a chain needs the leaf and its CA, found {len(blocks)} certificate(s)")
        return 0

    certificates = []
    for index, block in enumerate(blocks):
        where = f"{spec}: certificate {index + 1}"
        try:
            certificate = x509.load_pem_x509_certificate(block)
            where += f" ({certificate.subject.rfc4514_string()})"
            check_reencoding(certificate, strict_parse(certificate))
            certificates.append(certificate)
        except Exception as error:  # cryptography raises ValueError and friends; each is a finding
            errors.append(f"{where}: {type(error).__name__}: {error}")
    if len(certificates) != len(blocks):
        return len(certificates)

    for index, certificate in enumerate(certificates):
        issuer = certificates[min(index + 1, len(certificates) - 1)]
        try:
            certificate.verify_directly_issued_by(issuer)
        except Exception as error:
            errors.append(f"{spec}: certificate {index + 1}: not signed by the next one: {type(error).__name__}: {error}")

    anchor = certificates[-1]
    if kind == "ca":
        constraints = anchor.extensions.get_extension_for_class(x509.BasicConstraints)
        if not (constraints.critical and constraints.value.ca):
            errors.append(f"{spec}: basicConstraints is not critical cA TRUE")
        return 1
    policy = verification.PolicyBuilder().store(verification.Store([anchor]))
    try:
        if kind == "server":
            try:
                subject = x509.IPAddress(ipaddress.ip_address(name))
            except ValueError:
                subject = x509.DNSName(name)
            policy.build_server_verifier(subject).verify(certificates[0], certificates[1:-1])
        else:
            policy.build_client_verifier().verify(certificates[0], certificates[1:-1])
    except Exception as error:
        errors.append(f"{spec}: path validation: {type(error).__name__}: {error}")
    return len(certificates)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    errors = []
    parsed = sum(check(spec, errors) for spec in sys.argv[1:])
    if errors:
        print(json.dumps({"ok": False, "errors": errors}))
        sys.exit(1)
    print(json.dumps({"ok": True, "certificates": parsed}))


if __name__ == "__main__":
    main()
