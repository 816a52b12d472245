# SPDX-License-Identifier: Apache-2.0
# python/: the Python package (pure Python over ctypes, `pip install ./python`;
# python/README.md), and its pytest suites, which scripts/python-check.sh
# runs against the library built here (CI does, after the test command).
# make builds and installs nothing of it: it ships in the tarball.
EXTRA_DIST += python/pyproject.toml python/README.md \
	python/distrattn/__init__.py python/distrattn/_core.py python/distrattn/_errors.py \
	python/distrattn/_lib.py python/distrattn/_numpy.py python/distrattn/torch.py \
	python/distrattn/projections.py python/tests/test_projections.py \
	python/tests/conftest.py python/tests/reference.py python/tests/test_numpy.py \
	python/tests/test_torch.py python/tests/test_torch_backward.py
dist_noinst_SCRIPTS += scripts/python-check.sh
