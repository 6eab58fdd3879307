"""`pip install` puts only the library into site-packages: no generic top-level names
(components, pipelines), which stay folders of the repository and of the image."""

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_rslad_tf_only(tmp_path):
    # Build from a copy of the sources, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes(open(os.path.join(ROOT, name), "rb").read())
    for folder in ("rslad_tf", "components", "pipelines"):
        subprocess.run(["cp", "-r", os.path.join(ROOT, folder), str(src / folder)], check=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--quiet", "-w", str(tmp_path / "dist"),
                           str(src)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("rslad_tf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"rslad_tf"}
    assert "rslad_tf/models/__init__.py" in archive.namelist()
    assert "rslad_tf/attacks/autoattack/__init__.py" in archive.namelist()

