"""Label sets (class names + palettes) and label mappings between them.

Label sets: ``cityscapes19`` (trainIds 0..18), ``camvid11`` (the SegNet CamVid
classes), ``vspw124`` (VSPW, ``raw - 1``), ``ade150`` (ADE20K SceneParsing),
and the binary sets ``car_vs_rest`` / ``person_vs_rest`` (0 = rest, 1 = the
class). 255 is the ignore index everywhere.

A label mapping (YAML, see ``config/label_maps/``) maps source class names to
target class names::

    source: cityscapes19
    target: camvid11
    default: null        # target for unlisted source classes; null = unmapped
    map: {road: road, sidewalk: pavement, ...}

An unmapped prediction becomes :data:`UNMAPPED` (254), outside every label set,
so the metrics count it as wrong.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

IGNORE_INDEX = 255
UNMAPPED = 254


def _bit_palette(n: int) -> List[List[int]]:
    """Deterministic distinct colours (PASCAL VOC bit-interleaving scheme)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


CITYSCAPES19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign",
                "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                "motorcycle", "bicycle"]
CITYSCAPES_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                      [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                      [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                      [0, 80, 100], [0, 0, 230], [119, 11, 32]]
CAMVID11 = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
            "pedestrian", "bicyclist"]
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                  [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
VSPW124 = [
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "playground_slide", "handrail_or_fence",
    "window", "rail", "goal", "pillar", "pole", "floor", "ground", "grass", "sand", "athletic_field", "road",
    "path", "crosswalk", "building", "house", "bridge", "tower", "windmill", "well_or_well_lid",
    "other_construction", "sky", "mountain", "stone", "wood", "ice", "snowfield", "grandstand", "sea", "river",
    "lake", "waterfall", "water", "billboard_or_bulletin_board", "sculpture", "pipeline", "flag",
    "parasol_or_umbrella", "cushion_or_carpet", "tent", "roadblock", "car", "bus", "truck", "bicycle",
    "motorcycle", "wheeled_machine", "ship_or_boat", "raft", "airplane", "tyre", "traffic_light", "lamp",
    "person", "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower", "other_plant", "toy",
    "ball_net", "backboard", "skateboard", "bat", "ball", "cupboard_or_showcase_or_storage_rack", "box",
    "traveling_case_or_trolley_case", "basket", "bag_or_package", "trash_can", "cage", "plate",
    "tub_or_bowl_or_pot", "bottle_or_cup", "barrel", "fishbowl", "bed", "pillow", "table_or_desk",
    "chair_or_seat", "bench", "sofa", "shelf", "bathtub", "gun", "commode", "roaster", "other_machine",
    "refrigerator", "washing_machine", "microwave_oven", "fan", "curtain", "textiles", "clothes",
    "painting_or_poster", "mirror", "flower_pot_or_vase", "clock", "book", "tool", "blackboard", "tissue",
    "screen_or_television", "computer", "printer", "mobile_phone", "keyboard", "other_electronic_product",
    "fruit", "food", "instrument", "train"]
ADE150 = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest_of_drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool_table", "pillow", "screen_door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee_table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen_island", "computer", "swivel_chair", "boat", "bar", "arcade_machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television_receiver",
    "airplane", "dirt_track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer_belt", "canopy", "washer", "plaything",
    "swimming_pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade_name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic_light", "tray",
    "ashcan", "fan", "pier", "crt_screen", "plate", "monitor", "bulletin_board", "shower", "radiator",
    "glass", "clock", "flag"]


