"""The worker protocol: a job file in, JSON events out.

Blender writes a job (JSON) and hands it to the worker environment's interpreter: one job per
process (``python -m engine.worker JOB.json``), or job after job to one serving process
(``python -m engine.worker --serve``), one ``job_line`` per job on its stdin, ``exit`` to end it.
The worker prints one JSON object per line on stdout and nothing else; each job's events end
with its final one (``done`` or ``error``). A line ``cancel`` on its stdin (or SIGTERM) stops the
job, and the process with it.

Events (``"event"`` key):
  stage     {"stage": one of STAGES, "message": str}
  progress  {"stage": str, "done": int, "total": int, "eta_s": float | None}
  warning   {"message": str}
  done      {"result": path of the prediction file, "views": int, "seconds": float,
             "timings": {step: seconds}, "peak_gpu_mib": float | None,
             "model_reused": bool (the network was already loaded by an earlier job),
             "photo_factor": int (k of the file's ``photos``, 1 for none)}
  error     {"kind": one of ERROR_KINDS, "message": one line for the user, "traceback": str}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .options import RunOptions

PROTOCOL_VERSION = 2  # 2: the run settings in one "run" object
READS_VERSIONS = (1, 2)  # 1: the same settings at the top level

STAGES = ("starting", "downloading_weights", "loading_model", "reading_frames", "inference",
          "fusing", "writing")
ERROR_KINDS = ("bad_input", "missing_weights", "out_of_memory", "dependency", "cancelled",
               "internal")
CANCEL_LINE = "cancel"
EXIT_LINE = "exit"  # a serving worker's stdin: leave now (it is idle)
# Errors that are the job's own: a serving worker keeps its model and takes the next job.
JOB_ERRORS = ("bad_input", "missing_weights")


@dataclass
class Job:
    """Everything the worker needs; written by Blender, read by the worker."""

    sources: list[str]  # a folder, image files, or one video file
    output: str  # where the prediction .npz goes
    run: RunOptions = field(default_factory=RunOptions)  # how the model sees the input
    models_dir: str = ""  # where weights are found or downloaded to
    allow_download: bool = False  # Blender's online-access setting decides
    keyframe_cache: str = ""  # "motion" sampling: folder of cached selections (shared with the panel)
    # TSDF fusion in the worker (on the GPU when there is one), so Blender only builds the
    # mesh: ``options.fusion_settings``; empty = do not fuse here
    tsdf: dict = field(default_factory=dict)
    # keep the frames larger than the network sees them, for the texture (``Prediction.photos``)
    photos: bool = False
    version: int = PROTOCOL_VERSION
    extra: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Job":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("version", 1) not in READS_VERSIONS:
            raise ValueError(f"job file version {data.get('version')}; this worker reads "
                             f"{', '.join(map(str, READS_VERSIONS))}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        run = RunOptions.from_mapping(data.get("run", data))
        job = cls(**{**known, "run": run, "version": PROTOCOL_VERSION})
        problem = job.run.problem()
        if problem:
            raise ValueError(problem)
        return job


def job_line(job_file: str | Path) -> str:
    """The stdin line that gives a serving worker its next job."""
    return json.dumps({"job": str(job_file)})


def job_path_from_line(line: str) -> str:
    """The job file a ``job_line`` names (anything else is taken as a path, which the worker
    then reports as not found)."""
    try:
        return str(json.loads(line)["job"])
    except (ValueError, TypeError, KeyError):
        return line


def serving_continues(final: dict) -> bool:
    """Whether a serving worker takes another job after this final event: after ``done`` and
    the job's own errors; after a cancel or any other error it exits (a fresh process is the
    clean state: nothing half-done stays in memory)."""
    if final.get("event") == "done":
        return True
    return final.get("event") == "error" and final.get("kind") in JOB_ERRORS


def encode(event: str, **fields) -> str:
    """One protocol line (without the newline)."""
    return json.dumps({"event": event, **fields}, ensure_ascii=True, default=str)


def decode(line: str) -> dict:
    """Parse one protocol line; a line that is not a JSON object becomes an 'internal' error."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or "event" not in obj:
        return {"event": "error", "kind": "internal", "traceback": "",
                "message": f"the worker printed something unexpected: {line.strip()[:200]}"}
    return obj


def seconds_left(done: int, total: int, elapsed: float) -> float | None:
    """A progress event's ``eta_s``: seconds left at the pace so far; None before anything is
    done. (Blender's side estimates it the same way for events that come without one.)"""
    if done <= 0 or elapsed <= 0:
        return None
    return round(elapsed / done * (total - done), 1)

