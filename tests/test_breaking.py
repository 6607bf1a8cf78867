"""`make breaking` compares the protos with the committed API baseline, with no git
history: a breaking change fails however many commits follow it."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what the check reads, outside any git repository."""
    for name in ("protos", "third_party", "api", "scripts"):
        shutil.copytree(ROOT / name, tmp_path / name)
    for name in ("buf.yaml", "pyproject.toml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def run(checkout: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", f"scripts/{script}"],
        cwd=checkout,
        env={"VENV": str(VENV), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_current_protos_match_the_baseline(checkout: Path) -> None:
    result = run(checkout, "breaking.sh")
    assert result.returncode == 0, result.stderr
    assert "0.1.0" in result.stdout


def test_a_removed_field_fails_without_any_history(checkout: Path) -> None:
    proto = checkout / "protos/aitrading/hub/v1/types.proto"
    text = proto.read_text()
    changed = text.replace("  double latency_ms = 4;\n", "", 1)
    assert changed != text
    proto.write_text(changed)
    result = run(checkout, "breaking.sh")
    assert result.returncode != 0
    assert "latency_ms" in result.stdout + result.stderr


def test_a_missing_baseline_fails(checkout: Path) -> None:
    (checkout / "api/baseline.binpb").unlink()
    result = run(checkout, "breaking.sh")
    assert result.returncode != 0
    assert "missing" in result.stderr


def test_moving_the_baseline_needs_a_version_bump_and_a_changelog_entry(
    checkout: Path,
) -> None:
    before = (checkout / "api/baseline.binpb").read_bytes()
    refused = run(checkout, "release-baseline.sh")
    assert refused.returncode == 2
    assert "bump the version" in refused.stderr

    pyproject = checkout / "pyproject.toml"
    version = (checkout / "api/baseline.version").read_text().strip()
    pyproject.write_text(
        pyproject.read_text().replace(f'version = "{version}"', 'version = "9.0.0"', 1)
    )
    refused = run(checkout, "release-baseline.sh")
    assert refused.returncode == 2
    assert "CHANGELOG.md" in refused.stderr
    assert (checkout / "api/baseline.binpb").read_bytes() == before

    changelog = checkout / "CHANGELOG.md"
    changelog.write_text(changelog.read_text() + "\n## 9.0.0\n\n- A breaking change.\n")
    moved = run(checkout, "release-baseline.sh")
    assert moved.returncode == 0, moved.stderr
    assert (checkout / "api/baseline.version").read_text().strip() == "9.0.0"
