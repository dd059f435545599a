"""One prediction -> one new collection holding points, view meshes, surface and cameras."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from ..engine.core import geometry
from ..engine.core.options import BACKGROUND_THREADS, BuildOptions
from ..engine.core.prediction import Prediction, PredictionError, load_prediction, validate
from ..engine.core.threads import lower_thread_priority
from .cameras import add_camera_track, add_view_cameras, frame_pngs, set_render_resolution
from .materials import color_material, points_node_group
from .meshes import add_color_attribute, flat, grid_mesh, set_colors, set_vertices
from .surface import create_surface, start_surface, surface_arrays
from .tracking import NewDataGuard


@dataclass
class Build:
    """What the parts of one import share: inputs, prepared geometry and the new collection."""

    context: bpy.types.Context
    prediction: Prediction
    options: BuildOptions
    name: str
    geo: geometry.Scene
    collection: bpy.types.Collection
    material: bpy.types.Material
    crop: tuple | None = None  # (world_to_local, low, high) of the crop object, Blender frame
    # background(stage, fn, *args) -> Future: fn(*args, progress=...) on the importer's threads
    # (numpy only); a part's create step yields the Future to wait for it
    background: Callable[..., Future] | None = None
    # how far the fusion moved each view's camera centre ((N,3), the prediction's frame; None:
    # not at all): the surface lies where those cameras put it (engine.fusion.outlines)
    camera_moves: np.ndarray | None = None
    # each part's work started before the filter (Part.start), by stage
    started: dict[str, Future] = field(default_factory=dict)

    def note(self, line: str) -> None:
        """Record something the user should know (a part left out) on the collection."""
        notes = self.collection.get("da3_notes", "")
        self.collection["da3_notes"] = f"{notes}; {line}" if notes else line

    def add_object(self, name: str, data, role: str, **props) -> bpy.types.Object:
        """A new object in the result collection, tagged with its ``da3_role``."""
        obj = bpy.data.objects.new(name, data)
        self.collection.objects.link(obj)
        obj["da3_role"] = role
        for key, value in props.items():
            obj[key] = value
        return obj


class StagedImport:
    """One prediction -> one new collection, in short steps on Blender's main thread.

    The numpy work (reading the file, filtering and back-projecting, meshing the views, fusing)
    runs on ``BACKGROUND_THREADS`` threads that never touch bpy; each :meth:`step` does the next
    piece of Blender work whose inputs are ready (the collection, the points, one view mesh, the surface, the
    cameras), so a modal operator can call it from a timer and Blender's UI stays responsive.
    ``api.import_prediction`` steps it to the end. A failure or :meth:`cancel` removes whatever
    was made (``NewDataGuard``).
    """

    def __init__(self, context, source, options: BuildOptions, name: str | None = None,
                 crop=None, timings: dict | None = None):
        self.context, self.options, self.crop = context, options, crop
        self.timings = {} if timings is None else timings
        self.label, self.fraction, self.collection = "reading the file", 0.0, None
        self.finished = False
        self._stopped = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=BACKGROUND_THREADS, thread_name_prefix="da3-import",
                                        initializer=lower_thread_priority)
        self._guard = NewDataGuard(context.scene).__enter__()
        self._steps = self._run(self._pool.submit(self._read, source),
                                name or (lambda pred: default_name(source, pred)))

    def step(self, wait: bool = False) -> bool:
        """Do the next piece of Blender work if its inputs are ready (with ``wait``, wait for
        them); True once the result is complete. Errors are raised after clean-up."""
        try:
            self._wait = wait
            next(self._steps)
            return False
        except StopIteration:
            self.finished = True
            self._pool.shutdown(wait=False)
            self._guard.__exit__(None, None, None)
            return True
        except BaseException as exc:
            self.stop_threads()
            self._guard.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def run(self) -> bpy.types.Collection:
        """Step to the end, waiting for the threads: the blocking import."""
        while not self.step(wait=True):
            pass
        return self.collection

    def cancel(self) -> None:
        """Stop the threads at their next check and remove what was made (nothing once the
        import has ended: a finished result stays, a failed one is already gone)."""
        if self.finished:
            return
        self.stop_threads()
        self._guard.__exit__(ReconstructionAbandoned, None, None)

    def stop_threads(self) -> None:
        """Stop the numpy work at its next check; Blender data is left alone (for when Blender
        replaces the file or quits)."""
        self.finished = True
        self._stopped.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the threads (numpy only) ---

    def _read(self, source) -> Prediction:
        with _timed(self.timings, "read"):
            return read_prediction(source)

    def _filter(self, pred: Prediction) -> geometry.Scene:
        self._check()
        with _timed(self.timings, "filter"):
            geo = geometry.prepare(pred, self.options, self.crop)
        if geo.num_points == 0:
            raise PredictionError("no pixel survives the filters (confidence, sky, edges, crop): "
                                  "lower the confidence percentile or check the crop object")
        return geo

    def _start(self, part: Part, pred: Prediction):
        self._check()
        with _timed(self.timings, part.stage):
            return part.start(pred, self.options, self.crop, self._progress)

    def _compute(self, part: Part, build: Build):
        self._check()
        if part.stage in build.started:  # its seconds are the part's too: counted once, there
            wait([build.started[part.stage]])
        with _timed(self.timings, part.stage):
            return part.compute(build, self._progress)

    def _later(self, stage: str, fn: Callable, *args):
        """Work a create step handed back to the threads once its Blender part was done."""
        self._check()
        with _timed(self.timings, stage):
            return fn(*args, progress=self._progress)

    def _progress(self, fraction: float, message: str) -> None:
        self._check()
        self.fraction = fraction

    def _check(self) -> None:
        if self._stopped.is_set():
            raise ReconstructionAbandoned("import cancelled")

    # --- the main thread ---

    def _run(self, read, name):
        pred = yield from self._result(read)
        parts = [part for part in _PARTS if getattr(self.options, part.wanted)]
        # queued before the filter: a part's compute, which may wait for its start, comes later
        started = {part.stage: self._pool.submit(self._start, part, pred)
                   for part in parts if part.start}
        geo = yield from self._result(self._pool.submit(self._filter, pred))
        name = name(pred) if callable(name) else name
        build = Build(self.context, pred, self.options, name, geo,
                      _new_collection(self.context, name, pred, geo), color_material(name), self.crop,
                      background=lambda stage, fn, *args: self._pool.submit(self._later, stage, fn, *args),
                      started=started)
        self.collection = build.collection
        # all computations start now, BACKGROUND_THREADS at a time
        futures = [self._pool.submit(self._compute, part, build) if part.compute else None
                   for part in parts]
        for part, future in zip(parts, futures, strict=True):
            self.label = part.label
            data = (yield from self._result(future)) if future else None
            steps = part.create(build, data)
            while True:
                with _timed(self.timings, part.stage):
                    more = next(steps, _DONE)
                if more is _DONE:
                    break
                if isinstance(more, str):  # a step may name the piece of work that follows
                    self.label = more
                elif isinstance(more, Future):  # or wait for work it gave the threads
                    yield from self._done(more)  # (the step reads its result, or its error)
                yield
            yield  # what a part did after its last yield was one step; the next part's first is another
        # Linked last: until now nothing was drawn or evaluated, so no step waited on a redraw.
        self.context.scene.collection.children.link(build.collection)

    def _result(self, future):
        """The future's value, yielding (so the UI runs on) until it is ready."""
        yield from self._done(future)
        return future.result()

    def _done(self, future):
        """Yield (so the UI runs on) until ``future`` is done."""
        while not future.done():
            if self._wait:
                wait([future])
                return
            yield




