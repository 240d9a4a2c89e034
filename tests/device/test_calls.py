"""The call policy on the box: its numbering plans (phonenumbers without the place-name
data the image leaves out) read a site's numbers, and a bad call policy changes nothing.
Calls themselves are not routed yet (docs/calls.md)."""

from __future__ import annotations

import json

from tests.infra.twin import Device


def test_the_box_reads_a_sites_numbers_and_refuses_premium_and_satellite(device: Device) -> None:
    device.check("printf 'calls:\\n  country: FR\\n  classes: {\"801\": international}\\n"
                 "  allowed_countries: [\"+49\"]\\n' > /data/pbx/policy.yaml")
    try:
        premium = device.run("pbxagent calls check 0891123456 --extension 801 --at 2026-12-02T12:00")
        assert premium.status == 1 and "+33891123456 is a premium-rate number" in premium.output, premium.output
        satellite = json.loads(device.run("pbxagent calls check '*7482913*00881612345678' --extension 801 "
                                          "--at 2026-12-02T12:00 --json").output)
        assert satellite["allowed"] is False and satellite["dialled"] == "*7<PIN>*00881612345678"
        germany = device.run("pbxagent calls check '*7482913*0049301234567' --extension 801 --at 2026-12-02T12:00")
        assert germany.status == 0 and germany.output.startswith("allowed: "), germany.output
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
