"""The board's kernel, taken from Debian's package and unpacked on the host.

Installing linux-image inside the root file system would run mkinitramfs under
qemu-user (over 20 minutes here) and ship every module Debian builds. Instead the
package is unpacked natively, the kernel image and the module trees the board names
are copied into the slot, and depmod runs on the host against that tree.
"""

from __future__ import annotations

import lzma
import shutil
from dataclasses import dataclass
from pathlib import Path

from pbxfw.errors import StageError
from pbxfw.packages import archive
from pbxfw.stages import run


@dataclass(frozen=True)
class UnpackedKernel:
    version: str  # the kernel release, e.g. 6.12.117+deb13-arm64
    package: archive.Package
    root: Path  # the unpacked package

    @property
    def image(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules(self) -> Path:
        return self.root / "usr" / "lib" / "modules" / self.version


def unpack(package: archive.Package, cache: Path, dest: Path) -> UnpackedKernel:
    archive.unpack(package, cache, dest)
    versions = sorted(p.name for p in (dest / "usr" / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise StageError(f"{package.filename}: expected one module tree, found {versions}")
    kernel = UnpackedKernel(version=versions[0], package=package, root=dest)
    if not kernel.image.is_file():
        raise StageError(f"{package.filename}: no kernel image at boot/vmlinuz-{kernel.version}")
    # The host's depmod looks under lib/modules; the package ships usr/lib/modules.
    (dest / "lib").symlink_to("usr/lib")
    run(["depmod", "-b", dest, kernel.version])
    return kernel


def module_name(path: str) -> str:
    """`kernel/fs/ext4/ext4.ko.xz` -> `ext4` (module names treat '-' and '_' alike)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep as {module path: [dependency paths]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        module, _, rest = line.partition(":")
        deps[module.strip()] = rest.split()
    return deps


def load_order(wanted: list[str], deps: dict[str, list[str]], builtin: set[str]) -> list[str]:
    """Module paths to insmod, dependencies first, for the wanted module names.

    Built-in modules need no loading; an unknown name is an error rather than a
    silently unbootable initramfs.
    """
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []

    def visit(path: str, trail: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in trail:
            raise StageError(f"module dependency cycle: {' -> '.join((*trail, path))}")
        for dep in deps.get(path, []):
            visit(dep, (*trail, path))
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise StageError(f"board.kernel.initramfs_modules: module {name!r} is neither built in nor in modules.dep")
        visit(by_name[key], ())
    return order


def builtin_names(kernel: UnpackedKernel) -> set[str]:
    return {module_name(line) for line in (kernel.modules / "modules.builtin").read_text().split()}


def initramfs_modules(kernel: UnpackedKernel, wanted: list[str]) -> list[tuple[str, bytes]]:
    """(file name, uncompressed module) in load order, for the initramfs.

    Decompressed on the host so busybox's insmod needs no xz support.
    """
    deps = parse_modules_dep((kernel.modules / "modules.dep").read_text())
    result = []
    for path in load_order(wanted, deps, builtin_names(kernel)):
        data = (kernel.modules / path).read_bytes()
        if path.endswith(".xz"):
            data = lzma.decompress(data)
        result.append((f"{module_name(path)}.ko", data))
    return result


def install_modules(kernel: UnpackedKernel, rootfs: Path, module_trees: tuple[str, ...]) -> None:
    """Copy the board's module trees into the slot's root and index them."""
    target = rootfs / "usr" / "lib" / "modules" / kernel.version
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        shutil.copyfile(kernel.modules / name, target / name)
    for tree in module_trees:
        source = kernel.modules / "kernel" / tree
        matches = [source] if source.exists() else sorted(source.parent.glob(source.name + ".*"))
        if not matches:
            raise StageError(f"board.kernel.rootfs_modules: {tree} is not in {kernel.package.filename}")
        for match in matches:
            dest = target / match.relative_to(kernel.modules)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if match.is_dir():
                shutil.copytree(match, dest)
            else:
                shutil.copyfile(match, dest)
    run(["depmod", "-b", rootfs, kernel.version])
