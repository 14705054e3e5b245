"""The browser demo's HTTP API: PNGs of the right size and content, 4xx for bad input, concurrency."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import json
import re
import socket
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import TINY, write_images
from PIL import Image

from animegen import load_generator, serve
from animegen.cli import main
from animegen.cli.tools import add_serve_parser
from animegen.errors import UserError
from animegen.sampling import DEFAULT_BN_MODE
from animegen.visual import make_grid

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
if not any(importlib.util.find_spec(m) for m in ("httpx2", "httpx")):  # TestClient needs one
    pytest.skip("TestClient needs httpx2 or httpx", allow_module_level=True)

with warnings.catch_warnings():
    # Starlette >= 1.0 prefers httpx2 and warns when it falls back to httpx; both work.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient  # noqa: E402 - only once the skips above passed

S = 16  # TINY's image size


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    write_images(root / "faces", 16)
    run = root / "run"
    assert main(["train", "--data", str(root / "faces"), "--epochs", "1", "--run-dir", str(run), *TINY]) == 0
    return load_generator(run)


@pytest.fixture(scope="module")
def client(gen):
    return TestClient(serve.create_app(gen, max_n=80))


def _png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im)


def _face(gen, seed: int, index: int, bn: str = DEFAULT_BN_MODE) -> np.ndarray:
    return gen.sample(index + 1, seed=seed, bn_mode=bn)[index].permute(1, 2, 0).numpy()


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "Generate" in html and 'id="grid"' in html and 'type="range"' in html
    # Nothing that could reach another origin: no absolute or protocol-relative URLs.
    assert not re.search(r"https?://|(src|href)=[\"']//|@import|url\(", html)
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert '"image_size": 16' in html and "__CONFIG__" not in html


def test_healthz_and_info(client, gen):
    assert client.get("/healthz").json() == {"status": "ok", "source": gen.source.name, "image_size": S}
    info = client.get("/api/info").json()
    assert info["max_n"] == 80 and info["z_dim"] == gen.z_dim and info["face_scale"] == 8
    assert client.get("/favicon.ico").status_code == 204
    assert client.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN


def test_grid_is_what_generate_writes(client, gen):
    img = _png(client.get("/api/grid.png", params={"seed": 3, "n": 10, "nrow": 4}))
    assert img.shape == (3 * (S + 2) + 2, 4 * (S + 2) + 2, 3)
    assert np.array_equal(img, make_grid(gen.sample(10, seed=3), nrow=4))
    eval_img = _png(client.get("/api/grid.png", params={"seed": 3, "n": 10, "nrow": 4, "bn": "eval"}))
    assert np.array_equal(eval_img, make_grid(gen.sample(10, seed=3, bn_mode="eval"), nrow=4))


def test_same_seed_same_bytes(client):
    a = client.get("/api/grid.png?seed=5&n=6").content
    assert client.get("/api/grid.png?seed=5&n=6").content == a
    assert client.get("/api/grid.png?seed=6&n=6").content != a
    f = client.get("/api/face.png?seed=5&index=2&scale=3").content
    assert client.get("/api/face.png?seed=5&index=2&scale=3").content == f


@pytest.mark.parametrize("bn", ["batch", "eval"])
def test_face_is_the_grids_face(client, gen, bn):
    # Index 70 lies in the second chunk of 64: only that chunk is drawn, and it must still match.
    for index in (0, 7, 70):
        img = _png(client.get("/api/face.png", params={"seed": 9, "index": index, "scale": 1, "bn": bn}))
        assert np.array_equal(img, _face(gen, 9, index, bn))
    big = _png(client.get("/api/face.png", params={"seed": 9, "index": 7, "scale": 5, "bn": bn}))
    assert big.shape == (5 * S, 5 * S, 3)
    assert np.array_equal(big[::5, ::5], _face(gen, 9, 7, bn))
    assert _png(client.get("/api/face.png?seed=9")).shape == (8 * S, 8 * S, 3)  # default scale


@pytest.mark.parametrize("bn", ["batch", "eval"])
def test_interpolation_ends_are_the_seeds_faces(client, gen, bn):
    def at(t):
        return _png(
            client.get("/api/interpolate.png", params={"a": 4, "b": 11, "t": t, "scale": 1, "bn": bn})
        )

    assert np.array_equal(at(0), _face(gen, 4, 0, bn))
    assert np.array_equal(at(1), _face(gen, 11, 0, bn))
    middle = at(0.5)
    assert not np.array_equal(middle, at(0)) and not np.array_equal(middle, at(1))
    assert np.array_equal(middle, at(0.5))
    big = _png(client.get("/api/interpolate.png", params={"a": 4, "b": 11, "t": 0.25, "bn": bn}))
    assert big.shape == (8 * S, 8 * S, 3)
    _png(client.get("/api/interpolate.png", params={"a": 4, "b": 4, "t": 0.5, "bn": bn}))  # a == b


def test_only_versioned_urls_are_cached_long(client):
    version = client.get("/api/info").json()["version"]
    assert "max-age" in client.get(f"/api/face.png?seed=1&v={version}").headers["cache-control"]
    assert client.get("/api/face.png?seed=1").headers["cache-control"] == "no-cache"
    assert client.get("/api/face.png?seed=1&v=old").headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "url",
    [
        "/api/grid.png?n=81",
        "/api/grid.png?n=0",
        "/api/grid.png?seed=-1",
        "/api/grid.png?seed=4294967296",
        "/api/grid.png?seed=abc",
        "/api/grid.png?nrow=0",
        "/api/grid.png?bn=train",
        "/api/face.png?index=80",
        "/api/face.png?index=-3",
        "/api/face.png?scale=9",
        "/api/face.png?scale=0",
        "/api/face.png?scale=100000000000000000000000",
        "/api/face.png?scale=1.5",
        "/api/interpolate.png?a=1",
        "/api/interpolate.png?a=1&b=2&t=1.01",
        "/api/interpolate.png?a=1&b=2&t=-0.1",
        "/api/interpolate.png?a=1&b=2&t=nan",
        "/api/interpolate.png?a=1&b=2&t=inf",
        "/api/interpolate.png?a=-1&b=2",
        "/api/interpolate.png?a=1&b=2&scale=99",
        "/api/nothing",
    ],
)
def test_bad_parameters_are_4xx_json(client, url):
    r = client.get(url)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    assert error and "\n" not in error and len(error) < 300


def test_error_names_the_parameter(client):
    r = client.get("/api/grid.png?n=500")
    assert r.status_code == 422 and r.json()["error"].startswith("n: ") and "80" in r.json()["error"]
    assert client.post("/api/grid.png").status_code == 405


def test_max_n_is_checked(gen):
    with pytest.raises(UserError, match="--max-n"):
        serve.create_app(gen, max_n=0)
    with pytest.raises(UserError, match="--max-n"):
        serve.create_app(gen, max_n=serve.MAX_N_LIMIT + 1)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_concurrent_requests_on_a_real_server(gen):
    app = serve.create_app(gen)
    urls = []
    for i in range(200):
        kind = i % 4
        if kind == 0:
            urls.append(f"/api/grid.png?seed={i}&n={1 + i % 64}&nrow=8")
        elif kind == 1:
            urls.append(f"/api/face.png?seed={i}&index={i % 64}&scale={1 + i % 8}&bn=eval")
        elif kind == 2:
            urls.append(f"/api/interpolate.png?a={i}&b={i + 1}&t={(i % 101) / 100}")
        else:
            urls.append("/healthz" if i % 8 == 3 else urls[0])  # repeats must give the same bytes

    with serve.BackgroundServer(app) as base:
        assert base.startswith("http://127.0.0.1:")

        def fetch(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(base + path, timeout=60) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        for path in urls[:8]:  # warm up: lazily allocated pools and caches are not growth
            fetch(path)
        gc.collect()
        before = _rss_mb()
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(fetch, urls))
        gc.collect()
        grown = _rss_mb() - before
        assert fetch("/api/grid.png?n=1000")[0] == 422
    assert [status for status, _ in results] == [200] * len(urls)
    for path, (_, body) in zip(urls, results, strict=True):
        if path.startswith("/healthz"):
            assert json.loads(body)["status"] == "ok"
        else:
            with Image.open(io.BytesIO(body)) as im:
                im.load()
    assert grown < 300, f"RSS grew by {grown:.0f} MB"
    repeats = {body for path, (_, body) in zip(urls, results, strict=True) if path == urls[0]}
    assert len(repeats) == 1 and results[4][1] not in repeats


def test_busy_port_is_a_user_error():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve.bind("127.0.0.1", port)
    with pytest.raises(UserError, match="--port"):
        serve.bind("127.0.0.1", 70000)


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="animegen")
    return parser, add_serve_parser(parser.add_subparsers())


def test_cli_handler(gen, monkeypatch, capsys):
    import uvicorn

    served = {}

    def fake_run(self, sockets=None):
        served["app"], served["address"] = self.config.app, sockets[0].getsockname()

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    parser, sub = _parser()
    assert sub.epilog.startswith("example")
    args = parser.parse_args(["serve", str(gen.source), "--port", "0", "--max-n", "12"])
    assert (args.host, args.max_n) == ("127.0.0.1", 12)
    assert args.func(args) == 0
    assert served["address"][0] == "127.0.0.1"
    assert f"at http://127.0.0.1:{served['address'][1]}/" in capsys.readouterr().out
    assert served["app"].state.info["max_n"] == 12
    args = parser.parse_args(["serve", str(gen.source), "--max-n", "0"])
    with pytest.raises(UserError, match="--max-n"):
        args.func(args)


def test_truncation_is_a_query_parameter(client, gen):
    grid = _png(client.get("/api/grid.png?seed=3&n=4&nrow=4&truncation=0.5"))
    want = make_grid(gen.sample(4, seed=3, truncation=0.5), nrow=4, padding=serve.GRID_PADDING)
    assert np.array_equal(grid, want)
    face = _png(client.get("/api/face.png?seed=3&index=2&scale=1&truncation=0.5"))
    assert np.array_equal(face, gen.sample(3, seed=3, truncation=0.5)[2].permute(1, 2, 0).numpy())
    assert _png(client.get("/api/interpolate.png?a=1&b=2&t=0.3&scale=1&truncation=1")).shape[0] == S
    for bad in ("0", "-1", "nan", "11"):
        r = client.get(f"/api/grid.png?truncation={bad}")
        assert r.status_code == 422 and "truncation" in r.json()["error"]
