"""`PackageInstaller`: `pip_install` served on the host. Wheels are downloaded here (the sandbox
has no network), cached in a wheelhouse, and delivered read-only into the sandbox, once each."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from sandbox import Delivery, Reply

#: A requirement as pip_install accepts it: a name, extras, version clauses; never an option.
_REQUIREMENT = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._-]+\])?([<>=!~]=?[A-Za-z0-9.*+!_-]+(,[<>=!~]=?[A-Za-z0-9.*+!_-]+)*)?$"
)


class PackageInstaller:
    """Installs packages for one sandbox under one policy: all (`True`), none, or named ones."""

    def __init__(self, policy: bool | list[str], wheelhouse: Path, timeout: float) -> None:
        self.policy = policy
        self.wheelhouse = wheelhouse
        self.timeout = timeout
        self._delivered: dict[str, str] = {}  # wheel file name -> where the sandbox has it

    async def install(self, packages: object, delivery: Callable[[], Delivery]) -> Reply:
        """Download the wheels of `packages` and deliver the new ones; the reply lists every
        wheel's path inside the sandbox, or says why nothing was installed."""
        if not self.policy:
            return Reply.failed("package installs are disabled in this run (allow_pip=False)")
        if not isinstance(packages, list) or not packages or not all(isinstance(p, str) for p in packages):
            return Reply.failed("pip_install needs a list of requirement strings, e.g. ['six==1.16.0']")
        names = []
        for requirement in packages:
            match = _REQUIREMENT.match(requirement.strip())
            if match is None:
                return Reply.failed(f"not a plain requirement: {requirement!r}")
            names.append(package_name(match.group(1)))
        if isinstance(self.policy, list):
            permitted = {package_name(name) for name in self.policy}
            refused = [n for n in names if n not in permitted]
            if refused:
                return Reply.failed(f"not allowed in this run: {', '.join(refused)} "
                                    f"(allowed: {', '.join(sorted(permitted))})")
        wheels = await self._download([p.strip() for p in packages])
        if isinstance(wheels, Reply):
            return wheels
        new = [wheel for wheel in wheels if wheel.name not in self._delivered]
        if new:  # each wheel reaches a sandbox once: asking again costs no host disk
            target = delivery()
            self._delivered.update({wheel.name: target.write(wheel.name, _chunks(wheel)) for wheel in new})
        return Reply(result=[self._delivered[wheel.name] for wheel in wheels])

    async def _download(self, requirements: list[str]) -> list[Path] | Reply:
        self.wheelhouse.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
            "--dest", str(self.wheelhouse), *requirements,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout=self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            return Reply.failed("pip download timed out")
        text = output.decode(errors="replace")
        if process.returncode != 0:
            last = text.strip().splitlines()[-1] if text.strip() else process.returncode
            return Reply.failed(f"pip download failed: {last}")
        return [Path(m) for m in re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", text)]


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def package_name(name: str) -> str:
    """The form a requirement's name and the allow list are compared in."""
    return name.lower().replace("_", "-")
