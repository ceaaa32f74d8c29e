"""Image message conversions (ROS-free): every supported encoding, row padding, bad data."""

import cv2
import numpy as np
import pytest

from ditta_ros.inference import label_dtype
from ditta_ros.imgmsg import (ImageDecodeError, UnsupportedEncoding, compress, decode_compressed, decode_image,
                              encode_image, label_image, mono16_depth_shift, scale_camera_info)

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


def test_mono16_is_scaled_by_the_bit_depth_the_camera_uses():
    """A 12-bit camera (values up to 4095) comes out over the whole 8-bit range (>> 4), not nearly black
    (>> 8 would leave at most 15); 8-bit values in a 16-bit container are kept."""
    ramp = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 87)  # 0 .. 4089: 12 bits
    out = decode_image("mono16", 6, 8, 16, ramp.astype("<u2").tobytes())[:, :, 0]
    assert mono16_depth_shift(ramp) == 4 and out.max() == 4089 >> 4 and np.array_equal(out, (ramp >> 4).astype(np.uint8))
    assert mono16_depth_shift(np.array([0, 255], np.uint16)) == 0 and mono16_depth_shift(np.array([65535], np.uint16)) == 8
    assert mono16_depth_shift(np.zeros((2, 2), np.uint16)) == 0
    # a fixed shift (the node's mono16_shift: a camera of known depth): the same scale whatever the frame holds
    dark = (ramp // 16).astype("<u2")  # a dark frame of the same 12-bit camera: 0 .. 255
    fixed = decode_image("mono16", 6, 8, 16, dark.tobytes(), mono16_shift=4)[:, :, 0]
    assert np.array_equal(fixed, (dark >> 4).astype(np.uint8))
    assert decode_image("mono16", 6, 8, 16, (ramp * 16).astype("<u2").tobytes(), mono16_shift=4).max() == 255


def test_compressed_outputs_decode_to_the_images_they_carry():
    fmt, data = compress(RGB, "jpeg", 95)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert fmt == "rgb8; jpeg compressed bgr8" and back.shape == RGB.shape
    labels = RNG.integers(0, 19, (6, 8)).astype(np.uint8)
    fmt, data = compress(labels, "png")
    assert fmt == "mono8; png compressed mono8"
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), labels)  # lossless
    wide = labels.astype(np.uint16) + 300
    fmt, data = compress(wide, "png")
    assert fmt.startswith("mono16") and np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8),
                                                                    cv2.IMREAD_UNCHANGED), wide)
    with pytest.raises(ValueError, match="PNG"):
        compress(labels, "jpeg")
    with pytest.raises(ValueError, match="jpeg or png"):
        compress(RGB, "webp")


def test_camera_info_is_scaled_to_the_label_image():
    from types import SimpleNamespace

    roi = SimpleNamespace(x_offset=10, y_offset=20, width=200, height=100, do_rectify=False)
    info = SimpleNamespace(width=640, height=480, k=[500.0, 0, 320, 0, 510, 240, 0, 0, 1],
                           p=[500.0, 0, 320, -25.0, 0, 510, 240, 8.0, 0, 0, 1, 0], d=[0.1, 0, 0, 0, 0], roi=roi)
    out = scale_camera_info(info, 240, 320)  # half size
    assert (out.height, out.width) == (240, 320) and out.d == info.d
    assert [out.k[i] for i in (0, 2, 4, 5)] == [250.0, 160.0, 255.0, 120.0]
    assert [out.p[i] for i in (0, 2, 3, 5, 6, 7)] == [250.0, 160.0, -12.5, 255.0, 120.0, 4.0]
    assert (out.roi.x_offset, out.roi.width, out.roi.y_offset, out.roi.height) == (5, 100, 10, 50)
    assert info.k[0] == 500.0 and roi.width == 200  # the camera's message is untouched
    same = scale_camera_info(info, 480, 640)
    assert list(same.k) == info.k and (same.height, same.width) == (480, 640)
    unknown = SimpleNamespace(width=0, height=0, k=[0.0] * 9, p=[0.0] * 12, roi=roi)
    assert (scale_camera_info(unknown, 240, 320).width, scale_camera_info(unknown, 240, 320).k) == (320, [0.0] * 9)
    with pytest.raises(ValueError):
        scale_camera_info(info, 0, 320)


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
