"""Unit tests for medo1.config: YAML recipes, `--set` overrides, and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from medo1.config import (
    ConfigError,
    Section,
    apply_overrides,
    dump_config,
    load_config,
    parse_override,
)

RECIPES = Path(__file__).parent.parent / "recipes"


class Inner(Section):
    steps: int = 10
    lr: float = 1e-3
    tags: list[str] = []
    flag: bool = False
    name: str = "base"


class Extra(Section):
    depth: int = 1


class Cfg(Section):
    title: str
    train: Inner = Inner()
    extra: Extra | None = None


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- recipe loading


def test_yaml_recipe_loads_into_model(tmp_path):
    recipe = write(
        tmp_path,
        "r.yaml",
        "title: demo\ntrain:\n  steps: 7\n  lr: 2.5e-4\n  tags: [a, b]\n  flag: true\n",
    )
    cfg = load_config(Cfg, recipe)
    assert cfg.title == "demo"
    assert cfg.train.steps == 7
    assert cfg.train.lr == pytest.approx(2.5e-4)
    assert cfg.train.tags == ["a", "b"]
    assert cfg.train.flag is True
    assert cfg.train.name == "base"  # default kept
    assert cfg.extra is None


def test_load_config_without_recipe_uses_overrides_only():
    cfg = load_config(Cfg, None, ["title=x"])
    assert cfg.title == "x"
    assert cfg.train == Inner()


def test_empty_recipe_file_is_empty_mapping(tmp_path):
    recipe = write(tmp_path, "empty.yaml", "")
    cfg = load_config(Cfg, recipe, ["title=t"])
    assert cfg.title == "t"


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "item, path, value",
    [
        ("train.steps=5", ["train", "steps"], 5),
        ("train.lr=0.25", ["train", "lr"], 0.25),
        ("train.lr=5.0e-6", ["train", "lr"], 5.0e-6),
        ("train.tags=[x, y, z]", ["train", "tags"], ["x", "y", "z"]),
        ("train.flag=true", ["train", "flag"], True),
        ("train.flag=false", ["train", "flag"], False),
        ("train.name=hello", ["train", "name"], "hello"),
        ("a=b=c", ["a"], "b=c"),  # only the first '=' splits
        ("title=", ["title"], ""),
        (" train.steps =3", ["train", "steps"], 3),
        ("x.y=null", ["x", "y"], None),
    ],
)
def test_parse_override_typed_values(item, path, value):
    got_path, got_value = parse_override(item)
    assert got_path == path
    assert got_value == value
    assert type(got_value) is type(value)


@pytest.mark.parametrize("item", ["no_equals_sign", "=5", "  =5"])
def test_parse_override_rejects_malformed(item):
    with pytest.raises(ConfigError) as err:
        parse_override(item)
    assert repr(item) in str(err.value)


def test_apply_overrides_creates_nested_sections():
    data = {"keep": 1}
    out = apply_overrides(data, ["a.b.c=3", "a.b.d=[1, 2]", "a.e=on"])
    assert out == {"keep": 1, "a": {"b": {"c": 3, "d": [1, 2]}, "e": True}}


def test_apply_overrides_replaces_existing_and_fills_null_section():
    data = {"train": None, "other": {"x": 1, "y": 2}}
    out = apply_overrides(data, ["train.steps=4", "other.x=9"])
    assert out == {"train": {"steps": 4}, "other": {"x": 9, "y": 2}}


def test_apply_overrides_later_override_wins():
    assert apply_overrides({}, ["a.b=1", "a.b=2"]) == {"a": {"b": 2}}


def test_apply_overrides_into_scalar_is_error():
    with pytest.raises(ConfigError) as err:
        apply_overrides({"title": "x"}, ["title.sub=1"])
    assert "'title' is not a section" in str(err.value)


def test_overrides_are_applied_on_top_of_recipe_with_types(tmp_path):
    recipe = write(tmp_path, "r.yaml", "title: demo\ntrain:\n  steps: 7\n")
    cfg = load_config(
        Cfg,
        recipe,
        ["train.steps=12", "train.lr=0.5", "train.tags=[p, q]", "train.flag=true", "extra.depth=4"],
    )
    assert cfg.train.steps == 12 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert cfg.train.tags == ["p", "q"]
    assert cfg.train.flag is True
    # `extra` is absent from the recipe: the dotted override creates the section.
    assert cfg.extra == Extra(depth=4)


def test_exponent_without_dot_still_becomes_float(tmp_path):
    # YAML 1.1 reads "1e-3" as a string; the float field must still accept it.
    cfg = load_config(Cfg, None, ["title=t", "train.lr=1e-3"])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert isinstance(cfg.train.lr, float)


# --------------------------------------------------------------------------- errors


def test_unknown_key_in_recipe_names_key_path(tmp_path):
    recipe = write(tmp_path, "r.yaml", "title: demo\ntrain:\n  stepz: 7\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, recipe)
    msg = str(err.value)
    assert "train.stepz" in msg
    assert str(recipe) in msg


def test_unknown_key_via_override_names_key_path():
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, None, ["title=t", "train.bogus=1"])
    assert "train.bogus" in str(err.value)


def test_unknown_top_level_section_rejected():
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, None, ["title=t", "nosuch.thing=1"])
    assert "nosuch" in str(err.value)


def test_wrong_type_names_path(tmp_path):
    recipe = write(tmp_path, "r.yaml", "title: demo\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, recipe)
    msg = str(err.value)
    assert "train.steps" in msg
    assert "integer" in msg


def test_wrong_type_via_override_names_path():
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, None, ["title=t", "train.tags=notalist"])
    assert "train.tags" in str(err.value)


def test_missing_required_field_named():
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, None, [])
    assert "title" in str(err.value)


def test_missing_recipe_file_names_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, missing)
    assert str(missing) in str(err.value)
    assert "not found" in str(err.value)


def test_invalid_yaml_names_file(tmp_path):
    recipe = write(tmp_path, "broken.yaml", "title: demo\ntrain: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, recipe)
    assert str(recipe) in str(err.value)
    assert "not valid YAML" in str(err.value)


def test_top_level_list_rejected(tmp_path):
    recipe = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as err:
        load_config(Cfg, recipe)
    assert str(recipe) in str(err.value)
    assert "mapping" in str(err.value)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_dump_config_round_trip(tmp_path):
    cfg = load_config(Cfg, None, ["title=t", "train.tags=[a]", "extra.depth=3", "train.lr=0.125"])
    out = tmp_path / "dumped.yaml"
    dump_config(cfg, out)
    assert load_config(Cfg, out) == cfg


# --------------------------------------------------------------------------- shipped recipes


SFT_RECIPES = sorted(RECIPES.glob("sft-*.yaml"))


def test_sft_recipes_exist():
    names = {p.name for p in SFT_RECIPES}
    assert "sft-qwen2.5-7b-8xh100.yaml" in names
    assert "sft-tiny-cpu.yaml" in names


@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=lambda p: p.name)
def test_every_sft_recipe_loads(recipe):
    from medo1.sft.trainer import SFTConfig

    cfg = load_config(SFTConfig, recipe)
    assert isinstance(cfg, SFTConfig)
    assert cfg.model.name_or_path
    assert cfg.data.format == "medical_o1"


def test_7b_recipe_has_reference_hyperparameters():
    from medo1.sft.trainer import SFTConfig

    cfg = load_config(SFTConfig, RECIPES / "sft-qwen2.5-7b-8xh100.yaml")
    t = cfg.train
    assert t.learning_rate == pytest.approx(5e-6)
    assert t.lr_scheduler == "cosine"
    assert t.warmup_ratio == pytest.approx(0.05)
    assert t.weight_decay == pytest.approx(0.1)
    assert t.epochs == 3
    assert t.per_device_batch_size == 2
    assert t.gradient_accumulation_steps == 8
    # global batch 128 on the 8 GPUs the recipe is named for
    assert t.per_device_batch_size * t.gradient_accumulation_steps * 8 == 128
    assert cfg.data.max_length == 8192
    assert t.precision == "bf16"
    assert t.distributed == "deepspeed_zero3"
    assert cfg.data.preset == "en"


def test_sft_recipe_accepts_overrides():
    from medo1.sft.trainer import SFTConfig

    cfg = load_config(
        SFTConfig,
        RECIPES / "sft-tiny-cpu.yaml",
        ["train.epochs=2", "data.limit=8", "lora.enabled=true", "output.report_to=[tensorboard]"],
    )
    assert cfg.train.epochs == 2.0
    assert cfg.data.limit == 8
    assert cfg.lora.enabled is True
    assert cfg.output.report_to == ["tensorboard"]


def test_sft_recipe_rejects_bad_literal():
    from medo1.sft.trainer import SFTConfig

    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, RECIPES / "sft-tiny-cpu.yaml", ["train.precision=fp16"])
    assert "train.precision" in str(err.value)


RL_RECIPES = sorted(RECIPES.glob("rl-*.yaml"))


@pytest.mark.parametrize("recipe", RL_RECIPES, ids=lambda p: p.name)
def test_every_rl_recipe_loads(recipe):
    from medo1.rl.config import RLConfig

    cfg = load_config(RLConfig, recipe)
    assert cfg.data.format == "verifiable"
    assert recipe.name.startswith(f"rl-{cfg.algo}-")


def test_ppo_recipe_has_the_published_settings():
    from medo1.rl.config import RLConfig

    cfg = load_config(RLConfig, RECIPES / "rl-ppo-qwen2.5-7b-8xh100.yaml")
    assert (cfg.sampling.response_length, cfg.sampling.temperature) == (1300, 0.5)
    assert (cfg.ppo.kl_coef, cfg.ppo.ppo_epochs, cfg.ppo.num_mini_batches) == (0.03, 3, 1)
    assert (cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.cliprange, cfg.ppo.cliprange_value) == (1.0, 0.95, 0.2, 0.2)
    assert cfg.train.learning_rate == pytest.approx(5e-7) and cfg.train.warmup_ratio == pytest.approx(0.05)
    assert (cfg.train.per_device_batch_size, cfg.train.gradient_accumulation_steps) == (1, 16)
    assert cfg.train.total_episodes == 20000
    assert cfg.reward.kind == "verifier" and cfg.reward.threshold == pytest.approx(0.4)


def test_grpo_recipe_has_the_fork_settings():
    from medo1.rl.config import RLConfig

    cfg = load_config(RLConfig, RECIPES / "rl-grpo-qwen2.5-7b-8xh100.yaml")
    assert (cfg.grpo.num_generations, cfg.grpo.beta, cfg.train.learning_rate) == (8, 0.001, pytest.approx(1e-6))


RL_TINY = Path(__file__).resolve().parents[1] / "recipes" / "rl-ppo-tiny-cpu.yaml"


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.warmup_ratio=-0.1", "train.warmup_ratio"),
        ("train.total_episodes=0", "train.total_episodes"),
        ("train.eval_fraction=1", "train.eval_fraction"),
        ("sampling.top_p=0", "sampling.top_p"),
        ("sampling.response_length=0", "sampling.response_length"),
        ("ppo.gamma=1.5", "ppo.gamma"),
        ("ppo.ppo_epochs=0", "ppo.ppo_epochs"),
        ("data.max_length=0", "data.max_length"),
        ("output.logging_steps=0", "output.logging_steps"),
    ],
)
def test_rl_bounds_refuse_bad_values_naming_the_field(override, field):
    from medo1.rl.config import RLConfig

    with pytest.raises(ConfigError, match=f"{field.replace('.', '[.]')}: Input should be"):
        load_config(RLConfig, RL_TINY, [override])


@pytest.mark.parametrize(
    "stage, overrides, field",
    [
        ("eval", ["model=m", "limit=0"], "limit"),
        ("eval", ["model=m", "max_new_tokens=0"], "max_new_tokens"),
        (
            "translate",
            ["input=a.json", "output=b.jsonl", "target_language=Japanese", "validation_retries=-1"],
            "validation_retries",
        ),
        (
            "translate",
            [
                "input=a.json",
                "output=b.jsonl",
                "target_language=",
            ],
            "target_language",
        ),
        ("upload", ["model_dir=x", "repo_id=me/m", "retries=-1"], "retries"),
    ],
)
def test_service_stage_bounds_refuse_bad_values(stage, overrides, field):
    from medo1.config import stage_config_class

    with pytest.raises(ConfigError, match=f"{field}: "):
        load_config(stage_config_class(stage), None, overrides)


def test_sft_and_rl_share_one_base_for_the_training_options():
    from medo1.config import TrainingOptions
    from medo1.rl.config import RLTrainConfig
    from medo1.sft.config import TrainConfig

    shared = set(TrainingOptions.model_fields)
    assert issubclass(TrainConfig, TrainingOptions) and issubclass(RLTrainConfig, TrainingOptions)
    assert shared <= set(TrainConfig.model_fields) and shared <= set(RLTrainConfig.model_fields)
    assert RLTrainConfig().learning_rate == 5e-7 and TrainConfig().learning_rate == 5e-6


# --------------------------------------------------------------------------- a mapping given to --set


def test_a_mapping_for_a_section_merges_into_the_recipes_section():
    """`--set 'train={epochs: 2}'` once replaced the recipe's whole train section (lr 1e-3 became the 5e-6 default)."""
    from medo1.sft.config import SFTConfig

    recipe = RECIPES / "sft-tiny-cpu.yaml"
    config = load_config(SFTConfig, recipe, ["train={epochs: 2}"])
    assert config.train.epochs == 2
    assert config.train.learning_rate == load_config(SFTConfig, recipe).train.learning_rate == 1e-3
    assert config.train.per_device_batch_size == 4  # the recipe's, not the default 2
    nested = load_config(SFTConfig, recipe, ["train={epochs: 3, learning_rate: 2e-4}", "output={save_steps: 7}"])
    assert (nested.train.epochs, nested.train.learning_rate, nested.output.save_steps) == (3, 2e-4, 7)
    assert nested.output.dir == load_config(SFTConfig, recipe).output.dir


