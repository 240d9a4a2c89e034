"""The host↔device contracts defined once on the device side and imported by the host:
board info and boot state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pbxagent.board import BoardInfo, BoardInfoError
from pbxagent.update import bootstate
from pbxfw import config
from pbxfw.image import bootscript, layout

from tests.unit.test_config import REPO

INFO = BoardInfo("qemu-u50", "pbxfw,qemu-u50", "arm64", "1.2.0", 4, 3, {"A": "/dev/vda3", "B": "/dev/vda4"})


def test_board_info_round_trips_and_names_what_is_wrong(tmp_path: Path) -> None:
    source = tmp_path / "board.json"
    assert BoardInfo.from_json(INFO.to_json(), source) == INFO
    broken = json.loads(INFO.to_json())
    broken["boot_attempts"] = "3"
    with pytest.raises(BoardInfoError, match=r"board\.json: boot_attempts must be a int, got '3'"):
        BoardInfo.from_json(json.dumps(broken), source)
    with pytest.raises(BoardInfoError, match=r"board\.json: not JSON"):
        BoardInfo.from_json("{", source)


def test_the_boot_script_reads_and_writes_exactly_the_agents_state_variables() -> None:
    cfg = config.load(f"{REPO}/board/qemu-u50/board.yaml:{REPO}/recipes/pbx.yml")
    script = bootscript.render(cfg.board, layout.for_board(cfg.board))
    exported = next(line for line in script.splitlines() if line.startswith("env export"))
    assert exported.split()[6:] == list(bootstate.STATE_VARS)
    initial = bootstate.initial(cfg.board.uboot.boot_attempts)
    assert bootstate.BootState.from_env(initial.to_env()) == initial
    for var, value in initial.to_env().items():
        assert f'if test -z "${var}"; then setenv {var} "{value}"; fi' in script

