"""The commands the project runs inside the trainer image, collected, and the checks that run them there.

The commands are read off the files that put them there, so a new one cannot be left out: the rendered
manifests (manifests/*.yaml, every container), the compiled pipeline (pipelines/medo1_pipeline.yaml, every
executor: KFP lightweight components run their function's source in the image) and the `medo1 ...` lines of
the chart (templates, profiles) and of the README. Each becomes checks: `--help` of the program and of the
subcommand, and an import of everything the subcommand imports, at the top of a module or inside a function
(`medo1 launch --help` alone never imports helm_python; the launch does), read statically from the sources.

They run once, inside the built images (tests/test_image_build.py): in the GPU image every command and every import
(vLLM and flash-attn-4 included); in the CPU image every import, where only what the CPU lock leaves out by design
(images/trainer/lock.sh: vLLM, flash-attn-4, CUDA) may be missing, and is reported. tests/test_image_env.py checks
the collection itself."""

from __future__ import annotations

import ast
import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name

from tests.conftest import REPO

PACKAGE = REPO / "trainer" / "medo1"
IMAGE_DIR = REPO / "images" / "trainer"
GPU_LOCK = IMAGE_DIR / "requirements.lock"
CPU_LOCK = IMAGE_DIR / "requirements-cpu.lock"
PIPELINE = REPO / "pipelines" / "medo1_pipeline.yaml"


def lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def gpu_only_distributions() -> set[str]:
    """Installed in the GPU image only: the GPU lock's packages the CPU lock leaves out."""
    return set(lock_pins(GPU_LOCK)) - set(lock_pins(CPU_LOCK))


# ---------------------------------------------------------------------------------------------------------------
# The CLI's subcommands and what each imports, read from the sources.


def module_file(module: str) -> Path | None:
    """The source file of a medo1 module, or None for anything else."""
    if module != "medo1" and not module.startswith("medo1."):
        return None
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


FIND_SPEC = "find_spec:"  # marks a module that must be installed, not imported


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def imports_in(nodes: list[ast.AST], module: str) -> set[str]:
    """Modules imported anywhere under these nodes (function bodies included); `from P import name` also
    yields P.name when that is a medo1 module. Relative imports are resolved against `module`."""
    is_package = module_file(module) is not None and module_file(module).name == "__init__.py"
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package_parts[: len(package_parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}"))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            # importlib.import_module("x") imports x; importlib.util.find_spec("x") only needs x installed.
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function == "import_module":
                found.add(node.args[0].value)
            elif function == "find_spec":
                found.add(FIND_SPEC + node.args[0].value)
    return found


@functools.cache
def optional_modules() -> frozenset[str]:
    """Top-level modules medo1 imports inside `try: ... except ImportError` (or ModuleNotFoundError): optional by
    design, the code says what to install when one is missing (vLLM: `sampling.engine: vllm`)."""
    optional = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Try) and any(
                isinstance(handler.type, ast.Name) and handler.type.id in {"ImportError", "ModuleNotFoundError"}
                for handler in node.handlers
            ):
                optional |= {m.split(".")[0] for m in imports_in(node.body, "medo1")}
    return frozenset(optional)


def import_closure(modules: set[str]) -> set[str]:
    """The medo1 modules reachable from these imports, and the top-level third-party modules they import."""
    seen, third_party, todo = set(), set(), list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            top = module.removeprefix(FIND_SPEC).split(".")[0]
            if top != "medo1" and top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(FIND_SPEC + top if module.startswith(FIND_SPEC) else top)
            continue
        parent = module.rpartition(".")[0]
        todo += [parent] if parent else []  # importing a.b runs a/__init__.py first
        todo += imports_in([parsed(path)], module)
    return {m for m in seen if module_file(m)} | third_party


