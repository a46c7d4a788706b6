"""The user-facing docs (README.md, docs/*.md) name commands, options, routes, settings, defaults, metrics and
files: check that each one exists in the code, and that what the code has is documented. No network, no Redis:
the app is built but never started, the CLI is read through click, settings and models through pydantic."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[2]
# docs that hold measurements: their commands and routes are checked, their prose is not maintained here
MEASUREMENTS = {"docs/benchmarks.md", "docs/privacy-audit.md"}
ALL_DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
MAINTAINED = [d for d in ALL_DOCS if d not in MEASUREMENTS]
# DPSTREAM_* variables that are not settings: read by scripts, not by service/settings.py
SCRIPT_VARIABLES = {"DPSTREAM_SETUP_EXTRAS": "scripts/setup"}


def text(doc: str) -> str:
    return (REPO / doc).read_text()


def code_of(md: str) -> list[str]:
    """Every fenced code block line and every inline code span of a Markdown text."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", md, flags=re.M | re.S)
    return [line for block in fenced for line in block.splitlines()] + spans_of(md)


def spans_of(md: str) -> list[str]:
    """The inline code spans of a Markdown text (outside fenced blocks)."""
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", md, flags=re.M | re.S)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]  # a span may wrap a line


def table(md: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header row starts with `| header |`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{re.escape(header)}\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


# --- the command line ------------------------------------------------------------------------------------

@cache
def cli():
    from service.cli import app

    root = typer.main.get_command(app)
    try:  # `dpstream audit ...` execs `python -m attacks ...`: its options are those of attacks' app
        from attacks.cli import app as attacks_app
    except ImportError:  # an environment without the audit extra
        return root
    root.commands["audit"] = typer.main.get_command(attacks_app)
    return root


def options_of(command) -> set[str]:
    return {"--help", *(o for p in command.params for o in (*p.opts, *p.secondary_opts))}


def all_options(group) -> set[str]:
    found = options_of(group)
    for sub in getattr(group, "commands", {}).values():
        found |= all_options(sub)
    return found


def invocations(line: str) -> list[tuple[list[str], list[str]]]:
    """`(command path, options)` of every `dpstream ...` or `python -m attacks ...` in one line of code. Command
    alternatives (`up | serve | worker`, `show|render`) give one invocation each, sharing the options."""
    found = []
    for m in re.finditer(r"(?:^|[\s(=$'\"])(dpstream|python -m attacks)((?:\s+[^\s#;&)]+)*)", line):
        words = m.group(2).split()
        path = ["audit"] if m.group(1) == "python -m attacks" else []
        if resolve(path) is None:
            continue
        # `a | b | c` lists alternatives: glue them into one word
        glued: list[str] = []
        for w in words:
            if glued and (w.startswith("|") or glued[-1].endswith("|")):
                glued[-1] += w
            else:
                glued.append(w)
        names = []
        group = resolve(path)
        rest = glued
        while rest and hasattr(group, "commands") and re.fullmatch(r"[a-z][a-z|-]*", rest[0]):
            alternatives = rest[0].split("|")
            names.append(alternatives)
            rest = rest[1:]
            if alternatives[0] not in group.commands:
                break  # not a command of this group: reported by the test
            group = group.commands[alternatives[0]]
        options = [re.sub(r"[=\[\]].*$", "", w.lstrip("[")) for w in rest if w.lstrip("[").startswith("--")]
        heads = [[n[0] for n in names[:-1]] + [a] for a in names[-1]] if names else [[]]
        found += [(path + h, options) for h in heads]
    return found


def resolve(path: list[str]):
    """The (typer-vendored) click command at `path`, or None."""
    command = cli()
    for name in path:
        commands = getattr(command, "commands", None)
        if commands is None or name not in commands:
            return None
        command = commands[name]
    return command


def test_every_command_and_option_in_the_docs_is_a_real_one() -> None:
    wrong = []
    checked = 0
    for doc in ALL_DOCS:
        for line in code_of(text(doc)):
            for path, options in invocations(line):
                if path[:1] == ["audit"] and not hasattr(cli().commands["audit"], "commands"):
                    continue  # attacks is not installed: its commands cannot be read here
                command = resolve(path)
                if command is None:
                    wrong.append((doc, "dpstream " + " ".join(path), "no such command"))
                    continue
                known = options_of(command)
                wrong += [(doc, "dpstream " + " ".join(path), o) for o in options if o not in known]
                checked += 1
    assert checked > 20, checked  # the parser still finds the docs' commands
    assert not wrong, wrong


def test_options_named_alone_in_the_docs_exist() -> None:
    """`--yuv`, `--rtsp-port PORT` in prose: an option of some dpstream command."""
    known = all_options(cli())
    wrong = [(doc, span) for doc in MAINTAINED for span in spans_of(text(doc))
             if span.startswith("--") and span.split()[0].split("=")[0] not in known]
    assert not wrong, wrong


def test_every_command_is_documented() -> None:
    readme_code = "\n".join(code_of(text("README.md")))
    missing = [name for name in cli().commands if not re.search(rf"\bdpstream (?:[a-z]+ \| )*{name}\b",
                                                                  readme_code)]
    assert not missing, missing


# --- the REST API ----------------------------------------------------------------------------------------

@cache
def openapi() -> dict:
    """The app's OpenAPI paths, from the app as `dpstream serve` builds it (it connects to Redis only when used)."""
    from service.api import create_app
    from service.settings import Settings

    return create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()["paths"]


def operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in openapi().items() for method in ops}


