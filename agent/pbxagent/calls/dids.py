"""Which extension rings for a number a trunk brings in (`calls.dids`): a pure function
of the number as the provider wrote it and the policy.

Providers write the called number their own way: E.164 (`+442079460000`), without the
plus (`442079460000`) or nationally (`02079460000`); each is read into E.164 with the
site's country before it is looked up. A number no entry covers rings nobody (404).
"""

from __future__ import annotations

from typing import NamedTuple

from pbxagent.policy.calls import CallPolicy


class Inbound(NamedTuple):
    number: str  # in E.164 when it could be read, else as received
    extension: str | None  # None: no DID covers it


def route(called: str, policy: CallPolicy) -> Inbound:
    readings = _readings(called, policy.country)
    for candidate in readings:
        found = next((d.extension for d in policy.dids if d.contains(candidate)), None)
        if found is not None:
            return Inbound(candidate, found)
    return Inbound(readings[0] if readings else called, None)


def _readings(called: str, country: str) -> list[str]:
    """The E.164 forms `called` may stand for, the likeliest first."""
    import phonenumbers

    digits = called.lstrip("+")
    if not digits.isdigit():
        return []
    forms = [f"+{digits}"] if called.startswith("+") else []
    if not called.startswith("+"):
        if country:
            try:
                national = phonenumbers.parse(called, country)
                forms.append(phonenumbers.format_number(national, phonenumbers.PhoneNumberFormat.E164))
            except phonenumbers.NumberParseException:
                pass
        forms.append(f"+{digits}")
    return list(dict.fromkeys(forms))
