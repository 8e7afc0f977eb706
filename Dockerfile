# The app's image: Flower's official SuperExec image plus fedad and its dependencies. It runs
# the ServerApp (service superexec-serverapp) and each site's ClientApps
# (superexec-clientapp-<i>) of docker-compose.yml; the SuperLink and SuperNodes use Flower's
# own images unchanged.
#
#   docker compose build                         # or: docker build -t fedad-superexec .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .   # CPU-only
#   docker build --build-arg FAISS_GPU=1 .        # faiss on the GPU (sites with CUDA)
ARG FLWR_VERSION=1.41.0
FROM flwr/superexec:${FLWR_VERSION}

# Empty: torch from PyPI (CUDA build, runs on CPU too). A PyTorch index URL picks a variant.
ARG TORCH_INDEX=""
ARG FAISS_GPU=0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fedad ./fedad
COPY clients ./clients
COPY server ./server
COPY partitions ./partitions
# Keep the image's flwr (the SuperExec must match the SuperLink/SuperNode version); the app
# needs it with the same major.minor, which the image's version satisfies.
RUN sed -i 's/.*"flwr\[simulation\].*//' pyproject.toml \
    && if [ -n "$TORCH_INDEX" ]; then \
         python -m pip install --no-cache-dir torch torchvision --index-url "$TORCH_INDEX"; \
       fi \
    && python -m pip install --no-cache-dir . \
    && if [ "$FAISS_GPU" = "1" ]; then \
         python -m pip uninstall -y faiss-cpu \
         && python -m pip install --no-cache-dir "faiss-gpu>=1.8"; \
       fi \
    && python -c "import fedad, clients, server, faiss, timm; print('fedad image ok')" \
    && mkdir -p /app/cache /app/outputs  # owned by the image's user: volumes mount here

ENTRYPOINT ["flower-superexec"]
