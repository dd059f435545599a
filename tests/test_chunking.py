"""Which views each chunk holds, the memory model, and the driver with a fake runner (no model
needed)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.worker.chunking import (
    Cancelled,
    EtaClock,
    MemoryModel,
    fit_memory_model,
    is_out_of_memory,
    largest_chunk_size,
    predict_in_chunks,
    probe_peak_bytes,
    run_chunks,
)
from tests.room import room_truth
from tests.test_align import as_da3_chunk, errors_vs_truth

GB = 1024**3


def test_two_probes_fix_a_quadratic_memory_model():
    true = MemoryModel(per_view=300e6, per_view_squared=2e6)
    model = fit_memory_model([(2, true.bytes_for(2)), (8, true.bytes_for(8))])
    assert model.per_view == pytest.approx(300e6)
    assert model.per_view_squared == pytest.approx(2e6)
    size = model.largest_chunk(40 * GB, safety=0.8)
    assert true.bytes_for(size) <= 0.8 * 40 * GB < true.bytes_for(size + 1)


def test_noisy_probes_never_underestimate():
    # the second probe is relatively cheaper than the first: a concave fit would promise too much
    model = fit_memory_model([(2, 1.0e9), (4, 1.8e9)])
    assert model.per_view_squared == 0
    assert model.bytes_for(4) >= 1.8e9 and model.bytes_for(2) >= 1.0e9


def test_largest_chunk_size_respects_bounds():
    probes = [(2, 2e9), (4, 4e9)]  # 1 GB per view
    assert largest_chunk_size(probes, 10e9, safety=0.8) == 8
    assert largest_chunk_size(probes, 10e9, max_views=5) == 5
    assert largest_chunk_size(probes, 0.5e9) == 2  # the retry policy takes over below this
    with pytest.raises(ValueError):
        fit_memory_model([])


def chunks_run(n: int, size: int, overlap: int) -> list[range]:
    """The views of each chunk the driver runs when nothing runs out of memory."""
    seen = []
    run = run_chunks(n, lambda indices: indices, lambda indices, chunk: seen.append(indices),
                     chunk_size=size, overlap=overlap)
    assert [(int(i[0]), int(i[-1]) + 1) for i in seen] == run.chunks
    assert all(np.array_equal(i, np.arange(i[0], i[-1] + 1)) for i in seen)
    return [range(b, e) for b, e in run.chunks]


@pytest.mark.parametrize("n,size,overlap", [(100, 20, 5), (37, 10, 4), (8, 10, 3), (121, 120, 60)])
def test_chunks_cover_every_view_with_overlaps(n, size, overlap):
    chunks = chunks_run(n, size, overlap)
    assert chunks[0].start == 0 and chunks[-1].stop == n
    assert all(len(c) <= size for c in chunks)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start <= before.stop - min(overlap, size // 2)  # shares enough views
        assert after.stop > before.stop  # and adds new ones
    if len(chunks) > 1:
        assert len(chunks[-1]) == size  # no sliver at the end


def test_out_of_memory_is_recognised():
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: "
                                         "not enough memory: you tried to allocate"
                                         " ... failed to allocate"))
    assert is_out_of_memory(RuntimeError("[enforce fail at CPUAllocator.cpp] can't allocate memory"))
    assert not is_out_of_memory(ValueError("bad input"))


class FakeModel:
    """Runs chunks from the synthetic room; raises MemoryError above ``fits`` views."""

    def __init__(self, truth, fits: int = 10**9, seed: int = 0):
        self.truth, self.fits, self.calls = truth, fits, []
        self.rng = np.random.default_rng(seed)

    def __call__(self, indices):
        self.calls.append(len(indices))
        if len(indices) > self.fits:
            raise MemoryError(f"{len(indices)} views do not fit")
        return as_da3_chunk(self.truth, indices, self.rng)


def test_out_of_memory_halves_the_chunk_and_the_job_still_completes():
    truth = room_truth(40)
    model = FakeModel(truth, fits=9)
    retries = []
    merged, reports, run = predict_in_chunks(40, model, chunk_size=24, overlap=8,
                                             on_retry=lambda a, b, e: retries.append((a, b)))
    assert retries == [(24, 12), (12, 6)]
    assert all(e - b <= 6 for b, e in run.chunks)
    assert run.chunks[-1][1] == 40 and len(reports) == len(run.chunks)
    assert errors_vs_truth(merged, truth)["centre_max"] < 0.005


def test_out_of_memory_below_the_smallest_chunk_fails_and_other_errors_pass_through():
    truth = room_truth(10, 12, 16)
    with pytest.raises(MemoryError):
        predict_in_chunks(10, FakeModel(truth, fits=1), chunk_size=8, overlap=2)

    def broken(indices):
        raise ValueError("corrupt frame")

    with pytest.raises(ValueError, match="corrupt"):
        run_chunks(10, broken, lambda i, c: None, chunk_size=4, overlap=1)


def test_cancel_between_chunks_stops_before_the_next_forward():
    truth = room_truth(30, 12, 16)
    model = FakeModel(truth)
    with pytest.raises(Cancelled):
        predict_in_chunks(30, model, chunk_size=8, overlap=2, cancel=lambda: len(model.calls) >= 2)
    assert len(model.calls) == 2


def test_cancel_inside_the_alignment_stops_it():
    truth = room_truth(20, 12, 16)
    model = FakeModel(truth)
    checks = []

    def cancel():  # false for the driver's own checks, true once the aligner asks
        checks.append(1)
        return len(model.calls) >= 2 and len(checks) > 6

    with pytest.raises(Cancelled):
        predict_in_chunks(20, model, chunk_size=8, overlap=3, cancel=cancel)


def test_progress_counts_views_and_gives_an_eta():
    truth = room_truth(30, 12, 16)
    seen = []
    predict_in_chunks(30, FakeModel(truth), chunk_size=8, overlap=2,
                      progress=lambda done, total, eta: seen.append((done, total, eta)))
    done = [d for d, _, _ in seen]
    assert done[0] == 0 and done[-1] == 30 and done == sorted(done)
    assert all(t == 30 for _, t, _ in seen)
    assert seen[-1][2] == 0 and all(e is not None and e >= 0 for _, _, e in seen[1:])


def test_eta_uses_the_pace_after_warm_up():
    clock = EtaClock()
    clock.lap(10.0, 8)  # the first chunk pays the warm-up
    clock.lap(2.0, 4)
    clock.lap(2.0, 4)
    assert clock.eta(8) == pytest.approx(4.0)


def test_cpu_probe_sees_an_allocation():
    def forward(views):
        block = np.ones(views * 10 * 1024**2 // 8)  # 10 MiB per view, touched
        time.sleep(0.05)
        return block.sum()

    measured = probe_peak_bytes(forward, 8, "cpu")
    assert 60 * 1024**2 < measured < 200 * 1024**2


def test_chunks_as_objects_without_images_merge_without_images():
    """The worker's runner returns engine.worker.model.Views-like objects (no image, no sky): the
    merge allocates neither, and the job's images go in once at the end instead of being copied
    through every chunk."""
    from types import SimpleNamespace

    truth = room_truth(16, 12, 16)
    rng = np.random.default_rng(0)

    def views_like(indices):
        arrays = as_da3_chunk(truth, np.asarray(indices), rng)
        del arrays["image"]
        return SimpleNamespace(sky=None, **arrays)

    merged, reports, run = predict_in_chunks(16, views_like, chunk_size=8, overlap=3)
    assert merged.image is None and merged.sky is None
    assert len(reports) == len(run.chunks) == 3 and merged.depth.shape == (16, 12, 16)
    assert errors_vs_truth(merged, truth)["centre_max"] < 0.005
