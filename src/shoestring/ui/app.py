"""The dashboard's FastAPI app: server-rendered pages, fragments, server-sent events, launch/cancel.

``create_app(cfg)`` builds it (tests drive it in-process); ``shoestring ui`` serves it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from shoestring.core.errors import ShoestringError
from shoestring.core.processes import pid_alive
from shoestring.ui import pages_assess, pages_compare, pages_data, pages_models, pages_plan, pages_runs
from shoestring.ui.config import UiConfig
from shoestring.ui.events import find_launch_run, stream
from shoestring.ui.launch import Launcher, read_log
from shoestring.ui.layout import Raw, badge, esc, fmt_time, link, page, section, table
from shoestring.ui.security import CSRF_FIELD, CSRF_HEADER, Guard
from shoestring.ui.store import ArtifactView, Store

__all__ = ["create_app"]

PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            "frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'")
# Payload HTML (data cards, reports) is self-contained; sandboxed so nothing in it runs as the dashboard.
FILE_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
LISTINGS: dict[str, tuple[tuple[str, ...], str]] = {
    "data": (("dataset",), "Datasets"),
    "plans": (("plan",), "Plans"),
    "models": (("model", "evaluation"), "Models and evaluations"),
    "assess": (("assessment",), "Assessment: the data barrier and the compute bottleneck"),
}
"""The listing pages (``/data``, ``/plans``, ...): the artifact kinds each lists and its title."""


MAX_FORM_BYTES = 1 << 20


async def form_fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the only kind the pages post) as a dict."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ShoestringError("form too large")
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}


class Forbidden(ShoestringError):
    """A request the dashboard refuses (stale or cross-site form): HTTP 403."""


def _static(name: str) -> Path:
    return Path(str(resources.files("shoestring.ui") / "static" / name))


def create_app(cfg: UiConfig) -> FastAPI:
    base = Path(cfg.cwd).resolve()
    store = Store(cfg.roots, base=base)
    launcher = Launcher(base / cfg.state_dir, base)
    app = FastAPI(title="shoestring ui", docs_url=None, redoc_url=None, openapi_url=None)
    guard = Guard(None, keys=list(cfg.api_key), bind_host=cfg.host)
    app.state.store, app.state.launcher, app.state.cfg = store, launcher, cfg

    def html(title: str, body: Any, active: str = "", crumbs: Any = (), data: dict[str, str] | None = None,
             status: int = 200) -> HTMLResponse:
        return HTMLResponse(page(title, body, active=active, csrf=guard.csrf, crumbs=crumbs, data=data), status,
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})

    @app.exception_handler(ShoestringError)
    async def _user_error(request: Request, err: ShoestringError) -> Response:
        code = 403 if isinstance(err, Forbidden) else 404
        if "text/html" in request.headers.get("accept", ""):
            return html("Refused" if code == 403 else "Not found", Raw(f'<p class="err">{esc(err)}</p>'), status=code)
        return JSONResponse({"error": str(err)}, status_code=code)

    def check_csrf(token: str | None, request: Request) -> None:
        if not guard.csrf_ok(token or request.headers.get(CSRF_HEADER, "")):
            raise Forbidden("this form is stale or came from another site; reload the page and try again")

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        p = _static(name)
        if "/" in name or not p.is_file():
            return Response(status_code=404)
        return FileResponse(p, headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(next: str = "/") -> HTMLResponse:
        body = Raw(f'<form method="post" action="/login" class="login"><input type="hidden" name="next" value="{esc(next)}">'
                   '<label>API key <input type="password" name="key" autofocus></label><button>Log in</button></form>')
        return html("Log in", body)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await form_fields(request)
        key, next = form.get("key", ""), form.get("next", "/")
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        if not guard.key_ok({}, {"key": [key]}):
            return html("Log in", Raw('<p class="err">wrong key</p><p><a href="/login">try again</a></p>'), status=401)
        from urllib.parse import quote

        resp = RedirectResponse(target, status_code=303)
        resp.headers.append("set-cookie", f"shoestring_ui_key={quote(key, safe='')}; HttpOnly; SameSite=Strict; Path=/")
        return resp

    @app.get("/", response_class=HTMLResponse)
    async def overview() -> HTMLResponse:
        return html("Runs", pages_runs.overview_body(store, launcher.all()), "runs")

    @app.get("/ws/{ws_id}", response_class=HTMLResponse)
    async def workspace(ws_id: str) -> HTMLResponse:
        ws = store.workspace(ws_id)
        return html(f"Workspace {ws.label}", pages_runs.workspace_body(store, ws), "runs", [("runs", "/"), (ws.label, "")])

    def _launch_for(pid: int) -> Any:
        return next((la for la in launcher.all() if la.pid == pid), None)

    def _log_section(launch: Any) -> tuple[str, int]:
        text, offset = read_log(launch.log)
        return (f'<section id="log-section"><h2>Log</h2><p class="muted">{esc(" ".join(launch.cmd[2:]))}</p>'
                f'<pre id="log" class="log" data-offset="{offset}">{esc(text)}</pre></section>', offset)

    @app.get("/ws/{ws_id}/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(ws_id: str, run_id: str) -> HTMLResponse:
        ws = store.workspace(ws_id)
        run = ws.run(run_id)
        launch = _launch_for(int(run.get("pid") or -1))
        log_html, offset = _log_section(launch) if launch else ("", 0)
        data = {"fragment": f"/fragment/ws/{ws.id}/runs/{run_id}"}
        if run.get("status") == "running":
            q = f"&launch={launch.id}&offset={offset}" if launch else ""
            data["stream"] = f"/api/events?ws={ws.id}&run={run_id}{q}"
        return html(f"Run {run.get('name', '')}", pages_runs.run_body(store, ws, run, guard.csrf, log_html), "runs",
                    [("runs", "/"), (ws.label, f"/ws/{ws.id}"), (run_id, "")], data)

    @app.get("/fragment/ws/{ws_id}/runs/{run_id}", response_class=HTMLResponse)
    async def run_fragment(ws_id: str, run_id: str) -> HTMLResponse:
        ws = store.workspace(ws_id)
        return HTMLResponse(pages_runs.run_panel(store, ws, ws.run(run_id)), headers={"Cache-Control": "no-store"})

    @app.post("/ws/{ws_id}/runs/{run_id}/cancel")
    async def cancel_run(ws_id: str, run_id: str, request: Request) -> Response:
        check_csrf((await form_fields(request)).get(CSRF_FIELD), request)
        ws = store.workspace(ws_id)
        run = ws.run(run_id)
        pid = int(run.get("pid") or -1)
        launch = _launch_for(pid)
        if launch is not None:
            launcher.cancel(launch.id)
        elif run.get("status") == "running" and pid_alive(pid) and _is_shoestring(pid):
            os.kill(pid, signal.SIGINT)  # started elsewhere: interrupt it like Ctrl-C
        return RedirectResponse(f"/ws/{ws.id}/runs/{run_id}", status_code=303)

    @app.get("/api/events")
    async def events(request: Request, ws: str | None = None, run: str | None = None, launch: str | None = None,
                     offset: int = 0) -> StreamingResponse:
        wsv = store.workspace(ws) if ws else None
        gen = stream(store, launcher, ws=wsv, run_id=run, launch_id=launch, log_offset=offset,
                     disconnected=request.is_disconnected)
        return StreamingResponse(gen, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/runs")
    async def api_runs() -> JSONResponse:
        return JSONResponse([{"workspace": ws.label, "ws": ws.id, **r} for ws in store.workspaces() for r in ws.runs()])

    @app.get("/api/launches/{launch_id}")
    async def api_launch(launch_id: str) -> JSONResponse:
        la = launcher.get(launch_id)
        found = find_launch_run(store, la)
        return JSONResponse({"id": la.id, "status": la.status, "returncode": la.returncode, "pid": la.pid,
                             "run": {"ws": found[0].id, **found[1]} if found else None})

    def _listing(kind_key: str) -> HTMLResponse:
        kinds, title = LISTINGS[kind_key]
        arts = store.all_artifacts(kinds)
        ws_label = {ws.id: ws.label for ws in store.workspaces()}
        body: Any = table(["artifact", "kind", "workspace", "started", "headline"], [
            [link(a.url, a.name), {"compress": "compressed model", "export": "export"}.get(a.stage, a.kind),
             ws_label.get(a.ws, a.ws),
             fmt_time(a.started), pages_runs.headline(a)] for a in arts], tid=f"list-{kind_key}")
        if kind_key == "assess" and arts:
            body = Raw(section(f"Latest: {arts[0].name}", pages_assess.assessment_body(arts[0])) + section("All", body))
        return html(title, body, kind_key)

    def _listing_page(kind_key: str) -> Callable[[], Awaitable[HTMLResponse]]:
        async def listing_page() -> HTMLResponse:
            return _listing(kind_key)

        return listing_page

    for kind_key in LISTINGS:
        app.add_api_route(f"/{kind_key}", _listing_page(kind_key), methods=["GET"], response_class=HTMLResponse,
                          name=f"{kind_key}_list")  # fmt: skip

    @app.get("/ws/{ws_id}/a/{name}", response_class=HTMLResponse)
    async def artifact_page(ws_id: str, name: str) -> HTMLResponse:
        a = store.artifact(ws_id, name)
        ws = store.workspace(ws_id)
        active, body = _artifact_body(store, a)
        return html(f"{_kind_title(a)} {a.name}", body, active, [("runs", "/"), (ws.label, f"/ws/{ws.id}"), (a.name, "")])

    @app.get("/ws/{ws_id}/a/{name}/rows/{file}", response_class=HTMLResponse)
    async def rows_page(ws_id: str, name: str, file: str, request: Request) -> HTMLResponse:
        a = store.artifact(ws_id, name)
        if file not in pages_data.BROWSABLE or not (a.path / file).is_file():
            raise ShoestringError(f"{a.name} has no browsable file '{file}'")
        body = pages_data.rows_body(a, file, dict(request.query_params))
        return html(f"{file} of {a.name}", body, "data", [("runs", "/"), (a.name, a.url), (file, "")])

    @app.get("/ws/{ws_id}/a/{name}/file/{path:path}")
    async def artifact_file(ws_id: str, name: str, path: str) -> Response:
        a = store.artifact(ws_id, name)
        p = (a.path / path).resolve()
        if not p.is_relative_to(a.path.resolve()) or not p.is_file():
            raise ShoestringError(f"{a.name} has no file '{path}'")
        media = "text/html; charset=utf-8" if p.suffix == ".html" else None
        if p.suffix in (".json", ".jsonl", ".txt", ".yaml", ".md"):
            media = "text/plain; charset=utf-8"
        return FileResponse(p, media_type=media, headers={"Content-Security-Policy": FILE_CSP,
                                                         "X-Content-Type-Options": "nosniff"})

    @app.get("/compare", response_class=HTMLResponse)
    async def compare(a: str = "", b: str = "") -> HTMLResponse:
        return html("Compare", pages_compare.compare_body(store, a, b), "compare")

    @app.get("/launch", response_class=HTMLResponse)
    async def launch_form(recipe: str = "", error: str = "") -> HTMLResponse:
        return html("Launch a run", _launch_form(cfg, base, guard.csrf, recipe, error), "launch")

    @app.post("/launch")
    async def launch(request: Request) -> Response:
        form = await form_fields(request)
        check_csrf(form.get(CSRF_FIELD), request)
        recipe, overrides = form.get("recipe", ""), form.get("overrides", "")
        workspace, force = form.get("workspace", ""), form.get("force", "")
        sets = [ln.strip() for ln in overrides.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        try:
            la = launcher.start(recipe, sets, workspace.strip() or None, force.split())
        except ShoestringError as err:
            return html("Launch a run", _launch_form(cfg, base, guard.csrf, recipe, str(err), overrides, workspace),
                        "launch", status=400)
        return RedirectResponse(f"/launches/{la.id}", status_code=303)

    @app.get("/launches/{launch_id}", response_class=HTMLResponse)
    async def launch_page(launch_id: str) -> HTMLResponse:
        la = launcher.get(launch_id)
        log_html, offset = _log_section(la)
        found = find_launch_run(store, la)
        panel = pages_runs.run_panel(store, *found) if found else Raw('<p class="muted">waiting for the run to start…</p>')
        status = found[1].get("status") if found else la.status
        cancel = (f'<form method="post" action="/launches/{esc(la.id)}/cancel" class="inline"><input type="hidden" '
                  f'name="{CSRF_FIELD}" value="{esc(guard.csrf)}"><button class="danger" id="cancel">Cancel run</button>'
                  "</form>") if la.status == "running" else ""
        info = table(["recipe", "overrides", "workspace", "process", "started", "status"], [[
            la.recipe, " ".join(la.overrides) or "-", la.extra.get("workspace_resolved", ""), la.pid, fmt_time(la.started),
            Raw(f'<span id="launch-status">{badge(la.status)}</span>')]], cls="meta")
        run_url = f"/ws/{found[0].id}/runs/{found[1]['run_id']}" if found else ""
        run_link = f'<p id="run-link">{link(run_url, "open the run page") if found else ""}</p>'
        data = {"fragment": f"/fragment{run_url}" if found else ""}
        if la.status == "running" or status == "running":
            data["stream"] = f"/api/events?launch={la.id}&offset={offset}"
        body = Raw(f'{info}{cancel}{run_link}<div id="run-panel">{panel}</div>{log_html}')
        return html(f"Launch {la.extra.get('name', '')}", body, "launch", [("launch", "/launch"), (la.id, "")], data)

    @app.post("/launches/{launch_id}/cancel")
    async def cancel_launch(launch_id: str, request: Request) -> Response:
        check_csrf((await form_fields(request)).get(CSRF_FIELD), request)
        launcher.cancel(launch_id)
        return RedirectResponse(f"/launches/{launch_id}", status_code=303)

    app.add_middleware(_GuardAdapter, guard=guard)  # the checks wrap every route
    return app


class _GuardAdapter:
    """Lets Starlette's middleware stack host the :class:`Guard` instance built with the app."""

    def __init__(self, app: Any, guard: Guard) -> None:
        guard.app = app
        self.guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.guard(scope, receive, send)


