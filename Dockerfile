# One image for every imagerec process under Docker: worker, functions, gateway, init.
# The local stack (make run) does not use it.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/imagerec
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
ENV IMAGEREC_HOME=/data IMAGEREC_MODEL_CACHE=/opt/imagerec/models TF_CPP_MIN_LOG_LEVEL=2
RUN pip install --no-cache-dir --no-deps -e . \
 && imagerec models --local /opt/imagerec/models/store convert
VOLUME /data
CMD ["python", "-m", "app.worker"]
