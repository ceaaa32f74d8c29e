"""ROS image messages <-> numpy, without ROS (no cv_bridge wheel exists for ROS 2 on PyPI).

Works on the message *fields*, so the same code serves rclpy messages, rosbags
messages and tests:

* :func:`decode_image` -- ``sensor_msgs/Image`` fields -> uint8 RGB ``[H, W, 3]``,
  honouring ``step`` (row padding) and ``is_bigendian``. Encodings: rgb8, bgr8,
  rgba8, bgra8, mono8, mono16 / 16UC1 (scaled to 8 bit by a fixed shift, or by the bit depth each
  frame uses, :func:`mono16_depth_shift`: 12-bit data by >> 4), yuv422 / uyvy /
  UYVY, yuyv / yuv422_yuy2 / YUYV (YUV 4:2:2 as OpenCV's converters read it).
* :func:`decode_compressed` -- ``sensor_msgs/CompressedImage`` (jpeg, png, ...)
  via ``cv2.imdecode``.
* :func:`label_image` -- class ids -> (encoding, step, bytes) of a mono8 label
  image (mono16 when the label set has more than 255 classes; 255 = ignore).
* :func:`compress` -- an image -> the ``format`` and ``data`` of a ``sensor_msgs/CompressedImage``
  (JPEG or PNG, as image_transport's ``compressed`` plugin names them).
* :func:`scale_camera_info` -- a ``sensor_msgs/CameraInfo`` resized to the label image
  (intrinsics scaled as image_proc's resize node does).

Errors are :class:`ImageDecodeError` (bad data) or :class:`UnsupportedEncoding`,
never a crash of the caller's loop.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

#: encoding -> (channels, bytes per channel)
_LAYOUT = {"rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1), "mono8": (1, 1), "8UC1": (1, 1),
           "mono16": (1, 2), "16UC1": (1, 2), "yuv422": (2, 1), "uyvy": (2, 1), "UYVY": (2, 1),
           "yuyv": (2, 1), "yuv422_yuy2": (2, 1), "YUYV": (2, 1), "8UC3": (3, 1)}


class ImageDecodeError(ValueError):
    """The message's data does not fit its header (truncated, wrong step, corrupt)."""


class UnsupportedEncoding(ImageDecodeError):
    """An encoding this converter does not read."""


