"""Calls over a TLS trunk on the test network: the box checks the provider's certificate
before its trunk credentials leave. The provider is tests/device/tlsprovider.py in the
internet namespace (Debian 12's sipp has no TLS); the certificates are made by the test,
and the provider's CA is given to the box with `pbxagent trunks ca`, as an installer
would for a provider with a private CA:

- a certificate from that CA naming the trunk's host: the call is made and the
  provider's challenge answered with the trunk's digest;
- one from that CA naming another host: the provider gets the INVITE but never the
  credentials; the call is refused (503) with a `pbx-alert trunk-tls`;
- one from another CA naming the right host: the handshake fails, no INVITE arrives;
- with `pbxagent trunks ca --public`, a certificate from a CA among the box's public
  ones (the test's CA added to /etc/ssl/certs for the test) gets the call;
- a trunk with `register: true` registers over TLS: a provider whose certificate names
  another host never gets the registration's credentials; the right one gets them, with
  the box's TLS contact, and its call to that contact rings the DID's extension.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.device import phones
from tests.device.netlab import INTERNET, INTERNET_HOST, LAN, LAN2, LAN2_HOST, LAN_HOST, TWIN, NetLab, secret_of
from tests.device.test_trunk_calls import CALLEE_PORT, CALLER_PORT, TRUNK_USER
from tests.infra import sip
from tests.infra.twin import Device

PROVIDER = Path(__file__).with_name("tlsprovider.py")
TLS_PORT = 5061
POLICY = ("calls:\n  country: FR\n  trunks:\n"
          f"    - {{name: secure, host: {INTERNET_HOST}, transport: tls, username: {TRUNK_USER}, limit: 2}}\n")


class Issued(NamedTuple):
    cert: Path
    key: Path


def _issue(work: Path, name: str, subject: str, san: Any, issuer: tuple[Any, Any] | None) -> tuple[Any, Any]:
    """A certificate for `subject` (its CN) and `san`, signed by `issuer` (None: itself, as
    a CA); written to work/name.pem and work/name.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject_name)
               .issuer_name(issuer_cert.subject if issuer_cert else subject_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (work / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def tls_trunk(lab: tuple[NetLab, Device], tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[tuple[NetLab, Device, str, dict[str, Issued]]]:
    """The lab's twin with one TLS trunk, its secret, and its provider's CA; the
    provider's certificates: `named` (right host), `misnamed` (another host, same CA),
    `stranger` (right host, another CA, `public-ca`)."""
    from cryptography import x509

    net, dev = lab
    work = tmp_path_factory.mktemp("tls")
    address = x509.IPAddress(ipaddress.ip_address(INTERNET_HOST))
    ca = _issue(work, "ca", "pbxfw test provider CA", None, None)
    _issue(work, "named", INTERNET_HOST, address, ca)
    _issue(work, "misnamed", "other.example", x509.DNSName("other.example"), ca)
    public_ca = _issue(work, "public-ca", "a public CA", None, None)
    _issue(work, "stranger", INTERNET_HOST, address, public_ca)  # not the provider's CA: no public one is trusted
    secret = secrets.token_urlsafe(12)
    dev.put(work / "ca.pem", "/tmp/provider-ca.pem")
    dev.check(f"printf \"{POLICY}\" > /data/pbx/policy.yaml && systemctl restart pbx-agent && {sip.listening()}",
              timeout=240)
    dev.check(f"printf '%s\\n' '{secret}' | pbxagent trunks secret secure && "
              f"pbxagent trunks ca secure < /tmp/provider-ca.pem && {sip.listening()}", timeout=240)
    names = ("named", "misnamed", "stranger", "public-ca")
    yield net, dev, secret, {n: Issued(work / f"{n}.pem", work / f"{n}.key") for n in names}


@contextmanager
def provider(net: NetLab, issued: Issued, secret: str, work: Path) -> Iterator[Path]:
    """The TLS provider with `issued` as its certificate, until the block ends: the file
    of what it saw."""
    events = work / "events"
    argv = ["ip", "netns", "exec", INTERNET, "python3", str(PROVIDER), INTERNET_HOST, str(TLS_PORT),
            str(issued.cert), str(issued.key), TRUNK_USER, secret, str(events)]
    with phones.running(argv, stop=True):
        for _ in range(100):
            if net.run(INTERNET, ["ss", "-Hltn", f"sport = :{TLS_PORT}"]).strip():
                break
            time.sleep(0.1)
        yield events


def call_through(net: NetLab, dev: Device, issued: Issued, secret: str, work: Path) \
        -> tuple[subprocess.CompletedProcess[str], list[str], list[dict[str, Any]]]:
    """A call from 801 over the trunk to the provider with `issued`: how it ended, what
    the provider saw, and the call's records."""
    tag = uuid.uuid4().hex[:8]
    with provider(net, issued, secret, work) as events:
        done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "0123456789", tag, hold_ms=1000)
    return done, events.read_text().splitlines(), phones.records_of(dev, tag)


def test_a_call_goes_to_the_provider_its_ca_vouches_for_with_the_trunks_digest(
        tls_trunk: tuple[NetLab, Device, str, dict[str, Issued]], tmp_path: Path) -> None:
    net, dev, secret, issued = tls_trunk
    done, seen, records = call_through(net, dev, issued["named"], secret, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert seen == ["invite", "invite with credentials", "digest good", "bye"]
    assert [(r["trunk"], r["code"]) for r in records] == [("secure", 200)]
    assert "CA own" in dev.check("pbxagent trunks list 2>/dev/null")


def test_a_provider_whose_certificate_names_another_host_never_gets_the_trunks_credentials(
        tls_trunk: tuple[NetLab, Device, str, dict[str, Issued]], tmp_path: Path) -> None:
    net, dev, secret, issued = tls_trunk
    done, seen, records = call_through(net, dev, issued["misnamed"], secret, tmp_path)
    assert done.returncode != 0
    assert seen == ["invite"]  # challenged, never answered
    assert [(r["trunk"], r["code"]) for r in records] == [("secure", 503)]
    assert f"pbx-alert trunk-tls trunk=secure host={INTERNET_HOST}" in dev.check(
        "journalctl -u kamailio -o cat --since today | grep 'pbx-alert trunk-tls' | tail -1")


def test_a_provider_certificate_from_another_ca_gets_no_call(
        tls_trunk: tuple[NetLab, Device, str, dict[str, Issued]], tmp_path: Path) -> None:
    net, dev, secret, issued = tls_trunk
    done, seen, records = call_through(net, dev, issued["stranger"], secret, tmp_path)
    assert done.returncode != 0
    assert seen and all(line.startswith("handshake failed") for line in seen), seen
    assert records and 200 not in [r["code"] for r in records]


def test_a_trunk_without_a_ca_of_its_own_trusts_the_public_ones(
        tls_trunk: tuple[NetLab, Device, str, dict[str, Issued]], tmp_path: Path) -> None:
    net, dev, secret, issued = tls_trunk
    hashed = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(issued["public-ca"].cert)],
                            capture_output=True, text=True, check=True).stdout.strip()
    dev.put(issued["public-ca"].cert, f"/etc/ssl/certs/{hashed}.0")  # as if Debian shipped it
    try:
        dev.check(f"pbxagent trunks ca secure --public && {sip.listening()}", timeout=240)
        assert "CA public" in dev.check("pbxagent trunks list 2>/dev/null")
        done, seen, _ = call_through(net, dev, issued["stranger"], secret, tmp_path)
    finally:
        dev.check(f"rm -f /etc/ssl/certs/{hashed}.0 && pbxagent trunks ca secure < /tmp/provider-ca.pem && "
                  f"{sip.listening()}", timeout=240)
    assert done.returncode == 0, done.stdout[-3000:]
    assert seen == ["invite", "invite with credentials", "digest good", "bye"]


def _seen(events: Path, line: str, within_s: float) -> list[str]:
    """What the provider saw, once it has seen `line` (or `within_s` has passed)."""
    deadline = time.monotonic() + within_s
    while line not in (seen := events.read_text().splitlines() if events.exists() else []) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    return seen


def test_a_trunk_that_registers_over_tls_does_so_only_with_the_named_provider_and_gets_its_call(
        tls_trunk: tuple[NetLab, Device, str, dict[str, Issued]], tmp_path: Path) -> None:
    net, dev, secret, issued = tls_trunk
    registering = POLICY.replace("limit: 2}", "limit: 2, register: true}") + "  dids: {'+33140000003': '802'}\n"
    for phase in ("misnamed", "named"):
        (tmp_path / phase).mkdir()
    try:
        with provider(net, issued["misnamed"], secret, tmp_path / "misnamed") as events:
            dev.check(f"printf \"{registering}\" > /data/pbx/policy.yaml && systemctl restart pbx-agent && "
                      f"{sip.listening()}", timeout=240)
            _seen(events, "register", within_s=60)  # uac's first REGISTER leaves within its 10 s timer
            time.sleep(2)  # time enough to answer the challenge, had it been taken
            seen = events.read_text().splitlines()
        assert seen == ["register"], seen  # challenged, never answered
        assert f"pbx-alert trunk-tls registration host={INTERNET_HOST}" in dev.check(
            "journalctl -u kamailio -o cat --since today | grep 'pbx-alert trunk-tls registration' | tail -1")
        with provider(net, issued["named"], secret, tmp_path / "named") as events:
            dev.check(f"systemctl restart kamailio && {sip.listening()}", timeout=240)  # uac tries again at once
            registered = _seen(events, "digest good", within_s=60)
            phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret_of(dev, "802"))
            with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802") as phone:
                events.with_suffix(".call").write_text("+33140000003")
                seen = _seen(events, "hung up 200", within_s=60)
        assert registered[:3] == ["register", "register with credentials", "digest good"], registered
        assert f"contact <sip:secure@{TWIN}:5061;transport=tls>" in seen, seen
        assert seen[-2:] == ["call 200", "hung up 200"], seen
        assert phone.returncode == 0
    finally:
        dev.check(f"printf \"{POLICY}\" > /data/pbx/policy.yaml && systemctl restart pbx-agent && {sip.listening()}",
                  timeout=240)
