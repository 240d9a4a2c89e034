"""Recipe and board resolution: kas-style composition, merge rules, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbxfw import config
from pbxfw.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "board/qemu-u50/board.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("header:\n  version: 1\n" + text)
    return path


def test_default_image_resolves() -> None:
    cfg = config.load(f"{BOARD}:{REPO}/recipes/pbx.yml")
    assert cfg.board.name == "qemu-u50"
    assert cfg.debian.suite == "trixie"
    assert {"kamailio", "nftables", "python3", "systemd"} <= set(cfg.packages)
    assert dict(cfg.services)["ssh.service"] == "masked"
    assert [p.name for p in cfg.overlays] == ["overlay"]


def test_debug_extras_are_not_in_the_default_image() -> None:
    default = config.load(f"{BOARD}:{REPO}/recipes/pbx.yml")
    debug = config.load(f"{BOARD}:{REPO}/recipes/pbx.yml:{REPO}/recipes/debug.yml")
    extras = set(debug.packages) - set(default.packages)
    assert extras and "strace" in extras
    assert not extras & set(default.packages)


def test_both_boards_build_from_debian_13_and_a_board_chooses_its_suite(tmp_path: Path) -> None:
    for board in ("qemu-u50", "qemu-u20"):
        assert config.load(f"{REPO}/board/{board}/board.yaml:{REPO}/recipes/pbx.yml").debian.suite == "trixie"
    older = write(tmp_path / "board.yaml", BOARD.read_text().replace("suite: trixie", "suite: bookworm"))
    assert config.load(f"{older}:{REPO}/recipes/pbx.yml").debian.suite == "bookworm"


def test_later_files_win(tmp_path: Path) -> None:
    late = write(tmp_path / "late.yml", "debian:\n  suite: forky\n")
    assert config.load(f"{BOARD}:{REPO}/recipes/pbx.yml:{late}").debian.suite == "forky"


def test_includes_merge_first_and_the_including_file_wins(tmp_path: Path) -> None:
    write(tmp_path / "base.yml", "packages:\n  a: true\n  b: true\nimage:\n  hostname: base\n")
    write(
        tmp_path / "top.yml",
        "  includes: [base.yml]\npackages:\n  b: false\n  c: true\nimage:\n  hostname: top\n",
    )
    merged: dict[str, object] = {}
    origins: dict[str, Path] = {}
    seen: list[Path] = []
    config._load_into(tmp_path / "top.yml", merged, origins, seen, ())
    assert merged["packages"] == {"a": True, "b": False, "c": True}
    assert merged["image"] == {"hostname": "top"}
    assert origins["image.hostname"] == (tmp_path / "top.yml").resolve()
    assert seen == [(tmp_path / "base.yml").resolve(), (tmp_path / "top.yml").resolve()]


def test_lists_are_replaced_not_appended() -> None:
    into: dict[str, object] = {"debian": {"components": ["main"]}}
    config.merge(into, {"debian": {"components": ["main", "contrib"]}}, {}, Path("x"))
    assert into == {"debian": {"components": ["main", "contrib"]}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("board:\n  kernl:\n    flavour: arm64\n", r"bad\.yml: board\.kernl: unknown key \(known here: arch, "),
        ("packages:\n  kamailio: yes-please\n", r"bad\.yml: packages\.kamailio: must be true or false"),
        ("  includes: [nowhere.yml]\n", r"nowhere\.yml: file not found"),
        ("packages:\n  a: true\n", r"required key 'board\.partitions'.*bad\.yml"),
    ],
    ids=["unknown-key", "wrong-type", "missing-include", "missing-required"],
)
def test_bad_file_is_named_with_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    bad = write(tmp_path / "bad.yml", text)
    with pytest.raises(ConfigError, match=message):
        config.load(f"{bad}")


def test_include_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yml", "  includes: [b.yml]\n")
    write(tmp_path / "b.yml", "  includes: [a.yml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        config.load(f"{tmp_path / 'a.yml'}")


def test_missing_header_version_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "old.yml"
    path.write_text("packages:\n  a: true\n")
    with pytest.raises(ConfigError, match=r"old\.yml: header\.version must be 1"):
        config.load(f"{path}")


def test_missing_uboot_binary_names_file_and_key(tmp_path: Path) -> None:
    board = tmp_path / "board.yaml"
    board.write_text(BOARD.read_text().replace("/usr/lib/u-boot/qemu_arm64/u-boot.bin", "/nonexistent/u-boot.bin"))
    with pytest.raises(ConfigError, match=r"board\.yaml: board\.uboot\.binary: /nonexistent/u-boot\.bin does not"):
        config.load(f"{board}:{REPO}/recipes/pbx.yml")


def test_flash_write_method_is_checked(tmp_path: Path) -> None:
    assert config.load(f"{BOARD}:{REPO}/recipes/pbx.yml").board.uboot.flash_write == "gzwrite"
    extra = write(tmp_path / "extra.yml", "board:\n  uboot:\n    flash_write: dd\n")
    with pytest.raises(ConfigError, match=r"extra\.yml: board\.uboot\.flash_write: must be one of gzwrite, raw"):
        config.load(f"{BOARD}:{REPO}/recipes/pbx.yml:{extra}")


def test_bad_service_state_is_refused(tmp_path: Path) -> None:
    extra = write(tmp_path / "extra.yml", "services:\n  ssh.service: on\n")
    with pytest.raises(ConfigError, match=r"extra\.yml: .*services\.ssh\.service"):
        config.load(f"{BOARD}:{REPO}/recipes/pbx.yml:{extra}")


def test_partition_table_must_be_complete(tmp_path: Path) -> None:
    extra = write(tmp_path / "extra.yml", "board:\n  partitions:\n    swap: 64\n")
    with pytest.raises(ConfigError, match=r"unknown: \['swap'\]"):
        config.load(f"{BOARD}:{REPO}/recipes/pbx.yml:{extra}")


def test_every_setting_is_declared_once_with_help() -> None:
    keys = [s.key for s in config.SETTINGS.settings]
    assert len(keys) == len(set(keys)) and all(s.help for s in config.SETTINGS.settings)
    lines = list(config.SETTINGS.help())
    assert any(line.startswith("board.uboot.boot_attempts") and "int 1..9" in line for line in lines)


def test_kamailio_is_debians_unless_a_board_rebuilds_its_core(tmp_path: Path) -> None:
    u50 = config.load(config.board_spec(REPO, "qemu-u50", "recipes/pbx.yml")).board.kamailio
    assert (u50.rebuilt, u50.memory_manager) == (False, "tlsf")
    u20 = config.load(config.board_spec(REPO, "qemu-u20", "recipes/pbx.yml")).board.kamailio
    assert (u20.rebuilt, u20.memory_align, u20.memory_manager) == (True, 8, "qm")
    extra = write(tmp_path / "extra.yml", "board:\n  kamailio:\n    memory_align: 4\n")
    with pytest.raises(ConfigError, match=r"extra\.yml: board\.kamailio\.memory_align must be 0 .*, 8 or 16, got 4"):
        config.load(f"{BOARD}:{REPO}/recipes/pbx.yml:{extra}")
    extra = write(tmp_path / "extra.yml", "board:\n  kamailio:\n    memory_manager: sys\n")
    with pytest.raises(ConfigError, match=r"extra\.yml: board\.kamailio\.memory_manager: must be one of tlsf, qm, fm"):
        config.load(f"{BOARD}:{REPO}/recipes/pbx.yml:{extra}")
