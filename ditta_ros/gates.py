"""Fusion gates: where the add-on may use the previous frame (``has_prev`` of the streaming
state, :class:`~ditta_ros.streaming.StreamingDiTTA`).

* ``max_gap`` (:func:`apply_gates`): frames farther apart than this many seconds are served by
  the plain branch everywhere.
* The motion gate (ours, optional: :class:`MotionGate`). The add-on can only attend to the ``(2r+1)^2`` window around a position of the previous frame; where the scene
moved farther than that between the two processed frames (a sparse stream: a 1 Hz
data set, or a CPU node that processes every 15th camera frame), the attention
cannot find the correspondence and the fused result is wrong. The gate measures
the motion with dense optical flow (OpenCV DIS, from the current frame to the
previous one) and sets ``has_prev = 0`` where the displacement exceeds the
window's reach in frame pixels (:meth:`~ditta_ros.streaming.StreamingDiTTA.window_reach`), or where
the flow does not explain the image (the previous frame warped by the flow differs
from the current one by more than ``max_residual`` grey levels on average over a
9 x 9 neighbourhood of the flow grid: a flow that failed
on a large motion reports a small one): there the plain branch serves. The reach
follows from the geometry (radius x add-on cell size); the residual limit (20 of
255) was fixed before any accuracy was measured.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np
import torch


@functools.lru_cache(maxsize=8)
def _pixel_grid(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` float32 ``[h, w]`` pixel coordinates (cached per size: every frame needs them)."""
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def dis_flow():
    """The OpenCV DIS optical flow every flow-based part of the project uses (FAST preset)."""
    import cv2

    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)


