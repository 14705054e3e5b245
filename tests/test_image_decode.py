"""animegen.data.decode: robust decoding of good, bad and unusual image files."""

from __future__ import annotations

import errno
import os
import pickle
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from image_corpus import (
    BAD,
    BLUE,
    GOOD,
    GREEN,
    RED,
    WHITE,
    YELLOW,
    S,
    assert_colour,
    encode,
    make_corpus,
    noise,
    solid,
    two_colour,
    write,
)
from PIL import Image

from animegen.data import decode, images
from animegen.data.images import (
    BadImage,
    DecodeReport,
    ImageFile,
    decode_all,
    load_image,
    scan_folder,
)

# A regression in the symlink-loop or FIFO handling would hang, not fail: bound every test.
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_images_decode(corpus, name):
    arr = load_image(corpus / name, S)
    assert arr.shape == (3, S, S) and arr.dtype == np.uint8
    assert arr.flags.c_contiguous and arr.flags.writeable
    assert_colour(arr, GOOD[name])


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_raise_badimage_with_reason(corpus, name):
    path = corpus / name
    t0 = time.perf_counter()
    with pytest.raises(BadImage) as e:
        load_image(path, S)
    assert time.perf_counter() - t0 < 2  # bombs are refused from the header, not decoded
    assert e.value.reason.startswith(BAD[name]), e.value.reason
    assert e.value.path == str(path)
    assert str(e.value) == f"{path}: {e.value.reason}"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("loop.jpg", "symlink loop"),
        ("dangling.png", "file not found"),
        ("fifo.jpg", "not a regular file"),
        ("folder.jpg", "not a regular file"),
        ("notes.txt", "not an image"),
        ("missing.png", "file not found"),
    ],
)
def test_files_scan_skips_still_fail_cleanly(corpus, name, reason):
    with pytest.raises(BadImage) as e:
        load_image(corpus / name, S)  # must not hang on the FIFO
    assert e.value.reason == reason


def test_unreadable_file(tmp_path, monkeypatch):
    path = write(tmp_path / "locked.png", encode(solid(RED), "PNG"))
    if os.geteuid() == 0:
        # root reads through chmod 000, so simulate the failing open()
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr(decode, "open", denied, raising=False)
    else:
        path.chmod(0)
    try:
        with pytest.raises(BadImage) as e:
            load_image(path, S)
        assert e.value.reason == "unreadable (permission denied)"
    finally:
        path.chmod(0o644)


def test_badimage_pickles():
    e = pickle.loads(pickle.dumps(BadImage("/x/a.jpg", "truncated")))
    assert (e.path, e.reason, str(e)) == ("/x/a.jpg", "truncated", "/x/a.jpg: truncated")


def test_too_small_rule(tmp_path):
    assert (
        images.min_image_side(64) == 16 and images.min_image_side(32) == 8 and images.min_image_side(4) == 2
    )
    ok = write(tmp_path / "ok.png", encode(solid(RED, size=(16, 40)), "PNG"))
    assert load_image(ok, 64).shape == (3, 64, 64)
    small = write(tmp_path / "small.png", encode(solid(RED, size=(15, 40)), "PNG"))
    with pytest.raises(BadImage, match=r"too small \(15x40\)"):
        load_image(small, 64)


def test_invalid_size():
    with pytest.raises(ValueError):
        load_image("whatever.png", 0)
    with pytest.raises(ValueError):
        decode_all([], -3)


def test_wide_image_resized_on_shorter_side_and_centre_cropped(tmp_path):
    # 200x100: red | green-over-yellow | blue. Only the middle 100x100 square must survive, unsquashed.
    im = Image.new("RGB", (200, 100), RED)
    im.paste(GREEN, (50, 0, 150, 50))
    im.paste(YELLOW, (50, 50, 150, 100))
    im.paste(BLUE, (150, 0, 200, 100))
    arr = load_image(write(tmp_path / "wide.png", encode(im, "PNG")), 32).astype(int)
    inner = arr[:, :, 3:29]  # edge columns may see a little of the neighbours through the filter
    assert np.abs(inner[:, :14] - np.array(GREEN)[:, None, None]).max() <= 8
    assert np.abs(inner[:, 18:] - np.array(YELLOW)[:, None, None]).max() <= 8
    assert arr[2].max() <= 30  # no blue anywhere: the right quarter was cropped away
    # the same pattern transposed (tall image) crops top and bottom
    tall = im.transpose(Image.Transpose.TRANSPOSE)
    arr_t = load_image(write(tmp_path / "tall.png", encode(tall, "PNG")), 32).astype(int)
    np.testing.assert_allclose(arr_t, arr.transpose(0, 2, 1), atol=2)


