# syntax=docker/dockerfile:1.7
# skyblink-cpu: the slim image of the Ray head (the night's driver and the dashboard), the nightly
# submitter (skyblink-nightly), alert consumers, and CPU-only workers (with EXTRAS=cpu: ONNX Runtime, no torch).
#   docker build -f docker/cpu.Dockerfile -t skyblink-cpu:0.1.0 .
# Ray and Python must be the same in both images: RAY_VERSION here, in gpu.Dockerfile and
# rayVersion in k8s/base/raycluster.yaml agree (tests/k8s checks it).
ARG PYTHON_VERSION=3.12
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG RAY_VERSION=2.60.0
# Extras of pyproject.toml to add, comma-separated: "" for the head, "cpu" for a CPU worker.
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/skyblink
COPY pyproject.toml README.md /src/
COPY skyblink /src/skyblink
COPY cluster /src/cluster
COPY reduce /src/reduce
COPY evaluation /src/evaluation
COPY workers /src/workers
COPY engines /src/engines
COPY storage /src/storage
COPY sim /src/sim
RUN /opt/skyblink/bin/pip install "/src${EXTRAS:+[$EXTRAS]}" "ray[default]==${RAY_VERSION}"

FROM python:${PYTHON_VERSION}-slim-bookworm
# tzdata: the nightly submitter names the night in the observatory's zone; bash: KubeRay starts
# Ray through it; tini reaps Ray's children.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tzdata tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 skyblink \
 && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash skyblink \
 && install -d -o 10001 -g 10001 /data /var/cache/skyblink/engines /tmp/ray
COPY --from=build /opt/skyblink /opt/skyblink
COPY --chmod=0755 docker/skyblink-nightly /usr/local/bin/skyblink-nightly
ENV PATH=/opt/skyblink/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/skyblink
ENTRYPOINT ["tini", "--"]
CMD ["skyblink", "--help"]
