# pbxfw entry points. `make image` and `make test` do all set-up on a fresh Debian 12.
SHELL := /bin/bash
BOARD ?= qemu-u50
RECIPE ?= recipes/pbx.yml
CONFIG := board/$(BOARD)/board.yaml:$(RECIPE)
OUT := out/$(BOARD)
# The exact .debs the image is built from, per board and recipe (committed; `make lock`).
LOCK := board/$(BOARD)/$(basename $(notdir $(RECIPE))).lock
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
# Update signing keys live outside the repository; `make image` makes a development
# pair on first use and the image trusts every *.pub in KEYS.
KEYS ?= $(HOME)/.config/pbxfw/keys
SIGNING_KEY ?= $(KEYS)/dev.key
# The release repository boxes poll (TUF): `make image` makes a development one, and its
# keys beside it, on first use; the image ships its root.json as the trust anchor.
RELEASES ?= $(HOME)/.config/pbxfw/releases
REPO_KEYS ?= $(HOME)/.config/pbxfw/repo-keys
TUF_ROOT := $(RELEASES)/metadata/root.json

# Host packages: image tools, QEMU and its firmware, and what the tests drive.
HOST_PACKAGES := mmdebstrap qemu-user-static binfmt-support arch-test eatmydata \
	qemu-system-arm qemu-utils ipxe-qemu u-boot-qemu u-boot-tools device-tree-compiler \
	squashfs-tools dosfstools mtools fdisk e2fsprogs libubootenv-tool kmod cpio \
	xz-utils zstd gpgv debian-archive-keyring python3-venv iproute2 nftables socat \
	dpkg-dev diffoscope-minimal nginx-light apache2-utils sip-tester openssl

.PHONY: all setup host-packages binfmt venv keys lock image repro sbom bundle qemu test test-all lint unit image-test \
	device-test device-test-all bench-boot bench-agent bench-memory bench-guard bench-update bench-build bench-flash bench-calls \
	bench-fleet clean

all: image

setup: host-packages binfmt venv

