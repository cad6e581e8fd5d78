"""Memory time positions: the released numbering (default) and the paper's negative shift."""

import pytest

from storymem_core.errors import ConditioningError
from storymem_core.positions import memory_frame_positions


def test_released_placement_keeps_the_plain_numbering():
    assert memory_frame_positions(3, 8) is None  # the DiT numbers memory and shot 0..n-1, as the released code


def test_negative_placement_puts_memory_before_the_shot_at_spacing():
    assert memory_frame_positions(3, 6, "negative", 5).tolist() == [-15, -10, -5, 0, 1, 2]


@pytest.mark.parametrize("args", [(2, 1, "negative", 5), (1, 3, "sideways", 5), (1, 3, "negative", 0)])
def test_bad_memory_positions_name_the_setting(args):
    with pytest.raises(ConditioningError, match="memory"):
        memory_frame_positions(*args)
