"""The agent's policy: defaults shipped read-only in the image, a site override on
/data. An override is validated whole before anything uses it; an invalid one is
reported (file, key, reason) and the last good policy stays in force."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pbxagent import atomic, paths
from pbxagent.credentials.passwords import Rules
from pbxagent.errors import PolicyError as PolicyError
from pbxagent.policy import network
from pbxagent.policy.network import Firewall

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


Parser = Callable[[Path, str, Any], object]

# key path -> (type, lowest, highest); lowest/highest bound ints (and list lengths).
# The floors are REQUIREMENTS §1's: a site may tighten them, never loosen them.
_SCHEMA: dict[str, tuple[type, int, int]] = {
    "version": (int, 1, 1),
    "site.company": (str, 0, 64),
    "extensions.preconfigured": (list, 0, 1000),
    "extensions.secret_length": (int, 16, 64),
    "extensions.permit": (dict, 0, 0),
    "passwords.min_length": (int, 8, 64),
    "passwords.min_upper": (int, 2, 16),
    "passwords.min_digits": (int, 2, 16),
    "passwords.min_special": (int, 1, 16),
    "passwords.pin_length": (int, 6, 12),
    "ssh.port": (int, 1, 65535),
    "lan.allow": (list, 0, 1000),
    "firewall.ping": (bool, 0, 1),
    "firewall.drop_all": (bool, 0, 1),
    "firewall.refuse_ami": (bool, 0, 1),
    "firewall.services": (list, 0, 64),
    "firewall.rules": (list, 0, 256),
    "firewall.block": (list, 0, 100_000),
    "firewall.rate_limits": (list, 0, 32),
    "firewall.flood_pps": (list, 2, 2),
    **{f"bans.{name}": (dict, 0, 0) for name in network.JAILS},
}
# Lists whose items need more than a type: each parser raises a PolicyError naming
# the item (firewall.services[2].ports) and returns the typed value.
_PARSERS: dict[str, Parser] = {
    "extensions.preconfigured": lambda path, _key, value: expand_extensions(path, value),
    "extensions.permit": network.permits,
    "lan.allow": network.networks,
    "firewall.services": network.services,
    "firewall.rules": network.rules,
    "firewall.block": network.networks,
    "firewall.rate_limits": network.rate_limits,
    "firewall.flood_pps": network.flood,
    **{f"bans.{name}": network.jail for name in network.JAILS},
}
_SECTIONS = {key.split(".")[0] for key in _SCHEMA if "." in key}


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
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "version":
            flat[key] = value
        elif key not in _SECTIONS:
            raise PolicyError(f"{path}: {key}: unknown key (known: {', '.join(sorted(_SECTIONS | {'version'}))})")
        elif not isinstance(value, dict):
            raise PolicyError(f"{path}: {key}: must be a mapping")
        else:
            for sub, item in value.items():
                flat[f"{key}.{sub}"] = item
    for key, value in flat.items():
        _check(path, key, value)
    return flat


def _check(path: Path, key: str, value: Any) -> None:
    if key not in _SCHEMA:
        raise PolicyError(f"{path}: {key}: unknown key")
    kind, low, high = _SCHEMA[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PolicyError(f"{path}: {key}: must be an integer, not {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise PolicyError(f"{path}: {key}: must be true or false, not {value!r}")
    if not isinstance(value, kind):
        raise PolicyError(f"{path}: {key}: must be a {kind.__name__}, not {type(value).__name__}")
    size = value if isinstance(value, int) else len(value) if isinstance(value, str | list) else 0  # dict: 0
    if not low <= size <= high:
        what = "" if isinstance(value, int) else "length "
        raise PolicyError(f"{path}: {key}: {what}{size} is outside {low}..{high}")
    if key in _PARSERS:
        _PARSERS[key](path, key, value)


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
    )


def compose(defaults: Path, override: Path | None) -> tuple[Policy, dict[str, Any]]:
    """Defaults with the override laid over them, validated; raises PolicyError."""
    flat = _flatten(defaults, _read(defaults))
    source = defaults
    if override is not None and override.exists():
        flat.update(_flatten(override, _read(override)))
        source = override
    missing = sorted(set(_SCHEMA) - set(flat))
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
        for key, value in flat.items():
            _check(target, key, value)
        if set(flat) != set(_SCHEMA):
            return None
        return _build(target, flat), inputs, flat
    except (OSError, ValueError, KeyError, TypeError):
        return None

