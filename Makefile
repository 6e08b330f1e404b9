# The two commands of the README. Both do all the set-up they need (apt-get packages, ./.venv).
.PHONY: setup demo test test-unit test-kernel test-e2e test-vm lint bench cri-stubs images

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/python -m meshnet.demo

# mypy reads [tool.mypy] in pyproject.toml (meshnet/, tests/, bench/, probes/, scripts/)
test: setup
	@.venv/bin/ruff check meshnet tests bench probes
	@.venv/bin/mypy
	@.venv/bin/python -m pytest -q tests

# One kind at a time: unit needs nothing, kernel needs root and namespaces, e2e runs libcni/containerd/the wheel.
test-unit test-kernel test-e2e: setup
	@.venv/bin/python -m pytest -q tests/$(@:test-%=%)

# The old-kernel tier: Debian 12's 6.1 kernel in qemu (../shared/tools/oldkernel-vm), where the
# five-tuple collision really hangs; runs meshnet from this tree inside it (~1 min, ~3 min the first time).
test-vm: setup
	@bash tests/vm/run-vm-tier.sh

# build/images/meshnet.tar (localhost/meshnet:dev): debootstrap base cached in /var/cache/meshnet-image
images: setup
	@.venv/bin/python scripts/build_image.py

bench: setup
	@for b in bench/*.py; do .venv/bin/python $$b; done

# The CRI client's stubs (meshnet/cri/*_pb2*.py, and the .pyi mypy reads) from meshnet/cri/cri_subset.proto; committed, so only after edits.
cri-stubs: setup
	@.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. meshnet/cri/cri_subset.proto
