from pathlib import Path
from typing import Any

import pytest
import yaml

from densenet_operator import networkpolicy, pods, volcano
from densenet_operator.ascend import ranktable
from densenet_operator.settings import TrainerDefaults
from densenet_operator.spec import ParsedJobs, SpecError, parse_job, parse_spec

IMG = TrainerDefaults(image="img")


def test_defaults_follow_the_densenet161_seed():
    spec = parse_spec({"model": "densenet161", "data": {"path": "/d"}}, defaults=IMG)
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
        defaults=IMG,
    )
    cpu = parse_spec(
        {"model": "densenet121", "device": {"type": "cpu"}, "data": {"synthetic": True}},
        defaults=IMG,
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
        parse_spec(spec, defaults=IMG)


def test_mixed_precision_defaults_by_device_and_can_be_set():
    base = {"model": "densenet121", "data": {"synthetic": True}}
    assert parse_spec(base, defaults=IMG).recipe.mixed_precision is True
    cpu = parse_spec({**base, "device": {"type": "cpu"}}, defaults=IMG)
    assert cpu.recipe.mixed_precision is False
    forced = parse_spec(
        {**base, "device": {"type": "cpu"}, "recipe": {"mixedPrecision": True}}, defaults=IMG
    )
    assert forced.recipe.mixed_precision is True


# ------------------------------------------------------------------ parsed once per spec

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def served(spec: dict[str, Any], generation: int = 1, uid: str = "uid-1") -> dict[str, Any]:
    meta = {"name": "dn", "namespace": "team-a", "uid": uid, "generation": generation}
    return {"metadata": meta, "spec": spec}


def example_specs() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text())["spec"] for path in EXAMPLES]


def test_a_pass_over_an_unchanged_spec_reuses_its_parse() -> None:
    jobs = ParsedJobs(IMG)
    first = jobs.parse(served({"model": "densenet121", "data": {"synthetic": True}}))
    again = jobs.parse(served({"model": "densenet121", "data": {"synthetic": True}}))
    assert again is first


def test_a_new_generation_or_a_new_default_is_parsed_again() -> None:
    jobs = ParsedJobs(IMG)
    spec = {"model": "densenet121", "data": {"synthetic": True}}
    first = jobs.parse(served(spec))
    bumped = jobs.parse(served({**spec, "replicas": 2}, generation=2))
    assert (bumped.generation, bumped.spec.replicas) == (2, 2)
    # The API server applies a new CRD's defaults on read, with the generation unchanged.
    defaulted = jobs.parse(served({**spec, "replicas": 2, "devicesPerReplica": 4}, generation=2))
    assert defaulted.spec.devices_per_replica == 4 and first.spec.devices_per_replica == 8


def test_a_kept_parse_does_not_follow_later_edits_of_the_body() -> None:
    jobs = ParsedJobs(IMG)
    body = served({"model": "densenet121", "data": {"synthetic": True}})
    first = jobs.parse(body)
    body["spec"]["model"] = "densenet161"  # the same dict, edited in place
    assert jobs.parse(body).spec.model == "densenet161" and first.spec.model == "densenet121"


def test_a_refused_spec_is_refused_every_time_and_a_forgotten_job_parsed_anew() -> None:
    jobs = ParsedJobs(IMG)
    for _ in range(2):
        with pytest.raises(SpecError):
            jobs.parse(served({"model": "resnet50", "data": {"synthetic": True}}))
    first = jobs.parse(served({"model": "densenet121", "data": {"synthetic": True}}))
    jobs.forget("uid-1")
    assert jobs.parse(served({"model": "densenet121", "data": {"synthetic": True}})) is not first


@pytest.mark.parametrize("spec", example_specs(), ids=[path.stem for path in EXAMPLES])
def test_building_the_children_leaves_a_kept_job_as_parsed(spec: dict[str, Any]) -> None:
    # A kept Job serves every later pass: no builder may edit the dicts it holds.
    job = ParsedJobs(IMG).parse(served(spec))
    for _ in range(2):
        for index in range(job.spec.replicas):
            pods.build_pod(job, index, gang=1)
        networkpolicy.build_network_policy(job)
        volcano.build_pod_group(job)
        ranktable.build_configmap(job.ref, ranktable.initial_content(job.spec))
    assert job == parse_job(served(spec), defaults=IMG)
