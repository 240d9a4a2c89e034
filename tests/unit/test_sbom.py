"""The bill of materials from a root file system: dpkg status, DEP-5 licences, wheels."""

from __future__ import annotations

from pathlib import Path

from pbxfw.image import sbom

STATUS = """Package: libfoo1
Status: install ok installed
Architecture: arm64
Source: foo (1.2-1)
Version: 1.2-1+b1

Package: bar
Status: install ok installed
Architecture: all
Version: 3.0

Package: gone
Status: deinstall ok config-files
Architecture: arm64
Version: 0.1
"""

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: GPL-2+
 text

Files: debian/*
Copyright: 2021 Other
License: MIT
"""


def tree(root: Path) -> Path:
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(STATUS)
    for name, text in (("libfoo1", DEP5), ("bar", "This package was debianized by hand.\nGPL.\n")):
        (root / "usr/share/doc" / name).mkdir(parents=True)
        (root / "usr/share/doc" / name / "copyright").write_text(text)
    info = root / "site" / "zxcvbn-4.5.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zxcvbn\nVersion: 4.5.0\nLicense: MIT\n")
    (info / "INSTALLER").write_text("pip\n")
    debian = root / "site" / "psutil-7.0.0.dist-info"  # from python3-psutil: listed as a package
    debian.mkdir()
    (debian / "METADATA").write_text("Name: psutil\nVersion: 7.0.0\n")
    (debian / "INSTALLER").write_text("debian\n")
    return root


def test_packages_with_source_and_licence(tmp_path: Path) -> None:
    components = {c["name"]: c for c in sbom.debian_components(tree(tmp_path), "trixie")}
    assert set(components) == {"libfoo1", "bar"}  # a removed package is not in the image
    foo = components["libfoo1"]
    assert foo["purl"] == "pkg:deb/debian/libfoo1@1.2-1+b1?arch=arm64&distro=trixie"
    assert {"name": "debian:source", "value": "foo"} in foo["properties"]
    assert foo["licenses"] == [{"license": {"name": "GPL-2+"}}]
    assert "licenses" not in components["bar"]
    assert {"name": "debian:copyright", "value": "not machine-readable"} in components["bar"]["properties"]


def test_wheels_and_a_deterministic_document(tmp_path: Path) -> None:
    root = tree(tmp_path)
    wheels = sbom.python_components(root / "site")
    assert wheels == [{"type": "library", "bom-ref": "pypi:zxcvbn", "name": "zxcvbn", "version": "4.5.0",
                       "purl": "pkg:pypi/zxcvbn@4.5.0", "licenses": [{"license": {"name": "MIT"}}]}]
    parts = [*sbom.debian_components(root, "trixie"), *wheels]
    first = sbom.document("qemu-u50", "1.0", 1700000000, parts, {"k": "v"})
    assert first == sbom.document("qemu-u50", "1.0", 1700000000, parts, {"k": "v"})
    assert first["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    assert first["serialNumber"] != sbom.document("qemu-u50", "1.1", 1700000000, parts, {"k": "v"})["serialNumber"]


def test_a_rebuilt_part_names_its_debian_source_as_its_ancestor() -> None:
    component = sbom.rebuilt_component("kamailio", "6.0.1-1+deb13u2", "trixie", "core rebuilt with KSR_MEMORY_ALIGN=8")
    assert component["name"] == "kamailio (rebuilt)" and "purl" not in component  # not the Debian package itself
    (ancestor,) = component["pedigree"]["ancestors"]
    assert ancestor["purl"] == "pkg:deb/debian/kamailio@6.0.1-1+deb13u2?arch=source&distro=trixie"
    assert component["pedigree"]["notes"] == "core rebuilt with KSR_MEMORY_ALIGN=8"
