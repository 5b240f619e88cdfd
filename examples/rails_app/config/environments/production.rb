# frozen_string_literal: true

Rails.application.configure do
  config.cache_classes = true
  config.eager_load = true
  config.consider_all_requests_local = false
  config.log_level = :info
  config.logger = ActiveSupport::Logger.new($stdout)
  config.active_support.deprecation = :notify
end
