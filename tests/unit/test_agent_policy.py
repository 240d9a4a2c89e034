"""The agent's policy: defaults, site overrides, and bad overrides that name the file
and key while the last good policy stays in force."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbxagent.policy import site


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    base = tmp_path / "data" / "pbx"
    base.mkdir(parents=True)
    return base


def test_defaults_declare_the_preconfigured_extensions_and_requirement_figures() -> None:
    pol, _ = site.compose(site.DEFAULTS, None)
    assert pol.extensions == tuple(str(n) for n in range(800, 810))
    assert (pol.rules.min_length, pol.rules.min_upper, pol.rules.min_digits, pol.rules.pin_length) == (10, 2, 2, 6)


def test_an_override_tightens_only_what_it_names(data: Path) -> None:
    (data / "policy.yaml").write_text("passwords:\n  min_length: 14\nextensions:\n  preconfigured: [200-201, 300]\n")
    loaded = site.load()
    assert loaded.error is None and loaded.origin == "site override"
    assert loaded.policy.rules.min_length == 14
    assert loaded.policy.rules.min_upper == 2
    assert loaded.policy.extensions == ("200", "201", "300")
    assert loaded.policy.permit == {}


def test_a_permit_list_is_normalised_per_extension(data: Path) -> None:
    (data / "policy.yaml").write_text(
        "extensions:\n  permit: {801: [192.168.1.7, 2001:db8::/32], '802': [10.1.2.0/24]}\n")
    assert site.load().policy.permit == {"801": ("192.168.1.7/32", "2001:db8::/32"), "802": ("10.1.2.0/24",)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("passwords: [1", r"not valid YAML"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("pasword:\n  min_length: 12\n", r"pasword: unknown key"),
        ("passwords:\n  min_lenght: 12\n", r"passwords\.min_lenght: unknown key"),
        ("passwords:\n  min_length: seven\n", r"passwords\.min_length: must be an integer"),
        ("passwords:\n  min_length: 6\n", r"passwords\.min_length: 6 is outside 8\.\.64"),
        ("passwords:\n  min_upper: 1\n", r"passwords\.min_upper: 1 is outside"),
        ("ssh:\n  port: 70000\n", r"ssh\.port: 70000 is outside 1\.\.65535"),
        ("extensions:\n  preconfigured: [809-800]\n", r"extensions\.preconfigured: '809-800' is not an ascending"),
        ("extensions:\n  preconfigured: [abc]\n", r"extensions\.preconfigured: 'abc' is not a number"),
        ("extensions:\n  preconfigured: [800, 800]\n", r"listed twice"),
        ("ssh: 22\n", r"ssh: must be a mapping"),
        ("extensions:\n  permit: {ab1: [10.0.0.0/8]}\n", r"extensions\.permit\.ab1: an extension number must"),
        ("extensions:\n  permit: {801: []}\n", r"extensions\.permit\.801: must be a list of 1\.\.64"),
        ("extensions:\n  permit: {801: [10.0.0.0/33]}\n", r"extensions\.permit\.801\[0\]: '10\.0\.0\.0/33' is not"),
        ("extensions:\n  permit: [801]\n", r"extensions\.permit: must be a mapping"),
    ],
)
def test_bad_overrides_name_file_and_key(data: Path, text: str, message: str) -> None:
    override = data / "policy.yaml"
    override.write_text(text)
    with pytest.raises(site.PolicyError, match=message) as error:
        site.compose(site.DEFAULTS, override)
    assert str(error.value).startswith(str(override))


def test_a_bad_override_leaves_the_last_good_policy_in_force(data: Path) -> None:
    override = data / "policy.yaml"
    override.write_text("passwords:\n  min_length: 14\n")
    site.remember(site.load())
    override.write_text("passwords:\n  min_length: 14\n  pin_length: 3\n")
    loaded = site.load()
    assert loaded.origin == "last good"
    assert loaded.error is not None and "passwords.pin_length" in loaded.error
    assert loaded.policy.rules.min_length == 14  # not half-applied, not reset to defaults
    assert loaded.policy.rules.pin_length == 6
    site.remember(loaded)  # a failed load never replaces the last good
    assert '"passwords.min_length": 14' in site.last_good_path().read_text()


def test_without_a_last_good_a_bad_override_falls_back_to_the_defaults(data: Path) -> None:
    (data / "policy.yaml").write_text("ssh:\n  port: 0\n")
    loaded = site.load()
    assert loaded.error is not None
    assert loaded.policy == site.compose(site.DEFAULTS, None)[0]


def test_an_unchanged_policy_is_taken_from_the_last_good_without_parsing(data: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (data / "policy.yaml").write_text("passwords:\n  min_length: 12\n")
    site.remember(site.load())

    def no_parsing(*_: object) -> None:
        raise AssertionError("parsed the YAML again")

    monkeypatch.setattr(site, "compose", no_parsing)
    loaded = site.load()
    assert (loaded.error, loaded.origin, loaded.policy.rules.min_length) == (None, "site override", 12)
    (data / "policy.yaml").write_text("passwords:\n  min_length: 13\n")
    with pytest.raises(AssertionError, match="parsed the YAML again"):
        site.load()
