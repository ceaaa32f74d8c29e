"""Image message conversions (ROS-free): every supported encoding, row padding, bad data."""

import cv2
import numpy as np
import pytest

from ditta_ros.inference import label_dtype
from ditta_ros.imgmsg import (ImageDecodeError, UnsupportedEncoding, decode_compressed, decode_image, encode_image,
                              label_image)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 255, (6, 8, 3), dtype=np.uint8)


def _padded(arr2d_bytes: np.ndarray, pad: int):
    h = arr2d_bytes.shape[0]
    rows = arr2d_bytes.reshape(h, -1)
    out = np.concatenate([rows, np.full((h, pad), 7, np.uint8)], 1)
    return out.shape[1], out.tobytes()


@pytest.mark.parametrize("pad", [0, 5])
def test_rgb_family_round_trips_with_row_padding(pad):
    cases = {"rgb8": RGB, "bgr8": RGB[:, :, ::-1], "rgba8": np.dstack([RGB, np.full((6, 8), 9, np.uint8)]),
             "bgra8": np.dstack([RGB[:, :, ::-1], np.full((6, 8), 9, np.uint8)])}
    for enc, arr in cases.items():
        step, data = _padded(np.ascontiguousarray(arr), pad)
        out = decode_image(enc, 6, 8, step, data)
        assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
        assert np.array_equal(out, RGB), enc


def test_mono_and_16_bit_with_endianness():
    gray = RGB[:, :, 0]
    assert np.array_equal(decode_image("mono8", 6, 8, 8, gray.tobytes())[:, :, 1], gray)
    v16 = gray.astype(np.uint16) * 256 + 17
    le = decode_image("mono16", 6, 8, 16, v16.astype("<u2").tobytes(), False)
    be = decode_image("16UC1", 6, 8, 16, v16.astype(">u2").tobytes(), True)
    assert np.array_equal(le[:, :, 0], gray) and np.array_equal(be[:, :, 2], gray)


SMOOTH = np.repeat(np.clip(RNG.integers(40, 200, (6, 4, 3)), 0, 255).astype(np.uint8), 2, axis=1)  # pairs share chroma


def test_yuv422_matches_opencv_conversion():
    yuv = cv2.cvtColor(SMOOTH, cv2.COLOR_RGB2YUV)
    y, u, v = yuv[:, :, 0], yuv[:, :, 1], yuv[:, :, 2]
    uyvy = np.zeros((6, 8, 2), np.uint8)
    uyvy[:, :, 1] = y
    uyvy[:, 0::2, 0], uyvy[:, 1::2, 0] = u[:, 0::2], v[:, 0::2]
    out = decode_image("uyvy", 6, 8, 16, uyvy.tobytes())
    assert np.array_equal(out, cv2.cvtColor(uyvy, cv2.COLOR_YUV2RGB_UYVY))
    neutral = uyvy.copy()
    neutral[:, :, 0] = 128  # no chroma: a grey image, equal channels, brightness follows Y
    grey = decode_image("yuv422", 6, 8, 16, neutral.tobytes())
    assert np.abs(grey[:, :, 0].astype(int) - grey[:, :, 2]).max() <= 1
    assert np.corrcoef(grey[:, :, 1].ravel(), y.ravel())[0, 1] > 0.99
    yuyv = uyvy[:, :, ::-1].copy()
    assert np.array_equal(decode_image("yuyv", 6, 8, 16, yuyv.tobytes()), cv2.cvtColor(yuyv, cv2.COLOR_YUV2RGB_YUYV))


def test_bad_messages_raise_clear_errors():
    with pytest.raises(UnsupportedEncoding, match="'bayer_rggb8'"):
        decode_image("bayer_rggb8", 6, 8, 8, bytes(48))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image("rgb8", 6, 8, 24, bytes(100))
    with pytest.raises(ImageDecodeError, match="step"):
        decode_image("rgb8", 6, 8, 10, bytes(200))
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image("rgb8", 0, 8, 24, b"")
    big = cv2.resize(SMOOTH, (64, 48), interpolation=cv2.INTER_NEAREST)
    ok, jpg = cv2.imencode(".jpg", big[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert np.abs(decode_compressed("jpeg", jpg.tobytes()).astype(int) - big.astype(int)).mean() < 8
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_compressed("jpeg", b"\xff\xd8garbage\xff\xd9")
    # a JPEG cut short keeps a valid header (some OpenCV builds decode it into a partly grey frame)
    cut = jpg.tobytes()[: len(jpg) * 2 // 3]
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_compressed("jpeg", cut)
    assert decode_compressed("jpeg", jpg.tobytes() + bytes(7)).shape == (48, 64, 3)  # zero padding is fine
    ok, png = cv2.imencode(".png", big)
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode_compressed("png", png.tobytes()[:-20])
    assert decode_compressed("png", png.tobytes()).shape == (48, 64, 3)
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_compressed("png", b"")


def test_label_image_and_rgb_encoding():
    labels = RNG.integers(0, 19, (6, 8)).astype(np.uint8)
    enc, step, data = label_image(labels, 19)
    assert (enc, step) == ("mono8", 8) and np.array_equal(np.frombuffer(data, np.uint8).reshape(6, 8), labels)
    enc, step, data = label_image(labels.astype(label_dtype(400)) + 300, 400)
    assert (enc, step) == ("mono16", 16) and np.frombuffer(data, "<u2").max() >= 300
    enc, step, data = encode_image(RGB)
    assert (enc, step) == ("rgb8", 24) and decode_image(enc, 6, 8, step, data).tolist() == RGB.tolist()
