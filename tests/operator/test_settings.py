"""The operator's trainer defaults (settings.py): the image of each product's family, the
rank table's host_ip by the image pair's CANN, the user Ascend pods run as; and how parse_spec
applies them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from densenet_contract import cann
from densenet_operator.ascend.products import PRODUCTS
from densenet_operator.settings import (
    DEFAULT_TRAINER_IMAGE,
    PROJECT_VERSION,
    RunAs,
    SettingsEnv,
    TrainerDefaults,
)
from densenet_operator.spec import parse_spec

FAMILY_IMAGES = {"910": "reg/trainer:1-910", "910b": "reg/trainer:1-910b", "a3": "reg/trainer:1-a3"}
DEFAULTS = TrainerDefaults(image="reg/trainer:1", ascend_images=FAMILY_IMAGES)


def spec(**fields: Any) -> Any:
    body = {"model": "densenet121", "data": {"synthetic": True}, **fields}
    return parse_spec(body, defaults=DEFAULTS)


def ascend(product: str, **fields: Any) -> Any:
    return spec(**{"device": {"ascend": {"product": product}}, "devicesPerReplica": 2, **fields})


def test_every_product_has_an_image_family() -> None:
    assert set(cann.FAMILY_OF_PRODUCT) == set(PRODUCTS)
    assert set(cann.FAMILY_OF_PRODUCT.values()) == set(cann.ASCEND_FAMILIES)


@pytest.mark.parametrize(
    ("product", "family"),
    [("910", "910"), ("910b", "910b"), ("910b-16", "910b"), ("a3", "a3"), ("a3-superpod", "a3")],
)
def test_an_ascend_job_gets_the_image_of_its_products_family(product: str, family: str) -> None:
    job = ascend(product) if product != "a3-superpod" else ascend(product, devicesPerReplica=16)
    assert job.image == FAMILY_IMAGES[family]


def test_cpu_and_cuda_jobs_keep_the_plain_image_and_spec_image_wins_everywhere() -> None:
    assert spec(device={"type": "cpu"}).image == "reg/trainer:1"
    assert spec(device={"type": "cuda"}, devicesPerReplica=1).image == "reg/trainer:1"
    assert ascend("910b", image="mine:2").image == "mine:2"
    assert spec(device={"type": "cpu"}, image="mine:2").image == "mine:2"


def test_a_family_without_an_image_takes_the_plain_one() -> None:
    defaults = TrainerDefaults(image="only:1", ascend_images={"910": "x:910"})
    assert defaults.image_for("ascend", "910") == "x:910"
    assert defaults.image_for("ascend", "a3") == "only:1"


def test_unset_environment_gives_the_charts_defaults() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == PROJECT_VERSION
    defaults = TrainerDefaults.from_env({})
    assert defaults.image == DEFAULT_TRAINER_IMAGE == "densenet-trainer:0.1.0"
    assert dict(defaults.ascend_images) == {
        "910": "densenet-trainer:0.1.0-910",
        "910b": "densenet-trainer:0.1.0-910b",
        "a3": "densenet-trainer:0.1.0-a3",
    }
    assert defaults.rank_table_host_ip is None
    assert defaults.ascend_run_as == RunAs(uid=1000, gid=1000)


def test_the_environment_sets_each_default() -> None:
    env = {
        SettingsEnv.TRAINER_IMAGE: "reg/t:2",
        "DENSENET_TRAINER_IMAGE_910": "reg/t:2-910",
        "DENSENET_TRAINER_IMAGE_910B": "reg/t:2-910b",
        "DENSENET_TRAINER_IMAGE_A3": "reg/t:2-a3",
        SettingsEnv.RANK_TABLE_HOST_IP: "false",
        SettingsEnv.ASCEND_RUN_AS_USER: "1001",
        SettingsEnv.ASCEND_RUN_AS_GROUP: "1002",
    }
    defaults = TrainerDefaults.from_env(env)
    assert defaults.image == "reg/t:2"
    assert [defaults.image_for("ascend", p) for p in ("910", "910b-16", "a3-superpod")] == [
        "reg/t:2-910", "reg/t:2-910b", "reg/t:2-a3",
    ]  # fmt: skip
    assert defaults.rank_table_host_ip is False
    assert defaults.ascend_run_as == RunAs(uid=1001, gid=1002)
    assert "Ascend pods run as 1001:1002" in defaults.describe()


@pytest.mark.parametrize(
    ("name", "value"),
    [(SettingsEnv.RANK_TABLE_HOST_IP, "yes"), (SettingsEnv.ASCEND_RUN_AS_USER, "-1"),
     (SettingsEnv.ASCEND_RUN_AS_GROUP, "HwHiAiUser")],
)  # fmt: skip
def test_a_wrong_setting_stops_the_operator_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        TrainerDefaults.from_env({name: value})


def test_host_ip_defaults_to_what_the_image_pairs_cann_takes() -> None:
    for product in PRODUCTS:
        family = cann.FAMILY_OF_PRODUCT[product]
        expected = cann.rank_table_host_ip_safe(cann.IMAGE_PAIRS[family].cann)
        assert TrainerDefaults().rank_table_host_ip_for(product) is expected
    # The pairs are CANN 8.3.RC1, the first whose HCCL takes host_ip as information only.
    assert ascend("910").rank_table_host_ip is True


def test_host_ip_setting_and_spec_field_override_the_pairs_default() -> None:
    off = TrainerDefaults(image="i", rank_table_host_ip=False)
    body = {"model": "densenet121", "data": {"synthetic": True}}
    assert parse_spec(body, defaults=off).rank_table_host_ip is False
    assert parse_spec(body, defaults=off).rank_table.host_ip is False  # resolved once, here
    forced = {**body, "rankTable": {"hostIp": True}}
    assert parse_spec(forced, defaults=off).rank_table_host_ip is True
    assert ascend("910b", rankTable={"hostIp": False}).rank_table_host_ip is False
