"""Install what this Python lacks from a folder of wheels into a target folder (offline).

    python scripts/install_bundle.py BUNDLE TARGET

Used by scripts/device_bench.sh on a machine with no network. A distribution of the bundle
is installed when this interpreter has no version of it, and always for keras and
rslad_tf (the bundle's versions are the ones the benchmark is written for); put TARGET
first on PYTHONPATH afterwards. With pip: ``pip install --no-index --find-links BUNDLE
--target TARGET --no-deps`` (pip picks the wheel of this platform). Without pip: the
matching wheels are unpacked (a wheel is a zip of its site-packages tree). Prints one line
per distribution installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import zipfile

ALWAYS = ("keras", "rslad-tf")


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def bundle_wheels(bundle: str) -> dict:
    """{normalised distribution name: [wheel file names]} of the wheels in ``bundle``."""
    found = {}
    for name in sorted(os.listdir(bundle)):
        if name.endswith(".whl"):
            found.setdefault(normalise(name.split("-")[0]), []).append(name)
    return found


def installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing(bundle: str) -> list:
    """The bundle's distributions to install here (see the module docstring)."""
    return [name for name in bundle_wheels(bundle) if name in ALWAYS or not installed(name)]


def _has_pip() -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "--version"],
                          capture_output=True).returncode == 0


def _compatible(wheel: str) -> bool:
    """Whether a wheel's tags fit this interpreter (the no-pip path's simple check)."""
    python, abi, plat = wheel[:-4].split("-")[-3:]
    if plat == "any":
        return True
    version = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return (version in python.split(".") and abi in (version, "abi3", "none")
            and plat.endswith(platform.machine()))


def install(bundle: str, target: str, names, *, use_pip=None) -> list:
    """Install ``names`` (distributions of the bundle) into ``target``; returns the
    wheel files or requirement names installed."""
    os.makedirs(target, exist_ok=True)
    if not names:
        return []
    if use_pip is None:
        use_pip = _has_pip()
    if use_pip:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                        "--find-links", bundle, "--target", target, "--no-deps", *names],
                       check=True)
        return list(names)
    wheels = bundle_wheels(bundle)
    done = []
    for name in names:
        fitting = [w for w in wheels[name] if _compatible(w)]
        if not fitting:
            raise SystemExit(f"error: no wheel of {name} in {bundle} fits this machine "
                             f"(Python {sys.version_info.major}.{sys.version_info.minor}, "
                             f"{platform.machine()}): rebuild the bundle for it")
        with zipfile.ZipFile(os.path.join(bundle, fitting[0])) as archive:
            archive.extractall(target)
        done.append(fitting[0])
    return done


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not os.path.isdir(args[0]):
        raise SystemExit("usage: python scripts/install_bundle.py BUNDLE_DIR TARGET_DIR")
    bundle, target = args
    for item in install(bundle, target, missing(bundle)):
        print(f"installed {item}")


if __name__ == "__main__":
    main()
