"""Fast tier: the hooks refuse bad answers and treat every answer as data.

Three parts:

1. Invalid answers, each baked for real: non-zero exit, the pre-gen hook's one
   line ``ERROR: invalid answer for '<field>': <value>: <rule>`` on stderr, and
   nothing left in the output directory.
2. Odd-but-valid text (quotes, backslashes, ``$``, backticks, tabs, braces,
   non-ASCII) comes out byte-identical in pyproject.toml, README.md,
   settings.py, the Grafana provisioning and .cruft.json, and is never run.
3. The hook functions, imported from their files and tested directly.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from cookiecutter.exceptions import FailedHookException, UndefinedVariableInTemplate
from cookiecutter.generate import generate_context
from cookiecutter.hooks import run_hook_from_repo_dir
from cookiecutter.main import cookiecutter
from cookiecutter.prompt import prompt_for_config
from cookiecutter.utils import create_env_with_context
from jinja2.exceptions import UndefinedError

from combinations import ALL_OFF, TOGGLES
from helpers import DEFAULT_ANSWERS, DEFAULT_PACKAGE, DEFAULT_SLUG, TEMPLATE_DIR, unowned_files

pytestmark = pytest.mark.fast

HOOKS_DIR = TEMPLATE_DIR / "hooks"
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
STACK = ("use_prometheus", "use_alertmanager", "use_grafana", "use_jaeger", "use_loki")
NO_STACK: dict[str, Any] = dict.fromkeys(STACK, False)
# Odd text needs explicit identifiers: the derived slug would (rightly) be refused.
ODD_IDS = {"project_slug": "odd-service", "package_name": "odd_service"}


# --------------------------------------------------------------------------- helpers


def _load_hook(name: str) -> ModuleType:
    """Import hooks/<name>.py as it sits in the repository (the Jinja placeholder is inside a raw string)."""
    spec = importlib.util.spec_from_file_location(f"template_hook_{name}", HOOKS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pre = _load_hook("pre_gen_project")
post = _load_hook("post_gen_project")


def default_answers(**overrides: Any) -> dict[str, Any]:
    """The answers cookiecutter itself derives from cookiecutter.json (slug and package filled in)."""
    context = generate_context(context_file=str(TEMPLATE_DIR / "cookiecutter.json"), extra_context=overrides)
    return dict(prompt_for_config(context, no_input=True))


def leftovers(tmp_path: Path) -> list[Path]:
    """Everything under pytest-cookies' output root (<tmp>/cookies) except its own empty bakeNN folders."""
    root = tmp_path / "cookies"
    assert root.is_dir(), "pytest-cookies no longer writes to <tmp_path>/cookies; fix this helper"
    return sorted(p for p in root.rglob("*") if not (p.parent == root and p.name.startswith("bake")))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR:")]


def settings_defaults(settings_py: Path) -> dict[str, Any]:
    """Literal defaults of the Settings class attributes, read without importing the module."""
    tree = ast.parse(settings_py.read_text(encoding="utf-8"))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings"]
    values: dict[str, Any] = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            try:
                values[node.target.id] = ast.literal_eval(node.value)
            except ValueError:  # Field(...), __version__, ...
                continue
    return values


def structured_files(project: Path) -> Iterator[Path]:
    for path in sorted(project.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".toml", ".json", ".yaml", ".yml"}:
            yield path