@functools.cache
def cli_subcommands() -> dict[tuple[str, ...], set[str]]:
    """Each subcommand path of cli.py (("model", "init-tiny"), ...) -> the modules running it imports: its
    handler's imports and everything cli.py imports outside the handlers."""
    tree = parsed(PACKAGE / "cli.py")
    handlers = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("cmd_")}
    always = imports_in([n for n in tree.body if n not in handlers.values()], "medo1.cli")
    paths: dict[str, tuple[str, ...]] = {}  # parser variable -> subcommand path
    commands = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            calls = [c for c in ast.walk(node.value) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)]
            added = [c for c in calls if c.func.attr == "add_parser" and isinstance(c.func.value, ast.Name)]
            if added:
                parent, name = added[-1].func.value.id, added[-1].args[0].value
                paths[node.targets[0].id] = (*paths.get(parent, ()), name)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "set_defaults"
            and isinstance(node.func.value, ast.Name)
        ):
            handler = next(k.value.id for k in node.keywords if k.arg == "func")
            commands[paths[node.func.value.id]] = always | imports_in([handlers[handler]], "medo1.cli")
    return commands


def subcommand_of(argv: list[str]) -> tuple[str, ...]:
    """The longest subcommand path that argv (the words after `medo1`) starts with."""
    known = cli_subcommands()
    path: tuple[str, ...] = ()
    for word in argv:
        if not any(k[: len(path) + 1] == (*path, word) for k in known):
            break
        path = (*path, word)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The commands that run in the image.


@dataclass(frozen=True)
class Check:
    """One thing to run in the image: a command line (exit 0 expected) or imports (each must import)."""

    argv: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()


def medo1_checks(words: list[str], program: tuple[str, ...]) -> list[Check]:
    """Checks for `medo1 WORDS...` run as `program` (("medo1",) or ("python", "-m", "medo1"))."""
    path = subcommand_of(words)
    modules = cli_subcommands().get(path) or import_closure({"medo1.cli"})
    return [Check(argv=(*program, *path, "--help")), Check(imports=tuple(sorted(import_closure(modules))))]


MEDO1_IN_TEXT = re.compile(r"(?:^|[\s`'\"(])(?:python3? -m )?medo1((?: [a-z][a-z-]*){1,2})")


def checks_in_text(text: str) -> list[Check]:
    """Checks for each `medo1 SUBCOMMAND` written in free text (shell scripts, comments, README lines)."""
    checks = []
    for match in MEDO1_IN_TEXT.finditer(text):
        words = match.group(1).split()
        if subcommand_of(words):
            checks += medo1_checks(words, ("medo1",))
    return checks


def container_checks(argv: list[str]) -> list[Check]:
    """Checks for a container's command + args; an unknown form fails the test rather than being skipped."""
    program = Path(argv[0]).name
    if program == "torchrun":
        module_at = argv.index("-m") + 1
        assert argv[module_at] == "medo1", f"torchrun runs {argv[module_at]}, not medo1: {argv}"
        return [Check(argv=("torchrun", "--help"))] + medo1_checks(argv[module_at + 1 :], ("python", "-m", "medo1"))
    if program == "medo1":
        return medo1_checks(argv[1:], ("medo1",))
    if program.startswith("python") and argv[1:3] == ["-m", "medo1"]:
        return medo1_checks(argv[3:], ("python", "-m", "medo1"))
    if program in {"sh", "bash"} and argv[1] in {"-c", "-ec", "-ce", "-euc", "-eu"}:
        script = argv[2]
        if "kfp.dsl.executor_main" in script:
            # A KFP lightweight component: the executor runs the function source (the script's $0) in the image.
            component = ast.parse(argv[3])
            modules = {"kfp.dsl.executor_main"} | imports_in([component], "component")
            return [
                Check(argv=("python3", "-m", "kfp.dsl.executor_main", "--help")),
                Check(imports=tuple(sorted(import_closure(modules)))),
            ]
        checks = checks_in_text(script)
        assert checks, f"a shell command that runs no medo1 command: teach {Path(__file__).name} about it: {argv}"
        return checks
    raise AssertionError(f"unrecognised container command: teach {Path(__file__).name} about it: {argv}")


def containers(document: object):
    """Every container spec (a mapping with an image and a command or args) under a Kubernetes object."""
    if isinstance(document, dict):
        if "image" in document and ("command" in document or "args" in document):
            yield document
        for value in document.values():
            yield from containers(value)
    elif isinstance(document, list):
        for value in document:
            yield from containers(value)


