"""Memory time positions: the authors' current placement (default) and the first release's numbering."""

import pytest

from storymem_core.choices import DEFAULT_MEMORY_POSITIONS
from storymem_core.errors import ConditioningError
from storymem_core.positions import DEFAULT_SPACING, memory_frame_positions


def test_default_placement_is_upstream_memory_before_the_shot_at_spacing_5():
    assert DEFAULT_MEMORY_POSITIONS == "upstream" and DEFAULT_SPACING == 5
    assert memory_frame_positions(3, 6).tolist() == [-15, -10, -5, 0, 1, 2]
    assert memory_frame_positions(1, 3, "upstream", 2).tolist() == [-2, 0, 1]


def test_first_release_placement_keeps_the_plain_numbering():
    assert memory_frame_positions(3, 8, "first-release") is None  # the DiT numbers memory and shot 0..n-1


def test_no_memory_keeps_the_plain_numbering():
    assert memory_frame_positions(0, 4) is None


@pytest.mark.parametrize("args", [(2, 1, "upstream", 5), (1, 3, "sideways", 5), (1, 3, "upstream", 0),
                                  (1, 3, "negative", 5), (1, 3, "released", 5)])
def test_bad_memory_positions_name_the_setting(args):
    with pytest.raises(ConditioningError, match="memory"):
        memory_frame_positions(*args)
