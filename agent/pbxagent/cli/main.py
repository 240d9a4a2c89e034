"""`pbxagent`: the device agent's command line.

Exit status: 0 success (accepted, all checks pass), 1 a rejection or a failed check,
2 an error (bad argument, unreadable file), named in the message.

Each command imports only the modules it uses: under emulation each imported module
costs tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pbxagent.credentials.passwords import Account, Kind
from pbxagent.policy import site

if TYPE_CHECKING:
    import argparse

    from pbxagent.calls.records import Cdr
    from pbxagent.policy.updates import UpdatePolicy

OK, REJECTED, ERROR = 0, 1, 2


def _policy() -> site.Policy:
    loaded = site.load()
    if loaded.error:
        print(f"pbxagent: warning: {loaded.error}; the {loaded.origin} policy is in force", file=sys.stderr)
    return loaded.policy


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=1, sort_keys=True))


def _boot_check(args: argparse.Namespace) -> int:
    from pbxagent import system
    from pbxagent.update import health

    verdict = health.check_boot(args.wait)
    for line in verdict.lines:
        print(f"pbxagent: {line}", flush=True)
    if verdict.reboot:
        system.systemctl("reboot", "--no-block")
    return OK if verdict.healthy else REJECTED


def _refused(exc: Exception) -> int:
    from pbxagent.update import bundle

    assert isinstance(exc, bundle.Rejected)
    print(f"pbxagent: {exc.refusal()}", file=sys.stderr)
    return int(exc.reason)


def _update_install(args: argparse.Namespace) -> int:
    from pbxagent.update import bundle, installer

    try:
        print(f"pbxagent: {installer.install(args.bundle)}")
    except bundle.Rejected as exc:
        return _refused(exc)
    return OK


def _update_verify(args: argparse.Namespace) -> int:
    from pbxagent.update import bundle, installer

    try:
        header = installer.verify(args.bundle)
    except bundle.Rejected as exc:
        return _refused(exc)
    m = header.manifest
    print(f"pbxagent: {args.bundle}: good: {m.compatible} {m.version} (security version {m.security_version}), "
          f"{m.payload_size} bytes")
    return OK


def _update_check(args: argparse.Namespace) -> int:
    """--timer: pbx-update.service (reports, schedule, window, reboot). Without it: poll
    now and say what the box would do, installing nothing."""
    import time

    from pbxagent import system
    from pbxagent.update import fleet

    pol = _policy().update if args.timer else _polling_policy()
    if pol is None:
        return ERROR
    if args.timer:
        lines, reboot = fleet.timer(pol)
        for line in lines:
            print(f"pbxagent: {line}", flush=True)
        print(f"pbxagent: {system.usage()}", flush=True)
        if reboot:
            print("pbxagent: rebooting into the new slot (maintenance window)", flush=True)
            system.systemctl("reboot", "--no-block")
        return OK
    found = fleet.check(pol, int(time.time()))
    if args.json:
        _print_json(found.decision._asdict() | {"status": found.status, "detail": found.detail}
                    if found.decision else {"status": found.status, "detail": found.detail})
    else:
        print(f"pbxagent: {found.status}: {found.detail}")
    return OK if found.status in fleet.FINE else REJECTED


def _polling_policy() -> UpdatePolicy | None:
    """The update policy, if it names a repository to poll (else said on stderr)."""
    pol = _policy().update
    if not pol.repository:
        print("pbxagent: update.repository is not set in the policy: this box does not poll", file=sys.stderr)
        return None
    return pol


def _update_apply(args: argparse.Namespace) -> int:
    """Poll now and install what the repository offers this box, window or not."""
    import time

    from pbxagent.update import bundle, fleet

    pol = _polling_policy()
    if pol is None:
        return ERROR
    found = fleet.check(pol, int(time.time()))
    print(f"pbxagent: {found.status}: {found.detail}")
    if found.status != "offered":
        return OK if found.status in fleet.FINE else REJECTED
    try:
        print(f"pbxagent: {fleet.apply(found)}")
    except bundle.Rejected as exc:
        return _refused(exc)
    return OK


def _update_status(args: argparse.Namespace) -> int:
    from pbxagent.update import fleet, installer

    current = installer.status() | {"fleet": fleet.status()}
    if args.json:
        _print_json(current)
        return OK
    running, other = current["running_slot"], current["other_slot"]
    for slot in (running, other):
        release = current["slots"].get(slot)
        text = f"{release['version']} (security version {release['security_version']})" if release else "unknown"
        print(f"slot {slot}{' (running)' if slot == running else ''}: {text}, "
              f"{current['attempts_left'][slot]} boot attempt(s) left")
    print(f"boot order: {' '.join(current['boot_order'])}; security floor: {current['security_floor']}")
    if current["pending"]:
        print(f"on probation: slot {current['pending']['slot']} ({current['pending']['version']})")
    last = current["last_result"]
    print(f"last update: {last['result']}: {last['message']}" if last else "last update: none")
    fleet_state = current["fleet"]
    check = fleet_state["last_check"]
    print(f"fleet: device id {fleet_state['device_id']}, report key {fleet_state['report_key']}")
    print(f"last check: {check['status']}: {check['detail']}" if check else "last check: none")
    if fleet_state["queued_reports"]:
        print(f"reports waiting for the collector: {len(fleet_state['queued_reports'])}")
    return OK


def _root_status(args: argparse.Namespace) -> int:
    from pbxagent.credentials import root

    current = root.status()
    must_change = root.initial_path().exists() and current is root.Status.ROTATED
    if args.json:
        _print_json({"status": current.value, "must_change": must_change})
    else:
        print(f"root: {current.value}" + (" (must change at first login)" if must_change else ""))
    return OK


def _root_rotate(_: argparse.Namespace) -> int:
    from pbxagent.credentials import root

    print(f"pbxagent: {root.rotate_now(_policy().rules)}")
    return OK


def _root_sync(_: argparse.Namespace) -> int:
    from pbxagent.credentials import root

    print(f"pbxagent: {root.sync()}")
    return OK


def _ssh_enable(args: argparse.Namespace) -> int:
    from pbxagent.credentials import ssh

    state = ssh.enable(args.authorized_key, args.port or _policy().ssh_port)
    print(f"pbxagent: ssh enabled on port {state.port}, key login only")
    return OK


def _ssh_disable(_: argparse.Namespace) -> int:
    from pbxagent.credentials import ssh

    ssh.disable()
    print("pbxagent: ssh disabled and masked")
    return OK


def _ssh_status(args: argparse.Namespace) -> int:
    from pbxagent.credentials import ssh

    current = ssh.status()
    if args.json:
        _print_json(current)
    else:
        state = "on" if current["enabled"] else "off"
        print(f"ssh: {state}; port {current['port']}; unit {current['unit']}; "
              f"active {current['active']}; listening {current['listening']}")
    return OK


def _extensions_list(args: argparse.Namespace) -> int:
    from pbxagent.credentials import extensions

    if args.show_secrets and os.geteuid() != 0:
        print("pbxagent: error: --show-secrets needs root", file=sys.stderr)
        return ERROR
    rows = []
    for ext in extensions.load().values():
        row: dict[str, object] = {"extension": ext.number, "secret": "set", "pin": "set", "call_pin": "set"}
        if args.show_secrets:
            row.update(secret=ext.secret, pin=ext.pin, call_pin=ext.call_pin)
        rows.append(row)
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(f"{row['extension']}\tsecret {row['secret']}\tpin {row['pin']}\tcall pin {row['call_pin']}")
    return OK


def _extensions_add(args: argparse.Namespace) -> int:
    from pbxagent.credentials import extensions

    pol = _policy()
    added = extensions.add(args.number, args.count, pol.rules, pol.secret_length)
    print(f"pbxagent: added {len(added)} extension(s): {added[0]}-{added[-1]}")
    return OK


def _extensions_rotate(args: argparse.Namespace) -> int:
    from pbxagent.credentials import extensions

    if bool(args.all) == bool(args.numbers):
        print("pbxagent: error: give extension numbers or --all", file=sys.stderr)
        return ERROR
    pol = _policy()
    done = extensions.rotate(None if args.all else args.numbers, pol.rules, pol.secret_length)
    print(f"pbxagent: new secret and PIN for {len(done)} extension(s)")
    return OK


def _account(args: argparse.Namespace, pol: site.Policy) -> Account:
    return Account(extension=args.extension or "", user=args.user or "", company=pol.company)


def _password_check(args: argparse.Namespace) -> int:
    from pbxagent.credentials import passwords

    pol = _policy()
    candidate = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    found = passwords.check(candidate, Kind(args.kind), _account(args, pol), pol.rules)
    if args.json:
        _print_json({"accepted": not found, "reasons": [v._asdict() for v in found]})
    else:
        for violation in found:
            print(f"{violation.rule}: {violation.message}")
        if not found:
            print("accepted")
    return REJECTED if found else OK


def _password_generate(args: argparse.Namespace) -> int:
    from pbxagent.credentials import passwords

    pol = _policy()
    length = pol.secret_length if args.kind == Kind.SECRET.value else None
    print(passwords.generate(Kind(args.kind), _account(args, pol), pol.rules, length))
    return OK


def _policy_keys(_: argparse.Namespace) -> int:
    print("\n".join(site.SETTINGS.help()))
    return OK


def _policy_check(args: argparse.Namespace) -> int:
    site.compose(site.DEFAULTS, args.file or site.override_path())
    print(f"pbxagent: {args.file or site.override_path()}: valid")
    return OK


def _audit(args: argparse.Namespace) -> int:
    from pbxagent import audit

    pol = _policy()
    if args.fix:
        for step in audit.fix(pol):
            print(f"pbxagent: fixed: {step}", file=sys.stderr)
    checks = audit.check_all(pol)
    passed = all(c.passed for c in checks)
    if args.json:
        _print_json({"passed": passed, "checks": [c._asdict() for c in checks]})
    else:
        for c in checks:
            print(f"{'PASS' if c.passed else 'FAIL'}  {c.id:24} {c.evidence}")
    return OK if passed else REJECTED


def _policy_from(file: Path | None) -> site.Policy:
    """The policy in force, or the defaults with FILE laid over them (raises on error)."""
    return site.compose(site.DEFAULTS, file)[0] if file else _policy()


def _firewall_render(args: argparse.Namespace) -> int:
    from pbxagent.network import firewall, guard, lan

    pol = _policy_from(args.policy)
    addresses = [lan.IfAddr("arg", a) for a in args.address] if args.address else lan.read_addresses()
    print(firewall.compile_ruleset(pol.firewall, guard.segments(addresses), guard.own_addresses(addresses)), end="")
    return OK


def _firewall_apply(args: argparse.Namespace) -> int:
    from pbxagent.network import probation

    applied = probation.apply(_policy(), args.policy, args.rollback_after)
    print(f"pbxagent: {applied.exemptions}")
    if applied.held_for:
        print(f"pbxagent: firewall applied in {applied.seconds:.2f} s; it changes {', '.join(applied.held_for)}, "
              f"which admit the administrator: run `pbxagent firewall confirm` within {args.rollback_after} s "
              "or it is rolled back")
    else:
        print(f"pbxagent: firewall applied in {applied.seconds:.2f} s")
    return OK


def _firewall_confirm(_: argparse.Namespace) -> int:
    from pbxagent.network import probation

    probation.confirm()
    print("pbxagent: firewall change confirmed; it is now the site policy")
    return OK


def _firewall_rollback(_: argparse.Namespace) -> int:
    from pbxagent.network import probation

    print(f"pbxagent: {probation.roll_back(_policy())}")
    print("pbxagent: firewall change not confirmed: the previous policy is applied again", flush=True)
    return OK


def _lan_classify(args: argparse.Namespace) -> int:
    from pbxagent.network import lan

    decisions = lan.classify([lan.IfAddr("arg", a) for a in args.address], _policy().firewall.allow)
    for decision in decisions:
        if decision.trusted:
            print(decision.network)
    return OK


def _lan_status(args: argparse.Namespace) -> int:
    from pbxagent.network import lan

    decisions = lan.classify(lan.read_addresses(), _policy().firewall.allow)
    if args.json:
        _print_json([d._asdict() for d in decisions])
    else:
        for d in decisions:
            print(f"{'trusted  ' if d.trusted else 'untrusted'} {d.network:24} {d.reason}")
    return OK


def _bans_list(args: argparse.Namespace) -> int:
    from pbxagent.network import bans

    current = bans.current()
    if args.json:
        _print_json([b._asdict() for b in current])
    else:
        for ban in current:
            print(f"{ban.address}\t{ban.expires_in} s left")
    return OK


def _bans_add(args: argparse.Namespace) -> int:
    from pbxagent.network import bans, guard, lan

    bans.add(args.address, args.seconds, guard.exempt_networks(_policy(), lan.read_addresses()))
    bans.save()
    print(f"pbxagent: {args.address} banned for {args.seconds} s")
    return OK


def _bans_remove(args: argparse.Namespace) -> int:
    from pbxagent.network import bans

    bans.remove(args.address)
    print(f"pbxagent: {args.address} unbanned")
    return OK


def _bans_jails(args: argparse.Namespace) -> int:
    from pbxagent.network import bans
    from pbxagent.policy import network

    jails = _policy().jails
    if args.write:
        print(f"pbxagent: fail2ban thresholds from the policy written to {bans.write_jails(jails)}")
    else:
        print(network.render_jails(jails), end="")
    return OK


def _sip_render(_: argparse.Namespace) -> int:
    from pbxagent import media, sip

    policy = _policy()
    steps = sip.write_inputs(policy)[0]
    for step in [*steps, *media.write_inputs(policy.calls)]:
        print(f"pbxagent: {step}")
    return OK


def _calls_check(args: argparse.Namespace) -> int:
    import datetime

    from pbxagent.calls import limits

    pol = _policy()
    try:
        at = datetime.datetime.fromisoformat(args.at) if args.at else datetime.datetime.now()
    except ValueError:
        print(f"pbxagent: error: --at: {args.at!r} is not a time like 2026-12-04T09:30", file=sys.stderr)
        return ERROR
    try:  # with the rate lock and daily counts as they stand; a check counts nothing
        decision = limits.decide(args.number, args.extension, at, pol, count=False)[0]
    except ValueError as exc:  # a damaged extension store or call state file, named
        print(f"pbxagent: error: {exc}", file=sys.stderr)
        return ERROR
    if args.json:
        _print_json(decision._asdict())
    else:
        print(f"{'allowed' if decision.allowed else 'REFUSED'}: {decision.dialled} -> {decision.number} "
              f"({decision.kind}) from extension {args.extension} at {at:%a %Y-%m-%d %H:%M}")
        for reason in decision.reasons:
            print(f"  {reason}")
    return OK if decision.allowed else REJECTED


def _call_records(since: str | None) -> list[Cdr] | None:
    from pbxagent.calls import records

    try:
        lines = records.journal_lines(since)
    except ValueError as exc:
        print(f"pbxagent: error: {exc}", file=sys.stderr)
        return None
    found = [records.parse(line) for line in lines]
    if None in found:
        print(f"pbxagent: {found.count(None)} damaged record line(s) in the journal left out", file=sys.stderr)
    return [cdr for cdr in found if cdr is not None]


def _calls_list(args: argparse.Namespace) -> int:
    import datetime

    cdrs = _call_records(args.since)
    if cdrs is None:
        return ERROR
    if args.json:
        _print_json([{**cdr._asdict(), "duration": cdr.duration} for cdr in cdrs])
        return OK
    for cdr in cdrs:
        start = datetime.datetime.fromtimestamp(cdr.start)
        print(f"{start:%Y-%m-%d %H:%M:%S}  {cdr.caller:>6} -> {cdr.dialled:<16} {cdr.kind:<13} {cdr.code}  "
              f"{cdr.duration:>5} s  {cdr.trunk or '-'}  {cdr.source}")
    return OK


def _calls_stats(args: argparse.Namespace) -> int:
    from pbxagent.calls import records

    cdrs = _call_records(args.since)
    if cdrs is None:
        return ERROR
    table = records.stats(cdrs)
    if args.json:
        _print_json([{"day": day, "extension": ext, "class": kind, **tally._asdict()}
                     for (day, ext, kind), tally in table.items()])
        return OK
    for (day, ext, kind), tally in table.items():
        print(f"{day}  {ext:>6}  {kind:<13} {tally.attempts:>4} calls  {tally.answered:>4} answered  "
              f"{tally.seconds:>6} s")
    return OK


def _calls_unlock(args: argparse.Namespace) -> int:
    from pbxagent.calls import limits

    try:
        lifted = limits.unlock(args.extension)
    except (ValueError, OSError) as exc:
        print(f"pbxagent: error: {exc}", file=sys.stderr)
        return ERROR
    print(f"pbxagent: extension {args.extension}'s external calls "
          + ("unlocked" if lifted else "were not locked"))
    return OK


def _trunks_list(args: argparse.Namespace) -> int:
    from pbxagent.credentials import trunks

    secrets, policy = trunks.load(), _policy()
    own = trunks.cas([t.name for t in policy.calls.trunks])
    rows = [{**t._asdict(), "uri": t.uri, "secret": "set" if t.name in secrets else "not set", "outbound": i == 0,
             "ca": ("own" if t.name in own else "public") if t.transport == "tls" else "-"}
            for i, t in enumerate(policy.calls.trunks)]
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(f"{row['name']}\t{row['uri']}\tuser {row['username'] or '-'}\tsecret {row['secret']}\t"
                  f"limit {row['limit']}\tfrom {','.join(row['addresses']) or 'nowhere'}"
                  + (f"\tCA {row['ca']}" if row["ca"] != "-" else "") + ("\tregisters" if row["register"] else "")
                  + ("\toutbound" if row["outbound"] else ""))
    return OK


def _trunks_secret(args: argparse.Namespace) -> int:
    """The secret from stdin (a prompt on a terminal): an argument would show in `ps`."""
    import getpass

    from pbxagent.credentials import trunks

    if not _known_trunk(args.name):
        return ERROR
    secret = getpass.getpass(f"secret for trunk {args.name}: ") if sys.stdin.isatty() else sys.stdin.readline()
    trunks.set_secret(args.name, secret.rstrip("\n"))
    print(f"pbxagent: trunk {args.name}'s secret stored")
    _restart_sip()
    return OK


def _trunks_ca(args: argparse.Namespace) -> int:
    from pbxagent.credentials import trunks

    if not _known_trunk(args.name):
        return ERROR
    if args.public:
        trunks.ca_path(args.name).unlink(missing_ok=True)
        print(f"pbxagent: trunk {args.name}'s certificates are now checked against the public CAs")
    else:
        count = trunks.set_ca(args.name, sys.stdin.buffer.read(trunks.MAX_CA_BYTES + 1))
        print(f"pbxagent: trunk {args.name}'s certificates are now checked against its own CA "
              f"({count} certificate(s))")
    _restart_sip()
    return OK


def _known_trunk(name: str) -> bool:
    if name in {t.name for t in _policy().calls.trunks}:
        return True
    print(f"pbxagent: error: trunk {name!r}: not in the policy's calls.trunks", file=sys.stderr)
    return False


def _restart_sip() -> None:
    """The SIP service reads its tables and TLS files at start: restarted when they
    changed. One still waiting for the box's first address (kamailio.service's
    ExecStartPre, up to 20 s) has read nothing yet and starts on them: a restart would
    only wait for that start to end."""
    from pbxagent import sip, system

    if not (sip.run_dir().exists() and sip.write_inputs(_policy())[1]):
        return
    if system.systemctl("show", "-P", "SubState", "kamailio.service") == "start-pre":
        print("pbxagent: the SIP service takes it as it starts")
        return
    system.systemctl("try-restart", "kamailio.service")
    print("pbxagent: the SIP service restarted with it")


def _run(_: object) -> int:
    from pbxagent import daemon

    daemon.run(lambda line: print(f"pbxagent: {line}", flush=True))
    return OK


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="pbxagent", description="pbxfw device agent")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, func: object,
                text: str, json_flag: bool = False) -> argparse.ArgumentParser:
        cmd = group.add_parser(name, help=text, description=text)
        cmd.set_defaults(func=func)
        if json_flag:
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        return cmd

    def group(name: str, text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        return sub.add_parser(name, help=text).add_subparsers(dest=f"{name}_command", required=True)

    command(sub, "run", _run, "the agent's process (pbx-agent.service): provision, guard the network, "
            "render the SIP service's inputs, check the boot's health")
    boot_check = command(group("boot", "A/B boot state"), "check", _boot_check,
                         "health check: commit the running slot, or reboot a slot on probation that fails")
    boot_check.add_argument("--wait", type=float, default=90, help="seconds the checks may take to pass")

    upd = group("update", "signed A/B firmware updates")
    install = command(upd, "install", _update_install, "verify a bundle and write it to the inactive slot")
    verify = command(upd, "verify", _update_verify, "check a bundle file's signature and every chunk")
    for cmd in (install, verify):
        cmd.add_argument("bundle", metavar="FILE|URL" if cmd is install else "FILE")
    command(upd, "status", _update_status, "slots, versions, security floor, last result, fleet checks",
            json_flag=True)
    check = command(upd, "check", _update_check, "poll the release repository and say what this box would do",
                    json_flag=True)
    check.add_argument("--timer", action="store_true",
                       help="pbx-update.service: send reports, poll when due, install in the window and reboot")
    command(upd, "apply", _update_apply, "poll now and install the release offered to this box (no window)")

    root = group("root", "root's credential")
    command(root, "status", _root_status, "default, derived, rotated, factory, user-set or locked", json_flag=True)
    command(root, "rotate", _root_rotate, "replace root's password; the new one goes to the local console")
    command(root, "sync", _root_sync, "keep a password set with passwd(1) on /data")

    ssh = group("ssh", "the SSH service (off by default)")
    enable = command(ssh, "enable", _ssh_enable, "turn SSH on, key login only")
    enable.add_argument("--authorized-key", type=Path, required=True, metavar="FILE", help="OpenSSH public key")
    enable.add_argument("--port", type=int, help="listening port (default: the policy's ssh.port)")
    command(ssh, "disable", _ssh_disable, "stop, disable and mask SSH")
    command(ssh, "status", _ssh_status, "whether SSH is on, its port and unit state", json_flag=True)

    ext = group("extensions", "extensions and their secrets")
    listing = command(ext, "list", _extensions_list, "list extensions (no secrets unless asked, as root)",
                      json_flag=True)
    listing.add_argument("--show-secrets", action="store_true", help="include secrets and PINs (root only)")
    add = command(ext, "add", _extensions_add, "add extensions, each with its own random secret and PIN")
    add.add_argument("number", help="the first extension number")
    add.add_argument("--count", type=int, default=1, help="how many consecutive extensions")
    rotate = command(ext, "rotate", _extensions_rotate, "new secret and PIN for extensions")
    rotate.add_argument("numbers", nargs="*", help="extension numbers")
    rotate.add_argument("--all", action="store_true", help="every extension")

    pw = group("password", "the password, secret and PIN policy")
    check = command(pw, "check", _password_check, "check a candidate read from stdin", json_flag=True)
    gen = command(pw, "generate", _password_generate, "print a random candidate that passes the policy")
    for cmd in (check, gen):
        cmd.add_argument("--kind", choices=[k.value for k in Kind], required=True)
        cmd.add_argument("--extension", help="the extension it belongs to")
        cmd.add_argument("--user", help="the user name it belongs to")

    pol = group("policy", "the agent's policy")
    pcheck = command(pol, "check", _policy_check, "validate a policy override before installing it")
    pcheck.add_argument("file", nargs="?", type=Path, help=f"default: {site.override_path()}")
    command(pol, "keys", _policy_keys, "every key a policy may set: type, bounds, help")

    fw = group("firewall", "the nftables firewall compiled from the policy")
    render = command(fw, "render", _firewall_render, "print the ruleset without touching the system")
    apply = command(fw, "apply", _firewall_apply, "check the ruleset (nft -c) and apply it in one transaction")
    for cmd in (render, apply):
        cmd.add_argument("--policy", type=Path, metavar="FILE", help="a policy override to use instead of the site's")
    apply.add_argument("--rollback-after", type=int, default=60, metavar="SECONDS",
                       help="how long a change to who may reach the box waits for confirmation (default 60)")
    command(fw, "confirm", _firewall_confirm, "keep a firewall change that is waiting for confirmation")
    command(fw, "rollback", _firewall_rollback, "drop a waiting change and apply the site policy again")
    render.add_argument("--address", action="append", metavar="ADDR/PREFIX",
                        help="interface addresses to compile for (default: the system's)")

    lan_group = group("lan", "the trusted LAN")
    classify = command(lan_group, "classify", _lan_classify, "print the trusted networks for these addresses")
    classify.add_argument("address", nargs="+", metavar="ADDR/PREFIX")
    command(lan_group, "status", _lan_status, "trusted and untrusted networks of this box, and why", json_flag=True)

    ban = group("bans", "the ban list shared by SIP, SSH and web logins")
    command(ban, "list", _bans_list, "banned addresses and the time left", json_flag=True)
    ban_add = command(ban, "add", _bans_add, "ban an address (never a trusted or allow-listed one)")
    ban_add.add_argument("address")
    ban_add.add_argument("--seconds", type=int, default=3600)
    ban_remove = command(ban, "remove", _bans_remove, "lift a ban")
    ban_remove.add_argument("address")
    jails = command(ban, "jails", _bans_jails, "fail2ban thresholds from the policy's bans section")
    jails.add_argument("--write", action="store_true", help="write them to /etc/fail2ban/jail.d for fail2ban")

    sip_group = group("sip", "the SIP service adapter")
    calls_group = group("calls", "the call policy (toll-fraud controls)")
    calls_check = command(calls_group, "check", _calls_check, "what the policy does with a dialled number, "
                          "and why (no call is placed)", json_flag=True)
    calls_check.add_argument("number", help="as dialled, e.g. 0044..., +33..., *7<PIN>*00...")
    calls_check.add_argument("--extension", required=True, help="the calling extension")
    calls_check.add_argument("--at", help="local time to judge, e.g. 2026-12-04T21:30 (default: now)")
    unlock = command(calls_group, "unlock", _calls_unlock, "lift an extension's rate lock on external calls")
    unlock.add_argument("extension")
    for name, handler, text in (("list", _calls_list, "the call records: one per call attempt, from the journal"),
                                ("stats", _calls_stats, "calls, answered calls and talk time per day, extension "
                                                        "and class")):
        cmd = command(calls_group, name, handler, text, json_flag=True)
        cmd.add_argument("--since", help="from this time on, as journalctl reads it: 2026-12-04, today, \"1h ago\"")
    command(sip_group, "render", _sip_render, "write the service's credentials and TLS files to /data/kamailio, "
            "the media relay's settings to /run/pbx/relay")

    trunk_group = group("trunks", "SIP trunks (the policy's calls.trunks) and their secrets")
    command(trunk_group, "list", _trunks_list, "trunks, where their calls go and come from, whether a secret is set",
            json_flag=True)
    secret = command(trunk_group, "secret", _trunks_secret, "store a trunk's digest secret, read from stdin, "
                     "and restart the SIP service with it")
    secret.add_argument("name", help="the trunk's name in calls.trunks")
    ca = command(trunk_group, "ca", _trunks_ca, "check a TLS trunk's certificates against its provider's own CA "
                 "(PEM certificates read from stdin) instead of the public ones, and restart the SIP service")
    ca.add_argument("name", help="the trunk's name in calls.trunks")
    ca.add_argument("--public", action="store_true", help="forget its own CA: check against the public CAs again")

    aud = command(sub, "audit", _audit, "check every credential rule, with evidence", json_flag=True)
    aud.add_argument("--fix", action="store_true", help="regenerate weak secrets and PINs first")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Every boot runs `run`; building the parser (argparse) alone would cost it a third of
    # a second under emulation.
    args: object = None
    func = _run if argv == ["run"] else None
    if func is None:
        args = _parser().parse_args(argv)
        func = args.func
    try:
        return int(func(args))
    except (OSError, ValueError) as exc:
        print(f"pbxagent: error: {exc}", file=sys.stderr)
        return ERROR


if __name__ == "__main__":
    sys.exit(main())
