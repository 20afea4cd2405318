import pytest

from densenet_operator.spec import SpecError, parse_spec


def test_defaults_follow_the_densenet161_seed():
    spec = parse_spec({"model": "densenet161", "data": {"path": "/d"}}, default_image="img")
    assert (spec.replicas, spec.devices_per_replica, spec.world_size) == (1, 8, 8)
    assert spec.device_type == "ascend" and spec.resource_name == "huawei.com/Ascend910"
    assert spec.image == "img"
    r = spec.recipe
    assert (r.epochs, r.batch_size, r.lr, r.momentum, r.weight_decay) == (90, 128, 0.1, 0.9, 1e-4)
    assert (r.lr_schedule.type, r.lr_schedule.step_size, r.lr_schedule.gamma) == ("step", 30, 0.1)
    assert spec.rank_table_format == "1.0"
    assert spec.run_policy.backoff_limit == 3 and spec.run_policy.clean_pod_policy == "Running"


def test_resource_name_defaults_per_device_type():
    cuda = parse_spec(
        {"model": "densenet121", "device": {"type": "cuda"}, "data": {"synthetic": True}},
        default_image="i",
    )
    cpu = parse_spec(
        {"model": "densenet121", "device": {"type": "cpu"}, "data": {"synthetic": True}},
        default_image="i",
    )
    assert cuda.resource_name == "nvidia.com/gpu"
    assert cpu.resource_name is None and not cpu.uses_rank_table


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": "resnet50", "data": {"synthetic": True}}, "model 'resnet50'"),
        (
            {"model": "densenet121", "devicesPerReplica": 3, "data": {"synthetic": True}},
            "1, 2, 4 or 8",
        ),
        ({"model": "densenet121", "data": {}}, "data.path is required"),
        ({"model": "densenet121", "replicas": 0, "data": {"synthetic": True}}, "at least 1"),
    ],
)
def test_specs_the_operator_cannot_run_are_refused(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec, default_image="i")


def test_mixed_precision_defaults_by_device_and_can_be_set():
    base = {"model": "densenet121", "data": {"synthetic": True}}
    assert parse_spec(base, default_image="i").recipe.mixed_precision is True
    cpu = parse_spec({**base, "device": {"type": "cpu"}}, default_image="i")
    assert cpu.recipe.mixed_precision is False
    forced = parse_spec(
        {**base, "device": {"type": "cpu"}, "recipe": {"mixedPrecision": True}}, default_image="i"
    )
    assert forced.recipe.mixed_precision is True
