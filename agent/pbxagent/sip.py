"""The adapter to the SIP service (kamailio): the extensions' credentials, the trunks and
the TLS files in /data/kamailio (readable by the service's group only), written by the
agent at each start and kept between boots, so a later boot starts kamailio from them
beside the agent instead of after it (issue 17). A file is rewritten only when its
content changed, and the service is restarted only then. Other back ends would get an
adapter of their own.

Extension credentials go over as digest HA1 values (md5 of user:realm:secret) for the
realm the configuration uses, so the service never holds those secrets themselves. A
trunk's secret must go over as it is (the provider's realm is known only from its
challenge), in the same group-readable directory.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

from pbxagent import atomic, paths
from pbxagent.credentials import extensions
from pbxagent.credentials import trunks as trunk_secrets
from pbxagent.policy import site
from pbxagent.policy.calls import CallPolicy
from pbxagent.policy.trunks import Trunk

REALM = "pbx"
SERVICE_GROUP = "kamailio"
# kamailio's table schema versions: auth_db's subscriber, uac's uacreg, permissions' address.
VERSIONS = {"subscriber": 7, "uacreg": 5, "address": 6}
TRUNK_GROUP = 1  # the address table's group of trunk addresses
# Debian's public CAs as a hashed directory: OpenSSL reads the one a chain needs when it
# needs it. The same CAs as one bundle (ca_list) cost kamailio 27 MiB of PSS, in every
# process (47.8 against 21.0 MiB measured on the twin).
SYSTEM_CAS = Path("/etc/ssl/certs")
# Seconds a registration with a provider asks for: short enough that a NAT router on the
# way keeps the binding the provider's calls come back through.
REGISTRATION_EXPIRES = 300
# listen.cfg's line while the box has no address but loopback (kamailio.service greps it).
LOOPBACK_ONLY = "#!define PBX_LOOPBACK_ONLY"


def address_wait() -> Path:
    """The FIFO kamailio's unit waits on (in the service's runtime directory) while
    listen.cfg names loopback only."""
    return paths.root() / "run" / "kamailio" / "address-wait"


def end_address_wait() -> bool:
    """Tell a kamailio that waits for the box's first address that listen.cfg now has it:
    it starts on it, with no restart (a systemctl exec and a stop job while a first boot's
    units start: over a second under emulation). False when none is waiting (running,
    stopped, or between its check of listen.cfg and the wait): then restart it."""
    try:
        fifo = os.open(address_wait(), os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no reader
    except OSError:
        return False
    # A reader gone since the open (its 20 s ran out) read listen.cfg after it was written.
    with contextlib.suppress(OSError):
        os.write(fifo, b"addressed\n")
    os.close(fifo)
    return True


def run_dir() -> Path:
    """Beside the agent's own /data/pbx (root only), which the service could not enter."""
    return paths.root() / "data" / "kamailio"


def tls_dir() -> Path:
    return paths.data() / "tls"


def ha1(user: str, secret: str, realm: str = REALM) -> str:
    return hashlib.md5(f"{user}:{realm}:{secret}".encode(), usedforsecurity=False).hexdigest()


def subscriber_table(store: dict[str, extensions.Extension], permit: dict[str, tuple[str, ...]],
                     calls: CallPolicy) -> str:
    """db_text's file format: a typed header line, then one colon-separated row each
    (':' inside a value, as in IPv6 networks, escaped). kamailio loads the extension's
    row with its credentials: `permit`, the comma-separated networks it may use (empty,
    null: anywhere), checked against the packet's source; `concurrent`, its calls at once."""
    rows = ["id(int,auto) username(string) domain(string,null) ha1(string) ha1b(string) permit(string,null) "
            "concurrent(int)"]
    for index, ext in enumerate(store.values(), start=1):
        nets = _field(",".join(permit.get(ext.number, ())))
        rows.append(f"{index}:{ext.number}:{REALM}:{ha1(ext.number, ext.secret)}:"
                    f"{ha1(f'{ext.number}@{REALM}', ext.secret)}:{nets}:{calls.concurrent}")
    return "\n".join(rows) + "\n"


