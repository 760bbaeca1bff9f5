"""The `x-kubernetes-validations` (CEL) rules of every CRD in tests/fixtures/crds (the Trainer v2 CRDs
and PyTorchJob), evaluated on every object the chart and the launcher render, as the API server would
on create and on an update of the same rendering; each rule shown to catch a planted violation.

The library: `common-expression-language` (PyPI; Python bindings of the Rust `cel` crate). Of the two
maintained CEL implementations on PyPI it is the one released most recently (0.10.0, 2026-09; cel-python's
last is 0.5.0, 2026-01), and it evaluates every construct these rules use: `has()`, `size()`, the
`filter` / `exists` / `all` macros, `in` and RE2 `matches()`. Kubernetes' own CEL extension libraries
(`isSorted`, `quantity`, `url`...) are in no rule here.

Transition rules (`oldSelf`) run only on an update where the field exists in both objects; they are
evaluated on (old, new) pairs. Values are correlated by path (map keys, list indices), which is how the
API server correlates them for maps and `x-kubernetes-list-type: map` lists; every transition rule here
sits on an object field or on items reached through such fields.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from medo1 import chart
from medo1.launch.rendering import build_pytorchjob, stage_values
from medo1.launch.trainjob import build_trainjob
from tests.conftest import REPO

CRDS = REPO / "tests" / "fixtures" / "crds"


@dataclass(frozen=True)
class Rule:
    kind: str
    path: tuple[str, ...]
    """Schema path from the object's root: field names, `[]` for list items, `{}` for map values."""
    rule: str
    message: str

    @property
    def transition(self) -> bool:
        return re.search(r"\boldSelf\b", self.rule) is not None

    @property
    def where(self) -> str:
        return self.kind + "".join(p if p in ("[]", "{}") else f".{p}" for p in self.path)


def schema_rules(kind: str, schema: dict, path: tuple[str, ...] = ()) -> list[Rule]:
    rules = [Rule(kind, path, r["rule"], r.get("message", "")) for r in schema.get("x-kubernetes-validations", [])]
    for name, sub in schema.get("properties", {}).items():
        rules += schema_rules(kind, sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        rules += schema_rules(kind, schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        rules += schema_rules(kind, schema["additionalProperties"], (*path, "{}"))
    return rules


def crd_rules(crd_dir: Path) -> dict[str, list[Rule]]:
    rules: dict[str, list[Rule]] = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            rules.setdefault(kind, []).extend(schema_rules(kind, version["schema"]["openAPIV3Schema"]))
    return rules


RULES = crd_rules(CRDS)


def values_at(obj, path: tuple[str, ...], at: tuple = ()):
    """(concrete location, value) for every value the schema path reaches in obj."""
    if not path:
        yield at, obj
        return
    head, rest = path[0], path[1:]
    if head == "[]" and isinstance(obj, list):
        for index, item in enumerate(obj):
            yield from values_at(item, rest, (*at, index))
    elif head == "{}" and isinstance(obj, dict):
        for key, item in obj.items():
            yield from values_at(item, rest, (*at, key))
    elif isinstance(obj, dict) and head in obj:
        yield from values_at(obj[head], rest, (*at, head))


def value_at(obj, location: tuple):
    for part in location:
        if isinstance(obj, dict) and part in obj or isinstance(obj, list) and isinstance(part, int) and part < len(obj):
            obj = obj[part]
        else:
            return None, False
    return obj, True


def evaluate(rule: Rule, new: dict, old: dict | None = None) -> list[str]:
    """Violations of one rule: `<where> at <location>: <message>`."""
    import cel

    program = cel.compile(rule.rule)
    found = []
    for location, value in values_at(new, rule.path):
        variables = {"self": value}
        if rule.transition:
            if old is None:
                continue  # a create: transition rules do not run
            previous, present = value_at(old, location)
            if not present:
                continue
            variables["oldSelf"] = previous
        if program.execute(variables) is not True:
            found.append(f"{rule.where} at {'/'.join(map(str, location))}: {rule.message}")
    return found


def violations(obj: dict, old: dict | None = None) -> list[str]:
    return [v for rule in RULES.get(obj["kind"], []) for v in evaluate(rule, obj, old)]


def rendered_objects():
    """Every Kubeflow object the chart renders for each profile and a matrix of values, the TrainJobs
    the launcher sends through the SDK, and the README's TrainJob."""
    cases = {f"profile:{p}": chart.load_profile(p) for p in chart.profiles()}
    cases |= {
        "trainjob-backend-two-nodes": {
            "backend": "trainjob",
            "cluster": {"nodes": 2},
            "stages": {"rl": {"enabled": True}},
        },
        "runtimes-with-initializers": {"runtimes": {"enabled": True, "initializers": {"enabled": True}}},
        "pytorchjob-two-nodes": {"cluster": {"nodes": 2}, "kueue": {"queueName": "h100"}},
    }
    for case, values in cases.items():
        for obj in chart.render_chart(values):
            if obj["kind"] in RULES:
                yield f"{case} {obj['kind']}/{obj['metadata']['name']}", obj
    for stage, runtime, profile in [
        ("sft", None, "h100-1node"),
        ("rl", "medo1-grpo", "h100-2nodes"),
        ("eval", None, None),
        ("sft", None, "cpu-smoke"),
    ]:
        job = build_trainjob(stage, stage_values(stage, profile=profile), runtime=runtime, timeout_s=3600)
        yield f"launcher TrainJob {stage} on {job['spec']['runtimeRef']['name']}", job
    section = (REPO / "README.md").read_text().split("## Kubeflow Trainer v2\n", 1)[1].split("\n## ", 1)[0]
    yield "README TrainJob", yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])


