"""Reading the deployment files for the static checks: docker-compose.yml (with its ${VAR}
interpolation), the Dockerfiles (stages, instructions, pip installs), .dockerignore.

Used by test_compose.py, test_images.py and test_kubernetes_manifests.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata, resources
from pathlib import Path

import jsonschema
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PREFIX = "CONVEYOR_"
# A Dockerfile line is an instruction plus its arguments, continuations joined.
_CONTINUATION = re.compile(r"\\[ \t]*\n")
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


# ---------------------------------------------------------------- helpers: compose


def read_env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """Return KEY=VALUE pairs of an env file; with commented, also `# KEY=VALUE` examples."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if commented and re.match(r"#\s*[A-Z_][A-Z0-9_]*=", line):
            line = line.lstrip("#").strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


class InterpolationError(ValueError):
    """A `${VAR:?message}` variable is unset."""


def interpolate(node, env: dict[str, str], used: set[str]):
    """Substitute variables in every string of a loaded compose file, as compose does."""
    if isinstance(node, dict):
        return {key: interpolate(value, env, used) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env, used) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        used.add(name)
        op, arg, value = match["op"] or "", match["arg"] or "", env.get(name)
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else value
        if op.endswith("?") and missing:
            raise InterpolationError(f"{name}: {arg}")
        if op.endswith("+"):
            return "" if missing else arg
        return value or ""

    return _INTERPOLATION.sub(substitute, node)


@cache
def compose_raw() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@cache
def compose_and_vars() -> tuple[dict, frozenset[str]]:
    used: set[str] = set()
    data = interpolate(compose_raw(), read_env_file(ROOT / ".env.example"), used)
    return data, frozenset(used)


def services() -> dict[str, dict]:
    return compose_and_vars()[0]["services"]


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def worker_services() -> dict[str, dict]:
    """Return the services built from Dockerfile.worker (all run `conveyor worker`)."""
    return {
        name: svc
        for name, svc in services().items()
        if svc.get("build", {}).get("dockerfile") == "Dockerfile.worker"
    }


def model_of(service: dict) -> str:
    command = command_of(service)
    return command[command.index("--model") + 1]


def environment_of(service: dict, env: dict[str, str]) -> dict[str, str]:
    """Return a container's environment: value-less entries taken from env, as compose does."""
    items = service.get("environment", {})
    if isinstance(items, list):
        items = dict(item.split("=", 1) if "=" in item else (item, None) for item in items)
    resolved = {key: env.get(key) if value is None else str(value) for key, value in items.items()}
    return {key: value for key, value in resolved.items() if value is not None}


@cache
def compose_schema() -> dict:
    # The official compose-spec schema (github.com/compose-spec/compose-spec,
    # schema/compose-spec.json), as vendored inside the check-jsonschema wheel (dev extra).
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(document: dict) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# ---------------------------------------------------------------- helpers: Dockerfiles


def dockerfile_stages(name: str) -> list[dict]:
    """Parse a Dockerfile into stages: {base, name, instructions: [(KEYWORD, args)]}."""
    text = _CONTINUATION.sub(" ", (ROOT / name).read_text())
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), re.sub(r"\s+", " ", args.strip())
        if keyword == "FROM":
            parts = args.split()
            stage_name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append({"base": parts[0], "name": stage_name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args))
    return stages


def instructions(stage: dict, keyword: str) -> list[str]:
    return [args for kw, args in stage["instructions"] if kw == keyword]


def arg_defaults(name: str) -> dict[str, str]:
    defaults = {}
    for stage in dockerfile_stages(name):
        for args in instructions(stage, "ARG"):
            key, _, value = args.partition("=")
            defaults[key] = value.strip('"')
    return defaults


def pip_installs(name: str) -> list[list[str]]:
    """Return the arguments of every `pip install` in a Dockerfile, ARG defaults applied."""
    defaults = arg_defaults(name)
    found = []
    for stage in dockerfile_stages(name):
        for run in instructions(stage, "RUN"):
            for part in re.split(r"&&|;", run):
                words = shlex.split(part)
                for i in range(len(words) - 1):
                    if words[i].endswith("pip") and words[i + 1] == "install":
                        found.append([_expand(w, defaults) for w in words[i + 2 :]])
    return found


def _expand(word: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), word)


_PIP_OPTIONS_WITH_VALUE = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
}


def pip_targets(args: list[str]) -> list[str]:
    """Return what a `pip install` installs: its arguments less options and their values."""
    targets, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = not skip and arg in _PIP_OPTIONS_WITH_VALUE
            continue
        targets.append(arg)
    return targets


def local_extras(target: str) -> set[str] | None:
    """Return the extras of a local project path like `./[a,b]`; None for a package."""
    match = re.fullmatch(r"[./][^\[\]]*(?:\[([^\]]*)\])?", target)
    if match is None:
        return None
    return {e.strip() for e in (match[1] or "").split(",") if e.strip()}


# ---------------------------------------------------------------- helpers: requirements


def requirement_closure(requirements: list[str]) -> set[str]:
    """Return every distribution these requirements pull in, read from installed metadata.

    :raises AssertionError: when a needed distribution is not installed, so not checkable.
    """
    seen: set[tuple[str, frozenset]] = set()
    names: set[str] = set()
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            message = f"{req.name} is not installed; cannot check its requirements"
            raise AssertionError(message) from None
        for line in requires:
            child = Requirement(line)
            envs = [{"extra": extra} for extra in req.extras] or [{"extra": ""}]
            if child.marker is None or any(child.marker.evaluate(env) for env in envs):
                stack.append(child)
    return names


def project_requirements(extras: set[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    unknown = extras - set(optional)
    assert not unknown, f"extras {unknown} are not in pyproject.toml"
    return project["dependencies"] + [r for extra in sorted(extras) for r in optional[extra]]


# ---------------------------------------------------------------- helpers: .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            char = pattern[i]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Return whether .dockerignore keeps a path out of the build context (last match wins)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((keep, _pattern_regex(line.lstrip("!").strip("/"))))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for keep, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not keep
    return excluded


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


WORKER_ENTRYPOINT = "conveyor-worker-entrypoint"


def worker_entrypoint_script() -> str:
    """Return the script the worker image copies in as its entrypoint."""
    final = dockerfile_stages("Dockerfile.worker")[-1]
    for copy in instructions(final, "COPY"):
        words = copy.split()
        if words[-1] == f"/usr/local/bin/{WORKER_ENTRYPOINT}":
            assert "--chmod=0755" in words, "the entrypoint must be executable"
            return (ROOT / words[-2]).read_text()
    raise AssertionError(f"Dockerfile.worker does not copy in {WORKER_ENTRYPOINT}")