def test_a_mapping_for_a_plain_mapping_field_replaces_it_and_another_reward_kind_replaces_the_reward(tmp_path):
    from medo1.eval.config import EvalConfig
    from medo1.rl.config import RLConfig

    recipe = write(tmp_path, "eval.yaml", "endpoint: http://e/v1\nbenchmarks: {a: a.json, b: b.json}\n")
    assert load_config(EvalConfig, recipe, ["benchmarks={c: c.json}"]).benchmarks == {"c": "c.json"}
    rl_recipe = RECIPES / "rl-ppo-tiny-cpu.yaml"
    verifier = load_config(RLConfig, rl_recipe, ["reward={kind: verifier, model: v}"]).reward
    assert (verifier.kind, verifier.model) == ("verifier", "v")
    same_kind = load_config(RLConfig, rl_recipe, ["reward={reward_wrong: 0.2}"]).reward
    assert same_kind.kind == load_config(RLConfig, rl_recipe).reward.kind and same_kind.reward_wrong == 0.2


def test_a_mapping_merges_into_a_section_of_a_toy_config(tmp_path):
    recipe = write(tmp_path, "r.yaml", "title: t\ntrain: {steps: 5, lr: 0.5}\n")
    config = load_config(Cfg, recipe, ["train={steps: 9}"])
    assert (config.train.steps, config.train.lr) == (9, 0.5)
    assert apply_overrides({"train": {"steps": 5, "lr": 0.5}}, ["train={steps: 9}"]) == {"train": {"steps": 9}}
