# frozen_string_literal: true

# A minimal Rails 6.1 app for the sidecar's tests: ActiveJob with the Sidekiq adapter, no DB.
require "rails"
require "active_job/railtie"
require "sidekiq"

module Dummy
  class Application < Rails::Application
    config.root = File.expand_path("..", __dir__)
    config.eager_load = false
    config.cache_classes = true
    config.logger = ActiveSupport::Logger.new(File::NULL)
    config.active_job.queue_adapter = :sidekiq
  end
end