def _is_shoestring(pid: int) -> bool:
    try:
        return b"shoestring" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kind_title(a: ArtifactView) -> str:
    if a.stage == "compress":
        return "Compressed model"
    if a.stage == "export":
        return "Export"
    return {"dataset": "Data card", "plan": "Plan", "model": "Model", "evaluation": "Evaluation",
            "assessment": "Assessment", "report": "Report"}.get(a.kind, a.kind.capitalize())


def _artifact_body(store: Store, a: ArtifactView) -> tuple[str, Raw]:
    if a.kind == "dataset":
        return "data", pages_data.datacard_body(a)
    if a.kind == "plan":
        return "plans", pages_plan.plan_body(store, a)
    if a.kind == "assessment":
        return "assess", pages_assess.assessment_body(a)
    if a.kind == "evaluation":
        return "models", pages_models.evaluation_body(a)
    if a.stage == "compress":
        return "models", pages_models.compress_body(a)
    if a.stage == "export":
        return "models", pages_models.export_body(a)
    if a.kind == "model":
        return "models", pages_models.model_body(store, a)
    if a.kind == "report":
        return "runs", Raw(f'<p>{link(f"{a.url}/file/report.html", "open report.html")}</p><iframe class="report" sandbox '
                           f'src="{esc(a.url)}/file/report.html" title="run report"></iframe>')
    rows = [[k, str(v)[:200]] for k, v in a.stats.items()]
    return "runs", table(["figure", "value"], rows)


