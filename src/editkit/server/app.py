"""The FastAPI application of ``editkit serve``.

Routes: ``GET /`` (a web page: the journal, a form to add an edit, an ask box showing the routing, rollback
buttons; plain HTML and script over the API below), ``GET /healthz``, ``GET /metrics``, the OpenAI-compatible
``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions`` (``stream: true`` sends
server-sent events in OpenAI's chunk format; the answer is generated whole, in a batch with others, and then sent
in word-sized pieces, so the first piece arrives with the last), and the edits API: ``POST /v1/edits``,
``GET /v1/edits`` (paged with ``after`` / ``limit``; filtered by ``author``, ``since``, ``until``, ``q``),
``GET /v1/edits/{id}``, ``DELETE /v1/edits/{id}`` (rollback) and ``POST /v1/explain``.

Every answer names what gave it in an extra field of each choice, ``editkit``: the edit that answered (its id,
scope score) or the base model, or for weight editors the edits applied. Answers are greedy (``temperature`` and
the like are accepted and ignored), so an edit's answer is the same on every call. A chat is answered from its
last user message (the zoo's models are base models, without a chat template).

Errors are JSON in OpenAI's shape, ``{"error": {"message", "type", "code"}}``, with a 4xx status for anything a
client can cause (bad JSON, missing or wrong fields, a body over ``max_body_bytes`` (413), a prompt longer than
the model's context, an unknown model or edit id, a missing or wrong token (401 / 403), a statement edit to an
editor that takes none (``{"statement": "..."}``: SERAC, RP and SEPROG take them) or an edit the guard rejects
(422), a rollback that later weight edits overlap (409)); a shared store out of reach is
a 503; a 500 says only
"internal error" (the traceback goes to the server's log).
"""

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from editkit.editors.base import Editor, check_edit_kinds
from editkit.edits import EditRequest
from editkit.errors import EditkitError, ValidationError
from editkit.evaluation.guard import EditRejected
from editkit.memory.store import StoreUnavailableError
from editkit.server.batcher import Batcher
from editkit.server.desk import Conflict, EditDesk, EditFilter, NotFound
from editkit.server.metrics import Metrics
from editkit.server.page import PAGE
from editkit.server.tokens import Role, Token, TokenBook
from editkit.typedconfig import TypedConfig

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations, and the dependency
# aliases (`Read`, `Write`) live inside create_app, where postponed strings could not be resolved.

log = logging.getLogger(__name__)

# The page's script and style are inline; it talks only to this server and cannot be framed.
PAGE_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"


@dataclass
class ServeConfig(TypedConfig):
    """Settings of ``editkit serve`` beyond the model, method and store."""

    read_tokens: bool = field(default=False, metadata={"help": "reads (answers, listing edits) need a token too"})
    max_body_bytes: int = field(default=65536, metadata={"help": "larger request bodies are refused (413)"})
    max_tokens: int = field(default=256, metadata={"help": "the most new tokens one answer may ask for"})
    max_batch: int = field(default=16, metadata={"help": "the most queries answered in one generation pass"})
    cors_origins: str = field(default="", metadata={"help": "comma-separated origins allowed by CORS (none: off)"})
    sync_seconds: float = field(
        default=0.0, metadata={"help": "read other replicas' edits from a shared store this often (0: never)"}
    )

    def validate(self) -> None:
        from editkit.errors import ConfigError

        if self.max_body_bytes < 1024 or self.max_tokens < 1 or self.max_batch < 1 or self.sync_seconds < 0:
            raise ConfigError("ServeConfig: max_body_bytes >= 1024, max_tokens and max_batch >= 1, sync_seconds >= 0")


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes (413) whether or not they declare their length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.limit
        body, more = b"", not too_big
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            too_big = len(body) > self.limit
            if too_big:
                break
        if too_big:
            await _error(413, f"request body over {self.limit} bytes", "body_too_large")(scope, receive, send)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


