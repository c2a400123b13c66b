"""Maps the top-level folders engine/, kernels/ and cli/ onto the priorscope.* import namespace.

The design card fixes the repository layout; a bare ``kernels`` import name would collide with
the package transformers probes for, so every folder installs under ``priorscope.``.
"""

from setuptools import find_packages, setup

TOP_LEVEL = ("engine", "kernels", "cli")

packages = [
    f"priorscope.{name}"
    for name in find_packages(
        include=[f"{top}" for top in TOP_LEVEL] + [f"{top}.*" for top in TOP_LEVEL]
    )
]
setup(packages=packages, package_dir={f"priorscope.{top}": top for top in TOP_LEVEL})
