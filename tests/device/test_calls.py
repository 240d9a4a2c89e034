"""The call policy on the box: its numbering plans (phonenumbers without the place-name
data the image leaves out) read a site's numbers, international calls need the call PIN
the box made for the extension, and a bad call policy changes nothing.
Calls themselves are not routed yet (docs/calls.md)."""

from __future__ import annotations

import json

from tests.infra.twin import Device


def test_the_box_reads_a_sites_numbers_and_refuses_premium_and_satellite(device: Device) -> None:
    rows = json.loads(device.check("pbxagent extensions list --json --show-secrets 2>/dev/null"))
    call_pin = next(r["call_pin"] for r in rows if r["extension"] == "801")  # made on this box
    wrong_pin = call_pin[:-1] + str((int(call_pin[-1]) + 1) % 10)
    device.check("printf 'calls:\\n  country: FR\\n  classes: {\"801\": international}\\n"
                 "  allowed_countries: [\"+49\"]\\n' > /data/pbx/policy.yaml")
    try:
        premium = device.run("pbxagent calls check 0891123456 --extension 801 --at 2026-12-02T12:00")
        assert premium.status == 1 and "+33891123456 is a premium-rate number" in premium.output, premium.output
        satellite = json.loads(device.run(f"pbxagent calls check '*7{call_pin}*00881612345678' --extension 801 "
                                          "--at 2026-12-02T12:00 --json").output)
        assert satellite["allowed"] is False and satellite["dialled"] == "*7<PIN>*00881612345678"
        germany = "pbxagent calls check '*7{}*0049301234567' --extension 801 --at 2026-12-02T12:00"
        right = device.run(germany.format(call_pin))
        assert right.status == 0 and right.output.startswith("allowed: "), right.output
        wrong = device.run(germany.format(wrong_pin))
        assert wrong.status == 1 and "wrong call PIN for extension 801" in wrong.output, wrong.output
        assert call_pin not in right.output + wrong.output and wrong_pin not in wrong.output
        assert device.run("pbxagent calls check 17 --extension 802").output.startswith("allowed: 17 -> 17 (emergency)")
    finally:
        device.check("rm -f /data/pbx/policy.yaml")


def test_a_bad_call_policy_is_named_and_the_last_good_one_stays(device: Device) -> None:
    device.check("printf 'calls:\\n  classes: {\"801\": vip}\\n' > /data/pbx/policy.yaml")
    try:
        check = device.run("pbxagent policy check")
        assert check.status != 0 and "calls.classes.801: 'vip' is not one of" in check.output, check.output
        kept = device.run("pbxagent calls check 0123456789 --extension 801")
        assert "calls.classes.801: 'vip'" in kept.output, kept.output
        assert "the last good policy is in force" in kept.output, kept.output
        assert "calls.country is not set" in kept.output  # the defaults, as booted
    finally:
        device.check("rm -f /data/pbx/policy.yaml")
