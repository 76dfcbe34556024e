"""Maps the card's top-level folders onto the import package `conclave`.

runtime/ is conclave.runtime and overlay/ is conclave.overlay; `conclave` itself is a
namespace package, so nothing generic such as a bare `runtime` lands in site-packages.
"""
from setuptools import find_packages, setup

packages, package_dir = [], {}
for top in ("runtime", "overlay"):
    base = f"conclave.{top}"
    packages.append(base)
    package_dir[base] = top
    packages += [f"{base}.{sub}" for sub in find_packages(top)]

setup(
    packages=packages,
    package_dir=package_dir,
    # *.html/*.js/*.css: the head's status page (runtime/serving/status_page/), served from the package
    package_data={"": ["*.pem", "*.der", "*.proto", "*.json", "*.yaml", "*.html", "*.js", "*.css"]},
    include_package_data=True,
)