def parse_structured(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        compile(text, str(path), "exec")
    elif path.suffix == ".toml":
        tomllib.loads(text)
    elif path.suffix == ".json":
        json.loads(text)
    else:
        list(yaml.safe_load_all(text))


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- 1. invalid answers, baked

SHELL = "must not contain whitespace or shell metacharacters"
PATHS = "must not contain path separators or '..'"
PORT = "must be a whole number from 1024 to 65535"
EMAIL = "must look like name@example.com"
VERSION = "must be a release version"

# (id, answers on top of the defaults, field the hook must name, part of the rule it must print)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # empty (an empty project_slug never reaches the hook: see REFUSED_BEFORE_THE_HOOK)
    ("name-empty-slug-given", {"project_name": "", "project_slug": "svc"}, "project_name", "must not be empty"),
    ("name-blank-slug-given", {"project_name": "   ", "project_slug": "svc"}, "project_name", "must not be empty"),
    # (the slug derived from an empty name is a placeholder, so that the hook names the name)
    ("name-empty", {"project_name": ""}, "project_name", "must not be empty"),
    ("name-blank", {"project_name": "   "}, "project_name", "must not be empty"),
    ("package-empty", {"package_name": ""}, "package_name", "must not be empty"),
    ("description-empty", {"description": ""}, "description", "must not be empty"),
    ("author-empty", {"author_name": " \t"}, "author_name", "must not be empty"),
    # non-ASCII
    ("name-non-ascii", {"project_name": "Café Service"}, "project_name", "must be ASCII"),
    ("slug-non-ascii", {"project_slug": "café"}, "project_slug", "must be ASCII"),
    ("package-non-ascii", {"package_name": "straße"}, "package_name", "must be ASCII"),
    # path traversal and separators
    ("slug-traversal", {"project_slug": "../evil"}, "project_slug", PATHS),
    ("slug-traversal-deep", {"project_slug": "../outside/evil"}, "project_slug", PATHS),
    ("package-traversal", {"package_name": "..evil"}, "package_name", PATHS),
    ("slug-slash", {"project_slug": "a/b"}, "project_slug", PATHS),
    ("slug-backslash", {"project_slug": "a\\b"}, "project_slug", PATHS),
    ("package-absolute", {"package_name": "/etc"}, "package_name", PATHS),
    # shell metacharacters and command substitution
    ("slug-semicolon", {"project_slug": "svc;reboot"}, "project_slug", SHELL),
    ("slug-pipe", {"project_slug": "svc|cat"}, "project_slug", SHELL),
    ("package-ampersand", {"package_name": "svc&bg"}, "package_name", SHELL),
    ("slug-dollar-paren", {"project_slug": "$(id)"}, "project_slug", SHELL),
    ("package-backticks", {"package_name": "`id`"}, "package_name", SHELL),
    ("slug-space", {"project_slug": "my service"}, "project_slug", SHELL),
    ("name-backticks-derived-slug", {"project_name": "Svc `id`"}, "project_slug", SHELL),
    ("name-substitution-derived-slug", {"project_name": "Svc $(id)"}, "project_slug", SHELL),
    ("name-substitution-with-slash", {"project_name": "Svc $(touch /tmp/x)"}, "project_slug", PATHS),
    # Python keywords, stdlib and dependency names
    ("package-keyword-class", {"package_name": "class"}, "package_name", "must not be a Python keyword"),
    ("slug-soft-keyword-match", {"project_slug": "match"}, "project_slug", "must not be a Python keyword"),
    ("name-keyword-derived", {"project_name": "Import"}, "project_slug", "must not be a Python keyword"),
    ("package-stdlib-json", {"package_name": "json"}, "package_name", "standard-library"),
    ("slug-stdlib-logging", {"project_slug": "logging"}, "project_slug", "standard-library"),
    ("package-stdlib-email", {"package_name": "email"}, "package_name", "standard-library"),
    ("package-dep-fastapi", {"package_name": "fastapi"}, "package_name", "dependency of the service"),
    ("slug-dep-prometheus-client", {"project_slug": "prometheus-client"}, "project_slug", "dependency of the service"),
    ("package-tests", {"package_name": "tests"}, "package_name", "dependency of the service"),
    # shape
    ("name-leading-digit", {"project_name": "1st Service"}, "project_name", "must start with a letter"),
    ("slug-leading-digit", {"project_slug": "1service"}, "project_slug", "must start with a letter, not a digit"),
    ("package-leading-digit", {"package_name": "9lives"}, "package_name", "must start with a letter, not a digit"),
    ("slug-uppercase", {"project_slug": "My-Service"}, "project_slug", "must be lowercase"),
    ("package-uppercase", {"package_name": "MyService"}, "package_name", "must be lowercase"),
    ("slug-double-hyphen", {"project_slug": "my--service"}, "project_slug", "joined by single hyphens"),
    ("slug-trailing-hyphen", {"project_slug": "my-service-"}, "project_slug", "joined by single hyphens"),
    ("package-double-underscore", {"package_name": "my__service"}, "package_name", "joined by single underscores"),
    ("package-hyphen", {"package_name": "my-service"}, "package_name", "joined by single underscores"),
    # length
    ("slug-41-chars", {"project_slug": "a" * 41}, "project_slug", "at most 40 characters"),
    ("package-41-chars", {"package_name": "a" * 41}, "package_name", "at most 40 characters"),
    ("name-201-chars", {"project_name": "N" * 201}, "project_name", "at most 200 characters"),
    ("description-201-chars", {"description": "d" * 201}, "description", "at most 200 characters"),
    ("author-201-chars", {"author_name": "a" * 201}, "author_name", "at most 200 characters"),
    # single line
    ("description-newline", {"description": "one\ntwo"}, "description", "must be a single line"),
    ("description-carriage-return", {"description": "one\rtwo"}, "description", "must be a single line"),
    ("author-nul", {"author_name": "Jane\x00Doe"}, "author_name", "must be a single line"),
    ("name-newline", {"project_name": "My\nService"}, "project_name", "must be a single line"),
    # port
    ("port-80", {"port": "80"}, "port", PORT),
    ("port-1023", {"port": "1023"}, "port", PORT),
    ("port-65536", {"port": "65536"}, "port", PORT),
    ("port-70000", {"port": "70000"}, "port", PORT),
    ("port-abc", {"port": "abc"}, "port", PORT),
    ("port-negative", {"port": "-1"}, "port", PORT),
    ("port-empty", {"port": ""}, "port", PORT),
    ("port-float", {"port": "8000.0"}, "port", PORT),
    ("port-leading-zero", {"port": "08000"}, "port", PORT),
    ("port-on-prometheus", {"port": "9090"}, "port", "would take port 9090 of the stack's prometheus"),
    (
        "port-range-over-grafana",
        {"port": "2995"},
        "port",
        "host ports 2995-3004 (one per replica) would take port 3000",
    ),
    ("port-range-over-otlp", {"port": "4310"}, "port", "would take port 4317 of the stack's jaeger"),
    # email
    ("email-no-at", {"author_email": "jane.example.com"}, "author_email", EMAIL),
    ("email-space", {"author_email": "jane doe@example.com"}, "author_email", EMAIL),
    ("email-two-at", {"author_email": "jane@doe@example.com"}, "author_email", EMAIL),
    ("email-no-domain-dot", {"author_email": "jane@localhost"}, "author_email", EMAIL),
    ("email-empty", {"author_email": ""}, "author_email", EMAIL),
    ("email-quote", {"author_email": 'jane"@example.com'}, "author_email", EMAIL),
    ("email-trailing-newline", {"author_email": "jane@example.com\n"}, "author_email", EMAIL),
    # version
    ("version-two-parts", {"version": "1.0"}, "version", VERSION),
    ("version-v-prefix", {"version": "v1.0.0"}, "version", VERSION),
    ("version-semver-prerelease", {"version": "1.0.0-beta"}, "version", VERSION),
    ("version-empty", {"version": ""}, "version", VERSION),
    ("version-trailing-newline", {"version": "0.1.0\n"}, "version", VERSION),
    # toggles that are not booleans (cookiecutter turns "yes"/"no" strings into booleans itself)
    ("toggle-int", {"use_metrics": 1}, "use_metrics", "must be a JSON boolean"),
    ("toggle-null", {"use_tracing": None}, "use_tracing", "must be a JSON boolean"),
    # incompatible toggles: every REQUIRES / REQUIRES_ANY rule of the pre-gen hook
    ("prometheus-without-metrics", {"use_metrics": False}, "use_prometheus", "needs use_metrics"),
    ("alertmanager-without-prometheus", {"use_prometheus": False}, "use_alertmanager", "needs use_prometheus"),
    ("jaeger-without-tracing", {"use_tracing": False}, "use_jaeger", "needs use_tracing"),
    ("loki-without-json-logging", {"use_json_logging": False}, "use_loki", "needs use_json_logging"),
    ("cadvisor-without-prometheus", {**NO_STACK, "use_cadvisor": True}, "use_cadvisor", "needs use_prometheus"),
    (
        "cadvisor-without-dockerfile",
        {**NO_STACK, "use_dockerfile": False, "use_cadvisor": True},
        "use_cadvisor",
        "needs use_dockerfile",
    ),
    (
        "kubernetes-without-dockerfile",
        {**NO_STACK, "use_dockerfile": False},
        "use_kubernetes",
        "needs use_dockerfile",
    ),
    (
        "grafana-without-data-source",
        {**NO_STACK, "use_grafana": True},
        "use_grafana",
        "needs one of use_prometheus, use_jaeger, use_loki",
    ),
    # every stack service without the Dockerfile (each one alone, so no other rule trips first)
    *(
        (
            f"{service.removeprefix('use_')}-without-dockerfile",
            {**NO_STACK, "use_dockerfile": False, service: True},
            service,
            "needs use_dockerfile",
        )
        for service in STACK
    ),
    # ports written with digits that are not 0-9
    ("port-arabic-indic-digits", {"port": "\u0663\u0660\u0660\u0660"}, "port", PORT),
    ("port-fullwidth-digits", {"port": "\uff18\uff10\uff10\uff10"}, "port", PORT),
    ("port-superscript-digit", {"port": "8²00"}, "port", PORT),
]
# Rows refused while cookiecutter renders the answers, before it creates the
# project folder: a slug that is not a folder name must not leave parents behind.
BEFORE_THE_FOLDER = frozenset(
    {"slug-traversal", "slug-traversal-deep", "slug-slash", "slug-backslash", "name-substitution-with-slash"}
)


