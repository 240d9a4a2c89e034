"""`pbxagent audit`: every REQUIREMENTS §1 rule checked on the live device, with the
evidence (never a secret)."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pbxagent import paths, provision, system
from pbxagent.credentials import extensions, root, ssh
from pbxagent.policy import site


class Check(NamedTuple):
    id: str
    rule: str
    passed: bool
    evidence: str


def _ssh(_: site.Policy) -> Check:
    rule = "SSH off by default; when on, key login only, no root password login, few tries"
    state = ssh.load_state()
    if not state.enabled:
        masked = [u for u in ssh.UNITS if system.unit_state(u) == "masked"]
        ports = sorted({22, state.port} & system.listening_tcp_ports())
        active = system.is_active("ssh.service")
        ok = len(masked) == len(ssh.UNITS) and not ports and not active
        evidence = f"masked: {', '.join(masked) or 'none'}; active: {active}; listening on {ports or 'no SSH port'}"
        return Check("ssh", rule, ok, evidence)
    config = ssh.effective_config()
    wanted: dict[str, Callable[[str], bool]] = {
        "passwordauthentication": lambda v: v == "no",
        "kbdinteractiveauthentication": lambda v: v == "no",
        "permitemptypasswords": lambda v: v == "no",
        "permitrootlogin": lambda v: v in ("without-password", "prohibit-password", "no"),
        "authenticationmethods": lambda v: v == "publickey",
        "maxauthtries": lambda v: int(v) <= 4,
        "logingracetime": lambda v: int(v) <= 60,
    }
    bad = [f"{key} {config.get(key, '?')}" for key, good in wanted.items() if not good(config.get(key, "0"))]
    evidence = f"port {state.port}; " + ("; ".join(bad) if bad else "sshd -T: key login only")
    return Check("ssh", rule, not bad, evidence)


def _no_image_host_keys(_: site.Policy) -> Check:
    keys = sorted(p.name for p in (paths.root() / "etc" / "ssh").glob("ssh_host_*"))
    return Check("ssh-host-keys", "no SSH host keys from the image (made on the device)", not keys,
                 f"/etc/ssh host keys: {', '.join(keys) or 'none'}")


def _root(_: site.Policy) -> Check:
    current = root.status()
    ok = current not in (root.Status.DEFAULT, root.Status.DERIVED)
    macs = root.interface_macs()
    return Check("root-credential", "root password is not a default or derived from a MAC", ok,
                 f"root is {current.value}; checked against {len(root.KNOWN_DEFAULTS)} defaults and "
                 f"the MAC-derived forms of {len(macs)} interface(s)")


def _private(path: Path) -> str | None:
    """Why `path` is not root-only, or None when it is."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o077:
        return f"{path} is mode {stat.S_IMODE(info.st_mode):04o} owner {info.st_uid}"
    return None


def _secrets_private(_: site.Policy) -> Check:
    files = [root.hash_path(), root.initial_path(), extensions.store_path(), ssh.host_key(),
             paths.data(), extensions.store_path().parent, root.hash_path().parent]
    problems = [p for p in map(_private, files) if p]
    return Check("secrets-private", "credentials and secrets on /data are root-only", not problems,
                 "; ".join(problems) or f"{len(files)} paths root-only")


def _extensions_present(pol: site.Policy) -> Check:
    have = extensions.load()
    missing = [n for n in pol.extensions if n not in have]
    return Check("extensions-provisioned", "every declared extension has its own secret and PIN", not missing,
                 f"missing: {', '.join(missing)}" if missing else f"{len(have)} extensions provisioned")


def _extension_findings(pol: site.Policy, what: str) -> tuple[bool, str]:
    findings = [f for f in extensions.audit(extensions.load(), pol.rules, pol.company) if f.what == what]
    evidence = "; ".join(f"{f.number}: {', '.join(v.rule for v in f.problems)}" for f in findings)
    return not findings, evidence


def _secrets_strong(pol: site.Policy) -> Check:
    ok, evidence = _extension_findings(pol, "secret")
    return Check("extension-secrets", "SIP secrets unique, long, mixed, no runs, no account info, not common",
                 ok, evidence or "all secrets pass the policy")


def _pins_strong(pol: site.Policy) -> Check:
    ok, evidence = _extension_findings(pol, "pin")
    return Check("voicemail-pins", "voicemail PINs: >= 6 digits, not trivial, not the extension", ok,
                 evidence or "all PINs pass the policy")


def _call_pins_strong(pol: site.Policy) -> Check:
    ok, evidence = _extension_findings(pol, "call_pin")
    return Check("call-pins", "call PINs: as strong as a voicemail PIN and not the same as it", ok,
                 evidence or "all call PINs pass the policy")


def _call_locks(_: site.Policy) -> Check:
    """Not fixed by --fix: lifting a rate lock is an administrator's decision."""
    from pbxagent.calls import limits

    try:
        found = limits.locked()
    except ValueError as exc:
        return Check("call-locks", "no extension's external calls are locked", False, str(exc))
    evidence = "; ".join(f"{ext}: {why} (`pbxagent calls unlock {ext}`)" for ext, why in sorted(found.items()))
    return Check("call-locks", "no extension's external calls are locked", not found, evidence or "none locked")


def _policy(_: site.Policy) -> Check:
    loaded = site.load()
    return Check("policy", "the site policy is valid and in force", loaded.error is None,
                 loaded.error or f"in force: {loaded.origin}")


def _provisioned(_: site.Policy) -> Check:
    done = provision.completed()
    return Check("provisioned", "first-boot provisioning completed", done,
                 "completed" if done else "provisioning has not completed")


CHECKS: tuple[Callable[[site.Policy], Check], ...] = (
    _provisioned, _policy, _ssh, _no_image_host_keys, _root, _secrets_private, _extensions_present,
    _secrets_strong, _pins_strong, _call_pins_strong, _call_locks,
)


def check_all(pol: site.Policy) -> list[Check]:
    return [check(pol) for check in CHECKS]


def fix(pol: site.Policy) -> list[str]:
    """Regenerate what the audit can fix by itself: weak extension secrets and PINs, and
    a default or MAC-derived root password."""
    done: list[str] = []
    weak = sorted({f.number for f in extensions.audit(extensions.load(), pol.rules, pol.company)})
    if weak:
        extensions.rotate(weak, pol.rules, pol.secret_length)
        done.append(f"new secret and PINs for extension(s) {', '.join(weak)}")
    if root.status() in (root.Status.DEFAULT, root.Status.DERIVED):
        done.append(root.rotate_now(pol.rules))
    return done