@dataclass(frozen=True)
class LabelSet:
    """Named classes with an RGB palette; class id = list index."""

    name: str
    classes: tuple
    palette: tuple

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, cls: str) -> int:
        """Class id of ``cls``; raises ``KeyError`` naming the label set."""
        try:
            return self.classes.index(cls)
        except ValueError:
            raise KeyError(f"class {cls!r} is not in label set {self.name!r}") from None

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """``[H, W]`` integer label image -> ``[H, W, 3]`` uint8 RGB (ignore/unknown = black)."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, np.uint8)
        return lut[np.clip(labels, 0, 255).astype(np.uint8)]

    def to_dict(self) -> Dict[str, object]:
        """JSON-friendly description (names, ids, palette)."""
        return {"name": self.name, "ignore_index": IGNORE_INDEX,
                "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in
                            enumerate(zip(self.classes, self.palette))]}


def _make(name, classes, palette=None) -> LabelSet:
    palette = palette or _bit_palette(len(classes))
    return LabelSet(name, tuple(classes), tuple(tuple(c) for c in palette))


LABEL_SETS: Dict[str, LabelSet] = {
    "cityscapes19": _make("cityscapes19", CITYSCAPES19, CITYSCAPES_PALETTE),
    "camvid11": _make("camvid11", CAMVID11, CAMVID_PALETTE),
    "vspw124": _make("vspw124", VSPW124),
    "ade150": _make("ade150", ADE150),
    "car_vs_rest": _make("car_vs_rest", ["rest", "car"], [[0, 0, 0], [0, 0, 142]]),
    "person_vs_rest": _make("person_vs_rest", ["rest", "person"], [[0, 0, 0], [220, 20, 60]]),
}


def get_label_set(name: str, classes: Optional[Sequence[str]] = None) -> LabelSet:
    """A registered label set, or an ad-hoc one when ``classes`` are given.

    Raises:
        KeyError: unknown name and no classes given (the message lists known sets).
    """
    if name in LABEL_SETS:
        return LABEL_SETS[name]
    if classes:
        return _make(name, list(classes))
    raise KeyError(f"unknown label set {name!r}; known: {', '.join(sorted(LABEL_SETS))}")


@dataclass
class LabelMap:
    """A mapping from a source label set's ids to a target label set's ids."""

    name: str
    source: LabelSet
    target: LabelSet
    lut: np.ndarray  # uint8 [256]: source id -> target id, UNMAPPED, or IGNORE_INDEX for 255

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """Map an integer label image (any shape) to the target set (uint8)."""
        return self.lut[np.clip(labels, 0, 255).astype(np.uint8)]


def label_map_dirs() -> List[str]:
    """Folders searched for label mapping YAMLs, first match wins."""
    from .resources import share_dir

    return [os.path.join(share_dir("config"), "label_maps")]


def load_label_map(name_or_file: str) -> LabelMap:
    """Load a mapping by registered name (``config/label_maps/<name>.yaml``) or path.

    Raises:
        FileNotFoundError: neither a file nor a known name (lists what exists).
        ValueError: a class in the file is not in its label set.
    """
    import yaml

    path = name_or_file
    if not os.path.isfile(path):
        candidates = [os.path.join(d, name_or_file + ".yaml") for d in label_map_dirs()]
        found = [c for c in candidates if os.path.isfile(c)]
        if not found:
            known = sorted(os.path.splitext(f)[0] for d in label_map_dirs() if os.path.isdir(d)
                           for f in os.listdir(d) if f.endswith(".yaml"))
            raise FileNotFoundError(f"label map {name_or_file!r} is neither a file nor a known name; "
                                    f"known: {', '.join(known) or '(none)'}")
        path = found[0]
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    try:
        source = get_label_set(spec["source"], spec.get("source_classes"))
        target = get_label_set(spec["target"], spec.get("target_classes"))
    except KeyError as err:
        raise ValueError(f"{path}: {err}") from None
    default = spec.get("default")
    lut = np.full(256, UNMAPPED, np.uint8)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    if default is not None:
        lut[: source.num_classes] = target.index(default)
    for src, dst in (spec.get("map") or {}).items():
        try:
            lut[source.index(src)] = target.index(dst) if dst is not None else UNMAPPED
        except KeyError as err:
            raise ValueError(f"{path}: {err}") from None
    name = os.path.splitext(os.path.basename(path))[0]
    return LabelMap(name=name, source=source, target=target, lut=lut)
