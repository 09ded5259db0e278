"""README.md against the code it describes, so the docs cannot drift again unseen: the API table against the routes
and schemas, the settings it names (and their defaults) against the settings classes and qw_operator.local, the
make targets it names against the Makefile, what each make target installs, and the measured figures it quotes
against bench/results. Pure: reads files and builds the app object (no lifespan, no I/O).

The README's commands themselves run as written in tests/integration/test_readme_commands.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from qw_api.main import create_app
from qw_api.routes import health
from qw_api.schemas import NotificationAccepted, TaskAccepted, TaskView
from qw_core.messages import EmailFields, ImageOptions
from qw_core.settings import (
    ApiSettings,
    ClientSettings,
    CommonSettings,
    JanitorSettings,
    OperatorSettings,
    WorkerSettings,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SETTINGS = {
    c.__name__: c
    for c in (CommonSettings, ApiSettings, WorkerSettings, OperatorSettings, ClientSettings, JanitorSettings)
}


def _row(start: str) -> str:
    rows = [line for line in README.splitlines() if line.startswith(start)]
    assert len(rows) == 1, f"README has {len(rows)} table rows starting {start!r}"
    return rows[0]


def _braced(text: str, prefix: str = "") -> list[str]:
    """The names in the first `{a, b?, c}` after `prefix` in `text`, without `?`."""
    found = re.search(re.escape(prefix) + r"\{([^}]*)\}", text)
    assert found, f"no {prefix}{{...}} in {text!r}"
    return [name.strip().rstrip("?") for name in found.group(1).split(",")]


def test_the_task_table_lists_every_field_of_the_task_view_in_order() -> None:
    what = _row("| `GET /v1/tasks/{id}` |").split(" | ", 1)[1]
    assert _braced(what) == list(TaskView.model_fields)


@pytest.mark.parametrize(
    ("row", "request_fields", "answer"),
    [
        ("| `POST /v1/images` |", list(ImageOptions.model_fields), TaskAccepted),
        ("| `POST /v1/emails` |", list(EmailFields.model_fields), TaskAccepted),
        ("| `POST /v1/notifications` |", ["topic", "data"], NotificationAccepted),
    ],
)
def test_the_submit_rows_name_every_request_field_and_the_answers_fields(
    row: str, request_fields: list[str], answer: type
) -> None:
    text = _row(row)
    if "multipart" in text:  # `file` (+ width, height, ...): the options are in parentheses
        found = re.search(r"multipart `file` \(\+ ([^)]*)\)", text)
        assert found, text
        named = [n.strip(" `") for n in found.group(1).split(",")]
    else:
        named = _braced(text, "JSON `")
    assert named == request_fields
    assert _braced(text, "`202 ") == list(answer.model_fields)  # type: ignore[attr-defined]


def test_the_api_table_lists_exactly_the_apps_routes() -> None:
    app = create_app(ApiSettings(api_keys="a-key:tenant"))  # type: ignore[arg-type]
    v1 = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() if p.startswith("/v1/") for m in ops}
    documented = set(re.findall(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/v1/[^`]*)` \|", README, re.M))
    assert documented == {(m, p.replace("{task_id}", "{id}")) for m, p in v1}
    health_paths = {r.path for r in health.router.routes if isinstance(r, APIRoute) and "GET" in r.methods}
    for path in ["/healthz", *re.findall(r"`(/[a-z]+)`", _row("| `GET /healthz`"))]:
        assert path in health_paths or path == app.docs_url, path


def _settings_rows() -> list[str]:
    return [line for line in README.splitlines() if re.match(r"^\| [A-Za-z ]+ \| `\w+Settings` \|", line)]


def test_the_settings_table_has_a_row_per_settings_class_and_each_name_is_a_field_of_it() -> None:
    rows = _settings_rows()
    assert sorted(re.search(r"`(\w+Settings)`", r).group(1) for r in rows) == sorted(SETTINGS)  # type: ignore[union-attr]
    for row in rows:
        cls = SETTINGS[re.search(r"`(\w+Settings)`", row).group(1)]  # type: ignore[union-attr]
        for name in re.findall(r"`QW_([A-Z0-9_]+)`", row):
            assert name.lower() in cls.model_fields, f"README: {cls.__name__} has no QW_{name}"


def test_the_numeric_defaults_the_settings_table_quotes_are_the_fields_defaults() -> None:
    for row in _settings_rows():
        cls = SETTINGS[re.search(r"`(\w+Settings)`", row).group(1)]  # type: ignore[union-attr]
        for name, value in re.findall(r"`QW_([A-Z0-9_]+)` \((\d+(?:\.\d+)?)(?: s)?\)", row):
            assert cls.model_fields[name.lower()].default == float(value), f"{cls.__name__}.QW_{name}"


def test_the_local_autoscalers_settings_and_defaults_are_the_ones_local_py_reads() -> None:
    source = (ROOT / "operator/qw_operator/local.py").read_text()
    read = dict(re.findall(r"""env(?:iron)?\.get\("(QW_LOCAL_[A-Z_]+)", ([^)]+)\)""", source))
    assert read, "no QW_LOCAL_* reads found in local.py"
    quoted = dict(re.findall(r"`(QW_LOCAL_[A-Z_]+)` \(`?([\w.]+)`?", README))
    assert set(quoted) == set(read)
    for name, value in quoted.items():
        assert str(value).strip("\"'") in (read[name].strip("\"'"), read[name].rstrip("0").rstrip(".")), name


def test_every_setting_the_readme_names_is_read_somewhere() -> None:
    fields = {f"QW_{f.upper()}" for cls in SETTINGS.values() for f in cls.model_fields}
    literals: set[str] = set()
    for folder in ("core", "api", "workers", "operator", "scripts", "tests", "bench", "mk", "charts"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".mk", ".yaml", ".tpl", ".sh"}:
                literals |= set(re.findall(r"\b(QW_[A-Z0-9_]*[A-Z0-9])\b", path.read_text(errors="replace")))
    literals |= set(re.findall(r"\b(QW_[A-Z0-9_]*[A-Z0-9])\b", (ROOT / "Makefile").read_text()))
    named = set(re.findall(r"\b(QW_[A-Z0-9_]*[A-Z0-9])\b", README))
    assert named - fields - literals == set()


def _targets() -> dict[str, str]:
    """Every make target -> its prerequisites, from the Makefile and mk/*.mk."""
    text = "\n".join(p.read_text() for p in [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))])
    return {m.group(1): m.group(2) for m in re.finditer(r"^([a-z0-9-]+):(?!=)([^#\n]*)", text, re.M)}


def test_every_make_target_the_readme_names_exists() -> None:
    named = set(re.findall(r"`make ([a-z0-9-]+)", README))
    assert named, "README names no make target"
    assert named - set(_targets()) == set()


def test_make_dev_installs_only_the_dev_group_and_make_lint_only_the_venv() -> None:
    targets = _targets()
    assert targets["dev"].split() == ["deps-dev"]
    assert targets["lint"].split() == ["venv"]
    assert targets["fmt"].split() == ["venv"]
    assert targets["test-unit"].split() == ["venv"]  # tests/unit is pure
    assert "deps" in targets["test"].split()  # every test package: .ci/run runs `make test`
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^deps-dev: venv\n\tbash scripts/install-system-deps.sh dev$", makefile, re.M)
    assert re.search(r"^deps: venv\n\tbash scripts/install-system-deps.sh test$", makefile, re.M)
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_make_help_says_make_dev_autoscales() -> None:
    help_text = (ROOT / "Makefile").read_text().split("help:", 1)[1].split("\n\n", 1)[0]
    assert "one worker of each kind" not in help_text
    assert "scaled with their queues" in help_text


def test_make_fleet_runs_the_fleet_module_of_make_test_at_1000_under_a_timeout() -> None:
    """README's `make fleet` (and `make fleet FLEET_N=...`) runs tests/e2e/test_operator_fleet.py, the module
    `make test` runs at 200, at QW_FLEET_N QueueWorkers, the whole run bounded by `timeout`."""

    def recipe(*args: str) -> str:
        # -n: print the commands only; -o: the install targets count as done
        cmd = ["make", "-s", "-n", "-o", "deps", "-o", "venv", "-o", "cluster-bin", "fleet", *args]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
        return " ".join(done.stdout.replace("\\\n", " ").split())

    default = recipe()
    assert re.search(
        r"QW_FLEET_N=1000 timeout -k \d+ -s INT \d+ .*-m pytest .*tests/e2e/test_operator_fleet.py", default
    )
    assert "QW_FLEET_N=300 " in recipe("FLEET_N=300")
    assert 'os.environ.get("QW_FLEET_N", "200")' in (ROOT / "tests/e2e/test_operator_fleet.py").read_text()
    assert "`make fleet`" in README and "make fleet" in (ROOT / "Makefile").read_text().split("help:", 1)[1]


def test_every_picture_the_readme_shows_is_a_committed_png() -> None:
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert "bench/results/policy-replay-burst.png" in shown
    for path in shown:
        assert (ROOT / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_the_reaction_figures_are_the_measured_ones() -> None:
    measured = json.loads((ROOT / "bench/results/reaction.json").read_text())
    for key in ("operator_prometheus_depth", "operator_management_depth"):
        p50, p99 = measured[key]["p50"], measured[key]["p99"]
        quote = f"{p50} s (p50; p99 {p99} s)"
        assert quote in README, f"README should quote {key} from bench/results/reaction.json as {quote!r}"
    assert "bench/results/reaction.json" in README