def template(path: str) -> str:
    """A path with its parameters written alike: `/cameras/{camera_id}`, `/cameras/<id>` -> `/cameras/{}`."""
    return re.sub(r"\{[^}]*\}|<[^>]*>", "{}", path.rstrip("/"))


def scopes() -> dict[tuple[str, str], str]:
    """(method, path) -> the scope its dependencies require ("none": no token), from the routers the app mounts."""
    from fastapi.routing import APIRoute

    from service.api import audits, cameras, health, releases
    from service.api.deps import require_admin, require_read

    found = {}
    for module in (audits, cameras, health, releases):
        for route in module.router.routes:
            if not isinstance(route, APIRoute):
                continue
            calls = set()
            stack = [route.dependant]
            while stack:
                dep = stack.pop()
                calls.add(dep.call)
                stack += dep.dependencies
            scope = "admin" if require_admin in calls else "read" if require_read in calls else "none"
            found |= {(method, route.path): scope for method in route.methods if method != "HEAD"}
    return found


def test_every_api_path_in_the_docs_is_a_route() -> None:
    routes = {(m, template(p)) for m, p in operations()}
    paths = {p for _, p in routes}
    wrong = []
    for doc in ALL_DOCS:
        for code in code_of(text(doc)):
            for m in re.finditer(r"(?:\b(GET|POST|PATCH|PUT|DELETE) )?(/api/v1/[A-Za-z0-9_{}<>|./-]*[A-Za-z0-9}>])",
                                 code):
                method, path = m.group(1), template(m.group(2))
                if path not in paths or (method and (method, path) not in routes):
                    wrong.append((doc, m.group(0)))
    assert not wrong, wrong


def test_the_readme_endpoint_table_matches_the_app() -> None:
    """Each operation once, with the scope its token needs and its success status; every operation of the app
    is in the table."""
    documented = {}
    for method, path, scope, status, _what in table(text("README.md"), "method"):
        key = (method.strip("`"), path.strip("`"))
        assert key not in documented, key
        documented[key] = (scope, status)
    granted = scopes()
    assert set(granted) == operations()  # the routers read here are those the app mounts
    actual = {(method, path): (granted[method, path],
                               min(code for code in openapi()[path][method.lower()]["responses"] if code[0] == "2"))
              for method, path in operations()}
    assert documented == actual


# --- settings and camera defaults ------------------------------------------------------------------------

def setting_names() -> dict[str, str]:
    """environment variable -> Settings field."""
    from service.settings import Settings

    return {a: name for name, f in Settings.model_fields.items() for a in f.validation_alias.choices
            if a.isupper()}


def same_default(doc_value: str, default) -> bool:
    if isinstance(default, Path):
        return Path(doc_value) == default
    if isinstance(default, bool):
        return doc_value == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(doc_value) == default
        except ValueError:
            return False
    return doc_value == default


def test_every_dpstream_variable_in_the_docs_is_a_setting() -> None:
    names = setting_names()
    for variable, script in SCRIPT_VARIABLES.items():
        assert variable in (REPO / script).read_text(), (variable, script)
    wrong = [(doc, v) for doc in ALL_DOCS for v in set(re.findall(r"\bDPSTREAM_[A-Z0-9_]*[A-Z0-9]", text(doc)))
             if v not in names and v not in SCRIPT_VARIABLES]
    assert not wrong, wrong


def test_the_readme_settings_table_gives_the_real_defaults() -> None:
    """Row `| VAR, VAR2 | default, default2 | ... |`: a value in backticks is the default; words (unset, a third
    of the TTL, the host name) are a default computed at run time, which the setting gives as None."""
    from service.settings import Settings

    names = setting_names()
    seen = []
    wrong = []
    for variables, defaults, _what in table(text("README.md"), "variable"):
        variables = re.findall(r"`([A-Z_]+)`", variables)
        parts = defaults.split(", ") if len(variables) > 1 else [defaults]
        if len(parts) != len(variables):
            parts = [defaults] * len(variables)
        for variable, part in zip(variables, parts, strict=True):
            seen.append(variable)
            default = Settings.model_fields[names[variable]].default
            value = re.match(r"`([^`]*)`", part)
            if default is None and value or default is not None and not (value and same_default(value[1], default)):
                wrong.append((variable, part, default))
    assert not wrong, wrong
    assert sorted(seen) == sorted(names)  # each setting in one row