def test_exact_size_and_crop_only_paths_are_lossless(tmp_path):
    px = noise((24, 24))
    arr = load_image(write(tmp_path / "exact.png", encode(px, "PNG")), 24)
    np.testing.assert_array_equal(arr, np.asarray(px).transpose(2, 0, 1))
    wide = noise((30, 24), seed=3)
    arr = load_image(write(tmp_path / "wide.png", encode(wide, "PNG")), 24)
    np.testing.assert_array_equal(arr, np.asarray(wide)[:, 3:27].transpose(2, 0, 1))


def test_exif_orientation_applied(tmp_path):
    # stored 40x20 left red / right blue; orientation 6 = rotate 90 deg clockwise for display,
    # so the displayed 20x40 image is red on top, blue below.
    exif = Image.Exif()
    exif[0x0112] = 6
    im = two_colour((40, 20), RED, BLUE)
    arr = load_image(write(tmp_path / "rot.jpg", encode(im, "JPEG", quality=95, exif=exif.tobytes())), S)
    assert_colour(arr[:, :5, :], RED, tol=25)
    assert_colour(arr[:, -5:, :], BLUE, tol=25)
    # without the tag: left red, right blue
    arr = load_image(write(tmp_path / "plain.jpg", encode(im, "JPEG", quality=95)), S)
    assert_colour(arr[:, :, :5], RED, tol=25)
    assert_colour(arr[:, :, -5:], BLUE, tol=25)


def test_palette_transparency_becomes_white(tmp_path):
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (16, 0, 32, 32))
    arr = load_image(write(tmp_path / "pal.png", encode(im, "PNG", transparency=0)), S)
    assert_colour(arr[:, :, :6], WHITE, tol=1)
    assert_colour(arr[:, :, -6:], RED, tol=1)
    arr = load_image(write(tmp_path / "pal.gif", encode(im, "GIF", transparency=0)), S)
    assert_colour(arr[:, :, :6], WHITE, tol=1)


def test_alpha_modes_composite_on_white(tmp_path):
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (16, 0, 32, 32))
    arr = load_image(write(tmp_path / "rgba.png", encode(rgba, "PNG")), S)
    assert_colour(arr[:, :, :6], WHITE, tol=1)
    assert_colour(arr[:, :, -6:], BLUE, tol=1)
    half = load_image(write(tmp_path / "half.png", encode(solid((0, 0, 0, 128), mode="RGBA"), "PNG")), S)
    assert_colour(half, (127, 127, 127), tol=2)
    la = Image.new("LA", (32, 32), (0, 0))
    la.paste((0, 255), (16, 0, 32, 32))
    arr = load_image(write(tmp_path / "la.png", encode(la, "PNG")), S)
    assert_colour(arr[:, :, :6], WHITE, tol=1)
    assert_colour(arr[:, :, -6:], (0, 0, 0), tol=1)
    webp = load_image(write(tmp_path / "a.webp", encode(rgba, "WEBP", lossless=True)), S)
    assert_colour(webp[:, :, :6], WHITE, tol=1)


def test_other_modes(tmp_path):
    grey = load_image(write(tmp_path / "l.png", encode(solid(77, mode="L"), "PNG")), S)
    assert_colour(grey, (77, 77, 77), tol=0)
    bw = Image.new("1", (32, 32), 0)
    bw.paste(1, (16, 0, 32, 32))
    arr = load_image(write(tmp_path / "bw.png", encode(bw, "PNG")), S)
    assert_colour(arr[:, :, :6], (0, 0, 0), tol=1)
    assert_colour(arr[:, :, -6:], WHITE, tol=1)
    ycc = load_image(write(tmp_path / "grey.jpg", encode(solid(200, mode="L"), "JPEG")), S)
    assert_colour(ycc, (200, 200, 200), tol=2)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    im = Image.fromarray(np.tile(ramp, (64, 1)))
    assert im.mode == "I;16"
    path = write(tmp_path / "deep.png", encode(im, "PNG"))
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    arr = load_image(path, 64)
    expected = np.round(ramp / 257.0)
    np.testing.assert_allclose(arr[0, 10], expected, atol=1)
    np.testing.assert_array_equal(arr[0], arr[1])
    assert arr[0, 0, 0] == 0 and arr[0, 0, -1] == 255 and 100 < arr[0, 0, 32] < 155


