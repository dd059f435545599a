"""What holds up Blender's UI, in the real applications: the longest gap of a 0.05 s timer while
Blender idles, while a thread does an import's kinds of numpy work, while one part of the
window is redrawn twice a second, and after a new object (drawn once per anti-aliasing sample);
then what one draw of the viewport costs with an import's result in the scene, part by part.

    .venv/bin/python benchmarks/bench_ui_gaps.py

Runs every real Blender that tests/test_real_blender.py finds (../shared/notes/real-blender.md)
under Xvfb, with the extension installed from its zip, the driver
tests/app_drivers/ui_gaps.py, and a 32-view 504x378 prediction file (the import benchmark's
size) for the thread that loads it. Printed per phase: the longest gap, the gaps over 0.1 s
and the ticks. It separates what an import's threads cost the UI from what redrawing costs
where OpenGL is software (Xvfb's llvmpipe), which no add-on controls.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import blender_app as ba  # noqa: E402
from synthetic_scenes import make_prediction  # noqa: E402

from engine.core.prediction import save_prediction  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    apps, why_none = ba.find_apps()
    if not apps:
        sys.exit(f"no real Blender: {why_none}")
    root = Path(tempfile.mkdtemp(prefix="da3-bench-ui-"))
    try:
        pred, _ = make_prediction(n_views=32, width=504, height=378, focal=400.0, depth_scale=0.6,
                                  video=True)
        npz = save_prediction(pred, root / "walk32.npz")
        for app in apps:
            home = root / app.id / "home"
            zip_path = ba.build_zip(app, root / app.id / "dist", ba.base_env(root / app.id / "build"))
            ba.install_extension(app, zip_path, home)
            data, output = ba.run_driver(app, "ui_gaps.py", home, home / "result.json", str(npz))
            if not data.get("ok"):
                sys.exit(data.get("driver_error") or output[-3000:])
            print(f"\nBlender {app.label} (Xvfb {ba.SCREEN}), longest gap of a 0.05 s timer:")
            for phase, figures in data.items():
                if isinstance(figures, dict) and "longest_ms" in figures:
                    print(f"  {phase:<22} {figures['longest_ms']:5d} ms   {figures['over_0_1']:3d} of "
                          f"{figures['ticks']:3d} gaps over 0.1 s, {figures['viewport_draws']:3d} "
                          "viewport draws")
            print(f"One draw of the 3D viewport with {npz.name}'s import (default options) in the scene:")
            for what, seconds in data["draw_s"].items():
                print(f"  {what:<22} {seconds:6.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # extension installs and a 32-view file

if __name__ == "__main__":
    main()
