# The container images (Containerfile, targets api, workers, operator), built with podman by scripts/images.py.
#   make images                 -> localhost/queueworker-{api,workers,operator}:<content tag>, from PYTHON_IMAGE
#                                  (default: the Containerfile's official slim Python image, pulled from its registry)
#   make images PYTHON_IMAGE=localhost/qw-base:bookworm   -> from a local Debian base made with mmdebstrap (cached)
#   make images-save            -> the same, plus .images/queueworker-*.tar (podman save) and .images/images.json,
#                                  for `ctr -n k8s.io images import` on a kubelet node (QW_IMAGES_DIR moves them)
#   make images-shop            -> localhost/shop-workers:<tag>: examples/shop/Containerfile FROM the workers image
#   make images-bench           -> cold (empty store) and warm build times and sizes -> bench/results/images.json
PYTHON_IMAGE ?=
IMAGES_ARGS = $(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE))

.PHONY: images images-save images-base images-bench images-shop

images: deps-images
	python3 scripts/images.py build $(IMAGES_ARGS)

images-save: deps-images
	python3 scripts/images.py save $(IMAGES_ARGS)

images-base: deps-images
	python3 scripts/images.py base

images-bench: deps-images
	python3 scripts/images.py bench $(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE))

# examples/shop's workers image (examples/shop/Containerfile, FROM the workers image above): localhost/shop-workers
images-shop: deps-images
	python3 scripts/images.py shop $(IMAGES_ARGS)