def _recipes(cfg: UiConfig, base: Path) -> list[tuple[str, str, str]]:
    """(path relative to the dashboard's folder, name, description) of every recipe in the recipe folders."""
    import yaml

    out = []
    for d in cfg.recipes:
        folder = (base / d).resolve()
        for f in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            try:
                raw = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, OSError):
                continue
            shown = str(f.relative_to(base)) if f.is_relative_to(base) else str(f)
            out.append((shown, str(raw.get("name", f.stem)), str(raw.get("description", ""))))
    return out


def _launch_form(cfg: UiConfig, base: Path, csrf: str, recipe: str = "", error: str = "", overrides: str = "",
                 workspace: str = "") -> Raw:
    found = _recipes(cfg, base)
    if not recipe:  # the main job first, when the folder has it
        recipe = next((p for p, _name, _d in found if Path(p).name == "quickstart.yaml"), "")
    options = "".join(f'<option value="{esc(p)}"{" selected" if p == recipe else ""}>{esc(p)} - {esc(desc[:90])}</option>'
                      for p, _name, desc in found)
    err = f'<p class="err" id="launch-error">{esc(error)}</p>' if error else ""
    return Raw(
        f'{err}<form method="post" action="/launch" class="launch" id="launch-form">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{esc(csrf)}">'
        f'<label><span>Recipe</span><select name="recipe" id="recipe">{options}</select></label>'
        f'<label><span>Overrides, one <code>STAGE_ID.KEY=VALUE</code> per line (the <code>--set</code> of '
        f'<code>shoestring run</code>)</span><textarea name="overrides" id="overrides" rows="6" '
        f'placeholder="train.max_steps=20">{esc(overrides)}</textarea></label>'
        f'<label><span>Workspace (empty = the recipe\'s own)</span><input name="workspace" id="workspace" '
        f'value="{esc(workspace)}"></label><label><span>Re-run even if cached (stage ids, space-separated)</span>'
        '<input name="force" id="force"></label>'
        '<button id="launch-button">Launch</button></form>'
        f'<p class="muted">Runs <code>shoestring run RECIPE --set ...</code> in {esc(base)}; the log streams to the next '
        "page, and the run appears under Runs like any other.</p>")
