"""fastworker: runs Sidekiq jobs from Redis through a Rails sidecar, in place of the Sidekiq server."""

__version__ = "0.1.0"
