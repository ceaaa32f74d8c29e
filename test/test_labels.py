"""Label sets and label mappings."""

import numpy as np
import pytest

from ditta_ros.labels import LABEL_SETS, UNMAPPED, get_label_set, load_label_map


def test_cityscapes_to_camvid_mapping():
    m = load_label_map("cityscapes19_to_camvid11")
    cs, cv = LABEL_SETS["cityscapes19"], LABEL_SETS["camvid11"]
    src = np.array([cs.index("road"), cs.index("sidewalk"), cs.index("wall"), cs.index("terrain"),
                    cs.index("rider"), cs.index("train"), 19, 255])
    out = m(src)
    assert out.tolist() == [cv.index("road"), cv.index("pavement"), cv.index("building"), cv.index("tree"),
                            cv.index("bicyclist"), cv.index("car"), UNMAPPED, 255]
    assert (m.lut[:19] != UNMAPPED).all()


@pytest.mark.parametrize("name,cls,members", [("cityscapes19_to_car_vs_rest", "car", ["car", "truck", "bus"]),
                                              ("cityscapes19_to_person_vs_rest", "person", ["person", "rider"])])
def test_binary_maps_default_to_rest(name, cls, members):
    m = load_label_map(name)
    cs = LABEL_SETS["cityscapes19"]
    for i, c in enumerate(cs.classes):
        assert m.lut[i] == (1 if c in members else 0), c
    assert m.target.classes == ("rest", cls)


def test_bad_maps_fail_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: cityscapes19\ntarget: camvid11\nmap: {road: motorway}\n")
    with pytest.raises(ValueError, match="motorway"):
        load_label_map(str(bad))
    with pytest.raises(FileNotFoundError, match="cityscapes19_to_camvid11"):
        load_label_map("no_such_map")
    with pytest.raises(KeyError, match="known"):
        get_label_set("nonexistent")


def test_label_sets_sizes_and_colorize():
    assert {k: v.num_classes for k, v in LABEL_SETS.items() if k in ("cityscapes19", "camvid11", "vspw124", "ade150")} \
        == {"cityscapes19": 19, "camvid11": 11, "vspw124": 124, "ade150": 150}
    for ls in LABEL_SETS.values():
        assert len(ls.palette) == ls.num_classes and len(set(ls.classes)) == ls.num_classes
    rgb = LABEL_SETS["camvid11"].colorize(np.array([[3, 255]]))
    assert rgb.dtype == np.uint8 and rgb[0, 0].tolist() == [128, 64, 128] and rgb[0, 1].tolist() == [0, 0, 0]
