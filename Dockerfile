# qwen3-api on CPU. The builder stage compiles llama-cpp-python (the llama.cpp backend) into wheels; the runtime
# image installs those wheels and has no compiler.
#   docker build -t qwen3-api .
#   docker run -p 2025:2025 -v hf-cache:/home/qwen3/.cache/huggingface qwen3-api --model Qwen/Qwen3-4B-Instruct-2507
FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.* git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The CPU build of torch, then our package with the llama.cpp backend, all as wheels.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --extra-index-url https://download.pytorch.org/whl/cpu \
        "torch==2.13.0" ".[llamacpp]"

FROM python:3.11-slim-bookworm
# libgomp: OpenMP runtime of torch and llama.cpp; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "torch==2.13.0" "qwen3-api[llamacpp]==0.1.0" && rm -rf /wheels
RUN useradd --create-home --uid 10001 qwen3
USER 10001
WORKDIR /home/qwen3
ENV HF_HOME=/home/qwen3/.cache/huggingface \
    PYTHONUNBUFFERED=1
VOLUME ["/home/qwen3/.cache/huggingface"]
EXPOSE 2025
# /health answers 200 once the model is loaded (503 while loading): allow a long start for the first download.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:2025/health"]
ENTRYPOINT ["qwen3-api", "serve", "--host", "0.0.0.0"]
