"""animegen.data.decode under fuzzing: arbitrary and mutated bytes fail cleanly or decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_corpus import encode, noise

from animegen.data.images import BadImage, load_image

# A decoder that hangs on some input would stall the suite, not fail it: bound every test.
pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------------ fuzzing

_SEEDS = [
    encode(noise((20, 18)), "JPEG", quality=80),
    encode(noise((20, 18)), "PNG"),
    encode(noise((20, 18)).convert("P"), "GIF"),
    encode(noise((20, 18)), "WEBP"),
    encode(noise((20, 18)), "BMP"),
]


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> Path:
    # module-scoped: hypothesis reruns the test body many times within one fixture instance
    return tmp_path_factory.mktemp("fuzz") / "fuzz.jpg"


def _check_load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        arr = load_image(path, 8)
    except BadImage as e:
        assert e.reason and "\n" not in e.reason
    else:
        assert arr.shape == (3, 8, 8) and arr.dtype == np.uint8


_FUZZ_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@_FUZZ_SETTINGS
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(fuzz_file, data):
    _check_load(fuzz_file, data)


@st.composite
def mutated_image(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if op == "set":
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif len(data) > 1:
            del data[pos]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@_FUZZ_SETTINGS
@given(mutated_image())
def test_fuzz_mutated_images(fuzz_file, data):
    _check_load(fuzz_file, data)