host-packages:
	@missing=""; for p in $(HOST_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "==> installing host packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "==> host packages: all installed"; fi

# qemu-user runs the target's maintainer scripts during the bootstrap.
binfmt:
	@mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@update-binfmts --enable qemu-aarch64 2>/dev/null || true
	@update-binfmts --enable qemu-arm 2>/dev/null || true
	@arch-test arm64 >/dev/null && arch-test armhf >/dev/null && echo "==> binfmt: arm64 and armhf run under qemu-user"

venv: $(VENV)/.ready
$(VENV)/.ready: scripts/pyproject.toml agent/pyproject.toml requirements-dev.txt
	@echo "==> Python venv in $(VENV)"
	/usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e scripts -e agent -r requirements-dev.txt
	touch $@

keys: venv
	@test -f $(SIGNING_KEY) || $(VENV)/bin/pbxfw keys generate $(KEYS) --name $(basename $(notdir $(SIGNING_KEY)))
	@test -f $(TUF_ROOT) || $(VENV)/bin/pbxfw repo init $(RELEASES) --keys $(REPO_KEYS)

image: setup keys
	$(VENV)/bin/pbxfw image $(CONFIG) --out $(OUT) --lock $(LOCK) --trusted-keys $(KEYS) --tuf-root $(TUF_ROOT)

lock: setup
	$(VENV)/bin/pbxfw lock $(CONFIG) --lock $(LOCK)

# Two clean builds (the second bootstraps anew with no network) must be identical.
REPRO := $(PY) -m pbxfw.image.repro $(CONFIG) --lock $(LOCK) --trusted-keys $(KEYS) --signing-key $(SIGNING_KEY) \
	--tuf-root $(TUF_ROOT) --out out/repro/$(BOARD)
repro: setup keys
	$(REPRO)

sbom: image
	$(VENV)/bin/pbxfw sbom $(OUT)/sbom.cdx.json

bundle: image
	$(VENV)/bin/pbxfw bundle create --out $(OUT) --key $(SIGNING_KEY)

# A twin to log in to: restored from the image's booted snapshot when the device tests
# left one (FRESH=1 boots for real); the root password is printed, or ROOT_PASSWORD=...
export ROOT_PASSWORD
qemu: setup
	@test -f $(OUT)/disk.img || $(MAKE) image BOARD=$(BOARD) RECIPE=$(RECIPE)
	$(VENV)/bin/pbxfw qemu $(CONFIG) --disk $(OUT)/disk.img $(if $(FRESH),--fresh)

lint: venv
	$(VENV)/bin/ruff check scripts agent tests overlay
	$(VENV)/bin/mypy

# The box runs Debian 13's python-tuf 5.1; the venv has 7.x for `pbxfw repo`. The box's
# client is unit-tested under both.
TUF51 := $(VENV)/tuf51
$(TUF51)/.ready: $(VENV)/.ready
	$(VENV)/bin/pip install -q --no-deps --target $(TUF51) tuf==5.1.0 securesystemslib==1.2.0 requests \
		charset-normalizer idna certifi
	touch $@

unit: venv $(TUF51)/.ready
	$(PYTEST) tests/unit
	@PYTHONPATH=$(TUF51) $(PY) -c "import tuf; assert tuf.__version__ == '5.1.0', tuf.__version__" && \
		echo "==> the box's fleet client again, under python-tuf 5.1 (Debian 13's)"
	PYTHONPATH=$(TUF51) $(PYTEST) -q -p no:cacheprovider tests/unit/test_fleet_client.py

image-test: image
	$(PYTEST) tests/image --board $(BOARD)

DEVICE_TEST := $(PYTEST) tests/device --board $(BOARD) --keys $(KEYS) --repo-keys $(REPO_KEYS) \
	--releases $(RELEASES) --durations=15
device-test: image
	$(DEVICE_TEST)

# `make test`: lint and unit tests while the default board's image builds beside them (each
# is mostly one process; ~50 s of the run), then its image tests, QEMU device tests and
# reproducibility (the image under test against a build bootstrapped anew with no network:
# ~12 min of qemu-user), and the second board's image with a first boot of it to a
# passing audit and a registering phone. The builds run beside the device tests at idle
# CPU and I/O priority (SCHED_IDLE, ionice idle), so they use only what the emulated
# boards leave unused and cannot slow them: the second board's image first, so its tests
# follow the first board's while the fresh bootstrap goes on beside them. Their logs are
# printed when each is waited for.
SECOND_BOARD := $(if $(filter qemu-u20,$(BOARD)),qemu-u50,qemu-u20)
SECOND_LOG := out/beside-$(SECOND_BOARD)-image.log
REPRO_LOG := out/beside-$(BOARD)-repro.log
IDLE := chrt --idle 0 ionice -c 3
IMAGE_LOG := out/beside-$(BOARD)-image.log
test: setup keys $(TUF51)/.ready
	@mkdir -p out; echo "==> the $(BOARD) image beside lint and unit tests ($(IMAGE_LOG))"; \
	$(MAKE) --no-print-directory image > $(IMAGE_LOG) 2>&1 & image=$$!; \
	trap 'kill $$image 2>/dev/null' INT TERM; \
	$(MAKE) --no-print-directory lint unit; checked=$$?; \
	wait $$image; built=$$?; cat $(IMAGE_LOG); echo "==> $(BOARD) image exit $$built"; \
	test $$checked -eq 0 -a $$built -eq 0
	$(PYTEST) tests/image --board $(BOARD)
	@echo "==> beside the device tests at idle priority: the $(SECOND_BOARD) image ($(SECOND_LOG)), then repro ($(REPRO_LOG))"; \
	$(IDLE) $(MAKE) --no-print-directory image BOARD=$(SECOND_BOARD) > $(SECOND_LOG) 2>&1 & image=$$!; \
	{ while kill -0 $$image 2>/dev/null; do sleep 5; done; $(IDLE) $(REPRO) --first-build $(OUT); } > $(REPRO_LOG) 2>&1 & repro=$$!; \
	trap 'kill $$image $$repro 2>/dev/null' INT TERM; \
	$(DEVICE_TEST); device=$$?; \
	echo "==> device tests exit $$device; waiting for the $(SECOND_BOARD) image"; wait $$image; built=$$?; \
	cat $(SECOND_LOG); echo "==> $(SECOND_BOARD) image exit $$built"; \
	if [ $$built -eq 0 ]; then $(PYTEST) tests/image --board $(SECOND_BOARD) && \
		$(PYTEST) tests/device --board $(SECOND_BOARD) --keys $(KEYS) -m service_check; second=$$?; else second=1; fi; \
	echo "==> waiting for repro"; wait $$repro; reproduced=$$?; \
	cat $(REPRO_LOG); echo "==> repro exit $$reproduced"; \
	test $$device -eq 0 -a $$second -eq 0 -a $$reproduced -eq 0

# The full device suite on the second board too (not in CI: 45 min more for the U20).
test-all: test
	$(MAKE) device-test BOARD=$(SECOND_BOARD)

bench-boot: image
	$(PY) -m tests.bench.boot --board $(BOARD)

bench-agent: image
	$(PY) -m tests.bench.agent --board $(BOARD)

bench-guard: image
	$(PY) -m tests.bench.guard --board $(BOARD)

bench-update: image
	$(PY) -m tests.bench.update --board $(BOARD) --keys $(KEYS)

# First boots of both boards' images with 256, 384 and 512 MiB of RAM.
bench-memory: setup keys
	$(MAKE) --no-print-directory image BOARD=qemu-u50
	$(MAKE) --no-print-directory image BOARD=qemu-u20
	$(PY) -m tests.bench.memory --boards qemu-u50 qemu-u20

# The release repository: metadata a box downloads per poll, with 10 / 100 / 1,000 releases.
bench-fleet: image
	$(PY) -m tests.bench.fleet
	$(PY) -m tests.bench.fleetbox --board $(BOARD) --keys $(KEYS) --releases $(RELEASES) --repo-keys $(REPO_KEYS)

# Call setups between extensions through the twin against sipp alone (test network).
# MEMORY=256: a twin with that much RAM (its booted snapshot is kept beside the default one).
bench-calls: image
	$(PY) -m tests.bench.calls --board $(BOARD) $(if $(MEMORY),--memory-mib $(MEMORY))

# Production line: blank twins flashed over their console, time per step.
bench-flash: image
	$(PY) -m tests.bench.flash --board $(BOARD)

# Cold, warm and incremental builds in a cache of their own, against plain mmdebstrap.
bench-build: setup keys
	$(PY) -m tests.bench.build --board $(BOARD) --recipe $(RECIPE) --keys $(KEYS) --signing-key $(SIGNING_KEY)

clean:
	rm -rf out
