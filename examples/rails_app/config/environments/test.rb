# frozen_string_literal: true

Rails.application.configure do
  config.cache_classes = true
  config.consider_all_requests_local = true
  config.active_support.deprecation = :stderr
  config.log_level = :info
end
