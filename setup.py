"""Package discovery, the one part of the build that pyproject.toml cannot state declaratively.

The repository root *is* the package ``consistent_video`` (ComfyUI loads it from
``custom_nodes/<any name>/``), so every package found below the root is installed under that
name: ``nodes/comfy`` becomes ``consistent_video.nodes.comfy``. A new sub-package is picked up
without editing anything. All other metadata is in pyproject.toml.
"""
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """Leaves this script, which sits in the package's root folder, out of the package."""

    def find_package_modules(self, package, package_dir):
        return [entry for entry in super().find_package_modules(package, package_dir)
                if (entry[0], entry[1]) != ("consistent_video", "setup")]


setup(package_dir={"consistent_video": "."},
      packages=["consistent_video"]
      + [f"consistent_video.{name}" for name in find_packages(exclude=("tests*", "benchmarks*"))],
      cmdclass={"build_py": BuildPy})
