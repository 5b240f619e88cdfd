# The Ruby side: the demo Rails app and the fastworker sidecar, on Debian's packaged Ruby, Rails,
# Sidekiq and Puma (the same packages the tests use; no bundle install from the network).
# Build context: the repository root.  docker build -f deploy/Dockerfile.ruby -t fastworker-ruby .
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ruby ruby-rails ruby-sidekiq puma ruby-sqlite3 ruby-pg \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 app
WORKDIR /app
COPY sidecar ./sidecar
COPY examples/rails_app ./examples/rails_app
RUN mkdir -p examples/rails_app/log examples/rails_app/tmp examples/rails_app/db \
 && chown -R app:app examples/rails_app/log examples/rails_app/tmp examples/rails_app/db
USER app
ENV RAILS_ENV=production RAILS_ROOT=/app/examples/rails_app RAILS_LOG_TO_STDOUT=1 MALLOC_ARENA_MAX=2
# default: the sidecar; the compose `app` service overrides the command to serve the Rails app
EXPOSE 3001 3000
CMD ["ruby", "sidecar/bin/fastworker-sidecar", "--rails-root", "/app/examples/rails_app", "--bind", "0.0.0.0", "--port", "3001"]
