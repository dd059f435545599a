"""Object mode's unseen space (engine.fusion.pockets): the inside of an object stays solid, an
open pocket beside it (under a seat) opens. Cell states are drawn by hand here, so each case is
known; test_surface_quality judges the same on a Cycles chair."""

from __future__ import annotations

import numpy as np

from engine.fusion.pockets import FREE, SOLID, UNSEEN, find_pockets, open_directions


def seen_free(shape=(24, 24, 24)) -> np.ndarray:
    return np.full(shape, FREE, np.int8)


def test_under_a_slab_opens_and_the_inside_of_a_box_does_not():
    states = seen_free()
    states[4:20, 4:20, 14:16] = SOLID  # a seat's band, seen from above
    states[4:20, 4:20, 8:14] = UNSEEN  # what no camera above could see under it
    states[2:6, 2:6, 2:6] = SOLID  # a small box's band ...
    states[3:5, 3:5, 3:5] = UNSEEN  # ... around its unseen inside
    pockets = find_pockets(states)
    assert pockets.opened[4:20, 4:20, 8:14].all()
    assert not pockets.opened[3:5, 3:5, 3:5].any()
    assert not pockets.opened[states != UNSEEN].any()


def test_a_ball_whose_underside_nobody_saw_stays_closed():
    """The inside of a ball and the unseen space under it are one pocket: the cone's cells are
    open (only 'up' meets the ball), but the ball's middle has one way out ('down'), so the
    pocket holds an enclosed inside and stays solid, not cut flat."""
    states = seen_free((30, 30, 30))
    x, y, z = np.meshgrid(*(np.arange(30),) * 3, indexing="ij")
    r = np.sqrt((x - 15) ** 2 + (y - 15) ** 2 + (z - 18) ** 2)
    states[r < 8] = SOLID  # the band of the seen surface, all round ...
    states[r < 6] = UNSEEN  # ... the unseen inside
    hidden = (r < 8) & (z < 15)  # the underside no view saw, and a cone below it
    cone = (np.hypot(x - 15, y - 15) < (z - 4) * 0.8) & (z < 15)
    states[hidden | cone] = UNSEEN
    counts = open_directions(states)
    assert counts[15, 15, 18] <= 1  # the centre: only "down" runs out
    assert counts[15, 15, 8] >= 4  # the cone's: only "up" meets the ball
    assert not find_pockets(states).opened.any()


def test_walls_stop_at_the_inside_of_an_object():
    """The cells a pocket may reach into voxel by voxel touch an opened cell, but never the
    enclosed inside of an object beside it."""
    states = seen_free()
    states[4:20, 4:20, 14:16] = SOLID
    states[4:20, 4:20, 8:14] = UNSEEN
    states[8:12, 8:12, 16:22] = SOLID  # a post on the seat, its inside unseen
    states[9:11, 9:11, 17:21] = UNSEEN
    pockets = find_pockets(states)
    assert pockets.walls[4:20, 4:20, 14].any()  # the seat's band, from below
    assert not pockets.walls[9:11, 9:11, 17:21].any()
    assert not pockets.opened[9:11, 9:11, 17:21].any()
