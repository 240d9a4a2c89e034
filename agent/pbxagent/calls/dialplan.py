"""What the call policy does with a dialled number: a pure function of the dial string,
the calling extension, the time and the policy (`pbxagent calls check`, and the tables
rendered for the SIP service from the same rules).

Numbers are read with phonenumbers (Google's libphonenumber data): the site's national
and international dialling prefixes, the country of a number, and its type, so premium
and shared-cost ranges are known per country without a list typed in here. Numbers of
no country (+881/+882/+883 satellite and international networks, +979 premium, ...:
libphonenumber's non-geographic "001" region) are blocked like premium ranges.

A PIN is dialled in front of the number, `*7<PIN>*<number>`: the SIP service has no
audio to prompt for one.
"""

from __future__ import annotations

import datetime
import hmac
import re
from typing import TYPE_CHECKING, NamedTuple

from pbxagent.policy.calls import DAYS, CallPolicy

if TYPE_CHECKING:
    from phonenumbers import PhoneNumber

PIN_DIAL = re.compile(r"\*7(?P<pin>\d+)\*(?P<number>.*)")
# Always allowed, whatever the class, window or country: 112 and 911 reach emergency
# services from any mobile network; the site's own short numbers come from its country.
EMERGENCY = ("112", "911")
NON_GEOGRAPHIC = "001"


class Decision(NamedTuple):
    dialled: str  # as dialled (no spaces), any PIN masked
    number: str  # the extension, or the number in E.164
    kind: str  # internal, emergency, national, international or invalid
    allowed: bool
    needs_pin: bool  # allowed only with the calling extension's call PIN
    pin_dialled: bool
    reasons: tuple[str, ...]  # why, one line each, in the order the rules apply


def split_pin(dialled: str) -> tuple[str | None, str]:
    """`*7<PIN>*<number>` -> (PIN, number); anything else -> (None, dialled)."""
    match = PIN_DIAL.fullmatch(dialled)
    return (match["pin"], match["number"]) if match else (None, dialled)


def _masked(dialled: str, pin: str | None) -> str:
    return dialled if pin is None else dialled.replace(f"*7{pin}*", "*7<PIN>*", 1)


def decide(dialled: str, extension: str, at: datetime.datetime, policy: CallPolicy,
           extensions: tuple[str, ...], call_pin: str) -> Decision:
    """`call_pin`: the calling extension's own ("" if it has none: no PIN matches)."""
    compact = "".join(dialled.split())
    pin, number = split_pin(compact)
    shown = _masked(compact, pin)
    if number in extensions:
        return Decision(shown, number, "internal", True, False, pin is not None,
                        (f"{number} is an extension of this box",))
    if _emergency(number, policy.country):
        return Decision(shown, number, "emergency", True, False, pin is not None,
                        (f"{number} is an emergency number: always allowed",))
    if not policy.country:
        return Decision(shown, number, "invalid", False, False, pin is not None,
                        ("calls.country is not set: without the site's country no external number can be read",))
    return _external(shown, number, pin, extension, at, policy, call_pin)


def _emergency(number: str, country: str) -> bool:
    if number in EMERGENCY:
        return True
    if not country or not number.isdigit():
        return False
    from phonenumbers import shortnumberinfo

    return bool(shortnumberinfo.is_emergency_number(number, country))


def _external(shown: str, number: str, pin: str | None, extension: str, at: datetime.datetime,
              policy: CallPolicy, call_pin: str) -> Decision:
    import phonenumbers

    try:
        parsed = phonenumbers.parse(number, policy.country)
    except phonenumbers.NumberParseException as exc:
        return Decision(shown, number, "invalid", False, False, pin is not None, (f"not a number: {exc}",))
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(parsed):
        return Decision(shown, e164, "invalid", False, False, pin is not None,
                        (f"{e164} is not a valid number in any numbering plan",))
    own = phonenumbers.country_code_for_region(policy.country)
    code = parsed.country_code or 0
    kind = "national" if code == own else "international"
    cls = policy.class_of(extension)
    refusals = [*_class_refusal(cls, kind, extension), *_blocks(parsed, code, e164, kind, own, policy)]
    hours = policy.windows[kind]
    if not hours.contains(at.weekday(), at.hour * 60 + at.minute):
        refusals.append(f"{kind} calls are allowed only {_describe(policy, kind)} "
                        f"(calls.window_{kind}); it is {at:%a %H:%M}")
    needs_pin = kind == "international"
    if needs_pin and pin is None:
        refusals.append(f"international calls need extension {extension}'s call PIN, dialled *7<PIN>*<number>")
    elif needs_pin and not (pin and call_pin and hmac.compare_digest(pin, call_pin)):
        refusals.append(f"wrong call PIN for extension {extension} (an authentication failure)")
    reasons = refusals or [f"{e164}: {kind}, allowed for extension {extension} (class {cls})"
                           + (" with its call PIN" if needs_pin else "")]
    return Decision(shown, e164, kind, not refusals, needs_pin, pin is not None, tuple(reasons))


def _class_refusal(cls: str, kind: str, extension: str) -> list[str]:
    if cls == "internal" or (cls == "national" and kind == "international"):
        return [f"extension {extension} has class {cls}: no {kind} calls (calls.classes)"]
    return []


def _blocks(parsed: PhoneNumber, code: int, e164: str, kind: str, own: int, policy: CallPolicy) -> list[str]:
    import phonenumbers

    if any(e164.startswith(prefix) for prefix in policy.allowed):
        return []
    found = [f"{e164} starts with {prefix} (calls.blocked)" for prefix in policy.blocked if e164.startswith(prefix)]
    kind_of = phonenumbers.number_type(parsed)
    if kind_of == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        found.append(f"{e164} is a premium-rate number (allow it with calls.allowed)")
    elif kind_of == phonenumbers.PhoneNumberType.SHARED_COST:
        found.append(f"{e164} is a shared-cost number (allow it with calls.allowed)")
    if phonenumbers.region_code_for_country_code(code) == NON_GEOGRAPHIC:
        found.append(f"+{code} is no country's code (satellite or international network)")
    elif kind == "international" and code not in policy.allowed_countries:
        found.append(f"+{code} is not an allowed country (calls.allowed_countries; own: +{own})")
    return found


def _describe(policy: CallPolicy, kind: str) -> str:
    hours = policy.windows[kind]
    days = ",".join(DAYS[d] for d in sorted(hours.days))
    start, end = hours.window
    return f"{days} {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
