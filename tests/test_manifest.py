"""The Teams app package: contents, schema validity, icons and refusals.

The schema comes from the pinned npm package @microsoft/app-manifest (``npm ci`` at the
repo root installs it); it is read from node_modules and never fetched from the network.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT4

from dialogs.commands import KNOWN
from manifest import build, icons

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = REPO_ROOT / "node_modules" / "@microsoft" / "app-manifest" / "build" / "json-schemas" / "teams"
APP_ID = "0b3c5c4e-7f21-4a8e-9d2b-6c1f0e9a8b7d"
PUBLIC_URL = "https://bridge.example.com"
HOST = "bridge.example.com"

# The RSC permissions README.md documents, all of type Application.
DOCUMENTED_RSC = {
    "ChannelMessage.Read.Group",
    "Channel.Create.Group",
    "Channel.Delete.Group",
    "ChannelSettings.Read.Group",
    "TeamMember.Read.Group",
}


# --- helpers -------------------------------------------------------------------------------


def schema_dir() -> Path:
    if not SCHEMAS.is_dir():
        pytest.fail(
            f"{SCHEMAS.relative_to(REPO_ROOT)} is missing: run `npm ci` at the repo root "
            "to install @microsoft/app-manifest (the Teams manifest JSON schemas)",
            pytrace=False,
        )
    return SCHEMAS


def numbered_versions(folder: Path) -> list[tuple[int, ...]]:
    return sorted(
        tuple(int(part) for part in p.name[1:].split("."))
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith("v") and p.name[1:].replace(".", "").isdigit()
    )


def local_registry(folder: Path) -> Registry:
    """Every schema of the package under its developer.microsoft.com URL; anything else refused."""
    resources = []
    for path in folder.rglob("*.schema.json"):
        url = "https://developer.microsoft.com/json-schemas/teams/" + path.relative_to(folder).as_posix()
        contents = json.loads(path.read_text(encoding="utf-8-sig"))
        resources.append((url, Resource.from_contents(contents, default_specification=DRAFT4)))

    def refuse(uri: str):
        raise NoSuchResource(ref=uri)  # no network: an unknown $ref is an error, not a download

    return Registry(retrieve=refuse).with_resources(resources)


def png_info(data: bytes) -> tuple[int, int, int, int, list[list[tuple[int, ...]]]]:
    """(width, height, bit depth, colour type, rows of pixels) from a PNG's IHDR and IDAT."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None, "no IHDR"
    width, height, depth, color_type, _, _, interlace = header
    assert (depth, color_type, interlace) == (8, 6, 0), "expected 8-bit RGBA, non-interlaced"
    raw, stride, bpp = zlib.decompress(idat), width * 4, 4
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + predictor) & 0xFF
        rows.append([tuple(line[x : x + 4]) for x in range(0, stride, 4)])
        previous = line
    return width, height, depth, color_type, rows


@pytest.fixture
def package(tmp_path) -> zipfile.ZipFile:
    out = tmp_path / "pkg" / "appPackage.zip"
    assert build.main(["--out", str(out)], environ={"MicrosoftAppId": APP_ID, "PUBLIC_URL": PUBLIC_URL}) == 0
    with zipfile.ZipFile(out) as archive:
        yield archive


def manifest_of(package: zipfile.ZipFile) -> dict:
    return json.loads(package.read("manifest.json"))


# --- the package ---------------------------------------------------------------------------


def test_package_holds_exactly_three_files_at_root(package):
    assert sorted(package.namelist()) == ["color.png", "manifest.json", "outline.png"]
    assert package.testzip() is None


def test_manifest_validates_against_the_npm_packages_schema(package):
    manifest = manifest_of(package)
    folder = schema_dir()
    schema_path = folder / f"v{manifest['manifestVersion']}" / "MicrosoftTeams.schema.json"
    assert schema_path.is_file(), f"no schema for manifestVersion {manifest['manifestVersion']} in {folder}"
    schema = json.loads(schema_path.read_text(encoding="utf-8-sig"))

    validator_class = validator_for(schema, default=None)
    assert validator_class is not None, f"unknown $schema draft {schema.get('$schema')!r}"
    # The schema itself is well-formed for its draft. (Not check_schema(): that also checks
    # format "regex", and the schema uses ECMAScript \p{L} classes Python's re lacks.)
    validator_class(validator_class.META_SCHEMA).validate(schema)
    validator = validator_class(schema, registry=local_registry(folder), format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)

    # The schema is draft-04, which has no "const": check the version pin by hand.
    assert manifest["manifestVersion"] == schema["properties"]["manifestVersion"]["const"]
    assert manifest["$schema"] == build.SCHEMA_URL
    assert manifest["$schema"].endswith(f"/v{manifest['manifestVersion']}/MicrosoftTeams.schema.json")


def test_manifest_uses_the_newest_schema_the_npm_package_ships():
    newest = ".".join(str(n) for n in numbered_versions(schema_dir())[-1])
    assert newest == build.MANIFEST_VERSION, (
        f"@microsoft/app-manifest now ships v{newest}: move manifest/build.py MANIFEST_VERSION to it"
    )


def test_ids_domains_and_urls_come_from_the_environment(package):
    manifest = manifest_of(package)
    assert manifest["id"] == APP_ID
    assert [bot["botId"] for bot in manifest["bots"]] == [APP_ID]
    assert manifest["webApplicationInfo"] == {"id": APP_ID, "resource": f"api://{HOST}/{APP_ID}"}
    assert HOST in manifest["validDomains"]
    assert manifest["developer"]["privacyUrl"] == f"{PUBLIC_URL}/privacy"
    assert manifest["developer"]["termsOfUseUrl"] == f"{PUBLIC_URL}/terms"
    assert manifest["version"] == "1.0.0"
    assert manifest["permissions"] == ["identity", "messageTeamMembers"]