class ReconstructionAbandoned(Exception):
    """An import stopped by :meth:`StagedImport.cancel` (never reaches the user)."""


_DONE = object()


def read_prediction(source) -> Prediction:
    """A DA3 npz file read and checked, or an in-memory Prediction (possibly from another
    import of the engine package) checked."""
    if _is_path(source):
        return load_prediction(source)
    validate(source)
    return source


def _is_path(source) -> bool:
    return isinstance(source, (str, bytes, os.PathLike))


def default_name(source, pred: Prediction) -> str:
    """The file's stem, else the model's name."""
    if _is_path(source):
        return Path(os.fsdecode(source)).stem
    return f"DA3 {pred.model}" if pred.model else "DA3 Prediction"


def _new_collection(context, name: str, pred: Prediction, geo: geometry.Scene):
    collection = bpy.data.collections.new(name)  # linked to the scene when complete
    collection["da3_scale"] = geo.scale
    collection["da3_is_metric"] = bool(pred.is_metric)
    collection["da3_model"] = pred.model
    if geo.conf_threshold is not None:
        collection["da3_conf_threshold"] = geo.conf_threshold
    return collection


# --- the parts: numpy on a thread, then Blender data on the main thread -------------------------

def points_arrays(build: Build, progress) -> tuple:
    """Positions, colours (as foreach_set takes them) and display radius of the kept pixels
    (thinned to the point budget)."""
    points, colors = geometry.kept_points(build.geo, build.options.max_points)
    radius = geometry.point_radius(build.geo, len(points))
    return flat(points), None if colors is None else flat(colors), radius