def small_grey(frame: np.ndarray, scale: float) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> uint8 grey ``[round(H scale), round(W scale)]`` (area-resized, at least
    8 px a side): what the flow is computed on."""
    import cv2

    h, w = frame.shape[:2]
    small = cv2.resize(frame, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)


def consistent_flow(dis, grey: np.ndarray, other: np.ndarray, max_fb: float) -> Tuple[np.ndarray, np.ndarray]:
    """Dense flow from ``grey`` to ``other`` (uint8 ``[h, w]`` each, same size) and where it is
    forward-backward consistent.

    Returns:
        ``(flow, ok)``: float32 ``[h, w, 2]`` (x, y) in pixels, each pixel of ``grey`` to where it is in
        ``other``; uint8 ``[h, w]``, 1 where the backward flow at the forward target returns within
        ``max_fb`` pixels.
    """
    fw = dis.calc(grey, other, None)
    return fw, fb_consistent(fw, dis.calc(other, grey, None), max_fb)


def fb_consistent(fw: np.ndarray, bw: np.ndarray, max_fb: float) -> np.ndarray:
    """uint8 ``[h, w]``: 1 where the backward flow ``bw`` (float32 ``[h, w, 2]``, other -> this frame) at the
    forward flow's target (``fw``, this frame -> other) returns within ``max_fb`` pixels."""
    import cv2

    gx, gy = _pixel_grid(*fw.shape[:2])
    back = cv2.remap(bw, gx + fw[..., 0], gy + fw[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return (np.linalg.norm(fw + back, axis=2) <= max_fb).astype(np.uint8)


#: Sundaram, Brox and Keutzer (ECCV 2010)'s motion-boundary check: a pixel is not followed where
#: ``|grad u|^2 + |grad v|^2 > MB_REL |w|^2 + MB_ABS`` (their constants; ``docs/dev_set_rule.md``, addendum 18)
MB_REL, MB_ABS = 0.01, 0.002


def off_motion_boundary(flow: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Where ``flow`` is not at a motion boundary: uint8 ``[h, w]``, 1 where ``|grad u|^2 + |grad v|^2 <=
    0.01 |w|^2 + 0.002`` (Sundaram, Brox and Keutzer, ECCV 2010, the check beside the forward-backward one;
    Ruder et al., GCPR 2016, use both).

    ``flow``: ``[h, w, 2]`` (x, y), cast to float32, in the pixels of a frame scaled by ``scale``. ``|w|`` is taken
    in full-frame pixels (``flow / scale``); the gradient by central differences (one-sided at the border) on the
    flow's own grid, per cell. A smooth flow's gradient is the same on any grid, but a sharp step of ``d`` frame
    pixels reads ``scale`` times smaller there than at full resolution, so on a coarse grid the check is less
    sensitive to sharp steps than the authors' full-resolution check. An axis of length 1 contributes no gradient.
    Zero or constant flow passes everywhere.

    Raises:
        ValueError: ``flow`` not ``[h, w, 2]``, or ``scale`` not > 0 (NaN included).
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    f = np.asarray(flow, dtype=np.float32)
    if f.ndim != 3 or f.shape[2] != 2:
        raise ValueError(f"flow must be [h, w, 2], got shape {f.shape}")
    grad2 = np.zeros(f.shape[:2], np.float32)
    for k in range(2):
        for axis in (0, 1):
            if f.shape[axis] > 1:
                g = np.gradient(f[..., k], axis=axis)
                grad2 += g * g
    w2 = (f[..., 0] ** 2 + f[..., 1] ** 2) / (scale * scale)
    return (grad2 <= MB_REL * w2 + MB_ABS).astype(np.uint8)


def flow_explains(grey: np.ndarray, prev: np.ndarray, flow: np.ndarray, max_residual: float) -> np.ndarray:
    """Where ``flow`` explains the image: bool ``[h, w]``, True where ``prev`` (uint8 grey ``[h, w]``) moved by
    ``flow`` (float32 ``[h, w, 2]``, ``grey`` -> ``prev``, pixels) differs from ``grey`` by at most ``max_residual``
    grey levels (0..255) on average over a 9 x 9 neighbourhood (a flow that failed on a large motion, or an
    occlusion, leaves a residual). The motion gate's test (:class:`MotionGate`), also the flow branch's with
    ``warp_residual`` (:class:`FlowWarp`)."""
    import cv2

    gx, gy = _pixel_grid(*grey.shape)
    warped = cv2.remap(prev, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    residual = cv2.blur(np.abs(warped.astype(np.float32) - grey.astype(np.float32)), (9, 9))  # local mean
    return residual <= max_residual


class _FlowTracker:
    """The part both flow-based gates share: each frame scaled by ``scale`` and made grey, the
    previous one kept, OpenCV DIS optical flow between them."""

    def __init__(self, scale: float):
        self.scale = float(scale)
        self._dis = dis_flow()
        self._prev: Optional[np.ndarray] = None
        self.last_share = 0.0  # share of pixels allowed to fuse on the last frame

    def reset(self) -> None:
        """Forget the previous frame (a new stream)."""
        self._prev = None

    def _advance(self, frame: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(grey, previous grey)`` of the scaled frame; the previous is ``None`` on a stream's first
        frame or after a change of size."""
        gray = small_grey(frame, self.scale)
        prev, self._prev = self._prev, gray
        if prev is None or prev.shape != gray.shape:
            self.last_share = 0.0
            return gray, None
        return gray, prev


class MotionGate(_FlowTracker):
    """Per-pixel fusion gate from dense optical flow (see the module docstring).

    Args:
        reach: ``(reach_y, reach_x)`` in frame pixels (:meth:`~ditta_ros.streaming.StreamingDiTTA.window_reach`).
        scale: the flow is computed on frames resized by this factor (speed), and
            its vectors scaled back.
        max_residual: largest grey-level difference (0..255) between the current frame
            and the flow-warped previous one for which the flow is trusted.

    ``__call__(frame)`` takes each streamed uint8 RGB ``[H, W, 3]`` frame in order and
    returns float32 ``[H, W]``: 1 where the pixel's displacement to the previous frame
    stays within the reach on both axes, 0 elsewhere and on the first frame.
    """

    def __init__(self, reach: Tuple[float, float], scale: float = 0.5, max_residual: float = 20.0):
        super().__init__(scale)
        self.reach = (float(reach[0]), float(reach[1]))
        self.max_residual = float(max_residual)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        h, w = frame.shape[:2]
        gray, prev = self._advance(frame)
        if prev is None:
            return np.zeros((h, w), np.float32)
        flow = self._dis.calc(gray, prev, None)  # current -> previous, in the small frame's pixels
        explained = flow_explains(gray, prev, flow, self.max_residual)
        flow = flow / self.scale  # frame pixels
        ok = ((np.abs(flow[..., 1]) <= self.reach[0]) & (np.abs(flow[..., 0]) <= self.reach[1])
              & explained).astype(np.uint8)
        mask = cv2.resize(ok, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)
        self.last_share = float(mask.mean())
        return mask


#: seconds by which a frame interval may exceed ``max_gap`` and still count as within it: header stamps read as
#: float seconds (``sec + nanosec 1e-9``) carry about 0.2 us of rounding at today's epoch, so two frames exactly
#: ``max_gap`` apart (a 25 Hz camera's every 5th frame and 0.2 s) measured 0.20000005 s and were not fused
STAMP_SLACK = 1e-6


def beyond_limit(interval: float, limit: float) -> bool:
    """True when frames ``interval`` seconds apart are farther apart than the fusion ``limit`` (seconds; 0: no
    limit), by more than :data:`STAMP_SLACK`."""
    return limit > 0 and interval > limit + STAMP_SLACK


def apply_gates(state, frame: np.ndarray, gate: Optional[MotionGate], interval: Optional[float],
                max_gap: float):
    """The state a streaming step gets after the fusion gates: the motion ``gate``'s
    mask (the gate sees every frame, also the first), and ``has_prev = 0`` everywhere
    when the known frame ``interval`` (s) is beyond ``max_gap`` (:func:`beyond_limit`), or when the interval is
    negative (the stamps went back: a replay restarted or looped, not the previous frame's scene). ``None`` (a
    stream's first frame) stays ``None``."""
    if gate is not None:
        state = gate_state(state, gate(frame))
    if state is not None and interval is not None and (interval < 0 or beyond_limit(interval, max_gap)):
        state = gate_state(state, np.zeros(frame.shape[:2], np.float32))
    return state


def gate_state(state, mask: np.ndarray):
    """``state`` with its ``has_prev`` multiplied by the gate's ``mask`` (same type and device)."""
    if state is None:
        return None
    hp = state[2]
    if isinstance(hp, torch.Tensor):
        m = torch.from_numpy(mask).to(device=hp.device, dtype=hp.dtype)
    else:
        m = mask.astype(np.asarray(hp).dtype)
    return (state[0], state[1], hp * m)


def flow_to_grid(flow: np.ndarray, gh: int, gw: int, bilinear_up: bool = False) -> np.ndarray:
    """``flow`` (float32 ``[h, w, 2]``, (x, y) in its own pixels) resized to a ``gh`` x ``gw`` grid, in that
    grid's cells: area-averaged (OpenCV ``INTER_AREA``, the add-on grid's resize at any size), or with
    ``bilinear_up`` bilinear where the grid is larger than ``flow`` in both directions (the model's own grid
    with ``flow_grid="model"``, addendum 16: ESPNetv2's 512 x 256 against the half-size frame)."""
    import cv2

    h, w = flow.shape[:2]
    if (gh, gw) == (h, w):
        return flow
    linear = bilinear_up and gh > h and gw > w
    out = cv2.resize(flow, (int(gw), int(gh)), interpolation=cv2.INTER_LINEAR if linear else cv2.INTER_AREA)
    out[..., 0] *= gw / w
    out[..., 1] *= gh / h
    return out


def warp_state(state, grid_flow: np.ndarray):
    """``state`` with its previous-frame features and logits (``[1, D, gh, gw]``, ``[1, C, gh', gw']``,
    torch or numpy) resampled at ``position + grid_flow`` (bilinear, borders replicated): the
    content of the previous frame moved to where it is in the current one. ``grid_flow`` is float32
    ``[gh, gw, 2]`` (x, y) in grid cells, from the current frame to the previous one; a tensor on another
    grid (the logits with ``flow_grid="model"``, addendum 16) gets it resized by :func:`flow_to_grid`. Zero
    flow leaves the state unchanged. ``has_prev`` and ``None`` (a stream's first frame) pass through."""
    import cv2

    if state is None:
        return None

    def warp(t):
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        gh, gw = a.shape[2:]
        flow = flow_to_grid(grid_flow, gh, gw)
        gx, gy = _pixel_grid(gh, gw)
        mx, my = gx + flow[..., 0], gy + flow[..., 1]
        hwc = np.ascontiguousarray(a[0].transpose(1, 2, 0), dtype=np.float32)
        out = np.concatenate([cv2.remap(hwc[..., k:k + 128], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                              .reshape(gh, gw, -1) for k in range(0, hwc.shape[2], 128)], 2)
        out = out.transpose(2, 0, 1)[None].astype(a.dtype)
        return torch.from_numpy(out).to(device=t.device, dtype=t.dtype) if isinstance(t, torch.Tensor) else out

    return (warp(state[0]), warp(state[1]), state[2])


class FlowWarp(_FlowTracker):
    """Motion compensation of the streaming state (ours, ``warp: true``): dense optical flow (OpenCV
    DIS, from the current frame to the previous one, on frames scaled by ``scale``) moves the
    previous frame's features and logits on their grids (:func:`warp_state`) so the add-on's
    local window (Eq. 1) looks where the content went, whatever the gap between processed frames.
    Where the flow is not forward-backward consistent (the backward flow at the forward target does
    not return within ``max_fb`` pixels of the scaled frame), and with ``max_residual`` > 0 where it does
    not explain the image (:func:`flow_explains`: the moved previous frame differs from the current one by
    more than ``max_residual`` grey levels, 9 x 9 local mean; ``docs/dev_set_rule.md``, addendum 12),
    ``has_prev = 0``: the plain branch serves.

    ``__call__(frame, state)`` takes each streamed uint8 RGB ``[H, W, 3]`` frame in order and the
    state the frame would get; returns the warped, gated state (``None`` stays ``None``).
    ``last_share``: the share of pixels left free to fuse on the last frame.
    """

    def __init__(self, scale: float = 0.5, max_fb: float = 1.0, max_residual: float = 0.0):
        super().__init__(scale)
        self.max_fb = float(max_fb)
        self.max_residual = float(max_residual)

    def __call__(self, frame: np.ndarray, state):
        import cv2

        h, w = frame.shape[:2]
        gray, prev = self._advance(frame)
        if state is None or prev is None:
            self.last_share = 0.0
            return state
        fw, ok = consistent_flow(self._dis, gray, prev, self.max_fb)  # current -> previous
        if self.max_residual > 0:
            ok &= flow_explains(gray, prev, fw, self.max_residual).astype(np.uint8)
        grids = [tuple(t.shape[2:]) for t in state[:2]]
        gh, gw = max(grids, key=lambda s: s[0] * s[1])  # the finer grid of the state (flow_grid="model": the logits')
        grid = flow_to_grid(fw, int(gh), int(gw), bilinear_up=grids[0] != grids[1])
        mask = cv2.resize(ok, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)
        self.last_share = float(mask.mean())
        return gate_state(warp_state(state, grid), mask)
