"""Builds consumers_client.py from consumers_client.py.in (the template
the autotools build also uses) straight into the build directory, so
that `pip install client/python` never writes into the source tree."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
RUNSTATEDIR = os.environ.get("CONSUMERS_RUNSTATEDIR", "/run")


class BuildPy(build_py):
    def run(self):
        with open(os.path.join(HERE, "consumers_client.py.in"),
                  encoding="utf-8") as f:
            text = f.read().replace("@runstatedir@", RUNSTATEDIR)
        os.makedirs(self.build_lib, exist_ok=True)
        with open(os.path.join(self.build_lib, "consumers_client.py"), "w",
                  encoding="utf-8") as f:
            f.write(text)


setup(py_modules=["consumers_client"], cmdclass={"build_py": BuildPy})