def invalid_params() -> list[Any]:
    return [pytest.param(*case[1:], id=case[0]) for case in INVALID]


@pytest.mark.parametrize(("answers", "field", "rule"), invalid_params())
def test_invalid_answer_is_refused(
    request: pytest.FixtureRequest,
    cookies: Any,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    answers: dict[str, Any],
    field: str,
    rule: str,
) -> None:
    result = cookies.bake(extra_context=answers)
    exit_code, exception = result.exit_code, result.exception

    assert exit_code != 0
    if request.node.callspec.id in BEFORE_THE_FOLDER:
        assert isinstance(exception, UndefinedVariableInTemplate), repr(exception)
        assert f"invalid answer for '{field}'" in str(exception.error)
        assert rule in str(exception.error)
        assert not (tmp_path / "cookies" / "bake00").exists(), "refused before any folder was made"
        assert leftovers(tmp_path) == []
        return
    assert isinstance(exception, FailedHookException), repr(exception)
    err = capfd.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1, err
    (line,) = lines
    assert f"invalid answer for '{field}'" in line
    assert rule in line
    if field in answers and isinstance(answers[field], str):
        shown = answers[field].replace("\r", "\n")  # Jinja normalises line endings while rendering the answers
        assert repr(shown) in line, "the message must show the value"
    # The hook ran in bake00, and cookiecutter removed the project folder it was given.
    assert (tmp_path / "cookies" / "bake00").is_dir()
    assert leftovers(tmp_path) == []


def test_every_toggle_rule_has_a_baked_case() -> None:
    """A new REQUIRES / REQUIRES_ANY rule must get a row in INVALID."""
    cases = {(field, rule) for _, _, field, rule in INVALID}
    for toggle, needs, _ in pre.REQUIRES:
        for need in needs:
            assert (toggle, f"needs {need}") in cases, f"no baked case for {toggle} without {need}"
    for toggle, any_of, _ in pre.REQUIRES_ANY:
        assert (toggle, f"needs one of {', '.join(any_of)}") in cases


@pytest.mark.parametrize(
    ("answers", "refused"),
    [pytest.param([], False, id="baked"), pytest.param(["project_slug=1-service"], True, id="refused")],
)
def test_no_rendered_hook_is_left_in_the_temp_folder(tmp_path: Path, answers: list[str], refused: bool) -> None:
    """cookiecutter runs each hook from a rendered copy in the temp folder and never deletes it; the hooks do."""
    temp = tmp_path / "temp"
    temp.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(tmp_path / "out"), str(TEMPLATE_DIR), *answers],
        env={**os.environ, "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode != 0) == refused, result.stderr
    assert sorted(temp.iterdir()) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ([] if refused else [DEFAULT_SLUG])


# Answers cookiecutter itself refuses before the hook runs: choices are checked against cookiecutter.json, and an
# empty slug renders the project folder as the output folder itself, which exists. (validate() covers the same rules.)
def test_the_hook_checks_every_toggle_of_cookiecutter_json() -> None:
    """The hook's TOGGLES (which the test matrix is built from) are cookiecutter.json's use_* keys."""
    answers = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    assert tuple(key for key in answers if key.startswith("use_")) == pre.TOGGLES


def test_the_hook_offers_the_choices_of_cookiecutter_json() -> None:
    answers = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    assert sorted(answers["python_version"]) == sorted(pre.PYTHON_VERSIONS)
    assert sorted(answers["license"]) == sorted(pre.LICENSES)


def test_the_hook_knows_every_dependency_and_stack_port(bake_once: Any) -> None:
    """The names and ports the hook refuses follow the baked project: a dependency added to
    pyproject.toml, or a port published in compose.yaml, must be added to the hook too."""
    project = bake_once()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    requirements = [
        *pyproject["project"]["dependencies"],
        *pyproject["dependency-groups"]["dev"],
        *pyproject["build-system"]["requires"],
    ]
    names = {
        re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("-", "_") for requirement in requirements
    }
    assert names <= pre.DEPENDENCIES, (
        f"dependencies the hook does not refuse as names: {sorted(names - pre.DEPENDENCIES)}"
    )
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    published = {
        name: sorted(int(str(port).rsplit(":", 2)[-2]) for port in service.get("ports", []))
        for name, service in compose["services"].items()
        if name != "app"
    }
    owners = {"prometheus": "use_prometheus", "alertmanager": "use_alertmanager", "grafana": "use_grafana"}
    owners |= {"jaeger": "use_jaeger", "loki": "use_loki", "alloy": "use_loki", "cadvisor": "use_cadvisor"}
    expected: dict[str, list[int]] = {}
    for name, ports in published.items():
        expected.setdefault(owners[name], []).extend(ports)
    assert {toggle: sorted(ports) for toggle, ports in expected.items() if ports} == {
        toggle: sorted(ports) for toggle, ports in pre.STACK_PORTS.items()
    }


REFUSED_BEFORE_THE_HOOK: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("python-3.11", {"python_version": "3.11"}, ValueError, "choice variable python_version"),
    ("python-empty", {"python_version": ""}, ValueError, "choice variable python_version"),
    ("license-gpl", {"license": "GPL-3.0"}, ValueError, "choice variable license"),
    ("license-lowercase-mit", {"license": "mit"}, ValueError, "choice variable license"),
    ("toggle-maybe", {"use_grafana": "maybe"}, ValueError, "could not be converted to a boolean"),
    ("slug-empty", {"project_slug": ""}, UndefinedVariableInTemplate, "invalid answer for 'project_slug'"),
]