def add_points(build: Build, arrays):
    """The kept pixels (up to the point budget) as coloured, renderable points (vertices shown
    through Geometry Nodes). The positions, the colour attribute and its colours in three
    steps: each is a large allocation inside Blender."""
    points, colors, radius = arrays
    mesh = bpy.data.meshes.new(f"{build.name} points")
    set_vertices(mesh, points.reshape(-1, 3))
    yield
    add_color_attribute(mesh)
    yield
    set_colors(mesh, None if colors is None else colors.reshape(-1, 4), len(mesh.vertices))
    mesh.update()
    mesh.materials.append(build.material)
    obj = build.add_object(mesh.name, mesh, "points")
    group = points_node_group(mesh.name, radius, build.material)
    obj.modifiers.new("DA3 Points", "NODES").node_group = group
    yield


def view_grids(build: Build, progress) -> list:
    return geometry.view_meshes(build.geo, build.prediction.depth, quads=True)


def add_view_meshes(build: Build, grids):
    """One triangulated surface per view, never bridging an edge or a dropped pixel."""
    made = 0
    for i, grid in enumerate(grids):
        if len(grid.triangles) + len(grid.quads) == 0:
            continue
        mesh = grid_mesh(f"{build.name} view {i} mesh", grid)
        mesh.materials.append(build.material)
        build.add_object(mesh.name, mesh, "view_mesh", da3_view_index=i)
        made += 1
        yield
    if not made:
        build.note("no view meshes: no view has neighbouring pixels left after the filters; "
                   "try a lower confidence_percentile")


def camera_inputs(build: Build, progress) -> tuple:
    """What the cameras need from numpy: each frame as PNG bytes (None without images) and the
    farthest kept depth in scene units (their clip distance)."""
    far = float(build.prediction.depth[build.geo.valid].max()) * build.geo.scale
    return frame_pngs(build.prediction), far


def add_cameras(build: Build, inputs):
    pngs, far = inputs
    pred = build.prediction
    set_render_resolution(build.context.scene, pred.width, pred.height)
    yield from add_view_cameras(build, pngs, far)
    if pred.is_video and pred.num_views > 1:
        add_camera_track(build, far)
    yield


@dataclass(frozen=True)
class Part:
    """One part of the result: ``compute(build, progress)`` runs on a thread (numpy only, may be
    None), ``create(build, data)`` on the main thread, yielding between pieces of Blender work
    (None, the label of the piece that follows when it is not what ``label`` says, or a Future
    from ``build.background`` to wait for). ``start(prediction, options, crop, progress)``, when
    given, runs on a thread as soon as the file is read, beside the filter, for work that needs
    none of it (None when it cannot do without); ``compute`` finds its Future in
    ``build.started``."""

    wanted: str  # the BuildOptions flag that asks for it
    stage: str  # its key in the timings
    label: str  # what the user reads while it is made
    compute: Callable | None
    create: Callable
    start: Callable | None = None


_PARTS = (
    Part("output_points", "points", "building the points", points_arrays, add_points),
    Part("output_view_meshes", "view_meshes", "building the view meshes", view_grids, add_view_meshes),
    Part("output_surface", "surface", "fusing the views into one surface", surface_arrays,
         create_surface, start_surface),
    Part("output_cameras", "cameras", "adding the cameras", camera_inputs, add_cameras),
)


class _timed:
    """``with _timed(timings, stage):`` adds the seconds spent inside to ``timings[stage]``."""

    def __init__(self, timings: dict, stage: str):
        self.timings, self.stage = timings, stage

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + elapsed
        return False

