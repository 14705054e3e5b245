"""A local browser demo of a generator: one self-contained page over a small FastAPI + uvicorn app.

`animegen serve CKPT` opens http://127.0.0.1:7860/: a grid of faces from a seed (click a face to see
it large), a slider that walks between two seeds' faces, and PNG downloads. The page needs nothing
from the internet: CSS and JS are inline, there are no fonts or CDN scripts, and a
Content-Security-Policy makes the browser refuse any other origin.

The HTTP API behind it (all GET; images are PNG, errors are JSON `{"error": "..."}` with a 4xx):

    /api/grid.png?seed=&n=&nrow=&bn=            the grid `animegen generate --seed S -n N` writes
    /api/face.png?seed=&index=&scale=&bn=       face `index` of that grid, enlarged `scale` times
    /api/interpolate.png?a=&b=&t=&scale=&bn=    between face 0 of seeds a and b, t in [0, 1] (slerp)
    /api/info, /healthz                         the model and the limits, as JSON
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations, and those
# name classes imported inside create_app, which only real (evaluated) annotations can reach.
import argparse
import hashlib
import ipaddress
import json
import socket
import sys
import threading
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from animegen.errors import UserError
from animegen.sampling_options import BN_MODES, CHUNK, DEFAULT_BN_MODE

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI

    from animegen.model_loading import LoadedGenerator

# Module level stays free of torch and fastapi so that registering the subcommand keeps
# `animegen --help` fast and works without the [serve] extra.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_N = 64
MAX_N_LIMIT = 1024  # one request never draws more than this many faces
MAX_SCALE = 8  # enlarged faces stay <= 8 x 192 px
MAX_SEED = 2**32 - 1  # exact in JavaScript numbers, and plenty of faces
GRID_PADDING = 2  # animegen.visual.make_grid's default; the page maps clicks with it
CACHE_SECONDS = 86400


def create_app(gen: "LoadedGenerator", max_n: int = DEFAULT_MAX_N) -> "FastAPI":
    """The demo app for one loaded generator; serve it with uvicorn or test it with TestClient."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from typing import Literal

    import torch
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    from animegen.generate import slerp
    from animegen.sampling import chunk_noise
    from animegen.visual import make_grid

    if not 1 <= max_n <= MAX_N_LIMIT:
        raise UserError(f"--max-n must be between 1 and {MAX_N_LIMIT}, not {max_n}")
    size = gen.config.image_size
    face_scale = max(1, min(MAX_SCALE, round(256 / size)))
    info = {
        "source": gen.source.name,
        "arch": gen.config.arch,
        "image_size": size,
        "z_dim": gen.z_dim,
        "iteration": gen.info.get("iteration"),
        "epochs_done": gen.info.get("epochs_done"),
        "max_n": max_n,
        "max_scale": MAX_SCALE,
        "max_seed": MAX_SEED,
        "face_scale": face_scale,
        "bn_modes": list(BN_MODES),
        "default_bn": DEFAULT_BN_MODE,
        "grid_padding": GRID_PADDING,
        "version": _model_version(gen),
    }

    # Every model call runs on this one thread. bn_mode_context switches the net's BatchNorm modes
    # in place, so two requests must never overlap on it; one thread also keeps a single malloc
    # arena for the activations, where a pool of request threads would each keep their own.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="animegen-model")
    # Latents cut at +-truncation (sampling.truncated_normal); absent: plain N(0, 1).
    TRUNCATION = Query(None, gt=0.0, le=10.0, allow_inf_nan=False)  # noqa: N806 - a shared default

    async def on_model_thread(fn, *args):
        return await asyncio.wrap_future(worker.submit(fn, *args))

    def grid_png(seed: int, n: int, nrow: int, bn: str, trunc: float | None) -> bytes:
        faces = gen.sample(n, seed=seed, bn_mode=bn, truncation=trunc)
        return _png(make_grid(faces, nrow=nrow, padding=GRID_PADDING))

    def face_png(seed: int, index: int, scale: int, bn: str, trunc: float | None) -> bytes:
        # Only the chunk holding the face is drawn; with batch-statistics BatchNorm the face depends
        # on that whole chunk, which is how gen.sample draws it, so it is pixel-equal to the grid's.
        chunk, row = divmod(index, CHUNK)
        images = gen.from_latents(chunk_noise(seed, chunk, gen.z_dim, trunc), bn)
        return _png(images[row].permute(1, 2, 0).numpy(), scale)

    def interpolate_png(a: int, b: int, t: float, scale: int, bn: str, trunc: float | None) -> bytes:
        # Face 0 of seed a and of seed b are each drawn inside their seed's first chunk, so under
        # batch-statistics BatchNorm the whole chunk is interpolated: the other 63 latents give the
        # batch statistics, which then move smoothly too, and the ends are exactly the grids' faces.
        za = chunk_noise(a, 0, gen.z_dim, trunc).flatten(1)
        zb = chunk_noise(b, 0, gen.z_dim, trunc).flatten(1)
        if bn == "eval":  # each face is independent of its batch: draw just the one
            za, zb = za[:1], zb[:1]
        z = za if t == 0 else zb if t == 1 else slerp(za, zb, torch.tensor([t], dtype=za.dtype))[0]
        return _png(gen.from_latents(z, bn)[0].permute(1, 2, 0).numpy(), scale)

    app = FastAPI(
        title="animegen",
        version=str(info["version"]),
        # The interactive docs pages load Swagger/ReDoc from a CDN; this app stays offline.
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err.get("loc", ())[1:]) or "request"
            value = err.get("input")
            got = f" (got {value[:40]!r})" if isinstance(value, str) else ""
            problems.append(f"{name}: {err.get('msg', 'invalid')}{got}")
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page(info), headers=_PAGE_HEADERS)

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "source": info["source"], "image_size": size}

    @app.get("/api/info")
    async def api_info() -> dict[str, Any]:
        return info

    def png_response(request: Request, data: bytes) -> Response:
        # Long-lived caching only for URLs that name this model's version (the page's do): a plain
        # URL would keep showing the old faces after the server restarts with another checkpoint.
        fresh = request.query_params.get("v") == info["version"]
        cache = f"public, max-age={CACHE_SECONDS}, immutable" if fresh else "no-cache"
        return Response(
            data,
            media_type="image/png",
            headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/api/grid.png", response_class=Response)
    async def api_grid(
        request: Request,
        seed: int = Query(0, ge=0, le=MAX_SEED),
        n: int = Query(16, ge=1, le=max_n),
        nrow: int = Query(8, ge=1, le=max_n),
        bn: Literal["batch", "eval"] = Query(DEFAULT_BN_MODE),
        truncation: float | None = TRUNCATION,
    ) -> Response:
        return png_response(request, await on_model_thread(grid_png, seed, n, nrow, bn, truncation))

    @app.get("/api/face.png", response_class=Response)
    async def api_face(
        request: Request,
        seed: int = Query(0, ge=0, le=MAX_SEED),
        index: int = Query(0, ge=0, le=max_n - 1),
        scale: int = Query(face_scale, ge=1, le=MAX_SCALE),
        bn: Literal["batch", "eval"] = Query(DEFAULT_BN_MODE),
        truncation: float | None = TRUNCATION,
    ) -> Response:
        return png_response(request, await on_model_thread(face_png, seed, index, scale, bn, truncation))

    @app.get("/api/interpolate.png", response_class=Response)
    async def api_interpolate(
        request: Request,
        a: int = Query(ge=0, le=MAX_SEED),
        b: int = Query(ge=0, le=MAX_SEED),
        t: float = Query(0.5, ge=0.0, le=1.0, allow_inf_nan=False),
        scale: int = Query(face_scale, ge=1, le=MAX_SCALE),
        bn: Literal["batch", "eval"] = Query(DEFAULT_BN_MODE),
        truncation: float | None = TRUNCATION,
    ) -> Response:
        job = on_model_thread(interpolate_png, a, b, t, scale, bn, truncation)
        return png_response(request, await job)

    app.state.generator = gen
    app.state.info = info
    return app


def _model_version(gen: "LoadedGenerator") -> str:
    """A short token that changes when the checkpoint does: page URLs carry it, so caching is safe."""
    try:
        st = gen.source.stat()
        key = f"{gen.source.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        key = str(gen.source)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _png(array: "np.ndarray", scale: int = 1) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes, enlarged `scale` times with hard pixel edges."""
    import io

    from PIL import Image

    im = Image.fromarray(array)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# The browser itself enforces "nothing from the internet": only this origin, inline CSS/JS, and
# blob: images (the page shows fetched PNGs through object URLs).
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; connect-src 'self' blob:; img-src 'self' blob: data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _page(info: dict[str, Any]) -> str:
    # "</" cannot appear inside the inline script, whatever a checkpoint's file name is.
    config = json.dumps(info).replace("</", "<\\/")
    page = resources.files("animegen").joinpath("static/serve.html").read_text(encoding="utf-8")
    return page.replace("__CONFIG__", config)


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """A bound TCP socket for uvicorn; a busy port or a bad host is a one-line UserError."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {port}")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {e.strerror or e} (choose another --port)"
        ) from None
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class BackgroundServer:
    """Serve an app with uvicorn on a daemon thread: `with BackgroundServer(app) as url: ...`.

    For tests and notebooks; port 0 picks a free port. Leaving the block stops the server.
    """

    def __init__(self, app: Any, host: str = DEFAULT_HOST, port: int = 0):
        self.app, self.host, self.port = app, host, port
        self.url = ""

    def __enter__(self) -> str:
        import uvicorn

        self._sock = bind(self.host, self.port)
        self.url = _url(self._sock)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True, name="animegen-serve"
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()


def run_command(args: argparse.Namespace) -> int:
    """`animegen serve` (its arguments: cli/tools.py)."""
    try:
        import fastapi  # noqa: F401 - only checks that the extra is installed
        import uvicorn
    except ImportError:
        raise UserError("animegen serve needs fastapi and uvicorn: pip install 'animegen[serve]'") from None
    from animegen.device import resolve_device
    from animegen.model_loading import load_generator

    if not 1 <= args.max_n <= MAX_N_LIMIT:
        raise UserError(f"--max-n must be between 1 and {MAX_N_LIMIT}, not {args.max_n}")
    sock = bind(args.host, args.port)
    gen = load_generator(args.checkpoint, device=str(resolve_device(args.device)))
    for note in gen.info.get("notes", []):
        print(f"warning: skipped damaged checkpoint: {note}", file=sys.stderr)
    app = create_app(gen, max_n=args.max_n)
    if not _is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can use the demo",
            file=sys.stderr,
        )
    print(f"serving {gen.source} at {_url(sock)}/ (Ctrl-C to stop)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