def _field(value: str) -> str:
    """A value as db_text reads it back: its separator and escape character escaped."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def uacreg_table(trunks: tuple[Trunk, ...], secrets: dict[str, str]) -> str:
    """uac's table, one row per trunk, keyed by its name: where its calls go (auth_proxy)
    and the digest credentials for the provider's challenge, which `uac_reg_request_to`
    reads. A trunk that registers gets flags 0 and an expiry: uac registers
    `username@host` with the contact `<name>@<the box's address>` (listen.cfg's
    PBX_CONTACT), so the provider's calls arrive for the trunk's name. Others have
    flags 1 (disabled). An empty realm (null) takes the one in the provider's challenge."""
    rows = ["id(int,auto) l_uuid(string) l_username(string) l_domain(string) r_username(string) r_domain(string) "
            "realm(string,null) auth_username(string,null) auth_password(string,null) auth_ha1(string,null) "
            "auth_proxy(string) expires(int) flags(int) reg_delay(int) contact_addr(string,null) socket(string,null)"]
    for index, trunk in enumerate(trunks, start=1):
        if trunk.username and trunk.name not in secrets:
            continue  # no row: kamailio refuses its calls rather than send the provider a wrong digest
        # uac ignores a row without a password; a trunk the provider does not challenge gets "-".
        fields = [trunk.name, trunk.name, REALM, trunk.username or trunk.name, trunk.host, "", trunk.username,
                  secrets.get(trunk.name, "-"), "", trunk.uri]
        expires, flags = (REGISTRATION_EXPIRES, 0) if trunk.register else (0, 1)
        rows.append(f"{index}:" + ":".join(_field(f) for f in fields) + f":{expires}:{flags}:0::")
    return "\n".join(rows) + "\n"


def address_table(trunks: tuple[Trunk, ...]) -> str:
    """permissions' table: the networks each trunk's calls come from, tagged with its name."""
    rows = ["id(int,auto) grp(int) ip_addr(string) mask(int) port(int) tag(string,null)"]
    for trunk in trunks:
        for net in map(ipaddress.ip_network, trunk.addresses):
            rows.append(f"{len(rows)}:{TRUNK_GROUP}:{_field(str(net.network_address))}:{net.prefixlen}:0:{trunk.name}")
    return "\n".join(rows) + "\n"


def listen_config(addresses: list[str], toward_internet: str | None = None) -> str:
    """kamailio's sockets: loopback and each of the box's IPv4 addresses, never the
    wildcard. A socket on 0.0.0.0 puts 0.0.0.0 in its Via and Record-Route headers, and
    a phone that follows them (every real one does) sends its ACK and BYE nowhere.
    kamailio binds them before they exist (ip_free_bind), so it starts before the
    network with the addresses the box had last. PBX_CONTACT is the contact a
    registration gives a provider: the address on the box's route to the internet, else
    its first. With no address yet the file says so (LOOPBACK_ONLY): kamailio's unit
    then waits for the guard's word with the lease (end_address_wait)."""
    contact = toward_internet if toward_internet in addresses else next(iter(addresses), "127.0.0.1")
    lines = ["# Written by pbxagent (pbxagent.sip) when the box's addresses change.",
             f'#!define PBX_CONTACT "{contact}:5060"']
    if not addresses:
        lines.append(LOOPBACK_ONLY)
    for address in ["127.0.0.1", *addresses]:
        lines += [f"listen=udp:{address}:5060", f"listen=tcp:{address}:5060", f"listen=tls:{address}:5061"]
    return "\n".join(lines) + "\n"


def public_config(public: str) -> str:
    """kamailio's view of the policy's calls.public_address: the router's address as
    PBX_PUBLIC, given to the internet side (kamailio.cfg: route[SIDES], route[RECORD_ROUTE],
    a registration's contact), and an alias of the box's, so a request routed back by it
    is the box's own."""
    lines = ["# Written by pbxagent from the policy (calls.public_address)."]
    if public:
        lines += [f'#!define PBX_PUBLIC "{public}"', f'#!define PBX_PUBLIC_CONTACT "{public}:5060"',
                  f"alias=udp:{public}:5060", f"alias=tcp:{public}:5060", f"alias=tls:{public}:5061"]
    return "\n".join(lines) + "\n"


def listen_addresses(own: list[str]) -> list[str]:
    """The box's addresses kamailio listens on: IPv4 ones (its sockets are IPv4 only),
    without loopback (always there) and link-local."""
    found = (ipaddress.ip_address(a) for a in own)
    return sorted(str(ip) for ip in found if ip.version == 4 and not (ip.is_loopback or ip.is_link_local))


def follow_addresses(own: list[str], route: Callable[[], str | None] = lambda: None) -> bool:
    """The box's addresses changed: whether kamailio's sockets or contact must change
    with them (then it must be restarted). With no address at all (a link down, a lease
    not yet taken) the last ones stay: a box usually gets the same address back.
    `route` gives the address toward the internet (a route lookup, an exec: tenths of a
    second under emulation, just before a first boot can answer), asked only when the
    box has more than one to choose the contact from."""
    wanted = listen_addresses(own)
    if not wanted:
        return False
    toward = route() if len(wanted) > 1 else None
    return atomic.update(run_dir() / "listen.cfg", listen_config(wanted, toward), 0o640, _service_dirs())


