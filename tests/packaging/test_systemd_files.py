"""The shipped systemd files: both units pass `systemd-analyze verify`, the
sysusers.d and tmpfiles.d files do what they say in a scratch root, and the
units' credentials are the secrets carrierd reads."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "systemd"
UNITS = ("carrierd.service", "carrierd@.service")
# Secrets carrierd takes from the environment; their credentials carry the
# same names in lower case (config.py reads $CREDENTIALS_DIRECTORY/<name>).
SECRET_VARIABLES = (
    "CARRIERD_DSN",
    "CARRIERD_RCS_TOKEN",
    "CARRIERD_RCS_CLIENT_SECRET",
    "CARRIERD_RCS_WEBHOOK_SECRET",
    "CARRIERD_REASSIGN_TOKEN",
)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install systemd)")
    return path


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / name)
    return parser


def values(name: str, section: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps the last)."""
    text = (SYSTEMD / name).read_text(encoding="utf-8")
    body = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    return re.findall(rf"^{re.escape(key)}=(.*)$", body, flags=re.MULTILINE)


def scratch_root(tmp_path: Path) -> Path:
    """A file system root holding the system's own units, the executables
    our units name, and our units."""
    root = tmp_path / "root"
    system_units = next(
        p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()
    )
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    for executable in ("/opt/carrierd/venv/bin/carrierd", "/bin/kill"):
        target = root / executable.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("true") or "/bin/true", target)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD / name, root / "etc/systemd/system" / name)
    return root


def verify(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )


@pytest.mark.parametrize("name", ["carrierd.service", "carrierd@8081.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    result = verify(scratch_root(tmp_path), name)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    with (root / "etc/systemd/system/carrierd@.service").open("a") as unit_file:
        unit_file.write("[Service]\nRestart=sometimes\n")
    result = verify(root, "carrierd@8081.service")
    assert "restart specifier" in result.stdout + result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_restarts_never_give_up(name: str) -> None:
    parsed = unit(name)
    assert parsed["Unit"]["StartLimitIntervalSec"] == "0"
    assert "StartLimitBurst" not in parsed["Unit"]
    assert parsed["Service"]["Restart"] == "always"
    assert float(parsed["Service"]["RestartSec"]) > 0


@pytest.mark.parametrize("name", UNITS)
def test_credentials_are_the_secret_variables_in_lower_case(name: str) -> None:
    assert values(name, "Service", "LoadCredential") == [v.lower() for v in SECRET_VARIABLES]
    config_source = (ROOT / "src/carrierd/config.py").read_text(encoding="utf-8")
    for variable in SECRET_VARIABLES:
        assert variable in config_source


@pytest.mark.parametrize("name", UNITS)
def test_documentation_is_the_installed_readme(name: str) -> None:
    # pyproject.toml's data-files put README.md there in the venv.
    assert unit(name)["Unit"]["Documentation"] == (
        "file:///opt/carrierd/venv/share/doc/carrierd/README.md"
    )


def test_the_template_instance_is_the_port_and_names_the_daemon() -> None:
    environment = values("carrierd@.service", "Service", "Environment")
    assert "CARRIERD_HTTP_PORT=%i" in environment
    assert "CARRIERD_DAEMON_ID=%H-%i" in environment
    # Everything but what makes an instance is the single unit's.
    single, template = unit("carrierd.service"), unit("carrierd@.service")
    instance_keys = {"Description", "EnvironmentFile", "Environment", "SyslogIdentifier"}
    for section in ("Unit", "Service"):
        for key, value in single[section].items():
            if key not in instance_keys:
                assert template[section][key] == value, (section, key)


def test_sysusers_creates_a_system_user_without_login(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    conf = root / "usr/lib/sysusers.d/carrierd.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy(SYSTEMD / "carrierd.sysusers", conf)
    subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(conf)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (entry,) = [
        line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
        if line.startswith("carrierd:")
    ]
    assert int(entry[2]) < 1000  # a system user
    assert entry[6] == "/usr/sbin/nologin"
    assert any(
        line.startswith("carrierd:") for line in (root / "etc/group").read_text().splitlines()
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="creating files owned by carrierd needs root")
def test_tmpfiles_create_the_configuration_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = root / "usr/lib/sysusers.d/carrierd.conf"
    sysusers.parent.mkdir(parents=True)
    shutil.copy(SYSTEMD / "carrierd.sysusers", sysusers)
    subprocess.run(
        [tool("systemd-sysusers"), f"--root={root}", str(sysusers)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tmpfiles = root / "usr/lib/tmpfiles.d/carrierd.conf"
    tmpfiles.parent.mkdir(parents=True)
    shutil.copy(SYSTEMD / "carrierd.tmpfiles", tmpfiles)
    result = subprocess.run(
        [tool("systemd-tmpfiles"), f"--root={root}", "--create", str(tmpfiles)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    gid = next(
        int(line.split(":")[2])
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("carrierd:")
    )
    config_dir = (root / "etc/carrierd").stat()
    assert (config_dir.st_mode & 0o7777, config_dir.st_uid, config_dir.st_gid) == (0o750, 0, gid)
    credstore = (root / "etc/credstore").stat()
    assert (credstore.st_mode & 0o7777, credstore.st_uid) == (0o700, 0)