@pytest.mark.parametrize(
    ("answers", "error", "message"), [pytest.param(*case[1:], id=case[0]) for case in REFUSED_BEFORE_THE_HOOK]
)
def test_cookiecutter_refuses_before_the_hook(
    cookies: Any,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    answers: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    result = cookies.bake(extra_context=answers)
    exit_code, exception = result.exit_code, result.exception

    assert exit_code != 0
    assert type(exception) is error
    assert message in str(getattr(exception, "error", exception))
    assert error_lines(capfd.readouterr().err) == []  # refused before the hook
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("word", "expected"), [("yes", True), ("no", False), ("true", True), ("0", False)])
def test_yes_no_words_become_real_booleans(bake: Any, word: str, expected: bool) -> None:
    """Cookiecutter converts yes/no words for boolean variables; the project records a JSON boolean."""
    project = bake(use_github_actions=word)
    recorded = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))["context"]["cookiecutter"]
    assert recorded["use_github_actions"] is expected
    assert (project / ".github").is_dir() is expected


# --------------------------------------------------------------------------- 2. odd text is data

SENTINEL = "SENTINEL"  # replaced by a per-test /tmp/pwned-<uuid> path
ODD_TEXT: dict[str, str] = {
    "double-quotes": 'Say "hello" to "it"',
    "single-quotes": "It's Bob's 'service'",
    "backslashes": "C:\\new\\table \\n \\\\ ends with \\",
    "dollar": "$HOME ${PATH} $1 $$",
    "command-substitution": "Run $(touch SENTINEL) now",
    "backticks": "Run `touch SENTINEL` now",
    "shell-separators": "a; touch SENTINEL; b | touch SENTINEL && touch SENTINEL",
    "tabs": "col1\tcol2\t\tend",
    "braces": "{x} {0} {} }{ {",
    "triple-quotes": "doc \"\"\"string\"\"\" and '''other'''",
    "percent-formats": "%s %d %(name)s %% {name!r}",
    "html-ish": "<b>bold</b> & <script>",
    "everything": "X \"q\" 'q' \\ $HOME $(touch SENTINEL) `touch SENTINEL` \t {b} \"\"\" ''' %s",
}


def _odd_answers(text: str) -> dict[str, str]:
    return {
        **ODD_IDS,
        "project_name": f"Name {text}",
        "description": f"Desc {text}",
        "author_name": f"Author {text}",
    }


def _assert_text_is_data(project: Path, name: str, description: str, author: str) -> None:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert pyproject["description"] == description
    assert pyproject["authors"][0]["name"] == author

    readme = (project / "README.md").read_text(encoding="utf-8").split("\n")
    assert readme[0] == f"# {name}"
    assert readme[2] == description

    defaults = settings_defaults(project / "src" / ODD_IDS["package_name"] / "settings.py")
    assert defaults["title"] == name
    assert defaults["description"] == description

    recorded = json.loads((project / ".cruft.json").read_text(encoding="utf-8"))["context"]["cookiecutter"]
    assert (recorded["project_name"], recorded["description"], recorded["author_name"]) == (name, description, author)


@pytest.mark.parametrize("text", [pytest.param(text, id=key) for key, text in ODD_TEXT.items()])
def test_odd_text_comes_out_verbatim(bake: Any, text: str) -> None:
    pwned = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    text = text.replace(SENTINEL, str(pwned))
    answers = _odd_answers(text)

    project = bake(**answers)

    _assert_text_is_data(project, answers["project_name"], answers["description"], answers["author_name"])
    folders = yaml.safe_load(
        (project / "observability/grafana/provisioning/dashboards/dashboards.yaml").read_text(encoding="utf-8")
    )
    assert {p["folder"] for p in folders["providers"]} == {answers["project_name"]}
    assert answers["author_name"] in (project / "LICENSE").read_text(encoding="utf-8")
    assert not pwned.exists(), "an answer was executed by a shell"


def test_non_ascii_author_and_description(bake: Any) -> None:
    answers = {**ODD_IDS, "author_name": "José Müller", "description": "Ünïcödé — déjà vu, 日本語"}
    project = bake(**answers)
    _assert_text_is_data(project, DEFAULT_ANSWERS["project_name"], answers["description"], answers["author_name"])


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param(_odd_answers(ODD_TEXT["everything"]), id="odd-text-defaults"),
        pytest.param({**_odd_answers(ODD_TEXT["everything"]), **ALL_OFF}, id="odd-text-all-off"),
        pytest.param({"author_name": "José Müller"}, id="non-ascii-author"),
    ],
)
def test_every_structured_file_parses(bake: Any, answers: dict[str, Any]) -> None:
    project = bake(**answers)
    checked = [path.relative_to(project).as_posix() for path in structured_files(project)]
    for path in structured_files(project):
        parse_structured(path)
    assert "pyproject.toml" in checked and ".cruft.json" in checked
    assert any(p.endswith(".py") for p in checked)


