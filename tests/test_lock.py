"""requirements/lock.txt agrees with pyproject.toml: every dependency that pyproject declares (the
project's own and its dev, cluster and export extras, the ones CI installs) is pinned in the lock
at a version its specifier allows. A dependency added or raised in pyproject.toml without
`bash requirements/lock.sh` fails here, naming it."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
EXTRAS = ("dev", "cluster", "export")


def _locked() -> dict[str, str]:
    """Return {canonical name: pinned version} of the lock's `name==version` lines."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$", LOCK.read_text(), re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


def _declared() -> list[Requirement]:
    """Return the requirements of the project and its EXTRAS, the project's own extras expanded, for the
    lock's platform (Python of its header line, linux x86_64)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    python = re.search(r"^#.*\bpython (\d+\.\d+)\b", LOCK.read_text(), re.MULTILINE).group(1)
    environment = {"python_version": python, "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "os_name": "posix"}
    pending = [Requirement(text) for text in project["dependencies"]]
    pending += [Requirement(text) for extra in EXTRAS for text in project["optional-dependencies"][extra]]
    found = []
    while pending:
        requirement = pending.pop()
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
            pending += [Requirement(text) for extra in requirement.extras
                        for text in project["optional-dependencies"][extra]]
            continue
        found.append(requirement)
    return found


def test_the_lock_pins_every_declared_dependency_within_its_specifier():
    locked = _locked()
    disagreements = []
    for requirement in _declared():
        pinned = locked.get(canonicalize_name(requirement.name))
        if pinned is None:
            disagreements.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            disagreements.append(f"{requirement}: the lock pins {pinned}")
    assert disagreements == [], "run: bash requirements/lock.sh  # " + "; ".join(disagreements)