# --------------------------------------------------------------------------- request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send settings editkit ignores (temperature, ...)


class CompletionIn(_Body):
    model: str
    prompt: str | list[str]
    max_tokens: int = 16
    stream: bool = False
    n: int = 1


class ContentPart(_Body):
    type: str
    text: str = ""


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None


class ChatIn(_Body):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool = False
    n: int = 1


class EditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(default=None, max_length=2000)
    target_new: str | None = Field(default=None, max_length=2000)
    subject: str | None = Field(default=None, max_length=2000)
    target_true: str | None = Field(default=None, max_length=2000)
    statement: str | None = Field(default=None, max_length=2000)


class ExplainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = Field(max_length=20000)


def _statement_request(body: EditIn, editor: Editor) -> EditRequest:
    """A statement edit (``{"statement": "..."}`` alone): 400 if other fields come with it or it is empty, 422
    (the editor's one-line refusal, naming the methods that take statements) if the editor edits with pairs."""
    given = [k for k in ("prompt", "target_new", "subject", "target_true") if getattr(body, k) is not None]
    if given:
        raise ApiError(400, f"a statement edit stands alone; drop {', '.join(given)}", "bad_statement")
    request = EditRequest.statement(body.statement or "")
    try:
        check_edit_kinds(editor, [request])
    except ValidationError as exc:
        raise ApiError(422, str(exc), "statements_unsupported") from None
    return request


# --------------------------------------------------------------------------- the application
class Server:
    """What the routes share: the desk (edits), the batcher (answers), tokens, metrics and settings."""

    def __init__(self, desk: EditDesk, tokens: TokenBook, config: ServeConfig) -> None:
        self.desk = desk
        self.service = desk.service
        self.tokens = tokens
        self.config = config
        self.metrics = Metrics()
        self.batcher = Batcher(self.service, self.metrics, max_batch=config.max_batch)
        self.started = int(time.time())
        self._stop = threading.Event()
        self._sync: threading.Thread | None = None
        if config.sync_seconds > 0:
            self._sync = threading.Thread(target=self._follow, name="editkit-sync", daemon=True)
            self._sync.start()

    @property
    def model_name(self) -> str:
        return self.service.base.name

    def _follow(self) -> None:
        while not self._stop.wait(self.config.sync_seconds):
            try:
                self.service.refresh()
            except Exception:  # a store briefly unreachable: keep serving, try again
                log.exception("reading edits from the shared store failed")

    def close(self) -> None:
        self._stop.set()
        if self._sync is not None:
            self._sync.join()
        self.batcher.close()

    # ------------------------------------------------------------------ auth
    def caller(self, role: Role, authorization: str | None) -> Token | None:
        if role == "read" and not self.config.read_tokens:
            return None
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, f"this needs a bearer token with the {role} role", "missing_token")
        token = self.tokens.check(authorization[len("Bearer ") :].strip())
        if token is None:
            raise ApiError(401, "unknown token", "invalid_token")
        if not token.allows(role):
            raise ApiError(403, f"token {token.name!r} has the {token.role} role; this needs {role}", "forbidden")
        return token

    # ------------------------------------------------------------------ answers
    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {self.model_name!r}", "model_not_found")

    def check_max_tokens(self, n: int) -> None:
        if not 1 <= n <= self.config.max_tokens:
            raise ApiError(400, f"max_tokens must be between 1 and {self.config.max_tokens}, got {n}", "bad_max_tokens")

    def answer(self, prompts: list[str], max_tokens: int, *, chat: bool) -> list[dict[str, Any]]:
        """One choice per prompt: text, finish reason, token counts and the ``editkit`` explanation."""
        for p in prompts:
            self.service.base.check_fits(p, max_tokens)
        futures = [self.batcher.submit(p, max_tokens, stop_at_newline=chat) for p in prompts]
        choices = []
        for i, (p, fut) in enumerate(zip(prompts, futures, strict=True)):
            text, explained = fut.result()
            self.metrics.answer(explained["answered_by"])
            n_out = len(self.service.base.encode(text, special=False))
            choices.append(
                {
                    "index": i,
                    "text": text.strip() if chat else text,
                    "finish_reason": "length" if n_out >= max_tokens else "stop",
                    "prompt_tokens": len(self.service.base.encode(p)),
                    "completion_tokens": n_out,
                    "editkit": explained,
                }
            )
        return choices