RENDERED = list(rendered_objects())


def test_the_fixture_crds_are_the_shared_ones_and_have_rules():
    shared = Path("/work/shared/crds")
    if shared.is_dir():
        for path in shared.glob("*.yaml"):
            assert (CRDS / path.name).read_bytes() == path.read_bytes()
    assert {kind: len(rules) for kind, rules in RULES.items()} == {
        "PyTorchJob": 1,
        "ClusterTrainingRuntime": 12,
        "TrainingRuntime": 12,
        "TrainJob": 20,
    }
    import cel

    for rules in RULES.values():
        for rule in rules:
            cel.compile(rule.rule)  # every rule parses


def test_every_kind_with_rules_is_rendered():
    assert {obj["kind"] for _, obj in RENDERED} == set(RULES)


@pytest.mark.parametrize("case,obj", RENDERED, ids=[case for case, _ in RENDERED])
def test_every_rendered_object_passes_every_rule_on_create_and_on_an_unchanged_update(case, obj):
    assert violations(obj) == []
    assert violations(obj, old=copy.deepcopy(obj)) == []


def set_at(obj: dict, path: tuple[str, ...], value) -> None:
    """Put `value` where the schema path leads, creating what is missing (one list item, map key `x`)."""
    head, rest = path[0], path[1:]
    if head == "[]":
        if not obj:
            obj.append({} if rest else value)
        for index in range(len(obj)):
            if rest:
                set_at(obj[index], rest, value)
            else:
                obj[index] = value
        return
    key = "x" if head == "{}" else head
    if not rest:
        obj[key] = value
        return
    if key not in obj or not isinstance(obj[key], (dict, list)):
        obj[key] = [] if rest[0] == "[]" else {}
    set_at(obj[key], rest, value)


