"""Versions of the installed packages, from their metadata: importing torch only to print its version would map
libtorch (~200 MB) into a daemon that runs the OpenVINO artifact."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from monitor import __version__


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """monitor, python and the runtimes' versions (a package that is absent is left out)."""
    import cv2     # the daemon has it loaded already; its own version names the bundled OpenCV, not the wheel's

    found = {"monitor": __version__, "python": platform.python_version()}
    for name in ("torch", "openvino", "av"):
        v = package_version(name)
        if v is not None:
            found[name] = v
    found["opencv"] = cv2.__version__
    return found
