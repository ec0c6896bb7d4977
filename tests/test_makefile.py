"""`make clean` removes what its help line says (the results store, the data and fixture caches,
Python's caches) and keeps .venv and the reports."""

import shutil
import subprocess

import pytest

from runner import ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_clean_removes_the_store_and_the_caches_and_keeps_venv(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    made = ["runs/uuid_mini/0123/metrics.json", ".cache/mora/fixtures/.written", ".cache/mora/uuid-1/meta.json",
            ".pytest_cache/v/cache/nodeids", "mora/__pycache__/train.cpython-311.pyc",
            "tests/__pycache__/runner.cpython-311.pyc", ".venv/lib/x/__pycache__/y.pyc", "reports/table2_mini.md"]
    for name in made:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    done = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".venv/lib/x/__pycache__/y.pyc", "Makefile", "reports/table2_mini.md"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / ".cache" / "mora").exists()
