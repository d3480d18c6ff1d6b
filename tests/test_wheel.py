"""The installed package stands alone: built as a wheel and installed into a fresh venv, with no checkout and no
../shared beside it, `monitor bench classify` and `monitor weights verify` run on the footage it ships."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding the wheel built from the tracked files; the dependencies come from the
    test venv's site-packages as a plain path (its .pth files, the editable install's among them, are not run)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("monitor-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    shutil.rmtree(source)
    return python


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(python), "-m", "monitor", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=280)


def test_the_wheel_is_what_runs(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(installed), "-c", "import monitor; print(monitor.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    where = Path(done.stdout.strip())
    assert installed.parent.parent in where.parents, where
    assert not (tmp_path.parent / "shared").exists() and not (tmp_path / "shared").exists()


def test_weights_verify_from_the_wheel(installed: Path, tmp_path: Path, demo_weights: Path) -> None:
    for suffix in (".pt", ".ov"):
        shutil.copy2(demo_weights.with_suffix(suffix), tmp_path / f"w{suffix}")
    done = _run(installed, tmp_path, "weights", "verify", str(tmp_path / "w.pt"), "--frames", "16", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    agreement = summary["agreement"]
    assert agreement["frames"] == 16 and agreement["sources"][0].endswith("sample-cars.mp4"), agreement


def test_bench_classify_from_the_wheel(installed: Path, tmp_path: Path, demo_weights: Path) -> None:
    for suffix in (".pt", ".ov"):
        shutil.copy2(demo_weights.with_suffix(suffix), tmp_path / f"w{suffix}")
    done = _run(installed, tmp_path, "bench", "classify", "--frames", "8", "--no-start", "--json",
                "--weights", str(tmp_path / "w.pt"))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report, report
