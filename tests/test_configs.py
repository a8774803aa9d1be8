"""Each image task config inherits its low-dim twin (hydra defaults list) and states only what differs; the composed
config keeps the image config's own obs keys, in its own order (the observation encoder iterates them in order)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

TASK_DIR = Path(__file__).resolve().parents[1] / "configs" / "task"
IMAGE_TWINS = {
    "lift_image": "lift",
    "can_image": "can",
    "square_image": "square",
    "stack_image": "stack",
    "blockpush_image": "blockpush",
    "metaworld_image": "metaworld",
    "metaworld_mt": "metaworld_mt_lowdim",
}
# What an image variant may set differently from its twin (dotted keys; shape_meta.obs is compared separately).
IMAGE_SETTINGS = {"name", "obs_type", "store", "env_kwargs.cameras", "env_kwargs.image_size"}
# Deliberate differences beyond those: blockpush_image trains without goal conditioning (its obs lack block_pos).
DELIBERATE = {"blockpush_image": {"env_kwargs.goal_conditioned", "goal_keys"}}
TASKS = sorted(p.stem for p in TASK_DIR.glob("*.yaml") if not p.stem.startswith("_"))


@pytest.fixture(scope="module")
def composed() -> dict[str, dict]:
    """Every task as `vmp-train task=<name>` composes it (unresolved: interpolations compared as written)."""
    out = {}
    with initialize_config_module(config_module="vmp.configs", version_base=None):
        for name in TASKS:
            out[name] = OmegaConf.to_container(compose(config_name="train", overrides=[f"task={name}"]).task)
    return out


def _flat(node, prefix=""):
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def test_every_image_task_has_a_twin():
    assert set(IMAGE_TWINS) <= set(TASKS) and set(IMAGE_TWINS.values()) <= set(TASKS)
    image_like = {t for t in TASKS if OmegaConf.load(TASK_DIR / f"{t}.yaml").get("obs_type") == "image"}
    assert image_like <= set(IMAGE_TWINS), f"image tasks without a low-dim twin here: {image_like - set(IMAGE_TWINS)}"


@pytest.mark.parametrize("image,twin", sorted(IMAGE_TWINS.items()))
def test_image_task_inherits_its_twin(image, twin, composed):
    own = OmegaConf.load(TASK_DIR / f"{image}.yaml")
    assert list(own.defaults)[0] == twin, f"{image}.yaml should inherit {twin} first in its defaults list"
    cfg, base = composed[image], composed[twin]
    assert cfg["obs_type"] == "image" and base["obs_type"] == "lowdim"

    # Everything but the image settings (and the documented deliberate differences) equals the twin's.
    allowed = IMAGE_SETTINGS | DELIBERATE.get(image, set())
    strip = lambda d: {k: v for k, v in _flat(d).items() if k not in allowed and not k.startswith("shape_meta.obs.")}
    assert strip(cfg) == strip(base)

    # The image keys are new; keys both observe are specified alike.
    obs, base_obs = cfg["shape_meta"]["obs"], base["shape_meta"]["obs"]
    images = [k for k, spec in obs.items() if spec["type"] == "rgb"]
    assert images and not set(images) & set(base_obs), (images, list(base_obs))
    assert all(obs[k] == base_obs[k] for k in set(obs) & set(base_obs))


@pytest.mark.parametrize("image", sorted(IMAGE_TWINS))
def test_image_task_obs_keys_are_its_own_in_order(image, composed):
    """The twin's low-dim keys neither linger (object, state, ...) nor come first: the order is the image config's
    (its own, or that of the camera base it lists after the twin, e.g. _robosuite_image)."""
    own = OmegaConf.load(TASK_DIR / f"{image}.yaml")
    source = own if "shape_meta" in own else OmegaConf.load(TASK_DIR / f"{list(own.defaults)[1]}.yaml")
    assert list(composed[image]["shape_meta"]["obs"]) == list(source.shape_meta.obs)
    assert list(composed[image]["shape_meta"]) == ["obs", "action"]


@pytest.mark.parametrize("name", TASKS)
def test_load_task_cfg_matches_hydra_compose(name, composed):
    """vmp.sim.load_task_cfg (vmp-deploy, bench, sim tests) reads the same task config hydra's apps compose."""
    from vmp.sim import load_task_cfg

    cfg = load_task_cfg(name)
    assert OmegaConf.to_container(cfg) == composed[name]
    assert list(cfg.shape_meta.obs) == list(composed[name]["shape_meta"]["obs"])
