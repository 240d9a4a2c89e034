"""The agent's policy: defaults shipped read-only in the image, a site override on
/data. An override is validated whole before anything uses it; an invalid one is
reported (file, key, reason) and the last good policy stays in force."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pbxagent import atomic, paths
from pbxagent.credentials.passwords import Rules
from pbxagent.errors import PolicyError as PolicyError
from pbxagent.policy import calls, network, trunks, updates
from pbxagent.policy.network import Firewall
from pbxagent.settings import Setting, Surface, flatten

DEFAULTS = Path(__file__).with_name("default-policy.yaml")


class Policy(NamedTuple):
    company: str
    extensions: tuple[str, ...]
    permit: dict[str, tuple[str, ...]]  # extension -> the only networks it may use SIP from
    secret_length: int
    rules: Rules
    ssh_port: int
    firewall: Firewall
    jails: dict[str, network.Jail]
    update: updates.UpdatePolicy
    calls: calls.CallPolicy


_JAIL_HELP = {
    "sip": "failed SIP registrations",
    "sip_flood": "failed digest auths and unanswered challenges",
    "ssh": "failed SSH logins",
    "ssh_long": "failed SSH logins, the slow attacker",
}
# The floors are REQUIREMENTS §1's: a site may tighten them, never loosen them.
SETTINGS = Surface([
    Setting("version", int, "the policy format", 1, 1),
    Setting("site.company", str, "the company's name: a password must not contain it", 0, 64),
    Setting("extensions.preconfigured", list, "extensions every box ships with, numbers or ranges like "
            "800-809; each gets its own secret and PIN on first boot", 0, 1000,
            parse=lambda path, _key, value: expand_extensions(path, value)),
    Setting("extensions.secret_length", int, "characters of each extension's SIP secret", 16, 64),
    Setting("extensions.permit", dict, "per extension, the only networks it may use SIP from "
            '({"801": [192.168.1.0/24]}); extensions not listed may use SIP from anywhere', parse=network.permits),
    Setting("passwords.min_length", int, "an admin password's shortest length", 8, 64),
    Setting("passwords.min_upper", int, "upper-case letters an admin password needs", 2, 16),
    Setting("passwords.min_digits", int, "digits an admin password needs", 2, 16),
    Setting("passwords.min_special", int, "special characters an admin password needs", 1, 16),
    Setting("passwords.pin_length", int, "a voicemail PIN's length", 6, 12),
    Setting("ssh.port", int, "the port `pbxagent ssh enable` uses without --port", 1, 65535),
    Setting("lan.allow", list, "addresses trusted like the LAN (never banned, past every drop), CIDR or address",
            0, 1000, parse=network.networks),
    Setting("firewall.ping", bool, "answer ICMP echo requests"),
    Setting("firewall.drop_all", bool, "the trusted LAN too gets only what services and rules accept "
            "(held on probation until confirmed)"),
    Setting("firewall.refuse_ami", bool, "drop tcp/5038 (the Asterisk manager) whatever else says"),
    Setting("firewall.services", list, "open services: {name, proto, ports, from: any|lan}", 0, 64,
            parse=network.services),
    Setting("firewall.rules", list, "ordered rules: {action: accept|drop, proto, ports, source, mac}", 0, 256,
            parse=network.rules),
    Setting("firewall.block", list, "dropped sources, CIDR or address", 0, 100_000, parse=network.networks),
    Setting("firewall.rate_limits", list, "per-source limits: {proto, port, packets (1..200), seconds}", 0, 32,
            parse=network.rate_limits),
    Setting("firewall.flood_pps", list, "per-source packets/s of flood level 1 and 2 (banned 5 min / 1 h)", 2, 2,
            parse=network.flood),
    *(Setting(f"bans.{name}", dict, f"{_JAIL_HELP[name]}: {{failures, window, ban}}, seconds", parse=network.jail)
      for name in network.JAILS),
    Setting("update.repository", str, "the release repository's base URL (metadata/, targets/); \"\" = no polling",
            0, 512, parse=updates.url),
    Setting("update.interval", int, "seconds between polls on average (each wait drawn from 0..2x)", 60, 7 * 86400),
    Setting("update.boot_delay", int, "the first poll after a boot comes within this many seconds", 0, 86400),
    Setting("update.window", str, "local HH:MM-HH:MM in which the box installs and reboots by itself; \"\" = "
            "any time", 0, 11, parse=updates.window),
    Setting("update.mode", str, "auto: install in the window; check: only find and report", choices=updates.MODES),
    Setting("update.report_url", str, "where update reports are POSTed; \"\" = nowhere", 0, 512, parse=updates.url),
    Setting("calls.country", str, "the site's country, a region code (GB, DE, US): how numbers are read; "
            "\"\" = no external calls", 0, 2, parse=calls.country),
    Setting("calls.default_class", str, "what an extension may call unless calls.classes says otherwise",
            choices=calls.CLASSES),
    Setting("calls.classes", dict, 'per extension, its class ({"801": international})', parse=calls.classes),
    Setting("calls.window_national", str, "when national calls may be made: \"mon-fri 08:00-18:00\", "
            "\"\" = any time", 0, 64, parse=calls.hours),
    Setting("calls.window_international", str, "when international calls may be made (always with the "
            "extension's call PIN)", 0, 64, parse=calls.hours),
    Setting("calls.allowed_countries", list, "calling codes (+33) international calls may reach besides the "
            "site's own", 0, 300, parse=calls.calling_codes),
    Setting("calls.blocked", list, "E.164 prefixes refused (premium, shared-cost and no country's numbers are "
            "refused anyway)", 0, 10_000, parse=calls.prefixes),
    Setting("calls.allowed", list, "E.164 prefixes let through every block above", 0, 10_000,
            parse=calls.prefixes),
    Setting("calls.concurrent", int, "calls at once per extension", 1, 50),
    Setting("calls.max_duration", int, "seconds an external call may last", 60, 86400),
    Setting("calls.daily_external", int, "external calls per extension per day", 0, 10_000),
    Setting("calls.daily_international", int, "international calls per extension per day", 0, 10_000),
    Setting("calls.rate_lock", int, "more external calls than this in a minute lock the extension's external "
            "calling until an administrator lifts it", 1, 60),
    Setting("calls.trunks", list, "SIP trunks: {name, host, port, transport: udp|tcp|tls, username, addresses, "
            "limit}; external calls leave through the first, calls come in only from their addresses; a "
            "secret is set with `pbxagent trunks secret NAME`", 0, 16, parse=trunks.trunks),
    Setting("calls.dids", dict, 'numbers the trunks bring in, to extensions: {"+442079460000": "801", '
            '"+442079460100-+442079460199": "802"}', parse=trunks.dids),
    Setting("calls.relay_ports", str, "UDP ports of the media relay (rtpengine) for phones behind NAT, "
            "\"10000-10500\"; the firewall opens them only while the relay runs", 1, 11, parse=calls.relay_ports),
    Setting("calls.public_address", str, "the site router's public IPv4 address when the box is behind it, with "
            "UDP/TCP 5060, TCP 5061 and calls.relay_ports forwarded to the box: what trunks and phones on the "
            "internet are told to reach; \"\" = the box's own address", 0, 15, parse=calls.public_address),
], PolicyError)


def override_path() -> Path:
    return paths.data() / "policy.yaml"


def last_good_path() -> Path:
    return paths.data() / "state" / "policy.json"


def _read(path: Path) -> dict[str, Any]:
    import yaml  # only when a policy file changed: a boot that finds the last good one current skips it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: the top level must be a mapping")
    return data


def _flatten(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    flat = flatten(data, depth=2)
    SETTINGS.check_all(path, flat)
    return flat


def expand_extensions(path: Path, items: list[Any]) -> tuple[str, ...]:
    """["800-809", 900] -> ("800", …, "809", "900"); ranges must be short and ascending."""
    numbers: list[str] = []
    for item in items:
        text = str(item)
        first, _, last = text.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or len(first) > 10:
            raise PolicyError(f"{path}: extensions.preconfigured: {text!r} is not a number or a range like 800-809")
        low, high = int(first), int(last or first)
        if high < low or high - low >= 1000:
            raise PolicyError(f"{path}: extensions.preconfigured: {text!r} is not an ascending range of at most 1000")
        numbers.extend(str(n) for n in range(low, high + 1))
    if len(set(numbers)) != len(numbers):
        raise PolicyError(f"{path}: extensions.preconfigured: an extension is listed twice")
    return tuple(numbers)


def _build(source: Path, flat: dict[str, Any]) -> Policy:
    rules = Rules(
        min_length=flat["passwords.min_length"],
        min_upper=flat["passwords.min_upper"],
        min_digits=flat["passwords.min_digits"],
        min_special=flat["passwords.min_special"],
        pin_length=flat["passwords.pin_length"],
    )
    return Policy(
        company=flat["site.company"],
        extensions=expand_extensions(source, flat["extensions.preconfigured"]),
        permit=network.permits(source, "extensions.permit", flat["extensions.permit"]),
        secret_length=max(flat["extensions.secret_length"], rules.min_length),
        rules=rules,
        ssh_port=flat["ssh.port"],
        firewall=Firewall(
            ping=flat["firewall.ping"],
            drop_all=flat["firewall.drop_all"],
            refuse_ami=flat["firewall.refuse_ami"],
            services=network.services(source, "firewall.services", flat["firewall.services"]),
            rules=network.rules(source, "firewall.rules", flat["firewall.rules"]),
            block=network.networks(source, "firewall.block", flat["firewall.block"]),
            allow=network.networks(source, "lan.allow", flat["lan.allow"]),
            rate_limits=network.rate_limits(source, "firewall.rate_limits", flat["firewall.rate_limits"]),
            flood_pps=network.flood(source, "firewall.flood_pps", flat["firewall.flood_pps"]),
        ),
        jails={name: network.jail(source, f"bans.{name}", flat[f"bans.{name}"]) for name in network.JAILS},
        update=updates.UpdatePolicy(
            repository=updates.url(source, "update.repository", flat["update.repository"]).rstrip("/"),
            interval=flat["update.interval"],
            boot_delay=flat["update.boot_delay"],
            window=updates.window(source, "update.window", flat["update.window"]),
            mode=flat["update.mode"],
            report_url=updates.url(source, "update.report_url", flat["update.report_url"]),
        ),
        calls=calls.build(source, flat),
    )


def compose(defaults: Path, override: Path | None) -> tuple[Policy, dict[str, Any]]:
    """Defaults with the override laid over them, validated; raises PolicyError."""
    flat = _flatten(defaults, _read(defaults))
    source = defaults
    if override is not None and override.exists():
        flat.update(_flatten(override, _read(override)))
        source = override
    missing = SETTINGS.missing(flat)
    if missing:
        raise PolicyError(f"{defaults}: {missing[0]}: missing")
    return _build(source, flat), flat


class Loaded(NamedTuple):
    policy: Policy
    origin: str  # "defaults", "site override" or "last good"
    error: str | None  # why the override is not in force, when it is not
    # The validated settings and the texts they came from, to remember as the last good.
    flat: dict[str, Any] | None
    inputs: dict[str, str | None]


def _inputs() -> dict[str, str | None]:
    override = override_path()
    return {
        "defaults": DEFAULTS.read_text(encoding="utf-8", errors="replace"),
        "override": override.read_text(encoding="utf-8", errors="replace") if override.exists() else None,
    }


def load() -> Loaded:
    """The policy in force. Never raises for a bad override: the caller reports `error`."""
    inputs = _inputs()
    origin = "defaults" if inputs["override"] is None else "site override"
    remembered = _last_good()
    if remembered is not None and remembered[1] == inputs:
        return Loaded(remembered[0], origin, None, remembered[2], inputs)
    try:
        policy, flat = compose(DEFAULTS, override_path())
    except PolicyError as exc:
        fallback = remembered[0] if remembered else compose(DEFAULTS, None)[0]
        return Loaded(fallback, "last good", str(exc), None, inputs)
    return Loaded(policy, origin, None, flat, inputs)


def remember(loaded: Loaded) -> None:
    """Keep a policy that validated as the one to fall back to (provisioning does this)."""
    if loaded.flat is None:
        return
    text = json.dumps({"settings": loaded.flat, "inputs": loaded.inputs}, sort_keys=True, indent=1) + "\n"
    target = last_good_path()
    if not target.exists() or target.read_text() != text:
        atomic.write(target, text, 0o600)


def _last_good() -> tuple[Policy, dict[str, Any], dict[str, Any]] | None:
    """The remembered policy, its input texts and settings; None if absent or damaged."""
    target = last_good_path()
    try:
        data = json.loads(target.read_text())
        flat, inputs = data["settings"], data["inputs"]
        SETTINGS.check_all(target, flat)
        if SETTINGS.missing(flat):
            return None
        return _build(target, flat), inputs, flat
    except (OSError, ValueError, KeyError, TypeError):
        return None