def test_rsc_permissions_are_exactly_the_documented_ones(package):
    rsc = manifest_of(package)["authorization"]["permissions"]["resourceSpecific"]
    assert {p["name"] for p in rsc} == DOCUMENTED_RSC
    assert len(rsc) == len(DOCUMENTED_RSC)
    assert {p["type"] for p in rsc} == {"Application"}
    readme = (REPO_ROOT / "manifest" / "README.md").read_text()
    for name in DOCUMENTED_RSC:
        assert f"`{name}`" in readme, f"{name} is not explained in manifest/README.md"


def test_bot_is_a_team_bot_with_the_commands_the_bot_parses(package):
    (bot,) = manifest_of(package)["bots"]
    assert bot["scopes"] == ["team"]
    assert bot["supportsFiles"] is False and bot["isNotificationOnly"] is False
    (command_list,) = bot["commandLists"]
    assert command_list["scopes"] == ["team"]
    assert command_list["commands"] == build.BOT_COMMANDS
    assert {"title": "/close", "description": "Close this conversation in neetoChat and delete its channel"} in (
        command_list["commands"]
    )
    # dialogs/commands.py is what actually parses commands: the two lists must not drift.
    assert {c["title"] for c in build.BOT_COMMANDS} == {f"/{name}" for name in KNOWN}


def test_descriptions_fit_teams_limits(package):
    description = manifest_of(package)["description"]
    assert 0 < len(description["short"]) <= 80
    assert 0 < len(description["full"]) <= 4000


def test_same_inputs_give_the_same_package(tmp_path):
    env = {"MicrosoftAppId": APP_ID, "PUBLIC_URL": PUBLIC_URL}
    for name in ("a.zip", "b.zip"):
        assert build.main(["--out", str(tmp_path / name)], environ=env) == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


# --- icons ---------------------------------------------------------------------------------


def test_color_icon_is_192_full_colour(package):
    width, height, _, _, rows = png_info(package.read("color.png"))
    assert (width, height) == (192, 192)
    assert all(pixel[3] == 255 for row in rows for pixel in row), "color icon must be opaque"
    assert len({pixel[:3] for row in rows for pixel in row}) > 2


def test_outline_icon_is_32_white_on_transparent(package):
    width, height, _, _, rows = png_info(package.read("outline.png"))
    assert (width, height) == (32, 32)
    pixels = [pixel for row in rows for pixel in row]
    assert all(p[:3] == (255, 255, 255) or p[3] == 0 for p in pixels), "outline icon must be white only"
    assert any(p[3] == 0 for p in pixels) and any(p[3] == 255 for p in pixels)


def test_committed_icons_match_the_generator():
    """manifest/*.png are exactly what manifest/icons.py draws (re-run it after a change)."""
    for name, draw in (("color.png", icons.color_pixels), ("outline.png", icons.outline_pixels)):
        _, _, _, _, rows = png_info((REPO_ROOT / "manifest" / name).read_bytes())
        assert rows == [[tuple(p) for p in row] for row in draw()], f"re-run `python -m manifest.icons` ({name})"


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MicrosoftAppId": "", "PUBLIC_URL": PUBLIC_URL}, "MicrosoftAppId is empty"),
        ({"PUBLIC_URL": PUBLIC_URL}, "MicrosoftAppId is empty"),
        ({"MicrosoftAppId": "my-bot", "PUBLIC_URL": PUBLIC_URL}, "is not a GUID"),
        ({"MicrosoftAppId": APP_ID + "0", "PUBLIC_URL": PUBLIC_URL}, "is not a GUID"),
        ({"MicrosoftAppId": APP_ID, "PUBLIC_URL": "http://bridge.example.com"}, "is not https"),
        ({"MicrosoftAppId": APP_ID, "PUBLIC_URL": ""}, "PUBLIC_URL is empty"),
        ({"MicrosoftAppId": APP_ID, "PUBLIC_URL": "https://"}, "plain https://host"),
    ],
)
def test_refuses_bad_settings(tmp_path, capsys, env, message):
    out = tmp_path / "app.zip"
    assert build.main(["--out", str(out)], environ=env) != 0
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("app_id", "public_url", "message"),
    [
        ("", PUBLIC_URL, "MicrosoftAppId is empty"),
        ("not-a-guid", PUBLIC_URL, "is not a GUID"),
        (APP_ID, "http://bridge.example.com", "is not https"),
    ],
)
def test_module_refuses_with_one_line_and_non_zero_exit(tmp_path, app_id, public_url, message):
    # cwd is tmp_path, so no .env of the developer's is read.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MicrosoftAppId": app_id, "PUBLIC_URL": public_url}
    result = subprocess.run(
        [sys.executable, "-m", "manifest.build", "--out", str(tmp_path / "app.zip")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "app.zip").exists()


def test_module_reads_dotenv_from_the_working_folder(tmp_path):
    (tmp_path / ".env").write_text(f"MicrosoftAppId={APP_ID}\nPUBLIC_URL={PUBLIC_URL}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MicrosoftAppId", "PUBLIC_URL")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "manifest.build", "--out", "out/app.zip"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "out" / "app.zip") as archive:
        assert json.loads(archive.read("manifest.json"))["id"] == APP_ID
