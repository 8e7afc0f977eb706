# The app's image: Flower's SuperExec image plus fedad and its dependencies. It runs the
# ServerApp (service superexec-serverapp) and each site's ClientApps (superexec-clientapp-<i>)
# of docker-compose.yml; the SuperLink and SuperNodes use Flower's images unchanged.
#
#   docker compose build                         # or: docker build -t fedad-superexec .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .   # CPU-only
#   docker build --build-arg FAISS_GPU=1 .        # faiss on the GPU (sites with CUDA)
#   docker build --build-arg FLWR_IMAGES=fedad-flower .   # local Flower images
#                                                 # (deploy/build_flower_images.sh)
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt .  # a host CA bundle
#
# FLWR_IMAGES is where Flower's images come from (Docker Hub's `flwr` by default; a mirror
# or the local images otherwise), FLWR_VERSION the one Flower version of every image: the
# build fails when the base image's flwr differs or the project does not admit it.
ARG FLWR_IMAGES=flwr
ARG FLWR_VERSION=1.42.0
FROM ${FLWR_IMAGES}/superexec:${FLWR_VERSION}
ARG FLWR_VERSION

# Empty: torch from PyPI (CUDA build, runs on CPU too). A PyTorch index URL picks a variant.
ARG TORCH_INDEX=""
# Extra pins, space-separated (e.g. "torch==2.14.1 torchvision==0.29.1"): every site's image
# then runs the same packages as another site or a checkout (deploy/compose_check.py
# --match-host does this).
ARG PIP_CONSTRAINTS=""
ARG FAISS_GPU=0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedad ./fedad
COPY clients ./clients
COPY server ./server
COPY partitions ./partitions
COPY deploy/check_flwr_version.py ./deploy/
# flwr stays the image's (pinned by a constraint, beside PIP_CONSTRAINTS; the simulation
# extra, Ray, is not needed here); the optional secret `ca` is a CA bundle for the
# downloads, in no layer.
RUN --mount=type=secret,id=ca,required=false,mode=0444 \
    if grep -qs "BEGIN CERTIFICATE" /run/secrets/ca; then export PIP_CERT=/run/secrets/ca; fi \
    && python deploy/check_flwr_version.py "$FLWR_VERSION" \
    && echo "flwr==$FLWR_VERSION" > /tmp/constraints.txt \
    && for pin in $PIP_CONSTRAINTS; do echo "$pin" >> /tmp/constraints.txt; done \
    && sed -i 's/"flwr\[simulation\]/"flwr/' pyproject.toml \
    && if [ -n "$TORCH_INDEX" ]; then \
         python -m pip install --no-cache-dir -c /tmp/constraints.txt torch torchvision \
             --index-url "$TORCH_INDEX"; \
       fi \
    && python -m pip install --no-cache-dir -c /tmp/constraints.txt . \
    && if [ "$FAISS_GPU" = "1" ]; then \
         python -m pip uninstall -y faiss-cpu \
         && python -m pip install --no-cache-dir "faiss-gpu>=1.8"; \
       fi \
    && python deploy/check_flwr_version.py "$FLWR_VERSION" pyproject.toml \
    && python -c "import fedad, clients, server, faiss, timm; print('fedad image ok')" \
    && rm /tmp/constraints.txt \
    && mkdir -p /app/cache /app/outputs  # owned by the image's user: volumes mount here
LABEL dev.fedad.flwr-version="${FLWR_VERSION}"

ENTRYPOINT ["flower-superexec"]
