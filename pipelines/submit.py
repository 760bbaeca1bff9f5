"""Upload the compiled pipeline's run to a Kubeflow Pipelines endpoint (`make pipeline-submit`).

    KFP_ENDPOINT=https://kubeflow.example.org/pipeline python -m pipelines.submit \\
        --param target_language=Japanese --param upload_model=true --param hub_repo=org/model

The endpoint comes from $KFP_ENDPOINT and a bearer token, when the endpoint needs one, from
$KFP_TOKEN (never a flag). `--param` values are typed by the compiled pipeline's own parameter
declarations, so a misspelt name or a wrong type fails here, not an hour into the run. `--list` prints
every parameter with its type, default and description, grouped as a user decides them, commonest first.
"""

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from pipelines.medo1_pipeline import COMPILED, PARAMETER_GROUPS


class ParameterError(ValueError):
    pass


def compiled_parameters(compiled: Path = COMPILED) -> dict[str, dict[str, Any]]:
    """Parameter name -> its declaration (parameterType, defaultValue, description) in the compiled pipeline's root."""
    spec = next(yaml.safe_load_all(compiled.read_text()))
    return spec["root"]["inputDefinitions"]["parameters"]


def declared_parameters(compiled: Path = COMPILED) -> dict[str, str]:
    """Parameter name -> KFP type (STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST) of the pipeline's root."""
    return {name: p["parameterType"] for name, p in compiled_parameters(compiled).items()}


def parameter_listing(compiled: Path = COMPILED, width: int = 100) -> str:
    """Every parameter by group (PARAMETER_GROUPS), with its type, default and description from the compiled pipeline."""
    declared = compiled_parameters(compiled)
    lines = []
    for title, names in PARAMETER_GROUPS:
        lines.append(f"{title}:")
        for name in names:
            p = declared[name]
            lines.append(f"  {name} ({p['parameterType'].lower()}, default {json.dumps(p.get('defaultValue'))})")
            description = " ".join(p.get("description", "").split())
            lines += textwrap.wrap(description, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def parse_parameters(items: list[str], declared: dict[str, str]) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ParameterError(f"--param {item!r}: expected NAME=VALUE")
        if name not in declared:
            raise ParameterError(
                f"--param {name}: the pipeline has no such parameter; known: {', '.join(sorted(declared))}"
            )
        kind = declared[name]
        try:
            if kind == "NUMBER_INTEGER":
                value: Any = int(text)
            elif kind == "NUMBER_DOUBLE":
                value = float(text)
            elif kind == "BOOLEAN":
                if text.lower() not in ("true", "false"):
                    raise ValueError("expected true or false")
                value = text.lower() == "true"
            elif kind == "LIST":
                value = json.loads(text)
                if not isinstance(value, list):
                    raise ValueError("expected a JSON list, e.g. '[\"train.epochs=1\"]'")
            else:
                value = text
        except ValueError as exc:
            raise ParameterError(f"--param {name}={text!r}: {kind}: {exc}") from None
        arguments[name] = value
    return arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start a run of the compiled medo1 pipeline on Kubeflow Pipelines.")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter")
    parser.add_argument(
        "--list", action="store_true", help="print the parameters (type, default, description) and exit"
    )
    parser.add_argument("--experiment", default="medo1")
    parser.add_argument("--run-name")
    parser.add_argument("--namespace", help="the Kubeflow profile namespace (multi-user installs)")
    parser.add_argument(
        "--service-account",
        help="run the steps as this service account (default: KFP's); it must be "
        "allowed to manage PyTorchJobs: list it in the chart's rbac.pipelineServiceAccounts (the infrastructure "
        "profile binds default-editor)",
    )
    args = parser.parse_args(argv)
    if args.list:
        print(parameter_listing(), end="")
        return 0
    try:
        arguments = parse_parameters(args.param, declared_parameters())
    except ParameterError as exc:
        print(f"pipeline-submit: {exc}", file=sys.stderr)
        return 2
    endpoint = os.environ.get("KFP_ENDPOINT")
    if not endpoint:
        print("pipeline-submit: set KFP_ENDPOINT to the Kubeflow Pipelines API URL", file=sys.stderr)
        return 2

    import kfp

    client = kfp.Client(
        host=endpoint, existing_token=os.environ.get("KFP_TOKEN"), namespace=args.namespace or "kubeflow"
    )
    run = client.create_run_from_pipeline_package(
        str(COMPILED),
        arguments=arguments,
        run_name=args.run_name,
        experiment_name=args.experiment,
        namespace=args.namespace,
        service_account=args.service_account,
    )
    print(json.dumps({"run_id": run.run_id, "arguments": arguments, "endpoint": endpoint}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
