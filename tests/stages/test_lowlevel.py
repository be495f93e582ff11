"""The connected-component check of docs/method.md §3 on crafted images."""

import numpy as np
import pytest

from nhr.config import LowLevelCheck
from nhr.stages.prefilter import component_rule_applies, low_level_check

CHECK = LowLevelCheck()


def blank(size=100, value=120):
    return np.full((size, size, 3), value, dtype=np.uint8)


def test_identical_images_are_a_no_op():
    result = low_level_check(blank(), blank(), CHECK)
    assert result.reason == "no_op" and result.changed_share == 0


def test_re_encoding_noise_is_a_no_op_but_a_faint_edit_is_not():
    edited = blank().copy()
    edited[:, :, 0] += 12  # within the no-op threshold everywhere: re-encoding noise
    assert low_level_check(blank(), edited, CHECK).reason == "no_op"
    edited[40:60, 40:60, 0] += 20  # a faint recolouring: above noise, below D > 40
    result = low_level_check(blank(), edited, CHECK)
    assert result.reason is None and result.changed_share == 0


def test_changed_means_d_above_40():
    edited = blank().copy()
    edited[:50, :, 0] += 40  # exactly the threshold: not "changed" (D > 40 counts)
    assert low_level_check(blank(), edited, CHECK).changed_share == 0
    edited[:50, :, 0] += 1
    assert low_level_check(blank(), edited, CHECK).changed_share == 0.5


def test_one_coherent_region_passes():
    edited = blank().copy()
    edited[20:40, 30:60] = 250
    result = low_level_check(blank(), edited, CHECK)
    assert result.reason is None
    assert result.changed_share == pytest.approx(600 / 10000)
    assert result.largest_component_share == 1.0


def test_scattered_single_pixels_are_rejected():
    source = blank(200)
    edited = source.copy()
    # a checkerboard of isolated pixels every 4th pixel: 4-connected components of size 1
    edited[::4, ::4] = 255
    result = low_level_check(source, edited, CHECK)
    assert result.reason == "scattered_changes"
    assert result.largest_component_share < CHECK.min_component_share


def test_diagonal_neighbours_are_not_connected():
    # A checkerboard block is one region under 8-connectivity, but every pixel is its own
    # component under the 4-connectivity the method prescribes.
    source = blank(200)
    edited = source.copy()
    y, x = np.mgrid[0:100, 0:100]
    edited[:100, :100][(x + y) % 2 == 0] = 255
    result = low_level_check(source, edited, CHECK)
    assert result.largest_component_share == 1 / 5000
    assert result.reason == "scattered_changes"


def test_channel_max_is_used():
    edited = blank().copy()
    edited[10:30, 10:30, 2] = 200  # only the blue channel changes, by 80
    assert low_level_check(blank(), edited, CHECK).changed_share == pytest.approx(0.04)


def test_component_rule_can_be_skipped_for_global_operations():
    source = blank(200)
    edited = source.copy()
    edited[::4, ::4] = 255
    assert low_level_check(source, edited, CHECK, component_rule=False).reason is None
    assert component_rule_applies("remove_object", CHECK)
    assert not component_rule_applies("time_of_day", CHECK)
    custom = LowLevelCheck(skip_operations=["remove_object"])
    assert not component_rule_applies("remove_object", custom)
    assert component_rule_applies("time_of_day", custom)


def test_size_mismatch_is_reported():
    assert low_level_check(blank(10), blank(12), CHECK).reason == "size_mismatch"
