"""The image's bill of materials (CycloneDX 1.5 JSON), read from what the root file
system really holds: dpkg's status database, each package's machine-readable copyright
file, and the agent with the wheel it ships.

Debian's licence short names (`GPL-2+`, `Expat`) are not all SPDX identifiers, so they
are given as licence names, as written; a package whose copyright file is not in the
machine-readable format gets no licence claim and a property that says so.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from debian import copyright as debian_copyright
from debian import deb822

SPEC = "1.5"


def package_licences(copyright_text: str) -> list[str]:
    """The licences of the `Files: *` paragraph of a DEP-5 copyright file ([] if none)."""
    try:
        parsed = debian_copyright.Copyright(copyright_text.splitlines(keepends=True), strict=False)
    except (debian_copyright.Error, ValueError):
        return []
    for paragraph in parsed.all_files_paragraphs():
        licence = paragraph.license
        if "*" in paragraph.files and isinstance(licence, debian_copyright.License):
            return [licence.synopsis]
    return []


def _deb_purl(name: str, version: str, arch: str, distro: str) -> str:
    return f"pkg:deb/debian/{name}@{version}?arch={arch}&distro={distro}"


def debian_components(root: Path, distro: str) -> list[dict[str, Any]]:
    status = (root / "var" / "lib" / "dpkg" / "status").read_text(encoding="utf-8")
    components = []
    for para in deb822.Packages.iter_paragraphs(status.splitlines(keepends=True), use_apt_pkg=False):
        if not para.get("Status", "").endswith(" installed"):
            continue
        name, version, arch = para["Package"], para["Version"], para["Architecture"]
        source = para.get("Source", name).split(" ")[0]
        copyright_file = root / "usr" / "share" / "doc" / name / "copyright"
        text = copyright_file.read_text(encoding="utf-8", errors="replace") if copyright_file.is_file() else ""
        licences = package_licences(text)
        component: dict[str, Any] = {
            "type": "library" if name.startswith("lib") else "application",
            "bom-ref": f"deb:{name}",
            "name": name,
            "version": version,
            "purl": _deb_purl(name, version, arch, distro),
            "properties": [{"name": "debian:source", "value": source}],
        }
        if licences:
            component["licenses"] = [{"license": {"name": licence}} for licence in licences]
        else:
            component["properties"].append({"name": "debian:copyright", "value": "not machine-readable"})
        components.append(component)
    return sorted(components, key=lambda c: str(c["name"]))


def python_components(site: Path) -> list[dict[str, Any]]:
    """Wheels pip installed next to the agent; Debian's own python3-* packages (their
    INSTALLER says `debian`) are already listed as packages."""
    components = []
    for info in sorted(site.glob("*.dist-info")):
        installer = info / "INSTALLER"
        if not installer.is_file() or installer.read_text().strip() != "pip":
            continue
        meta = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
        fields = dict(line.split(": ", 1) for line in meta.splitlines() if ": " in line and not line.startswith(" "))
        name, version = fields.get("Name", info.name), fields.get("Version", "")
        component: dict[str, Any] = {"type": "library", "bom-ref": f"pypi:{name}", "name": name,
                                     "version": version, "purl": f"pkg:pypi/{name.lower()}@{version}"}
        if fields.get("License"):
            component["licenses"] = [{"license": {"name": fields["License"]}}]
        components.append(component)
    return components


def document(board: str, version: str, epoch: int, components: list[dict[str, Any]],
             extra_properties: dict[str, str]) -> dict[str, Any]:
    """The BOM; its serial number is derived from the contents, so a rebuild matches."""
    body = json.dumps(components, sort_keys=True)
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"pbxfw:{board}:{version}:{body}")
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC,
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "component": {"type": "firmware", "bom-ref": "pbxfw", "name": f"pbxfw-{board}", "version": version},
            "properties": [{"name": k, "value": v} for k, v in sorted(extra_properties.items())],
        },
        "components": components,
    }


def kernel_component(name: str, version: str, arch: str, distro: str) -> dict[str, Any]:
    """The kernel is unpacked on the host into the slot's FIT, so dpkg never saw it."""
    return {"type": "operating-system", "bom-ref": f"deb:{name}", "name": name, "version": version,
            "purl": _deb_purl(name, version, arch, distro),
            "licenses": [{"license": {"name": "GPL-2"}}],
            "properties": [{"name": "debian:source", "value": "linux"}]}


def rebuilt_component(source: str, version: str, distro: str, note: str) -> dict[str, Any]:
    """A part of a Debian package that the build recompiled from its source (pbxfw.image.kamailio)."""
    return {"type": "application", "bom-ref": f"pbxfw:rebuilt:{source}", "name": f"{source} (rebuilt)",
            "version": version,
            "pedigree": {"ancestors": [{"type": "application", "name": source, "version": version,
                                        "purl": _deb_purl(source, version, "source", distro)}],
                         "notes": note},
            "properties": [{"name": "debian:source", "value": source}]}


def agent_component(version: str) -> dict[str, Any]:
    return {"type": "application", "bom-ref": "pbxagent", "name": "pbxagent", "version": version,
            "licenses": [{"license": {"name": "proprietary (pbxfw)"}}]}
