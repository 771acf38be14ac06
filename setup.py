"""Package discovery, the one part of the build that pyproject.toml cannot state declaratively.

The repository root *is* the package ``consistent_video`` (ComfyUI loads it from
``custom_nodes/<any name>/``), so every package found below the root is installed under that
name: ``nodes/comfy`` becomes ``consistent_video.nodes.comfy``. A new sub-package is picked up
without editing anything. All other metadata is in pyproject.toml.
"""
from setuptools import find_packages, setup

setup(package_dir={"consistent_video": "."},
      packages=["consistent_video"] + [f"consistent_video.{name}" for name in find_packages(exclude=("tests*", "benchmarks*"))])