OUTSIDE_BMP = "Launch 🚀 day"


@pytest.mark.parametrize("field", ["description", "author_name"])
def test_emoji_works_or_is_refused_clearly(
    cookies: Any, capfd: pytest.CaptureFixture[str], tmp_path: Path, field: str
) -> None:
    result = cookies.bake(extra_context={field: OUTSIDE_BMP})
    if result.exception is not None:  # refused: it must say so clearly
        (line,) = error_lines(capfd.readouterr().err)
        assert f"invalid answer for '{field}'" in line
        assert leftovers(tmp_path) == []
        return
    project = Path(result.project_path)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    got = pyproject["description"] if field == "description" else pyproject["authors"][0]["name"]
    assert got == OUTSIDE_BMP
    if field == "description":
        assert settings_defaults(project / "src" / DEFAULT_PACKAGE / "settings.py")["description"] == OUTSIDE_BMP


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "LIMITATION (cookiecutter): every answer passed as extra context / on the command line is rendered by "
        "Jinja, so `{{ ... }}` in an answer is evaluated (7*7 -> 49), in the generator's own process"
    ),
)
def test_jinja_syntax_in_an_answer_is_data(cookies: Any) -> None:
    result = cookies.bake(extra_context={"description": "Costs {{ 7*7 }} euros"})
    assert result.exception is None
    pyproject = tomllib.loads((Path(result.project_path) / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["description"] == "Costs {{ 7*7 }} euros"


def test_baked_project_has_no_manifest_and_a_private_env(bake: Any) -> None:
    project = bake()
    assert not list(project.rglob(post.MANIFEST))
    env = project / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert post.PLACEHOLDER not in env.read_text(encoding="utf-8")
    assert post.PLACEHOLDER in (project / ".env.example").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- 3. pre-gen hook, imported


def test_defaults_are_valid() -> None:
    pre.validate(default_answers())


@pytest.mark.parametrize(
    "toggles",
    [
        pytest.param(ALL_OFF, id="all-off"),
        pytest.param({**NO_STACK, "use_dockerfile": False, "use_kubernetes": False}, id="no-docker"),
        pytest.param({**NO_STACK, "use_jaeger": True, "use_grafana": True}, id="grafana-jaeger"),
        pytest.param({**NO_STACK, "use_loki": True, "use_grafana": True}, id="grafana-loki"),
        pytest.param(
            {**ALL_OFF, "use_metrics": True, "use_dockerfile": True, "use_prometheus": True}, id="minimal-prom"
        ),
    ],
)
def test_consistent_toggles_are_valid(toggles: dict[str, Any]) -> None:
    pre.validate({**default_answers(), **toggles})


@pytest.mark.parametrize(
    ("mutation", "field", "rule"),
    [
        pytest.param({"python_version": "3.11"}, "python_version", "must be one of 3.12, 3.13", id="python-3.11"),
        pytest.param({"license": "GPL-3.0"}, "license", "must be one of MIT, Apache-2.0", id="license-gpl"),
        pytest.param({"use_metrics": "yes"}, "use_metrics", "must be a JSON boolean", id="toggle-string-yes"),
        pytest.param({"use_loki": 1}, "use_loki", "must be a JSON boolean", id="toggle-int-1"),
        pytest.param({"port": 80}, "port", "1024 to 65535", id="port-int-80"),
        pytest.param({"version": "1.0.0rc1x"}, "version", "release version", id="version-trailing-junk"),
        pytest.param({"author_email": "x" * 190 + "@example.com"}, "author_email", "name@example", id="email-long"),
    ],
)
def test_validate_refuses(mutation: dict[str, Any], field: str, rule: str) -> None:
    answers = {**default_answers(), **mutation}
    with pytest.raises(pre.InvalidAnswer) as caught:
        pre.validate(answers)
    message = str(caught.value)
    assert message.startswith(f"invalid answer for '{field}': {mutation[field]!r}: ")
    assert rule in message


@pytest.mark.parametrize(("answers", "field", "rule"), invalid_params())
def test_validate_matches_the_baked_refusal(answers: dict[str, Any], field: str, rule: str) -> None:
    """The same table, straight through validate(): the hook holds the rules even where
    cookiecutter refuses first (there the slug is derived here as cookiecutter.json does)."""
    try:
        candidate = default_answers(**{"package_name": "pkg", **answers})
    except (UndefinedError, UndefinedVariableInTemplate):  # refused while rendering
        derived = dict(answers)
        if "project_name" in answers and "project_slug" not in answers:
            derived["project_slug"] = answers["project_name"].lower().strip().replace(" ", "-")
        candidate = {**default_answers(), "package_name": "pkg", **derived}
    with pytest.raises(pre.InvalidAnswer, match=f"^invalid answer for '{field}': ") as caught:
        pre.validate(candidate)
    assert rule in str(caught.value)


def _violating(toggle: str, off: tuple[str, ...]) -> dict[str, Any]:
    """All toggles on, `off` off, then every other toggle that now breaks a rule switched off too."""
    answers = {**default_answers(), **dict.fromkeys(TOGGLES, True), **dict.fromkeys(off, False)}
    changed = True
    while changed:
        changed = False
        for other, needs, _ in pre.REQUIRES:
            if other != toggle and answers[other] and not all(answers[n] for n in needs):
                answers[other], changed = False, True
        for other, any_of, _ in pre.REQUIRES_ANY:
            if other != toggle and answers[other] and not any(answers[o] for o in any_of):
                answers[other], changed = False, True
    return answers


@pytest.mark.parametrize(
    ("toggle", "need", "why"),
    [pytest.param(t, n, why, id=f"{t}-needs-{n}") for t, needs, why in pre.REQUIRES for n in needs],
)
def test_every_requires_rule(toggle: str, need: str, why: str) -> None:
    answers = _violating(toggle, (need,))
    assert answers[toggle] is True
    with pytest.raises(pre.InvalidAnswer) as caught:
        pre.validate(answers)
    assert str(caught.value) == f"invalid answer for '{toggle}': True: needs {need}: {why}"
    pre.validate(_violating(toggle, ()))  # and with the need met, it is fine


@pytest.mark.parametrize(
    ("toggle", "any_of", "why"), [pytest.param(*rule, id=f"{rule[0]}-needs-any") for rule in pre.REQUIRES_ANY]
)
def test_every_requires_any_rule(toggle: str, any_of: tuple[str, ...], why: str) -> None:
    answers = _violating(toggle, any_of)
    with pytest.raises(pre.InvalidAnswer) as caught:
        pre.validate(answers)
    assert str(caught.value) == f"invalid answer for '{toggle}': True: needs one of {', '.join(any_of)}: {why}"
    for one in any_of:  # any single data source is enough
        pre.validate(_violating(toggle, tuple(o for o in any_of if o != one)))


def test_pre_main_prints_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert pre.main(json.dumps({**default_answers(), "port": "80"})) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"ERROR: invalid answer for 'port': '80': {PORT}\n"
    assert pre.main(json.dumps(default_answers())) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("hook", ["pre_gen_project", "post_gen_project"])
def test_rendered_hook_holds_answers_as_data(hook: str) -> None:
    """Rendered as cookiecutter renders it, the hook's main() argument is a literal that parses back to the answers."""
    odd = ODD_TEXT["everything"].replace(SENTINEL, "/tmp/never") + " ends with \\"
    answers = {**default_answers(), "description": odd, "author_name": odd, "project_name": "N " + odd}
    context = {"cookiecutter": answers}
    source = create_env_with_context(context).from_string((HOOKS_DIR / f"{hook}.py").read_text()).render(**context)
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "exit"
    ]
    (exit_call,) = calls
    main_call = exit_call.args[0]
    assert isinstance(main_call, ast.Call)
    assert json.loads(ast.literal_eval(main_call.args[0])) == answers


# --------------------------------------------------------------------------- 3. post-gen hook, imported

ANSWERS = {"a": True, "b": False, "c": True}


@pytest.mark.parametrize(
    ("rule", "enabled"),
    [
        pytest.param({}, True, id="no-conditions"),
        pytest.param({"when": ["a"]}, True, id="when-on"),
        pytest.param({"when": ["b"]}, False, id="when-off"),
        pytest.param({"when": ["a", "c"]}, True, id="when-all-on"),
        pytest.param({"when": ["a", "b"]}, False, id="when-one-off"),
        pytest.param({"when_any": ["b", "c"]}, True, id="when-any-one-on"),
        pytest.param({"when_any": ["b"]}, False, id="when-any-all-off"),
        pytest.param({"when_any": []}, False, id="when-any-empty"),
        pytest.param({"when": ["a"], "when_any": ["b", "c"]}, True, id="both-hold"),
        pytest.param({"when": ["b"], "when_any": ["a", "c"]}, False, id="when-fails-any-holds"),
        pytest.param({"when": ["a"], "when_any": ["b"]}, False, id="when-holds-any-fails"),
    ],
)
def test_feature_enabled(rule: dict[str, Any], enabled: bool) -> None:
    assert post.feature_enabled(rule, ANSWERS) is enabled


def test_feature_enabled_needs_real_true() -> None:
    assert post.feature_enabled({"when": ["x"]}, {"x": "yes"}) is False
    assert post.feature_enabled({"when_any": ["x"]}, {"x": 1}) is False


@pytest.mark.parametrize("rule", [{"when": ["nope"]}, {"when_any": ["a", "nope"]}], ids=["when", "when-any"])
def test_feature_enabled_unknown_toggle(rule: dict[str, Any]) -> None:
    with pytest.raises(post.ManifestError, match="unknown toggle 'nope'"):
        post.feature_enabled(rule, ANSWERS)


def test_disabled_paths() -> None:
    manifest = {
        "features": {
            "on": {"when": ["a"], "paths": ["on.txt"]},
            "off": {"when": ["b"], "paths": ["off.txt", "off-dir"]},
            "any-off": {"when_any": ["b"], "paths": ["any.txt"]},
        }
    }
    assert post.disabled_paths(manifest, ANSWERS) == ["off.txt", "off-dir", "any.txt"]


@pytest.mark.parametrize(
    "rule",
    ["  bare:\n    when: [a]\n", "  bare:\n    when: [a]\n    paths: []\n", "  bare:\n", "  bare:\n    paths: [1]\n"],
    ids=["missing", "empty", "null", "not-text"],
)
def test_load_manifest_refuses_a_feature_without_paths(tmp_path: Path, rule: str) -> None:
    (tmp_path / post.MANIFEST).write_text("features:\n" + rule)
    with pytest.raises(post.ManifestError, match="feature 'bare' must list the paths it owns"):
        post.load_manifest(tmp_path)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("    whne: [a]\n", "has unknown keys whne"),
        ("    when_all: [a]\n", "has unknown keys when_all"),
        ("    when: a\n", "'when' must be a list of toggle names"),
        ("    when_any: [a, 5]\n", "'when_any' must be a list of toggle names"),
        ("    when_any: []\n", "'when_any' must be a list of toggle names"),
    ],
    ids=["misspelt", "invented", "not-a-list", "not-a-name", "empty"],
)
def test_load_manifest_refuses_a_condition_it_would_not_apply(tmp_path: Path, rule: str, message: str) -> None:
    (tmp_path / post.MANIFEST).write_text("features:\n  odd:\n    paths: [x]\n" + rule)
    with pytest.raises(post.ManifestError, match=f"feature 'odd'.*{message}"):
        post.load_manifest(tmp_path)


