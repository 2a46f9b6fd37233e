# callmood worker image: `callmood worker` by default, `callmood db upgrade` for migrations.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# soundfile, onnxruntime, soxr and webrtcvad ship manylinux wheels (libsndfile included),
# so no compiler or system audio libraries are needed. No torch: training is not done here.
COPY pyproject.toml README.md alembic.ini ./
COPY worker ./worker
COPY migrations ./migrations
COPY analytics ./analytics
COPY training ./training
COPY bench ./bench
RUN pip install '.[postgres]' && rm -rf /src

RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/callmood callmood
USER callmood
WORKDIR /var/lib/callmood
ENV CALLMOOD_DATA_DIR=/var/lib/callmood

ENTRYPOINT ["callmood"]
CMD ["worker"]