def decode_image(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False,
                 mono16_shift: int = -1) -> np.ndarray:
    """``sensor_msgs/Image`` fields -> uint8 RGB ``[height, width, 3]`` (a copy). 16-bit grey is shifted
    right by ``mono16_shift`` bits (0-8), or by :func:`mono16_depth_shift` of each frame when it is -1.

    Raises:
        UnsupportedEncoding: unknown ``encoding`` (the message names it).
        ImageDecodeError: zero size, ``step`` smaller than a row, or fewer than
            ``step * height`` bytes of data.
    """
    import cv2

    if encoding not in _LAYOUT:
        raise UnsupportedEncoding(f"unsupported image encoding {encoding!r}; supported: {', '.join(_LAYOUT)}")
    ch, bpc = _LAYOUT[encoding]
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image {width}x{height}")
    row = width * ch * bpc
    if step < row:
        raise ImageDecodeError(f"step {step} < row size {row} for {width}px {encoding}")
    buf = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray)) else data,
                        dtype=np.uint8)
    if buf.size < step * height:
        raise ImageDecodeError(f"truncated image: {buf.size} bytes for {height} rows of step {step}")
    rows = buf[:step * height].reshape(height, step)[:, :row]
    if bpc == 2:
        px = rows.copy().view(">u2" if is_bigendian else "<u2").reshape(height, width)
        shift = mono16_depth_shift(px) if mono16_shift < 0 else int(mono16_shift)
        gray = np.minimum(px >> shift, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(rows).reshape(height, width, ch)
    if encoding in ("rgb8", "8UC3"):
        return img.copy()
    if encoding == "bgr8":
        return np.ascontiguousarray(img[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(img[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(img[:, :, 2::-1])
    if encoding in ("mono8", "8UC1"):
        return np.repeat(img, 3, axis=2)
    if width % 2:
        raise ImageDecodeError(f"YUV 4:2:2 needs an even width, got {width}")
    code = cv2.COLOR_YUV2RGB_UYVY if encoding in ("yuv422", "uyvy", "UYVY") else cv2.COLOR_YUV2RGB_YUYV
    return cv2.cvtColor(img, code)


def mono16_depth_shift(px: np.ndarray) -> int:
    """Right shift that brings 16-bit grey ``px`` to 8 bits by the bit depth its largest value uses
    (0-255: 0; a 12-bit camera, values up to 4095: 4; full 16-bit range: 8). A power of two rather than
    the frame's maximum, so the scale only changes when a frame's maximum crosses one (a dark scene, a
    hot pixel); the node's ``mono16_shift`` parameter fixes it for a camera of known bit depth."""
    top = int(px.max()) if px.size else 0
    return max(0, top.bit_length() - 8)


def decode_compressed(fmt: str, data) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` -> uint8 RGB ``[H, W, 3]``.

    A JPEG must end with its end-of-image marker and a PNG with its ``IEND`` chunk
    (trailing zero padding allowed): OpenCV decodes a truncated file with a valid header
    into a partly grey image without an error, which would pass as a good frame.

    Raises:
        ImageDecodeError: empty, truncated or undecodable data (corrupt file).
    """
    import cv2

    raw = bytes(data)
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size == 0:
        raise ImageDecodeError("empty compressed image")
    tail = raw[-64:].rstrip(b"\x00")
    if raw[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        raise ImageDecodeError(f"truncated JPEG ({buf.size} bytes, no end-of-image marker)")
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail[-12:]:
        raise ImageDecodeError(f"truncated PNG ({buf.size} bytes, no IEND chunk)")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError(f"cannot decode compressed image (format {fmt!r}, {buf.size} bytes)")
    return np.ascontiguousarray(img[:, :, ::-1])


def decode_message(msg, mono16_shift: int = -1) -> Tuple[np.ndarray, float]:
    """A ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` (any object with their fields:
    a ``format`` field marks a compressed one) -> ``(frame uint8 RGB [H, W, 3], stamp s)``, the
    stamp from the header (``sec + nanosec * 1e-9``).

    Raises:
        UnsupportedEncoding / ImageDecodeError: as :func:`decode_image` / :func:`decode_compressed`.
    """
    if hasattr(msg, "format"):
        frame = decode_compressed(msg.format, msg.data)
    else:
        frame = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian),
                             mono16_shift)
    return frame, msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def encode_image(rgb: np.ndarray) -> Tuple[str, int, bytes]:
    """uint8 RGB ``[H, W, 3]`` -> ``("rgb8", step, data)`` for a ``sensor_msgs/Image``."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return "rgb8", rgb.shape[1] * 3, rgb.tobytes()


def label_image(labels: np.ndarray, num_classes: int) -> Tuple[str, int, bytes]:
    """Class ids ``[H, W]`` -> ``(encoding, step, data)`` of the label image.

    The dtype is :func:`ditta_ros.inference.label_dtype`'s: ``mono8`` (one byte per pixel,
    255 = ignore) for label sets of at most 255 classes, else little-endian ``mono16``
    (65535 = ignore).
    """
    from .inference import label_dtype

    if label_dtype(num_classes) == np.uint8:
        arr = np.ascontiguousarray(labels, dtype=np.uint8)
        return "mono8", arr.shape[1], arr.tobytes()
    arr = np.ascontiguousarray(labels, dtype="<u2")
    return "mono16", arr.shape[1] * 2, arr.tobytes()


def compress(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> Tuple[str, bytes]:
    """An image -> ``(format, data)`` of a ``sensor_msgs/CompressedImage``, with the ``format``
    string image_transport's ``compressed`` plugin writes (``"rgb8; jpeg compressed bgr8"``,
    ``"mono8; png compressed mono8"``), so its subscribers and Foxglove decode it.

    Args:
        image: uint8 RGB ``[H, W, 3]`` (JPEG or PNG) or uint8 / uint16 ``[H, W]`` (PNG, lossless:
            a label image).
        fmt: ``jpeg`` | ``png``.
        quality: JPEG quality in [1, 100].

    Raises:
        ValueError: another format, a JPEG of a single-channel image, or a failed encoding.
    """
    import cv2

    if fmt not in ("jpeg", "png"):
        raise ValueError(f"format must be jpeg or png, got {fmt!r}")
    colour = image.ndim == 3
    if fmt == "jpeg" and not colour:
        raise ValueError("JPEG is for the colour image; label images are sent as PNG (lossless)")
    data = np.ascontiguousarray(image[:, :, ::-1]) if colour else np.ascontiguousarray(image)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"), data, params)
    if not ok:
        raise ValueError(f"{fmt} encoding failed for an image of shape {image.shape}")
    raw = "rgb8" if colour else ("mono16" if image.dtype == np.uint16 else "mono8")
    return f"{raw}; {fmt} compressed {'bgr8' if colour else raw}", buf.tobytes()


def scale_camera_info(info, height: int, width: int):
    """A ``sensor_msgs/CameraInfo`` (any object with its fields) for an image of ``height`` x ``width``
    made from the camera's: a deep copy with ``height``/``width`` set and, when the camera's size is
    known (non-zero) and differs, ``K`` (``fx, cx, fy, cy``), ``P`` (``fx', cx', Tx, fy', cy', Ty``) and the
    ROI scaled by ``sx = width / info.width``, ``sy = height / info.height``, as image_proc's resize node
    scales them (it takes the factors from the image, which has the camera_info's size unless the camera
    bins; distortion, ``R`` and binning are kept). The header is the caller's to set.

    Raises:
        ValueError: ``height`` or ``width`` below 1.
    """
    import copy

    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    out = copy.deepcopy(info)
    if info.width and info.height and (info.width, info.height) != (width, height):
        sx, sy = width / float(info.width), height / float(info.height)
        k, p = [float(v) for v in info.k], [float(v) for v in info.p]
        k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
        p[0], p[2], p[3], p[5], p[6], p[7] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy, p[7] * sy
        out.k, out.p = k, p
        roi = out.roi
        roi.x_offset, roi.width = int(round(roi.x_offset * sx)), int(round(roi.width * sx))
        roi.y_offset, roi.height = int(round(roi.y_offset * sy)), int(round(roi.height * sy))
    out.height, out.width = int(height), int(width)
    return out