def test_check_paths_exist(tmp_path: Path) -> None:
    write_tree(tmp_path, {"here.txt": "x", "dir/inside.txt": "x"})
    ok = {"features": {"f": {"paths": ["here.txt", "dir"]}, "g": {"when": ["b"], "paths": ["dir/inside.txt"]}}}
    post.check_paths_exist(tmp_path, ok)
    broken = {"features": {**ok["features"], "h": {"paths": ["gone.txt", "dir/also-gone"]}}}
    with pytest.raises(post.ManifestError, match=r"gone\.txt, dir/also-gone"):
        post.check_paths_exist(tmp_path, broken)


def test_unowned_files(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            post.MANIFEST: "features: {}\n",
            "README.md": "",
            "src/pkg/a.py": "",
            "src/pkg/deeper/b.py": "",  # fnmatch's * crosses "/"
            "feature/x.yaml": "",
            "feature-not-really/y.yaml": "",  # a prefix of a feature path, but not inside it
            "single.txt": "",
            "stray.txt": "",
        },
    )
    manifest = {
        "core": ["README.md", "src/pkg/*"],
        "features": {"f": {"paths": ["feature/"]}, "g": {"paths": ["single.txt"]}},
    }
    assert unowned_files(tmp_path, manifest) == ["feature-not-really/y.yaml", "stray.txt"]