def in_image_commands() -> dict[Check, list[str]]:
    """Every check -> where the command it comes from was read."""
    found: dict[Check, list[str]] = {}

    def add(where: str, checks: list[Check]) -> None:
        for check in checks:
            found.setdefault(check, []).append(where)

    manifests = sorted((REPO / "manifests").glob("*.yaml"))
    assert manifests, "no rendered manifests: run `make manifests`"
    for path in manifests:
        for document in yaml.safe_load_all(path.read_text()):
            for container in containers(document or {}):
                argv = [*container.get("command", []), *container.get("args", [])]
                where = (
                    f"{path.name} {document['kind']}/{document['metadata']['name']} container {container.get('name')}"
                )
                add(where, container_checks(argv))

    pipeline = next(yaml.safe_load_all(PIPELINE.read_text()))
    for name, executor in pipeline["deploymentSpec"]["executors"].items():
        container = executor["container"]
        add(f"{PIPELINE.name} {name}", container_checks([*container.get("command", []), *container.get("args", [])]))

    for path in sorted((REPO / "helm").rglob("*")):
        if path.is_file() and path.suffix in {".yaml", ".tpl", ".txt"}:
            add(str(path.relative_to(REPO)), checks_in_text(path.read_text()))
    in_code = False
    for number, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        in_code ^= line.startswith("```")
        if in_code and line.startswith("medo1 "):
            add(f"README.md:{number}", medo1_checks(line.split()[1:], ("medo1",)))
    return found


IMPORT_EACH = (
    """
import importlib, importlib.util, json, sys
failed = {}
for name in sys.argv[1:]:
    try:
        if not name.startswith("%s"):
            importlib.import_module(name)
        elif importlib.util.find_spec(name.partition(":")[2]) is None:
            failed[name] = "ModuleNotFoundError: No module named '%%s'" %% name.partition(":")[2]
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""
    % FIND_SPEC
)


def run_checks(run, gpu_image: bool) -> tuple[list[str], list[str]]:
    """Run the collected checks through `run(argv) -> CompletedProcess`: (failures, imports missing by design).

    Every command's imports are tried in one process (each import caught on its own, so one failure hides no
    other). GPU image: every command runs too, and nothing may be missing. CPU image: the imports only; the GPU
    lock's packages the CPU lock leaves out, and the optional modules the code checks for (with an install hint),
    may be missing by design."""
    failures, by_design = [], []
    gpu_distributions = set() if gpu_image else gpu_only_distributions()

    def where(sources: list[str]) -> str:
        return f"{sources[0]}" + (f" (and {len(sources) - 1} more)" if len(sources) > 1 else "")

    found = in_image_commands()
    sources_of: dict[str, list[str]] = {}
    for check, sources in found.items():
        for module in check.imports:
            sources_of.setdefault(module, []).extend(sources)
        if check.argv and gpu_image:
            done = run(list(check.argv))
            if done.returncode != 0:
                failures.append(
                    f"{where(sources)}: `{' '.join(check.argv)}` exited {done.returncode}: {done.stderr[-800:]}"
                )
    done = run(["python", "-c", IMPORT_EACH, *sorted(sources_of)])
    assert done.returncode == 0, done.stderr[-2000:]
    for module, error in json.loads(done.stdout.splitlines()[-1]).items():
        missing = re.match(r"ModuleNotFoundError: No module named '([^'.]+)", error)
        if missing and canonicalize_name(missing.group(1)) in gpu_distributions:
            by_design.append(
                f"{where(sources_of[module])}: import {module}: {missing.group(1)} is in the GPU image only"
            )
        elif not gpu_image and missing and module == missing.group(1) and module in optional_modules():
            by_design.append(
                f"{where(sources_of[module])}: import {module}: optional, not installed (the code says how to add it)"
            )
        else:
            failures.append(f"{where(sources_of[module])}: import {module}: {error}")
    return failures, sorted(set(by_design))
