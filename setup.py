"""ditta_ros: an ament_python package that also installs with plain pip.

``pip install .`` (non-editable) and ``colcon build`` both install the data
folders into ``<prefix>/share/ditta_ros`` (launch files, config, model cards).
"""

import glob
import os

from setuptools import find_packages, setup

PACKAGE = "ditta_ros"


def tree(src):
    """(install_dir, [files]) pairs for every file under ``src``."""
    out = {}
    for path in glob.glob(os.path.join(src, "**", "*"), recursive=True):
        if os.path.isfile(path):
            out.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ditta_ros maintainers",
    maintainer_email="ditta-ros@example.com",
    description="DiTTA video semantic segmentation by test-time adaptation, for ROS 2",
    license="MIT",
    python_requires=">=3.10",
    entry_points={"console_scripts": ["ditta = ditta_ros.tools.cli:main", "ditta_node = ditta_ros.node:main"]},
)
