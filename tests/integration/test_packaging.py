"""The installed distribution: which import names it claims and where it finds its migrations.

The wheel is built once per session (``pip wheel``, as the Dockerfile does) and installed without
dependencies into a fresh virtual environment. Tests that need to run mailtrap-sync from it give
that environment the development venv's third-party packages through a ``.pth`` line: the
``sync_service`` package itself always comes from the wheel (the development venv holds only an
editable finder, which a ``.pth``-added directory does not activate).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_service.state import StateStore

REPO = Path(__file__).resolve().parents[2]
CONFIG = '[state]\nurl = "{url}"\n'
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the working tree (no stale ``build/``)."""
    source = tmp_path_factory.mktemp("source") / "tree"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench", "*.db"))
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
          str(source)])
    (built,) = out.glob("mailtrap_sync-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a new venv holding only the wheel (no dependencies, no repository)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
          "--no-deps", "--no-index", str(wheel)])
    return python


@pytest.fixture(scope="module")
def runnable_python(fresh_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``fresh_python`` that can also import the third-party dependencies."""
    site = Path(_run([str(fresh_python), "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    deps = site / "zz_dev_dependencies.pth"
    deps.write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield fresh_python
    deps.unlink()


@pytest.fixture
def decoy_dir(tmp_path: Path) -> Path:
    """A working directory holding unrelated ``migrations`` and ``connectors`` packages."""
    marker = tmp_path / "decoy-ran"
    for name in ("migrations", "connectors"):
        package = tmp_path / name
        (package / "versions").mkdir(parents=True)
        body = f"open({str(marker)!r}, 'a').write({name!r})\nraise RuntimeError('decoy {name}')\n"
        (package / "__init__.py").write_text(body)
        (package / "env.py").write_text(body)
    return tmp_path


def test_the_wheel_claims_no_generic_top_level_import_name(wheel: Path) -> None:
    """Every module in the wheel lives under sync_service/ (plus its dist-info)."""
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert {t for t in tops if not t.endswith(".dist-info")} == {"sync_service"}
    for needed in ("sync_service/connectors/sql.py", "sync_service/migrations/env.py",
                   "sync_service/migrations/alembic.ini", "sync_service/migrations/script.py.mako",
                   "sync_service/migrations/versions/0001_initial.py",
                   "sync_service/testing/mailtrap/double.py"):
        assert needed in names


def test_connectors_and_migrations_are_not_importable_top_level(
        fresh_python: Path, tmp_path: Path) -> None:
    """With only the wheel installed, `import connectors` and `import migrations` fail."""
    for name in ("connectors", "migrations"):
        result = subprocess.run([str(fresh_python), "-c", f"import {name}"], cwd=tmp_path,
                                capture_output=True, text=True, check=False)
        assert result.returncode != 0
        assert f"No module named '{name}'" in result.stderr
    found = _run([str(fresh_python), "-c", textwrap.dedent("""\
        import importlib.util, importlib.resources
        spec = importlib.util.find_spec("sync_service.connectors")
        print(spec.origin)
        print(importlib.resources.files("sync_service.migrations") / "env.py")
    """)], cwd=tmp_path).split()
    site = str(fresh_python.parent.parent)
    assert all(path.startswith(site) for path in found), found


def test_the_sql_connector_entry_point_names_the_namespaced_module(fresh_python: Path) -> None:
    """The `sql` entry point of the installed wheel points into sync_service.connectors."""
    value = _run([str(fresh_python), "-c", textwrap.dedent("""\
        from importlib.metadata import entry_points
        (ep,) = entry_points(group="sync_service.connectors", name="sql")
        print(ep.value)
    """)])
    assert value.strip() == "sync_service.connectors.sql:SqlConnector"


@pytest.mark.parametrize("how", ["console_script", "python_m"])
def test_db_upgrade_from_the_wheel_ignores_a_migrations_folder_in_the_cwd(
        runnable_python: Path, decoy_dir: Path, how: str) -> None:
    """`db upgrade` from the wheel runs its own migrations, never the cwd's `migrations/`."""
    url = f"sqlite:///{decoy_dir}/state.db"
    (decoy_dir / "c.toml").write_text(CONFIG.format(url=url))
    command = ([str(runnable_python.parent / "mailtrap-sync")] if how == "console_script"
               else [str(runnable_python), "-m", "sync_service"])
    _run([*command, "--config", "c.toml", "db", "upgrade"], cwd=decoy_dir)
    _assert_at_head(url, decoy_dir)


def test_db_upgrade_in_development_ignores_a_migrations_folder_in_the_cwd(
        decoy_dir: Path) -> None:
    """The same with the editable install: `python -m sync_service db upgrade` from the decoy."""
    url = f"sqlite:///{decoy_dir}/state.db"
    (decoy_dir / "c.toml").write_text(CONFIG.format(url=url))
    _run([sys.executable, "-m", "sync_service", "--config", "c.toml", "db", "upgrade"],
         cwd=decoy_dir)
    _assert_at_head(url, decoy_dir)


def _assert_at_head(url: str, decoy_dir: Path) -> None:
    assert not (decoy_dir / "decoy-ran").exists()
    store = StateStore.from_url(url)
    try:
        assert store.schema_revision() == store.head_revision()
    finally:
        store.close()


def _run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout
