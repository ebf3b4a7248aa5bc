# syntax=docker/dockerfile:1.7
# skyblink-gpu: the GPU worker. NVIDIA's TensorRT container (CUDA, cuDNN, full TensorRT with its
# Python bindings, Python 3.12) plus skyblink with the `gpu` extra (torch with CUDA,
# cuda-python). Full TensorRT builds engines for the GPU in hand, Hopper included;
# TensorRT-RTX (the `tensorrt` extra) has no Hopper target and is not installed here.
#   docker build -f docker/gpu.Dockerfile -t skyblink-gpu:0.1.0 .
# Pick the TensorRT container whose CUDA your nodes' driver supports (NGC release notes).
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${TENSORRT_IMAGE}
ARG RAY_VERSION=2.60.0
ARG EXTRAS="gpu"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# util-linux: flock, so that workers sharing the engines volume build one at a time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv tini util-linux \
 && rm -rf /var/lib/apt/lists/* \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && groupadd --gid 10001 skyblink \
 && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash skyblink \
 && install -d -o 10001 -g 10001 /data /var/cache/skyblink/engines /tmp/ray
# --system-site-packages: the venv sees the container's TensorRT bindings.
RUN python3 -m venv --system-site-packages /opt/skyblink
COPY pyproject.toml README.md /src/
COPY skyblink /src/skyblink
COPY cluster /src/cluster
COPY reduce /src/reduce
COPY evaluation /src/evaluation
COPY workers /src/workers
COPY engines /src/engines
COPY storage /src/storage
COPY sim /src/sim
RUN /opt/skyblink/bin/pip install "/src[${EXTRAS}]" "ray[default]==${RAY_VERSION}" \
 && /opt/skyblink/bin/python -c "import tensorrt, torch; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__)" \
 && rm -rf /src
COPY --chmod=0755 docker/skyblink-engines-init /usr/local/bin/skyblink-engines-init
ENV PATH=/opt/skyblink/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/skyblink
ENTRYPOINT ["tini", "--"]
CMD ["skyblink", "--help"]