def _service_dirs() -> tuple[int, int] | None:
    """The service's directories, made readable by its group (atomic.write would make a
    missing parent root-only); the owner its files get."""
    gid = _group()
    owner = (0, gid) if gid is not None else None
    for directory in (run_dir(), run_dir() / "db"):
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        if owner:
            os.chown(directory, *owner)
    return owner


def tls_config(cert: Path, key: Path, trunks: tuple[Trunk, ...] = (), cas: dict[str, Path] | None = None) -> str:
    """Phones connect with no certificate of theirs; every connection the box opens
    checks the peer's chain, against the system's public CAs, or for a TLS trunk with a
    CA of its own (`pbxagent trunks ca`), against that one only. A trunk's profile is
    chosen by its name (kamailio's server_id, set on the call's branch; a host name also
    goes as SNI). Whether the certificate names the trunk's host is checked on the
    provider's replies (kamailio.cfg): kamailio's handshake does not."""
    cas = cas or {}
    verify = "verify_certificate = yes\nrequire_certificate = yes\nmethod = TLSv1.2+\n"
    sections = [
        "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
        f"private_key = {key}\ncertificate = {cert}\n",
    ]
    sections.append(f"[client:default]\n{verify}ca_path = {SYSTEM_CAS}\n")
    for trunk in trunks:
        if trunk.transport != "tls":
            continue
        ca = f"ca_list = {cas[trunk.name]}" if trunk.name in cas else f"ca_path = {SYSTEM_CAS}"
        by = (f"[client:{trunk.host}:{trunk.port}]\n" if trunk.host_is_address
              else f"[client:any]\nserver_name = {trunk.host}\n")
        sections.append(f"# trunk {trunk.name}\n{by}server_id = {trunk.name}\n{verify}{ca}\n")
    return "\n".join(sections)


def ensure_certificate() -> bool:
    """A self-signed certificate made on the device the first time; False if present.
    The certificate is written last, so a key without one is a cut to redo."""
    cert, key = tls_dir() / "cert.pem", tls_dir() / "key.pem"
    if cert.exists() and key.exists():
        return False
    import datetime
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname() or "pbx")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(socket.gethostname() or "pbx")]), critical=False)
        .sign(private, hashes.SHA256())
    )
    atomic.write(key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
    atomic.write(cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return True


def _group() -> int | None:
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None


def write_inputs(policy: site.Policy) -> tuple[list[str], bool]:
    """Write everything the service reads from /data/kamailio: what was done, and whether
    any of it changed (the service runs with the old until restarted)."""
    done = ["TLS certificate made on this device"] if ensure_certificate() else []
    owner = _service_dirs()
    base = run_dir()
    store = extensions.load()
    secrets = trunk_secrets.load()
    files: dict[Path, str | bytes] = {
        base / "db" / "version": "table_name(string) table_version(int)\n"
        + "".join(f"{name}:{version}\n" for name, version in VERSIONS.items()),
        base / "db" / "subscriber": subscriber_table(store, policy.permit, policy.calls),
        base / "db" / "uacreg": uacreg_table(policy.calls.trunks, secrets),
        base / "db" / "address": address_table(policy.calls.trunks),
        base / "public.cfg": public_config(policy.calls.public_address),
        **{base / name: (tls_dir() / name).read_bytes() for name in ("cert.pem", "key.pem")},
    }
    cas = trunk_secrets.cas([t.name for t in policy.calls.trunks if t.transport == "tls"])
    files.update({base / f"trunk-{name}-ca.pem": path.read_bytes() for name, path in cas.items()})
    files[base / "tls.cfg"] = tls_config(base / "cert.pem", base / "key.pem", policy.calls.trunks,
                                         {name: base / f"trunk-{name}-ca.pem" for name in cas})
    if not (base / "listen.cfg").exists():  # a first boot: the guard adds the box's addresses
        files[base / "listen.cfg"] = listen_config([])
    changed = [path for path, content in files.items() if atomic.update(path, content, 0o640, owner)]
    # A CA forgotten (`trunks ca --public`) or its trunk gone: no copy stays beside kamailio.
    for stale in sorted(set(base.glob("trunk-*-ca.pem")) - files.keys()):
        stale.unlink()
        changed.append(stale)
    done.append(f"{len(store)} extensions, {len(policy.calls.trunks)} trunks and the TLS files for the SIP service: "
                + (f"{len(changed)} file(s) changed" if changed else "unchanged"))
    done.extend(f"trunk {t.name} has no secret: set it with `pbxagent trunks secret {t.name}`"
                for t in policy.calls.trunks if t.username and t.name not in secrets)
    return done, bool(changed)