# Planted violations of the rules that do not compare with oldSelf, by rule text: (path, value) pairs
# put into a rendered object of the rule's kind.
PLANTED = {
    "[has(self.torch), has(self.mpi), has(self.jax), has(self.xgboost),has(self.flux)].filter(x, x).size() <= 1": [
        (("spec", "mlPolicy", "mpi"), {"numProcPerNode": 8})
    ],
    "self >= 1": None,  # per path, below: numProcPerNode of flux / mpi / the TrainJob's trainer
    "!self.exists(c, c == 'node')": [
        (("spec", "mlPolicy", "torch", "envInjection"), {"targets": [{"jobName": "node", "containerNames": ["node"]}]})
    ],
    "!(has(self.startupPolicy) && self.startupPolicy.startupPolicyOrder == 'InOrder' && self.replicatedJobs.exists(x, has(x.dependsOn)))": [
        (("spec", "template", "spec", "startupPolicy"), {"startupPolicyOrder": "InOrder"}),
        (("spec", "template", "spec", "replicatedJobs", "[]", "dependsOn"), [{"name": "node", "status": "Ready"}]),
    ],
    "self.templates.all(t, !has(t.metadata.namespace) || size(t.metadata.namespace) == 0)": [
        (
            ("spec", "template", "spec", "volumeClaimPolicies"),
            [{"templates": [{"metadata": {"name": "w", "namespace": "other"}}]}],
        )
    ],
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')": [(("metadata", "name"), "Medo1_SFT")],
    "size(self.metadata.name) <= 63": [(("metadata", "name"), "m" * 64)],
    "self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')": None,  # per path: a storageUri without a scheme
    "self in ['trainer.kubeflow.org/trainjob-controller', 'kueue.x-k8s.io/multikueue']": [
        (("spec", "managedBy"), "someone/else")
    ],
    "has(self.lastUpdatedTime)": [(("status", "trainerStatus"), {"progressPercentage": 40})],
}


def planted(rule: Rule) -> list[tuple[tuple[str, ...], object]]:
    if rule.rule == "self >= 1" or rule.rule.startswith("self == ''"):
        bad = 0 if rule.rule == "self >= 1" else "Qwen/Qwen2.5-7B-Instruct"
        return [(rule.path, bad)]
    return PLANTED[rule.rule]


def base_object(kind: str) -> dict:
    return copy.deepcopy(next(obj for _, obj in RENDERED if obj["kind"] == kind))


ALL_RULES = [rule for rules in RULES.values() for rule in rules]


@pytest.mark.parametrize("rule", ALL_RULES, ids=[f"{r.where} {r.rule[:40]}" for r in ALL_RULES])
def test_each_rule_catches_a_planted_violation(rule):
    base = base_object(rule.kind)
    if rule.transition:
        # An update that changes the field: the old object had one value, the new one another.
        old, new = copy.deepcopy(base), copy.deepcopy(base)
        set_at(old, rule.path, {"planted": "before"})
        set_at(new, rule.path, {"planted": "after"})
        assert evaluate(rule, new) == []  # not on a create
        assert evaluate(rule, new, old=copy.deepcopy(new)) == []  # nor on an update that keeps it
    else:
        old, new = None, copy.deepcopy(base)
        for path, value in planted(rule):
            set_at(new, path, value)
    caught = evaluate(rule, new, old)
    assert caught and all(c.endswith(rule.message) for c in caught)
    assert evaluate(rule, base, None if old is None else base) == []


def test_an_upgrade_that_changes_a_trainjob_is_refused_so_the_chart_keeps_it():
    """spec.trainer and spec.runtimeRef are immutable: a `helm upgrade` to two nodes could not patch the
    chart's TrainJob in place. It was a hook that the upgrade deleted and created again, restarting the
    training; now it is a release object the chart renders back as it is while it exists (issue 26, item 1;
    tests/test_helm_lifecycle.py upgrades it with real Helm against a stand-in that refuses the change)."""
    one = next(o for o in chart.render_chart({"backend": "trainjob"}) if o["kind"] == "TrainJob")
    two = next(
        o for o in chart.render_chart({"backend": "trainjob", "cluster": {"nodes": 2}}) if o["kind"] == "TrainJob"
    )
    assert violations(two, old=one) == ["TrainJob.spec.trainer at spec/trainer: field is immutable"]
    assert "helm.sh/hook" not in one["metadata"].get("annotations", {})


def test_pytorchjob_queue_is_immutable_on_update():
    job = build_pytorchjob("sft", {"cluster": {"nodes": 2}})
    job["spec"]["runPolicy"]["schedulingPolicy"] = {"queue": "h100"}
    moved = copy.deepcopy(job)
    moved["spec"]["runPolicy"]["schedulingPolicy"]["queue"] = "a100"
    assert violations(moved, old=job) == [
        "PyTorchJob.spec.runPolicy.schedulingPolicy.queue at spec/runPolicy/schedulingPolicy/queue: "
        "spec.runPolicy.schedulingPolicy.queue is immutable"
    ]