ENV_EXAMPLE = """\
# A comment that mentions SECRET=change-me stays as it is
  # KEY=change-me (indented comment)
APP_PORT=8000
FIRST_SECRET=change-me
SECOND_SECRET=change-me

NOT_A_PLACEHOLDER=change-me-later
EMPTY=
THIRD_SECRET=change-me"""


def test_write_env(tmp_path: Path) -> None:
    (tmp_path / ".env.example").write_text(ENV_EXAMPLE, encoding="utf-8")
    post.write_env(tmp_path)

    env = tmp_path / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text(encoding="utf-8")
    assert text.endswith("\n")
    before, after = ENV_EXAMPLE.split("\n"), text.rstrip("\n").split("\n")
    assert len(after) == len(before)
    secrets = {}
    for old, new in zip(before, after, strict=True):
        if old.endswith("_SECRET=change-me"):
            key, _, value = new.partition("=")
            assert old.startswith(key + "=")
            assert len(value) >= 24 and value != post.PLACEHOLDER
            assert value.replace("-", "").replace("_", "").isalnum()
            secrets[key] = value
        else:
            assert new == old
    assert set(secrets) == {"FIRST_SECRET", "SECOND_SECRET", "THIRD_SECRET"}
    assert len(set(secrets.values())) == 3, "every placeholder gets its own secret"

    post.write_env(tmp_path)  # generated again over itself: the secrets in use stay
    rerun = dict(line.split("=", 1) for line in env.read_text(encoding="utf-8").splitlines() if "_SECRET=" in line)
    assert rerun == secrets


def test_write_env_keeps_an_existing_file_and_tightens_it(tmp_path: Path) -> None:
    (tmp_path / ".env.example").write_text("A=change-me\n", encoding="utf-8")
    (tmp_path / ".env").write_text("A=in-use\n", encoding="utf-8")
    (tmp_path / ".env").chmod(0o644)
    post.write_env(tmp_path)
    assert (tmp_path / ".env").read_text(encoding="utf-8") == "A=in-use\n"
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


# A small fake rendered project and its manifest.
FAKE_MANIFEST = """\
core:
  - README.md
  - .env.example
  - .env
  - src/*
features:
  docs:
    when: [use_docs]
    paths: [docs]
  extra:
    when: [use_extra]
    paths: [extra/one.txt, extra/two.txt]
"""
FAKE_FILES = {
    "README.md": "# fake\n",
    ".env.example": "TOKEN=change-me\n",
    "src/app.py": "print('hi')\n",
    "docs/guide.md": "guide\n",
    "extra/one.txt": "1\n",
    "extra/two.txt": "2\n",
}
FAKE_ANSWERS = json.dumps({"use_docs": True, "use_extra": False})


def _fake_project(root: Path, manifest: str = FAKE_MANIFEST, **extra_files: str) -> Path:
    project = root / "fake"
    write_tree(project, {**FAKE_FILES, post.MANIFEST: manifest, **extra_files})
    return project


def test_post_main_prunes_the_fake_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _fake_project(tmp_path)
    assert post.main(FAKE_ANSWERS, project) == 0
    assert capsys.readouterr().err == ""
    files = sorted(snapshot(project))
    assert files == [".env", ".env.example", "README.md", "docs/guide.md", "src/app.py"]
    assert not (project / "extra").exists(), "an emptied folder is pruned"


BROKEN_MANIFESTS: list[tuple[str, str, dict[str, str], str]] = [
    ("missing-path", FAKE_MANIFEST + "  ghost:\n    when: [use_docs]\n    paths: [ghost.txt]\n", {}, "ghost.txt"),
    ("unknown-toggle", FAKE_MANIFEST.replace("[use_extra]", "[use_typo]"), {}, "unknown toggle 'use_typo'"),
    ("no-features", "core: [README.md]\n", {}, "expected a mapping with a 'features' mapping"),
    ("not-yaml", "features: [unclosed\n", {}, "ERROR: "),
    (
        "feature-empty-paths",
        FAKE_MANIFEST + "  bare:\n    when: [use_docs]\n    paths: []\n",
        {},
        "must list the paths",
    ),
    ("feature-without-paths", FAKE_MANIFEST + "  bare:\n    when: [use_docs]\n", {}, "must list the paths"),
    ("feature-null", FAKE_MANIFEST + "  bare:\n", {}, "feature 'bare' must list the paths"),
]


def broken_manifest_params() -> list[Any]:
    return [pytest.param(*values, id=case_id) for case_id, *values in BROKEN_MANIFESTS]


@pytest.mark.parametrize(("manifest", "extra_files", "message"), broken_manifest_params())
def test_post_main_refuses_a_broken_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest: str, extra_files: dict[str, str], message: str
) -> None:
    project = _fake_project(tmp_path, manifest, **extra_files)
    before = snapshot(project)

    assert post.main(FAKE_ANSWERS, project) == 1

    (line,) = error_lines(capsys.readouterr().err)
    assert message in line
    # Checked before anything is touched: no half-pruned project, no .env.
    assert snapshot(project) == before


