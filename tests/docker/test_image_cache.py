"""hack/images.py's content hash and cache: what changes an image's tag, what does not, and that
an archived image is reused without building (no buildah is called for a cached image)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import images
import pytest
from images import RECIPES, ImageRecipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A build context like the repository's: Dockerfiles, pyproject.toml, README.md, packages."""
    root = tmp_path / "repo"
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "docker", root / "docker")
    for package in ("operator/densenet_operator", "trainer/densenet_trainer"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text('"""A package."""\n')
        (root / package / "cli.py").write_text("def main() -> int:\n    return 0\n")
    return root


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_hash_is_stable_and_changes_with_each_input(tree: Path, name: str) -> None:
    recipe = RECIPES[name]
    before = images.content_hash(recipe, tree)
    assert images.content_hash(recipe, tree) == before
    changed = {}
    for path in (recipe.dockerfile, "pyproject.toml", ".dockerignore",
                 "operator/densenet_operator/cli.py", "trainer/densenet_trainer/cli.py"):  # fmt: skip
        original = (tree / path).read_bytes()
        (tree / path).write_bytes(original + b"\n# changed\n")
        changed[path] = images.content_hash(recipe, tree)
        (tree / path).write_bytes(original)
    assert before not in changed.values(), changed
    assert len(set(changed.values())) == len(changed)
    assert images.content_hash(recipe, tree) == before
    # The README reaches the image only as the wheel's description: no rebuild for it.
    (tree / "README.md").write_text("# another README\n")
    assert images.content_hash(recipe, tree) == before


def test_a_new_source_file_changes_the_hash_and_caches_do_not(tree: Path) -> None:
    recipe = RECIPES["operator"]
    before = images.content_hash(recipe, tree)
    package = tree / "operator" / "densenet_operator"
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0bytecode")
    (package / "stray.pyc").write_bytes(b"\0bytecode")
    (tree / "operator" / ".mypy_cache").mkdir()
    (tree / "operator" / ".mypy_cache" / "x.json").write_text("{}")
    assert images.content_hash(recipe, tree) == before
    (package / "new.py").write_text("X = 1\n")
    assert images.content_hash(recipe, tree) != before


def test_the_base_and_build_args_are_part_of_the_hash(tree: Path) -> None:
    recipe = RECIPES["trainer"]
    other_base = dataclasses.replace(recipe.base, packages=(*recipe.base.packages, "python3-scipy"))
    assert other_base.digest() != recipe.base.digest()
    assert other_base.root_digest() != recipe.base.root_digest()
    # Another setup step: another base image, made from the same cached Debian root.
    other_setup = dataclasses.replace(recipe.base, setup=(*recipe.base.setup, "true"))
    assert other_setup.root_digest() == recipe.base.root_digest()
    assert other_setup.ref != recipe.base.ref
    assert other_base.ref != recipe.base.ref
    with_other_base = dataclasses.replace(recipe, base=other_base)
    with_npu = dataclasses.replace(recipe, build_args=(("EXTRAS", "trainer,npu"),))
    hashes = {images.content_hash(r, tree) for r in (recipe, with_other_base, with_npu)}
    assert len(hashes) == 3


def test_the_recipes_build_the_dockerfiles_through_their_base_arguments() -> None:
    operator, trainer = RECIPES["operator"], RECIPES["trainer"]
    assert operator.all_build_args() == {"PYTHON_IMAGE": operator.base.ref}
    assert trainer.all_build_args() == {
        "BASE_IMAGE": trainer.base.ref,
        "EXTRAS": "trainer",
        "ASCEND_FAMILY": "none",  # the CPU flavour declares no Ascend pair
        "CANN_VERSION": "none",
    }
    for recipe in (operator, trainer):
        assert f"ARG {recipe.base_arg}=" in (ROOT / recipe.dockerfile).read_text()
        assert recipe.base.ref.startswith("localhost/densenet-base-")
    # One Debian root (one mmdebstrap) for both; torch reaches the trainer only through its
    # extra, from PyPI, and the operator's image never gets it.
    assert operator.base.root_digest() == trainer.base.root_digest()
    assert operator.base.ref != trainer.base.ref
    assert not [p for p in (*operator.base.packages, *trainer.base.packages) if "torch" in p]


def test_a_cached_archive_is_reused_without_building(tree: Path, tmp_path: Path) -> None:
    recipe: ImageRecipe = RECIPES["operator"]
    cache = tmp_path / "cache"
    cache.mkdir()
    ref = images.image_ref(recipe, tree)
    assert ref == f"localhost/densenet-operator:{images.content_hash(recipe, tree)}"
    archive = images.archive_path(ref, cache)
    assert archive.parent == cache and archive.name.endswith(".tar")
    archive.write_bytes(b"x" * 1234)
    # A missing base, missing tools: any build would fail loudly, a cached image needs neither.
    image = images.ensure_image(recipe, cache, tree)
    assert (image.ref, image.archive, image.size_bytes, image.cached) == (ref, archive, 1234, True)
    # Another source: another ref, another archive, not the cached one.
    (tree / "operator" / "densenet_operator" / "cli.py").write_text("X = 2\n")
    assert images.archive_path(images.image_ref(recipe, tree), cache) != archive


def test_unknown_image_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown images"):
        images.ensure_images(["operator", "controller"])


def test_refs_are_printed_without_building(capsys: pytest.CaptureFixture[str]) -> None:
    assert images.main(["refs"]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert lines == {name: images.image_ref(recipe) for name, recipe in RECIPES.items()}


def test_a_build_keeps_its_archive_and_no_older_one(tmp_path: Path) -> None:
    """A trainer archive is GBs: after a build only the new one (and its log) is kept, and
    other images' archives are left alone."""
    for age, tag in enumerate(["new", "recent", "old", "oldest"]):
        for suffix in (".tar", ".log"):
            path = tmp_path / f"densenet-trainer-{tag}{suffix}"
            path.write_text(tag)
            os.utime(path, (1000.0 - age, 1000.0 - age))
    (tmp_path / "densenet-trainer-failed.log").write_text("a build that did not finish")
    (tmp_path / "densenet-operator-old.tar").write_text("another image's")
    keep = tmp_path / "densenet-trainer-new.tar"
    images._prune(tmp_path.glob("densenet-trainer-*.tar"), keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "densenet-operator-old.tar", "densenet-trainer-new.log", "densenet-trainer-new.tar",
    ]  # fmt: skip
