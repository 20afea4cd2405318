"""crds/ and the chart's copy are what the spec model generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from densenet_contract.recipe import Recipe
from densenet_contract.schema import SpecError, parse
from densenet_operator import crd
from densenet_operator.settings import TrainerDefaults
from densenet_operator.spec import TrainingSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("target", "render"),
    [(t, crd.render) for t in crd.TARGETS]
    + [(t, crd.render_admission) for t in crd.ADMISSION_TARGETS],
    ids=str,
)
def test_the_crd_files_are_generated_from_the_model(target, render):
    written = (ROOT / target).read_text(encoding="utf-8")
    assert written == render(), "run `python -m densenet_operator.crd --write`"


def _schema_defaults(schema):
    """A body as the API server defaults an empty object of `schema`."""
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if "default" in prop:
            value = prop["default"]
            out[key] = _schema_defaults(prop) if value == {} and "properties" in prop else value
    return out


def test_server_side_defaults_parse_to_the_model_defaults():
    spec_schema = yaml.safe_load(crd.render())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_schema = spec_schema["properties"]["spec"]
    served = {**_schema_defaults(spec_schema), "model": "densenet121", "data": {"synthetic": True}}
    assert parse_spec(served, defaults=TrainerDefaults(image="i")) == parse_spec(
        {"model": "densenet121", "data": {"synthetic": True}}, defaults=TrainerDefaults(image="i")
    )


def test_every_recipe_field_is_in_the_crd_with_its_default():
    recipe = yaml.safe_load(crd.render())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    recipe = recipe["properties"]["spec"]["properties"]["recipe"]["properties"]
    assert recipe["epochs"]["default"] == Recipe().epochs
    assert recipe["seed"] == {
        "type": "integer", "description": recipe["seed"]["description"],
        "minimum": 0, "maximum": 2**31 - 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "densenet121"}, "spec.data is required"),
        ({"model": "densenet121", "data": {"synthetic": True}, "replicas": "2"}, "integer"),
        ({"model": "densenet121", "data": {"synthetic": True}, "recipe": {"seed": -1}},
         "spec.recipe.seed must be at least 0"),
        ({"model": "densenet121", "data": {"synthetic": True}, "device": {"resourceName": "a b"}},
         "spec.device.resourceName"),
    ],
)  # fmt: skip
def test_the_model_refuses_what_the_schema_refuses(body, message):
    with pytest.raises(SpecError, match=message):
        parse(TrainingSpec, body, "spec")