def test_generating_again_over_a_project_keeps_its_files_and_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cookiecutter -f` over an existing project: files the template does not have (the lock,
    which the post-gen hook does not make again, new code) stay, .env keeps the secrets in use,
    and the new answers apply."""
    cookiecutter(str(TEMPLATE_DIR), no_input=True, output_dir=str(tmp_path))
    project = tmp_path / DEFAULT_SLUG
    orders = f"src/{DEFAULT_PACKAGE}/orders.py"
    write_tree(project, {"uv.lock": "version = 1\n", orders: "ORDERS = []\n"})
    secrets_before = (project / ".env").read_text()
    assert not (project / "observability/prometheus/rules/containers.yml").exists()

    monkeypatch.delenv("SKIP_UV_LOCK")  # the project's lock, not the tests' opt-out, keeps the hook from locking
    cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        output_dir=str(tmp_path),
        overwrite_if_exists=True,
        extra_context={"use_cadvisor": True},
    )
    assert (project / "uv.lock").read_text() == "version = 1\n"
    assert (project / orders).exists()
    assert (project / ".env").read_text() == secrets_before
    assert (project / "observability/prometheus/rules/containers.yml").exists()


def _uv() -> str | None:
    return shutil.which("uv") or os.environ.get("UV")


NO_IMAGE = ["use_dockerfile=no", "use_kubernetes=no", *(f"{toggle}=no" for toggle in STACK)]


@pytest.mark.parametrize(
    ("case", "answers", "then"),
    [
        ("uv-missing", [], "before `docker compose up --build`"),
        ("index-unreachable", [], "before `docker compose up --build`"),
        ("uv-missing", NO_IMAGE, "(or any `make` target)"),
    ],
    ids=["uv-missing", "index-unreachable", "uv-missing-no-image"],
)
def test_a_lock_the_hook_cannot_make_is_one_line_and_no_file(
    tmp_path: Path, case: str, answers: list[str], then: str
) -> None:
    """Without uv, or without the package index, the bake succeeds, writes no uv.lock (not even a
    partial one) and says in one line what to run later; the rest of the project is complete."""
    env = {k: v for k, v in os.environ.items() if k not in {"SKIP_UV_LOCK", "UV", "VIRTUAL_ENV"}}
    cli = Path(sys.executable).parent / "cookiecutter"
    if case == "uv-missing":
        env["PATH"] = os.pathsep.join([str(cli.parent), "/usr/bin", "/bin"])
        assert shutil.which("uv", path=env["PATH"]) is None, "uv is on the system PATH: this case cannot run here"
    else:
        uv = _uv()
        if uv is None:
            pytest.skip("uv is not installed")  # the uv-missing case covers this machine
        assert uv is not None
        # uv's own switches: no network, and an empty cache to resolve from.
        env.update(UV=uv, UV_OFFLINE="1", UV_NO_CACHE="1")
    result = subprocess.run(
        [str(cli), "--no-input", "-o", str(tmp_path), str(TEMPLATE_DIR), *answers],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    project = tmp_path / DEFAULT_SLUG
    assert not (project / "uv.lock").exists()
    assert (project / ".env").is_file() and (project / ".cruft.json").is_file()
    (line,) = result.stdout.strip().splitlines()
    assert line.startswith("uv.lock not created ("), line
    assert line.endswith(f"): run `uv lock` in {DEFAULT_SLUG} {then}."), line
    assert result.stderr == ""


def test_post_hook_failure_leaves_no_directory(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Run the real post-gen hook through cookiecutter's hook runner on a broken fake project."""
    repo = tmp_path / "repo"
    (repo / "hooks").mkdir(parents=True)
    shutil.copy(HOOKS_DIR / "post_gen_project.py", repo / "hooks")
    project = _fake_project(tmp_path, FAKE_MANIFEST.replace("two.txt]", "two.txt, three.txt]"))
    context = {"cookiecutter": {"use_docs": True, "use_extra": False}}

    with pytest.raises(FailedHookException):
        run_hook_from_repo_dir(str(repo), "post_gen_project", project, context, delete_project_on_failure=True)

    assert "three.txt" in "\n".join(error_lines(capfd.readouterr().err))
    assert not project.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_baked_template_with_broken_manifest_leaves_no_directory(
    cookies: Any, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The same end to end: a copy of the template whose manifest lists a path the template lacks."""
    template = tmp_path / "template"
    template.mkdir()
    shutil.copy(TEMPLATE_DIR / "cookiecutter.json", template)
    shutil.copytree(HOOKS_DIR, template / "hooks")
    shutil.copytree(PROJECT_TEMPLATE, template / PROJECT_TEMPLATE.name)
    manifest = template / PROJECT_TEMPLATE.name / "template-manifest.yaml"
    manifest.write_text(
        manifest.read_text(encoding="utf-8").replace("      - .github\n", "      - .github\n      - .gitlab-ci.yml\n"),
        encoding="utf-8",
    )
    assert ".gitlab-ci.yml" in manifest.read_text(encoding="utf-8")

    result = cookies.bake(template=str(template))

    assert isinstance(result.exception, FailedHookException)
    (line,) = error_lines(capfd.readouterr().err)
    assert "lists paths the template does not have: .gitlab-ci.yml" in line
    assert (tmp_path / "cookies" / "bake00").is_dir()
    assert leftovers(tmp_path) == []


def test_a_non_folder_slug_with_an_explicit_package_is_refused_before_any_folder(cookies: Any, tmp_path: Path) -> None:
    """With both names given, the package default (which checks the slug) is not rendered:
    a private check variable still stops cookiecutter before it creates a folder."""
    result = cookies.bake(extra_context={"project_slug": "../outside/evil", "package_name": "pkg"})
    assert result.exit_code != 0
    assert "invalid answer for 'project_slug'" in str(result.exception)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "outside").exists()
