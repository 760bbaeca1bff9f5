"""Every option of every stage is documented where it is declared (pydantic attribute docstrings), and
`medo1 config show` prints each one with its type, default, the recipe's value and that description."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from medo1.config import STAGE_CONFIGS, stage_config_class


def reachable_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """`model` and every pydantic model reachable through its fields' annotations (unions and lists included)."""
    seen: list[type[BaseModel]] = []
    todo = [model]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        for field in current.model_fields.values():
            stack = [field.annotation]
            while stack:
                annotation = stack.pop()
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    todo.append(annotation)
                stack.extend(typing.get_args(annotation))
    return seen


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
def test_every_config_field_is_documented(stage):
    undocumented = [
        f"{model.__module__}.{model.__qualname__}.{name}"
        for model in reachable_models(stage_config_class(stage))
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not undocumented, "fields without a docstring line under them: " + ", ".join(undocumented)


def test_every_pydantic_model_in_the_package_documents_its_fields():
    """Models no stage config reaches (the planner's, the doctor's, the chat client's) count too."""
    import importlib
    import pkgutil

    import medo1

    for module in pkgutil.walk_packages(medo1.__path__, "medo1."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)

    def subclasses(model: type[BaseModel]):
        for child in model.__subclasses__():
            yield child
            yield from subclasses(child)

    models = {model for model in subclasses(BaseModel) if model.__module__.startswith("medo1.")}
    assert len(models) > 20
    undocumented = sorted(
        f"{model.__module__}.{model.__qualname__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    )
    assert not undocumented, "fields without a docstring line under them: " + ", ".join(undocumented)


def test_a_field_without_a_docstring_is_caught():
    from medo1.config import Section

    class Careless(Section):
        documented: int = 1
        """Has a docstring."""
        bare: int = 2

    assert [name for name, field in Careless.model_fields.items() if not field.description] == ["bare"]
    assert "Careless" in [model.__name__ for model in reachable_models(Careless)]
