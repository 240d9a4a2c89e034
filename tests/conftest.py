"""Options shared by the image and device suites."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbxfw import config
from pbxfw.config import BuildConfig

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--board", default="qemu-u50", help="board under board/ (default: qemu-u50)")
    parser.addoption("--recipe", default="recipes/pbx.yml", help="image recipe (default: recipes/pbx.yml)")
    parser.addoption("--out", default=None, help="the build to test (default: out/<board>)")
    parser.addoption("--keys", default=str(Path.home() / ".config" / "pbxfw" / "keys"),
                     help="update keys the image trusts; dev.key signs the test bundles")
    parser.addoption("--releases", default=str(Path.home() / ".config" / "pbxfw" / "releases"),
                     help="the release repository whose root.json the image trusts (the fleet tests copy it)")
    parser.addoption("--repo-keys", default=str(Path.home() / ".config" / "pbxfw" / "repo-keys"),
                     help="that repository's keys")
    parser.addoption(
        "--console",
        default=None,
        help="pyserial URL of a real board's console (e.g. /dev/ttyUSB0); "
        "the root password comes from PBXFW_ROOT_PASSWORD. Default: boot the QEMU twin.",
    )


@pytest.fixture(scope="session")
def build_config(request: pytest.FixtureRequest) -> BuildConfig:
    board = request.config.getoption("--board")
    recipe = request.config.getoption("--recipe")
    return config.load(config.board_spec(REPO, board, recipe))


@pytest.fixture(scope="session")
def out_dir(build_config: BuildConfig, request: pytest.FixtureRequest) -> Path:
    out = Path(request.config.getoption("--out") or REPO / "out" / build_config.board.name)
    if not (out / "disk.img").is_file():
        pytest.fail(f"{out}/disk.img is missing: run `make image BOARD={build_config.board.name}` first")
    return out


@pytest.fixture(scope="session")
def other_board(build_config: BuildConfig, request: pytest.FixtureRequest) -> BuildConfig:
    """Another board of the product line (the U20 for the U50 and the other way round):
    what each must refuse of the other's bundles and images."""
    others = sorted(path.parent.name for path in (REPO / "board").glob("*/board.yaml")
                    if path.parent.name != build_config.board.name)
    if not others:
        pytest.fail("board/ has no second board to refuse")
    return config.load(config.board_spec(REPO, others[0], request.config.getoption("--recipe")))