def test_high_depth_helpers():
    f = Image.fromarray(np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1)))
    assert f.mode == "F"
    out = np.asarray(decode._high_depth_to_l(f))
    assert out[0, 0] == 0 and out[0, -1] == 255
    i32 = Image.fromarray(np.tile(np.array([-5, 0, 5, 1000], dtype=np.int32), (4, 1)))
    out = np.asarray(decode._high_depth_to_l(i32))
    assert out[0, 0] == 0 and out[0, -1] == 255 and out.dtype == np.uint8


def test_big_jpeg_draft_matches_full_decode(tmp_path):
    # Gradients plus stripes with a period of ~3 output pixels: drafting below 2x the target
    # (e.g. to 1/8 = 100x75) visibly washes the stripes out; drafting to >= 2x must not.
    y, x = np.mgrid[0:600, 0:800]
    stripes = 60 * np.sin(2 * np.pi * x / 28) * np.sin(2 * np.pi * y / 31)
    rgb = np.stack(
        [x * 190 / 800 + stripes + 30, y * 190 / 600 + 30, (x + y) * 190 / 1400 + 30 - stripes], -1
    )
    rgb = rgb.clip(0, 255).astype(np.uint8)
    path = write(tmp_path / "big.jpg", encode(Image.fromarray(rgb), "JPEG", quality=95))
    arr = load_image(path, 64).astype(int)
    with Image.open(path) as im:
        ref = im.convert("RGB").resize(
            (64, 64), Image.Resampling.LANCZOS, box=(100, 0, 700, 600), reducing_gap=3.0
        )
    ref = np.asarray(ref).transpose(2, 0, 1).astype(int)
    assert np.abs(arr - ref).mean() < 1.5
    assert np.abs(arr - ref).max() <= 12


def test_good_images_emit_no_warnings(corpus, tmp_path):
    # The internal decoder, without load_image's warning filter, must be warning-free for normal files.
    exif = Image.Exif()
    exif[0x0112] = 6
    extra = [
        write(tmp_path / "rot.jpg", encode(noise((40, 30)), "JPEG", exif=exif.tobytes())),
        write(tmp_path / "pal.png", encode(solid(RED).convert("P"), "PNG", transparency=0)),
        write(tmp_path / "la.png", encode(solid((3, 90), mode="LA"), "PNG")),
    ]
    filters_before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in [corpus / n for n in GOOD] + extra:
            assert decode._load_hwc(str(path), S).shape == (S, S, 3)
        # the public API under -W error: bad files (bombs in Pillow's warning range included)
        # are clean BadImages, and no filters leak out
        for name in BAD:
            with pytest.raises(BadImage):
                load_image(corpus / name, S)
    assert warnings.filters == filters_before


def test_non_utf8_file_names(tmp_path):
    root = os.fsencode(tmp_path / "raw")
    os.mkdir(root)
    for name, data in [(b"caf\xe9.png", encode(solid(RED), "PNG")), (b"bad\xff\nname.jpg", b"nope")]:
        fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)
    files = scan_folder(os.fsdecode(root))
    assert len(files) == 2
    arr, report = decode_all(files, S)
    assert arr.shape == (1, 3, S, S)
    assert_colour(arr[0], RED)
    [(path, reason)] = report.skipped
    assert reason == "not an image" and os.fsencode(path).endswith(b"bad\xff\nname.jpg")
    line = report.warning_line()
    line.encode("utf-8")  # printable: no lone surrogates
    assert "\n" not in line and "bad\ufffd?name.jpg (not an image)" in line


# ------------------------------------------------------------------------------------ decode_all