def test_the_readme_camera_table_gives_every_field_and_its_default() -> None:
    from pydantic_core import PydanticUndefined

    from service.models import CameraCreate

    rows = table(text("README.md"), "field")
    documented = {}
    for field, default, _what in rows:
        documented[field.strip("`")] = default
    assert set(documented) == set(CameraCreate.model_fields)
    wrong = []
    for name, info in CameraCreate.model_fields.items():
        default = info.get_default(call_default_factory=True)
        cell = documented[name]
        value = re.match(r"`([^`]*)`", cell)
        if default is PydanticUndefined or (default is None and not value):
            continue  # required, or computed (the id): said in words
        try:
            parsed = json.loads(value[1]) if value else "<no value in backticks>"
        except ValueError:
            parsed = value[1]
        if parsed != default or isinstance(parsed, bool) != isinstance(default, bool):  # true is not 1
            wrong.append((name, cell, default))
    assert not wrong, wrong


def test_defaults_named_in_the_readme_prose_are_the_code_s() -> None:
    from service.models import CameraSettings
    from service.settings import Settings

    readme = text("README.md")
    defaults = re.search(r"A camera created with defaults (.*?)\.", readme, flags=re.S)
    assert defaults, "the README states a default camera's settings"
    for name, value in re.findall(r"`([a-z_]+)=([0-9.]+)`", defaults[1]):
        assert float(value) == CameraSettings.model_fields[name].default, name
    assert f"`{CameraSettings.model_fields['layout'].default}` layout" in defaults[1]
    ttl = re.search(r"within one `lease_ttl_s` \(([0-9.]+) s\)", readme)
    assert ttl and float(ttl[1]) == Settings.model_fields["lease_ttl_s"].default
    assert f"127.0.0.1:{Settings.model_fields['port'].default}" in readme
    assert f"on port {Settings.model_fields['rtsp_port'].default}" in readme
    from service.api.app import MAX_BODY_BYTES

    limit = re.search(r"413 for a request body over ([0-9]+) MiB", " ".join(readme.split()))
    assert limit and int(limit[1]) << 20 == MAX_BODY_BYTES


# --- metrics and files -----------------------------------------------------------------------------------

def test_metrics_in_the_docs_are_exported_and_each_is_documented() -> None:
    import prometheus_client

    import service.metrics  # noqa: F401 - registers every dpstream metric

    families = {f.name for f in prometheus_client.REGISTRY.collect() if f.name.startswith("dpstream_")}
    # counters are registered without `_total`; Prometheus derives the histogram and counter series
    series = {n + s for n in families for s in ("", "_total", "_bucket", "_count", "_sum")}
    wrong = [(doc, name) for doc in ALL_DOCS for name in re.findall(r"\bdpstream_[a-z_]+[a-z]", text(doc))
             if name not in series]
    assert not wrong, wrong
    readme = text("README.md")
    undocumented = [n for n in families if not re.search(rf"`{n}(_total)?`", readme)]
    assert not undocumented, undocumented


TOP_LEVEL = {"dp", "streams", "service", "attacks", "deploy", "bench", "tests", "scripts", "docs", ".ci"}


def test_files_named_in_the_docs_exist() -> None:
    wrong = []
    for doc in MAINTAINED:
        for span in spans_of(text(doc)):
            for word in span.split():
                word = word.rstrip(".,:;)")
                first = word.split("/")[0]
                named = "/" in word and first in TOP_LEVEL or re.fullmatch(r"[\w.-]+\.(py|md|yml|yaml|toml)", word)
                if named and not (REPO / word).exists():
                    wrong.append((doc, word))
    assert not wrong, wrong


@pytest.mark.parametrize("doc", MAINTAINED)
def test_links_between_docs_resolve(doc: str) -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text(doc))
    missing = [link for link in links if "://" not in link and not (REPO / doc).parent.joinpath(link).exists()]
    assert not missing, missing


def test_field_names_in_the_docs_are_real_fields() -> None:
    """`frames_over_budget`, `eps_window=11`, `lease_ttl_s`: a field of an API model or a setting, or a query
    parameter of a route."""
    import pydantic

    import service.models as models
    from service.settings import Settings

    fields = set(Settings.model_fields)
    for value in vars(models).values():
        if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
            fields |= set(value.model_fields)
    fields |= {p["name"] for ops in openapi().values() for op in ops.values() for p in op.get("parameters", ())}
    wrong = [(doc, name) for doc in MAINTAINED for span in spans_of(text(doc))
             for name in re.findall(r"^([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?:=|$)", span)
             if name not in fields and not name.startswith("dpstream_")]  # metrics: checked above
    assert not wrong, wrong


def test_the_readme_names_every_status_code_the_api_answers() -> None:
    readme = text("README.md")
    api_part = readme[readme.index("| method | path |"):readme.index("| field | default |")]
    codes = {code for ops in openapi().values() for op in ops.values() for code in op["responses"]}
    assert not [c for c in sorted(codes) if not re.search(rf"\b{c}\b", api_part)]
