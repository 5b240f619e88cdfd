# frozen_string_literal: true

require_relative "boot"

require "rails"
require "active_model/railtie"
require "active_job/railtie"
require "active_record/railtie"
require "action_controller/railtie"
require "sidekiq"

# Plain Ruby code the jobs and the Sidekiq configuration need before the app boots.
require_relative "../lib/money"
require_relative "../lib/money_serializer"

module DemoApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.api_only = true
    config.eager_load = ENV["RAILS_ENV"] == "production"
    config.secret_key_base = ENV.fetch("SECRET_KEY_BASE") { "fastworker-demo-app-not-a-secret" }
    config.logger = ActiveSupport::Logger.new($stdout) if ENV["RAILS_LOG_TO_STDOUT"].present?

    # Enqueue through the Sidekiq client: Rails 6.1's adapter writes
    # class=ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper, wrapped=<job class>.
    config.active_job.queue_adapter = :sidekiq
    config.active_job.custom_serializers << MoneySerializer

    # db/schema.rb is hand-written (no migrations): never overwrite it.
    config.active_record.dump_schema_after_migration = false

    # The demo has no host-based routing concerns (compose calls it by service name).
    config.hosts.clear
  end
end