def test_decode_all_skips_bad_and_keeps_order(corpus):
    files = scan_folder(corpus)
    seen = []
    arr, report = decode_all(files, S, progress=seen.append)
    good_files = [f for f in files if f.path.name in GOOD or f.path.name == "deep.png"]
    assert arr.shape == (len(good_files), 3, S, S) and arr.dtype == np.uint8
    assert report.decoded == len(good_files)
    assert {Path(p).name: r for p, r in report.skipped}.keys() == BAD.keys()
    for p, r in report.skipped:
        assert r.startswith(BAD[Path(p).name])
    for row, f in zip(arr, good_files, strict=True):
        np.testing.assert_array_equal(row, load_image(f.path, S))
    assert seen and seen[-1] == len(files) and seen == sorted(seen)
    line = report.warning_line()
    assert line.startswith(f"skipped {len(BAD)} of {len(files)} files that are not usable images: ")
    assert line.endswith(f", and {len(BAD) - 3} more")


def test_decode_all_into_memmap_and_threads_match(corpus, tmp_path):
    good = [f for f in scan_folder(corpus) if f.path.name in GOOD]
    bad = [f for f in scan_folder(corpus) if f.path.name in BAD]
    # enough files to exercise several chunks and in-flight windows, bad ones interleaved
    files = [good[i % len(good)] if i % 5 else bad[i % len(bad)] for i in range(90)]
    serial, rep0 = decode_all(files, S, workers=0)
    out = np.memmap(tmp_path / "cache.u8", dtype=np.uint8, mode="w+", shape=(len(files), 3, S, S))
    counts = []
    threaded, rep2 = decode_all(files, S, out=out, workers=2, progress=counts.append)
    assert isinstance(threaded, np.memmap) and np.shares_memory(threaded, out)
    assert threaded.shape == serial.shape == (72, 3, S, S)
    np.testing.assert_array_equal(np.asarray(threaded), serial)
    assert rep0 == rep2
    assert counts[-1] == len(files)
    out.flush()
    back = np.memmap(tmp_path / "cache.u8", dtype=np.uint8, mode="r", shape=(len(files), 3, S, S))
    np.testing.assert_array_equal(back[:72], serial)


def test_progress_error_stops_workers(corpus):
    files = [f for f in scan_folder(corpus) if f.path.name in GOOD] * 20

    def boom(n: int) -> None:
        raise RuntimeError("stop")

    filters_before = list(warnings.filters)
    with pytest.raises(RuntimeError, match="stop"):
        decode_all(files, S, workers=2, progress=boom)
    assert not [t for t in threading.enumerate() if t.name.startswith("animegen-decode")]
    assert warnings.filters == filters_before


def test_decode_all_validates_out_and_handles_empty():
    arr, report = decode_all([], S)
    assert arr.shape == (0, 3, S, S) and report.warning_line() is None
    fake = [ImageFile(Path("/nonexistent/a.png"), 1, 0)] * 3
    with pytest.raises(ValueError):
        decode_all(fake, S, out=np.zeros((2, 3, S, S), np.uint8))
    with pytest.raises(ValueError):
        decode_all(fake, S, out=np.zeros((3, 3, S, S), np.float32))
    arr, report = decode_all(fake, S, out=np.zeros((5, 3, S, S), np.uint8))
    assert arr.shape == (0, 3, S, S) and report.skipped[0] == ("/nonexistent/a.png", "file not found")


# ------------------------------------------------------------------------------------ DecodeReport


def test_warning_line_format():
    skipped = [
        ("a.jpg", "truncated"),
        ("b.png", "not an image"),
        ("c.jpg", "empty file"),
        ("d.jpg", "truncated"),
        ("e.jpg", "truncated"),
    ]
    report = DecodeReport(decoded=995, skipped=skipped)
    assert report.warning_line() == (
        "skipped 5 of 1,000 files that are not usable images: "
        "a.jpg (truncated), b.png (not an image), c.jpg (empty file), and 2 more"
    )
    assert DecodeReport(decoded=2, skipped=skipped[:3]).warning_line() == (
        "skipped 3 of 5 files that are not usable images: "
        "a.jpg (truncated), b.png (not an image), c.jpg (empty file)"
    )
    assert DecodeReport(decoded=0, skipped=skipped[:1]).warning_line() == (
        "skipped 1 of 1 file that are not usable images: a.jpg (truncated)"
    )
    assert report.warning_line(max_named=0) == "skipped 5 of 1,000 files that are not usable images"
    assert report.warning_line(max_named=1).endswith("a.jpg (truncated), and 4 more")
    assert DecodeReport(decoded=10).warning_line() is None
    rooted = DecodeReport(decoded=1, skipped=[("/data/faces/x/a.jpg", "truncated")], root="/data/faces")
    assert rooted.warning_line().endswith(": x/a.jpg (truncated)")
