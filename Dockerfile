# Placeholder: the deployment issue replaces this with the multi-stage production image.
FROM python:3.12-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
USER 10001
CMD ["cometd-bridge", "run"]
