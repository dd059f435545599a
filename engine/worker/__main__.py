"""``python -m engine.worker <command>``: everything Blender asks of the worker environment.

    python -m engine.worker JOB.json                 one job, JSON-lines events (engine.core.protocol)
    python -m engine.worker --serve                  job after job on stdin, the model kept loaded
    python -m engine.worker download MODEL DIR       fetch a model's weights, with events
    python -m engine.worker save-random --model M --out DIR   random weights in the hub layout (tests)
    python -m engine.worker video-info VIDEO         a video's frame count and rate, one JSON line
    python -m engine.worker keyframes VIDEO [--cache DIR]     the keyframe selection, one JSON line
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command in ("download", "save-random"):
        from .weights import main as weights_main

        return weights_main(argv)
    if command == "video-info":
        from .inputs import main as video_info

        return video_info(rest)
    if command == "keyframes":
        from .keyframes import main as keyframes

        return keyframes(rest)
    from .process import EXIT_CANCELLED, exit_now
    from .process import main as run_jobs

    code = run_jobs(argv)
    # A serving worker leaves at once too: Blender waits for it when it quits or loads a file.
    if code == EXIT_CANCELLED or argv == ["--serve"]:
        exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
