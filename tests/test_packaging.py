"""The package works installed from a wheel, not only from this checkout (editable install)."""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding yoco from a wheel built off a copy of the sources. Its dependencies
    are this venv's site-packages, added as a plain path: .pth files there (among them the
    editable install's finder) are not processed, so only the wheel's yoco can be imported."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "yoco", source / "yoco", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    run(*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source)
    (wheel,) = (tmp / "dist").glob("yoco_lm-*.whl")
    env_dir = tmp / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    ours = run(
        sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(ours + "\n")
    run(*pip, "--python", python, "install", "--quiet", "--no-deps", wheel)
    return env_dir


def test_the_wheel_ships_its_recipes_and_runs_the_quickstart_from_elsewhere(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = run(
        installed / "bin" / "python", "-c", "import yoco; print(yoco.__file__)", cwd=tmp_path, env=env
    )
    assert where.stdout.startswith(str(installed)), where.stdout
    done = run(
        installed / "bin" / "yoco",
        "quickstart",
        "--max-steps",
        "3",
        "--no-bench",
        "--out",
        "qs",
        cwd=tmp_path,
        env=env,
    )
    assert "trained 3 steps" in done.stdout
    assert (tmp_path / "qs" / "checkpoints" / "step-0000003" / "model.safetensors").is_file()