def _usage(choices: list[dict[str, Any]]) -> dict[str, int]:
    p = sum(c["prompt_tokens"] for c in choices)
    c = sum(c["completion_tokens"] for c in choices)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text) or [""]


def _sse(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def _chat_prompt(body: ChatIn) -> str:
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise ApiError(400, "a chat needs at least one user message", "no_user_message")
    content = users[-1].content
    text = content if isinstance(content, str) else " ".join(p.text for p in content or [] if p.type == "text")
    if not text.strip():
        raise ApiError(400, "the last user message is empty", "empty_message")
    return text


def create_app(server: Server) -> FastAPI:
    """The application over ``server`` (module docstring)."""
    app = FastAPI(title="editkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    if server.config.cors_origins:
        origins = [o.strip() for o in server.config.cors_origins.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, limit=server.config.max_body_bytes)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        server.metrics.request(getattr(route, "path", "other"), response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.code, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid"))
        return _error(400, message, str(first.get("type", "invalid_request")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), "http_error")

    @app.exception_handler(NotFound)
    async def not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc), "edit_not_found")

    @app.exception_handler(Conflict)
    async def conflict(_r: Request, exc: Conflict) -> JSONResponse:
        return _error(409, str(exc), "conflict")

    @app.exception_handler(StoreUnavailableError)
    async def unavailable(_r: Request, exc: StoreUnavailableError) -> JSONResponse:
        return _error(503, str(exc), "store_unavailable", "server_error")

    @app.exception_handler(EditRejected)
    async def rejected(_r: Request, exc: EditRejected) -> JSONResponse:
        return _error(422, str(exc), "edit_rejected")

    @app.exception_handler(EditkitError)
    async def user_error(_r: Request, exc: EditkitError) -> JSONResponse:
        return _error(400, str(exc), type(exc).__name__)

    @app.exception_handler(Exception)
    async def internal(_r: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return _error(500, "internal error", "internal_error", "server_error")

    def reader(authorization: Annotated[str | None, Header()] = None) -> Token | None:
        return server.caller("read", authorization)

    def writer(authorization: Annotated[str | None, Header()] = None) -> Token | None:
        return server.caller("write", authorization)

    Read = Annotated[Token | None, Depends(reader)]
    Write = Annotated[Token | None, Depends(writer)]

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"})

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": server.model_name, "method": server.service.editor.name}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(_t: Read) -> str:
        return server.metrics.render(len(server.service.list()))

    @app.get("/v1/models")
    def models(_t: Read) -> dict[str, Any]:
        entry = {"id": server.model_name, "object": "model", "created": server.started, "owned_by": "editkit"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/completions", response_model=None)
    def completions(body: CompletionIn, _t: Read) -> dict[str, Any] | StreamingResponse:
        server.check_model(body.model)
        server.check_max_tokens(body.max_tokens)
        if body.n != 1:
            raise ApiError(400, "n must be 1 (answers are greedy)", "bad_n")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > server.config.max_batch:
            raise ApiError(400, f"give 1 to {server.config.max_batch} prompts", "bad_prompt")
        choices = server.answer(prompts, body.max_tokens, chat=False)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = server.model_name
        if body.stream:

            def chunks() -> Iterator[dict[str, Any]]:
                for c in choices:
                    for j, piece in enumerate(_pieces(c["text"])):
                        extra = {"editkit": c["editkit"]} if j == 0 else {}
                        yield {
                            **head,
                            "choices": [{"index": c["index"], "text": piece, "finish_reason": None, **extra}],
                        }
                    yield {**head, "choices": [{"index": c["index"], "text": "", "finish_reason": c["finish_reason"]}]}

            return StreamingResponse(_sse(chunks()), media_type="text/event-stream")
        out = [{k: c[k] for k in ("index", "text", "finish_reason", "editkit")} | {"logprobs": None} for c in choices]
        return {**head, "choices": out, "usage": _usage(choices)}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: ChatIn, _t: Read) -> dict[str, Any] | StreamingResponse:
        server.check_model(body.model)
        given = [n for n in (body.max_completion_tokens, body.max_tokens) if n is not None]
        max_tokens = given[0] if given else 16
        server.check_max_tokens(max_tokens)
        if body.n != 1:
            raise ApiError(400, "n must be 1 (answers are greedy)", "bad_n")
        (c,) = server.answer([_chat_prompt(body)], max_tokens, chat=True)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_name}
        if body.stream:

            def chunks() -> Iterator[dict[str, Any]]:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield {**head, "object": "chat.completion.chunk", "choices": [first | {"editkit": c["editkit"]}]}
                for piece in _pieces(c["text"]):
                    delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                    yield {**head, "object": "chat.completion.chunk", "choices": [delta]}
                end = {"index": 0, "delta": {}, "finish_reason": c["finish_reason"]}
                yield {**head, "object": "chat.completion.chunk", "choices": [end]}

            return StreamingResponse(_sse(chunks()), media_type="text/event-stream")
        message = {"role": "assistant", "content": c["text"]}
        choice = {"index": 0, "message": message, "finish_reason": c["finish_reason"], "editkit": c["editkit"]}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage([c])}

    # ------------------------------------------------------------------ edits
    @app.post("/v1/edits", status_code=201)
    def add_edit(body: EditIn, token: Write, response: Response) -> dict[str, Any]:
        if body.statement is not None:
            request = _statement_request(body, server.desk.service.editor)
        elif not body.prompt or not body.target_new:
            raise ApiError(400, "an edit needs 'prompt' and 'target_new', or a 'statement'", "missing_field")
        else:
            target = body.target_new if body.target_new.startswith(" ") else " " + body.target_new
            request = EditRequest(
                prompt=body.prompt, target_new=target, subject=body.subject, target_true=body.target_true
            )
        view, new = server.desk.add(request, token.name if token else "")
        server.metrics.edit("applied" if new else "duplicate")
        if not new:
            response.status_code = 200
        return view | {"status": "added" if new else "duplicate"}

    @app.get("/v1/edits")
    def list_edits(
        _t: Read,
        author: str | None = None,
        since: float | None = None,
        until: float | None = None,
        q: Annotated[str | None, Query(max_length=2000)] = None,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        page, total, more = server.desk.list(EditFilter(author, since, until, q), after=after, limit=limit)
        return {"object": "list", "data": page, "total": total, "next_after": page[-1]["id"] if more else None}

    @app.get("/v1/edits/{edit_id}")
    def get_edit(edit_id: int, _t: Read) -> dict[str, Any]:
        return server.desk.get(edit_id)

    @app.delete("/v1/edits/{edit_id}")
    def rollback_edit(edit_id: int, _t: Write) -> dict[str, Any]:
        view = server.desk.rollback(edit_id)
        server.metrics.edit("rolled_back")
        return view | {"status": "rolled_back"}

    @app.post("/v1/explain")
    def explain(body: ExplainIn, _t: Read) -> dict[str, Any]:
        server.service.base.check_fits(body.input)
        return server.desk.explain(body.input)

    return app


def serve(server: Server, host: str, port: int) -> None:
    """Run the application with uvicorn until interrupted."""
    import uvicorn

    try:
        uvicorn.run(create_app(server), host=host, port=port, log_level="warning", access_log=False)
    finally:
        server.close()
