"""The headless command line: ``blender -c da3_reconstruct INPUT -o OUT.blend [options]``.

Reconstructs INPUT (a folder of images, image files or a video) into a new, empty scene, saves
it as OUT.blend, then optionally renders a preview PNG with Cycles. Exit codes: 0 done, 1 failed
(one line on stderr saying why; when only the preview failed, the line says the .blend was saved),
2 bad arguments, 130 interrupted. A missing output (no surface survived fusion, say) is one
warning line on stderr; the run still succeeds. Blender as a Python module has
no ``blender`` executable: ``scripts/da3_cli.py`` runs the same function there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import bpy

from . import reconstruct
from .api import result_warning
from .builder.compat import cycles_can_denoise, node_tree_of
from .engine.core.options import DEVICES, FUSION_MODES, PROCESS_RES, BuildOptions, RunOptions
from .engine.core.presets import PRESETS

COMMAND = "da3_reconstruct"
_DEFAULTS = BuildOptions()
_RUN_DEFAULTS = RunOptions()
_handle = None


class UsageError(Exception):
    """Bad arguments: argparse's message, without its usage block and without exiting."""


class PreviewFailed(RuntimeError):
    """The .blend was saved; only the preview render failed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, not '{text}'")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"blender -c {COMMAND}",
                     description="Reconstruct a 3D scene from images or a video with Depth Anything 3.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="a folder of images, image files, or one video file")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.blend", help=".blend file to write")
    parser.add_argument("--model", default=_RUN_DEFAULTS.model, choices=list(PRESETS), metavar="MODEL",
                        help=f"model preset (default {_RUN_DEFAULTS.model}): {', '.join(PRESETS)}")
    parser.add_argument("--weights", default="", metavar="DIR",
                        help="folder with config.json and model.safetensors (default: the models folder)")
    parser.add_argument("--device", default=_RUN_DEFAULTS.device, choices=DEVICES,
                        help="compute device (default: preferences)")
    parser.add_argument("--resolution", type=int, default=_RUN_DEFAULTS.process_res, dest="process_res",
                        metavar="PX", help=f"longest side the model sees, in pixels (default "
                        f"{_RUN_DEFAULTS.process_res}, {PROCESS_RES.min:g}-{PROCESS_RES.max:g})")
    frames = parser.add_mutually_exclusive_group()
    frames.add_argument("--frames", type=int, default=_RUN_DEFAULTS.max_frames, dest="max_frames",
                        metavar="N",
                        help=f"video: number of frames to use (default {_RUN_DEFAULTS.max_frames})")
    frames.add_argument("--fps", type=float, default=0.0, help="video: frames per second to use instead")
    parser.add_argument("--motion", action="store_true",
                        help="video: keep frames by camera motion (parallax), at most --frames; "
                        "blurred and repeated frames are dropped")
    parser.add_argument("--render", default="", metavar="PREVIEW.png",
                        help="also render a preview from the first camera (Cycles)")
    parser.add_argument("--name", default="", help="name of the result's collection")
    add_build_options(parser)
    return parser


def add_build_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("build options (same names as the panel and the Python API)")
    for name in (n for n in BuildOptions.names() if isinstance(getattr(_DEFAULTS, n), bool)):
        default = "on" if getattr(_DEFAULTS, name) else "off"
        group.add_argument(f"--{name.replace('_', '-')}", type=on_off, default=getattr(_DEFAULTS, name),
                           metavar="on|off", help=f"default {default}")
    group.add_argument("--fusion", default=_DEFAULTS.fusion, choices=FUSION_MODES)
    group.add_argument("--voxel-size", type=float, default=_DEFAULTS.voxel_size, metavar="M",
                       help="surface detail; 0 = automatic")
    group.add_argument("--confidence-percentile", type=float, default=_DEFAULTS.confidence_percentile,
                       metavar="P", help="drop the least confident pixels (0-100)")
    group.add_argument("--max-points", type=int, default=_DEFAULTS.max_points, metavar="N",
                       help=f"the point cloud thinned evenly to at most N points; 0 = every kept pixel "
                       f"(default {_DEFAULTS.max_points})")
    group.add_argument("--max-faces", type=int, default=_DEFAULTS.max_faces, metavar="N",
                       help=f"face budget of the surface; 0 = no limit (default {_DEFAULTS.max_faces})")
    group.add_argument("--texture-size", type=int, default=_DEFAULTS.texture_size, metavar="N",
                       help="texels along each side of the surface's texture; 0 = as sharp as the photos")
    group.add_argument("--crop-object", default="", metavar="NAME", help=argparse.SUPPRESS)


def request_from(args: argparse.Namespace) -> reconstruct.Request:
    options = BuildOptions.from_mapping(vars(args))
    if args.motion and args.fps > 0:
        raise ValueError("--motion and --fps exclude each other: --motion keeps at most --frames")
    if args.max_frames < 1:
        raise ValueError("--frames must be at least 1")
    if args.render and not options.output_cameras:
        raise ValueError("--render needs a camera: keep --output-cameras on")
    sampling = "MOTION" if args.motion else "FPS" if args.fps > 0 else "COUNT"
    run = RunOptions.sampled(sampling, args.max_frames, args.fps, model=args.model,
                             weights=args.weights, device=args.device, process_res=args.process_res)
    problem = run.problem()
    if problem:
        raise ValueError(problem)
    return reconstruct.Request(list(args.inputs), run, options, name=args.name)


def main(argv: list[str]) -> int:
    """The command: returns the exit code; failures print one line on stderr."""
    parser = make_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
        request = request_from(args)
    except (UsageError, ValueError) as exc:
        return fail(f"{parser.prog}: error: {exc}", 2)
    try:
        reconstruct_and_save(request, Path(args.output), Path(args.render) if args.render else None)
    except reconstruct.ReconstructCancelled:
        return fail("da3_reconstruct: cancelled", 130)
    except KeyboardInterrupt:
        return fail("da3_reconstruct: interrupted", 130)
    except (reconstruct.ReconstructError, ValueError, OSError, RuntimeError) as exc:
        return fail(f"da3_reconstruct: {one_line(exc)}", 1)
    return 0


def reconstruct_and_save(request: reconstruct.Request, output: Path, preview: Path | None) -> None:
    if output.suffix.lower() != ".blend":
        raise ValueError(f"the output must be a .blend file, not '{output}'")
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {line}", flush=True)

    bpy.ops.wm.read_homefile(use_empty=True)
    collection = reconstruct.run(request, context=bpy.context, report=say)
    say(f"DA3: built '{collection.name}' ({len(collection.all_objects)} objects)")
    warning = result_warning(collection)
    if warning:
        print(f"da3_reconstruct: warning: {warning}", file=sys.stderr, flush=True)
    # Save before anything else can fail: a finished reconstruction is never lost to the preview.
    bpy.ops.wm.save_as_mainfile(filepath=str(output.resolve()), check_existing=False)
    say(f"DA3: saved {output}")
    if preview is not None:
        try:
            render_preview(preview)
        except (RuntimeError, ValueError, OSError) as exc:
            raise PreviewFailed(f"saved {output}, but the preview render failed: {one_line(exc)}") from exc
        say(f"DA3: rendered the preview {preview}")


def render_preview(path: Path, long_side: int = 640, samples: int = 16) -> None:
    """A small Cycles render from the first reconstructed camera (the first view's viewpoint)."""
    scene = bpy.context.scene
    camera = first_camera(scene)
    if camera is None:
        raise ValueError("--render needs a camera: keep --output-cameras on")
    scene.camera = camera
    render = scene.render
    scale = long_side / max(render.resolution_x, render.resolution_y, 1)
    render.resolution_percentage = max(1, min(100, round(scale * 100)))
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = cycles_can_denoise()
    light_evenly(scene)
    path.parent.mkdir(parents=True, exist_ok=True)
    render.image_settings.file_format = "PNG"
    render.filepath = str(path.resolve())
    bpy.ops.render.render(write_still=True)
    if not path.exists():
        raise RuntimeError(f"the preview render did not write {path}")


def light_evenly(scene) -> None:
    """A plain white world: the reconstruction's colours come from the photos, not from lights."""
    world = scene.world or bpy.data.worlds.new("DA3 Preview")
    scene.world = world
    world.color = (1.0, 1.0, 1.0)
    background = next((n for n in node_tree_of(world).nodes if n.type == "BACKGROUND"), None)
    if background is not None:
        background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        background.inputs["Strength"].default_value = 1.0


def first_camera(scene):
    cameras = [o for o in scene.objects if o.get("da3_role") == "camera"]
    cameras.sort(key=lambda o: o.get("da3_view_index", 0))
    return cameras[0] if cameras else None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def fail(line: str, code: int) -> int:
    print(line, file=sys.stderr)
    return code


def register():
    global _handle
    _handle = bpy.utils.register_cli_command(COMMAND, main)


def unregister():
    global _handle
    if _handle is not None:
        bpy.utils.unregister_cli_command(_handle)
        _handle = None
