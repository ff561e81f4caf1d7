"""Image garbage collection's policy (kubelet's ``image_gc_manager``) and its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodelet.configfile import ConfigFileError, load_files
from nodelet.image.gc import (
    GCPolicy,
    StoredImage,
    bytes_to_free,
    candidates,
    group_images,
    policy_problem,
    usage_percent,
)
from nodelet.image.store import ImageRecord

pytestmark = pytest.mark.unit

GIB = 1 << 30


def image(image_id: str, first_seen: float, last_used: float) -> StoredImage:
    return StoredImage(image_id, (f"nlt.test/{image_id}:1",), first_seen, last_used)


def test_usage_is_kubelets_integer_percentage() -> None:
    assert usage_percent(100 * GIB, 15 * GIB) == 85
    assert usage_percent(100 * GIB, 15 * GIB + 1) == 85
    assert usage_percent(100 * GIB, 16 * GIB) == 84


def test_nothing_to_free_below_the_high_threshold() -> None:
    assert bytes_to_free(100 * GIB, 16 * GIB, GCPolicy()) == 0


def test_at_the_high_threshold_it_frees_down_to_the_low_one() -> None:
    # 85 % used: free until 20 % is available.
    assert bytes_to_free(100 * GIB, 15 * GIB, GCPolicy()) == 5 * GIB
    assert bytes_to_free(100 * GIB, 10 * GIB, GCPolicy(90, 50)) == 40 * GIB


def test_a_high_threshold_of_100_turns_it_off() -> None:
    assert not GCPolicy(100, 80).enabled
    assert bytes_to_free(100 * GIB, 0, GCPolicy(100, 80)) == 0
    assert GCPolicy(99, 80).enabled


def test_least_recently_used_go_first_and_in_use_never() -> None:
    images = [image("a", 0, 300), image("b", 0, 100), image("c", 0, 200), image("d", 0, 50)]
    chosen = candidates(images, {"d"}, 1000, GCPolicy(min_age=0))
    assert [i.id for i in chosen] == ["b", "c", "a"]


def test_ties_in_last_use_go_by_first_seen() -> None:
    chosen = candidates([image("a", 20, 100), image("b", 10, 100)], set(), 1000, GCPolicy())
    assert [i.id for i in chosen] == ["b", "a"]


def test_images_younger_than_the_minimum_age_stay() -> None:
    images = [image("old", 1000 - 120, 0), image("young", 1000 - 119, 0)]
    assert [i.id for i in candidates(images, set(), 1000, GCPolicy())] == ["old"]


def test_names_of_one_image_are_grouped_and_last_use_is_the_latest_known() -> None:
    records = [
        ImageRecord("nlt.test/a:1", "d1", "m1", "id-a", 10.0, 50.0),
        ImageRecord("nlt.test/a:latest", "d1", "m1", "id-a", 5.0, 70.0),
        ImageRecord("nlt.test/b:1", "d2", "m2", "id-b", 20.0),
    ]
    grouped = {i.id: i for i in group_images(records, {"id-b": 90.0, "id-a": 60.0})}
    assert grouped["id-a"].names == ("nlt.test/a:1", "nlt.test/a:latest")
    assert grouped["id-a"].first_seen == 5.0
    assert grouped["id-a"].last_used == 70.0  # the index knew a later use than the agent
    assert grouped["id-b"].last_used == 90.0  # never in the index: the agent's
    assert group_images(records[2:], {})[0].last_used == 20.0  # never used: when stored


def test_images_unused_longer_than_the_maximum_age_go_whatever_the_disk_says() -> None:
    from nodelet.image.gc import too_old

    images = [image("old", 0, 100), image("used", 0, 0), image("recent", 0, 900)]
    policy = GCPolicy(min_age=0, max_age=500)
    assert [i.id for i in too_old(images, {"used"}, 1000, policy)] == ["old"]
    assert too_old(images, set(), 1000, GCPolicy(min_age=0)) == []  # 0: off
    assert policy_problem(85, 80, 120, 60) == (
        "invalid configuration: imageMaximumGCAge 1m0s must be greater than imageMinimumGCAge 2m0s"
    )
    assert policy_problem(85, 80, 120, 121) is None


def test_threshold_validation_is_kubelets() -> None:
    assert policy_problem(85, 80) is None
    assert policy_problem(100, 100) is None
    assert "imageGCHighThresholdPercent (101)" in str(policy_problem(101, 80))
    assert "imageGCLowThresholdPercent (-1)" in str(policy_problem(85, -1))
    assert "must be less than or equal to imageGCHighThresholdPercent (70)" in str(
        policy_problem(70, 80)
    )


def test_the_config_file_sets_the_gc_settings(tmp_path: Path) -> None:
    path = tmp_path / "kubelet.yaml"
    path.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "imageGCHighThresholdPercent: 90\nimageGCLowThresholdPercent: 70\n"
        "imageMinimumGCAge: 5m\n"
    )
    values = load_files([path]).values
    assert values["image_gc_high_threshold"] == 90
    assert values["image_gc_low_threshold"] == 70
    assert values["image_minimum_gc_age"] == 300.0
    path.write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "imageGCHighThresholdPercent: 101\n"
    )
    with pytest.raises(ConfigFileError, match="imageGCHighThresholdPercent"):
        load_files([path])


def test_the_config_file_sets_the_host_image_root(tmp_path: Path) -> None:
    path = tmp_path / "nodelet.yaml"
    path.write_text("apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n"
                    "hostImageRoot: Overlay\n")  # fmt: skip
    assert load_files([path]).values["host_image_root"] == "Overlay"
    path.write_text("apiVersion: nodelet.io/v1alpha1\nkind: NodeletConfiguration\n"
                    "hostImageRoot: Shared\n")  # fmt: skip
    with pytest.raises(
        ConfigFileError, match="hostImageRoot: 'Shared' is not one of Overlay, Node"
    ):
        load_files([path])


def test_grouping_does_not_depend_on_the_order_of_the_names() -> None:
    records = [
        ImageRecord("nlt.test/a:latest", "d1", "m1", "id-a", 5.0, 70.0),
        ImageRecord("nlt.test/a:1", "d1", "m1", "id-a", 10.0, 50.0),
    ]
    for ordered in (records, records[::-1]):
        (grouped,) = group_images(ordered, {})
        assert (grouped.first_seen, grouped.last_used) == (5.0, 70.0)
    stored_at_epoch = [ImageRecord("nlt.test/z:1", "d", "m", "id-z", 0.0)]
    assert group_images(stored_at_epoch, {})[0].last_used == 0.0


def test_threshold_and_age_boundaries() -> None:
    assert policy_problem(0, 0) is None
    assert policy_problem(85, 80, 120, -1) == (
        "invalid configuration: imageMaximumGCAge -1s must not be negative"
    )
    assert usage_percent(100 * GIB, 100 * GIB) == 0
    assert bytes_to_free(0, 0, GCPolicy()) == 0  # no capacity reported: nothing to do
    assert bytes_to_free(100 * GIB, 20 * GIB, GCPolicy(80, 80)) == 0  # at low already


def test_the_maximum_age_is_exceeded_only_past_it() -> None:
    from nodelet.image.gc import too_old

    images = [image("at", 0, 500), image("past", 0, 499)]
    assert [i.id for i in too_old(images, set(), 1000, GCPolicy(min_age=0, max_age=500))] == [
        "past"
    ]
    assert [i.id for i in too_old(images, set(), 1000, GCPolicy(min_age=0, max_age=1))] == [
        "past",
        "at",
    ]
