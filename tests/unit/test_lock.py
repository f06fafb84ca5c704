"""The hashed locks cover what pyproject.toml asks for (so a build from them is complete)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _pins(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    hashed: set[str] = set()
    current = None
    for line in (ROOT / name).read_text().splitlines():
        if match := _PIN.match(line):
            current = canonicalize_name(match.group(1))
            pins[current] = match.group(2)
        elif current and line.strip().startswith("--hash=sha256:"):
            hashed.add(current)
    assert set(pins) == hashed, f"{name}: pins without a hash: {sorted(set(pins) - hashed)}"
    return pins


def _project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _assert_covered(requirements: list[str], pins: dict[str, str], lock: str) -> None:
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lacks {req.name} (pyproject.toml asks for {text!r})"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {req.name}=={pins[name]}, outside {text!r}: run scripts/lock")


def test_runtime_lock_covers_the_dependencies() -> None:
    """requirements.lock pins every runtime dependency, with hashes, within its range."""
    project = _project()["project"]
    assert isinstance(project, dict)
    _assert_covered(project["dependencies"], _pins("requirements.lock"), "requirements.lock")


def test_dev_lock_covers_the_test_extra_with_the_runtime_pins() -> None:
    """requirements-dev.lock adds the [test] extra and pins the runtime packages identically."""
    project = _project()["project"]
    assert isinstance(project, dict)
    dev, runtime = _pins("requirements-dev.lock"), _pins("requirements.lock")
    _assert_covered(project["optional-dependencies"]["test"], dev, "requirements-dev.lock")
    changed = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not changed, f"requirements-dev.lock differs from requirements.lock: {changed}"


@pytest.mark.parametrize("lock", ["requirements-build.lock"])
def test_build_lock_pins_setuptools_within_the_build_system_range(lock: str) -> None:
    """The locked setuptools satisfies [build-system] requires (and so reads the SPDX license)."""
    build = _project()["build-system"]
    assert isinstance(build, dict)
    _assert_covered(build["requires"], _pins(lock), lock)
