"""The host↔device contracts defined once on the device side and imported by the host:
board info and boot state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pbxagent.board import BoardInfo
from pbxagent.errors import ContentError
from pbxagent.update import bootstate, state
from pbxfw import config
from pbxfw.image import bootscript, layout

from tests.unit.test_config import REPO

INFO = BoardInfo("qemu-u50", "pbxfw,qemu-u50", "arm64", "1.2.0", 4, 3, {"A": "/dev/vda3", "B": "/dev/vda4"},
                 1_793_491_200)


def test_board_info_round_trips_and_names_what_is_wrong(tmp_path: Path) -> None:
    source = tmp_path / "board.json"
    assert BoardInfo.from_json(INFO.to_json(), source) == INFO
    broken = json.loads(INFO.to_json())
    broken["boot_attempts"] = "3"
    with pytest.raises(ContentError, match=r"board\.json: boot_attempts must be a int, got '3'"):
        BoardInfo.from_json(json.dumps(broken), source)
    with pytest.raises(ContentError, match=r"board\.json: not JSON"):
        BoardInfo.from_json("{", source)


def test_the_boot_script_reads_and_writes_exactly_the_agents_state_variables() -> None:
    cfg = config.load(f"{REPO}/board/qemu-u50/board.yaml:{REPO}/recipes/pbx.yml")
    script = bootscript.script(cfg.board, layout.for_board(cfg.board))
    exported = next(line for line in script.splitlines() if line.startswith("env export"))
    assert exported.split()[6:] == list(bootstate.STATE_VARS)
    initial = bootstate.initial(cfg.board.uboot.boot_attempts)
    assert bootstate.BootState.from_env(initial.to_env()) == initial
    for var, value in initial.to_env().items():
        assert f'if test -z "${var}"; then setenv {var} "{value}"; fi' in script



def test_update_state_reads_what_boxes_have_and_names_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert state.load(path) == state.UpdateState()  # a box that never updated
    on_a_box = {"floor": 3, "slots": {"B": {"version": "2.0.0", "security_version": 3, "build_id": "abc"}},
                "pending": {"slot": "B", "from_slot": "A", "manifest_sha256": "00" * 32, "version": "2.0.0",
                            "security_version": 3, "build_id": "abc"},
                "last_result": None}
    path.write_text(json.dumps(on_a_box))
    loaded = state.load(path)
    assert loaded.pending is not None and loaded.pending.release == loaded.slots["B"]
    assert json.loads(loaded.to_json()) == on_a_box
    assert loaded.with_floor(2).floor == 3 and loaded.with_floor(5).floor == 5  # never down
    path.write_text('{"floor": 1, "pending": {"slot": "B"}}')
    with pytest.raises(ContentError, match=r"state\.json: not an update state \(KeyError"):
        state.load(path)
