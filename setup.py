"""Build glue pyproject.toml cannot say: the wheel carries the Hydra configs `conf/` as the package data `iad/conf`."""

from setuptools import find_namespace_packages, find_packages, setup

CONF_PACKAGES = ["iad.conf", *(f"iad.conf.{name}" for name in find_namespace_packages(where="conf"))]

setup(
    packages=[*find_packages(include=["iad", "iad.*"]), *CONF_PACKAGES],
    package_dir={"iad.conf": "conf"},
    package_data={name: ["*.yaml"] for name in CONF_PACKAGES},
)
