"""The package installs, and a script outside the repository imports it (README Quick start)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

from tests.conftest import REPO


def _packages_found() -> set[str]:
    return {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "hessian_lens").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_every_package_folder_is_installed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["packages"]) == _packages_found()


def test_the_quick_start_installs_the_package():
    """The README's commands install hessian_lens itself, not only its requirements."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Quick start")
    commands = re.findall(r"```bash\n(.*?)```", text[start : text.index("\n## ", start + 5)], re.S)
    dashboard, tests = commands[0], commands[1]
    for line in (dashboard, tests):
        assert re.search(r"pip install [^&]*-e \.", line), line
    assert "streamlit run app.py" in dashboard and "python -m pytest" in tests


def test_a_script_outside_the_repository_imports_the_installed_package(tmp_path):
    """Built and installed from a copy (no build/ left in the repository), then imported by
    a script in another folder: every subpackage, the CLI entry point, the lazy API."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "hessian_lens", source / "hessian_lens", ignore=shutil.ignore_patterns("__pycache__")
    )
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    subprocess.run([*pip, "--no-build-isolation", "--target", str(site), str(source)], check=True)
    script = tmp_path / "elsewhere" / "use.py"
    script.parent.mkdir()
    script.write_text(
        "import hessian_lens as hl, hessian_lens.ui.common, hessian_lens.integrations.loggers\n"
        "from hessian_lens.cli import main\n"
        "print(hl.__file__, callable(hl.load_run), callable(hl.pseudo_hessian))\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, str(script)], cwd=script.parent, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(site / "hessian_lens" / "__init__.py"), "True", "True"]
